/**
 * The engine's state machine, as pure functions: given where a machine stands and what just happened,
 * decide where it goes. No I/O here, so every transition is tested by table (test/transitions.test.ts).
 */
import { decodeExit } from '../model/exitcodes.js';
import type { JobState, Machine, MachineState, WorkOrderState } from '../model/machine.js';
import type { AgentAction } from '../model/protocol.js';

export interface PipelineShape {
  name: string;
  stages: ReadonlyArray<{ name: string; tasks: readonly string[] }>;
  /** How messages name it; `pipeline '<name>'` when absent (a blueprint: see blueprintShape). */
  label?: string;
}

/** A blueprint as a one-stage pipeline (its stage named after it), so work orders share locate's identity rule. */
export function blueprintShape(bp: { name: string; tasks: readonly string[] }): PipelineShape {
  return { name: bp.name, stages: [{ name: bp.name, tasks: bp.tasks }], label: `blueprint '${bp.name}'` };
}

/** The machine fields a transition may change. */
export type MachineView = Pick<Machine, 'state' | 'reason' | 'stage' | 'task' | 'passed' | 'attempt' | 'power' | 'pipeline' | 'approvedStage'>;

/**
 * One task of a pipeline in run order, known by identity. `key` is `stage/task`; a stage or task that a
 * pipeline lists more than once gets `#n` on its later occurrences (`deploy#2/check`), so every step has
 * its own key. `stageKey` is the stage part of the key: what an approval is given for.
 */
export interface Step {
  stage: string;
  task: string;
  key: string;
  stageKey: string;
}

