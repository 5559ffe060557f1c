import type { FastifyInstance } from 'fastify';
import { publicJob, publicWorkOrder } from '../../engine/engine.js';
import { TaktError } from '../../model/errors.js';
import { prepareReboot } from '../reboot.js';
import { JOB_STATES, WORK_ORDER_STATES, type JobState, type WorkOrderState } from '../../model/machine.js';
import {
  MAX_ERROR_CHARS,
  MAX_EXIT_CODE,
  MAX_LOG_CHUNK_CHARS,
  MAX_LOG_SEQ,
  MAX_OUTPUT_BYTES,
  MAX_OUTPUTS,
  MAX_TAIL_CHUNKS,
  type CompleteRequest,
  type LogRequest,
  type LogResponse,
} from '../../model/protocol.js';
import { machineScope, requireOwnMachine, requireOwnMachineRef } from '../auth.js';
import { author, intQuery, whenGone, type ApiContext } from '../context.js';
import { Name, paramsObject } from './schemas.js';

// Every field a machine token sends is bounded here, before anything is read from or written to the
// store; what the schema cannot see (declared outputs, sizes as sent, the per-job log bound) the engine
// checks. Bounds: src/model/protocol.ts and docs/agent.md § Limits.

const logBody = {
  type: 'object',
  additionalProperties: false,
  required: ['seq', 'stream', 'data'],
  properties: {
    seq: { type: 'integer', minimum: 1, maximum: MAX_LOG_SEQ },
    stream: { enum: ['stdout', 'stderr', 'system'] },
    data: { type: 'string', minLength: 1, maxLength: MAX_LOG_CHUNK_CHARS },
  },
} as const;

/**
 * What the script asked with `takt-power` (protocol.ts TaskPowerRequest): at least one of a next boot
 * device and an action; `persistent` only with a device.
 */
export const taskPowerBody = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    nextBoot: { enum: ['pxe', 'disk'] },
    persistent: { type: 'boolean' },
    action: { enum: ['cycle', 'off'] },
  },
  dependencies: { persistent: ['nextBoot'] },
} as const;

/** An image the agent wrote and verified for the script's takt-image (protocol.ts ImageWritten). */
export const imageWrittenBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'version', 'sha256', 'size', 'target'],
  properties: {
    name: { type: 'string', maxLength: 63 },
    version: { type: 'string', maxLength: 128 },
    sha256: { type: 'string', pattern: '^[0-9a-f]{64}$' },
    size: { type: 'integer', minimum: 1 },
    target: { type: 'string', minLength: 1, maxLength: 4096 },
  },
} as const;

const completeBody = {
  type: 'object',
  additionalProperties: false,
  required: ['exitCode', 'outputs'],
  properties: {
    exitCode: { anyOf: [{ type: 'integer', minimum: 0, maximum: MAX_EXIT_CODE }, { type: 'null' }] },
    // Characters here; the engine measures each value as sent (JSON) against the same number of bytes.
    outputs: { type: 'object', maxProperties: MAX_OUTPUTS, additionalProperties: { type: 'string', maxLength: MAX_OUTPUT_BYTES } },
    timedOut: { type: 'boolean' },
    error: { type: 'string', maxLength: MAX_ERROR_CHARS },
    // The end of the log, as POST …/log chunks; the agent keeps the whole request within the body limit.
    log: { type: 'array', maxItems: MAX_TAIL_CHUNKS, items: logBody },
    claim: { type: 'boolean' },
    power: taskPowerBody,
    image: imageWrittenBody,
  },
} as const;

/** A heartbeat carries nothing (an empty object, or no body). */
const heartbeatBody = { type: ['object', 'null'], additionalProperties: false, maxProperties: 0 } as const;

