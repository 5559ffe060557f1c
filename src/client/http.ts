/**
 * The one HTTP client for the agent and the CLI. It speaks JSON to `/api/v1`, turns the API's error body
 * into a TaktError, and tells network failures (retry later) apart from answers (act on them).
 */
import { TaktError, type ErrorBody, type ErrorCode } from '../model/errors.js';

export interface ClientOptions {
  endpoint: string;
  token?: string;
  /** Per-request timeout; long-polls pass their own. */
  timeoutMs?: number;
  /** Runs before every request; may delay it or throw a NetworkError (the agent's fault injection). */
  beforeRequest?: () => Promise<void>;
}

/** The endpoint could not be reached or did not answer in time; the request may be retried. */
export class NetworkError extends Error {
  constructor(message: string, override readonly cause?: unknown) {
    super(message);
    this.name = 'NetworkError';
  }
}

export interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | number | boolean | undefined>;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export class ApiClient {
  readonly endpoint: string;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;
  private readonly beforeRequest: (() => Promise<void>) | undefined;

  constructor(opts: ClientOptions) {
    this.endpoint = opts.endpoint.replace(/\/+$/, '');
    this.token = opts.token;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.beforeRequest = opts.beforeRequest;
  }

  url(path: string, query?: RequestOptions['query']): string {
    const u = new URL(this.endpoint + (path.startsWith('/api/') ? path : `/api/v1${path}`));
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) u.searchParams.set(k, String(v));
    return u.toString();
  }

  headers(extra: Record<string, string> = {}): Record<string, string> {
    return { ...(this.token ? { authorization: `Bearer ${this.token}` } : {}), ...extra };
  }

  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.raw(method, path, opts);
    const text = await res.text();
    if (res.status === 204 || text === '') return undefined as T;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new TaktError('internal', `endpoint answered ${res.status} with a body that is not JSON: ${text.slice(0, 200)}`);
    }
    return parsed as T;
  }

  /** Sends the request and returns the response when it is a success; throws TaktError for API errors. */
  async raw(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    if (this.beforeRequest) await this.beforeRequest();
    const timeout = AbortSignal.timeout(opts.timeoutMs ?? this.timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
    const headers = this.headers(opts.body !== undefined ? { 'content-type': 'application/json' } : {});
    let res: Response;
    try {
      res = await fetch(this.url(path, opts.query), {
        method,
        headers,
        body: opts.body !== undefined ? JSON.stringify(opts.body) : null,
        signal,
      });
    } catch (err) {
      if (opts.signal?.aborted) throw err;
      const why = err instanceof Error ? ((err.cause as Error | undefined)?.message ?? err.message) : String(err);
      throw new NetworkError(`cannot reach ${this.endpoint}: ${why}`, err);
    }
    if (res.ok) return res;
    throw await toTaktError(res);
  }

  get<T>(path: string, query?: RequestOptions['query']): Promise<T> {
    return this.request<T>('GET', path, { query });
  }
  post<T>(path: string, body?: unknown, opts: Omit<RequestOptions, 'body'> = {}): Promise<T> {
    return this.request<T>('POST', path, { ...opts, body: body ?? {} });
  }
  put<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PUT', path, { body });
  }
  patch<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', path, { body });
  }
  delete<T>(path: string): Promise<T> {
    return this.request<T>('DELETE', path);
  }
}

async function toTaktError(res: Response): Promise<TaktError> {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text) as Partial<ErrorBody>;
    if (body.error && typeof body.error.message === 'string') {
      return new TaktError((body.error.code ?? 'internal') as ErrorCode, body.error.message, {
        path: body.error.path,
        details: body.error.details,
      });
    }
  } catch {
    /* not our error shape; fall through */
  }
  const code: ErrorCode = res.status === 401 ? 'unauthorized' : res.status === 403 ? 'forbidden' : res.status === 404 ? 'not_found' : res.status >= 500 ? 'unavailable' : 'bad_request';
  return new TaktError(code, `endpoint answered ${res.status}${text ? `: ${text.slice(0, 200)}` : ''}`);
}

/** Exponential backoff with jitter, capped; `attempt` starts at 0. */
export function backoffMs(attempt: number, baseMs = 200, capMs = 5000): number {
  const exp = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 16));
  return Math.round(exp / 2 + Math.random() * (exp / 2));
}
