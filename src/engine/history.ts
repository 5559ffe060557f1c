/**
 * Rewind: every desired-state change can be reverted (as a new change), and the whole desired state can
 * be taken back to how it stood after any change. Revert replays through the services that made the
 * change; rewind plans the whole target state through the import's planner and writes it in one
 * transaction. Both act on desired state only: what machines observed (outputs, position, facts) stays.
 */
import { CONTENT_KINDS, LOCAL_LAYER, type ContentKind } from '../model/content.js';
import { TaktError } from '../model/errors.js';
import { canonicalJson } from '../model/hash.js';
import type { Change, Job, Machine } from '../model/machine.js';
import { maskValues } from '../model/secure.js';
import type { Store } from '../store/store.js';
import type { ContentService } from './content.js';
import { fieldChanges } from './diff.js';
import type { DesiredView, Engine, MachinePatch, RestoreWrite } from './engine.js';
import { recordedOf, type MachineDoc, type Place, type Portable } from './portable.js';
import { placeFromJobs, placeOnReassign, shadowedParams } from './restore.js';

export interface RewindResult {
  to: number;
  /** True when nothing was written (`--dry-run`). */
  dryRun: boolean;
  /** What the rewind changes (or would), one line each; empty when the desired state already is as of `to`. */
  changes: string[];
  /** The new changes it made, newest last (none for a dry run); `name`: the object as people read it. */
  applied: Array<{ object: string; name: string; seq: number }>;
  /** Objects rewind leaves as they are, and why (machines created since `to`, or deleted since it). */
  skipped: Array<{ object: string; name: string; reason: string }>;
  /** Observed state of the machines it touched, which a rewind leaves as it is: outputs, state, agent. */
  observed: ObservedView[];
  /** Per machine, what restoring desired state means beside its observed state (restore.ts). */
  notes: string[];
}

/** What a revert did: the change it undid, how many new changes it made, and notes as a rewind's. */
export interface RevertResult {
  reverted: number;
  changes: number;
  notes: string[];
}

/** What a machine has, as observed (never rolled back): shown beside desired-state changes. */
export interface ObservedView {
  machine: string;
  state: Machine['state'];
  reason: string | null;
  /** Values its jobs set (secure ones masked). */
  outputs: Record<string, unknown>;
  agentConnected: boolean;
}

/** One field of a change: `added` and `removed` have only one side. */
export interface ChangeField {
  path: string;
  op: 'added' | 'removed' | 'changed';
  before?: unknown;
  after?: unknown;
}

const same = (a: unknown, b: unknown) => canonicalJson(a) === canonicalJson(b);
const MACHINE_FIELDS = ['name', 'environment', 'pipeline', 'profiles'] as const;

/** The name of a change's object as people read it: `machines/web-1` rather than `machines/m-1a2b`. */
export function changeName(c: Pick<Change, 'object' | 'before' | 'after'>): string {
  const [type] = c.object.split('/');
  const view = (c.after ?? c.before) as { name?: unknown; machine?: unknown } | null;
  if (type === 'machines' && typeof view?.name === 'string') return `machines/${view.name}`;
  if (type === 'approvals' && typeof view?.machine === 'string') return `approvals/${view.machine}`;
  return c.object;
}

export class History {
  constructor(
    private readonly store: Store,
    private readonly engine: Engine,
    private readonly content: ContentService,
    private readonly portable: Portable,
  ) {}

  /**
   * Changes with the name of each object (`name`), as lists show them; a work order's names its machine
   * (`workorders/w-1 (web-1)`).
   */
  async named(changes: Change[]): Promise<Array<Change & { name: string }>> {
    const machineNames = new Map<string, string>();
    const machineName = async (id: string) => {
      if (!machineNames.has(id)) machineNames.set(id, (await this.store.getMachine(id))?.name ?? id);
      return machineNames.get(id)!;
    };
    const out: Array<Change & { name: string }> = [];
    for (const c of changes) {
      const [type, ...rest] = c.object.split('/');
      let name = changeName(c);
      if (type === 'workorders') {
        const machineId = ((c.after ?? c.before) as { machineId?: unknown } | null)?.machineId ?? (await this.store.getWorkOrder(rest.join('/')))?.machineId;
        if (typeof machineId === 'string') name = `${c.object} (${await machineName(machineId)})`;
      }
      out.push({ ...c, name });
    }
    return out;
  }

