/**
 * The end of a job: `settle` is the single place where a job becomes terminal, whichever way it ended
 * (completed, lost, cancelled, handed back, abandoned), and moves its machine or work order on; with it,
 * the checks a completion's report goes through (typed outputs, promises kept, the report as it is kept).
 * Plain functions over an explicit context (EndContext), called by the engine inside its transactions.
 */
import { isSecureParam, type ContentSet } from '../model/content.js';
import { TaktError } from '../model/errors.js';
import { checkExpectations } from '../model/expect.js';
import { IMAGE_JOB_OUTPUT } from '../model/image.js';
import type { Job, Machine, WorkOrder } from '../model/machine.js';
import type { CompleteRequest, CompleteResponse, ImageWritten } from '../model/protocol.js';
import { maskValues, type Sealer } from '../model/secure.js';
import { validateValue } from '../model/validate.js';
import type { Tx } from '../store/store.js';
import type { ContentService } from './content.js';
import type { EngineOptions } from './engine.js';
import type { JobLogs } from './joblog.js';
import type { Masker } from './logmask.js';
import { printable, refusedOutputs } from './outputs.js';
import { decideTaskPower, type TaskPowerPlan } from './taskpower.js';
import { afterPipelineJob, afterWorkOrderJob, blueprintShape, judgeJob, pipelineOrder, remainingSteps, type JobOutcome, type PipelineShape } from './transitions.js';
import { publicJob, publicMachine, publicWorkOrder } from './views.js';

/** What ending a job needs of the engine: its content, sealer, job logs, options and pipeline shapes. */
export interface EndContext {
  readonly content: ContentService;
  readonly sealer: Sealer;
  /** Each job's log; settle closes it (joblog.ts). */
  readonly logs: JobLogs;
  /** `power`: whether a power port carries out tasks' power requests (taskpower.ts). */
  readonly opts: Pick<EngineOptions, 'power'>;
  /** The pipeline's stages and their tasks in `content`; null when it has no such pipeline (Engine.shapeOf). */
  shapeOf(content: ContentSet, pipeline: string): PipelineShape | null;
}

/** What settling a job decided: the machine after it, the ended job, and what the agent is told to do. */
export interface Settled {
  machine: Machine;
  job: Job;
  action: CompleteResponse['action'];
  /** A task's power request to carry out once the transaction has committed (taskpower.ts). */
  power?: TaskPowerPlan;
}

/**
 * Ends a job with an outcome and moves its machine (or work order) on. The single place where a job
 * becomes terminal, whichever way it ended. `deferMachine`: leave the machine unwritten for the caller, who writes it once with more changes (a
 * completion followed by a claim: one machine write and one event per job instead of two).
 */
