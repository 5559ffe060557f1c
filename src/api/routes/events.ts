import type { FastifyInstance } from 'fastify';
import { TaktError } from '../../model/errors.js';
import type { TaktEvent } from '../../model/machine.js';
import { intQuery, type ApiContext } from '../context.js';
import { topicMatcher } from '../topics.js';

const KEEPALIVE_MS = 15_000;

export function eventRoutes(app: FastifyInstance, ctx: ApiContext) {
  const { store } = ctx;

  app.get('/api/v1/changes', async (req) => {
    const q = req.query as Record<string, string | undefined>;
    return {
      items: await store.listChanges({
        object: q.object,
        after: intQuery(q.after, 'after', undefined),
        limit: intQuery(q.limit, 'limit', 100, 1000),
        offset: intQuery(q.offset, 'offset', 0),
      }),
    };
  });

  app.get('/api/v1/changes/:seq', async (req) => {
    const seq = intQuery((req.params as { seq: string }).seq, 'seq', 0)!;
    const c = await store.getChange(seq);
    if (!c) throw new TaktError('not_found', `change ${seq} not found`);
    return c;
  });

  /**
   * Server-sent events. `?topics=machines.*.*,jobs.update.j-1` filters; `Last-Event-ID` (or `?since=`)
   * replays what was missed from the store before going live, so a reconnecting client loses nothing
   * still inside the retention window.
   */
  app.get('/api/v1/events', async (req, reply) => {
    const q = req.query as Record<string, string | undefined>;
    const match = topicMatcher((q.topics ?? '').split(',').map((s) => s.trim()).filter(Boolean));
    const since = intQuery(req.headers['last-event-id'] ?? q.since, 'since', undefined);
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.write('retry: 2000\n: connected\n\n');
    let lastSent = since ?? 0;
    const backlog: TaktEvent[] = [];
    let live = false;
    const send = (e: TaktEvent) => {
      if (e.id <= lastSent) return;
      lastSent = e.id;
      if (match(e.topic)) res.write(`id: ${e.id}\nevent: ${e.topic}\ndata: ${JSON.stringify({ ...e })}\n\n`);
    };
    const unsubscribe = store.onEvents((events) => {
      if (live) events.forEach(send);
      else backlog.push(...events);
    });
    const keepalive = setInterval(() => res.write(': keepalive\n\n'), KEEPALIVE_MS);
    const close = () => {
      clearInterval(keepalive);
      unsubscribe();
    };
    req.raw.on('close', close);
    if (since !== undefined) {
      for (;;) {
        const page = await store.listEvents(lastSent, 1000);
        page.forEach(send);
        if (page.length < 1000) break;
      }
    }
    live = true;
    backlog.forEach(send);
  });
}
