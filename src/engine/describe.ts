/**
 * `machines describe`: one machine as an operator asks about it — where it stands in its pipeline (by
 * name), its agent, its last jobs and events, and above all what it waits for, in words. The decision
 * "what does it wait for" is `waitingFor`, a pure function over what the endpoint knows; `Describer`
 * only gathers its inputs from the store (reads only: describing changes nothing).
 */
import type { AgentLiveness, Job, Machine, MachineStatus, WorkOrder } from '../model/machine.js';
import { locate } from './transitions.js';
import type { Rollout, RolloutItem, RolloutState } from '../model/rollout.js';
import type { Store } from '../store/store.js';
import type { Engine } from './engine.js';
import { publicMachine } from './engine.js';
import { machineStatus } from './liveness.js';

/** What a machine waits for, with the facts that say so; `text` is the sentence operators read. */
export type Waiting =
  | { for: 'job'; text: string; job: string; task: string; since: string; leaseUntil: string | null }
  | { for: 'approval'; text: string; stage: string; role: string }
  | { for: 'agent'; text: string; lastSeenAt: string | null }
  | { for: 'rollout'; text: string; rollout: string; rolloutState: RolloutState; wave: number; currentWave: number }
  | { for: 'operator'; text: string; reason: string | null }
  | { for: 'power'; text: string }
  | { for: 'nothing'; text: string };

/** The rollout a machine is an unfinished item of, if any. */
export interface RolloutMembership {
  rollout: Pick<Rollout, 'id' | 'state' | 'wave' | 'reason'>;
  item: Pick<RolloutItem, 'wave' | 'state'>;
}

/** Everything `waitingFor` decides on. Times are ISO-8601 UTC. */
export interface WaitingInput {
  machine: Pick<Machine, 'name' | 'state' | 'power' | 'reason' | 'pipeline' | 'broker' | 'agent'>;
  /** The stage the machine stands at (by name), and who must approve it when it needs approval. */
  stage: string | null;
  task: string | null;
  approvalRole: string | null;
  /** The machine's running job, if any. */
  job: Pick<Job, 'id' | 'task' | 'createdAt' | 'leaseExpiresAt'> | null;
  /** Work orders queued or running on the machine. */
  openWorkOrders: number;
  rollout: RolloutMembership | null;
  /**
   * For a stopped or paused machine: why a resume would be refused and what to do instead, by the same
   * check a resume makes (Engine.resumeVerdict); null when a resume would go on.
   */
  resumeRefused?: { message: string; remedies: string[] } | null;
}

/**
 * What the machine waits for, first match wins: powered off; a running job (its lease; "pausing" when the
 * machine was paused while it runs); an approval; a rollout that holds it between two jobs (`--busy wait`: it
 * reassigns the machine next) or has not reached it yet; an agent when it
 * has work and none is connected; its agent to claim the next task; an operator when it stopped or is
 * paused (resume, or what to do instead when a resume would be refused); nothing when it is done or idle. Pure.
 */
