/**
 * The audit log's one hook and its route (issue #16). The hook runs as each answer is sent (`onSend`: the
 * status is known, the route matched) and asks model/audit.ts whether the request is audited; a write's
 * entry is committed before its answer leaves (engine/audit.ts groups them, so a burst costs one
 * transaction), other entries are written within a second. Nothing here reads the store on the request's
 * path: a failed authentication is recorded from what the request carried.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AuditLog } from '../engine/audit.js';
import { peerAddress } from '../engine/liveness.js';
import { AUDIT_DEFAULT_PAGE, AUDIT_MAX_PAGE, AUDIT_OUTCOMES, isAudited, outcomeOf, parseAuditTime, type AuditEntry, type AuditFilter, type AuditOutcome } from '../model/audit.js';
import { requestPath, TaktError } from '../model/errors.js';
import { userTokenIdFromToken } from '../model/users.js';
import { intQuery, type ApiContext } from './context.js';
import { authorOf } from './auth.js';

/** The longest error message kept with an entry. */
const DETAIL_MAX = 500;

/** What a write's answer named (its `id` or `name`), for a write whose route has no `:id`. */
const created = new WeakMap<FastifyRequest, string>();

/**
 * Adds the audit hook to `app`. Call before the routes are added (hooks apply to routes added after them).
 */
export function auditHook(app: FastifyInstance, audit: AuditLog): void {
  // A create's answer names what it made: kept for the entry (only `id`/`name`, never other fields).
  app.addHook('preSerialization', async (req, _reply, payload) => {
    if (req.method !== 'GET' && typeof payload === 'object' && payload !== null) {
      // A create that makes one of several (`POST /machines` answers `{items: [machine]}`) names that one.
      const top = payload as { id?: unknown; name?: unknown; items?: unknown };
      const o = (Array.isArray(top.items) && top.items.length === 1 && typeof top.items[0] === 'object' && top.items[0] !== null ? top.items[0] : top) as { id?: unknown; name?: unknown };
      const v = typeof o.id === 'string' ? o.id : typeof o.name === 'string' ? o.name : undefined;
      if (v !== undefined && v.length <= 200) created.set(req, v);
    }
    return payload;
  });
  app.addHook('onSend', async (req, reply, payload) => {
    // A request no route takes is not audited — but a token refused on a path a route has, asked with a
    // method it does not take (the 405 check, api/server.ts), is: every refused token is recorded.
    if (req.is404 && reply.statusCode !== 401) return payload;
    const cfg = req.routeOptions.config;
    const route = req.routeOptions.url ?? (req.is404 ? requestPath(req.url) : undefined);
    if (!route) return payload;
    const status = reply.statusCode;
    const p = req.principal ?? null;
    if (!isAudited({ method: req.method, permission: cfg?.permission, principalKind: p?.kind ?? null, machineRoute: !!cfg?.machine, status })) return payload;
    const bearer = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')?.[1];
    const entry = {
      at: new Date().toISOString(),
      principal: p ? authorOf(p) : 'anonymous',
      token: p?.kind === 'user' ? p.tokenId : bearer ? userTokenIdFromToken(bearer) : null,
      source: peerAddress(req.ip) ?? 'unknown',
      method: req.method,
      route,
      resource: resourceOf(req),
      status,
      outcome: outcomeOf(status),
      detail: status >= 400 ? detailOf(payload) : null,
      requestId: String(req.id),
    };
    const read = req.method === 'GET' || req.method === 'HEAD';
    await audit.record(entry, !read && status < 400);
    return payload;
  });
}

/** What a request was about: its route parameters (never `:token`, which is a secret), a created object, or the user a login named. */
function resourceOf(req: FastifyRequest): string | null {
  const params = { ...((req.params as Record<string, string> | undefined) ?? {}) };
  delete params.token;
  if (params.name !== undefined && params.version !== undefined) return `${params.name}@${params.version}`;
  const values = Object.values(params).filter((v) => typeof v === 'string' && v !== '');
  if (values.length > 0) return values.join('/').slice(0, 200);
  const made = created.get(req);
  if (made !== undefined) return made;
  const user = (req.body as { user?: unknown } | undefined)?.user;
  if (req.routeOptions.config?.permission === 'public' && typeof user === 'string' && user.length <= 63) return `user:${user}`;
  return null;
}

/** The message of an error answer (`{error:{message}}`), cut to DETAIL_MAX; null for anything else. */
function detailOf(payload: unknown): string | null {
  const text = typeof payload === 'string' ? payload : Buffer.isBuffer(payload) ? payload.toString('utf8') : null;
  if (text === null || text.length > 64 * 1024 || !text.startsWith('{')) return null;
  try {
    const message = (JSON.parse(text) as { error?: { message?: unknown } }).error?.message;
    return typeof message === 'string' ? message.slice(0, DETAIL_MAX) : null;
  } catch {
    return null;
  }
}

