/**
 * Rollouts: apply a pipeline (or a blueprint) to a fixed selection of machines in waves — a canary first,
 * then batches — with at most `maxInFlight` machines busy at once. One failure beyond the budget pulls the
 * andon: no new machine starts, the failing ones stay stopped with their logs, and the rollout says why.
 *
 * The driver is a `tick` that reads the store and moves each running rollout one step; it runs on every
 * machine or work-order event and on a timer, so a restarted endpoint simply carries on.
 *
 * Replicas: every replica ticks every rollout, so each step is decided inside a store transaction on
 * fresh reads (the PostgreSQL write lock serialises them): results, the andon, the wave and the end in one
 * (`settleWaves`); each machine's start in its own (`startItem`: the rollout still running in that wave,
 * the item still pending or waiting, the in-flight limit counted anew, and the reassignment written in the
 * same transaction). A replica that comes second finds the step done and does nothing.
 */
import { factPathProblem } from '../model/factselect.js';
import { assertEnvironment } from './declared.js';
import { TaktError } from '../model/errors.js';
import { formatLabelSelector, parseLabelSelector } from '../model/labels.js';
import { ADHOC_TASK, type Machine } from '../model/machine.js';
import { newId } from './ids.js';
import { BUSY_POLICIES, hint, type BusyPolicy, type Rollout, type RolloutItem, type RolloutPlanItem, type RolloutSpec, type RolloutState } from '../model/rollout.js';
import type { Reads, Store, Tx } from '../store/store.js';
import type { Engine } from './engine.js';
import type { MachineSelection, Records } from './records.js';
import { approverOf, checkRolloutApprover } from './approvals.js';
import { ROLE_NAMES, type ApprovalRule, type Approver } from '../model/permissions.js';

export interface RolloutInput {
  pipeline?: string;
  blueprint?: string;
  /** Machine filters (state, pipeline, …, facts.<path>); absent or empty: all machines (narrowed by `selector`). */
  select?: Record<string, string>;
  /** A label selector (`role=web,env!=prod`, model/labels.ts); all its terms and `select` must hold. */
  selector?: string;
  /** Exact machines (by id), for callers that chose them already (the churn policy); overrides `select`. */
  machineIds?: string[];
  canary?: number;
  batch?: number;
  maxInFlight?: number;
  maxFailures?: number;
  approveBetweenWaves?: boolean;
  /** What happens to busy machines when their turn comes (default `wait`). */
  busy?: BusyPolicy;
  /** Who may approve its waves: a built-in role, and the two-person rule (RolloutSpec.approval). */
  approval?: ApprovalRule;
  /** Machine params the rollout sets on each machine as it starts it (RolloutSpec.params); pipeline rollouts only. */
  params?: Record<string, unknown>;
}

/** A rollout's approval rule, checked: a built-in role, `twoPerson` a boolean. @throws TaktError invalid at `/approval/…`. */
export function checkApprovalRule(a: ApprovalRule): ApprovalRule {
  if (typeof a !== 'object' || a === null || typeof a.role !== 'string' || !ROLE_NAMES.includes(a.role)) {
    throw new TaktError('invalid', `approval.role must be one of the built-in roles (${ROLE_NAMES.join(', ')}); holders of it, and admins, may approve the waves`, { path: '/approval/role' });
  }
  if (a.twoPerson !== undefined && typeof a.twoPerson !== 'boolean') throw new TaktError('invalid', 'approval.twoPerson must be true or false', { path: '/approval/twoPerson' });
  return { role: a.role, ...(a.twoPerson ? { twoPerson: true } : {}) };
}

/** A dry run: what `create` would do, machine by machine; nothing is created. */
export interface RolloutDryRun {
  dryRun: true;
  spec: RolloutSpec;
  waves: number;
  items: RolloutPlanItem[];
}

export interface RolloutView extends Rollout {
  counts: Record<RolloutItem['state'], number>;
  items: RolloutItem[];
}

const SELECT_KEYS = ['state', 'pipeline', 'environment', 'broker', 'name', 'builtWith', 'stale'] as const;
const ACTIVE: RolloutState[] = ['running', 'paused', 'awaiting-approval'];
/** Active, or stopped by its andon (it may be retried): what `create` reads to check clashes and `exclusive`. */
const ACTIVE_OR_STOPPED: RolloutState[] = [...ACTIVE, 'stopped'];
/** Machine states a rollout does not reassign a machine out of without saying so (see BusyPolicy). */
const BUSY_STATES: readonly string[] = ['awaiting-approval', 'paused'];

/** Why a machine is busy now: its running job, or a state a reassignment would throw away. */
export interface Busy {
  job: { id: string; task: string } | null;
  /** In words: "job j-1 (task build)", "it is awaiting-approval". */
  what: string;
}

