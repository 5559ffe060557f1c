import { describe, expect, it } from 'vitest';
import { computeCycleTimes, spread, type PipelineShape } from '../src/engine/cycletime.js';
import type { Job } from '../src/model/machine.js';

const T0 = Date.parse('2026-11-01T00:00:00.000Z');
const at = (s: number) => new Date(T0 + s * 1000).toISOString();
let n = 0;
/** A job on machine m: [stage, task] claimed at `start`, finished `run` seconds later (null: running). */
function job(m: string, stage: string, task: string, start: number, run: number | null, state: Job['state'] = 'succeeded', extra: Partial<Job> = {}): Job {
  return {
    id: `j${++n}`,
    machineId: m,
    kind: 'pipeline',
    workOrderId: null,
    pipeline: 'p',
    stage,
    task,
    variant: 'default',
    state: run === null ? 'running' : state,
    exitCode: null,
    reason: null,
    script: '',
    params: {},
    outputs: {},
    timeoutMs: 0,
    leaseExpiresAt: null,
    createdAt: at(start),
    finishedAt: run === null ? null : at(start + run),
    pack: null,
    taskSha256: null,
    scriptSha256: null,
    ...extra,
  };
}
const SHAPE: PipelineShape = { first: { stage: 's1', task: 'a' }, last: { stage: 's2', task: 'c' } };
const report = (jobs: Job[], blueprints: Record<string, string> = {}) =>
  computeCycleTimes(jobs, { since: at(0), until: at(10_000) }, (p) => (p === 'p' ? SHAPE : undefined), (id) => blueprints[id]);
/** One clean walk: a (s1), b (s1), c (s2), each `run` s with `gap` s between. */
const walk = (m: string, t0: number, run = 10, gap = 1) => [
  job(m, 's1', 'a', t0, run),
  job(m, 's1', 'b', t0 + run + gap, run),
  job(m, 's2', 'c', t0 + 2 * (run + gap), run),
];

describe('spread', () => {
  it.each([
    [[], null],
    [[5], { n: 1, p50: 5, p95: 5, max: 5 }],
    [[1, 2, 3, 4], { n: 4, p50: 2, p95: 4, max: 4 }],
    [Array.from({ length: 100 }, (_, i) => 100 - i), { n: 100, p50: 50, p95: 95, max: 100 }],
  ])('nearest rank of %j', (values, want) => expect(spread(values)).toEqual(want));
});

