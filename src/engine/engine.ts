/**
 * The engine: machines walk their pipelines through claims and completions. Every decision is made by the
 * pure functions in transitions.ts inside one store transaction, so a crash between two steps leaves the
 * store at one step or the other, never half-way.
 */
import { randomBytes } from 'node:crypto';
import type { ContentSet } from '../model/content.js';
import { paramLayers, resolveParam } from '../render/params.js';
import { applyLabelPatch, sortedLabels, validateLabels } from '../model/labels.js';
import { attempt, TaktError } from '../model/errors.js';
import { defaultEnvironment, type AgentLiveness, type Job, type Machine, type MachineClassification, type WorkOrder } from '../model/machine.js';
import { assertReplaceable, classificationChange, classify, orderedRules } from './classify.js';
import type { AdhocInput } from './adhoc.js';
import type { ClaimResponse, CompleteRequest, CompleteResponse, HeartbeatResponse, LogRequest } from '../model/protocol.js';
import { foreignSealed, isSealed, type Sealer } from '../model/secure.js';
import { checkPowerShape, type MachinePowerConfig } from '../model/power.js';
import { LOCAL_BOOTENV, checkBootSettings, patchBoot, type BootSettings, DISCOVERY_BOOTENV } from '../model/boot.js';
import { checkSshSettings, patchSsh, type HostKey, type SshPatch, type SshSettings } from '../model/ssh.js';
import type { Reads, Store, Tx } from '../store/store.js';
import type { ContentService } from './content.js';
import { canonicalJson, sha256 } from '../model/hash.js';
import { assertEnvironment, assertDeclared } from './declared.js';
import { assertMachineName } from './ids.js';
import { JobLogs } from './joblog.js';
import { jobSecrets } from './job-secrets.js';
import { DEFAULT_GONE_AFTER_MS, DEFAULT_SEEN_THROTTLE_MS, Liveness, type Contact, type LivenessWrite } from './liveness.js';
import { assertBootIdentityFree, checkParams, requireBootenv, requireCredential, requirePipeline, requireProfiles } from './machine-checks.js';
import { DEFAULT_MAX_LOG_BYTES, DEFAULT_MAX_LOG_CHUNKS } from './logcap.js';
import type { TaskPowerPort } from './taskpower.js';
import { prepareTask, type PreparedTask } from './prepare.js';
import type { RestoredPlace } from './restore.js';
import { Wakeups } from './wake.js';
import { pipelineShapeOf, pipelineSteps, withPromises, type Plan } from './plan.js';
export type { Plan, PlanParam, PlanStep } from './plan.js';
import { cancelWorkOrder, insertWorkOrders, newWorkOrders, resumeWorkOrder, type WorkOrderContext } from './workorders.js';
import { claim, type ClaimContext } from './claim.js';
import { appendLog, cancelCurrent, cancelRunning, complete, heartbeat, jobEnded, loseJob, sweepLeases } from './jobs.js';
import { desiredView, publicMachine } from './views.js';
import { approverOf, checkMachineApprover } from './approvals.js';
import type { Approver } from '../model/permissions.js';
import { finishWorkOrder, lockedMachine, saveMachine, settle, woPassed } from './complete.js';
import {
  approve,
  reject,
  assignPipeline,
  blueprintShape,
  locate,
  pause,
  pipelineOrder,
  remainingSteps,
  restart,
  resume,
  ResumeRefused,
  TransitionError,
  type MachineView,
  type PipelineShape,
  type Step,
} from './transitions.js';

export interface EngineOptions {
  /** How long a running job may go without word from its agent before it is marked lost. */
  leaseMs: number;
  /** How often to look for expired leases. */
  sweepMs?: number;
  /** Log output stored per job, in bytes (default 64 MiB); past it the log is cut with a visible marker. */
  maxLogBytes?: number;
  /** Log chunks stored per job (default 1,000,000). */
  maxLogChunks?: number;
  /** A machine quiet this long, with no claim long-poll open, is disconnected (default 135 s; see liveness.ts). */
  goneAfterMs?: number;
  /** `lastSeenAt` is written at most this often per machine (default 15 s, at most a quarter of goneAfterMs). */
  seenThrottleMs?: number;
  log?: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
  /** The clock of agent liveness (ms since the epoch; default Date.now); injected by tests. */
  livenessClock?: () => number;
  /**
   * Checks and normalises a machine's power configuration (the composition root passes
   * provision/power `checkPowerConfig`, which knows the drivers); default: the shape every driver shares
   * (model/power.ts). @throws TaktError invalid with the field path.
   */
  checkPowerConfig?: (config: unknown) => MachinePowerConfig;
  /**
   * Power drivers for what tasks ask with `takt-power` (the composition root passes provision/power
   * MachinePower). Absent: such a request stops the machine, saying the endpoint has no power drivers.
   */
  power?: TaskPowerPort;
}

export interface MachineInput {
  /** Only for restoring an export: keep the machine's id. */
  id?: string;
  name: string;
  environment?: string;
  broker?: string | null;
  pipeline?: string | null;
  params?: Record<string, unknown>;
  profiles?: string[];
  /** key=value tags (model/labels.ts). */
  labels?: Record<string, string>;
  /** Agentless machines: how the endpoint reaches the host over SSH (the credential must exist). */
  ssh?: SshSettings;
  /** Network-booted machines: the MACs (required), UUID, firmware and bootenv it boots as (model/boot.ts). */
  boot?: BootSettings;
  /** How the machine's power is switched (model/power.ts; checked by EngineOptions.checkPowerConfig). */
  powerConfig?: unknown;
  /** Store params no content declares (default false: refused, see declared.ts). */
  allowUndeclared?: boolean;
  /**
   * The endpoint id of the replica whose host-bound broker makes this machine (Machine.host), written with
   * the machine in one transaction so no replica ever sees it without its owner (api/hosts.ts).
   */
  host?: string;
}

export interface MachinePatch {
  name?: string;
  environment?: string;
  pipeline?: string | null;
  /** Merged into the machine's params; a null value removes that param. */
  params?: Record<string, unknown>;
  profiles?: string[];
  /** Merged into the machine's labels; a null value removes that label. */
  labels?: Record<string, string | null>;
  /** Agentless machines only: SSH settings to change, or accepting the host's new key. */
  ssh?: SshPatch;
  /** Boot settings to change; on a machine that has none, makes it network-booted (then `macs` is required). */
  boot?: BootSettings;
  /** A new power configuration (replaces the old one), or null to remove it. */
  powerConfig?: unknown;
  /** Store params no content declares (default false: refused, see declared.ts). */
  allowUndeclared?: boolean;
}

/**
 * How a restore (revert, rewind, import: restore.ts) writes a machine: its outputs are left as they are, and
 * when it changes the pipeline the machine takes `place` (decided by `placeOnReassign`) rather than starting.
 */
export interface RestoreWrite {
  /** Required when the restore changes the pipeline to another one (a restore never starts work). */
  place?: RestoredPlace;
}

/** `powerOn`: also power the machine on (resume and restart leave a powered-off machine off otherwise). */
export interface PowerOption {
  powerOn?: boolean;
}


/** `next` with the power `before` had, unless the operator asked to power it on. */
function keepPower(before: MachineView, next: MachineView, opts: PowerOption): MachineView {
  return { ...next, power: opts.powerOn ? 'on' : before.power };
}

/** Why a resume would be refused and what to do instead (Engine.resumeVerdict). */
export interface ResumeVerdict {
  /** What changed, between which pack versions, and the commands to type instead. */
  message: string;
  change: 'vanished' | 'reordered';
  tasks: Array<{ stage: string; task: string }>;
  /** The pack version (`name@version`) the machine's last pipeline job ran from, and the one in use now. */
  stoppedUnder: string | null;
  now: string | null;
  /** The commands: a restart, and the `takt content use` that puts back content with the task. */
  remedies: string[];
}

/** A param a planned task uses; `promisedBy`: the earlier task (`stage/task`) whose output sets it. */
/** What `classifyMachine` did (or, with `dryRun`, would do). */
export interface ClassifyOutcome {
  machine: string;
  dryRun: boolean;
  /** The matching rule, or null when none matched (then nothing changes). */
  rule: { pack: string; version: string | null; classifier: string; name: string } | null;
  /** Why it matched (each selector with the fact value), or why the nearest rules did not. */
  reasons: string[];
  /** What the rule gives this machine: profiles added, environment, pipeline, names of params set (null values: unchanged). */
  gave: MachineClassification['gave'] | null;
  /** The machine after (or, for a dry run, as it is). */
  after: ReturnType<typeof publicMachine>;
}


/** A work order to queue: exactly one of `blueprint` (with its params) and `command` (an ad-hoc command). */
export interface WorkOrderInput {
  machine: string;
  blueprint?: string;
  params?: Record<string, unknown>;
  command?: AdhocInput;
  /** Store params no task of the blueprint declares (default false: refused, see declared.ts). */
  allowUndeclared?: boolean;
}

