import type { FastifyInstance } from 'fastify';
import { cycleTimeReport } from '../../engine/cycletime.js';
import type { ApiContext } from '../context.js';

export function reportRoutes(app: FastifyInstance, { store, content }: ApiContext) {
  app.get(
    '/api/v1/reports/cycle-time',
    {
      config: { permission: 'reports:read' },
      schema: {
        description: 'Queue wait, run time and cycle time (p50/p95/max) and failure rates per task, stage and pipeline',
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            since: { type: 'string', description: 'window: jobs created in the last 30m, 24h, 7d… (default 24h)' },
            pipeline: { type: 'string', description: 'only this pipeline (work orders are left out)' },
          },
        },
      },
    },
    async (req) => {
      const q = req.query as { since?: string; pipeline?: string };
      return cycleTimeReport(store, content, q);
    },
  );
}
