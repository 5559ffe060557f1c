/**
 * Claims: an agent asks for work, and this is what it gets. `claim` is the agent's long-poll (the API's
 * POST /agent/claim): it looks in one transaction (`claimIn`, which a completion also calls to hand over the
 * next job with its answer), and sleeps on the machine's wake-ups (wake.ts) until there is something or the
 * poll's bound passes. Inside the transaction the machine's running job is first dealt with (handed back
 * when its claim answer never reached the agent, else abandoned), then `nextWork` decides what runs next:
 * queued work orders at task boundaries, then the pipeline by identity, through a stage's gate
 * (preconditions, approval) and its boot environment (a reboot when the machine runs in another one).
 * A task with nothing to do (noop) or that cannot be rendered ends at once through settle (complete.ts)
 * and the claim looks again; the first job that can run is inserted, its log opened, and handed over.
 * Plain functions over an explicit context (ClaimContext), as complete.ts is.
 */
import { DISCOVERY_BOOTENV } from '../model/boot.js';
import type { StageDef } from '../model/content.js';
import { checkExpectations } from '../model/expect.js';
import { hashObject } from '../model/hash.js';
import { ADHOC_TASK, type Job, type Machine, type WorkOrder } from '../model/machine.js';
import type { ClaimedJob, ClaimResponse } from '../model/protocol.js';
import { paramLayers, resolveParam } from '../render/params.js';
import type { Store, Tx } from '../store/store.js';
import { prepareCommand } from './adhoc.js';
import { finishWorkOrder, lockedMachine, saveMachine, settle, woPassed, type EndContext } from './complete.js';
import type { EngineOptions } from './engine.js';
import { newId } from './ids.js';
import { adhocSecrets } from './job-secrets.js';
import type { Liveness } from './liveness.js';
import { Masker, secretTexts } from './logmask.js';
import { prepareTask, secretsOf, type PreparedTask } from './prepare.js';
import { blueprintShape, locate, pipelineOrder, type JobOutcome, type PipelineShape } from './transitions.js';
import { desiredView, publicJob, publicMachine } from './views.js';
import type { Wakeups } from './wake.js';

/**
 * Per machine: the bootenv its agent last said it booted (ClaimRequest.bootenv), and how many reboots it
 * was given because it ran in another bootenv than its stage needs. In memory: after an endpoint restart
 * the agent's next claim says it again. The engine forgets a machine's entry when the machine is deleted.
 */
export type RunningEnvs = Map<string, { bootenv: string; mismatchReboots: number }>;

/** What a claim needs of the engine: what ending a job needs (a claim may end one), and the rest below. */
export interface ClaimContext extends EndContext {
  readonly store: Store;
  /** `leaseMs`: a new job's lease; `log`: the engine's logger; `power`: as EndContext. */
  readonly opts: Pick<EngineOptions, 'power' | 'leaseMs' | 'log'>;
  /** Long-poll waiters per machine (wake.ts). */
  readonly wakeups: Wakeups;
  /** An open claim long-poll is an agent in touch (liveness.ts). */
  readonly liveness: Liveness;
  /**
   * Machines whose power driver is at work for a task (takt-power) between the completion's commit and
   * the driver's answer: no job of any kind (work orders included) starts on them meanwhile.
   */
  readonly powering: Set<string>;
  /** The bootenv each machine's agent last said it booted. */
  readonly running: RunningEnvs;
  /** Whether the endpoint has stopped: waiting long-polls answer at once instead of waiting again. */
  stopped(): boolean;
}

/** The lease of a job claimed or renewed now: `leaseMs` milliseconds from now, as ISO-8601 UTC. */
export function leaseUntil(leaseMs: number): string {
  return new Date(Date.now() + leaseMs).toISOString();
}

/** What nextWork found for the machine: a work order's task, a pipeline task, or a reboot first. */
type Work =
  | { kind: 'workorder'; wo: WorkOrder; task: string; blueprint: string; taskCount: number; ctx: Parameters<typeof prepareTask>[4] }
  | { kind: 'pipeline'; shape: PipelineShape; stage: string; task: string; ctx: Parameters<typeof prepareTask>[4] }
  /** The stage needs another boot environment: the machine was switched to it and must reboot first. */
  | { kind: 'reboot'; bootenv: string };