export function jobRoutes(app: FastifyInstance, ctx: ApiContext) {
  const { engine, store } = ctx;

  app.get('/api/v1/jobs', { config: { permission: 'jobs:read', scope: 'list', machine: true } }, async (req) => {
    const q = req.query as Record<string, string | undefined>;
    if (q.state && !JOB_STATES.includes(q.state as JobState)) throw new TaktError('bad_request', `state must be one of ${JOB_STATES.join(', ')}`, { path: 'state' });
    if (q.order !== undefined && q.order !== 'asc' && q.order !== 'desc') throw new TaktError('bad_request', "query parameter 'order' must be asc or desc", { path: 'order' });
    // A machine token lists only its own jobs (naming another machine, or none that exists, is 403).
    if (q.machine !== undefined) await requireOwnMachineRef(req.principal, q.machine, store);
    const machineId = machineScope(req.principal) ?? (q.machine ? (await engine.findMachine(q.machine)).id : undefined);
    const items = await store.listJobs({
      machineId,
      state: q.state as JobState | undefined,
      task: q.task,
      workOrderId: q.workorder,
      order: q.order === 'asc' ? 'asc' : 'desc',
      limit: intQuery(q.limit, 'limit', 100, 1000),
      offset: intQuery(q.offset, 'offset', 0),
    });
    return { items: items.map(publicJob) };
  });

  const ownJob = async (principal: Parameters<typeof requireOwnMachine>[0], id: string) => {
    const job = await store.getJob(id);
    // A machine gets the same 403 for a job that is not its own and one that does not exist.
    if (principal.kind === 'machine' && job?.machineId !== principal.machineId) requireOwnMachine(principal, '');
    if (!job) throw new TaktError('not_found', `job '${id}' not found`);
    return job;
  };

  app.get('/api/v1/jobs/:id', { config: { permission: 'jobs:read', scope: 'job', machine: true } }, async (req) => ownJob(req.principal, (req.params as { id: string }).id));

  app.get('/api/v1/jobs/:id/log', { config: { permission: 'jobs:secrets', scope: 'job', machine: true } }, async (req) => {
    const job = await ownJob(req.principal, (req.params as { id: string }).id);
    const q = req.query as Record<string, string | undefined>;
    const chunks = await store.getLogs(job.id, intQuery(q.after, 'after', 0), intQuery(q.limit, 'limit', 1000, 10_000));
    return { job: { id: job.id, state: job.state, reason: job.reason, exitCode: job.exitCode }, chunks };
  });

  app.post('/api/v1/jobs/:id/log', { config: { permission: 'jobs:admin', scope: 'job', machine: true }, schema: { body: logBody } }, async (req, reply) => {
    const { cut } = await engine.appendLog((req.params as { id: string }).id, machineScope(req.principal), req.body as LogRequest);
    if (cut) return { logCut: true } satisfies LogResponse;
    reply.code(204);
  });

  // `?waitMs=N` (0…60000): the answer is held up to N ms and comes at once when the job ends meanwhile
  // (an operator cancelled it), so the agent kills the script without waiting for its next heartbeat.
  app.post('/api/v1/jobs/:id/heartbeat', { config: { permission: 'jobs:admin', scope: 'job', machine: true }, schema: { body: heartbeatBody } }, async (req, reply) => {
    const waitMs = intQuery((req.query as { waitMs?: string }).waitMs, 'waitMs', 0, 60_000)!;
    const aborted = whenGone(reply.raw);
    try {
      return await engine.heartbeat((req.params as { id: string }).id, machineScope(req.principal), waitMs, aborted.signal);
    } finally {
      aborted.done();
    }
  });

  // An operator cancels a running job: it ends `cancelled by <who>: <reason>`; its agent kills the script's
  // process group; a pipeline job leaves its machine paused on the task, a work-order job cancels its work order.
  app.post(
    '/api/v1/jobs/:id/cancel',
    { config: { permission: 'jobs:run', scope: 'job' }, schema: { body: { type: ['object', 'null'], additionalProperties: false, properties: { reason: { type: 'string', minLength: 1, maxLength: 2000 } } } } },
    async (req) => publicJob(await engine.cancelJob((req.params as { id: string }).id, author(req), (req.body as { reason?: string } | null)?.reason)),
  );

  app.post('/api/v1/jobs/:id/complete', { config: { permission: 'jobs:admin', scope: 'job', machine: true }, schema: { body: completeBody } }, async (req) => {
    const answer = await engine.complete((req.params as { id: string }).id, machineScope(req.principal), req.body as CompleteRequest);
    // A network-booted machine about to reboot: into its next stage's bootenv (the handed claim said so:
    // its boot device goes first), or because its task asked (exit 64: as it is). Its boot is waited for.
    if (ctx.power && req.principal.kind === 'machine' && (answer.action === 'reboot' || answer.next?.action === 'reboot')) {
      const m = await engine.findMachine(req.principal.machineId);
      if (answer.next?.action === 'reboot') await prepareReboot(ctx, m, "the reboot into its stage's bootenv");
      else if (m.boot) ctx.power.expectBoot(m, 'the reboot its task asked for (exit 64)');
    }
    return answer;
  });

  // Work orders: blueprints run on a machine without moving its pipeline position.
  app.get('/api/v1/workorders', { config: { permission: 'workorders:read', scope: 'list' } }, async (req) => {
    const q = req.query as Record<string, string | undefined>;
    if (q.state && !WORK_ORDER_STATES.includes(q.state as WorkOrderState)) {
      throw new TaktError('bad_request', `state must be one of ${WORK_ORDER_STATES.join(', ')}`, { path: 'state' });
    }
    const machineId = q.machine ? (await engine.findMachine(q.machine)).id : undefined;
    const items = await store.listWorkOrders({
      machineId,
      state: q.state as WorkOrderState | undefined,
      limit: intQuery(q.limit, 'limit', 100, 1000),
      offset: intQuery(q.offset, 'offset', 0),
    });
    return { items: items.map(publicWorkOrder) };
  });

  app.post(
    '/api/v1/workorders',
    {
      config: { permission: 'workorders:run' },
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['machine', 'blueprint'],
          properties: {
            machine: { type: 'string', minLength: 1 },
            blueprint: Name,
            params: paramsObject,
            allowUndeclared: { type: 'boolean', description: 'store params no task of the blueprint declares (default false: refused with a suggestion)' },
          },
        },
      },
    },
    async (req, reply) => {
      const wo = await engine.createWorkOrder(req.body as { machine: string; blueprint: string; allowUndeclared?: boolean }, author(req));
      reply.code(201);
      return publicWorkOrder(wo);
    },
  );

  app.get('/api/v1/workorders/:id', { config: { permission: 'workorders:read', scope: 'workorder' } }, async (req) => {
    const wo = await store.getWorkOrder((req.params as { id: string }).id);
    if (!wo) throw new TaktError('not_found', `work order '${(req.params as { id: string }).id}' not found`);
    return publicWorkOrder(wo);
  });

  app.delete('/api/v1/workorders/:id', { config: { permission: 'workorders:run', scope: 'workorder' } }, async (req) => publicWorkOrder(await engine.cancelWorkOrder((req.params as { id: string }).id, author(req))));

  // A failed or cancelled work order continues from the task it stopped on, with its original params.
  app.post('/api/v1/workorders/:id/resume', { config: { permission: 'workorders:run', scope: 'workorder' } }, async (req) => publicWorkOrder(await engine.resumeWorkOrder((req.params as { id: string }).id, author(req))));
}
