/**
 * The one rule for restoring desired state beside observed state (src/engine/restore.ts), and the rule
 * `--stale` compares desired inputs by (src/engine/records.ts outputsAsRan): table-driven, no I/O.
 */
import { describe, expect, it } from 'vitest';
import { emptyContentSet, type ContentSet } from '../src/model/content.js';
const sealedValue = { $secure: 'v1:opaque' };
import { outputsAsRan } from '../src/engine/records.js';
import { placeFromJobs, placeOnReassign, shadowedParams, type RecordedPlace } from '../src/engine/restore.js';
import type { PipelineShape } from '../src/engine/transitions.js';
import { paramLayers, resolveParam } from '../src/render/params.js';

const shape: PipelineShape = { name: 'other', stages: [{ name: 's1', tasks: ['a', 'b'] }, { name: 's2', tasks: ['c'] }] };

const rec = (p: Partial<RecordedPlace>): RecordedPlace => ({ state: 'stopped', reason: null, stage: null, task: null, passed: [], ...p });

describe('placeOnReassign: a restore that changes the pipeline starts no work', () => {
  const cases: Array<{ name: string; recorded: RecordedPlace | null; shape?: PipelineShape | null; want: Partial<ReturnType<typeof placeOnReassign>['place']>; note: RegExp }> = [
    { name: 'no place recorded: held at start', recorded: null, want: { state: 'paused', stage: null, task: null, passed: [] }, note: /^web-1: pipeline demo → other: held at start \(no place recorded in other\); `takt machines resume web-1` runs it$/ },
    {
      name: 'a valid place (was running): held there',
      recorded: rec({ state: 'running', stage: 's1', task: 'b', passed: ['s1/a'] }),
      want: { state: 'paused', stage: 's1', task: 'b', passed: ['s1/a'] },
      note: /^web-1: pipeline demo → other: held at s1\/b \(1 task had succeeded\); `takt machines resume web-1` continues, `takt machines restart web-1` runs it from the top$/,
    },
    {
      name: 'stopped on a task: stays stopped with its reason',
      recorded: rec({ state: 'stopped', reason: "task 'b' failed with exit code 1", stage: 's1', task: 'b', passed: ['s1/a'] }),
      want: { state: 'stopped', reason: "task 'b' failed with exit code 1 — pipeline changed from demo to other by an import; held at s1/b, where it stood in other (1 task had succeeded); `takt machines resume web-1` continues there, `takt machines restart web-1` runs it from its first task", stage: 's1', task: 'b' },
      note: /stopped at s1\/b/,
    },
    { name: 'every task had succeeded: done', recorded: rec({ state: 'done', passed: ['s1/a', 's1/b', 's2/c'] }), want: { state: 'done', stage: null, task: null }, note: /: done, as recorded/ },
    {
      name: 'done, but the content gained a task since: held at the new task',
      recorded: rec({ state: 'done', passed: ['s1/a', 's2/c'] }),
      want: { state: 'paused', stage: 's1', task: 'b', passed: ['s1/a', 's2/c'] },
      note: /held at s1\/b/,
    },
    {
      name: 'the task it stood on is gone: held at start',
      recorded: rec({ state: 'stopped', stage: 's1', task: 'gone', passed: ['s1/a'] }),
      want: { state: 'paused', stage: null, task: null, passed: [] },
      note: /held at start \(its recorded place is not valid in the content in use: task 'gone' \(stage 's1'\), where the machine stopped, is no longer in pipeline 'other'\)/,
    },
    {
      name: 'reordered since (a task that succeeded now comes after it): held at start',
      recorded: rec({ state: 'stopped', stage: 's1', task: 'a', passed: ['s2/c'] }),
      want: { state: 'paused', stage: null, task: null, passed: [] },
      note: /held at start \(its recorded place is not valid.*now runs it after\)/,
    },
    { name: 'the pipeline is not in the content', recorded: rec({ state: 'done' }), shape: null, want: { state: 'paused', stage: null }, note: /held at start \(pipeline 'other' is not in the content\)/ },
    {
      name: 'passed keys the pipeline no longer has are forgotten',
      recorded: rec({ state: 'paused', stage: 's2', task: 'c', passed: ['s1/a', 's1/b', 'old/x'] }),
      want: { state: 'paused', stage: 's2', task: 'c', passed: ['s1/a', 's1/b'] },
      note: /held at s2\/c \(2 tasks had succeeded\)/,
    },
  ];
  it.each(cases)('$name', ({ recorded, shape: s, want, note }) => {
    const d = placeOnReassign('web-1', 'demo', 'other', s === undefined ? shape : s, recorded, 'an import');
    expect(d.place).toMatchObject({ attempt: 0, ...want });
    expect(d.place.state).not.toBe('running');
    expect(d.note).toMatch(note);
    if (d.place.state === 'paused') expect(d.place.reason).toMatch(/^pipeline changed from demo to other by an import; held at .*`takt machines resume web-1`/);
  });
});

