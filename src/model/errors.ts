/**
 * The one error shape takt uses everywhere: the API answers `{error:{code,message,path}}` with `status`,
 * the CLI prints `message` (and `path` when it points into a file or a field).
 *
 * `path` says where the problem is: a field of the body (a JSON pointer, `/params/x`), a query parameter
 * (its name), a file of an import (`machines/web-1.yaml`); and when the problem is none of those (an
 * unknown object or route, a refused token, a method the path does not take) the API fills in the
 * request's own path (`/api/v1/machines/nope`, never its query: see {@link requestPath}), so every 4xx
 * answer carries one.
 */
export type ErrorCode =
  | 'bad_request'
  | 'invalid'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'method_not_allowed'
  | 'conflict'
  | 'too_large'
  | 'misdirected'
  | 'range_not_satisfiable'
  | 'rate_limited'
  | 'unavailable'
  | 'internal';

const statusByCode: Record<ErrorCode, number> = {
  bad_request: 400,
  invalid: 422,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  too_large: 413,
  misdirected: 421,
  range_not_satisfiable: 416,
  rate_limited: 429,
  unavailable: 503,
  internal: 500,
};

export interface ErrorBody {
  /** `requestId` is set on 5xx answers: the endpoint log has the details under that id. */
  /** `retryAfter`: on `rate_limited` (429), whole seconds to wait (also the `Retry-After` header). */
  error: { code: ErrorCode; message: string; path?: string; details?: unknown; requestId?: string; retryAfter?: number };
}

export class TaktError extends Error {
  readonly code: ErrorCode;
  readonly path?: string;
  readonly details?: unknown;
  /** Seconds after which a `rate_limited` request may be tried again. */
  readonly retryAfter?: number;

  constructor(code: ErrorCode, message: string, opts: { path?: string; details?: unknown; retryAfter?: number } = {}) {
    super(message);
    this.name = 'TaktError';
    this.code = code;
    if (opts.path !== undefined) this.path = opts.path;
    if (opts.details !== undefined) this.details = opts.details;
    if (opts.retryAfter !== undefined) this.retryAfter = opts.retryAfter;
  }

  get status(): number {
    return statusByCode[this.code];
  }

  /**
   * The answer's body. `where`: the request's path (from {@link requestPath}), the body's `path` when the
   * error names no field of its own.
   */
  toBody(where?: string): ErrorBody {
    const error: ErrorBody['error'] = { code: this.code, message: this.message };
    const path = this.path ?? where;
    if (path !== undefined) error.path = path;
    if (this.details !== undefined) error.details = this.details;
    if (this.retryAfter !== undefined) error.retryAfter = this.retryAfter;
    return { error };
  }
}

/** The longest request path an error body echoes (longer ones are cut, with `…`). */
const MAX_ECHOED_PATH = 200;

/**
 * The path of a request URL as an error may echo it: without the query (which may hold a token or a
 * value), a path segment that is a takt token (`tkj.…` in `/join/TOKEN`, any `tk?.` form) shown as its
 * prefix and `…`, and cut at 200 characters. `url`: the request target as sent (`/api/v1/x?y=1`).
 */
export function requestPath(url: string): string {
  const path = url.split('?')[0]!.split('#')[0]!.replace(/(^|\/)(tk[a-z]\.)[^/]*/gi, '$1$2…');
  return path.length > MAX_ECHOED_PATH ? `${path.slice(0, MAX_ECHOED_PATH)}…` : path;
}

export const notFound = (what: string, name: string): TaktError =>
  new TaktError('not_found', `${what} '${name}' not found`);

export const statusOf = (code: ErrorCode): number => statusByCode[code];

/**
 * The TaktError `f` throws, as a list (empty when it does not throw): for checks that collect every
 * problem instead of stopping at the first. Any other error is thrown on.
 */
export function attempt(f: () => unknown): TaktError[] {
  try {
    f();
    return [];
  } catch (err) {
    if (err instanceof TaktError) return [err];
    throw err;
  }
}
