/**
 * The line's beat: queue wait, run time and cycle time per task, stage and pipeline, with failure rates,
 * computed from the jobs the store already keeps (no extra bookkeeping on the hot path).
 *
 * Definitions (docs/operations.md repeats them for operators):
 * - run: a job's claim to its result.
 * - queue wait: the end of the previous task in the same pipeline walk (or work order) to this job's
 *   claim. It includes waiting for an approval, for an operator's resume and the agent's dispatch gap. The
 *   first job of a walk has none: how long a machine sat assigned before its agent came is not the line's.
 * - walk: one machine's pass through a pipeline, from its first job to the last task of the last stage.
 *   A restart begins a new walk; a resume continues the same one.
 * - cycle: a task's queue wait plus run; a stage's from the end of the previous stage (so an approval
 *   gate counts) to its last task's end; a pipeline's from its walk's first claim to its last result.
 * - failure rate: runs (tasks), stage passes or walks with at least one failed or lost job, over all.
 */
import type { ContentSet, PipelineDef, StageDef } from '../model/content.js';
import { DURATION_RANGES, parseDuration } from '../model/duration.js';
import { TaktError } from '../model/errors.js';
import type { Job } from '../model/machine.js';
import type { Store } from '../store/store.js';
import type { ContentService } from './content.js';

export interface Spread {
  /** How many values these figures summarise. */
  n: number;
  p50: number;
  p95: number;
  max: number;
}

export interface TaskCycle {
  /** The pipeline the task ran in, or null for a work order. */
  pipeline: string | null;
  /** The blueprint of a work order, or null for a pipeline job. */
  blueprint: string | null;
  stage: string | null;
  task: string;
  runs: number;
  failed: number;
  failureRate: number;
  queueMs: Spread | null;
  runMs: Spread | null;
  cycleMs: Spread | null;
}

export interface StageCycle {
  pipeline: string;
  stage: string;
  passes: number;
  failed: number;
  failureRate: number;
  cycleMs: Spread | null;
}

export interface PipelineCycle {
  pipeline: string;
  walks: number;
  completed: number;
  failed: number;
  failureRate: number;
  cycleMs: Spread | null;
}

export interface CycleTimeReport {
  since: string;
  until: string;
  jobs: number;
  tasks: TaskCycle[];
  stages: StageCycle[];
  pipelines: PipelineCycle[];
}

/** Where a pipeline begins and ends, to tell a restart and a finished walk. */
export interface PipelineShape {
  first: { stage: string; task: string };
  last: { stage: string; task: string };
}

export function pipelineShapes(set: ContentSet): (name: string) => PipelineShape | undefined {
  return (name) => {
    const p = set.objects.pipelines.get(name)?.def as PipelineDef | undefined;
    if (!p) return undefined;
    const stage = (s: string | undefined) => (s ? (set.objects.stages.get(s)?.def as StageDef | undefined) : undefined);
    const firstStage = stage(p.stages[0]);
    const lastStage = stage(p.stages[p.stages.length - 1]);
    if (!firstStage || !lastStage) return undefined;
    return {
      first: { stage: firstStage.name, task: firstStage.tasks[0]! },
      last: { stage: lastStage.name, task: lastStage.tasks[lastStage.tasks.length - 1]! },
    };
  };
}

/** Nearest-rank percentiles; null when there is nothing to summarise. */
export function spread(values: number[]): Spread | null {
  if (values.length === 0) return null;
  const v = [...values].sort((a, b) => a - b);
  const rank = (p: number) => v[Math.min(v.length - 1, Math.max(0, Math.ceil((p / 100) * v.length) - 1))]!;
  return { n: v.length, p50: rank(50), p95: rank(95), max: v[v.length - 1]! };
}

const failedJob = (j: Job) => j.state === 'failed' || j.state === 'lost';
const ms = (iso: string) => Date.parse(iso);

interface TaskAcc extends Pick<TaskCycle, 'pipeline' | 'blueprint' | 'stage' | 'task' | 'runs' | 'failed'> {
  queue: number[];
  run: number[];
  cycle: number[];
}

interface Walk {
  pipeline: string;
  jobs: Job[];
}