/** An entry as `GET /api/v1/audit` answers it: machine ids shown as their names. */
export type AuditView = AuditEntry;

interface AuditQuery {
  principal?: string;
  since?: string;
  until?: string;
  route?: string;
  resource?: string;
  outcome?: string;
  limit?: string;
  cursor?: string;
}

const MACHINE_ID = /^m-[0-9a-z]+$/;

/** `GET /api/v1/audit` (admin only: `audit:read`, which `*:read` does not grant). */
export function auditRoutes(app: FastifyInstance, ctx: ApiContext, audit: AuditLog): void {
  app.get(
    '/api/v1/audit',
    {
      config: { permission: 'audit:read' },
      schema: {
        description: 'The audit log, newest first: writes, reads of secrets, logs and exports, and refused requests, with who, when, from where and how it ended.',
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            principal: { type: 'string', maxLength: 200, description: 'user:NAME, admin, machine:NAME, anonymous' },
            since: { type: 'string', maxLength: 40, description: 'RFC 3339 time or a duration back from now (1h, 7d)' },
            until: { type: 'string', maxLength: 40, description: 'RFC 3339 time or a duration back from now' },
            route: { type: 'string', maxLength: 200, description: 'route patterns containing this text (/machines, /login)' },
            resource: { type: 'string', maxLength: 200, description: 'what a request was about: a machine (id or name), a job, a pack…' },
            outcome: { type: 'string', enum: [...AUDIT_OUTCOMES] },
            limit: { type: 'string', description: `at most this many (1..${AUDIT_MAX_PAGE}, default ${AUDIT_DEFAULT_PAGE})` },
            cursor: { type: 'string', description: 'the `next` of the previous page' },
          },
        },
      },
    },
    async (req) => {
      const q = req.query as AuditQuery;
      const now = Date.now();
      const limit = intQuery(q.limit, 'limit', AUDIT_DEFAULT_PAGE, AUDIT_MAX_PAGE)!;
      if (limit < 1) throw new TaktError('bad_request', `query parameter 'limit' must be a whole number from 1 to ${AUDIT_MAX_PAGE}`, { path: 'limit' });
      const filter: AuditFilter = { limit: limit + 1 };
      if (q.cursor !== undefined) filter.before = intQuery(q.cursor, 'cursor', undefined);
      if (q.since !== undefined) filter.since = parseAuditTime(q.since, 'since', now);
      if (q.until !== undefined) filter.until = parseAuditTime(q.until, 'until', now);
      if (q.route !== undefined) filter.route = q.route;
      if (q.outcome !== undefined) filter.outcome = q.outcome as AuditOutcome;
      if (q.principal !== undefined) filter.principals = await principalsOf(ctx, q.principal);
      if (q.resource !== undefined) filter.resources = await resourcesOf(ctx, q.resource);
      // Whatever is still buffered belongs in the answer: an admin reading the log sees what just happened.
      await audit.flush();
      const rows = await audit.list(filter);
      const page = rows.slice(0, limit);
      const names = new Map<string, string>();
      const nameOf = async (id: string) => {
        if (!names.has(id)) names.set(id, (await ctx.store.getMachine(id))?.name ?? id);
        return names.get(id)!;
      };
      const items: AuditView[] = [];
      for (const e of page) {
        const principal = e.principal.startsWith('machine:') ? `machine:${await nameOf(e.principal.slice(8))}` : e.principal;
        const resource = e.resource !== null && MACHINE_ID.test(e.resource) ? await nameOf(e.resource) : e.resource;
        items.push({ ...e, principal, resource });
      }
      return { items, next: rows.length > limit ? String(page.at(-1)!.id) : null };
    },
  );
}

/** The stored principals `text` names: `machine:NAME` is stored by the machine's id. */
async function principalsOf(ctx: ApiContext, text: string): Promise<string[]> {
  if (!text.startsWith('machine:')) return [text];
  const ref = text.slice(8);
  const m = (await ctx.store.getMachine(ref)) ?? (await ctx.store.getMachineByName(ref));
  return m ? [`machine:${m.id}`, text] : [text];
}

/** A machine is named in routes by id or name: both are looked for. */
async function resourcesOf(ctx: ApiContext, text: string): Promise<string[]> {
  const m = (await ctx.store.getMachine(text)) ?? (await ctx.store.getMachineByName(text));
  return m ? [...new Set([text, m.id, m.name])] : [text];
}