export { lastHeard } from './jobs.js';
export { desiredView, publicJob, publicMachine, publicWorkOrder, type DesiredView } from './views.js';

export class Engine {
  /** Long-poll waiters per machine (wake.ts). */
  private readonly wakeups = new Wakeups();
  private sweeper: NodeJS.Timeout | null = null;
  /** Set by stop(): waiting long-polls answer at once instead of waiting again. */
  private stopped = false;
  /** Machines whose power driver is at work for a task: no job starts on them (ClaimContext.powering). */
  private readonly powering = new Set<string>();
  private readonly unsubscribe: () => void;
  private readonly unsubscribeContent: () => void;
  /** Each job's log: masked, bounded, closed when the job ends (joblog.ts). */
  private readonly logs: JobLogs;
  /** Whether each machine's agent is in touch (liveness.ts). */
  readonly liveness: Liveness;
  /** What claiming, running and ending jobs need of the engine (claim.ts, jobs.ts, complete.ts). */
  private readonly run: ClaimContext;

  constructor(
    readonly store: Store,
    readonly content: ContentService,
    private readonly sealer: Sealer,
    private readonly opts: EngineOptions,
  ) {
    this.logs = new JobLogs({ maxBytes: opts.maxLogBytes ?? DEFAULT_MAX_LOG_BYTES, maxChunks: opts.maxLogChunks ?? DEFAULT_MAX_LOG_CHUNKS }, (tx, id) => jobSecrets(this.run, tx, id));
    const windowMs = opts.goneAfterMs ?? DEFAULT_GONE_AFTER_MS;
    this.liveness = new Liveness({
      windowMs,
      throttleMs: opts.seenThrottleMs ?? Math.min(DEFAULT_SEEN_THROTTLE_MS, Math.floor(windowMs / 4)),
      persist: (writes) => this.writeLiveness(writes),
      log: opts.log,
      now: opts.livenessClock,
    });
    this.run = {
      content,
      sealer,
      logs: this.logs,
      opts,
      shapeOf: (c, p) => this.shapeOf(c, p),
      store,
      wakeups: this.wakeups,
      liveness: this.liveness,
      powering: this.powering,
      running: new Map(),
      stopped: () => this.stopped,
    };
    // Any committed change to a machine or its work orders may give a waiting agent something to do.
    this.unsubscribe = store.onEvents((events) => {
      for (const e of events) {
        const [type, , id] = e.topic.split('.');
        if (type === 'machines' && id) {
          this.wakeups.wake(id);
          if (e.topic.startsWith('machines.delete.')) this.liveness.forget(id);
        }
        else if (type === 'workorders') this.wakeups.wake((e.data as { machineId?: string }).machineId ?? '');
      }
    });
    // Content reloaded after a change (maybe another replica's): a claim that found its pipeline missing looks again.
    this.unsubscribeContent = content.onReload(() => this.wakeups.wakeEvery());
  }

  async start(): Promise<void> {
    // Agents reconnect after an endpoint restart, with backoff; give them two leases before anything is lost.
    const grace = new Date(Date.now() + 2 * this.opts.leaseMs).toISOString();
    const renewed = await this.store.transact((tx) => tx.renewRunningLeases(grace));
    if (renewed > 0) this.log('info', 'renewed leases of running jobs after start', { jobs: renewed });
    await this.upgradeLegacyPositions();
    const every = this.opts.sweepMs ?? Math.max(250, Math.floor(this.opts.leaseMs / 4));
    this.sweeper = setInterval(() => {
      this.sweepLeases().catch((err: unknown) => this.log('error', 'lease sweep failed', { err: String(err) }));
    }, every);
    this.sweeper.unref();
    // Machines that were connected when the endpoint stopped get one window for their agents to return.
    for (let offset = 0; ; offset += 1000) {
      const page = await this.store.listMachines({ agentConnected: true, limit: 1000, offset });
      this.liveness.seed(page);
      if (page.length < 1000) break;
    }
    this.liveness.start();
  }

  /**
   * Machines stored before positions were kept by identity (migration 0011_resume) get theirs once, from
   * their old indices read against the content in use: the tasks before the index have succeeded, the
   * task at it is where the machine stands. Without content for the pipeline, nothing is known to have
   * succeeded (a resume then runs the pipeline from its first task that has not).
   */
  private async upgradeLegacyPositions(): Promise<void> {
    const legacy = await this.store.listLegacyPositions();
    for (const old of legacy) {
      await this.store.transact(async (tx) => {
        const m = await tx.lockMachine(old.id);
        if (!m) return;
        const shape = m.pipeline ? this.shapeOf(this.content.current, m.pipeline) : null;
        const next: Machine = { ...m, passed: [], stage: null, task: null, approvedStage: null };
        if (shape) {
          // pipelineOrder walks stages and their tasks in the same nested order as the old indices.
          const order = pipelineOrder(shape);
          let n = 0;
          let at: Step | undefined;
          shape.stages.forEach((st, si) =>
            st.tasks.forEach((_t, ti) => {
              const step = order[n++]!;
              const before = si < old.stageIndex || (si === old.stageIndex && ti < old.taskIndex);
              if (m.state === 'done' || before) next.passed.push(step.key);
              else at ??= step;
            }),
          );
          if (m.state !== 'done' && at) Object.assign(next, { stage: at.stage, task: at.task });
          const approved = shape.stages[old.approvedStage]?.name;
          if (approved) {
            const nth = shape.stages.slice(0, old.approvedStage + 1).filter((st) => st.name === approved).length;
            next.approvedStage = nth === 1 ? approved : `${approved}#${nth}`;
          }
        }
        await tx.updateMachine(next);
      });
    }
    if (legacy.length > 0) this.log('info', 'machine positions upgraded to stage and task names', { machines: legacy.length });
  }

  stop(): void {
    this.stopped = true;
    this.liveness.stop();
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
    this.unsubscribe();
    this.unsubscribeContent();
    this.wakeups.wakeAll();
  }

  /**
   * Holds a machine for rollout `rolloutId`: it gets no new job until `release` (its running job goes on),
   * so a rollout that waits for a busy machine reassigns it between two jobs instead of cancelling one.
   * Kept in the store (one transaction, with a `machines.update.<id>` event), so the hold outlives an
   * endpoint restart and every replica's claims see it. Idempotent: holding a held machine writes nothing.
   * A machine deleted meanwhile is not held (the rollout's next tick leaves it out as deleted).
   */
  async hold(machineId: string, rolloutId: string): Promise<void> {
    await this.store.transact((tx) => this.holdIn(tx, machineId, rolloutId));
  }

  /** `hold` inside the caller's transaction (a rollout decides and holds in one, on fresh reads). */
  async holdIn(tx: Tx, machineId: string, rolloutId: string): Promise<void> {
    const m = await tx.lockMachine(machineId);
    if (!m || (await tx.getHold(m.id))?.rolloutId === rolloutId) return;
    await tx.putHold({ machineId: m.id, rolloutId, since: new Date().toISOString() });
    tx.emit(`machines.update.${m.id}`, publicMachine(m));
  }

  /**
   * Ends a machine's hold, if it has one; its event wakes a claim waiting for the machine (on any replica),
   * which then looks again at once. A machine deleted meanwhile has no hold left: nothing to do.
   */
  async release(machineId: string): Promise<void> {
    await this.store.transact((tx) => this.releaseIn(tx, machineId));
  }

  /** `release` inside the caller's transaction. */
  async releaseIn(tx: Tx, machineId: string): Promise<void> {
    const m = await tx.lockMachine(machineId);
    if (!(await tx.deleteHold(machineId)) || !m) return;
    tx.emit(`machines.update.${m.id}`, publicMachine(m));
  }

  /**
   * Cancels the machine's running job, if any, as `cancelled by <by>: <why>`; the machine keeps its place
   * (hold it first, or its next claim runs the same task again). For a rollout's `--busy cancel`.
   */
  async cancelMachineJob(machineId: string, by: string, why = 'the rollout takes over this busy machine (--busy cancel)'): Promise<void> {
    await this.store.transact((tx) => this.cancelMachineJobIn(tx, machineId, by, why));
  }

  /** `cancelMachineJob` inside the caller's transaction. */
  async cancelMachineJobIn(tx: Tx, machineId: string, by: string, why = 'the rollout takes over this busy machine (--busy cancel)'): Promise<void> {
    const m = await lockedMachine(tx, machineId);
    if (!m.currentJob) return;
    const after = await cancelCurrent(this.run, tx, m, by, why);
    await saveMachine(tx, { ...after, currentJob: null, updatedAt: new Date().toISOString() });
  }

  // ---- liveness ------------------------------------------------------------------------------------