/**
 * Computes the report from jobs (any order) created in the window. `blueprintOf` names a work order's
 * blueprint; `shapeOf` gives a pipeline's first and last task (undefined when it no longer exists: its
 * walks then count as completed when their last job succeeded).
 */
export function computeCycleTimes(
  jobs: Job[],
  window: { since: string; until: string },
  shapeOf: (pipeline: string) => PipelineShape | undefined,
  blueprintOf: (workOrderId: string) => string | undefined,
): CycleTimeReport {
  const byMachine = new Map<string, Job[]>();
  for (const j of jobs) {
    const list = byMachine.get(j.machineId) ?? [];
    list.push(j);
    byMachine.set(j.machineId, list);
  }

  const tasks = new Map<string, TaskAcc>();
  const walks: Walk[] = [];
  const readyAt = new Map<string, number>();

  for (const list of byMachine.values()) {
    list.sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.id < b.id ? -1 : 1));
    let walk: Walk | null = null;
    const lastOfWorkOrder = new Map<string, Job>();
    for (const j of list) {
      let prev: Job | undefined;
      if (j.kind === 'workorder' && j.workOrderId) {
        prev = lastOfWorkOrder.get(j.workOrderId);
        lastOfWorkOrder.set(j.workOrderId, j);
      } else if (j.pipeline) {
        const shape = shapeOf(j.pipeline);
        const restart = walk !== null && shape !== undefined && j.stage === shape.first.stage && j.task === shape.first.task && walk.jobs.some((w) => w.stage !== j.stage || w.task !== j.task);
        if (!walk || walk.pipeline !== j.pipeline || restart) {
          walk = { pipeline: j.pipeline, jobs: [] };
          walks.push(walk);
        }
        prev = walk.jobs[walk.jobs.length - 1];
        walk.jobs.push(j);
      }
      if (prev?.finishedAt && prev.finishedAt <= j.createdAt) readyAt.set(j.id, ms(prev.finishedAt));

      const blueprint = j.kind === 'workorder' && j.workOrderId ? (blueprintOf(j.workOrderId) ?? null) : null;
      const key = `${j.pipeline ?? ''}\0${blueprint ?? ''}\0${j.stage ?? ''}\0${j.task}`;
      const acc = tasks.get(key) ?? { pipeline: j.pipeline, blueprint, stage: j.stage, task: j.task, runs: 0, failed: 0, queue: [], run: [], cycle: [] };
      tasks.set(key, acc);
      if (!j.finishedAt) continue; // still running: counted once it ends
      acc.runs++;
      if (failedJob(j)) acc.failed++;
      const run = ms(j.finishedAt) - ms(j.createdAt);
      const ready = readyAt.get(j.id);
      const queue = ready === undefined ? undefined : ms(j.createdAt) - ready;
      acc.run.push(run);
      if (queue !== undefined) acc.queue.push(queue);
      acc.cycle.push(run + (queue ?? 0));
    }
  }

  const stages = new Map<string, { pipeline: string; stage: string; passes: number; failed: number; cycle: number[] }>();
  const pipelines = new Map<string, { walks: number; completed: number; failed: number; cycle: number[] }>();
  for (const w of walks) {
    const shape = shapeOf(w.pipeline);
    const last = w.jobs[w.jobs.length - 1]!;
    const completed = last.state === 'succeeded' && (!shape || (last.stage === shape.last.stage && last.task === shape.last.task));
    const p = pipelines.get(w.pipeline) ?? { walks: 0, completed: 0, failed: 0, cycle: [] };
    pipelines.set(w.pipeline, p);
    p.walks++;
    if (w.jobs.some(failedJob)) p.failed++;
    if (completed) {
      p.completed++;
      p.cycle.push(ms(last.finishedAt!) - ms(w.jobs[0]!.createdAt));
    }

    // Stage passes: runs of consecutive jobs in one stage. A pass is finished when the walk moved on to
    // another stage, or when the walk completed.
    let start = 0;
    for (let i = 1; i <= w.jobs.length; i++) {
      if (i < w.jobs.length && w.jobs[i]!.stage === w.jobs[start]!.stage) continue;
      const pass = w.jobs.slice(start, i);
      const stage = pass[0]!.stage ?? '';
      const key = `${w.pipeline}\0${stage}`;
      const s = stages.get(key) ?? { pipeline: w.pipeline, stage, passes: 0, failed: 0, cycle: [] };
      stages.set(key, s);
      const finished = i < w.jobs.length || completed;
      const end = pass[pass.length - 1]!.finishedAt;
      if (finished && end) {
        s.passes++;
        if (pass.some(failedJob)) s.failed++;
        s.cycle.push(ms(end) - (readyAt.get(pass[0]!.id) ?? ms(pass[0]!.createdAt)));
      } else if (pass.some(failedJob)) {
        // Stopped here: the pass is not over, but its failure is the stage's.
        s.passes++;
        s.failed++;
      }
      start = i;
    }
  }

  const rate = (failed: number, of: number) => (of === 0 ? 0 : failed / of);
  // By pipeline (work orders last, by blueprint); within one, the order the line first ran them in.
  const byName = (a: { pipeline: string | null; blueprint?: string | null }, b: { pipeline: string | null; blueprint?: string | null }) =>
    `${a.pipeline ?? '~'}\0${a.blueprint ?? ''}`.localeCompare(`${b.pipeline ?? '~'}\0${b.blueprint ?? ''}`);

  return {
    since: window.since,
    until: window.until,
    jobs: jobs.length,
    tasks: [...tasks.values()]
      .filter((t) => t.runs > 0)
      .map((t) => ({
        pipeline: t.pipeline,
        blueprint: t.blueprint,
        stage: t.stage,
        task: t.task,
        runs: t.runs,
        failed: t.failed,
        failureRate: rate(t.failed, t.runs),
        queueMs: spread(t.queue),
        runMs: spread(t.run),
        cycleMs: spread(t.cycle),
      }))
      .sort(byName),
    stages: [...stages.values()]
      .filter((s) => s.passes > 0)
      .map((s) => ({ pipeline: s.pipeline, stage: s.stage, passes: s.passes, failed: s.failed, failureRate: rate(s.failed, s.passes), cycleMs: spread(s.cycle) }))
      .sort(byName),
    pipelines: [...pipelines.entries()]
      .map(([pipeline, p]) => ({ pipeline, walks: p.walks, completed: p.completed, failed: p.failed, failureRate: rate(p.failed, p.walks), cycleMs: spread(p.cycle) }))
      .sort(byName),
  };
}