export class Rollouts {
  private timer: NodeJS.Timeout | null = null;
  private ticking: Promise<void> | null = null;
  private again = false;
  private unsubscribe: (() => void) | null = null;
  /** Whether the last tick found a running rollout (until a tick says otherwise, assume so). */
  private running = true;

  constructor(
    private readonly store: Store,
    private readonly engine: Engine,
    private readonly records: Records,
    private readonly opts: { tickMs?: number; log?: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void } = {},
  ) {}

  start(): void {
    this.unsubscribe = this.store.onEvents((events) => {
      // Machine and work-order events (two per job) only matter while a rollout runs; the last tick
      // knows whether one does, and a new or changed rollout says so itself.
      if (events.some((e) => e.topic.startsWith('rollouts.'))) {
        this.running = true;
        this.kick();
      } else if (this.running && events.some((e) => e.topic.startsWith('machines.update.') || e.topic.startsWith('workorders.update.'))) this.kick();
    });
    this.timer = setInterval(() => this.kick(), this.opts.tickMs ?? 1000);
    this.timer.unref();
    this.kick();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.unsubscribe?.();
  }

  /**
   * Creates a rollout and starts it. `exclusive`: refused (TaktError conflict, details.exclusive) when the
   * author has an active rollout — checked in the creating transaction, so two replicas running the same
   * policy at once create one (churn.ts). The machines' clash with other active rollouts is checked there too.
   */
  async create(input: RolloutInput, author: string, opts: { exclusive?: boolean } = {}): Promise<RolloutView> {
    const { spec, selected } = await this.prepare(input);
    const now = new Date().toISOString();
    const id = newId('r');
    const items: RolloutItem[] = selected.map((m, i) => ({
      rolloutId: id,
      machineId: m.id,
      machineName: m.name,
      wave: waveOf(i, spec),
      state: 'pending',
      reason: null,
      workOrderId: null,
      startedAt: null,
      finishedAt: null,
    }));
    const rollout: Rollout = { id, spec, state: 'running', reason: null, wave: 0, waves: items[items.length - 1]!.wave + 1, author, createdAt: now, updatedAt: now };
    await this.store.transact(async (tx) => {
      // Again on fresh reads: another replica (or request) may have created a rollout since prepare looked.
      const active = await tx.listRollouts({ states: ACTIVE_OR_STOPPED, limit: 1000 });
      const mine = opts.exclusive ? active.find((r) => r.author === author) : undefined;
      if (mine) throw new TaktError('conflict', `${author} already has rollout ${mine.id} (${mine.state}); one at a time`, { details: { exclusive: true, rollout: mine.id } });
      await assertNoClash(tx, active, selected);
      await tx.insertRollout(rollout, items);
      await tx.change(author, `rollouts/${id}`, 'create', null, { spec, machines: items.map((i) => i.machineName) });
      tx.emit(`rollouts.create.${id}`, rollout);
    });
    this.kick();
    return this.view(id);
  }

  /**
   * What `create` would do, per machine as things stand now: its pipeline, state and running job, its
   * wave, and the action (reassign, queue, wait, skip, cancel). Creates nothing; a machine's state may
   * change before its turn comes, and the busy policy is applied then.
   */
  async dryRun(input: RolloutInput): Promise<RolloutDryRun> {
    const { spec, selected } = await this.prepare(input);
    const items: RolloutPlanItem[] = [];
    for (const [index, m] of selected.entries()) {
      const busy = await this.busyOf(spec, m);
      const planned = planAction(spec, busy);
      // A network-booted machine whose pipeline starts in discovery is rebuilt, not restarted in place.
      const rebuild = spec.pipeline && this.engine.startsOverAsRebuild(m, spec.pipeline) && planned.action !== 'skip';
      const { action, detail } = rebuild ? { ...planned, detail: `${planned.detail}; rebuilt: it boots discovery again` } : planned;
      items.push({ machineName: m.name, pipeline: m.pipeline, state: m.state, job: busy?.job ?? null, wave: waveOf(index, spec), action, detail });
    }
    return { dryRun: true, spec, waves: items[items.length - 1]!.wave + 1, items };
  }

