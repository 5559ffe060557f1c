import { describe, expect, it } from 'vitest';
import {
  approve,
  reject,
  afterPipelineJob,
  afterWorkOrderJob,
  assignPipeline,
  judgeJob,
  pause,
  pipelineOrder,
  restart,
  resume,
  TransitionError,
  type JobOutcome,
  type MachineView,
  type PipelineShape,
} from '../src/engine/transitions.js';

const shape: PipelineShape = {
  name: 'p',
  stages: [
    { name: 's1', tasks: ['a', 'b'] },
    { name: 'empty', tasks: [] },
    { name: 's2', tasks: ['c'] },
  ],
};

/** The position of the task at (stage index, task index) of `shape`, by name. */
const pos = (stageIndex: number, taskIndex: number) => ({ stage: shape.stages[stageIndex]!.name, task: shape.stages[stageIndex]!.tasks[taskIndex]! });

/** A machine running the task at (stage index, task index), every task before it succeeded in this pass. */
const running = (stageIndex: number, taskIndex: number, extra: Partial<MachineView> = {}): MachineView => {
  const at = pos(stageIndex, taskIndex);
  const order = pipelineOrder(shape);
  const i = order.findIndex((s) => s.stage === at.stage && s.task === at.task);
  return {
    state: 'running',
    reason: null,
    ...at,
    passed: order.slice(0, i).map((s) => s.key),
    attempt: 0,
    power: 'on',
    pipeline: 'p',
    approvedStage: null,
    ...extra,
  };
};

const exit = (exitCode: number | null, extra: Partial<Extract<JobOutcome, { kind: 'exit' }>> = {}): JobOutcome => ({ kind: 'exit', exitCode, ...extra });

describe('positions', () => {
  it('orders the tasks by stage, skipping empty stages, each with its own key', () => {
    expect(pipelineOrder(shape).map((s) => s.key)).toEqual(['s1/a', 's1/b', 's2/c']);
    const twice: PipelineShape = { name: 'p', stages: [{ name: 's', tasks: ['x', 'x'] }, { name: 's', tasks: ['x'] }] };
    expect(pipelineOrder(twice).map((s) => [s.key, s.stageKey])).toEqual([['s/x', 's'], ['s/x#2', 's'], ['s#2/x', 's#2']]);
  });
});