  /**
   * Something was heard from the machine: the API calls this for every request authenticated with the
   * machine's token; the SSH broker calls it for every contact with a host it drives (connect, command,
   * keepalive: at least once per half the window while its connection is open), with `via: 'ssh'`.
   * `version`/`address` absent or null keep what is known. Cheap (in memory); the store is written in
   * batches, at once with a `machines.update.<id>` event when connected flips or version, address or
   * transport change, else `lastSeenAt` at most once per throttle interval. Never throws.
   */
  heard(machineId: string, contact: Contact): void {
    this.liveness.heard(machineId, contact);
  }

  /**
   * The machine is out of touch now (the SSH broker lost its connection or cannot reach the host):
   * disconnected at once, with an event, instead of after the window. A later `heard` connects it again.
   */
  gone(machineId: string): void {
    this.liveness.gone(machineId);
  }

  /** The machine with its freshest liveness (this endpoint's memory over the stored record). */
  withLiveness(m: Machine): Machine {
    return { ...m, agent: this.liveness.view(m) };
  }

  /**
   * Writes a batch of liveness records in one transaction (see Liveness): the machines it must look at
   * (writes with an event, swept disconnects) read in one query, every record written by one call
   * (Tx.setAgentLiveness: one statement on PostgreSQL). Answers the swept ids it skipped.
   */
  private async writeLiveness(writes: LivenessWrite[]): Promise<string[]> {
    return this.store.transact(async (tx) => {
      const skipped: string[] = [];
      const entries: Array<{ id: string; agent: AgentLiveness }> = [];
      const ids = writes.filter((w) => w.emit || w.sweptAt !== null).map((w) => w.machineId);
      const stored = new Map((ids.length > 0 ? await tx.listMachines({ ids, limit: ids.length }) : []).map((m) => [m.id, m]));
      for (const w of writes) {
        let agent: AgentLiveness = w.agent;
        if (w.emit || w.sweptAt !== null) {
          const m = stored.get(w.machineId);
          if (!m) continue;
          const seen = m.agent.lastSeenAt ? Date.parse(m.agent.lastSeenAt) : null;
          const mine = agent.lastSeenAt ? Date.parse(agent.lastSeenAt) : null;
          // Another replica heard the machine after this one did, within the window: not gone.
          if (w.sweptAt !== null && seen !== null && (mine === null || seen > mine) && w.sweptAt - seen <= this.liveness.windowMs) {
            skipped.push(w.machineId);
            continue;
          }
          // Another replica's sweep recorded the disconnect already (the store is read in this transaction,
          // after theirs committed): one flip, one event, whichever replicas sweep.
          if (w.sweptAt !== null && !m.agent.connected) continue;
          agent = { ...agent, version: agent.version ?? m.agent.version, address: agent.address ?? m.agent.address };
          if (w.emit) tx.emit(`machines.update.${w.machineId}`, publicMachine({ ...m, agent }));
        }
        entries.push({ id: w.machineId, agent });
      }
      await tx.setAgentLiveness(entries);
      return skipped;
    });
  }

  // ---- machines ------------------------------------------------------------------------------------

  async findMachine(idOrName: string): Promise<Machine> {
    const m = (await this.store.getMachine(idOrName)) ?? (await this.store.getMachineByName(idOrName));
    if (!m) throw new TaktError('not_found', `machine '${idOrName}' not found`);
    return m;
  }

  async createMachine(input: MachineInput, author: string): Promise<{ machine: Machine; token: string }> {
    // Checked against the content as of every event heard (a pack another replica installed is reloaded first).
    await this.content.fresh();
    const made = await this.newMachine(input);
    // After newMachine: a param that is malformed or past the bounds is refused for that first.
    if (!input.allowUndeclared) assertDeclared(this.content.current, input.params);
    await this.store.transact((tx) => this.insertMachine(tx, made.machine, made.token, author));
    return made;
  }

  /**
   * A new machine and its token, checked against `content` (by default the content in use; an import
   * passes the content as it will be) and the store, but not written: `insertMachine` writes it.
   */
  async newMachine(input: MachineInput, content: ContentSet = this.content.current): Promise<{ machine: Machine; token: string }> {
    if (input.pipeline) requirePipeline(content, input.pipeline);
    const profiles = input.profiles ?? [];
    requireProfiles(content, profiles);
    const params = checkParams(this.sealer, content, {}, input.params ?? {});
    validateLabels(input.labels ?? {});
    assertMachineName(input.name);
    if (await this.store.getMachineByName(input.name)) throw new TaktError('conflict', `a machine named '${input.name}' already exists`, { path: '/name' });
    if (input.id !== undefined && (!/^m-[a-z0-9]{1,40}$/.test(input.id) || (await this.store.getMachine(input.id)))) {
      throw new TaktError('conflict', `machine id '${input.id}' is not valid or already taken`, { path: '/id' });
    }
    const id = input.id ?? `m-${randomBytes(5).toString('hex')}`;
    const token = newMachineToken(id);
    const now = new Date().toISOString();
    const machine: Machine = {
      id,
      name: input.name,
      environment: input.environment ?? defaultEnvironment(input),
      broker: input.broker ?? null,
      pipeline: input.pipeline ?? null,
      stage: null,
      task: null,
      passed: [],
      attempt: 0,
      approvedStage: null,
      state: input.pipeline ? 'running' : 'idle',
      reason: null,
      params,
      outputs: {},
      profiles,
      labels: sortedLabels(input.labels ?? {}),
      currentJob: null,
      power: 'on',
      facts: null,
      ...(input.ssh ? { ssh: { ...checkSshSettings(input.ssh), hostKey: null } } : {}),
      ...(input.boot ? { boot: requireBootenv(content, checkBootSettings(input.boot)) } : {}),
      ...(input.powerConfig !== undefined && input.powerConfig !== null ? { powerConfig: this.checkPowerConfig(input.powerConfig) } : {}),
      createdAt: now,
      updatedAt: now,
      agent: { connected: false, lastSeenAt: null, version: null, address: null, via: null, since: now },
      ...(input.host !== undefined ? { host: input.host } : {}),
    };
    assertEnvironment(content, machine.name, machine.environment, machine.pipeline);
    if (machine.pipeline) this.assertStartable(machine, machine.pipeline, content);
    return { machine, token };
  }

  /** Writes a machine made by `newMachine` inside the caller's transaction (names and ids re-checked there). */
  async insertMachine(tx: Tx, machine: Machine, token: string, author: string): Promise<void> {
    if (await tx.getMachineByName(machine.name)) throw new TaktError('conflict', `a machine named '${machine.name}' already exists`, { path: '/name' });
    if (await tx.getMachine(machine.id)) throw new TaktError('conflict', `machine id '${machine.id}' is already taken`, { path: '/id' });
    if (machine.ssh) await requireCredential(tx, machine.ssh.credential);
    if (machine.boot) await assertBootIdentityFree(tx, machine.boot, machine.id);
    await tx.insertMachine(machine, sha256(token));
    await tx.change(author, `machines/${machine.id}`, 'create', null, desiredView(machine));
    tx.emit(`machines.create.${machine.id}`, publicMachine(machine));
  }

  async updateMachine(idOrName: string, patch: MachinePatch, author: string, restore?: RestoreWrite): Promise<Machine> {
    await this.content.fresh();
    const found = await this.findMachine(idOrName);
    const content = this.content.current;
    this.checkPatch(content, patch);
    if (patch.params && !patch.allowUndeclared) {
      checkParams(this.sealer, content, {}, patch.params); // a malformed value is refused for that first: it says more
      assertDeclared(content, patch.params);
    }
    return this.store.transact((tx) => this.updateMachineIn(tx, found.id, patch, author, content, restore));
  }

  /**
   * Params an operator sets on machines (by update, or through a rollout: rollouts.ts), checked against
   * `content` without a machine: names, each declared param's schema, none undeclared.
   * @throws TaktError invalid at `/params/<name>`.
   */
  checkParamsPatch(content: ContentSet, params: Record<string, unknown>): void {
    checkParams(this.sealer, content, {}, params);
    assertDeclared(content, params);
  }

  /** A power configuration checked by the injected driver checks (EngineOptions.checkPowerConfig). */
  checkPowerConfig(config: unknown): MachinePowerConfig {
    return (this.opts.checkPowerConfig ?? checkPowerShape)(config);
  }

  /** Checks what `updateMachineIn` can check before a transaction (references into `content`). */
  checkPatch(content: ContentSet, patch: MachinePatch): void {
    if (patch.powerConfig !== undefined && patch.powerConfig !== null) this.checkPowerConfig(patch.powerConfig);
    if (patch.name !== undefined) assertMachineName(patch.name);
    if (patch.pipeline) requirePipeline(content, patch.pipeline);
    if (patch.profiles) requireProfiles(content, patch.profiles);
    if (patch.labels) validateLabels(Object.fromEntries(Object.entries(patch.labels).filter(([, v]) => v !== null)) as Record<string, string>);
  }