describe('placeFromJobs: the place a machine had in a pipeline, from its jobs there', () => {
  const j = (task: string, state: string, stage = task === 'c' ? 's2' : 's1') => ({ stage, task, state });
  const cases: Array<{ name: string; jobs: Array<{ stage: string | null; task: string; state: string }>; want: { stage: string | null; task: string | null; passed: string[] } }> = [
    { name: 'no jobs', jobs: [], want: { stage: null, task: null, passed: [] } },
    { name: 'two succeeded', jobs: [j('a', 'succeeded'), j('b', 'succeeded')], want: { stage: null, task: null, passed: ['s1/a', 's1/b'] } },
    { name: 'stopped on b', jobs: [j('a', 'succeeded'), j('b', 'failed')], want: { stage: 's1', task: 'b', passed: ['s1/a'] } },
    { name: 'b failed, then succeeded on resume', jobs: [j('a', 'succeeded'), j('b', 'failed'), j('b', 'succeeded')], want: { stage: null, task: null, passed: ['s1/a', 's1/b'] } },
    { name: 'a restart: a again begins a new pass', jobs: [j('a', 'succeeded'), j('b', 'succeeded'), j('c', 'succeeded'), j('a', 'succeeded')], want: { stage: null, task: null, passed: ['s1/a'] } },
    { name: 'a restart whose first task failed', jobs: [j('a', 'succeeded'), j('b', 'succeeded'), j('a', 'failed')], want: { stage: 's1', task: 'a', passed: [] } },
    { name: 'a running job says nothing yet', jobs: [j('a', 'succeeded'), j('b', 'running')], want: { stage: null, task: null, passed: ['s1/a'] } },
    { name: 'a task no longer in the pipeline is kept by name', jobs: [j('x', 'succeeded', 'old')], want: { stage: null, task: null, passed: ['old/x'] } },
  ];
  it.each(cases)('$name', ({ jobs, want }) => expect(placeFromJobs(shape, jobs)).toEqual(want));
});

describe('shadowedParams: a restored param an output still shadows is reported', () => {
  const cases: Array<{ name: string; outputs: Record<string, unknown>; params: Record<string, unknown>; want: string[] }> = [
    { name: 'no outputs', outputs: {}, params: { build_id: 7 }, want: [] },
    { name: 'shadowed', outputs: { build_id: 9 }, params: { build_id: 7 }, want: ["param build_id restored to 7; the machine's output build_id=9 still takes precedence"] },
    { name: 'a removed param shadows nothing', outputs: { build_id: 9 }, params: { build_id: null }, want: [] },
    { name: 'other names', outputs: { count: 3 }, params: { msg: 'hi' }, want: [] },
    { name: 'secure values are masked', outputs: { token: sealedValue }, params: { token: sealedValue }, want: ["param token restored to \"********\"; the machine's output token=\"********\" still takes precedence"] },
  ];
  it.each(cases)('$name', ({ outputs, params, want }) => expect(shadowedParams({ outputs }, params)).toEqual(want));
});

describe('outputsAsRan: --stale compares desired inputs, then against now', () => {
  // Param x has a schema default; what the task sees now is resolved through params.ts with outputsAsRan.
  const content: ContentSet = emptyContentSet();
  content.objects.params.set('x', { def: { name: 'x', schema: { type: 'string', default: 'dflt' } }, layer: 'p' } as never);
  const seenNow = (ran: Record<string, { value: unknown; from: string }>, machine: { params: Record<string, unknown>; outputs: Record<string, unknown> }) =>
    resolveParam(content, paramLayers(content, { machine: { params: machine.params, profiles: [], outputs: outputsAsRan(ran, machine.outputs) } }), 'x')?.value;
  const cases: Array<{ name: string; ran: Record<string, { value: unknown; from: string }>; params: Record<string, unknown>; outputs: Record<string, unknown>; stale: boolean }> = [
    { name: 'a later task of the pass set output x the task read as its default: no change', ran: { x: { value: 'dflt', from: 'default' } }, params: {}, outputs: { x: 'from-b' }, stale: false },
    { name: 'a later task set output x over the machine param the task read: no change', ran: { x: { value: 'm', from: 'machine' } }, params: { x: 'm' }, outputs: { x: 'from-b' }, stale: false },
    { name: 'the task read output x; a later run of its setter made a new one: no change', ran: { x: { value: 'b-1', from: 'outputs' } }, params: {}, outputs: { x: 'b-2' }, stale: false },
    { name: 'the operator changed the desired param beneath a later output: change', ran: { x: { value: 'm', from: 'machine' } }, params: { x: 'n' }, outputs: { x: 'from-b' }, stale: true },
    { name: 'the operator replaced the output the task read with a param: change', ran: { x: { value: 'b-1', from: 'outputs' } }, params: { x: 'pinned' }, outputs: {}, stale: true },
    { name: 'the operator set the same value the output had: no change', ran: { x: { value: 'b-1', from: 'outputs' } }, params: { x: 'b-1' }, outputs: {}, stale: false },
    { name: 'a desired param changed, no outputs: change', ran: { x: { value: 'm', from: 'machine' } }, params: { x: 'n' }, outputs: {}, stale: true },
  ];
  it.each(cases)('$name', ({ ran, params, outputs, stale }) => {
    expect(seenNow(ran, { params, outputs }) !== ran.x!.value).toBe(stale);
  });

  it('a secure output the task saw stands in with the value the machine has (it was recorded masked)', () => {
    expect(outputsAsRan({ t: { value: '********', from: 'outputs' } }, { t: 'sealed' })).toEqual({ t: 'sealed' });
    expect(outputsAsRan({ t: { value: 'v', from: 'outputs' }, u: { value: 'w', from: 'machine' } }, { t: 'v2', u: 'w2', z: 1 })).toEqual({ t: 'v' });
  });
});