export async function settle(c: EndContext, tx: Tx, m: Machine, job: Job, outcome: JobOutcome, outputs: Record<string, unknown> = {}, report?: CompleteRequest, deferMachine = false): Promise<Settled> {
  const content = c.content.current;
  let next: Machine = { ...m, currentJob: m.currentJob === job.id ? null : m.currentJob };
  let verdict: { state: Job['state']; reason: string | null };
  let action: CompleteResponse['action'] = 'continue';
  if (job.kind === 'workorder') {
    const wo = job.workOrderId ? await tx.getWorkOrder(job.workOrderId) : undefined;
    const taskCount = wo?.command ? 1 : wo ? (content.objects.blueprints.get(wo.blueprint)?.def.tasks.length ?? 0) : 0;
    const d = afterWorkOrderJob(wo ?? { taskIndex: 0 }, taskCount, job.task, outcome, m.power);
    verdict = d.job;
    action = d.action;
    next.power = d.power;
    const bp = wo && !wo.command ? content.objects.blueprints.get(wo.blueprint)?.def : undefined;
    let passed = wo?.passed;
    if (wo && bp) {
      // By identity: the step this job ran is the first not yet passed that has its task (what nextWork
      // located); a success that moves on adds its key, and what is left decides whether it is done.
      const shape = blueprintShape(bp);
      passed = woPassed(wo, bp);
      const step = remainingSteps(shape, passed).find((x) => x.task === job.task);
      if (step && d.job.state === 'succeeded' && d.workOrder.taskIndex !== wo.taskIndex) passed = [...passed, step.key];
      if (d.workOrder.state === 'running' || d.workOrder.state === 'succeeded') {
        const left = remainingSteps(shape, passed);
        const order = pipelineOrder(shape);
        d.workOrder = { ...d.workOrder, state: left.length === 0 ? 'succeeded' : 'running', taskIndex: left.length === 0 ? order.length : order.findIndex((x) => x.key === left[0]!.key) };
      }
    }
    if (wo && wo.state === 'running') {
      const updated = { ...wo, ...d.workOrder, ...(passed ? { passed } : {}), finishedAt: d.workOrder.state === 'running' ? null : new Date().toISOString() };
      await tx.updateWorkOrder(updated);
      tx.emit(`workorders.update.${wo.id}`, publicWorkOrder(updated));
    }
  } else {
    const shape = job.pipeline && job.pipeline === m.pipeline ? c.shapeOf(content, job.pipeline) : null;
    const retries = content.objects.tasks.get(job.task)?.def.retries ?? 0;
    // A machine paused while the job ran still moves past it (transitions.afterPipelineJob).
    if (shape && (m.state === 'running' || m.state === 'paused') && m.currentJob === job.id) {
      const d = afterPipelineJob(m, shape, job.task, outcome, retries);
      verdict = d.job;
      action = d.action;
      // d.machine is the whole machine moved on; the job that ended is no longer its current one.
      next = { ...next, ...d.machine, currentJob: next.currentJob };
    } else {
      // The machine was restarted or reassigned while this job ran: record the job, leave the machine be.
      verdict = { state: outcome.kind === 'cancelled' ? 'cancelled' : 'failed', reason: 'the machine moved on while this job ran' };
      if (outcome.kind === 'cancelled' || outcome.kind === 'handed-back') verdict = judgeJob(job.task, outcome);
      else if (outcome.kind === 'exit') verdict = { state: 'cancelled', reason: 'the machine was restarted or reassigned while this job ran' };
    }
  }
  // A task's power request (takt-power): decided here, carried out by the power port after the commit.
  let jobPower: string | undefined;
  let powerPlan: TaskPowerPlan | undefined;
  if (report?.power) {
    const d = decideTaskPower(report.power, { id: job.id, task: job.task, succeeded: verdict.state === 'succeeded' }, m, { machine: next, action }, !!c.opts.power);
    ({ machine: next, action, jobPower, plan: powerPlan } = d);
  }
  const finished: Job = {
    ...job,
    state: verdict.state,
    reason: verdict.reason,
    ...(jobPower ? { power: jobPower } : {}),
    exitCode: outcome.kind === 'exit' || outcome.kind === 'invalid' ? outcome.exitCode : null,
    // The image its agent wrote (takt-image), on the job only: a record, not a value for later tasks.
    outputs: { ...maskValues(outputs), ...(report?.image && verdict.state === 'succeeded' ? { [IMAGE_JOB_OUTPUT]: report.image } : {}) },
    finishedAt: new Date().toISOString(),
    leaseExpiresAt: null,
  };
  await tx.finishJob(finished, report ? { report, action } : undefined);
  await c.logs.end(tx, job.id);
  tx.emit(`jobs.update.${job.id}`, publicJob(finished));
  // Observed state: what the machine now has. Not a desired-state change, so no history entry.
  if (verdict.state === 'succeeded' && Object.keys(outputs).length > 0) next.outputs = { ...next.outputs, ...outputs };
  next.updatedAt = new Date().toISOString();
  if (!deferMachine) await saveMachine(tx, next);
  return { machine: next, job: finished, action, ...(powerPlan ? { power: powerPlan } : {}) };
}

/** Machine `id`, locked for the rest of the transaction. @throws TaktError not_found when it does not exist. */
export async function lockedMachine(tx: Tx, id: string): Promise<Machine> {
  const m = await tx.lockMachine(id);
  if (!m) throw new TaktError('not_found', `machine '${id}' not found`);
  return m;
}

/** Ends work order `wo` as `state` with `reason`, with its `workorders.update.<id>` event. */
export async function finishWorkOrder(tx: Tx, wo: WorkOrder, state: WorkOrder['state'], reason: string | null): Promise<WorkOrder> {
  const done = { ...wo, state, reason, finishedAt: new Date().toISOString() };
  await tx.updateWorkOrder(done);
  tx.emit(`workorders.update.${wo.id}`, publicWorkOrder(done));
  return done;
}

/** Writes machine `m` with its `machines.update.<id>` event. */
export async function saveMachine(tx: Tx, m: Machine): Promise<void> {
  await tx.updateMachine(m);
  tx.emit(`machines.update.${m.id}`, publicMachine(m));
}

/**
 * The report as it is kept to recognise a resend: secure outputs as an endpoint-keyed HMAC (never the
 * value, never a bare hash of it), the agent's error text masked.
 */