  /** One change: its fields (a removed field as a removal), and the observed state of its machine now. */
  async show(seq: number): Promise<Change & { name: string; diff: ChangeField[]; observed?: ObservedView }> {
    const c = await this.get(seq);
    const diff = fieldChanges(c.before ?? null, c.after ?? null).map((f): ChangeField => {
      if (f.before === undefined) return { path: f.path, op: 'added', after: f.after };
      if (f.after === undefined) return { path: f.path, op: 'removed', before: f.before };
      return { path: f.path, op: 'changed', before: f.before, after: f.after };
    });
    const [type, ...rest] = c.object.split('/');
    const m = type === 'machines' ? await this.store.getMachine(rest.join('/')) : undefined;
    return { ...c, name: changeName(c), diff, ...(m ? { observed: this.observed(m) } : {}) };
  }

  /** Undoes change `seq` as a new change, if what it changed has not been changed again since. */
  async revert(seq: number, author: string): Promise<RevertResult> {
    const c = await this.get(seq);
    const by = `${author} (revert #${seq})`;
    const before = await this.latestSeq();
    const [type, ...rest] = c.object.split('/');
    const name = rest.join('/');
    if (c.author.startsWith('job:')) throw new TaktError('conflict', `change #${seq} was written by ${c.author.replace(':', ' ')}: its values are what the machine observed (outputs), not desired state; they cannot be reverted`);
    const notes: string[] = [];
    if (type === 'machines') notes.push(...(await this.revertMachine(name, c, by, `revert of #${seq}`)));
    else if (type === 'packs') await this.setPack(name, c.after as { version: string } | null, c.before as { version: string } | null, by, true);
    else if (CONTENT_KINDS.includes(type as ContentKind)) await this.setLocal(type as ContentKind, name, c.after, c.before, by, true);
    else if (type === 'packversions' && c.action === 'delete') throw new TaktError('conflict', `change #${seq} removed ${name}; install it again (\`takt content install DIR\`) to have it back`);
    else if (type === 'packversions') throw new TaktError('conflict', `change #${seq} installed ${name}; installed versions are immutable and kept (use another version with \`takt content use\`)`);
    else if (type === 'images') throw new TaktError('conflict', `change #${seq} ${c.action === 'delete' ? 'removed' : 'imported'} image ${name}; image versions are immutable: ${c.action === 'delete' ? 'import it again (takt images import)' : 'remove it (takt images rm) if it should go'}`);
    else throw new TaktError('conflict', `change #${seq} (${c.object}) is run-time work, not desired state; it cannot be reverted`);
    return { reverted: seq, changes: (await this.latestSeq()) - before, notes };
  }