  /**
   * JSON pointers (under `at`) of the sealed values inside `value` this endpoint's secret key cannot open:
   * values sealed by another endpoint (an export carried without its `secret.key`). They would fail only
   * when a job renders them, so an import refuses them first.
   */
  foreignSealed(value: unknown, at = ''): string[] {
    return foreignSealed(value, this.sealer, at);
  }

  /**
   * Every problem `newMachine` + `createMachine` would refuse a machine's params for that a single throw
   * would hide: each param no content declares (unless `allowUndeclared`), one error per param.
   */
  undeclaredProblems(content: ContentSet, params: Record<string, unknown>, allowUndeclared = false): TaktError[] {
    if (allowUndeclared) return [];
    return Object.entries(params).flatMap(([k, v]) => attempt(() => assertDeclared(content, { [k]: v })));
  }

  /**
   * Every problem `updateMachineIn` would refuse `patch` on `m` for, against `content`, found without a
   * transaction and without stopping at the first: references, labels, each param's schema, params no
   * content declares (unless `allowUndeclared`, as `updateMachine`), SSH settings and their credential,
   * required params of a newly assigned pipeline, and the machine's environment against its pipeline's
   * (checked whatever changed: the content itself may be changing, as in an import). An import and its dry
   * run both check every machine with it, so both report the same problems before anything is written.
   */
  async updateProblems(m: Machine, patch: MachinePatch & { power?: Machine['power'] }, content: ContentSet, opts: { allowUndeclared?: boolean } = {}): Promise<TaktError[]> {
    const out: TaktError[] = [];
    out.push(...attempt(() => this.checkPatch(content, patch)));
    if (patch.name !== undefined && patch.name !== m.name) {
      const holder = await this.store.getMachineByName(patch.name);
      if (holder && holder.id !== m.id) out.push(new TaktError('conflict', `a machine named '${patch.name}' already exists`, { path: '/name' }));
    }
    let params = m.params;
    if (patch.params) {
      for (const [k, v] of Object.entries(patch.params)) out.push(...attempt(() => checkParams(this.sealer, content, {}, { [k]: v })));
      params = Object.fromEntries(Object.entries({ ...m.params, ...patch.params }).filter(([, v]) => v !== null));
      out.push(...this.undeclaredProblems(content, patch.params, opts.allowUndeclared || patch.allowUndeclared));
    }
    if (patch.ssh !== undefined) {
      if (!m.ssh) out.push(new TaktError('conflict', `machine '${m.name}' is not driven over SSH (broker ${m.broker ?? 'none'}); its SSH settings cannot be set`, { path: '/ssh' }));
      else {
        const credential = patch.ssh.credential ?? m.ssh.credential;
        if (credential !== m.ssh.credential && !(await this.store.getCredential(credential))) {
          out.push(new TaktError('not_found', `credential '${credential}' not found; add it with \`takt credentials add ${credential} --ssh-key FILE\``, { path: '/ssh/credential' }));
        }
      }
    }
    if (patch.boot !== undefined) out.push(...attempt(() => requireBootenv(content, m.boot ? patchBoot(m.boot, patch.boot!) : checkBootSettings(patch.boot!))));
    if (patch.powerConfig !== undefined && patch.powerConfig !== null) out.push(...attempt(() => this.checkPowerConfig(patch.powerConfig)));
    const next: Machine = { ...m, name: patch.name ?? m.name, environment: patch.environment ?? m.environment, profiles: patch.profiles ?? m.profiles, params, pipeline: patch.pipeline !== undefined ? patch.pipeline : m.pipeline };
    if (patch.pipeline && patch.pipeline !== m.pipeline && content.objects.pipelines.has(patch.pipeline)) out.push(...attempt(() => this.assertStartable(next, patch.pipeline!, content)));
    out.push(...attempt(() => assertEnvironment(content, next.name, next.environment, next.pipeline)));
    return out;
  }

  /**
   * The writes of `updateMachine` (and of a power change) inside the caller's transaction, checked against
   * `content`; an import runs it for every machine it changes, in one transaction. `restore`: a revert,
   * rewind or import writes desired state back (restore.ts): outputs stay, and a pipeline it changes puts
   * the machine at `restore.place` instead of starting it from the top.
   */
  async updateMachineIn(tx: Tx, id: string, patch: MachinePatch & { power?: Machine['power']; classification?: MachineClassification }, author: string, content: ContentSet, restore?: RestoreWrite): Promise<Machine> {
    const m = await lockedMachine(tx, id);
    let next: Machine = { ...m };
    // Provenance only (classifyMachine): written with the desired fields the rule set, in the same transaction.
    if (patch.classification !== undefined) next.classification = patch.classification;
    if (patch.name !== undefined && patch.name !== m.name) {
      assertMachineName(patch.name);
      if (await tx.getMachineByName(patch.name)) throw new TaktError('conflict', `a machine named '${patch.name}' already exists`, { path: '/name' });
      next.name = patch.name;
    }
    if (patch.environment !== undefined) next.environment = patch.environment;
    if (patch.profiles !== undefined) next.profiles = patch.profiles;
    if (patch.labels !== undefined) {
      next.labels = applyLabelPatch(m.labels, patch.labels);
      validateLabels(next.labels);
    }
    if (patch.params !== undefined) {
      next.params = checkParams(this.sealer, content, m.params, patch.params);
      // An operator's value for a param supersedes an output of the same name, as when outputs were params
      // (unsetting the param leaves what the machine has). A restore never touches outputs: they are observed.
      if (!restore) next.outputs = Object.fromEntries(Object.entries(m.outputs).filter(([k]) => patch.params![k] === undefined || patch.params![k] === null));
    }
    if (patch.power !== undefined) next.power = patch.power;
    if (patch.ssh !== undefined) {
      if (!m.ssh) throw new TaktError('conflict', `machine '${m.name}' is not driven over SSH (broker ${m.broker ?? 'none'}); its SSH settings cannot be set`, { path: '/ssh' });
      next.ssh = patchSsh(m.ssh, patch.ssh);
      if (next.ssh.credential !== m.ssh.credential) await requireCredential(tx, next.ssh.credential);
    }
    if (patch.boot !== undefined) {
      next.boot = requireBootenv(content, m.boot ? patchBoot(m.boot, patch.boot) : checkBootSettings(patch.boot));
      await assertBootIdentityFree(tx, next.boot, m.id);
    }
    if (patch.powerConfig !== undefined) {
      if (patch.powerConfig === null) delete next.powerConfig;
      else next.powerConfig = this.checkPowerConfig(patch.powerConfig);
    }
    if (patch.pipeline !== undefined && patch.pipeline !== m.pipeline) {
      if (patch.pipeline) this.assertStartable(next, patch.pipeline, content);
      await cancelCurrent(this.run, tx, m, author, patch.pipeline ? `pipeline changed from ${m.pipeline ?? '(none)'} to ${patch.pipeline}` : `pipeline ${m.pipeline} unassigned`);
      next = { ...next, ...assignPipeline(next, patch.pipeline), ...(restore && patch.pipeline ? restoredPlace(restore, m.name) : {}), currentJob: null };
    }
    if (patch.environment !== undefined || patch.pipeline !== undefined) assertEnvironment(content, next.name, next.environment, next.pipeline);
    return this.saveDesired(tx, m, next, author);
  }

  async deleteMachine(idOrName: string, author: string): Promise<Machine> {
    const found = await this.findMachine(idOrName);
    // What its agent last said it booted goes with it (ids are never reused, so this is only memory).
    this.run.running.delete(found.id);
    return this.store.transact(async (tx) => {
      const m = await lockedMachine(tx, found.id);
      await cancelCurrent(this.run, tx, m, author, 'machine deleted');
      for (const wo of await tx.listWorkOrders({ machineId: m.id })) {
        if (wo.state === 'queued' || wo.state === 'running') await finishWorkOrder(tx, wo, 'cancelled', `machine deleted by ${author}`);
      }
      await tx.deleteMachine(m.id);
      await tx.change(author, `machines/${m.id}`, 'delete', desiredView(m), null);
      tx.emit(`machines.delete.${m.id}`, publicMachine(m));
      return m;
    });
  }

  /**
   * Continues a stopped machine's pipeline where it stopped, by identity (see transitions.ts `locate`).
   * @throws TaktError conflict (409) when the machine is not stopped, or when the content changed so that
   *   where to continue is ambiguous: `details` says what changed (`change`, `tasks`, pack versions) and the
   *   message what the operator can do.
   */
  async resumeMachine(idOrName: string, author: string, opts: PowerOption = {}): Promise<Machine> {
    const found = await this.findMachine(idOrName);
    const content = this.content.current;
    const shape = found.pipeline ? this.shapeOf(content, found.pipeline) : null;
    try {
      return await this.operate(idOrName, author, (m) => keepPower(m, resume(m, shape, found.name), opts));
    } catch (err) {
      if (!(err instanceof ResumeRefused)) throw err;
      const v = await this.refusalOf(found, err.located);
      throw new TaktError('conflict', `machine '${found.name}' cannot resume: ${v.message}`, {
        details: { machine: found.name, pipeline: found.pipeline, change: v.change, tasks: v.tasks, stoppedUnder: v.stoppedUnder, now: v.now, remedies: v.remedies },
      });
    }
  }