describe('pipeline job outcomes (exit-code contract)', () => {
  type Row = [string, MachineView, JobOutcome, Partial<MachineView>, string, string];
  const rows: Row[] = [
    // name, machine before, outcome, expected machine fields, expected job state, expected agent action
    ['0 advances within a stage', running(0, 0), exit(0), { state: 'running', ...pos(0, 1) }, 'succeeded', 'continue'],
    ['0 advances across stages', running(0, 1), exit(0), { state: 'running', ...pos(2, 0) }, 'succeeded', 'continue'],
    ['0 on the last task finishes', running(2, 0), exit(0), { state: 'done', reason: null }, 'succeeded', 'continue'],
    ['1 stops the line on the task', running(0, 1), exit(1), { state: 'stopped', ...pos(0, 1) }, 'failed', 'continue'],
    ['17 is not a flag combination: failure', running(0, 0), exit(17), { state: 'stopped', ...pos(0, 0) }, 'failed', 'continue'],
    ['signal (null) is a failure', running(0, 0), exit(null), { state: 'stopped' }, 'failed', 'continue'],
    ['16 pauses after the task (paused, not stopped: nothing failed)', running(0, 0), exit(16), { state: 'paused', ...pos(0, 1) }, 'succeeded', 'continue'],
    ['16 on the last task finishes', running(2, 0), exit(16), { state: 'done' }, 'succeeded', 'continue'],
    ['144 pauses and runs the task again on resume', running(0, 1), exit(144), { state: 'paused', ...pos(0, 1) }, 'succeeded', 'continue'],
    ['32 powers off and advances', running(0, 0), exit(32), { state: 'running', ...pos(0, 1), power: 'off' }, 'succeeded', 'poweroff'],
    ['64 reboots and advances', running(0, 0), exit(64), { state: 'running', ...pos(0, 1) }, 'succeeded', 'reboot'],
    ['128 runs the task again', running(0, 1), exit(128), { state: 'running', ...pos(0, 1) }, 'succeeded', 'continue'],
    ['192 reboots then runs the task again', running(0, 1), exit(192), { state: 'running', ...pos(0, 1) }, 'succeeded', 'reboot'],
    ['96 power off wins over reboot', running(0, 0), exit(96), { power: 'off', ...pos(0, 1) }, 'succeeded', 'poweroff'],
    ['timeout stops the line', running(0, 0), exit(null, { timedOut: true, timeoutMs: 5000 }), { state: 'stopped', ...pos(0, 0) }, 'failed', 'continue'],
    ['agent error stops the line', running(0, 0), exit(null, { error: 'spawn bash ENOENT' }), { state: 'stopped' }, 'failed', 'continue'],
    ['lost lease stops the line', running(0, 1), { kind: 'lost', leaseMs: 30_000 }, { state: 'stopped', ...pos(0, 1) }, 'lost', 'continue'],
    ['abandoned job stops the line', running(0, 1), { kind: 'abandoned' }, { state: 'stopped', ...pos(0, 1) }, 'lost', 'continue'],
    ['bad output fails even with exit 0', running(0, 0), { kind: 'invalid', exitCode: 0, message: 'x' }, { state: 'stopped', ...pos(0, 0) }, 'failed', 'continue'],
    ['no-op variant advances', running(0, 0), { kind: 'noop', reason: 'n/a here' }, { state: 'running', ...pos(0, 1) }, 'succeeded', 'continue'],
    ['unrenderable task stops the line', running(0, 0), { kind: 'unrenderable', message: 'missing' }, { state: 'stopped', ...pos(0, 0) }, 'failed', 'continue'],
    // An operator's cancel: the position is kept; with hold the machine pauses on the task.
    ['cancel with hold pauses on the task', running(0, 1, { attempt: 1 }), { kind: 'cancelled', by: 'ann', why: 'wrong disk', hold: true }, { state: 'paused', ...pos(0, 1), attempt: 0, reason: "paused by ann: wrong disk; job of task 'task' cancelled, resume re-runs it" }, 'cancelled', 'continue'],
    ['cancel without hold leaves state and position (power off, restart decide)', running(0, 1), { kind: 'cancelled', by: 'ann', why: 'machine powered off' }, { state: 'running', ...pos(0, 1) }, 'cancelled', 'continue'],
    ['cancel of a machine already pausing pauses on the task', running(0, 1, { state: 'paused', reason: 'paused by bo' }), { kind: 'cancelled', by: 'bo', hold: true }, { state: 'paused', ...pos(0, 1) }, 'cancelled', 'continue'],
    ['handed back: nothing ran, nothing moves', running(0, 1), { kind: 'handed-back' }, { state: 'running', ...pos(0, 1) }, 'cancelled', 'continue'],
    // Paused by an operator while the job ran: success moves on and the pause holds; failure still stops.
    ['paused while running: 0 moves on and stays paused', running(0, 0, { state: 'paused', reason: 'paused by ann: maintenance' }), exit(0), { state: 'paused', ...pos(0, 1), reason: 'paused by ann: maintenance' }, 'succeeded', 'continue'],
    ['paused while running: 0 on the last task finishes', running(2, 0, { state: 'paused', reason: 'paused by ann' }), exit(0), { state: 'done', reason: null }, 'succeeded', 'continue'],
    ['paused while running: 1 stops the line', running(0, 0, { state: 'paused', reason: 'paused by ann' }), exit(1), { state: 'stopped', ...pos(0, 0) }, 'failed', 'continue'],
    ['paused while running: 16 pauses with the task as reason', running(0, 0, { state: 'paused', reason: 'paused by ann' }), exit(16), { state: 'paused', ...pos(0, 1), reason: "paused by task 'task' (exit code 16); resume to continue" }, 'succeeded', 'continue'],
  ];
  it.each(rows)('%s', (_name, before, outcome, wantMachine, wantJob, wantAction) => {
    const d = afterPipelineJob(before, shape, 'task', outcome);
    expect(d.machine).toMatchObject(wantMachine);
    expect(d.job.state).toBe(wantJob);
    expect(d.action).toBe(wantAction);
    if (d.machine.state === 'stopped') expect(d.machine.reason).toMatch(/task 'task'/);
  });

  it('a failure names the exit code in the reason', () => {
    expect(afterPipelineJob(running(0, 0), shape, 'verify', exit(3)).machine.reason).toBe("task 'verify' failed with exit code 3");
  });

  it('retries only when the task opts in, then stops', () => {
    const first = afterPipelineJob(running(0, 0), shape, 't', exit(1), 2);
    expect(first.machine).toMatchObject({ state: 'running', ...pos(0, 0), attempt: 1 });
    expect(first.job.reason).toBe("task 't' failed with exit code 1 (attempt 1 of 3; retrying)");
    const second = afterPipelineJob(first.machine, shape, 't', exit(1), 2);
    expect(second.machine).toMatchObject({ state: 'running', attempt: 2 });
    const third = afterPipelineJob(second.machine, shape, 't', exit(1), 2);
    expect(second.job.reason).toBe("task 't' failed with exit code 1 (attempt 2 of 3; retrying)");
    expect(third.machine).toMatchObject({ state: 'stopped', attempt: 0, reason: "task 't' failed with exit code 1 (attempt 3 of 3; no retries left)" });
    expect(third.job.reason).toBe("task 't' failed with exit code 1 (attempt 3 of 3; no retries left)");
    // success resets the attempt counter
    expect(afterPipelineJob(first.machine, shape, 't', exit(0), 2).machine.attempt).toBe(0);
    // a lost job is never retried automatically
    expect(afterPipelineJob(running(0, 0), shape, 't', { kind: 'lost', leaseMs: 1000 }, 5).machine.state).toBe('stopped');
  });
});