  /**
   * Restores the desired state (pins, local content, machines' desired fields) to how it stood right
   * after change `to`, all or nothing: every object is checked first, then all are written in one
   * transaction (through the import's planner, so every check of an import applies). Observed state —
   * outputs, position, facts, liveness — is left as it is. `dryRun`: answers what it would change.
   * @throws TaktError('invalid') naming every problem; nothing is written then.
   */
  async rewind(to: number, author: string, opts: { dryRun?: boolean } = {}): Promise<RewindResult> {
    if (to !== 0) await this.get(to);
    const by = `${author} (rewind to #${to})`;
    // The state of each object as of `to` is the `before` of its first change after `to`.
    const first = new Map<string, Change>();
    const since = new Map<string, Change[]>();
    for (let after = to; ; ) {
      const page = (await this.store.listChanges({ after, limit: 1000 })).sort((a, b) => a.seq - b.seq);
      for (const c of page) {
        if (!first.has(c.object)) first.set(c.object, c);
        if (c.object.startsWith('machines/')) since.set(c.object, [...(since.get(c.object) ?? []), c]);
      }
      if (page.length < 1000) break;
      after = page[page.length - 1]!.seq;
    }
    const inUse: Record<string, string> = {};
    for (const [name, pin] of this.content.pinned) inUse[name] = pin.version;
    const local = new Map<string, { kind: ContentKind; name: string; def: unknown }>();
    for (const kind of CONTENT_KINDS) for (const e of this.content.list(kind)) if (e.layer === LOCAL_LAYER) local.set(`${kind}/${e.name}`, { kind, name: e.name, def: e.def });
    const machines: MachineDoc[] = [];
    const touched: Machine[] = [];
    const skipped: RewindResult['skipped'] = [];
    for (const c of first.values()) {
      const [type, ...rest] = c.object.split('/');
      const name = rest.join('/');
      if (type === 'packs') {
        const v = (c.before as { version?: string } | null)?.version;
        if (v) inUse[name] = v;
        else delete inUse[name];
      } else if (CONTENT_KINDS.includes(type as ContentKind)) {
        if (c.before === null) local.delete(c.object);
        else local.set(c.object, { kind: type as ContentKind, name, def: c.before });
      } else if (type === 'machines') {
        const m = await this.store.getMachine(name);
        // Entries written before run state was left out of history still carry `state`; it is dropped.
        const target = c.before as (DesiredView & { state?: unknown }) | null;
        // A machine created after `to` and deleted since is in neither state: nothing to say about it.
        if (!m && !target) continue;
        if (!m) skipped.push({ object: c.object, name: `machines/${target!.name}`, reason: `deleted since #${to}; a rewind does not create machines again (create it if it should come back)` });
        else if (!target) skipped.push({ object: c.object, name: `machines/${m.name}`, reason: `created after #${to}; delete it if it should go` });
        else {
          const { state: _state, ssh: _ssh, ...desired } = target;
          // Params are restored as desired (restore.ts), except values a job wrote into params before outputs
          // were kept apart (migration 0012): those were observed, and stay as they are now.
          const params = { ...desired.params };
          for (const k of await this.jobWritten(c.object, to)) {
            if (Object.hasOwn(m.params, k)) params[k] = m.params[k];
            else delete params[k];
          }
          // A machine going back to another pipeline takes the place it had there (restore.ts).
          const left = desired.pipeline && desired.pipeline !== m.pipeline ? (since.get(c.object) ?? []).find((x) => (x.before as DesiredView | null)?.pipeline === desired.pipeline && (x.after as DesiredView | null)?.pipeline !== desired.pipeline) : undefined;
          const place = left ? await this.placeIn(m, desired.pipeline!, left) : undefined;
          machines.push({ ...this.portable.desiredOf(m), ...desired, params, ...(place ? { place } : {}) });
          touched.push(m);
        }
      }
    }
    const before = await this.latestSeq();
    const r = await this.portable.applyDesired({ inUse, local: [...local.values()], machines }, by, { dryRun: opts.dryRun, nothing: 'nothing was rewound', by: `rewind to #${to}` });
    const applied = opts.dryRun ? [] : await this.changesAfter(before);
    const observed: ObservedView[] = [];
    for (const m of touched) {
      const now = await this.store.getMachine(m.id);
      if (now) observed.push(this.observed(now));
    }
    return { to, dryRun: opts.dryRun === true, changes: r.changes, applied, skipped, observed, notes: r.notes };
  }

