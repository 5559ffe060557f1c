/**
 * Resume by identity (issue 12): a machine's place in its pipeline is the stage and task it stands at and
 * the tasks that succeeded in this pass, never an index. Table-driven over content changes between a stop
 * and a resume, then the whole walk to `done`: a machine never reaches done without every task of the
 * pipeline it was resumed on having succeeded, and a resume that would be ambiguous is refused.
 */
import { describe, expect, it } from 'vitest';
import {
  afterPipelineJob,
  approve,
  locate,
  remainingSteps,
  resume,
  ResumeRefused,
  TransitionError,
  type JobOutcome,
  type MachineView,
  type PipelineShape,
} from '../src/engine/transitions.js';

const exit = (exitCode: number): JobOutcome => ({ kind: 'exit', exitCode });
const one = (...tasks: string[]): PipelineShape => ({ name: 'p', stages: [{ name: 's', tasks }] });

/** Pipeline [a, b]: `a` succeeded, the machine stopped on `b` (it failed). */
function stoppedOnB(): MachineView {
  let m: MachineView = { state: 'running', reason: null, stage: 's', task: 'a', passed: [], attempt: 0, power: 'on', pipeline: 'p', approvedStage: null };
  m = afterPipelineJob(m, one('a', 'b'), 'a', exit(0)).machine;
  m = afterPipelineJob(m, one('a', 'b'), 'b', exit(1)).machine;
  return m;
}

/** Walks a running machine to its end with every task succeeding: the tasks in the order they ran. */
function walk(m: MachineView, shape: PipelineShape): { ran: string[]; end: MachineView } {
  const ran: string[] = [];
  for (let i = 0; i < 50 && m.state === 'running'; i++) {
    ran.push(`${m.stage}/${m.task}`);
    m = afterPipelineJob(m, shape, m.task!, exit(0)).machine;
  }
  return { ran, end: m };
}

describe('resume after a content change (pipeline [a, b], stopped on b after a succeeded)', () => {
  it('the machine stands where it stopped', () => {
    expect(stoppedOnB()).toMatchObject({ state: 'stopped', stage: 's', task: 'b', passed: ['s/a'] });
  });

  type Row = [name: string, shape: PipelineShape, want: { runs: string[] } | { refused: 'vanished' | 'reordered'; says: RegExp }];
  const rows: Row[] = [
    ['no content change: runs b', one('a', 'b'), { runs: ['s/b'] }],
    ['insert-before [new, a, b]: runs new, then b; a is not re-run', one('new', 'a', 'b'), { runs: ['s/new', 's/b'] }],
    ['insert-after [a, b, new]: runs b, then new', one('a', 'b', 'new'), { runs: ['s/b', 's/new'] }],
    ['remove-before [b]: runs b (it is not skipped)', one('b'), { runs: ['s/b'] }],
    ['remove-the-failed-task [a]: refused, the task it stopped on is gone', one('a'), { refused: 'vanished', says: /task 'b' \(stage 's'\), where the machine stopped, is no longer in pipeline 'p'/ }],
    ['reorder [b, a]: refused, a succeeded before b but now comes after it', one('b', 'a'), { refused: 'reordered', says: /task 'a' \(stage 's'\) succeeded before task 'b' \(stage 's'\), where the machine stopped, but pipeline 'p' now runs it after/ }],
    [
      'stage renamed (s -> t): refused, the task it stopped on is a different task now',
      { name: 'p', stages: [{ name: 't', tasks: ['a', 'b'] }] },
      { refused: 'vanished', says: /a task of that name is now in stage 't', which is a different task/ },
    ],
    [
      'a succeeded task moved to another stage: it runs again there (a different task), then b',
      { name: 'p', stages: [{ name: 'pre', tasks: ['a'] }, { name: 's', tasks: ['b'] }] },
      { runs: ['pre/a', 's/b'] },
    ],
    [
      'the failed task moved to another stage: refused',
      { name: 'p', stages: [{ name: 's', tasks: ['a'] }, { name: 'post', tasks: ['b'] }] },
      { refused: 'vanished', says: /now in stage 'post'/ },
    ],
    ['a stage emptied before: runs b', { name: 'p', stages: [{ name: 'gone', tasks: [] }, { name: 's', tasks: ['a', 'b'] }] }, { runs: ['s/b'] }],
  ];

  it.each(rows)('%s', (_name, shape, want) => {
    const m = stoppedOnB();
    if ('refused' in want) {
      let err: unknown;
      try {
        resume(m, shape, 'web-1');
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ResumeRefused);
      const r = err as ResumeRefused;
      expect(r.located.change).toBe(want.refused);
      expect(r.message).toMatch(want.says);
      // the way out is named
      expect(r.message).toMatch(/takt machines restart web-1/);
      // what a resume would do is what plan (locate, strict) says
      expect(locate(shape, m, true).kind).toBe('refused');
      return;
    }
    // what plan shows (remainingSteps) is what the resume then runs
    expect(remainingSteps(shape, m.passed).map((s) => s.key)).toEqual(want.runs);
    const resumed = resume(m, shape, 'web-1');
    const { ran, end } = walk(resumed, shape);
    expect(ran).toEqual(want.runs);
    expect(end.state).toBe('done');
    // done only with every task of the pipeline it was resumed on succeeded
    for (const st of shape.stages) for (const t of st.tasks) expect(end.passed).toContain(`${st.name}/${t}`);
  });

  it('a resume that is refused changes nothing, and succeeds once the content has the task again', () => {
    const m = stoppedOnB();
    expect(() => resume(m, one('a'), 'web-1')).toThrow(TransitionError);
    expect(walk(resume(m, one('a', 'b'), 'web-1'), one('a', 'b')).ran).toEqual(['s/b']);
  });

  it('a pipeline that vanished is refused', () => expect(() => resume(stoppedOnB(), null)).toThrow(/no longer exists/));
});

