import type { FastifyInstance } from 'fastify';
import { approver, author, type ApiContext } from '../context.js';
import { BUSY_POLICIES } from '../../model/rollout.js';
import { ROLE_NAMES } from '../../model/permissions.js';
import type { RolloutInput } from '../../engine/rollouts.js';
import { Name } from './schemas.js';

const createBody = {
  type: 'object',
  additionalProperties: false,
  required: [],
  properties: {
    pipeline: Name,
    blueprint: Name,
    select: {
      type: 'object',
      additionalProperties: { type: 'string' },
      description: 'machine selection: state, pipeline, environment, broker, name, builtWith (e.g. demo@<1.2.0, or image:debian-min@<2), stale (true), facts.<path> (an observed fact, e.g. facts.os.id: debian)',
    },
    selector: { type: 'string', maxLength: 4096, description: 'label selector, e.g. role=web,env!=prod; combines with select' },
    canary: { type: 'integer', minimum: 0, description: 'machines in the first wave' },
    batch: { type: 'integer', minimum: 1, description: 'machines per later wave' },
    maxInFlight: { type: 'integer', minimum: 1, description: 'machines busy at once' },
    maxFailures: { type: 'integer', minimum: 0, description: 'failures tolerated; one more stops the rollout (andon)' },
    approveBetweenWaves: { type: 'boolean' },
    approval: {
      type: 'object',
      additionalProperties: false,
      required: ['role'],
      properties: { role: { type: 'string', enum: [...ROLE_NAMES] }, twoPerson: { type: 'boolean' } },
      description: 'who may approve its waves: holders of this role (and admins); twoPerson: not the rollout\'s author',
    },
    busy: { type: 'string', enum: [...BUSY_POLICIES], description: 'busy machines (a running job, awaiting approval, paused): wait (default), skip, or cancel their job' },
    params: {
      type: 'object',
      maxProperties: 100,
      description: 'machine params set on each machine as the rollout starts it (pipeline rollouts), e.g. {"image": "debian-min@2.0.0"}; in history as the rollout\'s change',
    },
    dryRun: { type: 'boolean', description: 'answer what the rollout would do to each machine (200), creating nothing' },
  },
} as const;

export function rolloutRoutes(app: FastifyInstance, { rollouts, churn }: ApiContext) {
  app.get('/api/v1/rollouts', { config: { permission: 'rollouts:read' } }, async () => ({ items: await rollouts.list() }));
  app.post('/api/v1/rollouts', { config: { permission: 'rollouts:run' }, schema: { body: createBody } }, async (req, reply) => {
    const { dryRun, ...input } = req.body as RolloutInput & { dryRun?: boolean };
    if (dryRun) return rollouts.dryRun(input);
    const r = await rollouts.create(input, author(req));
    reply.code(201);
    return r;
  });
  app.get('/api/v1/rollouts/:id', { config: { permission: 'rollouts:read' } }, async (req) => rollouts.view((req.params as { id: string }).id));
  for (const verb of ['pause', 'resume', 'abort', 'approve', 'retry'] as const) {
    app.post(`/api/v1/rollouts/:id/${verb}`, { config: { permission: verb === 'approve' ? 'rollouts:approve' : 'rollouts:run' } }, async (req) =>
      verb === 'approve' ? rollouts.approve((req.params as { id: string }).id, approver(req)) : rollouts[verb]((req.params as { id: string }).id, author(req)),
    );
  }
  app.post('/api/v1/andon/pull', { config: { permission: 'rollouts:run' } }, async (req) => ({ paused: await rollouts.andon(author(req)) }));

  app.get('/api/v1/policies/churn', { config: { permission: 'rollouts:read' } }, async () => churn.status());
  app.put(
    '/api/v1/policies/churn',
    {
      config: { permission: 'rollouts:write' },
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['maxAge', 'budget'],
          properties: { maxAge: { type: 'string', description: 'e.g. 30d' }, budget: { type: 'string', description: 'e.g. 10% or 3' } },
        },
      },
    },
    async (req) => churn.set(req.body as { maxAge: string; budget: string }, author(req)),
  );
  app.delete('/api/v1/policies/churn', { config: { permission: 'rollouts:write' } }, async (req) => {
    await churn.clear(author(req));
    return { deleted: 'churn' };
  });
}