  /** The spec and the machines, checked; @throws TaktError as `create` documents. */
  private async prepare(given: RolloutInput): Promise<{ spec: RolloutSpec; selected: Machine[] }> {
    const input = { ...given, select: given.select ?? {} };
    if (!!input.pipeline === !!input.blueprint) throw new TaktError('invalid', 'a rollout runs either a pipeline or a blueprint: give exactly one', { path: '/pipeline' });
    const content = this.engine.content.current;
    if (input.pipeline && !content.objects.pipelines.has(input.pipeline)) throw new TaktError('not_found', `pipeline '${input.pipeline}' not found`, { path: '/pipeline' });
    if (input.blueprint && !content.objects.blueprints.has(input.blueprint)) throw new TaktError('not_found', `blueprint '${input.blueprint}' not found`, { path: '/blueprint' });
    if (input.busy !== undefined && !BUSY_POLICIES.includes(input.busy)) throw new TaktError('invalid', `busy must be one of ${BUSY_POLICIES.join(', ')}`, { path: '/busy' });
    const labels = input.selector !== undefined ? parseLabelSelector(input.selector, '/selector') : undefined;
    if (labels?.length === 0) throw new TaktError('bad_request', 'the label selector is empty; give key=value terms (e.g. role=web), or leave it out', { path: '/selector' });
    const spec: RolloutSpec = {
      ...(input.pipeline ? { pipeline: input.pipeline } : { blueprint: input.blueprint! }),
      select: input.select,
      ...(labels ? { selector: formatLabelSelector(labels) } : {}),
      canary: input.canary ?? 1,
      batch: input.batch ?? 5,
      maxInFlight: input.maxInFlight ?? input.batch ?? 5,
      maxFailures: input.maxFailures ?? 0,
      approveBetweenWaves: input.approveBetweenWaves ?? false,
      busy: input.busy ?? 'wait',
      ...(input.approval ? { approval: checkApprovalRule(input.approval) } : {}),
      ...(input.params && Object.keys(input.params).length > 0 ? { params: this.checkParams(input.params, !!input.pipeline) } : {}),
    };
    for (const [k, v] of Object.entries({ canary: spec.canary, batch: spec.batch, maxInFlight: spec.maxInFlight, maxFailures: spec.maxFailures })) {
      if (!Number.isInteger(v) || v < (k === 'maxFailures' || k === 'canary' ? 0 : 1)) throw new TaktError('invalid', `${k} must be a whole number${k === 'maxFailures' || k === 'canary' ? '' : ' of at least 1'}`, { path: `/${k}` });
    }
    const selected = input.machineIds
      ? (await Promise.all(input.machineIds.map((id) => this.store.getMachine(id)))).filter((m) => m !== undefined)
      : (await this.records.select({ ...parseSelection(input.select), ...(labels ? { labels } : {}) })).map((s) => s.machine);
    if (selected.length === 0) throw new TaktError('invalid', `the selection ${describe(input.select, spec.selector)} matches no machine`, { path: labels ? '/selector' : '/select' });
    // The same rule as an update: a machine is reassigned only to a pipeline that exercises its environment.
    if (spec.pipeline) for (const m of selected) assertEnvironment(this.engine.content.current, m.name, m.environment, spec.pipeline);
    await assertNoClash(this.store, await this.store.listRollouts({ states: ACTIVE, limit: 1000 }), selected);
    return { spec, selected };
  }

  /**
   * A rollout's params, checked as a machine update checks them (name, the param's schema), before any
   * machine starts. Refused: with a blueprint (a work order does not change the machine), a secure param
   * (the spec is shown in the clear by `rollouts get` and history: set it on the machines or a profile),
   * and null (a rollout sets values; unset a param with `takt machines update M --unset`).
   * @throws TaktError invalid at `/params/<name>`.
   */
  private checkParams(params: Record<string, unknown>, pipeline: boolean): Record<string, unknown> {
    if (!pipeline) throw new TaktError('invalid', 'params go with a pipeline rollout (they are set on each machine as it starts); a blueprint rollout takes none', { path: '/params' });
    const content = this.engine.content.current;
    for (const [name, value] of Object.entries(params)) {
      if (value === null) throw new TaktError('invalid', `param '${name}': a rollout sets values; unset a param on machines with takt machines update M --unset ${name}`, { path: `/params/${name}` });
      if (content.objects.params.get(name)?.def.secure) {
        throw new TaktError('invalid', `param '${name}' is secure: a rollout's params are shown in the clear (rollouts get, history); set it on the machines or a profile instead`, { path: `/params/${name}` });
      }
    }
    this.engine.checkParamsPatch(content, params);
    return params;
  }

  /**
   * Whether the machine is busy: a running job; for a pipeline rollout also a state a reassignment would
   * throw away (awaiting approval, paused). A blueprint's work order queues behind whatever the pipeline
   * does, so only a running job makes a machine busy for it.
   */
  private async busyOf(spec: RolloutSpec, m: Machine, reads: Reads = this.store): Promise<Busy | null> {
    const job = m.currentJob ? await reads.getJob(m.currentJob) : undefined;
    if (job?.state === 'running') return { job: { id: job.id, task: job.task }, what: `job ${job.id} (${job.task === ADHOC_TASK ? 'an ad-hoc command' : `task ${job.task}`})` };
    if (spec.pipeline && BUSY_STATES.includes(m.state)) return { job: null, what: `it is ${m.state}` };
    return null;
  }