describe('work order job outcomes', () => {
  it.each([
    ['success moves to the next task', 0, exit(0), { state: 'running', taskIndex: 1 }, 'continue'],
    ['success on the last task completes', 1, exit(0), { state: 'succeeded', taskIndex: 2 }, 'continue'],
    ['failure fails the work order', 0, exit(2), { state: 'failed', taskIndex: 0 }, 'continue'],
    ['incomplete repeats the task', 1, exit(128), { state: 'running', taskIndex: 1 }, 'continue'],
    ['reboot is passed on', 0, exit(64), { state: 'running', taskIndex: 1 }, 'reboot'],
    ['lost fails the work order', 0, { kind: 'lost', leaseMs: 1000 } as JobOutcome, { state: 'failed' }, 'continue'],
    ['cancel cancels the work order, saying who and why', 1, { kind: 'cancelled', by: 'ann', why: 'wrong host' } as JobOutcome, { state: 'cancelled', taskIndex: 1, reason: "its job (task 'scan') was cancelled by ann: wrong host" }, 'continue'],
    ['handed back: the work order stays on the task', 1, { kind: 'handed-back' } as JobOutcome, { state: 'running', taskIndex: 1 }, 'continue'],
  ] as const)('%s', (_n, taskIndex, outcome, want, action) => {
    const d = afterWorkOrderJob({ taskIndex }, 2, 'scan', outcome, 'on');
    expect(d.workOrder).toMatchObject(want);
    expect(d.action).toBe(action);
  });
  it('power off is recorded', () => expect(afterWorkOrderJob({ taskIndex: 0 }, 2, 's', exit(32), 'on').power).toBe('off'));
});

