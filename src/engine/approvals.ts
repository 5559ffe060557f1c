/**
 * Who may decide an approval (issue #16): a stage's `approval: {role, twoPerson}` and a rollout's. Holders
 * of the role (or admins; for a role bound to some machines only, on the machine waiting) may approve or
 * reject; with `twoPerson`, the principal who started the run may not approve it.
 *
 * "Started the run" is read from the record, not kept apart: for a machine, the author of the newest change
 * that gave it its pipeline (a create or a pipeline change; a rollout's change counts as the rollout's
 * author's), whoever restarted it since (the audit log), and the author of the newest rollout that took it
 * since; for a rollout, its author.
 */
import { TaktError } from '../model/errors.js';
import type { Machine } from '../model/machine.js';
import { approvalRefusal, type ApprovalRule, type Approver } from '../model/permissions.js';
import type { Rollout } from '../model/rollout.js';
import type { Reads } from '../store/store.js';

/** How far back the record is read for the run's starter (changes to the machine; rollouts). */
const LOOK_BACK = 200;
const RECENT_ROLLOUTS = 50;

/** The approver the endpoint's own callers act as (tests, internal calls): every role. */
export const approverOf = (a: Approver | string): Approver => (typeof a === 'string' ? { author: a, grants: 'all' } : a);

/**
 * Refuses `a` on a machine's gate (`stage`, `rule`) unless they hold its role there, and, with the two-person
 * rule, unless someone else started the run. `decision`: `approve` or `reject` (a rejection needs the role
 * too, but the starter may reject: turning their own run down needs no second person).
 * @throws TaktError forbidden, saying which role is needed and who they are.
 */
export async function checkMachineApprover(reads: Reads, a: Approver, m: Machine, stage: string, rule: ApprovalRule | undefined, decision: 'approve' | 'reject'): Promise<void> {
  if (!rule) return;
  const refusal = approvalRefusal(a, rule.role, m);
  if (refusal) throw new TaktError('forbidden', `machine '${m.name}' at stage '${stage}': ${refusal}`);
  if (!rule.twoPerson || decision !== 'approve') return;
  const { starters, restarted } = await machineStarters(reads, m);
  if (starters.includes(a.author)) {
    throw new TaktError('forbidden', `machine '${m.name}' at stage '${stage}': the stage has the two-person rule and ${a.author} started this run (${starterText(starters, a.author, restarted)}); another holder of role ${rule.role} must approve it`);
  }
}

/**
 * Refuses `a` on a rollout's wave gate unless they hold its role (fleet-wide, as every rollout action) and,
 * with the two-person rule, are not its author. A rollout without an `approval` rule takes `rollouts:approve`
 * alone (checked on the route).
 * @throws TaktError forbidden.
 */
export function checkRolloutApprover(a: Approver, r: Rollout): void {
  const rule = r.spec.approval;
  if (!rule) return;
  const refusal = approvalRefusal(a, rule.role, null);
  if (refusal) throw new TaktError('forbidden', `rollout ${r.id}: ${refusal}`);
  if (rule.twoPerson && a.author === r.author) {
    throw new TaktError('forbidden', `rollout ${r.id} has the two-person rule and ${a.author} started it; another holder of role ${rule.role} must approve its next wave`);
  }
}

/** Who started the machine's current run (see the module comment); the rollout is named as `rollout:ID` too. */
export async function machineStarters(reads: Reads, m: Machine): Promise<{ starters: string[]; restarted: string[] }> {
  const changes = await reads.listChanges({ object: `machines/${m.id}`, limit: LOOK_BACK });
  const set = changes.find((c) => {
    const before = c.before as { pipeline?: unknown } | null;
    const after = c.after as { pipeline?: unknown } | null;
    return after !== null && after.pipeline && (c.action === 'create' || before?.pipeline !== after.pipeline);
  });
  const out: string[] = [];
  if (set) {
    out.push(set.author);
    if (set.author.startsWith('rollout:')) {
      const r = await reads.getRollout(set.author.slice('rollout:'.length));
      if (r) out.push(r.author);
    }
  }
  const since = set?.at ?? '';
  // A restart starts the run again and is no change to desired state: the audit log has who asked for it
  // (its entry is committed before the restart's answer left; gone after --audit-keep-days).
  const restarts = await reads.listAudit({ route: '/api/v1/machines/:id/restart', resources: [m.id, m.name], outcome: 'ok', ...(since ? { since } : {}), limit: 20 });
  out.push(...restarts.map((e) => e.principal));
  // A rollout that restarted the machine on the pipeline it had records no change to the machine.
  for (const r of await reads.listRollouts({ limit: RECENT_ROLLOUTS })) {
    if (r.createdAt < since || !r.spec.pipeline) continue;
    if ((await reads.listRolloutItems(r.id)).some((i) => i.machineId === m.id)) {
      out.push(`rollout:${r.id}`, r.author);
      break;
    }
  }
  return { starters: [...new Set(out)], restarted: restarts.map((e) => e.principal) };
}

function starterText(starters: string[], who: string, restarted: readonly string[]): string {
  if (restarted.includes(who)) return 'by restarting it';
  const rollout = starters.find((s) => s.startsWith('rollout:'));
  return rollout ? `through ${rollout.replace(':', ' ')}` : 'by setting its pipeline';
}