/** Bounds one claim's loop over tasks that end at once (noop, unrenderable) before a job runs. */
const MAX_STEPS_PER_CLAIM = 500;

/**
 * Long-poll for the machine's next job: answers at once when there is one, else waits up to `waitMs`.
 * `lastJob`: the id of the last job the claiming agent received, when it says (null: none since it
 * started). A running job that is not that one never reached the agent (the answer to a claim it had
 * given up on), so it is handed back rather than called abandoned. `bootenv`: the bootenv the agent's
 * machine booted, when it says (ClaimRequest.bootenv): a stage that needs another one is not started.
 */
export async function claim(c: ClaimContext, machineId: string, waitMs: number, signal?: AbortSignal, lastJob?: string | null, bootenv?: string): Promise<ClaimResponse> {
  if (bootenv !== undefined) {
    const was = c.running.get(machineId);
    c.running.set(machineId, { bootenv, mismatchReboots: was?.mismatchReboots ?? 0 });
  }
  // An open long-poll is an agent in touch, however long it waits.
  const closePoll = c.liveness.pollOpened(machineId);
  try {
    return await claimLoop(c, machineId, waitMs, signal, lastJob);
  } finally {
    closePoll();
  }
}

/** Looks again each time the machine is woken, until a job, the deadline, an abort, power off or stop. */
async function claimLoop(c: ClaimContext, machineId: string, waitMs: number, signal?: AbortSignal, lastJob?: string | null): Promise<ClaimResponse> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const gen = c.wakeups.generation(machineId);
    // The content as of every event heard (a pack installed through another replica is reloaded first).
    await c.content.fresh();
    // A caller that has gone (its agent's client gave up) takes no job: nobody would run it, and the
    // agent's next claim would find it "running" and call it lost.
    const r = await claimOnce(c, machineId, signal, lastJob);
    const left = deadline - Date.now();
    // A job, or an action for the agent (reboot into a stage's bootenv), is answered at once: looking
    // again would count the agent's unchanged bootenv as a failed reboot it was never told to do.
    if (r.job || r.action || left <= 0 || signal?.aborted || r.machine.power === 'off') return r;
    if (c.stopped()) return r;
    if (c.wakeups.generation(machineId) === gen) await c.wakeups.waitForWake(machineId, Math.min(left, 5000), signal);
    if (signal?.aborted || c.stopped()) return r;
  }
}

/**
 * One look, in its own transaction with the machine locked; a caller that has gone takes nothing.
 * Row-scoped (TransactOptions): the machine is locked before anything of it is read, and what a claim
 * writes (the machine, its jobs, its work orders) is written only under that lock by every row-scoped
 * transaction; store-scoped writers never run beside it.
 */
async function claimOnce(c: ClaimContext, machineId: string, signal?: AbortSignal, lastJob?: string | null): Promise<ClaimResponse> {
  return c.store.transact(
    async (tx) => {
      const m = await lockedMachine(tx, machineId);
      if (signal?.aborted) return { job: null, machine: { state: m.state, reason: m.reason, power: m.power } };
      return claimIn(c, tx, m, lastJob);
    },
    { scope: 'rows', lock: machineId },
  );
}

/**
 * A claim inside the caller's transaction: the machine's next job, or none. `unsaved`: the machine
 * comes with changes not yet written (a completion's), written here once with whatever the claim adds.
 */
