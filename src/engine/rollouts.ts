/**
 * Rollouts: apply a pipeline (or a blueprint) to a fixed selection of machines in waves — a canary first,
 * then batches — with at most `maxInFlight` machines busy at once. One failure beyond the budget pulls the
 * andon: no new machine starts, the failing ones stay stopped with their logs, and the rollout says why.
 *
 * The driver is a `tick` that reads the store and moves each running rollout one step; it runs on every
 * machine or work-order event and on a timer, so a restarted endpoint simply carries on.
 */
import { FACT_FIELDS } from '../model/facts.js';
import { assertEnvironment } from './declared.js';
import { TaktError } from '../model/errors.js';
import { newId } from './ids.js';
import type { Rollout, RolloutItem, RolloutSpec, RolloutState } from '../model/rollout.js';
import type { Store } from '../store/store.js';
import type { Engine } from './engine.js';
import type { MachineSelection, Records } from './records.js';

export interface RolloutInput {
  pipeline?: string;
  blueprint?: string;
  select: Record<string, string>;
  /** Exact machines (by id), for callers that chose them already (the churn policy); overrides `select`. */
  machineIds?: string[];
  canary?: number;
  batch?: number;
  maxInFlight?: number;
  maxFailures?: number;
  approveBetweenWaves?: boolean;
}

export interface RolloutView extends Rollout {
  counts: Record<RolloutItem['state'], number>;
  items: RolloutItem[];
}

