import type { ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { TaktEvent } from '../../model/machine.js';
import { author, intQuery, type ApiContext } from '../context.js';
import { yieldToLoop } from '../../engine/pace.js';
import { API_CSP, SECURITY_HEADERS } from '../guard.js';
import { topicMatcher } from '../topics.js';
import type { AccessControl } from '../access.js';

const KEEPALIVE_MS = 15_000;
/**
 * A subscriber that falls this far behind is cut off: it reconnects with Last-Event-ID and replays from
 * the store, instead of the endpoint buffering without bound for the slowest reader.
 */
const MAX_BUFFERED_BYTES = 8 * 1024 * 1024;

/**
 * A replay reads and writes this many events, then lets the event loop serve other requests before the
 * next page: the store is synchronous (SQLite), so a replay that only awaited promises would hold the loop
 * from its first page to its last and stall every other client (10 replays from 0 stalled /health for 8 s).
 */
export const REPLAY_PAGE = 100;
/** The largest import body (bytes). */
export const IMPORT_BODY_LIMIT = 64 * 1024 * 1024;
/** …and pauses again whenever it has written this many bytes, however few events that took (events carry whole machines). */
export const REPLAY_PAUSE_BYTES = 1024 * 1024;


/** Resolves when the response's buffer has drained or the connection is gone. */
function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}

/** What a replay needs from its stream; `pause` lets the event loop run other work between pages. */
export interface ReplayPort {
  list(after: number, limit: number): Promise<TaktEvent[]>;
  /** The id after which to read next (the last event sent). */
  after(): number;
  /** Writes the event if it matches; answers the bytes written (0 when filtered out). */
  send(e: TaktEvent): number | Promise<number>;
  closed(): boolean;
  /** A promise to wait on when the client reads slower than we write, else null. */
  backpressure(): Promise<void> | null;
  pause(): Promise<void>;
}

/**
 * Replays stored events page by page, pausing for the event loop before each page (the store is
 * synchronous, so a replay that only awaited its queries would hold the loop from first page to last).
 */
export async function replay(port: ReplayPort): Promise<void> {
  while (!port.closed()) {
    await port.pause();
    if (port.closed()) return;
    const page = await port.list(port.after(), REPLAY_PAGE);
    let bytes = 0;
    for (const e of page) {
      bytes += await port.send(e);
      const wait = port.backpressure();
      if (wait) await wait;
      if (port.closed()) return;
      if (bytes >= REPLAY_PAUSE_BYTES) {
        await port.pause();
        if (port.closed()) return;
        bytes = 0;
      }
    }
    if (page.length < REPLAY_PAGE) return;
  }
}

/**
 * Each event is serialised once, however many subscribers it goes to: as it is, and with its sealed values
 * masked (for users without `RESOURCE:secrets`; `data` is then what AccessControl.eventFor answered, and
 * equal for every such user).
 */
const frames = new WeakMap<TaktEvent, string>();
const maskedFrames = new WeakMap<TaktEvent, string>();
function frame(e: TaktEvent, data: unknown = e.data): string {
  const cache = data === e.data ? frames : maskedFrames;
  let f = cache.get(e);
  if (f === undefined) {
    f = `id: ${e.id}\nevent: ${e.topic}\ndata: ${JSON.stringify(data === e.data ? e : { ...e, data })}\n\n`;
    cache.set(e, f);
  }
  return f;
}

