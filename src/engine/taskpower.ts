/**
 * Power from a task (`takt-power`, CompleteRequest.power): what a job's request does to its end, decided
 * without I/O. The engine applies the decision in the completion's transaction, then hands the plan to
 * the power port (EngineOptions.power: provision/power MachinePower) once the transaction has committed:
 * the next boot device before the completion is answered, a cycle or off after it. See
 * docs/provisioning.md § From a task.
 */
import type { Machine } from '../model/machine.js';
import type { AgentAction, TaskPowerRequest } from '../model/protocol.js';

/** What the power port does for a task (MachinePower's shape; the engine does not import drivers). */
export interface TaskPowerPort {
  /** @throws TaktError unavailable (controller unreachable), conflict (refused, or no power configuration). */
  nextBoot(m: Machine, device: 'pxe' | 'disk', persistent: boolean): Promise<{ driver: string; done: boolean; persistent: boolean; instruction?: string; note?: string }>;
  /** @throws as nextBoot. */
  act(m: Machine, action: 'cycle' | 'off'): Promise<{ driver: string; done: boolean; instruction?: string; note?: string }>;
}

/** A request the engine will carry out once the completion has committed. */
export interface TaskPowerPlan {
  jobId: string;
  machineId: string;
  task: string;
  request: TaskPowerRequest;
  /** The reason the machine is held with while the driver works (null: not held). */
  hold: string | null;
  /** The state the hold replaced, given back when the driver has done it. */
  restore: Machine['state'] | null;
}

/** `next-boot pxe persistent, cycle`: the request in takt-power's words. */
export function describePowerRequest(p: TaskPowerRequest): string {
  const parts: string[] = [];
  if (p.nextBoot) parts.push(`next-boot ${p.nextBoot}${p.persistent ? ' persistent' : ''}`);
  if (p.action) parts.push(p.action);
  return parts.join(', ');
}

/** What a job's power request does to the end `settle` decided. */
export interface TaskPowerDecision {
  /** The job's `power` text. */
  jobPower: string;
  /** The machine as it is to be written. */
  machine: Machine;
  action: AgentAction;
  /** Present when the driver is to be asked. */
  plan?: TaskPowerPlan;
}

/**
 * Decides what a job's power request does. `settled`: the machine and agent action as the job's end left
 * them; `before`: the machine as it was when the job ended (its desired power). Rules:
 * - a job that did not succeed: nothing is asked; the job says so;
 * - no power configuration (or no power port): the machine is stopped with how to give one, and the agent
 *   does nothing (action `continue`): no reboot into a boot device that was not set;
 * - otherwise the driver is asked; a cycle or off replaces the exit code's reboot or power off (action
 *   `continue`, desired power as before), and a running or done machine is held (paused, with a reason
 *   naming the job) until the driver has done it, so no next job starts on a machine about to be reset.
 */
export function decideTaskPower(
  request: TaskPowerRequest,
  job: { id: string; task: string; succeeded: boolean },
  before: Machine,
  settled: { machine: Machine; action: AgentAction },
  hasPort: boolean,
): TaskPowerDecision {
  const asked = describePowerRequest(request);
  if (!job.succeeded) return { jobPower: `not applied: the job did not succeed (asked: ${asked})`, machine: settled.machine, action: settled.action };
  const m = settled.machine;
  if (!before.powerConfig || !hasPort) {
    const why = !before.powerConfig
      ? `${before.name} has no power configuration: give it one with takt machines update ${before.name} --power-driver ipmi|redfish|qmp|manual --power-opt KEY=VALUE, then takt machines resume ${before.name}`
      : 'this endpoint has no power drivers (start it with takt serve)';
    return {
      jobPower: `not applied: ${!before.powerConfig ? 'no power configuration' : 'no power drivers'} (asked: ${asked})`,
      machine: { ...m, state: 'stopped', reason: `task '${job.task}' (job ${job.id}) asked for power (${asked}) but ${why}`, power: before.power },
      action: 'continue',
    };
  }
  const holdable = m.state === 'running' || m.state === 'done';
  const hold = holdable ? `waiting for the power driver: task '${job.task}' (job ${job.id}) asked for ${asked}` : null;
  const action = request.action ? 'continue' : settled.action;
  return {
    jobPower: `asked: ${asked}; waiting for the driver`,
    machine: { ...m, ...(hold ? { state: 'paused' as const, reason: hold } : {}), ...(request.action ? { power: before.power } : {}) },
    action,
    plan: { jobId: job.id, machineId: m.id, task: job.task, request, hold, restore: hold ? m.state : null },
  };
}

/** How the driver's work ended, for `endOfTaskPower`. */
export type TaskPowerResult =
  | { kind: 'done'; parts: string[] }
  /** The manual driver: a person must do it. */
  | { kind: 'manual'; parts: string[]; instruction: string }
  | { kind: 'failed'; parts: string[]; failed: string; message: string };

/**
 * The job's `power` text and the machine's new state once the driver is done (or failed). `m`: the
 * machine now. A held machine gets its state back; a failure stops it with the driver's words, a manual
 * driver pauses it with the instruction; a done `off` records desired power off.
 */
export function endOfTaskPower(plan: TaskPowerPlan, m: Machine, r: TaskPowerResult): { jobPower: string; machine: Machine } {
  const asked = describePowerRequest(plan.request);
  const held = plan.hold !== null && m.state === 'paused' && m.reason === plan.hold;
  const done = r.parts.join(', ');
  if (r.kind === 'failed') {
    return {
      jobPower: `failed: ${r.failed}: ${r.message}${done ? ` (done before: ${done})` : ''}`,
      machine: { ...m, state: 'stopped', reason: `task '${plan.task}' (job ${plan.jobId}) asked for ${asked}; ${r.failed} failed: ${r.message}` },
    };
  }
  if (r.kind === 'manual') {
    return {
      jobPower: `${done ? `${done}; ` : ''}waiting for a person: ${r.instruction}`,
      machine: { ...m, state: 'paused', reason: `task '${plan.task}' (job ${plan.jobId}) asked for ${asked}, which the manual power driver leaves to you: ${r.instruction} Then: takt machines resume ${m.name}` },
    };
  }
  const back = held && plan.restore ? { state: plan.restore, reason: null } : {};
  return { jobPower: done, machine: { ...m, ...back, ...(plan.request.action === 'off' ? { power: 'off' as const } : {}) } };
}
