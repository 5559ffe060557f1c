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
}

export interface Position {
  stageIndex: number;
  taskIndex: number;
}

/** The machine fields a transition may change. */
export type MachineView = Pick<Machine, 'state' | 'reason' | 'stageIndex' | 'taskIndex' | 'attempt' | 'power' | 'pipeline' | 'approvedStage'>;

export function taskAt(shape: PipelineShape, pos: Position): { stage: string; task: string } | null {
  const stage = shape.stages[pos.stageIndex];
  const task = stage?.tasks[pos.taskIndex];
  return stage && task !== undefined ? { stage: stage.name, task } : null;
}

/** The position after `pos`, skipping empty stages; null past the end of the pipeline. */
export function nextPosition(shape: PipelineShape, pos: Position): Position | null {
  let { stageIndex, taskIndex } = pos;
  taskIndex += 1;
  while (stageIndex < shape.stages.length) {
    if (taskIndex < (shape.stages[stageIndex]?.tasks.length ?? 0)) return { stageIndex, taskIndex };
    stageIndex += 1;
    taskIndex = 0;
  }
  return null;
}

/** The first runnable position at or after `pos` (a stage may have been emptied by a content change). */
export function normalisePosition(shape: PipelineShape, pos: Position): Position | null {
  if (taskAt(shape, pos)) return pos;
  return nextPosition(shape, { stageIndex: pos.stageIndex, taskIndex: Math.max(-1, pos.taskIndex - 1) }) ?? null;
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
 * A pipeline job ended. Failure stops the line on that task (unless the task opted into retries and has
 * some left); success moves on, honouring the exit-code contract's stop (the machine is `paused`, not
 * `stopped`: nothing failed), power-off, reboot and incomplete flags. An operator's cancel keeps the
 * position: with `hold` the machine pauses there. A machine an operator paused while the job ran
 * (`paused` on entry) moves on past a success and stays paused; a failure still stops it.
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
    if (v.state === 'failed' && outcome.kind === 'exit' && m.attempt < retries) {
      return {
        job: { state: v.state, reason: `${v.reason} (retry ${m.attempt + 1} of ${retries})` },
        machine: { ...m, attempt: m.attempt + 1 },
        action: 'continue',
      };
    }
    return { job, machine: { ...m, state: 'stopped', reason: v.reason, attempt: 0 }, action: 'continue' };
  }
  let next: Position | null = { stageIndex: m.stageIndex, taskIndex: m.taskIndex };
  if (!v.incomplete) next = nextPosition(shape, next);
  const action: AgentAction = v.poweroff ? 'poweroff' : v.reboot ? 'reboot' : 'continue';
  const power = v.poweroff ? 'off' : m.power;
  if (next === null) {
    return { job, machine: { ...m, state: 'done', reason: null, attempt: 0, power, stageIndex: shape.stages.length, taskIndex: 0 }, action };
  }
  if (v.stop) return { job, machine: { ...m, ...next, state: 'paused', reason: `paused by task '${task}' (exit code 16); resume to continue`, attempt: 0, power }, action };
  // Paused by an operator while the job ran: the job's success moves the position on, the pause holds.
  const state: MachineState = m.state === 'paused' ? 'paused' : 'running';
  return { job, machine: { ...m, ...next, state, reason: state === 'paused' ? m.reason : null, attempt: 0, power }, action };
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

/** Operator: re-run the task the machine stopped on (or continue after a pause). */
export function resume(m: MachineView): MachineView {
  if (m.state !== 'stopped' && m.state !== 'idle' && m.state !== 'paused') {
    throw new TransitionError(`machine is ${m.state}; only a stopped, paused or idle machine can be resumed`);
  }
  if (!m.pipeline) throw new TransitionError('machine has no pipeline; assign one with `takt machines update M --pipeline P`');
  return { ...m, state: 'running', reason: null, attempt: 0, power: 'on' };
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

/** Operator: start the pipeline over from its first task. */
export function restart(m: MachineView): MachineView {
  if (!m.pipeline) throw new TransitionError('machine has no pipeline; assign one with `takt machines update M --pipeline P`');
  return { ...m, state: 'running', reason: null, stageIndex: 0, taskIndex: 0, attempt: 0, power: 'on', approvedStage: -1 };
}

/** Operator: assign (or clear) the pipeline; the machine starts it from the top. */
export function assignPipeline(m: MachineView, pipeline: string | null): MachineView {
  return {
    ...m,
    pipeline,
    state: pipeline ? 'running' : 'idle',
    reason: null,
    stageIndex: 0,
    taskIndex: 0,
    attempt: 0,
    approvedStage: -1,
  };
}

/** An approver lets the machine into the stage it waits at. */
export function approve(m: MachineView): MachineView {
  if (m.state !== 'awaiting-approval') throw new TransitionError(`machine is ${m.state}; only a machine awaiting approval can be approved`);
  return { ...m, state: 'running', reason: null, approvedStage: m.stageIndex };
}

/** An approver turns the stage down: the machine stops there, saying who and why. */
export function reject(m: MachineView, stage: string, by: string, why: string): MachineView {
  if (m.state !== 'awaiting-approval') throw new TransitionError(`machine is ${m.state}; only a machine awaiting approval can be rejected`);
  return { ...m, state: 'stopped', reason: `stage '${stage}' rejected by ${by}: ${why}` };
}