export function eventRoutes(app: FastifyInstance, ctx: ApiContext, access: AccessControl) {
  const { store, history, portable, brokers } = ctx;

  app.get('/api/v1/export', { config: { permission: 'history:secrets' } }, async () => ({ files: await portable.export() }));

  app.post(
    '/api/v1/import',
    {
      config: { permission: 'history:write' }, // An import is parsed whole before anything is written; 64 MiB keeps its JSON parse short.
      bodyLimit: IMPORT_BODY_LIMIT,
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['files'],
          properties: { files: { type: 'object', additionalProperties: { type: 'string' } }, dryRun: { type: 'boolean' }, allowUndeclared: { type: 'boolean' } },
        },
      },
    },
    async (req) => {
      const body = req.body as { files: Record<string, string>; dryRun?: boolean; allowUndeclared?: boolean };
      return portable.import(body.files, author(req), {
        has: (name) => brokers.has(name),
        sandboxed: (name) => brokers.get(name)?.sandboxed === true,
        powerConfigFor: (name, id) => brokers.get(name)?.powerConfigFor?.(id),
        // Called only after the import has committed: a machine's agent never runs for a refused import.
        start: async (machine, token) => {
          const broker = machine.broker ? brokers.get(machine.broker) : undefined;
          if (!broker) return;
          // Restored onto this host: its new sandbox or VM is this replica's (api/hosts.ts). The machine is
          // held (a sandbox broker's restored machine waits for a restart), so nothing runs before this write.
          if (broker.hostBound && ctx.hostId !== undefined) {
            const host = ctx.hostId;
            await store.transact((tx) => tx.setMachineHost(machine.id, host));
            machine.host = host;
          }
          await broker.create(machine, token);
        },
      }, { dryRun: body.dryRun === true, allowUndeclared: body.allowUndeclared === true });
    },
  );

  app.get('/api/v1/changes', { config: { permission: 'history:read' } }, async (req) => {
    const q = req.query as Record<string, string | undefined>;
    // `machines/web-1` means that machine's changes, as `machines/m-1a2b` does (history is keyed by id).
    let object = q.object;
    const named = object?.startsWith('machines/') ? await store.getMachineByName(object.slice('machines/'.length)) : undefined;
    if (named) object = `machines/${named.id}`;
    const items = await store.listChanges({
      object,
      after: intQuery(q.after, 'after', undefined),
      limit: intQuery(q.limit, 'limit', 100, 1000),
      offset: intQuery(q.offset, 'offset', 0),
    });
    return { items: await history.named(items) };
  });

  app.get('/api/v1/changes/:seq', { config: { permission: 'history:read' } }, async (req) => history.show(intQuery((req.params as { seq: string }).seq, 'seq', 0)!));

  app.post('/api/v1/changes/:seq/revert', { config: { permission: 'history:write' } }, async (req) => history.revert(intQuery((req.params as { seq: string }).seq, 'seq', 0)!, author(req)));

  app.post(
    '/api/v1/changes/rewind',
    { config: { permission: 'history:write' }, schema: { body: { type: 'object', additionalProperties: false, required: ['to'], properties: { to: { type: 'integer', minimum: 0 }, dryRun: { type: 'boolean' } } } } },
    async (req) => {
      const body = req.body as { to: number; dryRun?: boolean };
      return history.rewind(body.to, author(req), { dryRun: body.dryRun === true });
    },
  );

  /**
   * Server-sent events. `?topics=machines.*.*,jobs.update.j-1` filters; `Last-Event-ID` (or `?since=`)
   * replays what was missed from the store before going live, so a reconnecting client loses nothing
   * still inside the retention window. A user sees only the events their grants read (AccessControl.eventFor:
   * a label-scoped role, only its machines' events and those of their jobs and work orders), with sealed
   * values masked unless they hold that resource's `secrets`; events they may not see are skipped, never
   * renumbered, so `Last-Event-ID` resumes as for anyone.
   */
  app.get('/api/v1/events', { config: { permission: 'events:read' } }, async (req, reply) => {
    const q = req.query as Record<string, string | undefined>;
    const match = topicMatcher((q.topics ?? '').split(',').map((s) => s.trim()).filter(Boolean));
    const since = intQuery(req.headers['last-event-id'] ?? q.since, 'since', undefined);
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      ...SECURITY_HEADERS,
      'content-security-policy': API_CSP,
      'x-request-id': req.id,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.write('retry: 2000\n: connected\n\n');
    let lastSent = since ?? 0;
    const backlog: TaktEvent[] = [];
    let live = false;
    let closed = false;
    const principal = req.principal;
    const user = principal?.kind === 'user' ? principal : null;
    const write = (e: TaktEvent, data: unknown): number => {
      if (closed) return 0;
      const f = frame(e, data);
      res.write(f);
      // Only a live subscriber can fall behind; a replay waits for the client instead (below).
      if (live && res.writableLength > MAX_BUFFERED_BYTES) {
        req.log.warn({ buffered: res.writableLength }, 'event subscriber too slow; closing its stream (it resumes with Last-Event-ID)');
        close();
        res.end();
      }
      return f.length;
    };
    // In id order, each event once. A user's event may need its machine looked up (a store read on an
    // index miss), so a user's live events go through one promise chain: in order, one at a time.
    const send = (e: TaktEvent): number | Promise<number> => {
      if (closed || e.id <= lastSent) return 0;
      lastSent = e.id;
      if (!match(e.topic)) return 0;
      if (!user) return write(e, e.data);
      return access.eventFor(user, e).then((v) => (v ? write(e, v.data) : 0));
    };
    const failed = (err: unknown) => {
      req.log.warn({ err }, 'event stream: could not decide an event for a user; closing the stream (it resumes with Last-Event-ID)');
      close();
      res.end();
    };
    let chain: Promise<void> = Promise.resolve();
    const sendLive = (e: TaktEvent) => {
      if (!user) void send(e);
      else chain = chain.then(() => send(e)).then(() => undefined, failed);
    };
    const unsubscribe = store.onEvents((events) => {
      if (live) events.forEach(sendLive);
      else backlog.push(...events);
    });
    const keepalive = setInterval(() => res.write(': keepalive\n\n'), KEEPALIVE_MS);
    const close = () => {
      if (closed) return;
      closed = true;
      clearInterval(keepalive);
      unsubscribe();
    };
    // The response's close, not the request's: Node may close a request once its body has been read.
    res.on('close', close);
    if (since !== undefined) {
      // The replay is written as fast as the client reads it: a client catching up after being cut off
      // must not be cut off again by its own replay.
      await replay({
        list: (after, limit) => store.listEvents(after, limit),
        after: () => lastSent,
        send,
        closed: () => closed,
        backpressure: () => (res.writableLength > MAX_BUFFERED_BYTES / 2 ? drained(res) : null),
        pause: yieldToLoop,
      }).catch(failed);
    }
    if (closed) return;
    live = true;
    backlog.forEach(sendLive);
  });
}