export function waitingFor(i: WaitingInput): Waiting {
  const m = i.machine;
  const hasWork = m.state === 'running' || i.openWorkOrders > 0;
  if (m.power === 'off') return { for: 'power', text: `power on: it is powered off (takt machines power ${m.name} on)` };
  if (i.job) {
    const lease = i.job.leaseExpiresAt ? `, lease until ${i.job.leaseExpiresAt}` : '';
    const running = `job ${i.job.id} (${i.job.task}) running since ${i.job.createdAt}${lease}`;
    // Paused while its job runs (pause without --cancel): the job is not cut short, the machine holds after it.
    const text = m.state === 'paused' ? `pausing: the current job finishes first, then it holds — ${running}` : running;
    return { for: 'job', text, job: i.job.id, task: i.job.task, since: i.job.createdAt, leaseUntil: i.job.leaseExpiresAt };
  }
  if (m.state === 'awaiting-approval' && i.stage) {
    const role = i.approvalRole ?? 'an approver';
    return { for: 'approval', text: `an approval of stage ${i.stage} by ${role} (takt approvals approve ${m.name})`, stage: i.stage, role };
  }
  const r = i.rollout;
  // A running rollout holds the machines it waits for (store: machine_holds): with its job over, the next
  // task does not start; the rollout's next tick reassigns it. A paused one waits for its operator instead.
  if (r && r.item.state === 'waiting' && r.rollout.state === 'running' && m.state === 'running') {
    const text = `rollout ${r.rollout.id} to reassign it: the rollout holds it (--busy wait), so its next task does not start`;
    return { for: 'rollout', text, rollout: r.rollout.id, rolloutState: r.rollout.state, wave: r.item.wave, currentWave: r.rollout.wave };
  }
  if (r && r.item.state === 'pending') {
    const why =
      r.rollout.state === 'running'
        ? `its wave ${r.item.wave} (the rollout is on wave ${r.rollout.wave})`
        : r.rollout.state === 'awaiting-approval'
          ? `an approval of the rollout's next wave (takt rollouts approve ${r.rollout.id})`
          : `the rollout to be resumed: it is ${r.rollout.state}${r.rollout.reason ? ` (${r.rollout.reason})` : ''}`;
    return { for: 'rollout', text: `rollout ${r.rollout.id}: ${why}`, rollout: r.rollout.id, rolloutState: r.rollout.state, wave: r.item.wave, currentWave: r.rollout.wave };
  }
  if (hasWork && !m.agent.connected) {
    const who = m.broker === 'ssh' ? 'the endpoint to reach the host over SSH' : 'an agent';
    const seen = m.agent.lastSeenAt ? `last seen ${m.agent.lastSeenAt}` : 'never connected';
    return { for: 'agent', text: `${who}: none connected (${seen})`, lastSeenAt: m.agent.lastSeenAt };
  }
  if (hasWork) {
    const next = i.openWorkOrders > 0 ? 'a work order' : i.task ? `task ${i.stage ? `${i.stage}/` : ''}${i.task}` : 'its next task';
    return { for: 'agent', text: `its agent to claim ${next} (connected)`, lastSeenAt: m.agent.lastSeenAt };
  }
  if ((m.state === 'stopped' || m.state === 'paused') && i.resumeRefused) {
    // Not "resume": it would be refused (the content changed under the machine); say what works instead.
    return { for: 'operator', text: `an operator: ${m.state}${m.reason ? ` (${m.reason})` : ''}, and resume would be refused: ${i.resumeRefused.message}`, reason: m.reason };
  }
  if (m.state === 'stopped') {
    return { for: 'operator', text: `an operator: fix the cause, then takt machines resume ${m.name}${m.reason ? ` — ${m.reason}` : ''}`, reason: m.reason };
  }
  if (m.state === 'paused') {
    const at = i.task ? ` with task ${i.stage ? `${i.stage}/` : ''}${i.task}` : '';
    return { for: 'operator', text: `an operator: it holds where it stands; takt machines resume ${m.name} goes on${at}${m.reason ? ` — ${m.reason}` : ''}`, reason: m.reason };
  }
  if (m.state === 'done') return { for: 'nothing', text: `nothing: pipeline ${m.pipeline ?? ''} is done`.trimEnd() };
  return { for: 'nothing', text: m.pipeline ? 'nothing: idle' : 'nothing: idle, no pipeline assigned (takt machines update --pipeline P)' };
}

/** One job as describe lists it. `durationMs`: from creation to its end (or now, while it runs). */
export interface DescribedJob {
  id: string;
  kind: Job['kind'];
  stage: string | null;
  task: string;
  state: Job['state'];
  reason: string | null;
  exitCode: number | null;
  createdAt: string;
  finishedAt: string | null;
  durationMs: number;
}

/** One line of the machine's recent past: a recorded change to it, or a job that started or ended. */
export interface DescribedEvent {
  at: string;
  type: 'change' | 'approval' | 'job';
  message: string;
}

/** The answer of GET /machines/:id/describe. */
export interface MachineDescription {
  machine: ReturnType<typeof publicMachine> & { labels?: Record<string, string> };
  status: MachineStatus;
  /** Where the machine stands by name; stage and task are null when the pipeline is done or absent. */
  /** Where the machine stands, by name; `passed`: the stage/task keys that succeeded in this pass. */
  position: { stage: string | null; task: string | null; passed: string[]; attempt: number };
  agent: AgentLiveness;
  waitingFor: Waiting;
  jobs: DescribedJob[];
  workOrders: Array<Pick<WorkOrder, 'id' | 'blueprint' | 'state' | 'reason' | 'createdAt'>>;
  rollout: (RolloutMembership & { rollout: { id: string } }) | null;
  events: DescribedEvent[];
}

const ACTIVE_ROLLOUTS: RolloutState[] = ['running', 'paused', 'awaiting-approval'];