  /**
   * The place machine `m` had in `pipeline` when change `left` took it to another one, as restore.ts reads
   * it: the pipeline jobs it ran there since that pipeline was last assigned (before `left`), its state
   * then (`left`'s before), and, stopped, the reason of the job it stopped on. Undefined when the pipeline
   * is not in the content in use.
   */
  private async placeIn(m: Machine, pipeline: string, left: Change): Promise<Place | undefined> {
    // History no longer records run state (desiredView); entries written before it did still carry it.
    const recorded = (left.before as (DesiredView & { state?: Machine['state'] }) | null)?.state;
    const shape = this.engine.shapeOf(this.content.current, pipeline);
    if (!shape) return undefined;
    // When the pipeline was assigned: the newest change before `left` that made it the machine's pipeline.
    let assigned: string | undefined;
    for (let offset = 0; assigned === undefined && offset < 100_000; offset += 1000) {
      const page = await this.store.listChanges({ object: left.object, limit: 1000, offset });
      const hit = page.find((x) => x.seq < left.seq && (x.after as DesiredView | null)?.pipeline === pipeline && (x.before as DesiredView | null)?.pipeline !== pipeline);
      if (hit) assigned = hit.at;
      if (page.length < 1000) break;
    }
    const jobs: Job[] = [];
    for (let offset = 0; offset < 100_000; offset += 1000) {
      const page = await this.store.listJobs({ machineId: m.id, order: 'asc', limit: 1000, offset, ...(assigned ? { since: assigned } : {}) });
      jobs.push(...page.filter((j) => j.kind === 'pipeline' && j.pipeline === pipeline && j.createdAt < left.at));
      if (page.length < 1000) break;
    }
    const at = placeFromJobs(shape, jobs);
    const last = jobs.filter((j) => j.state !== 'running').at(-1);
    // Otherwise the jobs tell it: the line stopped on a task whose last job failed or was lost; any other
    // place is held paused (never started by the restore itself).
    const state: Machine['state'] = recorded ?? (at.task !== null && last && (last.state === 'failed' || last.state === 'lost') ? 'stopped' : 'paused');
    const reason = state === 'stopped' && at.task !== null && last && last.state !== 'succeeded' ? last.reason : null;
    return { state, reason, position: { ...at, attempt: 0, approvedStage: null } };
  }

  /**
   * Params of the machine whose value as of change `to` a job wrote (history from before outputs were kept
   * apart, when `job:<id>` changes wrote outputs into params): observed, so a rewind leaves them be.
   */
  private async jobWritten(object: string, to: number): Promise<Set<string>> {
    const writer = new Map<string, string>();
    const changes: Change[] = [];
    for (let offset = 0; offset < 100_000; offset += 1000) {
      const page = await this.store.listChanges({ object, limit: 1000, offset });
      changes.push(...page.filter((x) => x.seq <= to));
      if (page.length < 1000) break;
    }
    for (const x of changes.sort((a, b) => a.seq - b.seq)) {
      const [b, a] = [(x.before as DesiredView | null)?.params ?? {}, (x.after as DesiredView | null)?.params ?? {}];
      for (const k of new Set([...Object.keys(b), ...Object.keys(a)])) if (!same(b[k], a[k])) writer.set(k, x.author);
    }
    return new Set([...writer].filter(([, author]) => author.startsWith('job:')).map(([k]) => k));
  }

  /** The observed state of a machine, as history shows it beside desired state. */
  private observed(m: Machine): ObservedView {
    const live = this.engine.withLiveness(m);
    return { machine: m.name, state: m.state, reason: m.reason, outputs: maskValues(m.outputs), agentConnected: live.agent.connected };
  }

  private async changesAfter(seq: number): Promise<RewindResult['applied']> {
    const out: RewindResult['applied'] = [];
    for (let after = seq; ; ) {
      const page = (await this.store.listChanges({ after, limit: 1000 })).sort((a, b) => a.seq - b.seq);
      for (const c of page) out.push({ object: c.object, name: changeName(c), seq: c.seq });
      if (page.length < 1000) return out;
      after = page[page.length - 1]!.seq;
    }
  }