describe('operator transitions', () => {
  it.each([
    ['stopped', true],
    ['paused', true],
    ['idle', true],
    ['running', false],
    ['done', false],
    ['awaiting-approval', false],
  ] as const)('resume from %s allowed=%s', (state, ok) => {
    const m = running(0, 1, { state, reason: 'x', attempt: 2, power: 'off' });
    if (ok) expect(resume(m, shape)).toMatchObject({ state: 'running', reason: null, ...pos(0, 1), attempt: 0, power: 'on' });
    else expect(() => resume(m, shape)).toThrow(TransitionError);
  });
  it.each([
    ['running', { state: 'paused', reason: 'paused by ann: disk swap', ...pos(0, 1) }],
    ['awaiting-approval', { state: 'paused', reason: 'paused by ann: disk swap' }],
    ['paused', { state: 'paused', reason: 'paused by bo' }], // already paused: unchanged
  ] as const)('pause from %s', (state, want) => {
    expect(pause(running(0, 1, { state, reason: state === 'paused' ? 'paused by bo' : null }), 'ann', 'disk swap')).toMatchObject(want);
  });
  it.each([
    ['idle', /no pipeline running/],
    ['done', /finished its pipeline/],
    ['stopped', /already stopped/],
  ] as const)('pause from %s is refused with a hint', (state, hint) => {
    expect(() => pause(running(0, 1, { state }), 'ann')).toThrow(TransitionError);
    expect(() => pause(running(0, 1, { state }), 'ann')).toThrow(hint);
  });
  it('pause without a reason says who', () => expect(pause(running(0, 0), 'ann').reason).toBe('paused by ann'));
  it('resume without a pipeline is refused', () => expect(() => resume(running(0, 0, { state: 'stopped', pipeline: null }), shape)).toThrow(/no pipeline/));
  it.each(['running', 'stopped', 'done', 'idle'] as const)('restart from %s goes to the top', (state) => {
    expect(restart(running(2, 0, { state }))).toMatchObject({ state: 'running', stage: null, task: null, passed: [], reason: null });
  });
  it('restart without a pipeline is refused', () => expect(() => restart(running(0, 0, { pipeline: null }))).toThrow(TransitionError));
  it('assigning a pipeline starts it; clearing makes the machine idle', () => {
    expect(assignPipeline(running(2, 0, { state: 'done' }), 'q')).toMatchObject({ pipeline: 'q', state: 'running', stage: null, passed: [] });
    expect(assignPipeline(running(2, 0), null)).toMatchObject({ pipeline: null, state: 'idle' });
  });
});

describe('approvals', () => {
  it.each(['running', 'stopped', 'done', 'idle'] as const)('approve or reject from %s is refused', (state) => {
    expect(() => approve(running(2, 0, { state }), 's2')).toThrow(TransitionError);
    expect(() => reject(running(2, 0, { state }), 's', 'a', 'b')).toThrow(TransitionError);
  });
  it('approve lets the machine into the stage it waits at', () => {
    expect(approve(running(2, 0, { state: 'awaiting-approval', reason: 'x' }), 's2')).toMatchObject({ state: 'running', reason: null, approvedStage: 's2' });
  });
  it('reject stops it with who and why', () => {
    expect(reject(running(2, 0, { state: 'awaiting-approval' }), 'deploy', 'ann', 'freeze')).toMatchObject({ state: 'stopped', reason: "stage 'deploy' rejected by ann: freeze" });
  });
  it('restart and reassignment forget an approval', () => {
    expect(restart(running(2, 0, { approvedStage: 's2' })).approvedStage).toBe(null);
    expect(assignPipeline(running(2, 0, { approvedStage: 's2' }), 'q').approvedStage).toBe(null);
  });
});

describe('judgeJob reasons', () => {
  it.each([
    [exit(1), 'failed', "task 't' failed with exit code 1"],
    [exit(null), 'failed', "task 't' was killed by a signal"],
    [exit(null, { timedOut: true, timeoutMs: 2000 }), 'failed', "task 't' timed out after 2s and was killed"],
    [{ kind: 'lost', leaseMs: 10_000 } as JobOutcome, 'lost', /no word from the agent for 10s/],
    [{ kind: 'cancelled', by: 'admin' } as JobOutcome, 'cancelled', /^cancelled by admin$/],
    [{ kind: 'cancelled', by: 'admin', why: 'machine powered off' } as JobOutcome, 'cancelled', /^cancelled by admin: machine powered off$/],
  ])('%j', (o, state, reason) => {
    const v = judgeJob('t', o);
    expect(v.state).toBe(state);
    expect(v.reason).toMatch(reason);
  });
});