/** Gathers a machine's description from the store; reads only. */
export class Describer {
  constructor(
    private readonly engine: Engine,
    private readonly store: Store,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * @param jobs how many of the newest jobs to list; `events` likewise.
   * @throws TaktError not_found for an unknown machine.
   */
  async describe(idOrName: string, opts: { jobs?: number; events?: number } = {}): Promise<MachineDescription> {
    const m = this.engine.withLiveness(await this.engine.findMachine(idOrName));
    const content = this.engine.content.current;
    // A machine that has not claimed its next task yet stands at the first one not yet done in this pass.
    let { stage, task } = m;
    const shape = stage === null && m.pipeline && m.state !== 'done' ? this.engine.shapeOf(content, m.pipeline) : null;
    const next = shape ? locate(shape, m, false) : null;
    if (next?.kind === 'at') ({ stage, task } = next.step);
    const [jobs, workOrders, changes, approvals, rollout] = await Promise.all([
      this.store.listJobs({ machineId: m.id, limit: opts.jobs ?? 10 }),
      this.store.listWorkOrders({ machineId: m.id }),
      this.store.listChanges({ object: `machines/${m.id}`, limit: opts.events ?? 10 }),
      this.store.listChanges({ object: `approvals/${m.id}`, limit: opts.events ?? 10 }),
      this.rolloutOf(m.id),
    ]);
    const current = m.currentJob ? (jobs.find((j) => j.id === m.currentJob) ?? (await this.store.getJob(m.currentJob)) ?? null) : null;
    const open = workOrders.filter((w) => w.state === 'queued' || w.state === 'running');
    const nowMs = this.now();
    const refused = m.state === 'stopped' || m.state === 'paused' ? await this.engine.resumeVerdict(m) : null;
    const waiting = waitingFor({
      resumeRefused: refused ? { message: refused.message, remedies: refused.remedies } : null,
      machine: m,
      stage,
      task,
      approvalRole: stage ? (content.objects.stages.get(stage)?.def.approval?.role ?? null) : null,
      job: current && current.state === 'running' ? current : null,
      openWorkOrders: open.length,
      rollout,
    });
    const events: DescribedEvent[] = [
      ...changes.map((c) => ({ at: c.at, type: 'change' as const, message: `${c.action} by ${c.author}${changedFields(c.before, c.after)}` })),
      ...approvals.map((c) => ({ at: c.at, type: 'approval' as const, message: approvalText(c.author, c.after) })),
      ...jobs.flatMap((j) => [
        { at: j.createdAt, type: 'job' as const, message: `job ${j.id} started: ${j.stage ? `${j.stage}/` : ''}${j.task}` },
        ...(j.finishedAt ? [{ at: j.finishedAt, type: 'job' as const, message: `job ${j.id} ${j.state}${j.reason ? `: ${j.reason}` : ''}` }] : []),
      ]),
    ]
      .sort((a, b) => (a.at < b.at ? 1 : a.at > b.at ? -1 : 0))
      .slice(0, opts.events ?? 10)
      .reverse();
    return {
      machine: publicMachine(m),
      status: machineStatus(m),
      position: { stage, task, passed: m.passed, attempt: m.attempt },
      agent: m.agent,
      waitingFor: waiting,
      jobs: jobs.map((j) => ({
        id: j.id,
        kind: j.kind,
        stage: j.stage,
        task: j.task,
        state: j.state,
        reason: j.reason,
        exitCode: j.exitCode,
        createdAt: j.createdAt,
        finishedAt: j.finishedAt,
        durationMs: Math.max(0, (j.finishedAt ? Date.parse(j.finishedAt) : nowMs) - Date.parse(j.createdAt)),
      })),
      workOrders: open.map((w) => ({ id: w.id, blueprint: w.blueprint, state: w.state, reason: w.reason, createdAt: w.createdAt })),
      rollout,
      events,
    };
  }

  /** The active rollout in which the machine is still pending, waited for or running, if any. */
  private async rolloutOf(machineId: string): Promise<RolloutMembership | null> {
    for (const r of await this.store.listRollouts({ states: ACTIVE_ROLLOUTS, limit: 1000 })) {
      const item = (await this.store.listRolloutItems(r.id)).find((i) => i.machineId === machineId && (i.state === 'pending' || i.state === 'waiting' || i.state === 'running'));
      if (item) return { rollout: { id: r.id, state: r.state, wave: r.wave, reason: r.reason }, item: { wave: item.wave, state: item.state } };
    }
    return null;
  }
}

/** `stage release approved by admin: change window open`, from an approval record. */
function approvalText(author: string, after: unknown): string {
  const a = (after ?? {}) as { stage?: string; decision?: string; comment?: string; reason?: string };
  const note = a.comment ?? a.reason;
  return `stage ${a.stage ?? '?'} ${a.decision ?? 'decided'} by ${author}${note ? `: ${note}` : ''}`;
}

/** `: pipeline, params` — the top-level desired fields a change touched (values left to `takt history`). */
function changedFields(before: unknown, after: unknown): string {
  if (!before || !after || typeof before !== 'object' || typeof after !== 'object') return '';
  const b = before as Record<string, unknown>;
  const a = after as Record<string, unknown>;
  const keys = [...new Set([...Object.keys(b), ...Object.keys(a)])].filter((k) => JSON.stringify(b[k]) !== JSON.stringify(a[k]));
  return keys.length ? `: ${keys.join(', ')}` : '';
}