  async view(id: string): Promise<RolloutView> {
    const r = await this.store.getRollout(id);
    if (!r) throw new TaktError('not_found', `rollout '${id}' not found; \`takt rollouts list\` shows them`);
    const items = await this.store.listRolloutItems(id);
    const counts = { pending: 0, waiting: 0, running: 0, succeeded: 0, failed: 0, skipped: 0 };
    for (const i of items) counts[i.state] += 1;
    return { ...r, counts, items };
  }

  async list(states?: RolloutState[]): Promise<RolloutView[]> {
    const rs = await this.store.listRollouts({ limit: 100, states });
    return Promise.all(rs.map((r) => this.view(r.id)));
  }

  pause(id: string, author: string) {
    return this.transition(id, author, 'pause', ['running', 'awaiting-approval'], 'paused', `paused by ${author}`);
  }
  resume(id: string, author: string) {
    return this.transition(id, author, 'resume', ['paused'], 'running', null);
  }
  /**
   * Starts the next wave. `by`: who approves — checked against the rollout's `approval` (role, two-person
   * rule: engine/approvals.ts); a plain author text acts with every role. @throws TaktError forbidden, conflict, not_found.
   */
  approve(id: string, by: Approver | string) {
    const approver = approverOf(by);
    return this.transition(id, approver.author, 'approve', ['awaiting-approval'], 'running', null, (r) => ({ ...r, wave: r.wave + 1 }), (r) => checkRolloutApprover(approver, r));
  }
  async abort(id: string, author: string) {
    const view = await this.transition(id, author, 'abort', ['running', 'paused', 'awaiting-approval', 'stopped'], 'aborted', `aborted by ${author}`);
    for (const i of view.items) if (i.state === 'pending' || i.state === 'waiting') await this.saveItem({ ...i, state: 'skipped', reason: i.state === 'waiting' ? `rollout aborted while ${i.reason ?? 'waiting'}` : 'rollout aborted' });
    await this.syncHolds();
    return this.view(id);
  }

  /** Re-runs only the failed machines, with the same pipeline or blueprint. */
  async retry(id: string, author: string): Promise<RolloutView> {
    const view = await this.view(id);
    const failed = view.items.filter((i) => i.state === 'failed');
    if (view.state === 'running') throw new TaktError('conflict', `cannot retry rollout ${id}: it is running${failed.length ? ` (${failed.length} failed within the budget)` : ''}; retry applies once it is stopped, paused or ended. ${hint(view)}`);
    if (failed.length === 0) throw new TaktError('conflict', `cannot retry rollout ${id}: it is ${stateText(view)} and has no failed machines to retry. ${hint(view)}`);
    // A machine deleted since it failed is not retried (it would fail again, for ever): it is left out.
    const retried: RolloutItem[] = [];
    for (const i of failed) {
      const gone = await this.deletedNote(i);
      if (gone) await this.saveItem({ ...i, state: 'skipped', reason: gone, finishedAt: i.finishedAt ?? new Date().toISOString() });
      else retried.push(await this.saveItem({ ...i, state: 'pending', reason: null, workOrderId: null, startedAt: null, finishedAt: null }));
    }
    const firstWave = retried.length ? Math.min(...retried.map((i) => i.wave)) : view.wave;
    return this.transition(id, author, 'retry', ['stopped', 'completed', 'paused', 'aborted', 'awaiting-approval'], 'running', null, (r) => ({ ...r, wave: Math.min(r.wave, firstWave) }));
  }

  /** Pulls the cord: pauses every active rollout. */
  async andon(author: string): Promise<string[]> {
    const paused: string[] = [];
    for (const r of await this.store.listRollouts({ states: ['running', 'awaiting-approval'], limit: 1000 })) {
      await this.transition(r.id, author, 'pause', ['running', 'awaiting-approval'], 'paused', `andon pulled by ${author}`);
      paused.push(r.id);
    }
    return paused;
  }

