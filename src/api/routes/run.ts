/**
 * POST /api/v1/run: an ad-hoc command on many machines (`takt run`), queued as one recorded work order
 * per machine, all or none, in one transaction (engine.createWorkOrders). The caller follows the work
 * orders and their jobs' logs through the usual routes.
 */
import type { FastifyInstance } from 'fastify';
import { publicWorkOrder } from '../../engine/engine.js';
import { MAX_COMMAND_BYTES } from '../../engine/adhoc.js';
import { TaktError } from '../../model/errors.js';
import { parseLabelSelector } from '../../model/labels.js';
import type { Machine } from '../../model/machine.js';
import { author, type ApiContext } from '../context.js';

/** At most this many machines in one run. */
export const MAX_RUN_MACHINES = 1000;

const runBody = {
  type: 'object',
  additionalProperties: false,
  required: ['command'],
  properties: {
    // In characters; the engine bounds the bytes (MAX_COMMAND_BYTES) and says so.
    command: { type: 'string', minLength: 1, maxLength: MAX_COMMAND_BYTES, description: 'bash source, run as an ad-hoc task on each machine' },
    selector: { type: 'string', maxLength: 4096, description: 'machines by label, e.g. role=web,env!=prod; adds to `machines`' },
    machines: { type: 'array', maxItems: MAX_RUN_MACHINES, items: { type: 'string', minLength: 1, maxLength: 200 }, description: 'machine names or ids' },
    timeout: { anyOf: [{ type: 'string', maxLength: 40 }, { type: 'number' }], description: 'how long the command may run on each machine: seconds or e.g. 90s, 5m (default 10m)' },
    skipOffline: { type: 'boolean', description: 'leave out machines powered off or with no agent in touch (listed in `skipped`) instead of queuing for them' },
  },
} as const;

export interface RunItem {
  machine: string;
  workOrder: ReturnType<typeof publicWorkOrder>;
  /** The job the command queues behind, when the machine is busy now. */
  behind: { job: string; task: string } | null;
  /** Why the command may not start soon (power off, no agent in touch), or null. */
  note: string | null;
}

export function runRoutes(app: FastifyInstance, { engine, store, records }: ApiContext) {
  app.post('/api/v1/run', { config: { permission: 'machines:run' }, schema: { body: runBody } }, async (req, reply) => {
    const body = req.body as { command: string; machines?: string[]; selector?: string; timeout?: string | number; skipOffline?: boolean };
    const names = [...new Set(body.machines ?? [])];
    const labels = body.selector !== undefined ? parseLabelSelector(body.selector, '/selector') : [];
    // An empty selector would match every machine: a command never runs everywhere by accident.
    if (names.length === 0 && labels.length === 0) throw new TaktError('invalid', 'no machines: name them (--machine M) or select them by label (-l key=value); an empty selection is refused', { path: body.selector !== undefined ? '/selector' : '/machines' });
    const machines: Machine[] = [];
    if (labels.length > 0) {
      const matched = await records.select({ labels });
      if (matched.length === 0) throw new TaktError('invalid', `the label selector '${body.selector}' matches no machine`, { path: '/selector' });
      if (matched.length > MAX_RUN_MACHINES) throw new TaktError('too_large', `the label selector '${body.selector}' matches ${matched.length} machines; at most ${MAX_RUN_MACHINES} run at once`, { path: '/selector' });
      machines.push(...matched.map((s) => s.machine));
    }
    for (const [i, n] of names.entries()) {
      const m = (await store.getMachine(n)) ?? (await store.getMachineByName(n));
      if (!m) throw new TaktError('not_found', `machine '${n}' not found`, { path: `/machines/${i}` });
      if (!machines.some((x) => x.id === m.id)) machines.push(m);
    }
    // Why each machine may not start soon; with skipOffline those machines are left out, like ansible's unreachable.
    const away = (m: Machine) => (m.power === 'off' ? 'powered off' : !engine.withLiveness(m).agent.connected ? 'no agent in touch' : null);
    const skipped = body.skipOffline ? machines.filter((m) => away(m) !== null).map((m) => ({ machine: m.name, why: away(m)! })) : [];
    const chosen = machines.filter((m) => !skipped.some((s) => s.machine === m.name));
    const wos = chosen.length
      ? await engine.createWorkOrders(
          chosen.map((m) => ({ machine: m.id, command: { script: body.command, timeout: body.timeout } })),
          author(req),
        )
      : [];
    const items: RunItem[] = [];
    for (const [i, m] of chosen.entries()) {
      const job = m.currentJob ? await store.getJob(m.currentJob) : undefined;
      const why = away(m);
      const note = why === 'powered off' ? 'powered off: the command runs once it is powered on' : why ? 'no agent in touch: the command runs when it connects' : null;
      items.push({ machine: m.name, workOrder: publicWorkOrder(wos[i]!), behind: job?.state === 'running' ? { job: job.id, task: job.task } : null, note });
    }
    reply.code(201);
    return { items, skipped };
  });
}
