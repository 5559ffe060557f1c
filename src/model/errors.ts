/**
 * The one error shape takt uses everywhere: the API answers `{error:{code,message,path}}` with `status`,
 * the CLI prints `message` (and `path` when it points into a file or a field).
 */
export type ErrorCode =
  | 'bad_request'
  | 'invalid'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'too_large'
  | 'misdirected'
  | 'range_not_satisfiable'
  | 'unavailable'
  | 'internal';

const statusByCode: Record<ErrorCode, number> = {
  bad_request: 400,
  invalid: 422,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  too_large: 413,
  misdirected: 421,
  range_not_satisfiable: 416,
  unavailable: 503,
  internal: 500,
};

export interface ErrorBody {
  /** `requestId` is set on 5xx answers: the endpoint log has the details under that id. */
  error: { code: ErrorCode; message: string; path?: string; details?: unknown; requestId?: string };
}

export class TaktError extends Error {
  readonly code: ErrorCode;
  readonly path?: string;
  readonly details?: unknown;

  constructor(code: ErrorCode, message: string, opts: { path?: string; details?: unknown } = {}) {
    super(message);
    this.name = 'TaktError';
    this.code = code;
    if (opts.path !== undefined) this.path = opts.path;
    if (opts.details !== undefined) this.details = opts.details;
  }

  get status(): number {
    return statusByCode[this.code];
  }

  toBody(): ErrorBody {
    const error: ErrorBody['error'] = { code: this.code, message: this.message };
    if (this.path !== undefined) error.path = this.path;
    if (this.details !== undefined) error.details = this.details;
    return { error };
  }
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
