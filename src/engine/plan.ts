/**
 * Previews (`takt plan`): what a machine would run, as the engine would run it. The pure part, over the
 * content in use: each remaining task prepared for the machine, and which params an earlier task promises
 * as outputs. Engine.plan puts a machine's work orders and pipeline through it; Engine.assertStartable
 * uses it to refuse a pipeline whose required params have no value.
 */
import { isSecureParam, type ContentSet } from '../model/content.js';
import type { Machine, MachineClassification } from '../model/machine.js';
import type { Sealer } from '../model/secure.js';
import { prepareTask, type PreparedTask } from './prepare.js';
import { remainingSteps, type PipelineShape, type Step } from './transitions.js';

export type PlanParam = PreparedTask['params'][number] & { promisedBy?: string };

export interface PlanStep {
  stage: string | null;
  task: string;
  variant: string;
  noop: string | null;
  params: PlanParam[];
  missing: string[];
  error: string | null;
}

export interface Plan {
  machine: string;
  pipeline: string | null;
  state: Machine['state'];
  workOrders: Array<{ id: string; blueprint: string; steps: PlanStep[] }>;
  /**
   * `continue`: the steps left from where the machine stands (what a resume runs, for a stopped one);
   * `restart`: it is done (or idle), and these would run on a restart; `refused`: a resume would be
   * refused, because the content changed so that where to continue is ambiguous (see `refused`).
   */
  from: 'continue' | 'restart' | 'refused';
  refused: { message: string; change: 'vanished' | 'reordered'; tasks: Array<{ stage: string; task: string }> } | null;
  steps: PlanStep[];
  /** The classification rule that last gave the machine its profiles, environment and pipeline, and why; null: never classified. */
  classification: MachineClassification | null;
}

/** A pipeline's stages and their tasks, by name, in the content given; null when it has no such pipeline. */
export function pipelineShapeOf(content: ContentSet, pipeline: string): PipelineShape | null {
  const p = content.objects.pipelines.get(pipeline)?.def;
  if (!p) return null;
  return { name: p.name, stages: p.stages.map((s) => ({ name: s, tasks: content.objects.stages.get(s)?.def.tasks ?? [] })) };
}

/**
 * Plan steps from prepared tasks in run order. A param that an earlier task of the list promises as an
 * output is listed with `promisedBy` (the task that sets it); a required one is not missing, since it
 * will exist by the time its task runs.
 */
export function withPromises(content: ContentSet, list: Array<{ stage: string | null; task: string; prepared: PreparedTask }>): PlanStep[] {
  const promised = new Map<string, string>();
  return list.map(({ stage, task, prepared: p }) => {
    const def = content.objects.tasks.get(task)?.def;
    const required = def?.params?.required ?? [];
    const params: PlanParam[] = p.params.map((u) => (promised.has(u.name) ? { ...u, promisedBy: promised.get(u.name)! } : u));
    for (const name of [...required, ...(def?.params?.optional ?? [])]) {
      const by = promised.get(name);
      if (by && !params.some((u) => u.name === name)) params.push({ name, value: null, from: `output of ${by}`, secure: isSecureParam(content, name), required: required.includes(name), promisedBy: by });
    }
    const missing = p.missing.filter((n) => !promised.has(n));
    const error = missing.length === 0 && p.missing.length > 0 ? null : p.error;
    for (const o of Object.keys(def?.outputs ?? {})) promised.set(o, stage ? `${stage}/${task}` : task);
    return { stage, task, variant: p.variant, noop: p.noop, params, missing, error };
  });
}

/**
 * The tasks of the pipeline that have not succeeded in a pass where `passed` have, in run order, each
 * prepared for the machine. `missing` here is what prepareTask found: see `withPromises` for outputs.
 */
export function pipelineSteps(content: ContentSet, sealer: Sealer, m: Machine, pipelineName: string, passed: readonly string[]): Array<{ stage: string; task: string; prepared: PreparedTask }> {
  const shape = pipelineShapeOf(content, pipelineName);
  const pipeline = content.objects.pipelines.get(pipelineName)?.def;
  if (!shape || !pipeline) return [];
  return remainingSteps(shape, passed).map((at: Step) => {
    const stage = content.objects.stages.get(at.stage)?.def;
    const ctx = { stage: { name: at.stage, params: stage?.params }, pipeline: { name: pipeline.name, params: pipeline.params } };
    return { stage: at.stage, task: at.task, prepared: prepareTask(content, sealer, m, at.task, ctx) };
  });
}