  /**
   * Whether a resume of the machine would be refused, by the same strict locate() a resume runs, and
   * what to do instead: the one verdict `resume`, `plan` and `describe` give. Null when a resume would
   * go on (or the machine has no pipeline in the content in use: resume says that itself).
   */
  async resumeVerdict(m: Machine): Promise<ResumeVerdict | null> {
    const shape = m.pipeline ? this.shapeOf(this.content.current, m.pipeline) : null;
    if (!shape) return null;
    const at = locate(shape, m, true);
    return at.kind === 'refused' ? this.refusalOf(m, at) : null;
  }

  /**
   * The stopped and paused machines a resume would now be refused for (at most `limit`), with why and
   * what to do instead: after a pack version is put in use, so that the surprise comes then, not later.
   */
  async unresumable(limit = 100): Promise<Array<{ machine: string; message: string }>> {
    const out: Array<{ machine: string; message: string }> = [];
    for (const state of ['stopped', 'paused'] as const) {
      for (const m of await this.store.listMachines({ state, limit: 1000 })) {
        if (out.length >= limit) return out;
        const v = await this.resumeVerdict(m);
        if (v) out.push({ machine: m.name, message: v.message });
      }
    }
    return out;
  }

  /**
   * A refused resume in words: what changed, between which pack versions, and the commands that get the
   * machine going: a restart, or putting back in use the version it stopped under when it is installed
   * (that version has the task where it ran), else the generic `takt content use PACK@VERSION`.
   */
  private async refusalOf(m: Machine, at: { change: 'vanished' | 'reordered'; message: string; tasks: Array<{ stage: string; task: string }> }): Promise<ResumeVerdict> {
    const packs = await this.packsOf(m);
    const keeps = at.change === 'vanished' ? 'has the task' : 'keeps the tasks in the order they ran';
    const at_ = packs.before ? packs.before.lastIndexOf('@') : -1;
    const installed =
      packs.before && packs.before !== packs.now && at_ > 0 ? await this.store.getPackVersion(packs.before.slice(0, at_), packs.before.slice(at_ + 1)) : undefined;
    const use = installed ? `takt content use ${packs.before}` : 'takt content use PACK@VERSION';
    const content = installed ? `put ${packs.before}, which ${keeps}, back in use (\`${use}\`)` : `put content in use that ${keeps} (\`${use}\`)`;
    const restart = `takt machines restart ${m.name}`;
    return {
      message: `${at.message} (${packs.note}); run \`${restart}\` to run the pipeline from its first task, or ${content}`,
      change: at.change,
      tasks: at.tasks,
      stoppedUnder: packs.before,
      now: packs.now,
      remedies: [restart, use],
    };
  }

  /**
   * Which pack versions a refused resume is between: the one the machine's last pipeline job ran from
   * and the one its pipeline comes from now (`local` for local content).
   */
  private async packsOf(m: Machine): Promise<{ before: string | null; now: string | null; note: string }> {
    const entry = m.pipeline ? this.content.current.objects.pipelines.get(m.pipeline) : undefined;
    const now = entry ? this.content.packRef(entry.layer) : null;
    const last = (await this.store.listJobs({ machineId: m.id, limit: 20 })).find((j) => j.kind === 'pipeline' && j.pipeline === m.pipeline);
    const before = last?.pack ?? null;
    const note = before && now && before !== now ? `it stopped under ${before}; the content in use is ${now}` : `the content in use is ${now ?? 'unknown'}`;
    return { before, now, note };
  }

  /**
   * Starts the pipeline over from its first task. A powered-off machine stays off (its position is reset;
   * it runs from the first task once powered on) unless `powerOn`: power is its own desired state, which
   * an operator may have set on purpose (maintenance), and a restart does not change it behind their back.
   */
  async restartMachine(idOrName: string, author: string, opts: PowerOption = {}): Promise<Machine> {
    const m = await this.findMachine(idOrName);
    if (m.pipeline) this.assertStartable(m, m.pipeline);
    return this.operate(idOrName, author, (v) => keepPower(v, restart(v), opts), 'machine restarted');
  }

  /**
   * Re-runs a network-booted machine's deploy (issue #14 `takt machines rebuild`): it boots the
   * `discovery` bootenv again and its pipeline starts over from the top. Its agent in the installed OS is
   * told to reboot at its next claim (claim.ts: a machine set to boot discovery runs nothing outside it),
   * so the deploy's first stage runs in memory, never on the disk it overwrites; a machine whose OS runs
   * no agent needs a power cycle (`takt machines power M cycle --next-boot pxe`). The running job, if any,
   * is cancelled.
   * @throws TaktError conflict when the machine does not boot from the network (no boot settings), has no
   *   pipeline, or the content defines no `discovery` bootenv (saying what to do).
   */
  async rebuildMachine(idOrName: string, author: string, opts: PowerOption = {}): Promise<Machine> {
    const m = await this.findMachine(idOrName);
    this.assertRebuildable(m);
    return this.store.transact((tx) => this.rebuildMachineIn(tx, m.id, author, opts));
  }

  /**
   * `rebuildMachine` of machine `id` inside the caller's transaction (rollouts and the churn policy start
   * a network-booted machine's deploy over this way: rollouts.ts), checked on the machine as it reads
   * there. One change in history by `author`: the pipeline from the top and `boot.bootenv` = discovery.
   * @throws TaktError conflict as rebuildMachine.
   */
  async rebuildMachineIn(tx: Tx, id: string, author: string, opts: PowerOption = {}): Promise<Machine> {
    this.assertRebuildable(await lockedMachine(tx, id));
    return this.operateIn(tx, id, author, (v) => ({ ...keepPower(v, restart(v), opts), boot: v.boot ? { ...v.boot, bootenv: DISCOVERY_BOOTENV } : v.boot }), 'machine rebuilt');
  }

  /**
   * Whether starting machine `m`'s pipeline over is a rebuild (boot discovery again) rather than a restart
   * in place: `m` boots from the network (boot settings) and its pipeline's first stage needs discovery
   * (`startsInDiscovery`). Rollouts and the churn policy ask this for each machine they start.
   */
  startsOverAsRebuild(m: Machine, pipeline: string | null = m.pipeline, content: ContentSet = this.content.current): boolean {
    return !!m.boot && !!pipeline && startsInDiscovery(content, pipeline);
  }

  /** @throws TaktError conflict when `m` cannot be rebuilt (see rebuildMachine). */
  private assertRebuildable(m: Machine): void {
    if (!m.boot) throw new TaktError('conflict', `${m.name} does not boot from the network (it has no boot settings), so there is no deploy to re-run: start its pipeline over with takt machines restart ${m.name}`);
    if (!m.pipeline) throw new TaktError('conflict', `${m.name} has no pipeline to re-run: give it one (e.g. takt machines update ${m.name} --pipeline image-deploy)`);
    if (!this.content.current.objects.bootenvs.has(DISCOVERY_BOOTENV)) {
      throw new TaktError('conflict', `a rebuild boots ${m.name} into the '${DISCOVERY_BOOTENV}' bootenv, which no pack defines here: build and install it with takt bootenv build discovery --install`);
    }
    this.assertStartable(m, m.pipeline);
  }

  /** `restartMachine` of machine `id` inside the caller's transaction, checked on the machine as it reads there. */
  async restartMachineIn(tx: Tx, id: string, author: string, opts: PowerOption = {}): Promise<Machine> {
    const m = await lockedMachine(tx, id);
    if (m.pipeline) this.assertStartable(m, m.pipeline);
    return this.operateIn(tx, id, author, (v) => keepPower(v, restart(v), opts), 'machine restarted');
  }

  /**
   * Power a machine off or on (the broker acts on it; an agent that is told `off` exits). Powering off
   * cancels the running job (its script's process group is killed): the machine keeps its place and
   * runs that task again when it is powered on.
   */
  async setPower(idOrName: string, power: Machine['power'], author: string): Promise<Machine> {
    return this.operate(idOrName, author, (m) => ({ ...m, power }), power === 'off' ? 'machine powered off' : null);
  }