describe('resume without content change', () => {
  it('after a pause (exit 16) continues with the next task', () => {
    let m: MachineView = { state: 'running', reason: null, stage: 's', task: 'a', passed: [], attempt: 0, power: 'on', pipeline: 'p', approvedStage: null };
    m = afterPipelineJob(m, one('a', 'b', 'c'), 'a', exit(16)).machine;
    expect(m).toMatchObject({ state: 'paused', stage: 's', task: 'b' });
    expect(walk(resume(m, one('a', 'b', 'c')), one('a', 'b', 'c')).ran).toEqual(['s/b', 's/c']);
  });

  it('retries run the same task; the last failure stops on it, and resume runs it again with fresh attempts', () => {
    const shape = one('a', 'b');
    let m: MachineView = { state: 'running', reason: null, stage: 's', task: 'b', passed: ['s/a'], attempt: 0, power: 'on', pipeline: 'p', approvedStage: null };
    const first = afterPipelineJob(m, shape, 'b', exit(1), 1);
    expect(first.machine).toMatchObject({ state: 'running', stage: 's', task: 'b', attempt: 1 });
    expect(first.job.reason).toBe("task 'b' failed with exit code 1 (attempt 1 of 2; retrying)");
    const second = afterPipelineJob(first.machine, shape, 'b', exit(1), 1);
    expect(second.machine).toMatchObject({ state: 'stopped', stage: 's', task: 'b', attempt: 0 });
    expect(second.job.reason).toBe("task 'b' failed with exit code 1 (attempt 2 of 2; no retries left)");
    m = resume(second.machine, shape);
    expect(m).toMatchObject({ state: 'running', stage: 's', task: 'b', attempt: 0, passed: ['s/a'] });
    expect(walk(m, shape).ran).toEqual(['s/b']);
  });

  it('a task without retries says nothing about attempts', () => {
    expect(afterPipelineJob(stoppedOnB(), one('a', 'b'), 'b', exit(1)).job.reason).toBe("task 'b' failed with exit code 1");
  });

  it('a task listed twice runs twice', () => {
    const shape: PipelineShape = { name: 'p', stages: [{ name: 's', tasks: ['x', 'x'] }, { name: 's', tasks: ['x'] }] };
    const m: MachineView = { state: 'running', reason: null, stage: 's', task: 'x', passed: [], attempt: 0, power: 'on', pipeline: 'p', approvedStage: null };
    const { ran, end } = walk(m, shape);
    expect(ran).toEqual(['s/x', 's/x', 's/x']);
    expect(end.passed).toEqual(['s/x', 's/x#2', 's#2/x']);
  });
});