export async function claimIn(c: ClaimContext, tx: Tx, machine: Machine, lastJob?: string | null, unsaved = false): Promise<ClaimResponse> {
  let m = machine;
  const pending = { machine: unsaved };
  if (m.currentJob) {
    const running = await tx.getJob(m.currentJob);
    if (running?.state === 'running') {
      if (lastJob !== undefined && lastJob !== running.id) {
        m = await handBack(c, tx, m, running);
        pending.machine = true;
      } else m = (await settle(c, tx, m, running, { kind: 'abandoned' })).machine;
    } else m = { ...m, currentJob: null };
  }
  // A rollout holding the machine (--busy wait) reassigns it before its next job: none starts meanwhile.
  const held = m.power === 'on' && (c.powering.has(m.id) || (await tx.getHold(m.id)) !== undefined);
  for (let step = 0; step < MAX_STEPS_PER_CLAIM && m.power === 'on' && !held; step++) {
    const work = await nextWork(c, tx, m, pending);
    if (!work) break;
    if (work.kind === 'reboot') return { job: null, action: 'reboot', machine: { state: m.state, reason: m.reason, power: m.power } };
    const prepared = work.kind === 'workorder' && work.wo.command ? prepareCommand(work.wo.command) : prepareTask(c.content.current, c.sealer, m, work.task, work.ctx);
    const job = newJob(c, m, work, prepared);
    if (prepared.noop !== null || prepared.error !== null) {
      await tx.insertJob(job);
      tx.emit(`jobs.create.${job.id}`, publicJob(job));
      const outcome: JobOutcome = prepared.noop !== null ? { kind: 'noop', reason: prepared.noop } : { kind: 'unrenderable', message: prepared.error! };
      m = (await settle(c, tx, { ...m, currentJob: job.id }, job, outcome)).machine;
      pending.machine = false;
      continue;
    }
    await tx.insertJob(job);
    tx.emit(`jobs.create.${job.id}`, publicJob(job));
    // An ad-hoc command can print anything on the machine: its log masks all the machine's secrets.
    c.logs.begin(job.id, work.kind === 'workorder' && work.wo.command ? await adhocSecrets(c, tx, m) : secretsOf(prepared));
    m = { ...m, currentJob: job.id, updatedAt: new Date().toISOString() };
    await saveMachine(tx, m);
    pending.machine = false;
    const claimed: ClaimedJob = {
      id: job.id,
      task: job.task,
      script: prepared.script!,
      params: prepared.agentParams,
      timeoutMs: prepared.timeoutMs,
      leaseMs: c.opts.leaseMs,
      outputs: Object.keys(c.content.current.objects.tasks.get(job.task)?.def.outputs ?? {}),
    };
    return { job: claimed, machine: { state: m.state, reason: m.reason, power: m.power } };
  }
  if (m.currentJob || pending.machine) {
    m = { ...m, currentJob: null };
    await tx.updateMachine(m);
    if (pending.machine) tx.emit(`machines.update.${m.id}`, publicMachine(m));
  }
  return { job: null, machine: { state: m.state, reason: m.reason, power: m.power } };
}

/**
 * A job whose claim answer never reached its agent: cancelled, and the machine stays at that task so
 * this claim runs it. Nothing ran, so this is not a retry.
 */
async function handBack(c: ClaimContext, tx: Tx, m: Machine, job: Job): Promise<Machine> {
  const s = await settle(c, tx, m, job, { kind: 'handed-back' }, {}, undefined, true);
  c.opts.log?.('warn', 'claim answer not delivered: job handed back', { job: job.id, machine: m.name, task: job.task });
  return s.machine;
}