  /**
   * A boot the endpoint waited for did not happen (provision/boot-watch.ts): the machine gets
   * `reason`, and a machine walking its pipeline is stopped where it stands (its position kept) so that
   * `machines wait`, the list and the UI show a machine that needs a person rather than one "running"
   * with nothing running. Resume continues once it boots. A machine that has a job running by now did
   * boot (its agent claimed work), and is left as it is. Observed state: nothing goes in history.
   * Emits `machines.boot-missed.<id>` with `{id, name, reason}`. `runningOnly` (a boot from disk): a machine
   * no longer walking its pipeline (done, stopped, paused by someone meanwhile) is left as it is too.
   * @returns the machine after the change, or null when it is gone, already running a job, or left alone.
   */
  async bootMissed(id: string, reason: string, opts: { runningOnly?: boolean } = {}): Promise<Machine | null> {
    return this.store.transact(async (tx) => {
      const m = await tx.lockMachine(id);
      if (!m || m.currentJob || (opts.runningOnly && m.state !== 'running')) return null;
      const stop = m.state === 'running';
      const next: Machine = { ...m, reason: stop ? `${reason}; resume it (takt machines resume ${m.name}) once it boots` : reason, ...(stop ? { state: 'stopped' as const } : {}), updatedAt: new Date().toISOString() };
      await tx.updateMachine(next);
      tx.emit(`machines.update.${m.id}`, publicMachine(next));
      tx.emit(`machines.boot-missed.${m.id}`, { id: m.id, name: m.name, reason });
      this.log('warn', `${m.name}: ${reason}`, { machine: m.name });
      return next;
    });
  }

  /**
   * The clear value of param `name` as machine `m` sees it (its params, its profiles, its pipeline's,
   * the global profile; outputs are left out: a task must not choose its machine's BMC password), for a
   * power driver that logs in (`passwordParam`). Only a secure param is given out: a password kept in
   * the clear would be shown by `machines get`, history and exports.
   * Returns undefined when no layer sets it.
   * @throws TaktError conflict when the param is not secure, or sealed by another endpoint's key.
   */
  secretParam(m: Machine, name: string): string | undefined {
    const content = this.content.current;
    const pipeline = m.pipeline ? content.objects.pipelines.get(m.pipeline)?.def : undefined;
    const layers = paramLayers(content, { machine: { params: m.params, profiles: m.profiles }, ...(pipeline ? { pipeline: { name: pipeline.name, params: pipeline.params } } : {}) });
    const p = resolveParam(content, layers, name);
    if (!p || p.value === undefined || p.value === null) return undefined;
    if (!p.secure) throw new TaktError('conflict', `param '${name}' of ${m.name} is not secure: a BMC password must be a secure param (declare it with secure: true in a pack's params/, then set it with takt machines update ${m.name} --param ${name}=...)`, { path: '/powerConfig/passwordParam' });
    let clear: unknown;
    try {
      clear = isSealed(p.value) ? this.sealer.open(p.value) : p.value;
    } catch {
      throw new TaktError('conflict', `param '${name}' of ${m.name} was sealed by another endpoint's key and cannot be opened here: set it again`, { path: '/powerConfig/passwordParam' });
    }
    return typeof clear === 'string' ? clear : JSON.stringify(clear);
  }

  /**
   * Operator: pause a machine's pipeline where it stands (see transitions.pause). Without `cancel` its
   * running job finishes first (the machine then stops before the next task); with it the job is
   * cancelled and the machine pauses on that job's task. `already`: it was paused before (nothing changed
   * unless a job was cancelled). `cancelled`: the job that was cancelled, if any.
   * @throws TaktError conflict for a machine with nothing to pause (idle, done, stopped).
   */
  async pauseMachine(idOrName: string, author: string, o: { cancel?: boolean; why?: string } = {}): Promise<{ machine: Machine; already: boolean; cancelled: Job | null }> {
    const found = await this.findMachine(idOrName);
    return this.store.transact(async (tx) => {
      const m = await lockedMachine(tx, found.id);
      let next: Machine;
      try {
        next = { ...m, ...pause(m, author, o.why) };
      } catch (err) {
        if (err instanceof TransitionError) throw new TaktError('conflict', `machine '${m.name}': ${err.message}`);
        throw err;
      }
      let cancelled: Job | null = null;
      if (o.cancel && next.currentJob) {
        const s = await cancelRunning(this.run, tx, next, author, o.why ?? `machine paused`, true);
        if (s) ({ machine: next, job: cancelled } = s);
      }
      const already = m.state === 'paused';
      if (already && !cancelled) return { machine: m, already, cancelled };
      return { machine: await this.saveDesired(tx, m, next, author), already, cancelled };
    });
  }

  /**
   * Operator: cancel a running job. Its agent (or the SSH transport) kills the script's whole process group
   * as soon as it hears (its heartbeat long-polls for this). A pipeline job leaves its machine `paused` on
   * the job's task (a resume runs it again); a work-order job cancels its work order.
   * @throws TaktError not_found, or conflict for a job that has already ended.
   */
  async cancelJob(jobId: string, author: string, why?: string): Promise<Job> {
    return this.store.transact(async (tx) => {
      const job = await tx.getJob(jobId);
      if (!job) throw new TaktError('not_found', `job '${jobId}' not found`);
      if (job.state !== 'running') throw new TaktError('conflict', `job '${jobId}' already ended: ${job.state}${job.reason ? ` (${job.reason})` : ''}`);
      const m = await lockedMachine(tx, job.machineId);
      const s = await settle(this.run, tx, m, job, { kind: 'cancelled', by: author, why, hold: true }, {}, undefined, true);
      await this.saveDesired(tx, m, s.machine, author);
      return s.job;
    });
  }

  /**
   * `fn` applied to the machine in one transaction. `cancel`: an operator action that ends the running
   * job, in these words (e.g. 'machine restarted'); the job ends `cancelled by <author>: <cancel>`.
   */
  private async operate(idOrName: string, author: string, fn: (m: Machine) => MachineView & { boot?: Machine['boot'] }, cancel: string | null = null): Promise<Machine> {
    const found = await this.findMachine(idOrName);
    return this.store.transact((tx) => this.operateIn(tx, found.id, author, fn, cancel));
  }

  /** `operate` on machine `id` inside the caller's transaction. */
  private async operateIn(tx: Tx, id: string, author: string, fn: (m: Machine) => MachineView & { boot?: Machine['boot'] }, cancel: string | null = null): Promise<Machine> {
    const m = await lockedMachine(tx, id);
    let view: MachineView & { boot?: Machine['boot'] };
    try {
      view = fn(m);
    } catch (err) {
      // A refused resume goes back to resumeMachine as it is, which adds the pack versions.
      if (err instanceof TransitionError && !(err instanceof ResumeRefused)) throw new TaktError('conflict', `machine '${m.name}': ${err.message}`);
      throw err;
    }
    const current = cancel === null ? m : await cancelCurrent(this.run, tx, m, author, cancel);
    // `view` is the whole machine as `fn` saw it: its current job is the one before the cancel.
    return this.saveDesired(tx, m, { ...current, ...view, currentJob: current.currentJob }, author);
  }

  private async saveDesired(tx: Tx, before: Machine, after: Machine, author: string): Promise<Machine> {
    after.updatedAt = new Date().toISOString();
    await tx.updateMachine(after);
    if (canonicalJson(desiredView(before)) !== canonicalJson(desiredView(after))) {
      await tx.change(author, `machines/${after.id}`, 'update', desiredView(before), desiredView(after));
    }
    tx.emit(`machines.update.${after.id}`, publicMachine(after));
    return after;
  }



  /**
   * Lets a machine awaiting approval into its stage. `by`: who decides — a user's grants are checked against
   * the stage's `approval.role` and two-person rule (engine/approvals.ts); a plain author text acts with
   * every role (the endpoint's own callers). @throws TaktError forbidden (role, two-person), conflict, not_found.
   */
  async approveMachine(idOrName: string, by: Approver | string, comment?: string): Promise<Machine> {
    return this.decide(idOrName, approverOf(by), 'approved', comment, (m, _stage, stageKey) => approve(m, stageKey));
  }

  /** Stops a machine awaiting approval at its stage; the stage's role is needed as for approving. @throws as approveMachine. */
  async rejectMachine(idOrName: string, by: Approver | string, why: string): Promise<Machine> {
    const approver = approverOf(by);
    return this.decide(idOrName, approver, 'rejected', why, (m, stage) => reject(m, stage, approver.author, why));
  }

  private async decide(idOrName: string, approver: Approver, decision: 'approved' | 'rejected', comment: string | undefined, fn: (m: MachineView, stage: string, stageKey: string) => MachineView) {
    const found = await this.findMachine(idOrName);
    const author = approver.author;
    return this.store.transact(async (tx) => {
      const m = await lockedMachine(tx, found.id);
      const shape = m.pipeline ? this.shapeOf(this.content.current, m.pipeline) : null;
      // The stage it waits at, by identity: the stage of the task it stands at.
      const at = shape ? locate(shape, m, false) : null;
      const step = at?.kind === 'at' ? at.step : null;
      const stage = step?.stage ?? m.stage ?? '?';
      // Who may decide (issue #16): only for a machine that is waiting (anything else is the conflict below).
      if (m.state === 'awaiting-approval') {
        const rule = this.content.current.objects.stages.get(stage)?.def.approval;
        await checkMachineApprover(tx, approver, m, stage, rule, decision === 'approved' ? 'approve' : 'reject');
      }
      let view: MachineView;
      try {
        view = fn(m, stage, step?.stageKey ?? stage);
      } catch (err) {
        if (err instanceof TransitionError) throw new TaktError('conflict', `machine '${m.name}': ${err.message}`);
        throw err;
      }
      // The decision is part of the record: who let the machine into which stage, when, and why.
      await tx.change(author, `approvals/${m.id}`, 'create', null, { machine: m.name, pipeline: m.pipeline, stage, decision, comment: comment ?? null });
      return this.saveDesired(tx, m, { ...m, ...view }, author);
    });
  }

