/**
 * The secure values a job could know, as its log could show them: what JobLogs (joblog.ts) masks in every
 * chunk, the completion's tail and the stored report. A task's job knows its task's secure params (as
 * prepared for the machine, prepare.ts) and the secure outputs it set; an ad-hoc command can print
 * anything on the machine, so its log masks every secure value of the machine (adhoc.ts machineSecrets).
 * Plain functions over the content in use and the endpoint's sealer, inside the caller's transaction.
 */
import type { Machine } from '../model/machine.js';
import { isSealed } from '../model/secure.js';
import type { Tx } from '../store/store.js';
import { machineSecrets } from './adhoc.js';
import type { EndContext } from './complete.js';
import { secretTexts } from './logmask.js';
import { prepareTask, secretsOf } from './prepare.js';

/** What finding a job's secrets needs of the engine: the content in use and the sealer that opens values. */
export type SecretsContext = Pick<EndContext, 'content' | 'sealer'>;

/**
 * The secure values a job could know, as the log could show them: its task's secure params and outputs;
 * for an ad-hoc command, every secure value of the machine (machineSecrets). None for a job or machine
 * that no longer exists.
 */
export async function jobSecrets(c: SecretsContext, tx: Tx, jobId: string): Promise<string[]> {
  const job = await tx.getJob(jobId);
  const m = job ? await tx.getMachine(job.machineId) : undefined;
  if (!job || !m) return [];
  const content = c.content.current;
  let ctx: Parameters<typeof prepareTask>[4] = {};
  if (job.workOrderId) {
    const wo = await tx.getWorkOrder(job.workOrderId);
    if (wo?.command) return adhocSecrets(c, tx, m);
    const bp = wo ? content.objects.blueprints.get(wo.blueprint)?.def : undefined;
    ctx = { workOrder: wo ? { id: wo.id, params: wo.params } : undefined, blueprint: bp ? { name: bp.name, params: bp.params } : undefined };
  } else {
    const stage = job.stage ? content.objects.stages.get(job.stage)?.def : undefined;
    const pipeline = job.pipeline ? content.objects.pipelines.get(job.pipeline)?.def : undefined;
    ctx = { stage: stage ? { name: stage.name, params: stage.params } : undefined, pipeline: pipeline ? { name: pipeline.name, params: pipeline.params } : undefined };
  }
  const outputs = Object.keys(job.outputs).filter((k) => isSealed(m.outputs[k])).map((k) => openQuietly(c, m.outputs[k]));
  try {
    return [...secretsOf(prepareTask(content, c.sealer, m, job.task, ctx)), ...secretTexts(outputs)];
  } catch {
    return secretTexts(outputs);
  }
}

/**
 * What an ad-hoc command's log masks: every secure value of machine `m` (machineSecrets), with the params
 * of all its work orders, read in pages (bounded: at most 1000 pages of 1000).
 */
export async function adhocSecrets(c: SecretsContext, tx: Tx, m: Machine): Promise<string[]> {
  const params: Array<Record<string, unknown>> = [];
  for (let page = 0, offset = 0; page < 1000; page++) {
    const wos = await tx.listWorkOrders({ machineId: m.id, limit: 1000, offset });
    for (const wo of wos) if (!wo.command && Object.keys(wo.params).length > 0) params.push(wo.params);
    if (wos.length === 0) break;
    offset += wos.length;
  }
  return machineSecrets(c.content.current, c.sealer, m, params);
}

/** `v` opened with the endpoint's key; null when it cannot be (sealed by another endpoint's key). */
function openQuietly(c: Pick<SecretsContext, 'sealer'>, v: unknown): unknown {
  try {
    return c.sealer.open(v);
  } catch {
    return null;
  }
}
