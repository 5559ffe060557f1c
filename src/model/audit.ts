/**
 * The audit log (issue #16, part 2): who did what to the endpoint, kept apart from the desired-state
 * history. Pure: what an entry is, which requests make one, and the query it is read with. The API's one
 * hook (api/audit.ts) makes entries; engine/audit.ts writes them in batches and prunes them.
 */
import { parseDuration, DURATION_RANGES } from './duration.js';
import { TaktError } from './errors.js';

/** How a request ended: `ok` (2xx/3xx), `denied` (401, 403: authentication or permission), `failed` (any other 4xx/5xx). */
export type AuditOutcome = 'ok' | 'denied' | 'failed';
export const AUDIT_OUTCOMES: readonly AuditOutcome[] = ['ok', 'denied', 'failed'];

/** One audited request, as recorded (without its number). */
export interface AuditRecord {
  /** When the answer was sent (ISO 8601, UTC). */
  at: string;
  /**
   * Who: `user:NAME`, `admin` (the bootstrap token), `machine:ID`, `join:ID`, `discovery:MAC`, or
   * `anonymous` when no credential was accepted (a failed authentication).
   */
  principal: string;
  /** The user token's id (`t-…`), also for a refused user token whose id could be read; null otherwise. */
  token: string | null;
  /** The peer address the request came from (the socket's, not a forwarded header). */
  source: string;
  method: string;
  /**
   * The route pattern (`/api/v1/machines/:id`), never the raw URL (its query may hold secrets); for a
   * token refused on a path asked with a method it does not take, that path (errors.ts requestPath).
   */
  route: string;
  /** What the request was about: the route's `:id`/`:name` (`name@version`), a created object's id, the user a login named; null: none. */
  resource: string | null;
  /** The HTTP status answered. */
  status: number;
  outcome: AuditOutcome;
  /** For a refusal or failure: the error message the caller got (never a secret: errors never carry one). */
  detail: string | null;
  /** The request id (`x-request-id`), to find it in the endpoint's log. */
  requestId: string;
}

/** An audit entry as stored and read back: its number orders entries and pages them (`cursor`). */
export interface AuditEntry extends AuditRecord {
  id: number;
}

/** What `GET /api/v1/audit` filters by (the store's query). */
export interface AuditFilter {
  /** Any of these principals exactly (`user:alice`, `admin`, `machine:m-…`, `anonymous`). */
  principals?: string[];
  /** At or after this ISO time. */
  since?: string;
  /** Before this ISO time. */
  until?: string;
  /** Route patterns containing this text (`/machines`, `/login`). */
  route?: string;
  /** Any of these resources exactly (a machine's id and its name: routes take either). */
  resources?: string[];
  outcome?: AuditOutcome;
  /** Entries numbered below this (the `next` cursor of the previous page). */
  before?: number;
  /** At most this many, newest first (1..1000). */
  limit: number;
}

export const AUDIT_MAX_PAGE = 1000;
export const AUDIT_DEFAULT_PAGE = 100;
/** `takt serve --audit-keep-days`: default and bounds (days). */
export const AUDIT_KEEP_DAYS = { default: 90, min: 1, max: 3650 } as const;

/** The outcome of an HTTP status. */
export function outcomeOf(status: number): AuditOutcome {
  if (status < 400) return 'ok';
  if (status === 401 || status === 403) return 'denied';
  return 'failed';
}

/** The facts about a request the audit rule looks at. */
export interface AuditedRequest {
  method: string;
  /** The route's declared permission (`resource:verb`, `public`, `self`). */
  permission: string | undefined;
  /** The caller's kind, or null when no credential was accepted. */
  principalKind: 'admin' | 'user' | 'machine' | 'join' | 'discovery' | null;
  /** The route takes machine tokens (the agent protocol and a machine's own reads). */
  machineRoute: boolean;
  status: number;
}

/** Routes whose reads are recorded besides the `…:secrets` ones: credentials and the audit log itself. */
const AUDITED_READ_RESOURCES = new Set(['credentials', 'audit']);

/**
 * Whether a request makes an audit entry:
 * - every refused authentication or permission (401, 403), whatever the route;
 * - every write (any method but GET/HEAD/OPTIONS) — except a machine token's successful requests on the
 *   agent protocol's routes (claims, heartbeats, log chunks, completions, facts): they are the hot path, and
 *   the jobs they act on already record them; their refusals are recorded;
 * - reads of secret-bearing data: routes that need `RESOURCE:secrets` (job logs, the export), credentials,
 *   and the audit log.
 */
export function isAudited(r: AuditedRequest): boolean {
  if (r.status === 401 || r.status === 403) return true;
  const read = r.method === 'GET' || r.method === 'HEAD' || r.method === 'OPTIONS';
  if (!read) return !(r.principalKind === 'machine' && r.machineRoute && r.status < 400);
  if (r.principalKind === 'machine' && r.machineRoute && r.status < 400) return false;
  const [resource, verb] = (r.permission ?? '').split(':');
  return verb === 'secrets' || AUDITED_READ_RESOURCES.has(resource ?? '');
}

/**
 * A point in time from `--since`/`--until` text: RFC 3339 (`2026-12-01T10:00:00Z`) or a duration back from
 * `now` (`1h`, `7d`). @throws TaktError bad_request naming `what`.
 */
export function parseAuditTime(text: string, what: string, now: number): string {
  if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i.test(text)) {
    const t = Date.parse(text);
    if (Number.isFinite(t)) return new Date(t).toISOString();
  }
  if (/^\d/.test(text) && !text.includes('-')) {
    try {
      return new Date(now - parseDuration(text, what, DURATION_RANGES.window)).toISOString();
    } catch (err) {
      if (err instanceof TaktError) throw new TaktError('bad_request', `${err.message} (or an RFC 3339 time such as 2026-12-01T10:00:00Z)`, { path: what });
      throw err;
    }
  }
  throw new TaktError('bad_request', `${what} must be an RFC 3339 time (2026-12-01T10:00:00Z) or a duration back from now (90m, 1h, 7d); got ${JSON.stringify(text.slice(0, 40))}`, { path: what });
}