  // ---- work orders ---------------------------------------------------------------------------------

  async createWorkOrder(input: WorkOrderInput, author: string): Promise<WorkOrder> {
    return (await this.createWorkOrders([input], author))[0]!;
  }

  /**
   * Queues one work order per input, all or none, in one transaction: a blueprint's, or an ad-hoc command
   * (`command`, run as the one task ADHOC_TASK through the same claim, sandbox and log masking as any task).
   * Each queues behind its machine's running job. @throws TaktError not_found / invalid (a blueprint's path
   * is `/<index>/blueprint` when more than one is given), or adhocCommand's errors at `/command/…`; then
   * nothing is queued.
   */
  async createWorkOrders(inputs: WorkOrderInput[], author: string): Promise<WorkOrder[]> {
    await this.content.fresh();
    const made = await this.newWorkOrders(inputs);
    await this.store.transact((tx) => this.insertWorkOrders(tx, made, inputs, author));
    return made;
  }

  /** The work orders `createWorkOrders` would queue, checked (machines read through `reads`: a transaction's, inside one), not yet written. @throws as createWorkOrders. */
  newWorkOrders(inputs: WorkOrderInput[], reads: Reads = this.store): Promise<WorkOrder[]> {
    return newWorkOrders(this.workOrderContext, inputs, reads);
  }

  /** Writes work orders made by `newWorkOrders` inside the caller's transaction (their machines re-checked there). */
  insertWorkOrders(tx: Tx, made: WorkOrder[], inputs: Array<Pick<WorkOrderInput, 'machine'>>, author: string): Promise<void> {
    return insertWorkOrders(tx, made, inputs, author);
  }

  /** workorders.ts cancelWorkOrder. */
  cancelWorkOrder(id: string, author: string): Promise<WorkOrder> {
    return cancelWorkOrder(this.workOrderContext, id, author);
  }

  /** workorders.ts resumeWorkOrder: continues a failed or cancelled work order from the task it stopped on. */
  resumeWorkOrder(id: string, author: string): Promise<WorkOrder> {
    return resumeWorkOrder(this.workOrderContext, id, author);
  }

  private get workOrderContext(): WorkOrderContext {
    return { store: this.store, content: this.content, run: this.run, checkParams: (content, current, patch) => checkParams(this.sealer, content, current, patch) };
  }

  // ---- agent protocol ------------------------------------------------------------------------------

  /**
   * Long-poll for the machine's next job (claim.ts): answers at once when there is one, else waits up to
   * `waitMs`. `lastJob`: the id of the last job the claiming agent received, when it says (null: none since
   * it started). `bootenv`: the bootenv the agent's machine booted, when it says (ClaimRequest.bootenv).
   */
  async claim(machineId: string, waitMs: number, signal?: AbortSignal, lastJob?: string | null, bootenv?: string): Promise<ClaimResponse> {
    return claim(this.run, machineId, waitMs, signal, lastJob, bootenv);
  }

  /**
   * Ends a running job with its agent's report; with `claim`, answers the machine's next job from the same
   * transaction (jobs.ts complete).
   */
  async complete(jobId: string, caller: string | null, request: CompleteRequest): Promise<CompleteResponse> {
    return complete(this.run, jobId, caller, request);
  }

  /** Renews a running job's lease; `waitMs` > 0 holds the answer until the job ends or that long passes (jobs.ts). */
  async heartbeat(jobId: string, caller: string | null, waitMs = 0, signal?: AbortSignal): Promise<HeartbeatResponse> {
    return heartbeat(this.run, jobId, caller, waitMs, signal);
  }

  /** Waits up to `waitMs` for a running job to end: true when it has ended or is gone (jobs.ts). */
  async jobEnded(jobId: string, machineId: string, waitMs: number, signal?: AbortSignal): Promise<boolean> {
    return jobEnded(this.run, jobId, machineId, waitMs, signal);
  }

  /** Stores one log chunk of a running job, within its bound; `cut`: the log is full (jobs.ts). */
  async appendLog(jobId: string, caller: string | null, chunk: LogRequest): Promise<{ cut: boolean }> {
    return appendLog(this.run, jobId, caller, chunk);
  }

  /** Marks running jobs whose agent has gone quiet as lost; answers how many leases had expired (jobs.ts). */
  async sweepLeases(): Promise<number> {
    return sweepLeases(this.run);
  }

  // ---- agentless machines (the SSH transport) -----------------------------------------------------

  /**
   * What the SSH transport observed about a machine, applied in one transaction:
   * - `pin`: the host key seen on first contact, pinned while none is (recorded in history, author `ssh`);
   * - `offered`: a key other than the pinned one, kept for an operator to accept; with `stop`, a running
   *   machine stops with that reason (any other keeps its state and gets the reason);
   * - `note`: a transport note in a running machine's reason, replacing `note.from` only (so it never
   *   overwrites a reason set by anything else), e.g. "cannot reach root@10.0.0.5:22: …".
   * Returns the machine after, or null when it is gone or not an SSH machine.
   */
  async sshObserved(machineId: string, o: { pin?: HostKey; offered?: HostKey; stop?: string; note?: { from: string | null; to: string | null } }): Promise<Machine | null> {
    return this.store.transact(async (tx) => {
      const m = await tx.lockMachine(machineId);
      if (!m?.ssh) return null;
      const next: Machine = { ...m, ssh: { ...m.ssh } };
      if (o.pin && !m.ssh.hostKey) next.ssh!.hostKey = o.pin;
      if (o.offered) next.ssh!.offeredHostKey = o.offered;
      if (o.stop !== undefined) {
        if (m.state === 'running') next.state = 'stopped';
        next.reason = o.stop;
      } else if (o.note && m.state === 'running' && m.reason === o.note.from) {
        next.reason = o.note.to;
      }
      if (canonicalJson(next) === canonicalJson(m)) return m;
      next.updatedAt = new Date().toISOString();
      if (next.ssh!.hostKey !== m.ssh.hostKey) await tx.change('ssh', `machines/${m.id}`, 'update', desiredView(m), desiredView(next));
      await saveMachine(tx, next);
      return next;
    });
  }

  /** Ends a running job as lost, with `why` (for transports that run jobs themselves, SSH; jobs.ts). */
  async loseJob(jobId: string, why: string): Promise<void> {
    return loseJob(this.run, jobId, why);
  }

  // ---- classification -------------------------------------------------------------------------------

  /**
   * Classifies a machine by its facts (engine/classify.ts): the first matching rule of the endpoint's
   * classifiers gives it profiles (added after its own), an environment, a pipeline and params (those it
   * has no value for), written through the one commit path (history records the change, authored
   * `author`) with the provenance on `Machine.classification`. A pipeline under way is not replaced
   * unless `force` (assertReplaceable). No match changes nothing and says why the nearest rules failed.
   * `dryRun`: every check, nothing written.
   * @throws TaktError not_found (no such machine), conflict (no facts yet; a pipeline under way), and what
   *   updateMachine refuses (environment not run by the pipeline, required params without a value, …).
   */
  async classifyMachine(idOrName: string, opts: { dryRun?: boolean; force?: boolean } = {}, author = 'classify'): Promise<ClassifyOutcome> {
    const m = await this.findMachine(idOrName);
    if (!m.facts) {
      throw new TaktError('conflict', `machine '${m.name}' has reported no facts yet, so it cannot be classified; its agent reports its inventory when it registers (\`takt machines get ${m.name}\` shows the facts)`);
    }
    const content = this.content.current;
    const result = classify(m.facts, orderedRules(content, (layer) => this.content.pinned.get(layer)?.version ?? null));
    const dryRun = opts.dryRun === true;
    if (!result.rule) return { machine: m.name, dryRun, rule: null, reasons: result.reasons, gave: null, after: publicMachine(m) };
    const { patch, gave } = classificationChange(m, result.def);
    if (patch.pipeline) assertReplaceable(m, result.rule, patch.pipeline, opts.force === true);
    const out = (after: Machine): ClassifyOutcome => ({ machine: m.name, dryRun, rule: result.rule, reasons: result.reasons, gave, after: publicMachine(after) });
    // Every refusal at once, before anything is written (the same checks updateMachineIn makes).
    const problems = await this.updateProblems(m, patch, content);
    if (problems.length > 0) {
      const first = problems[0]!;
      throw new TaktError(first.code, `rule ${result.rule.classifier}/${result.rule.name} cannot be applied to '${m.name}': ${problems.map((p) => p.message).join('; ')}`, { ...(first.path ? { path: first.path } : {}), details: { problems: problems.map((p) => ({ code: p.code, message: p.message, path: p.path })) } });
    }
    if (dryRun) return out(m);
    const classification: MachineClassification = { pack: result.rule.pack, version: result.rule.version, classifier: result.rule.classifier, rule: result.rule.name, reasons: result.reasons, gave, at: new Date().toISOString(), by: author };
    const after = await this.store.transact(async (tx) => {
      const now = await lockedMachine(tx, m.id);
      // Checked again under the lock: the machine may have started work since.
      if (patch.pipeline) assertReplaceable(now, result.rule, patch.pipeline, opts.force === true);
      return this.updateMachineIn(tx, m.id, { ...patch, classification }, author, content);
    });
    return out(after);
  }