const SELECT_KEYS = ['state', 'pipeline', 'environment', 'broker', 'name', 'builtWith', 'stale'] as const;
const ACTIVE: RolloutState[] = ['running', 'paused', 'awaiting-approval'];

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

  async create(input: RolloutInput, author: string): Promise<RolloutView> {
    if (!!input.pipeline === !!input.blueprint) throw new TaktError('invalid', 'a rollout runs either a pipeline or a blueprint: give exactly one', { path: '/pipeline' });
    const content = this.engine.content.current;
    if (input.pipeline && !content.objects.pipelines.has(input.pipeline)) throw new TaktError('not_found', `pipeline '${input.pipeline}' not found`, { path: '/pipeline' });
    if (input.blueprint && !content.objects.blueprints.has(input.blueprint)) throw new TaktError('not_found', `blueprint '${input.blueprint}' not found`, { path: '/blueprint' });
    const spec: RolloutSpec = {
      ...(input.pipeline ? { pipeline: input.pipeline } : { blueprint: input.blueprint! }),
      select: input.select,
      canary: input.canary ?? 1,
      batch: input.batch ?? 5,
      maxInFlight: input.maxInFlight ?? input.batch ?? 5,
      maxFailures: input.maxFailures ?? 0,
      approveBetweenWaves: input.approveBetweenWaves ?? false,
    };
    for (const [k, v] of Object.entries({ canary: spec.canary, batch: spec.batch, maxInFlight: spec.maxInFlight, maxFailures: spec.maxFailures })) {
      if (!Number.isInteger(v) || v < (k === 'maxFailures' || k === 'canary' ? 0 : 1)) throw new TaktError('invalid', `${k} must be a whole number${k === 'maxFailures' || k === 'canary' ? '' : ' of at least 1'}`, { path: `/${k}` });
    }
    const selected = input.machineIds
      ? (await Promise.all(input.machineIds.map((id) => this.store.getMachine(id)))).filter((m) => m !== undefined).map((machine) => ({ machine }))
      : await this.records.select(parseSelection(input.select));
    if (selected.length === 0) throw new TaktError('invalid', `the selection ${describe(input.select)} matches no machine`, { path: '/select' });
    // The same rule as an update: a machine is reassigned only to a pipeline that exercises its environment.
    if (spec.pipeline) for (const s of selected) assertEnvironment(content, s.machine.name, s.machine.environment, spec.pipeline);
    const busy = await this.store.listRollouts({ states: ACTIVE, limit: 1000 });
    const taken = new Set<string>();
    for (const r of busy) for (const i of await this.store.listRolloutItems(r.id)) if (i.state === 'pending' || i.state === 'running') taken.add(i.machineId);
    const clash = selected.find((s) => taken.has(s.machine.id));
    if (clash) throw new TaktError('conflict', `machine '${clash.machine.name}' is already in an active rollout; finish or abort that one first`);

    const now = new Date().toISOString();
    const id = newId('r');
    const items: RolloutItem[] = selected.map((s, i) => ({
      rolloutId: id,
      machineId: s.machine.id,
      machineName: s.machine.name,
      wave: waveOf(i, spec),
      state: 'pending',
      reason: null,
      workOrderId: null,
      startedAt: null,
      finishedAt: null,
    }));
    const rollout: Rollout = { id, spec, state: 'running', reason: null, wave: 0, waves: items[items.length - 1]!.wave + 1, author, createdAt: now, updatedAt: now };
    await this.store.transact(async (tx) => {
      await tx.insertRollout(rollout, items);
      await tx.change(author, `rollouts/${id}`, 'create', null, { spec, machines: items.map((i) => i.machineName) });
      tx.emit(`rollouts.create.${id}`, rollout);
    });
    this.kick();
    return this.view(id);
  }

  async view(id: string): Promise<RolloutView> {
    const r = await this.store.getRollout(id);
    if (!r) throw new TaktError('not_found', `rollout '${id}' not found`);
    const items = await this.store.listRolloutItems(id);
    const counts = { pending: 0, running: 0, succeeded: 0, failed: 0, skipped: 0 };
    for (const i of items) counts[i.state] += 1;
    return { ...r, counts, items };
  }

  async list(states?: RolloutState[]): Promise<RolloutView[]> {
    const rs = await this.store.listRollouts({ limit: 100, states });
    return Promise.all(rs.map((r) => this.view(r.id)));
  }

  pause(id: string, author: string) {
    return this.transition(id, author, ['running', 'awaiting-approval'], 'paused', `paused by ${author}`);
  }
  resume(id: string, author: string) {
    return this.transition(id, author, ['paused'], 'running', null);
  }
  approve(id: string, author: string) {
    return this.transition(id, author, ['awaiting-approval'], 'running', null, (r) => ({ ...r, wave: r.wave + 1 }));
  }
  async abort(id: string, author: string) {
    const view = await this.transition(id, author, ['running', 'paused', 'awaiting-approval', 'stopped'], 'aborted', `aborted by ${author}`);
    for (const i of view.items) if (i.state === 'pending') await this.saveItem({ ...i, state: 'skipped', reason: 'rollout aborted' });
    return this.view(id);
  }

  /** Re-runs only the failed machines, with the same pipeline or blueprint. */
  async retry(id: string, author: string): Promise<RolloutView> {
    const view = await this.view(id);
    const failed = view.items.filter((i) => i.state === 'failed');
    if (failed.length === 0) throw new TaktError('conflict', `rollout ${id} has no failed machines to retry`);
    if (view.state === 'running') throw new TaktError('conflict', `rollout ${id} is still running; pause or let it finish first`);
    for (const i of failed) await this.saveItem({ ...i, state: 'pending', reason: null, workOrderId: null, startedAt: null, finishedAt: null });
    const firstWave = Math.min(...failed.map((i) => i.wave));
    return this.transition(id, author, ['stopped', 'completed', 'paused', 'aborted', 'awaiting-approval'], 'running', null, (r) => ({ ...r, wave: Math.min(r.wave, firstWave) }));
  }

  /** Pulls the cord: pauses every active rollout. */
  async andon(author: string): Promise<string[]> {
    const paused: string[] = [];
    for (const r of await this.store.listRollouts({ states: ['running', 'awaiting-approval'], limit: 1000 })) {
      await this.transition(r.id, author, ['running', 'awaiting-approval'], 'paused', `andon pulled by ${author}`);
      paused.push(r.id);
    }
    return paused;
  }

  private async transition(id: string, author: string, from: RolloutState[], to: RolloutState, reason: string | null, patch: (r: Rollout) => Rollout = (r) => r) {
    await this.store.transact(async (tx) => {
      const r = await tx.getRollout(id);
      if (!r) throw new TaktError('not_found', `rollout '${id}' not found`);
      if (!from.includes(r.state)) throw new TaktError('conflict', `rollout ${id} is ${r.state}${r.reason ? ` (${r.reason})` : ''}; it can be ${verb(to)} only when ${from.join(' or ')}`);
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
    for (const r of running) await this.advance(r);
  }

  private async advance(r: Rollout): Promise<void> {
    const items = await this.store.listRolloutItems(r.id);
    // 1. What happened to the machines in flight.
    for (const i of items) {
      if (i.state !== 'running') continue;
      const outcome = await this.outcome(r, i);
      if (outcome) Object.assign(i, await this.saveItem({ ...i, ...outcome, finishedAt: new Date().toISOString() }));
    }
    // 2. The andon: one failure beyond the budget stops everything that has not started.
    const failed = items.filter((i) => i.state === 'failed');
    if (failed.length > r.spec.maxFailures) {
      const first = failed[0]!;
      await this.setState(r, 'stopped', `andon: ${failed.length} failure(s) with a budget of ${r.spec.maxFailures}; ${first.machineName}: ${first.reason ?? 'failed'}`);
      return;
    }
    // 3. Waves: move on when the current one is through (or wait for approval).
    const open = (w: number) => items.some((i) => i.wave === w && (i.state === 'pending' || i.state === 'running'));
    let wave = r.wave;
    while (wave < r.waves && !open(wave)) {
      if (wave + 1 >= r.waves) break;
      if (r.spec.approveBetweenWaves && items.some((i) => i.wave > wave && i.state === 'pending')) {
        await this.setState({ ...r, wave }, 'awaiting-approval', `wave ${wave + 1} of ${r.waves} is through; approve to start wave ${wave + 2}`);
        return;
      }
      wave += 1;
    }
    if (!items.some((i) => i.state === 'pending' || i.state === 'running')) {
      const ok = items.filter((i) => i.state === 'succeeded').length;
      await this.setState({ ...r, wave }, 'completed', `${ok} of ${items.length} succeeded${failed.length ? `, ${failed.length} failed within the budget` : ''}`);
      return;
    }
    if (wave !== r.wave) await this.setState({ ...r, wave }, 'running', null);
    // 4. Start machines of the current wave up to the in-flight limit.
    let inFlight = items.filter((i) => i.state === 'running').length;
    for (const i of items) {
      if (inFlight >= r.spec.maxInFlight) break;
      if (i.wave !== wave || i.state !== 'pending') continue;
      // A pause, abort or andon pull may have landed while this tick ran: it wins before anything starts.
      if ((await this.store.getRollout(r.id))?.state !== 'running') return;
      await this.startItem(r, i);
      inFlight += 1;
    }
  }

  private async outcome(r: Rollout, i: RolloutItem): Promise<Pick<RolloutItem, 'state' | 'reason'> | null> {
    if (r.spec.blueprint) {
      const wo = i.workOrderId ? await this.store.getWorkOrder(i.workOrderId) : undefined;
      if (!wo) return { state: 'failed', reason: 'its work order is gone' };
      if (wo.state === 'succeeded') return { state: 'succeeded', reason: null };
      if (wo.state === 'failed' || wo.state === 'cancelled') return { state: 'failed', reason: wo.reason ?? `work order ${wo.state}` };
      return null;
    }
    const m = await this.store.getMachine(i.machineId);
    if (!m) return { state: 'failed', reason: 'machine deleted' };
    if (m.pipeline !== r.spec.pipeline) return { state: 'failed', reason: `reassigned to ${m.pipeline ?? 'no pipeline'} during the rollout` };
    if (m.state === 'done') return { state: 'succeeded', reason: null };
    if (m.state === 'stopped') return { state: 'failed', reason: m.reason };
    return null;
  }

  private async startItem(r: Rollout, i: RolloutItem): Promise<void> {
    const by = `rollout:${r.id}`;
    try {
      let workOrderId: string | null = null;
      if (r.spec.blueprint) workOrderId = (await this.engine.createWorkOrder({ machine: i.machineId, blueprint: r.spec.blueprint }, by)).id;
      else {
        const m = await this.engine.findMachine(i.machineId);
        if (m.pipeline === r.spec.pipeline) await this.engine.restartMachine(i.machineId, by);
        else await this.engine.updateMachine(i.machineId, { pipeline: r.spec.pipeline! }, by);
      }
      Object.assign(i, await this.saveItem({ ...i, state: 'running', workOrderId, startedAt: new Date().toISOString() }));
    } catch (err) {
      if (!(err instanceof TaktError)) throw err;
      Object.assign(i, await this.saveItem({ ...i, state: 'failed', reason: `could not start: ${err.message}`, finishedAt: new Date().toISOString() }));
    }
  }

  private async saveItem(i: RolloutItem): Promise<RolloutItem> {
    await this.store.transact(async (tx) => {
      await tx.updateRolloutItem(i);
      tx.emit(`rollouts.item.${i.rolloutId}`, i);
    });
    return i;
  }

  private async setState(r: Rollout, state: RolloutState, reason: string | null) {
    const next = { ...r, state, reason, updatedAt: new Date().toISOString() };
    await this.store.transact(async (tx) => {
      // Someone (pause, abort, andon) may have moved it meanwhile; theirs wins.
      const now = await tx.getRollout(r.id);
      if (now?.state !== 'running') return;
      await tx.updateRollout(next);
      tx.emit(`rollouts.update.${r.id}`, next);
    });
    if (state === 'stopped') this.opts.log?.('warn', `rollout ${r.id} stopped`, { reason });
  }
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
      if (!/^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$/.test(path) || !FACT_FIELDS.includes(path.split('.')[0]!)) {
        throw new TaktError('invalid', `unknown fact '${path}' in selector '${k}'; facts are ${FACT_FIELDS.join(', ')} (e.g. facts.os.id=debian)`, { path: `/select/${k}` });
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

const describe = (select: Record<string, string>) => (Object.keys(select).length ? Object.entries(select).map(([k, v]) => `${k}=${v}`).join(',') : '(all machines)');
const verb = (to: RolloutState) => ({ running: 'resumed', paused: 'paused', 'awaiting-approval': 'held', stopped: 'stopped', aborted: 'aborted', completed: 'completed' })[to];