describe('content changed under a running machine', () => {
  it('a task inserted before what ran runs next; nothing is skipped', () => {
    const m: MachineView = { state: 'running', reason: null, stage: 's', task: 'a', passed: [], attempt: 0, power: 'on', pipeline: 'p', approvedStage: null };
    // a runs under [a, b]; [new, a, b] is put in use while it runs
    const after = afterPipelineJob(m, one('new', 'a', 'b'), 'a', exit(0)).machine;
    expect(after).toMatchObject({ state: 'running', stage: 's', task: 'new' });
    expect(walk(after, one('new', 'a', 'b')).ran).toEqual(['s/new', 's/b']);
  });
  it('a reorder while a task runs is followed at the next boundary: what is left runs, nothing is skipped', () => {
    const m: MachineView = { state: 'running', reason: null, stage: 's', task: 'b', passed: ['s/a'], attempt: 0, power: 'on', pipeline: 'p', approvedStage: null };
    const after = afterPipelineJob(m, one('b', 'a', 'c'), 'b', exit(0)).machine;
    expect(after).toMatchObject({ state: 'running', stage: 's', task: 'c' });
    const { ran, end } = walk(after, one('b', 'a', 'c'));
    expect(ran).toEqual(['s/c']);
    expect(end.state).toBe('done');
  });
  it('after an insert-before run, a later stop resumes without refusal under the same content', () => {
    const shape = one('new', 'a', 'b');
    let m = resume(stoppedOnB(), shape);
    m = afterPipelineJob(m, shape, 'new', exit(0)).machine;
    m = afterPipelineJob(m, shape, 'b', exit(1)).machine;
    expect(m).toMatchObject({ state: 'stopped', task: 'b', passed: ['s/a', 's/new'] });
    expect(walk(resume(m, shape), shape).ran).toEqual(['s/b']);
  });
});

describe('approval gates by stage name', () => {
  const shape: PipelineShape = { name: 'p', stages: [{ name: 'build', tasks: ['a'] }, { name: 'deploy', tasks: ['b', 'c'] }] };
  it('a stage is entered once per pass: resuming inside it does not ask again', () => {
    const m: MachineView = { state: 'stopped', reason: 'x', stage: 'deploy', task: 'c', passed: ['build/a', 'deploy/b'], attempt: 0, power: 'on', pipeline: 'p', approvedStage: 'deploy' };
    const at = locate(shape, resume(m, shape), false);
    expect(at).toMatchObject({ kind: 'at', step: { stage: 'deploy', task: 'c' }, entering: false });
  });
  it('an approval is for the stage by name, and survives a task inserted before it', () => {
    const m = approve({ state: 'awaiting-approval', reason: 'x', stage: 'deploy', task: 'b', passed: ['build/a'], attempt: 0, power: 'on', pipeline: 'p', approvedStage: null }, 'deploy');
    expect(m.approvedStage).toBe('deploy');
    const grown: PipelineShape = { name: 'p', stages: [{ name: 'build', tasks: ['lint', 'a'] }, { name: 'deploy', tasks: ['b', 'c'] }] };
    expect(locate(grown, m, false)).toMatchObject({ kind: 'at', step: { stage: 'build', task: 'lint' }, entering: false });
    expect(m.approvedStage).toBe('deploy');
  });
});