  // ---- previews ------------------------------------------------------------------------------------

  /**
   * What the machine would run, exactly as the engine would: its open work orders first, then what is
   * left of its pipeline by identity (the tasks that have not succeeded in this pass, in pipeline order),
   * or, when done, what a restart would run. A resume the engine would refuse is shown as refused.
   * Params an earlier task promises as outputs are listed with the task that sets them.
   */
  async plan(idOrName: string): Promise<Plan> {
    const m = await this.findMachine(idOrName);
    const content = this.content.current;
    const workOrders: Plan['workOrders'] = [];
    for (const wo of await this.store.listWorkOrders({ machineId: m.id })) {
      if (wo.state !== 'queued' && wo.state !== 'running') continue;
      const bp = content.objects.blueprints.get(wo.blueprint)?.def;
      if (!bp) continue;
      const ctx = { workOrder: { id: wo.id, params: wo.params }, blueprint: { name: bp.name, params: bp.params } };
      const prepared = remainingSteps(blueprintShape(bp), woPassed(wo, bp)).map((s) => ({ stage: null, task: s.task, prepared: prepareTask(content, this.sealer, m, s.task, ctx) }));
      workOrders.push({ id: wo.id, blueprint: bp.name, steps: withPromises(content, prepared) });
    }
    const base = { machine: m.name, pipeline: m.pipeline, state: m.state, workOrders, refused: null, classification: m.classification ?? null };
    const shape = m.pipeline ? this.shapeOf(content, m.pipeline) : null;
    if (!m.pipeline || !shape) return { ...base, from: 'continue', steps: [] };
    if (m.state === 'done') return { ...base, from: 'restart', steps: withPromises(content, pipelineSteps(content, this.sealer, m, m.pipeline, [])) };
    // A stopped (or paused) machine continues only through a resume, which checks the content change strictly.
    const at = locate(shape, m, m.state === 'stopped' || m.state === 'idle' || m.state === 'paused');
    if (at.kind === 'refused') {
      const v = await this.refusalOf(m, at);
      return { ...base, from: 'refused', refused: { message: v.message, change: at.change, tasks: at.tasks }, steps: [] };
    }
    return { ...base, from: 'continue', steps: withPromises(content, pipelineSteps(content, this.sealer, m, m.pipeline, m.passed)) };
  }



  /** Refuses to start a pipeline on a machine while any required param has no value, listing all of them. */
  private assertStartable(m: Machine, pipeline: string, content: ContentSet = this.content.current) {
    const missing = withPromises(content, pipelineSteps(content, this.sealer, m, pipeline, [])).filter((s) => s.missing.length > 0);
    if (missing.length === 0) return;
    const list = missing.map((s) => `${s.stage}/${s.task}: ${s.missing.join(', ')}`).join('; ');
    throw new TaktError('invalid', `pipeline '${pipeline}' cannot start on '${m.name}': required params have no value — ${list}. Set them on the machine, a profile, the stage or pipeline, give them defaults, or have an earlier task promise them as outputs`, {
      path: '/pipeline',
      details: { missing: missing.map((s) => ({ stage: s.stage, task: s.task, params: s.missing })) },
    });
  }

  /** The exact script `task` would get on the machine, in the context of its pipeline when it is part of it. */
  async render(idOrName: string, task: string): Promise<PreparedTask> {
    const m = await this.findMachine(idOrName);
    const content = this.content.current;
    if (!content.objects.tasks.has(task)) throw new TaktError('not_found', `task '${task}' not found`);
    const pipeline = m.pipeline ? content.objects.pipelines.get(m.pipeline)?.def : undefined;
    const stageName = pipeline?.stages.find((s) => content.objects.stages.get(s)?.def.tasks.includes(task));
    const stage = stageName ? content.objects.stages.get(stageName)?.def : undefined;
    return prepareTask(content, this.sealer, m, task, {
      stage: stage ? { name: stage.name, params: stage.params } : undefined,
      pipeline: pipeline ? { name: pipeline.name, params: pipeline.params } : undefined,
    });
  }

  // ---- helpers -------------------------------------------------------------------------------------

  /** The pipeline's stages and their tasks in `content`, by name; null when it has no such pipeline. */
  shapeOf(content: ContentSet, pipeline: string): PipelineShape | null {
    return pipelineShapeOf(content, pipeline);
  }

  private log(level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) {
    this.opts.log?.(level, msg, fields);
  }
}

/**
 * Whether pipeline `name`'s first stage needs the `discovery` bootenv, i.e. the pipeline deploys the
 * machine's disk and must not start on the OS it overwrites: its first stage names bootenv `discovery`,
 * or names none and a later stage needs `local` (the disk: the pipeline boots it only after the first
 * stage, as content/image-deploy's `image-write` → `image-installed`). False for an unknown pipeline.
 */
export function startsInDiscovery(content: ContentSet, name: string): boolean {
  const stages = content.objects.pipelines.get(name)?.def.stages ?? [];
  const bootenvs = stages.map((s) => content.objects.stages.get(s)?.def.bootenv);
  if (bootenvs.length === 0) return false;
  if (bootenvs[0] === DISCOVERY_BOOTENV) return true;
  return bootenvs[0] === undefined && bootenvs.slice(1).includes(LOCAL_BOOTENV);
}

/** The place a restore puts a machine at when it changes its pipeline: never without one (it would start work). */
function restoredPlace(restore: RestoreWrite, machine: string): RestoredPlace {
  if (!restore.place) throw new Error(`a restore changed the pipeline of machine '${machine}' without deciding its place`);
  return restore.place;
}


/** The patch that makes a machine's desired fields equal `target` (params absent from it are removed). */
export function patchTowards(current: Machine, target: Pick<Machine, 'name' | 'environment' | 'pipeline' | 'profiles' | 'params'> & { labels?: Machine['labels']; boot?: Machine['boot']; powerConfig?: Machine['powerConfig'] }): MachinePatch {
  const same = (a: unknown, b: unknown) => canonicalJson(a) === canonicalJson(b);
  const patch: MachinePatch = {};
  if (current.name !== target.name) patch.name = target.name;
  if (current.environment !== target.environment) patch.environment = target.environment;
  if (current.pipeline !== target.pipeline) patch.pipeline = target.pipeline;
  if (!same(current.profiles, target.profiles)) patch.profiles = target.profiles;
  // Entries written before labels existed have none: they mean "no labels".
  const labels: Record<string, string | null> = {};
  const want = target.labels ?? {};
  for (const k of new Set([...Object.keys(current.labels), ...Object.keys(want)])) {
    if (current.labels[k] !== want[k]) labels[k] = want[k] ?? null;
  }
  if (Object.keys(labels).length) patch.labels = labels;
  const params: Record<string, unknown> = {};
  for (const k of new Set([...Object.keys(current.params), ...Object.keys(target.params)])) {
    if (!same(current.params[k], target.params[k])) params[k] = target.params[k] ?? null;
  }
  if (Object.keys(params).length) patch.params = params;
  // Boot settings are set or changed, never removed by a restore: a machine keeps the MACs it boots as.
  // A reservation (boot.ip) absent from the target is freed: the patch names it as null.
  if (target.boot && !same(current.boot, target.boot)) patch.boot = { ...target.boot, ip: target.boot.ip ?? null };
  // A power configuration is desired state like the rest: restored, and removed when the target has none.
  if (!same(current.powerConfig ?? null, target.powerConfig ?? null)) patch.powerConfig = target.powerConfig ?? null;
  return patch;
}

/** A new secret for machine `id`: `tkm.<id>.<192 random bits>` (see machineIdFromToken). Only its SHA-256 is stored. */
export function newMachineToken(id: string): string {
  return `tkm.${id}.${randomBytes(24).toString('base64url')}`;
}