  /**
   * Moves a rollout from one of `from` to `to`. @throws TaktError conflict saying the state it is in and
   * the verb that would help, when it is in none of `from`.
   */
  private async transition(id: string, author: string, action: string, from: RolloutState[], to: RolloutState, reason: string | null, patch: (r: Rollout) => Rollout = (r) => r, allowed: (r: Rollout) => void = () => undefined) {
    await this.store.transact(async (tx) => {
      const r = await tx.getRollout(id);
      if (!r) throw new TaktError('not_found', `rollout '${id}' not found; \`takt rollouts list\` shows them`);
      if (!from.includes(r.state)) {
        throw new TaktError('conflict', `cannot ${action} rollout ${id}: it is ${stateText(r)}; ${action} applies to a rollout that is ${from.join(' or ')}. ${hint(r)}`, { details: { state: r.state } });
      }
      allowed(r);
      const next = { ...patch(r), state: to, reason, updatedAt: new Date().toISOString() };
      await tx.updateRollout(next);
      await tx.change(author, `rollouts/${id}`, 'update', { state: r.state }, { state: to });
      tx.emit(`rollouts.update.${id}`, next);
    });
    this.kick();
    return this.view(id);
  }

  /** Runs a tick now, or right after the one in progress. */
  kick(): void {
    if (this.ticking) {
      this.again = true;
      return;
    }
    this.ticking = this.tick()
      .catch((err: unknown) => this.opts.log?.('error', 'rollout tick failed', { err: String(err) }))
      .finally(() => {
        this.ticking = null;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  /** Resolves when no tick is running (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.ticking) await this.ticking;
  }

  private async tick(): Promise<void> {
    const running = await this.store.listRollouts({ states: ['running'], limit: 1000 });
    // Cleared only before any await that could miss a 'rollouts.' event: set here from what was read.
    this.running = running.length > 0;
    for (const r of running) await this.advance(r.id);
    await this.syncHolds();
  }

  /**
   * Holds exactly the machines that running rollouts wait for (engine.hold), and releases the rest: a
   * paused, aborted or ended rollout holds nothing. Holds are in the store, so a restarted endpoint finds
   * them there before its first tick (its claims honour them at once); this only reconciles, in one
   * transaction on fresh reads (a replica's stale view never releases a hold another just placed).
   */
  private async syncHolds(): Promise<void> {
    const differ = async (reads: Reads) => {
      const want = new Map<string, string>();
      for (const r of await reads.listRollouts({ states: ['running'], limit: 1000 })) {
        for (const i of await reads.listRolloutItems(r.id)) if (i.state === 'waiting') want.set(i.machineId, r.id);
      }
      const held = new Map((await reads.listHolds()).map((h) => [h.machineId, h.rolloutId]));
      return { hold: [...want].filter(([id, rolloutId]) => held.get(id) !== rolloutId), release: [...held.keys()].filter((id) => !want.has(id)) };
    };
    // A look first, outside the write lock (this runs on every machine event while a rollout runs); what
    // it finds to change is decided again, and changed, in one transaction.
    const seen = await differ(this.store);
    if (seen.hold.length === 0 && seen.release.length === 0) return;
    await this.store.transact(async (tx) => {
      const { hold, release } = await differ(tx);
      for (const [id, rolloutId] of hold) await this.engine.holdIn(tx, id, rolloutId);
      for (const id of release) await this.engine.releaseIn(tx, id);
    });
  }

  /** One step of a running rollout: its results and waves (one transaction), then its machines' starts (one each). */
  private async advance(id: string): Promise<void> {
    const settled = await this.store.transact((tx) => this.settleWaves(tx, id));
    if (settled?.stopped) this.opts.log?.('warn', `rollout ${id} stopped`, { reason: settled.stopped });
    const r = settled?.running;
    if (!r) return;
    // 4. Start machines of the current wave up to the in-flight limit: those the rollout waited for first.
    // A waiting machine is not in flight (it runs its own job), so a long job does not hold the others up.
    const items = await this.store.listRolloutItems(id);
    const turn = items.filter((i) => i.wave === r.wave && (i.state === 'waiting' || i.state === 'pending')).sort((a, b) => Number(b.state === 'waiting') - Number(a.state === 'waiting'));
    for (const i of turn) {
      const started = await this.startItem(r, i);
      // The rollout moved on (paused, aborted, another wave) or is full: the next tick carries on.
      if (started === 'stale' || started === 'full') return;
    }
  }

  /**
   * Steps 1–3 of a tick, inside `tx` on fresh reads: what happened to the machines in flight, the andon,
   * the waves and the end. Answers the rollout when it still runs (with its current wave), or why it stopped.
   */
  private async settleWaves(tx: Tx, id: string): Promise<{ running?: Rollout; stopped?: string } | null> {
    const r = await tx.getRollout(id);
    if (r?.state !== 'running') return null;
    const items = await tx.listRolloutItems(id);
    // 1. What happened to the machines in flight.
    for (const i of items) {
      if (i.state !== 'running') continue;
      const outcome = await this.outcome(tx, r, i);
      // A success keeps the item's note of what the rollout did about a busy machine ("waited for job …").
      if (outcome) Object.assign(i, await writeItem(tx, { ...i, ...outcome, reason: outcome.reason ?? i.reason, finishedAt: new Date().toISOString() }));
    }
    // 2. The andon: one failure beyond the budget stops everything that has not started.
    const failed = items.filter((i) => i.state === 'failed');
    if (failed.length > r.spec.maxFailures) {
      const first = failed[0]!;
      const reason = `andon: ${failed.length} failure(s) with a budget of ${r.spec.maxFailures}; ${first.machineName}: ${first.reason ?? 'failed'}`;
      await writeState(tx, r, 'stopped', reason);
      return { stopped: reason };
    }
    // 3. Waves: move on when the current one is through (or wait for approval).
    const unfinished = (i: RolloutItem) => i.state === 'pending' || i.state === 'waiting' || i.state === 'running';
    const open = (w: number) => items.some((i) => i.wave === w && unfinished(i));
    let wave = r.wave;
    while (wave < r.waves && !open(wave)) {
      if (wave + 1 >= r.waves) break;
      if (r.spec.approveBetweenWaves && items.some((i) => i.wave > wave && i.state === 'pending')) {
        await writeState(tx, { ...r, wave }, 'awaiting-approval', `wave ${wave + 1} of ${r.waves} is through; approve to start wave ${wave + 2}`);
        return null;
      }
      wave += 1;
    }
    if (!items.some(unfinished)) {
      const ok = items.filter((i) => i.state === 'succeeded').length;
      const skipped = items.filter((i) => i.state === 'skipped');
      const busy = skipped.filter((i) => i.reason?.startsWith('busy'));
      const deleted = skipped.filter((i) => i.reason?.startsWith('machine deleted'));
      const why = [busy.length ? `busy: ${busy.map((i) => i.machineName).join(', ')}` : '', deleted.length ? `deleted: ${deleted.map((i) => i.machineName).join(', ')}` : ''].filter(Boolean).join('; ');
      await writeState(
        tx,
        { ...r, wave },
        'completed',
        `${ok} of ${items.length} succeeded${failed.length ? `, ${failed.length} failed within the budget` : ''}${skipped.length ? `, ${skipped.length} skipped${why ? ` (${why})` : ''}` : ''}`,
      );
      return null;
    }
    if (wave !== r.wave) await writeState(tx, { ...r, wave }, 'running', null);
    return { running: { ...r, wave } };
  }

  /**
   * "skipped: machine deleted by X" when the item's machine no longer exists, else null. A deliberate
   * delete is not a failure of the change: it leaves the machine out instead of pulling the andon.
   */
  private async deletedNote(i: RolloutItem, reads: Reads = this.store): Promise<string | null> {
    if (await reads.getMachine(i.machineId)) return null;
    const del = (await reads.listChanges({ object: `machines/${i.machineId}`, limit: 20 })).find((c) => c.action === 'delete');
    return `machine deleted${del ? ` by ${del.author}` : ''}; left out`;
  }

  private async outcome(reads: Reads, r: Rollout, i: RolloutItem): Promise<Pick<RolloutItem, 'state' | 'reason'> | null> {
    const gone = await this.deletedNote(i, reads);
    if (gone) return { state: 'skipped', reason: gone };
    if (r.spec.blueprint) {
      const wo = i.workOrderId ? await reads.getWorkOrder(i.workOrderId) : undefined;
      if (!wo) return { state: 'failed', reason: 'its work order is gone' };
      if (wo.state === 'succeeded') return { state: 'succeeded', reason: null };
      if (wo.state === 'failed' || wo.state === 'cancelled') return { state: 'failed', reason: wo.reason ?? `work order ${wo.state}` };
      return null;
    }
    const m = await reads.getMachine(i.machineId);
    if (!m) return null; // deleted: answered above
    if (m.pipeline !== r.spec.pipeline) return { state: 'failed', reason: `reassigned to ${m.pipeline ?? 'no pipeline'} during the rollout` };
    if (m.state === 'done') return { state: 'succeeded', reason: null };
    if (m.state === 'stopped') return { state: 'failed', reason: m.reason };
    return null;
  }

  /**
   * The machine's turn, decided and done in one transaction on fresh reads: the rollout still running in
   * the item's wave (else `stale`), the item still pending or waiting (else `taken`: another replica
   * started it), fewer than maxInFlight machines in flight (else `full`); then the busy policy, and the
   * reassignment (or the blueprint's work order) written with the item's new state. `started`: the
   * machine is now in flight; `not`: it waits, was skipped, or could not start (the item says why).
   */
  private async startItem(r: Rollout, i: RolloutItem): Promise<'started' | 'not' | 'taken' | 'stale' | 'full'> {
    const by = `rollout:${r.id}`;
    const content = this.engine.content.current;
    try {
      return await this.store.transact(async (tx) => {
        const now = await tx.getRollout(r.id);
        // A pause, abort or andon pull (or another replica's wave change) landed first: it wins.
        if (now?.state !== 'running' || now.wave !== i.wave) return 'stale';
        const items = await tx.listRolloutItems(r.id);
        const item = items.find((x) => x.machineId === i.machineId);
        if (!item || (item.state !== 'pending' && item.state !== 'waiting')) return 'taken';
        if (items.filter((x) => x.state === 'running').length >= now.spec.maxInFlight) return 'full';
        const gone = await this.deletedNote(item, tx);
        if (gone) {
          await writeItem(tx, { ...item, state: 'skipped', reason: gone, finishedAt: new Date().toISOString() });
          return 'not';
        }
        const m = (await tx.lockMachine(item.machineId))!;
        const busy = await this.busyOf(now.spec, m, tx);
        const policy = now.spec.busy ?? 'cancel';
        if (busy && policy === 'skip') {
          await writeItem(tx, { ...item, state: 'skipped', reason: `busy: ${busy.what}; left out (--busy skip)`, finishedAt: new Date().toISOString() });
          return 'not';
        }
        if (busy && policy === 'wait') {
          // Held (in the store): when the job ends the machine starts nothing new, and the next tick reassigns it.
          await this.engine.holdIn(tx, m.id, r.id);
          const reason = `waiting for ${busy.what} to end`;
          if (item.state !== 'waiting' || item.reason !== reason) await writeItem(tx, { ...item, state: 'waiting', reason });
          return 'not';
        }
        // The cancel and the reassignment are one transaction: the old pipeline's next task cannot start between them.
        if (busy?.job && policy === 'cancel') await this.engine.cancelMachineJobIn(tx, m.id, `${r.author} (rollout ${r.id})`);
        let workOrderId: string | null = null;
        if (now.spec.blueprint) {
          const made = await this.engine.newWorkOrders([{ machine: item.machineId, blueprint: now.spec.blueprint }], tx);
          await this.engine.insertWorkOrders(tx, made, [{ machine: item.machineName }], by);
          workOrderId = made[0]!.id;
        } else {
          // The rollout's params (e.g. image=NAME@VERSION) and pipeline: one machine update, then the start.
          // A network-booted machine whose pipeline starts in discovery (an image deploy) is rebuilt: it
          // boots discovery again (engine.rebuildMachineIn), never running the deploy on the disk it writes.
          const pipeline = now.spec.pipeline!;
          const reassign = m.pipeline !== pipeline;
          if (reassign || now.spec.params) {
            this.engine.checkPatch(content, { ...(reassign ? { pipeline } : {}), ...(now.spec.params ? { params: now.spec.params } : {}) });
            await this.engine.updateMachineIn(tx, item.machineId, { ...(reassign ? { pipeline } : {}), ...(now.spec.params ? { params: now.spec.params } : {}) }, by, content);
          }
          if (this.engine.startsOverAsRebuild(m, pipeline, content)) await this.engine.rebuildMachineIn(tx, item.machineId, by);
          else if (!reassign) await this.engine.restartMachineIn(tx, item.machineId, by);
        }
        await this.engine.releaseIn(tx, m.id);
        // What the rollout did about the machine being busy, kept on the item for the report.
        const note = item.state === 'waiting' ? (item.reason ?? '').replace(/^waiting for (.*) to end$/, 'waited for $1') : busy ? `${busy.job ? 'cancelled' : 'gave up:'} ${busy.what}` : null;
        await writeItem(tx, { ...item, state: 'running', reason: note, workOrderId, startedAt: new Date().toISOString() });
        return 'started';
      });
    } catch (err) {
      if (!(err instanceof TaktError)) throw err;
      // Nothing of the start was written. The engine was given the id: the operator knows the machine by its name.
      const why = err.message.split(i.machineId).join(i.machineName);
      await this.store.transact(async (tx) => {
        const item = (await tx.listRolloutItems(r.id)).find((x) => x.machineId === i.machineId);
        // Only the item as this start found it: another replica may have started (or failed) it meanwhile.
        if (item && (item.state === 'pending' || item.state === 'waiting')) await writeItem(tx, { ...item, state: 'failed', reason: `could not start: ${why}`, finishedAt: new Date().toISOString() });
      });
      return 'not';
    }
  }

  private async saveItem(i: RolloutItem): Promise<RolloutItem> {
    await this.store.transact(async (tx) => {
      await tx.updateRolloutItem(i);
      tx.emit(`rollouts.item.${i.rolloutId}`, i);
    });
    return i;
  }
}

/** Writes an item and queues its event (inside the caller's transaction); answers the item as written. */
async function writeItem(tx: Tx, i: RolloutItem): Promise<RolloutItem> {
  await tx.updateRolloutItem(i);
  tx.emit(`rollouts.item.${i.rolloutId}`, i);
  return i;
}

/** Writes a running rollout's new state (and wave) inside the caller's transaction, which read it running. */
async function writeState(tx: Tx, r: Rollout, state: RolloutState, reason: string | null): Promise<void> {
  const next = { ...r, state, reason, updatedAt: new Date().toISOString() };
  await tx.updateRollout(next);
  tx.emit(`rollouts.update.${r.id}`, next);
}

/** @throws TaktError conflict when one of `selected` is in an unfinished item of one of the `active` rollouts. */
async function assertNoClash(reads: Reads, active: Rollout[], selected: Machine[]): Promise<void> {
  const taken = new Map<string, string>();
  for (const r of active) {
    if (!ACTIVE.includes(r.state)) continue;
    for (const i of await reads.listRolloutItems(r.id)) if (i.state === 'pending' || i.state === 'running' || i.state === 'waiting') taken.set(i.machineId, r.id);
  }
  const clash = selected.find((m) => taken.has(m.id));
  if (clash) throw new TaktError('conflict', `machine '${clash.name}' is already in active rollout ${taken.get(clash.id)}; let that one finish or abort it first (takt rollouts abort ${taken.get(clash.id)})`);
}

function waveOf(index: number, spec: RolloutSpec): number {
  if (index < spec.canary) return 0;
  return (spec.canary > 0 ? 1 : 0) + Math.floor((index - spec.canary) / spec.batch);
}

function parseSelection(select: Record<string, string>): MachineSelection {
  const sel: MachineSelection = {};
  for (const [k, v] of Object.entries(select)) {
    // facts.<path>: an observed fact, e.g. facts.os.id=debian, facts.cpu.count=8, facts.macs=52:54:00:…
    if (k.startsWith('facts.')) {
      const path = k.slice('facts.'.length);
      // The one fact-path check (model/factselect.ts), as classification rules use: known to FactsSchema.
      const problem = factPathProblem(path);
      if (problem) {
        throw new TaktError('invalid', `unknown fact '${path}' in selector '${k}': ${problem} (e.g. facts.os.id=debian)`, { path: `/select/${k}` });
      }
      (sel.facts ??= {})[path] = v;
      continue;
    }
    if (!(SELECT_KEYS as readonly string[]).includes(k)) throw new TaktError('invalid', `unknown selector '${k}'; use ${SELECT_KEYS.join(', ')} or facts.<path>`, { path: `/select/${k}` });
    if (k === 'stale') sel.stale = v !== 'false';
    else (sel as Record<string, string>)[k] = v;
  }
  return sel;
}

const describe = (select: Record<string, string>, selector?: string) => {
  const parts = [...Object.entries(select).map(([k, v]) => `${k}=${v}`), ...(selector ? [`labels ${selector}`] : [])];
  return parts.length ? parts.join(', ') : '(all machines)';
};
/** "paused (andon pulled by admin)": the state and why. */
const stateText = (r: Pick<Rollout, 'state' | 'reason'>) => `${r.state}${r.reason ? ` (${r.reason})` : ''}`;

/** A dry run's action for one machine, as `startItem` would decide it now (pure: table-tested). */
export function planAction(spec: Pick<RolloutSpec, 'pipeline' | 'blueprint' | 'busy'>, busy: Busy | null): Pick<RolloutPlanItem, 'action' | 'detail'> {
  const go = spec.pipeline ? `reassign to pipeline ${spec.pipeline} (from the top)` : `queue blueprint ${spec.blueprint} as a work order`;
  const base: RolloutPlanItem['action'] = spec.pipeline ? 'reassign' : 'queue';
  if (!busy) return { action: base, detail: go };
  const what = busy.what.replace(/^it is /, '');
  switch (spec.busy ?? 'cancel') {
    case 'skip':
      return { action: 'skip', detail: `busy (${what}): left out` };
    case 'wait':
      return { action: 'wait', detail: busy.job ? `wait for ${busy.what} to end, then ${go}` : `wait while ${what}, then ${go}` };
    case 'cancel':
      return busy.job ? { action: 'cancel', detail: `cancel ${busy.what}, then ${go}` } : { action: base, detail: `${go}; it is ${what} and that is given up` };
  }
}