  /** Reverts a machine change through the engine as a restore (restore.ts); answers the report's notes. */
  private async revertMachine(id: string, c: Change, by: string, what: string): Promise<string[]> {
    const m = await this.store.getMachine(id);
    if (!m) throw new TaktError('conflict', `machine ${id} no longer exists; change #${c.seq} cannot be reverted`);
    if (c.action !== 'update') throw new TaktError('conflict', `change #${c.seq} ${c.action}d the machine; reverting that is not supported — ${c.action === 'create' ? 'delete' : 'create'} it instead`);
    const before = c.before as DesiredView;
    const after = c.after as DesiredView;
    const patch: MachinePatch = {};
    const conflicts: string[] = [];
    for (const f of MACHINE_FIELDS) {
      if (same(before[f], after[f])) continue;
      if (!same(m[f], after[f])) conflicts.push(f);
      (patch as Record<string, unknown>)[f] = before[f];
    }
    const params: Record<string, unknown> = {};
    for (const k of new Set([...Object.keys(before.params), ...Object.keys(after.params)])) {
      if (same(before.params[k], after.params[k])) continue;
      if (!same(m.params[k], after.params[k])) conflicts.push(`params.${k}`);
      params[k] = before.params[k] ?? null;
    }
    if (Object.keys(params).length) patch.params = params;
    // Entries written before labels existed have none: they mean "no labels".
    const [was, now] = [before.labels ?? {}, after.labels ?? {}];
    const labels: Record<string, string | null> = {};
    for (const k of new Set([...Object.keys(was), ...Object.keys(now)])) {
      if (was[k] === now[k]) continue;
      if (m.labels[k] !== now[k]) conflicts.push(`labels.${k}`);
      labels[k] = was[k] ?? null;
    }
    if (Object.keys(labels).length) patch.labels = labels;
    if (conflicts.length) {
      throw new TaktError('conflict', `cannot revert change #${c.seq}: ${conflicts.join(', ')} changed again since; revert the later change first or rewind`);
    }
    const powerChanged = before.power !== after.power;
    if (Object.keys(patch).length === 0 && !powerChanged) {
      // Entries written before run state was left out of history (see desiredView) may hold only that.
      const was = (before as { state?: string }).state;
      const run = was !== undefined ? ` (${was} → ${(after as { state?: string }).state})` : '';
      throw new TaktError('conflict', `change #${c.seq} changed only the machine's run state${run}; there is no desired state to revert`);
    }
    const notes: string[] = [];
    const restore: RestoreWrite = {};
    if (patch.pipeline) {
      // Back to the pipeline it had before the change: the place it had there when the change took it away.
      const place = await this.placeIn(m, patch.pipeline, c);
      const decided = placeOnReassign(m.name, m.pipeline, patch.pipeline, this.engine.shapeOf(this.content.current, patch.pipeline), recordedOf(place), what);
      restore.place = decided.place;
      notes.push(decided.note);
    }
    if (patch.params) notes.push(...shadowedParams(m, patch.params).map((n) => `${m.name}: ${n}`));
    if (Object.keys(patch).length) await this.engine.updateMachine(id, patch, by, restore);
    if (powerChanged) await this.engine.setPower(id, before.power, by);
    return notes;
  }

  /** Makes a local object equal `target` (null: absent); with `expect`, only if it is still as the change left it. */
  private async setLocal(kind: ContentKind, name: string, expect: unknown, target: unknown, by: string, check: boolean) {
    const current = this.content.current.objects[kind].get(name);
    if (current && current.layer !== 'local') throw new TaktError('conflict', `${kind}/${name} now belongs to pack '${current.layer}'`);
    if (check && !same(current?.def ?? null, expect ?? null)) throw new TaktError('conflict', `${kind}/${name} changed again since; revert the later change first or rewind`);
    if (same(current?.def ?? null, target ?? null)) return;
    if (target === null || target === undefined) await this.content.deleteLocal(kind, name, by);
    else await this.content.putLocal(kind, target, by, current ? 'update' : 'create', name);
  }

  private async setPack(name: string, expect: { version: string } | null | undefined, target: { version: string } | null, by: string, check: boolean) {
    const current = this.content.pinned.get(name)?.version ?? null;
    if (check && current !== (expect?.version ?? null)) throw new TaktError('conflict', `pack ${name} changed again since (now ${current ?? 'not in use'}); revert the later change first or rewind`);
    if (current === (target?.version ?? null)) return;
    if (target === null) await this.content.removePack(name, by);
    else await this.content.usePack(name, target.version, by);
  }

  private async get(seq: number): Promise<Change> {
    const c = await this.store.getChange(seq);
    if (!c) throw new TaktError('not_found', `change #${seq} not found`);
    return c;
  }

  private async latestSeq(): Promise<number> {
    return (await this.store.listChanges({ limit: 1 }))[0]?.seq ?? 0;
  }
}