/** What the machine should run next: queued work orders first (at task boundaries), then its pipeline. */
async function nextWork(c: ClaimContext, tx: Tx, m: Machine, pending?: { machine: boolean }): Promise<Work | null> {
  const content = c.content.current;
  const wo = await tx.nextWorkOrder(m.id);
  if (wo?.command) {
    // An ad-hoc command: one task, no blueprint, no params.
    if (wo.state === 'queued') await tx.updateWorkOrder({ ...wo, state: 'running' });
    return { kind: 'workorder', wo: { ...wo, state: 'running' }, task: ADHOC_TASK, blueprint: ADHOC_TASK, taskCount: 1, ctx: { workOrder: { id: wo.id, params: {} } } };
  }
  if (wo) {
    const bp = content.objects.blueprints.get(wo.blueprint)?.def;
    // By identity, as a running machine follows its pipeline (locate, not strict): the first step of the
    // blueprint as it is now that has not succeeded for this work order — never an index into it.
    const at = bp ? locate(blueprintShape(bp), { stage: null, task: null, passed: woPassed(wo, bp) }, false) : null;
    if (!bp || !at || at.kind !== 'at') {
      await finishWorkOrder(tx, wo, bp ? 'succeeded' : 'failed', bp ? null : `blueprint '${wo.blueprint}' no longer exists`);
      return nextWork(c, tx, m, pending);
    }
    const task = at.step.task;
    const running: WorkOrder = { ...wo, state: 'running', taskIndex: pipelineOrder(blueprintShape(bp)).findIndex((s) => s.key === at.step.key), passed: woPassed(wo, bp) };
    if (wo.state === 'queued' || running.taskIndex !== wo.taskIndex || !wo.passed) await tx.updateWorkOrder(running);
    return {
      kind: 'workorder',
      wo: running,
      task,
      blueprint: bp.name,
      taskCount: bp.tasks.length,
      ctx: { workOrder: { id: wo.id, params: wo.params }, blueprint: { name: bp.name, params: bp.params } },
    };
  }
  if (m.state !== 'running' || !m.pipeline) return null;
  const shape = c.shapeOf(content, m.pipeline);
  // By identity: the first task of the pipeline as it is now that has not succeeded in this pass (not
  // strict: a running machine follows the content in use, see transitions.ts locate).
  const at = shape ? locate(shape, m, false) : null;
  if (!shape && (await tx.listContent()).some((r) => r.kind === 'pipelines' && r.name === m.pipeline)) {
    // The store has the pipeline, this process's content does not yet: another replica wrote it and its
    // event is on its way (the reload then wakes every claim). Not a vanished pipeline: nothing to stop.
    return null;
  }
  if (!shape || !at || at.kind !== 'at') {
    // Every task has succeeded: done. A pipeline that vanished from the content stops the line instead.
    const done: Machine = shape
      ? { ...m, state: 'done', reason: null, stage: null, task: null }
      : { ...m, state: 'stopped', reason: `pipeline '${m.pipeline}' no longer exists in the installed content` };
    await saveMachine(tx, done);
    if (pending) pending.machine = false;
    Object.assign(m, done);
    return null;
  }
  const step = at.step;
  if (step.stage !== m.stage || step.task !== m.task) Object.assign(m, { stage: step.stage, task: step.task });
  const pipeline = content.objects.pipelines.get(m.pipeline)!.def;
  const stage = content.objects.stages.get(step.stage)?.def;
  if (stage && at.entering) {
    const gate = stageGate(c, m, stage, step.stageKey, { name: pipeline.name, params: pipeline.params });
    if (gate) {
      const held: Machine = { ...m, ...gate, updatedAt: new Date().toISOString() };
      await saveMachine(tx, held);
      if (pending) pending.machine = false;
      Object.assign(m, held);
      return null;
    }
  }
  // A stage that names a bootenv runs in it (issue #13): a network-booted machine booted into another
  // one is switched, and reboots into it before the stage's task runs. Desired state: in history, by the pipeline.
  // An agent that runs in that bootenv already is not rebooted: an image deploy's write stage power-cycles
  // the machine into its disk itself (takt-power), and the deployed OS's agent (`local`) claims the next
  // stage there; a reboot would lose it (its join block is used, and the OS lives in memory).
  if (stage?.bootenv && m.boot && m.boot.bootenv !== stage.bootenv) {
    const switched: Machine = { ...m, boot: { ...m.boot, bootenv: stage.bootenv }, updatedAt: new Date().toISOString() };
    await tx.updateMachine(switched);
    await tx.change(`pipeline:${pipeline.name}`, `machines/${m.id}`, 'update', desiredView(m), desiredView(switched));
    tx.emit(`machines.update.${m.id}`, publicMachine(switched));
    if (pending) pending.machine = false;
    const there = c.running.get(m.id)?.bootenv === stage.bootenv;
    c.opts.log?.('info', `${m.name}: stage '${step.stage}' needs bootenv '${stage.bootenv}' (was '${m.boot.bootenv}'): switched, ${there ? 'its agent runs there already' : 'rebooting'}`, { machine: m.name });
    Object.assign(m, switched);
    if (!there) return { kind: 'reboot', bootenv: stage.bootenv };
  }
  // The machine is switched, but its agent says it booted another bootenv (it came back from its disk,
  // or its firmware did not boot the script): the stage's tasks must not run there. One more reboot
  // (the claim route puts network boot first through the power driver); then a stop with the reason,
  // rather than rebooting it for ever. A machine set to boot discovery (a rebuild, or an operator's
  // --bootenv discovery) likewise runs nothing outside it: a deploy's first stage overwrites the disk.
  const wanted = stage?.bootenv ?? (m.boot?.bootenv === DISCOVERY_BOOTENV ? DISCOVERY_BOOTENV : undefined);
  const running = wanted && m.boot ? c.running.get(m.id) : undefined;
  if (running && wanted && running.bootenv !== wanted) {
    const why = stage?.bootenv ? `stage '${step.stage}' needs bootenv '${wanted}'` : `${m.name} is set to boot '${wanted}' (a rebuild)`;
    if (running.mismatchReboots < 1) {
      running.mismatchReboots++;
      c.opts.log?.('warn', `${m.name}: ${why} but its agent runs in '${running.bootenv}': rebooting it${stage?.bootenv ? ' again' : ''}`, { machine: m.name });
      return { kind: 'reboot', bootenv: wanted };
    }
    const reason =
      `${why}, but the agent of ${m.name} still runs in '${running.bootenv}' after takt rebooted it into '${wanted}': ` +
      `its firmware does not boot takt's script for it. Check that network boot is first in its boot order (takt machines power ${m.name} cycle --next-boot pxe), then resume it`;
    const stopped: Machine = { ...m, state: 'stopped', reason, updatedAt: new Date().toISOString() };
    await saveMachine(tx, stopped);
    if (pending) pending.machine = false;
    c.opts.log?.('warn', `${m.name}: ${reason}`, { machine: m.name });
    Object.assign(m, stopped);
    running.mismatchReboots = 0;
    return null;
  }
  if (running) running.mismatchReboots = 0;
  return {
    kind: 'pipeline',
    shape,
    stage: step.stage,
    task: step.task,
    ctx: { stage: { name: step.stage, params: stage?.params }, pipeline: { name: pipeline.name, params: pipeline.params } },
  };
}