const PAGE = 1000;
/** A report reads at most this many jobs; past it the window is too wide to be worth the wait. */
const MAX_JOBS = 500_000;

/** Reads the jobs of a window from the store and computes the report. */
export async function cycleTimeReport(store: Store, content: ContentService, opts: { since?: string; pipeline?: string; now?: Date }): Promise<CycleTimeReport> {
  const now = opts.now ?? new Date();
  const sinceMs = parseDuration(opts.since ?? '24h', 'since', DURATION_RANGES.window);
  const since = new Date(now.getTime() - sinceMs).toISOString();
  if (opts.pipeline && !content.current.objects.pipelines.has(opts.pipeline)) {
    throw new TaktError('not_found', `pipeline '${opts.pipeline}' not found; takt content list pipelines shows them`, { path: 'pipeline' });
  }
  const jobs: Job[] = [];
  for (let offset = 0; ; offset += PAGE) {
    const page = await store.listJobs({ since, order: 'asc', limit: PAGE, offset });
    jobs.push(...page);
    if (page.length < PAGE) break;
    if (jobs.length >= MAX_JOBS) throw new TaktError('bad_request', `more than ${MAX_JOBS} jobs since ${since}; ask for a shorter window with --since`, { path: 'since' });
  }
  const picked = opts.pipeline ? jobs.filter((j) => j.pipeline === opts.pipeline) : jobs;
  const blueprints = new Map<string, string>();
  for (const id of new Set(picked.flatMap((j) => (j.workOrderId ? [j.workOrderId] : [])))) {
    const wo = await store.getWorkOrder(id);
    if (wo) blueprints.set(id, wo.blueprint);
  }
  return computeCycleTimes(picked, { since, until: now.toISOString() }, pipelineShapes(content.current), (id) => blueprints.get(id));
}