/** The pipeline's tasks in the order they run (empty stages contribute nothing). */
export function pipelineOrder(shape: PipelineShape): Step[] {
  const stageSeen = new Map<string, number>();
  const out: Step[] = [];
  for (const st of shape.stages) {
    const n = (stageSeen.get(st.name) ?? 0) + 1;
    stageSeen.set(st.name, n);
    const stageKey = n === 1 ? st.name : `${st.name}#${n}`;
    const taskSeen = new Map<string, number>();
    for (const task of st.tasks) {
      const k = (taskSeen.get(task) ?? 0) + 1;
      taskSeen.set(task, k);
      out.push({ stage: st.name, task, stageKey, key: `${stageKey}/${k === 1 ? task : `${task}#${k}`}` });
    }
  }
  return out;
}

/** The first step of `order` named like the machine's position that has not succeeded in this pass. */
function positionStep(order: readonly Step[], m: Pick<MachineView, 'stage' | 'task' | 'passed'>, passed: ReadonlySet<string>): Step | undefined {
  return order.find((s) => s.stage === m.stage && s.task === m.task && !passed.has(s.key));
}

/** Where a machine stands in a pipeline, as `locate` finds it. */
export type Located =
  | { kind: 'at'; step: Step; /** No task of this stage (occurrence) has succeeded in this pass: its gate applies. */ entering: boolean }
  | { kind: 'done' }
  | { kind: 'refused'; change: 'vanished' | 'reordered'; message: string; tasks: Array<{ stage: string; task: string }> };

const named = (s: { stage: string; task: string }, shape?: PipelineShape) => (shape?.label ? `task '${s.task}'` : `task '${s.task}' (stage '${s.stage}')`);

/**
 * Where the machine stands in `shape`, by identity: the first task in pipeline order that has not
 * succeeded in this pass (`passed`), or done when every task has. Tasks that succeeded and are no longer
 * in the pipeline are forgotten; tasks that are new run where they now are, even before tasks that ran.
 *
 * `strict` (a resume, or a plan of one): the task the machine stopped at is checked against the content
 * in use, and the resume refused when that is ambiguous:
 * - `vanished`: the task it stopped at is no longer in the pipeline (removed, renamed, or moved to another
 *   stage, which makes it a different task) — whatever made it stop was never fixed;
 * - `reordered`: a task that succeeded before it now comes after it — that success may rest on work the
 *   stopped task has not done yet.
 * Not strict (a running machine at a task boundary), the content in use is simply followed: it never
 * refuses.
 */
export function locate(shape: PipelineShape, m: Pick<MachineView, 'stage' | 'task' | 'passed'>, strict: boolean): Located {
  const order = pipelineOrder(shape);
  const passed = new Set(m.passed);
  if (strict && m.stage !== null && m.task !== null) {
    const index = new Map(order.map((s, i) => [s.key, i]));
    const at = positionStep(order, m, passed);
    if (!at) {
      const where = order.filter((s) => s.task === m.task && !passed.has(s.key)).map((s) => `stage '${s.stage}'`);
      const moved = where.length > 0 ? ` (a task of that name is now in ${where.join(', ')}, which is a different task)` : '';
      return {
        kind: 'refused',
        change: 'vanished',
        message: `${named({ stage: m.stage, task: m.task }, shape)}, where the ${shape.label ? 'work order' : 'machine'} stopped, is no longer in ${shape.label ?? `pipeline '${shape.name}'`}${moved}`,
        tasks: [{ stage: m.stage, task: m.task }],
      };
    }
    const atIndex = index.get(at.key)!;
    const later = m.passed.map((k) => index.get(k)).find((i): i is number => i !== undefined && i > atIndex);
    if (later !== undefined) {
      const before = order[later]!;
      return {
        kind: 'refused',
        change: 'reordered',
        message: `${named(before, shape)} succeeded before ${named(at, shape)}, where the ${shape.label ? 'work order' : 'machine'} stopped, but ${shape.label ?? `pipeline '${shape.name}'`} now runs it after`,
        tasks: [{ stage: before.stage, task: before.task }, { stage: at.stage, task: at.task }],
      };
    }
  }
  const step = order.find((s) => !passed.has(s.key));
  if (!step) return { kind: 'done' };
  return { kind: 'at', step, entering: !m.passed.some((k) => k.startsWith(`${step.stageKey}/`)) };
}

/**
 * The steps a machine would still run, in order, when `passed` have succeeded in this pass: what `plan`
 * shows, and (every task succeeding) exactly what the machine then runs, since each next task is the first
 * of these. Whether a resume is refused is `locate`'s to say.
 */
export function remainingSteps(shape: PipelineShape, passed: readonly string[]): Step[] {
  const done = new Set(passed);
  return pipelineOrder(shape).filter((s) => !done.has(s.key));
}

/** How a job ended, as reported by its agent or decided by the server. */
export type JobOutcome =
  | { kind: 'exit'; exitCode: number | null; timedOut?: boolean; error?: string; timeoutMs?: number }
  /** The script ran but what it left behind is wrong (a bad output value…). */
  | { kind: 'invalid'; exitCode: number | null; message: string }
  /**
   * No word about the job for a whole lease. `agent`: what the endpoint last heard from the machine at
   * all; `silent` when that was a lease or more ago (the network or the host, not the script). `why`:
   * what the transport found, when it knows more than "no word for the lease" (SSH: no trace on the host).
   */
  | { kind: 'lost'; leaseMs: number; agent?: { lastSeenAt: string | null; address: string | null; silent: boolean }; why?: string }
  /** The agent asked for new work while this job was still running: it lost track of it. */
  | { kind: 'abandoned' }
  /**
   * An operator ended the job (jobs cancel, machines pause --cancel, power off, restart, reassign, delete):
   * `by` who, `why` what they did or said. `hold`: the machine pauses on the job's task (position kept, a
   * resume re-runs it); otherwise its state is left to the caller (a restart or power-off decides it).
   */
  | { kind: 'cancelled'; by: string; why?: string; hold?: boolean }
  /** The claim that took this job was never answered: nothing ran; the machine stays on the task. */
  | { kind: 'handed-back' }
  | { kind: 'noop'; reason: string }
  | { kind: 'unrenderable'; message: string };

export interface JobVerdict {
  state: JobState;
  reason: string | null;
  /** Success with these contract flags. */
  stop: boolean;
  poweroff: boolean;
  reboot: boolean;
  incomplete: boolean;
}

/** Turns an outcome into the job's terminal state and a reason a person can act on. */
export function judgeJob(task: string, o: JobOutcome): JobVerdict {
  const flags = { stop: false, poweroff: false, reboot: false, incomplete: false };
  switch (o.kind) {
    case 'noop':
      return { state: 'succeeded', reason: `no-op: ${o.reason}`, ...flags };
    case 'unrenderable':
      return { state: 'failed', reason: `task '${task}' cannot be rendered: ${o.message}`, ...flags };
    case 'lost':
      return { state: 'lost', reason: lostReason(task, o), ...flags };
    case 'abandoned':
      return {
        state: 'lost',
        reason: `task '${task}' lost: the agent asked for new work while it was running (agent restarted without its state?); its result is unknown`,
        ...flags,
      };
    case 'cancelled':
      return { state: 'cancelled', reason: cancelledReason(o), ...flags };
    case 'handed-back':
      return { state: 'cancelled', reason: 'the claim that took this job was never answered (its agent had given up on it); the task ran on the next claim', ...flags };
    case 'invalid':
      return { state: 'failed', reason: `task '${task}' exited ${o.exitCode} but ${o.message}`, ...flags };
    case 'exit': {
      if (o.timedOut) {
        const after = o.timeoutMs !== undefined ? ` after ${Math.round(o.timeoutMs / 1000)}s` : '';
        return { state: 'failed', reason: `task '${task}' timed out${after} and was killed`, ...flags };
      }
      if (o.error) return { state: 'failed', reason: `task '${task}' failed: ${o.error}`, ...flags };
      const m = decodeExit(o.exitCode);
      if (!m.success) {
        const how = o.exitCode === null ? 'was killed by a signal' : `failed with exit code ${o.exitCode}`;
        return { state: 'failed', reason: `task '${task}' ${how}`, ...flags };
      }
      const { success: _s, ...contract } = m;
      return { state: 'succeeded', reason: null, ...contract };
    }
  }
}

/** `cancelled by <who>: <why>` (or without the why when none was given). */
export function cancelledReason(o: { by: string; why?: string }): string {
  return o.why ? `cancelled by ${o.by}: ${o.why}` : `cancelled by ${o.by}`;
}

/** Why a job was lost, in words that tell the network or host apart from the script. */
function lostReason(task: string, o: Extract<JobOutcome, { kind: 'lost' }>): string {
  const lease = `${Math.round(o.leaseMs / 1000)}s`;
  if (o.why) return `task '${task}' lost: ${o.why}; its result is unknown`;
  const a = o.agent;
  if (!a) return `task '${task}' lost: no word from the agent for ${lease} (agent gone or machine down); its result is unknown`;
  const from = a.address ? ` from ${a.address}` : '';
  if (a.lastSeenAt === null) return `task '${task}' lost: no word from the agent for ${lease}, and no agent has been heard from on this machine; its result is unknown`;
  if (a.silent) {
    return `task '${task}' lost: no word from the agent for ${lease}; it was last heard at ${a.lastSeenAt}${from} and nothing since (the network or the host, not the script); its result is unknown`;
  }
  return `task '${task}' lost: no word from the agent about it for ${lease}, though the agent was heard at ${a.lastSeenAt}${from} (it lost track of the job); its result is unknown`;
}

export interface PipelineDecision {
  job: { state: JobState; reason: string | null };
  machine: MachineView;
  action: AgentAction;
}

/**
 * A pipeline job ended (the job of the task at the machine's position). Failure stops the line on that
 * task (unless the task opted into retries and has some left); success records the task as succeeded in
 * this pass and moves to the first task that has not (see `locate`), honouring the exit-code contract's
 * stop (the machine is `paused`, not `stopped`: nothing failed), power-off, reboot and incomplete flags.
 * `retries`: how many times the task may be re-run after failing (its `retries`), so it runs at most
 * `retries + 1` times. An operator's cancel keeps the position: with `hold` the machine pauses there. A
 * machine an operator paused while the job ran (`paused` on entry) moves on past a success and stays
 * paused; a failure still stops it.
 */
export function afterPipelineJob(m: MachineView, shape: PipelineShape, task: string, outcome: JobOutcome, retries = 0): PipelineDecision {
  const v = judgeJob(task, outcome);
  const job = { state: v.state, reason: v.reason };
  if (outcome.kind === 'handed-back') return { job, machine: m, action: 'continue' };
  if (outcome.kind === 'cancelled') {
    const held = outcome.hold ? { state: 'paused' as const, reason: `${pausedReason(outcome.by, outcome.why)}; job of task '${task}' cancelled, resume re-runs it` } : {};
    return { job, machine: { ...m, ...held, attempt: 0 }, action: 'continue' };
  }
  if (v.state !== 'succeeded') {
    const runs = retries + 1;
    if (v.state === 'failed' && outcome.kind === 'exit' && m.attempt < retries) {
      return {
        job: { state: v.state, reason: `${v.reason} (attempt ${m.attempt + 1} of ${runs}; retrying)` },
        machine: { ...m, attempt: m.attempt + 1 },
        action: 'continue',
      };
    }
    // Only a task that opted into retries counts attempts; a lost job is never retried, so it says nothing.
    const reason = retries > 0 && v.state === 'failed' && outcome.kind === 'exit' ? `${v.reason} (attempt ${m.attempt + 1} of ${runs}; no retries left)` : v.reason;
    return { job: { ...job, reason }, machine: { ...m, state: 'stopped', reason, attempt: 0 }, action: 'continue' };
  }
  let passed = m.passed;
  if (!v.incomplete) {
    const order = pipelineOrder(shape);
    const here = positionStep(order, m, new Set(m.passed));
    // A task that left the pipeline while it ran is recorded by name: it matches no step, so it is forgotten.
    passed = [...m.passed, here?.key ?? `${m.stage ?? '?'}/${m.task ?? task}`];
  }
  const action: AgentAction = v.poweroff ? 'poweroff' : v.reboot ? 'reboot' : 'continue';
  const power = v.poweroff ? 'off' : m.power;
  // Not strict: a running machine follows the content in use; it is never refused here.
  const at = locate(shape, { stage: null, task: null, passed }, false);
  if (at.kind !== 'at') {
    return { job, machine: { ...m, state: 'done', reason: null, attempt: 0, power, passed, stage: null, task: null }, action };
  }
  // Paused by an operator while the job ran: the job's success moves the position on, the pause holds.
  const state: MachineState = v.stop || m.state === 'paused' ? 'paused' : 'running';
  const reason = v.stop ? `paused by task '${task}' (exit code 16); resume to continue` : state === 'paused' ? m.reason : null;
  return { job, machine: { ...m, stage: at.step.stage, task: at.step.task, passed, state, reason, attempt: 0, power }, action };
}

export interface WorkOrderDecision {
  job: { state: JobState; reason: string | null };
  workOrder: { state: WorkOrderState; taskIndex: number; reason: string | null };
  action: AgentAction;
  power: Machine['power'];
}

/** A work-order job ended: the work order moves on or fails; the machine's pipeline position is untouched. */
export function afterWorkOrderJob(
  wo: { taskIndex: number },
  taskCount: number,
  task: string,
  outcome: JobOutcome,
  power: Machine['power'],
): WorkOrderDecision {
  const v = judgeJob(task, outcome);
  const job = { state: v.state, reason: v.reason };
  // Nothing ran: the work order stays on the task, which the next claim runs.
  if (outcome.kind === 'handed-back') return { job, workOrder: { state: 'running', taskIndex: wo.taskIndex, reason: null }, action: 'continue', power };
  if (outcome.kind === 'cancelled') {
    return { job, workOrder: { state: 'cancelled', taskIndex: wo.taskIndex, reason: `its job (task '${task}') was ${v.reason}` }, action: 'continue', power };
  }
  if (v.state !== 'succeeded') {
    return { job, workOrder: { state: 'failed', taskIndex: wo.taskIndex, reason: v.reason }, action: 'continue', power };
  }
  const taskIndex = v.incomplete ? wo.taskIndex : wo.taskIndex + 1;
  const done = taskIndex >= taskCount;
  const action: AgentAction = v.poweroff ? 'poweroff' : v.reboot ? 'reboot' : 'continue';
  return {
    job,
    workOrder: { state: done ? 'succeeded' : 'running', taskIndex, reason: null },
    action,
    power: v.poweroff ? 'off' : power,
  };
}

export class TransitionError extends Error {}

/**
 * Operator: continue the pipeline where it stopped or was paused: the task it stopped on (or, after a
 * task's pause, the next one), then every task that has not succeeded in this pass, in the order of the
 * pipeline as it is now. `shape`: the machine's pipeline in the content in use; null when it no longer exists.
 * @throws TransitionError when the machine is not stopped, paused or idle, has no pipeline, or the content
 *   changed so that the resume is ambiguous (see `locate`); the message says what changed and what to do.
 */
export function resume(m: MachineView, shape: PipelineShape | null, machine = 'M'): MachineView {
  if (m.state !== 'stopped' && m.state !== 'idle' && m.state !== 'paused') {
    throw new TransitionError(`machine is ${m.state}; only a stopped, paused or idle machine can be resumed`);
  }
  if (!m.pipeline) throw new TransitionError('machine has no pipeline; assign one with `takt machines update M --pipeline P`');
  if (!shape) throw new TransitionError(`pipeline '${m.pipeline}' no longer exists in the content in use; assign another one or put content in use that has it`);
  const at = locate(shape, m, true);
  if (at.kind === 'refused') throw new ResumeRefused(at, `${at.message}; ${refusalHint(machine, at.change)}`);
  const base = { ...m, reason: null, attempt: 0, power: 'on' as const };
  if (at.kind === 'done') return { ...base, state: 'done', stage: null, task: null };
  return { ...base, state: 'running', stage: at.step.stage, task: at.step.task };
}

/** A resume refused because the content changed so that where to continue is ambiguous. */
export class ResumeRefused extends TransitionError {
  constructor(
    readonly located: Extract<Located, { kind: 'refused' }>,
    message: string,
  ) {
    super(message);
  }
}

/** How to get out of a refused resume, in words. `machine`: its name, or null for "the machine". */
export function refusalHint(machine: string | null, change: 'vanished' | 'reordered'): string {
  const restart = `run \`takt machines restart ${machine ?? 'M'}\` to run the pipeline from its first task`;
  return change === 'vanished' ? `${restart}, or put content in use that has the task` : `${restart}, or put content in use that keeps the tasks in the order they ran`;
}


/** `paused by <who>` with `: <why>` when one was given. */
export function pausedReason(by: string, why?: string): string {
  return why ? `paused by ${by}: ${why}` : `paused by ${by}`;
}

/**
 * Operator: pause a machine's pipeline where it stands. A running job is left to finish (the machine then
 * moves past it and stays paused) unless the caller cancels it. A machine already paused stays as it is.
 * @throws TransitionError for a machine with nothing to pause (idle, done, stopped on a failure).
 */
export function pause(m: MachineView, by: string, why?: string): MachineView {
  if (m.state === 'paused') return m;
  if (m.state === 'running' || m.state === 'awaiting-approval') return { ...m, state: 'paused', reason: pausedReason(by, why) };
  const hint =
    m.state === 'stopped'
      ? 'it is already stopped (on a failure) and runs nothing; resume or restart it'
      : m.state === 'done'
        ? 'it has finished its pipeline and runs nothing; restart it to run the pipeline again'
        : 'it has no pipeline running; assign one with `takt machines update M --pipeline P`';
  throw new TransitionError(`machine is ${m.state}; only a running or awaiting-approval machine can be paused: ${hint}`);
}

/** Operator: start the pipeline over from its first task (nothing has succeeded in the new pass). */
export function restart(m: MachineView): MachineView {
  if (!m.pipeline) throw new TransitionError('machine has no pipeline; assign one with `takt machines update M --pipeline P`');
  return { ...m, state: 'running', reason: null, stage: null, task: null, passed: [], attempt: 0, power: 'on', approvedStage: null };
}

/** Operator: assign (or clear) the pipeline; the machine starts it from the top. */
export function assignPipeline(m: MachineView, pipeline: string | null): MachineView {
  return {
    ...m,
    pipeline,
    state: pipeline ? 'running' : 'idle',
    reason: null,
    stage: null,
    task: null,
    passed: [],
    attempt: 0,
    approvedStage: null,
  };
}

/** An approver lets the machine into the stage it waits at (`stageKey`: that stage's `Step.stageKey`). */
export function approve(m: MachineView, stageKey: string): MachineView {
  if (m.state !== 'awaiting-approval') throw new TransitionError(`machine is ${m.state}; only a machine awaiting approval can be approved`);
  return { ...m, state: 'running', reason: null, approvedStage: stageKey };
}

/** An approver turns the stage down: the machine stops there, saying who and why. */
export function reject(m: MachineView, stage: string, by: string, why: string): MachineView {
  if (m.state !== 'awaiting-approval') throw new TransitionError(`machine is ${m.state}; only a machine awaiting approval can be rejected`);
  return { ...m, state: 'stopped', reason: `stage '${stage}' rejected by ${by}: ${why}` };
}