describe('cycle times', () => {
  it('a clean walk: run, queue from the previous task, stage and pipeline cycles', () => {
    const r = report(walk('m1', 0));
    expect(r.pipelines).toEqual([{ pipeline: 'p', walks: 1, completed: 1, failed: 0, failureRate: 0, cycleMs: { n: 1, p50: 32_000, p95: 32_000, max: 32_000 } }]);
    const [a, b, c] = r.tasks;
    expect(a).toMatchObject({ task: 'a', runs: 1, queueMs: null, runMs: { p50: 10_000 }, cycleMs: { p50: 10_000 } });
    expect(b).toMatchObject({ task: 'b', queueMs: { p50: 1000 }, cycleMs: { p50: 11_000 } });
    expect(c).toMatchObject({ task: 'c', stage: 's2', queueMs: { p50: 1000 } });
    // Stage s1 spans a's claim to b's end; s2 starts when s1 ended (the gap is its queue).
    expect(r.stages.map((s) => [s.stage, s.passes, s.cycleMs?.p50])).toEqual([
      ['s1', 1, 21_000],
      ['s2', 1, 11_000],
    ]);
  });

  it('an approval wait shows as queue wait of the stage it gates and in the stage and pipeline cycles', () => {
    const jobs = [job('m1', 's1', 'a', 0, 1), job('m1', 's1', 'b', 2, 1), job('m1', 's2', 'c', 603, 1)];
    const r = report(jobs);
    expect(r.tasks.find((t) => t.task === 'c')!.queueMs!.p50).toBe(600_000);
    expect(r.stages.find((s) => s.stage === 's2')!.cycleMs!.p50).toBe(601_000);
    expect(r.pipelines[0]!.cycleMs!.p50).toBe(604_000);
  });

  it('a failure then resume is one walk with a failure; the fix time is queue wait of the re-run', () => {
    const jobs = [job('m1', 's1', 'a', 0, 1), job('m1', 's1', 'b', 2, 1, 'failed'), job('m1', 's1', 'b', 100, 1), job('m1', 's2', 'c', 102, 1)];
    const r = report(jobs);
    expect(r.pipelines[0]).toMatchObject({ walks: 1, completed: 1, failed: 1, failureRate: 1 });
    const b = r.tasks.find((t) => t.task === 'b')!;
    expect(b).toMatchObject({ runs: 2, failed: 1, failureRate: 0.5, queueMs: { n: 2, max: 97_000 } });
    expect(r.stages.find((s) => s.stage === 's1')).toMatchObject({ passes: 1, failed: 1 });
  });

  it('a restart begins a new walk; a machine still stopped counts its walk and stage as failed, not completed', () => {
    const jobs = [job('m1', 's1', 'a', 0, 1), job('m1', 's1', 'b', 2, 1, 'lost'), job('m1', 's1', 'a', 50, 1), job('m1', 's1', 'b', 52, 1), job('m1', 's2', 'c', 54, 1)];
    const r = report(jobs);
    expect(r.pipelines[0]).toMatchObject({ walks: 2, completed: 1, failed: 1, failureRate: 0.5, cycleMs: { n: 1, p50: 5000 } });
    expect(r.tasks.find((t) => t.task === 'a')!.queueMs).toBeNull();
    expect(r.stages.find((s) => s.stage === 's1')).toMatchObject({ passes: 2, failed: 1 });
  });

  it('running jobs are not counted until they end; an unfinished walk is not completed', () => {
    const r = report([job('m1', 's1', 'a', 0, 1), job('m1', 's1', 'b', 2, null)]);
    expect(r.tasks.map((t) => [t.task, t.runs])).toEqual([['a', 1]]);
    expect(r.pipelines[0]).toMatchObject({ walks: 1, completed: 0, cycleMs: null });
    expect(r.stages).toEqual([]);
  });

  it('machines are independent and percentiles span them; unsorted input is fine', () => {
    const jobs = [...walk('m1', 0, 10), ...walk('m2', 5, 20), ...walk('m3', 7, 30)].reverse();
    const r = report(jobs);
    expect(r.pipelines[0]!.cycleMs).toEqual({ n: 3, p50: 62_000, p95: 92_000, max: 92_000 });
    expect(r.tasks.find((t) => t.task === 'a')!.runMs).toEqual({ n: 3, p50: 20_000, p95: 30_000, max: 30_000 });
  });

  it('work orders: per blueprint task, queue from the previous task of the same order; no walk', () => {
    const wo = (task: string, start: number, id = 'wo1') => job('m1', 's', task, start, 2, 'succeeded', { kind: 'workorder', workOrderId: id, pipeline: null, stage: null });
    const r = report([wo('scan', 0), wo('report', 5), wo('scan', 20, 'wo2')], { wo1: 'audit', wo2: 'audit' });
    expect(r.pipelines).toEqual([]);
    expect(r.tasks.map((t) => [t.blueprint, t.task, t.runs, t.queueMs?.p50 ?? null])).toEqual([
      ['audit', 'scan', 2, null],
      ['audit', 'report', 1, 3000],
    ]);
  });

  it('a pipeline that no longer exists: a walk ending in success counts as completed', () => {
    const jobs = [job('m1', 'x', 'y', 0, 1, 'succeeded', { pipeline: 'gone' })];
    expect(report(jobs).pipelines[0]).toMatchObject({ pipeline: 'gone', walks: 1, completed: 1 });
  });
});