/**
 * Entering a stage: its preconditions must hold (else the line stops), then an approval it requires must
 * have been given (else the machine waits). Null when the machine may go on.
 */
function stageGate(c: ClaimContext, m: Machine, stage: StageDef, stageKey: string, pipeline: { name: string; params?: Record<string, unknown> }): Pick<Machine, 'state' | 'reason'> | null {
  if (stage.expect?.length) {
    const content = c.content.current;
    const layers = paramLayers(content, { machine: m, stage: { name: stage.name, params: stage.params }, pipeline });
    const values: Record<string, unknown> = {};
    const secure: unknown[] = [];
    for (const r of stage.expect) {
      const p = resolveParam(content, layers, r.param);
      if (p) values[r.param] = c.sealer.open(p.value);
      if (p?.secure) secure.push(values[r.param]);
    }
    const broken = checkExpectations(stage.expect, values);
    // The machine's reason is shown everywhere: a broken rule names the param, never a secure value.
    if (broken) return { state: 'stopped', reason: `stage '${stage.name}' precondition: ${new Masker(secretTexts(secure)).mask(broken)}` };
  }
  if (stage.approval && m.approvedStage !== stageKey) {
    return { state: 'awaiting-approval', reason: `stage '${stage.name}' needs approval by ${stage.approval.role}: takt approvals approve ${m.name}` };
  }
  return null;
}

/** The job record for `work` as prepared (`p`): running, its lease starting now. */
function newJob(c: ClaimContext, m: Machine, work: Exclude<Work, { kind: 'reboot' }>, p: PreparedTask): Job {
  const entry = c.content.current.objects.tasks.get(work.task);
  return {
    id: newId('j'),
    machineId: m.id,
    kind: work.kind,
    workOrderId: work.kind === 'workorder' ? work.wo.id : null,
    pipeline: work.kind === 'pipeline' ? m.pipeline : null,
    stage: work.kind === 'pipeline' ? work.stage : null,
    task: work.task,
    variant: p.variant,
    state: 'running',
    exitCode: null,
    reason: null,
    script: p.displayScript ?? '',
    params: Object.fromEntries(p.params.map((u) => [u.name, { value: u.value, from: u.from }])),
    outputs: {},
    timeoutMs: p.timeoutMs,
    leaseExpiresAt: leaseUntil(c.opts.leaseMs),
    createdAt: new Date().toISOString(),
    finishedAt: null,
    pack: entry ? c.content.packRef(entry.layer) : null,
    taskSha256: entry ? contentHash(entry.def) : null,
    // Keyed by the endpoint: a bare hash of a script that holds a secret lets anyone guess the secret.
    scriptSha256: p.script !== null ? c.sealer.digest(p.script) : null,
  };
}

/** Content objects are immutable once loaded, so their hash is computed once per object. */
const hashes = new WeakMap<object, string>();
function contentHash(def: object): string {
  let h = hashes.get(def);
  if (!h) {
    h = hashObject(def);
    hashes.set(def, h);
  }
  return h;
}