export function keptReport(c: Pick<EndContext, 'content' | 'sealer'>, report: CompleteRequest, masker: Masker): CompleteRequest {
  const outputs = Object.fromEntries(Object.entries(report.outputs ?? {}).map(([k, v]) => [k, isSecureOutput(c, k) ? `hmac:${c.sealer.digest(v)}` : v]));
  return { ...report, outputs, ...(report.error !== undefined ? { error: masker.mask(report.error) } : {}) };
}

/**
 * An image the agent says it wrote must be the catalog's: that version, with that digest and size. Null
 * when it is; else why not (the job then fails: the build record must never name bytes the catalog does
 * not have).
 */
export async function checkWrittenImage(tx: Pick<Tx, 'getImage'>, w: ImageWritten): Promise<string | null> {
  const i = await tx.getImage(w.name, w.version);
  const ref = `${w.name}@${w.version}`;
  if (!i) return `it reported writing image ${ref}, which is not in the catalog (removed while it was written?)`;
  if (i.sha256 !== w.sha256 || i.size !== w.size) return `it reported writing image ${ref} with sha256 ${w.sha256} (${w.size} bytes), but the catalog has sha256 ${i.sha256} (${i.size} bytes)`;
  return null;
}

/** A task that exits 0 must have set every output it promised, to a valid value, and meet its expectations. */
export function checkPromises(c: Pick<EndContext, 'content' | 'sealer'>, job: Job, raw: Record<string, string>, values: Record<string, unknown>): string | null {
  const def = c.content.current.objects.tasks.get(job.task)?.def;
  if (!def) return null;
  const open: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(values)) open[k] = c.sealer.open(v);
  for (const [name, schema] of Object.entries(def.outputs ?? {})) {
    if (!Object.hasOwn(raw, name)) return `it did not set its promised output '${name}' (takt-set ${name} VALUE)`;
    const problems = validateValue(schema, open[name]);
    const shown = isSecureOutput(c, name) ? '(secure value)' : JSON.stringify(open[name]);
    if (problems.length) return `its output ${name} = ${shown} ${problems[0]!.path ? `${problems[0]!.path} ` : ''}${problems[0]!.message}`;
  }
  if (!def.expect?.length) return null;
  const used = Object.fromEntries(Object.entries(job.params).map(([k, p]) => [k, p.value]));
  return checkExpectations(def.expect, { ...used, ...open });
}

/**
 * Types raw `takt-set` strings by their param's schema and validates them. Only the task's declared
 * outputs are accepted, each within its size limit as sent: anything else fails the job, named.
 */
export function typeOutputs(c: Pick<EndContext, 'content' | 'sealer'>, raw: Record<string, string>, task: string): { values: Record<string, unknown>; problem: string | null } {
  const content = c.content.current;
  const promised = content.objects.tasks.get(task)?.def.outputs ?? {};
  const refused = refusedOutputs(raw, promised);
  if (refused) return { values: {}, problem: refused };
  const values: Record<string, unknown> = {};
  for (const [name, text] of Object.entries(raw)) {
    const def = content.objects.params.get(name)?.def;
    // The task's promise types the value too when no param definition exists.
    const schema = (def?.schema ?? promised[name]) as { type?: unknown } | undefined;
    let value: unknown = text;
    if (schema && schema.type !== 'string') {
      try {
        value = JSON.parse(text);
      } catch {
        value = text;
      }
    }
    if (schema) {
      const problems = validateValue(schema, value);
      if (problems.length > 0) {
        const shown = def?.secure ? '(secure value)' : `'${printable(text.length > 80 ? `${text.slice(0, 80)}…` : text)}'`;
        return { values: {}, problem: `its output ${name} = ${shown} ${problems[0]!.path ? `${problems[0]!.path} ` : ''}${problems[0]!.message}` };
      }
    }
    values[name] = def?.secure ? c.sealer.seal(value) : value;
  }
  return { values, problem: null };
}

/** Whether param `name` is declared secure in the content in use. */
export function isSecureOutput(c: Pick<EndContext, 'content'>, name: string): boolean {
  return isSecureParam(c.content.current, name);
}

/**
 * A work order's succeeded steps by identity. Work orders stored before migration 0014 have none: their
 * first `taskIndex` steps of the blueprint as it is now count as passed (what the index meant then).
 */
export function woPassed(wo: WorkOrder, bp: { name: string; tasks: readonly string[] }): string[] {
  return wo.passed ?? pipelineOrder(blueprintShape(bp)).slice(0, wo.taskIndex).map((s) => s.key);
}
