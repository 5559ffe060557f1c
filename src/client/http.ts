/**
 * The one HTTP client for the agent and the CLI. It speaks JSON to `/api/v1`, turns the API's error body
 * into a TaktError, and tells network failures (retry later) apart from answers (act on them).
 */
import { Agent as HttpAgent, request as httpRequest, type AgentOptions, type ClientRequest, type IncomingMessage, type OutgoingHttpHeaders, type RequestOptions as RequestOptions_ } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { isLoopbackHost } from '../model/host.js';
import { requestPath, TaktError, type ErrorBody, type ErrorCode } from '../model/errors.js';

/** One keep-alive pool per client; idle sockets are unref'd by Node, so they never keep a process alive. */
const AGENT_OPTIONS: AgentOptions = { keepAlive: true, maxSockets: 16, maxFreeSockets: 16, scheduling: 'lifo' };
/** A JSON answer larger than this is refused rather than buffered. */
const MAX_BODY_BYTES = 64 * 1024 * 1024;

interface Answer {
  status: number;
  text: string;
}

export interface ClientOptions {
  endpoint: string;
  token?: string;
  /** Per-request timeout; long-polls pass their own. */
  timeoutMs?: number;
  /** Runs before every request; may delay it or throw a NetworkError (the agent's fault injection). */
  beforeRequest?: () => Promise<void>;
  /**
   * PEM: the CA an https endpoint's certificate must chain to; when given, it is the only one trusted
   * (an agent trusts its endpoint's own CA, not the system's). Absent: the system's CAs.
   */
  ca?: string;
  /** Sent as `user-agent` (the agent: `takt-agent/<version>`, which the endpoint shows as the agent's version). */
  userAgent?: string;
  /**
   * Called when the endpoint answers 401: resolves true after `setToken` gave the client a new token, and
   * the request is then sent once more. (The agent reads its token file again.)
   */
  onUnauthorized?: () => Promise<boolean>;
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

/**
 * A token never goes over plain HTTP beyond this host: `http://` is for loopback (the local CLI and
 * agents); everything else is `https://`. Throws TaktError('bad_request') saying so; a URL that does not
 * parse is left to the request (a NetworkError, as before).
 */
export function checkEndpoint(endpoint: string): void {
  let u: URL;
  try {
    u = new URL(endpoint);
  } catch {
    return;
  }
  if (u.protocol === 'http:' && !isLoopbackHost(u.hostname)) {
    throw new TaktError('bad_request', `refusing to send a token over plain HTTP to ${u.host}: use https://${u.host} (an endpoint serves HTTPS on every address but loopback)`);
  }
}

export class ApiClient {
  readonly endpoint: string;
  private token: string | undefined;
  private readonly timeoutMs: number;
  private readonly beforeRequest: (() => Promise<void>) | undefined;
  private readonly ca: string | undefined;
  private readonly onUnauthorized: (() => Promise<boolean>) | undefined;
  private readonly userAgent: string | undefined;
  private agent: HttpAgent | undefined;

  /** Throws TaktError('bad_request') when a token would go over plain HTTP beyond this host (see checkEndpoint). */
  constructor(opts: ClientOptions) {
    this.endpoint = opts.endpoint.replace(/\/+$/, '');
    if (opts.token) checkEndpoint(this.endpoint);
    this.token = opts.token;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.beforeRequest = opts.beforeRequest;
    this.ca = opts.ca;
    this.onUnauthorized = opts.onUnauthorized;
    this.userAgent = opts.userAgent;
  }

  /** Uses `token` from the next request on (an agent whose token file was rewritten by a re-join or rotation). */
  setToken(token: string): void {
    checkEndpoint(this.endpoint);
    this.token = token;
  }

  url(path: string, query?: RequestOptions['query']): string {
    return this.target(path, query).toString();
  }

  headers(extra: Record<string, string> = {}): Record<string, string> {
    return { ...(this.token ? { authorization: `Bearer ${this.token}` } : {}), ...(this.userAgent ? { 'user-agent': this.userAgent } : {}), ...extra };
  }

  /**
   * The JSON path (get/post/put/patch/delete) on `node:http` with a keep-alive agent: no web streams, no
   * AbortSignal.any, one timer and at most one abort listener per request. The body is read whole.
   */
  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    if (this.beforeRequest) await this.beforeRequest();
    const signal = opts.signal;
    if (signal?.aborted) throw abortError(signal);
    let target: URL;
    try {
      target = this.target(path, opts.query);
    } catch (err) {
      throw new NetworkError(`cannot reach ${this.endpoint}: ${reason(err)}`, err);
    }
    const body = opts.body !== undefined ? JSON.stringify(opts.body) : undefined;
    const headers: OutgoingHttpHeaders = this.headers(body !== undefined ? { 'content-type': 'application/json' } : {});
    // As fetch does: a length for every body, and `content-length: 0` for a payload method sent without one.
    if (body !== undefined) headers['content-length'] = Buffer.byteLength(body);
    else if (method === 'POST' || method === 'PUT' || method === 'PATCH') headers['content-length'] = 0;
    let { status, text } = await this.exchange(method, target, headers, body, opts.timeoutMs ?? this.timeoutMs, signal);
    // A rejected token that the caller can replace (an agent whose token file a re-join rewrote): once more with the new one.
    if (status === 401 && this.onUnauthorized && (await this.onUnauthorized())) {
      ({ status, text } = await this.exchange(method, target, { ...headers, ...this.headers() }, body, opts.timeoutMs ?? this.timeoutMs, signal));
    }
    if (status < 200 || status > 299) throw errorFromAnswer(status, text, target);
    if (status === 204 || text === '') return undefined as T;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new TaktError('internal', `endpoint answered ${status} with a body that is not JSON: ${text.slice(0, 200)}`);
    }
    return parsed as T;
  }

  /**
   * Sends a body of `size` bytes from a stream as `application/octet-stream` (an image import) and parses
   * the JSON answer like `request`. `open` is called for each attempt (a retry on a fresh connection
   * starts the body again). The deadline covers the whole upload: give `opts.timeoutMs` for large ones.
   * @throws TaktError for an API error answer; NetworkError when the endpoint cannot be reached.
   */
  async upload<T>(method: 'PUT' | 'POST', path: string, open: () => Readable, size: number, opts: RequestOptions = {}): Promise<T> {
    if (this.beforeRequest) await this.beforeRequest();
    const target = this.target(path, opts.query);
    const headers: OutgoingHttpHeaders = this.headers({ 'content-type': 'application/octet-stream' });
    headers['content-length'] = size;
    const { status, text } = await this.exchange(method, target, headers, open, opts.timeoutMs ?? this.timeoutMs, opts.signal);
    if (status < 200 || status > 299) throw errorFromAnswer(status, text, target);
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new TaktError('internal', `endpoint answered ${status} with a body that is not JSON: ${text.slice(0, 200)}`);
    }
  }

  /** Destroys the keep-alive sockets; a later request opens new ones. */
  close(): void {
    this.agent?.destroy();
    this.agent = undefined;
  }

  private target(path: string, query?: RequestOptions['query']): URL {
    const u = new URL(this.endpoint + (path.startsWith('/api/') ? path : `/api/v1${path}`));
    if (query) for (const [k, v] of Object.entries(query)) if (v !== undefined) u.searchParams.set(k, String(v));
    return u;
  }

  /** node:http(s) options for `u`: the one place that maps a URL, its TLS trust (`ca`) and headers onto a request. */
  private requestOptions(method: string, u: URL, headers: OutgoingHttpHeaders): RequestOptions_ {
    const https = u.protocol === 'https:';
    return {
      method,
      protocol: u.protocol,
      hostname: u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname,
      port: u.port || (https ? 443 : 80),
      path: u.pathname + u.search,
      headers,
      ...(https && this.ca ? { ca: this.ca } : {}),
    };
  }

  /**
   * One request/answer over the keep-alive agent. The deadline and the caller's signal cover the whole
   * exchange, body included. A request that fails on a reused keep-alive socket before a single byte of
   * answer arrived (the server closed the idle socket as we wrote to it) never reached the server, so it is
   * sent once more on a fresh connection, as Node's docs advise (`request.reusedSocket`).
   */
  private exchange(method: string, u: URL, headers: OutgoingHttpHeaders, body: string | (() => Readable) | undefined, timeoutMs: number, signal: AbortSignal | undefined): Promise<Answer> {
    const https = u.protocol === 'https:';
    if (!https && u.protocol !== 'http:') return Promise.reject(new NetworkError(`cannot reach ${this.endpoint}: unsupported protocol ${u.protocol}`));
    const agent = (this.agent ??= https ? new HttpsAgent(AGENT_OPTIONS) : new HttpAgent(AGENT_OPTIONS));
    const options: RequestOptions_ = { ...this.requestOptions(method, u, headers), agent };
    const send = https ? httpsRequest : httpRequest;
    const endpoint = this.endpoint;
    return new Promise<Answer>((resolve, reject) => {
      let req: ClientRequest;
      let settled = false;
      /** A stream body being sent: stopped once the exchange is over (the server may answer before reading it all). */
      let source: Readable | undefined;
      const finish = (err: unknown, answer?: Answer) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        source?.destroy();
        signal?.removeEventListener('abort', onAbort);
        if (err !== undefined) {
          req.destroy();
          reject(err);
        } else resolve(answer!);
      };
      const timer = setTimeout(() => finish(new NetworkError(`cannot reach ${endpoint}: The operation was aborted due to timeout`)), Math.min(timeoutMs, 2 ** 31 - 1));
      timer.unref();
      const onAbort = () => finish(abortError(signal!));
      signal?.addEventListener('abort', onAbort, { once: true });

      const attempt = (fresh: boolean) => {
        // The retry bypasses the pool: another idle socket could be just as stale.
        const r = (req = send(fresh ? { ...options, agent: false } : options));
        let answered = false;
        let readBefore = -1;
        r.on('socket', (s: Socket) => {
          readBefore = s.bytesRead;
        });
        r.on('error', (err: NodeJS.ErrnoException) => {
          if (settled) return;
          if (!fresh && !answered && r.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE') && (r.socket?.bytesRead ?? readBefore) === readBefore) {
            attempt(true);
            return;
          }
          finish(new NetworkError(`cannot reach ${endpoint}: ${reason(err)}`, err));
        });
        r.on('response', (res: IncomingMessage) => {
          answered = true;
          const status = res.statusCode ?? 0;
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_BODY_BYTES) finish(new TaktError('internal', `endpoint answered ${status} with a body larger than ${MAX_BODY_BYTES >> 20} MiB`));
            else chunks.push(chunk);
          });
          res.on('end', () => finish(undefined, { status, text: chunks.length === 1 ? chunks[0]!.toString('utf8') : Buffer.concat(chunks).toString('utf8') }));
          // The connection broke mid-body. An error answer stays an error answer (as fetch's `text()` failing
          // left it, with no body); a success we could not read in full is a network failure.
          const broken = (err?: Error) => {
            if (settled || res.complete) return;
            if (status < 200 || status > 299) finish(undefined, { status, text: '' });
            else finish(new NetworkError(`cannot reach ${endpoint}: ${err ? reason(err) : 'connection closed while reading the answer'}`, err));
          };
          res.on('error', broken);
          res.on('close', () => broken());
        });
        if (typeof body === 'function') {
          // A stream body is opened per attempt: the retry on a fresh connection sends it from the start.
          source?.destroy();
          source = body();
          source.on('error', (err: Error) => finish(new TaktError('bad_request', `cannot read what was to be sent: ${err.message}`)));
          source.pipe(r);
        } else r.end(body);
      };
      attempt(false);
    });
  }

  /**
   * Sends the request and returns the response as a web `Response` whose body streams as it arrives, when
   * it is a success; throws TaktError for API errors. For streamed answers (SSE); JSON calls go through
   * `request()`. On node:http(s) like `request()`, so the same CA applies. A body cut off mid-stream makes
   * the body's reader reject with a NetworkError.
   */
  async raw(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    if (this.beforeRequest) await this.beforeRequest();
    const timeout = AbortSignal.timeout(Math.min(opts.timeoutMs ?? this.timeoutMs, 2 ** 31 - 1));
    const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
    const u = this.target(path, opts.query);
    const https = u.protocol === 'https:';
    const body = opts.body !== undefined ? JSON.stringify(opts.body) : undefined;
    const headers: OutgoingHttpHeaders = this.headers(body !== undefined ? { 'content-type': 'application/json' } : {});
    if (body !== undefined) headers['content-length'] = Buffer.byteLength(body);
    const endpoint = this.endpoint;
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = (https ? httpsRequest : httpRequest)({ ...this.requestOptions(method, u, headers), signal });
      req.on('response', resolve);
      req.on('error', (err) => {
        if (opts.signal?.aborted) reject(abortError(opts.signal));
        else reject(new NetworkError(`cannot reach ${endpoint}: ${reason(err)}`, err));
      });
      req.end(body);
    });
    const status = res.statusCode ?? 0;
    if (status < 200 || status > 299) {
      const chunks: Buffer[] = [];
      for await (const c of res) chunks.push(c as Buffer);
      throw errorFromAnswer(status, Buffer.concat(chunks).toString('utf8'), u);
    }
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        res.on('data', (c: Buffer) => controller.enqueue(new Uint8Array(c.buffer, c.byteOffset, c.byteLength)));
        res.on('end', () => controller.close());
        res.on('close', () => {
          if (!res.complete) {
            try {
              controller.error(opts.signal?.aborted ? abortError(opts.signal) : new NetworkError(`the connection to ${endpoint} broke mid-stream`));
            } catch {
              /* already closed */
            }
          }
        });
      },
      cancel() {
        res.destroy();
      },
    });
    const h = new Headers();
    for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) h.set(k, Array.isArray(v) ? v.join(', ') : v);
    return new Response(stream, { status, headers: h });
  }

  /**
   * GET of a large binary answer (an image's bytes) as a stream, from byte `offset` on (`Range: bytes=N-`,
   * RFC 9110 §14.2) when it is above 0. Unlike `raw`, the deadline is an idle one: the request fails when
   * no byte arrives for `idleMs` (default: the client's timeout), however long the whole body takes.
   * The caller reads `body` to its end; a connection that breaks meanwhile makes `body` emit an error (or
   * close before `complete`), which the caller treats as a cut to resume from.
   * @returns the status (200, or 206 for a range), the answer's headers and its body.
   * @throws TaktError for an API error answer (404, 416 …); NetworkError when the endpoint cannot be
   *   reached or goes silent before answering.
   */
  async download(path: string, opts: { offset?: number; idleMs?: number; signal?: AbortSignal } = {}): Promise<{ status: number; headers: IncomingMessage['headers']; body: IncomingMessage }> {
    if (this.beforeRequest) await this.beforeRequest();
    const signal = opts.signal;
    if (signal?.aborted) throw abortError(signal);
    const u = this.target(path);
    const https = u.protocol === 'https:';
    const headers: OutgoingHttpHeaders = this.headers(opts.offset ? { range: `bytes=${opts.offset}-` } : {});
    const idleMs = Math.min(opts.idleMs ?? this.timeoutMs, 2 ** 31 - 1);
    const endpoint = this.endpoint;
    // A fresh connection (no pool): a download holds its socket for long, and a cut one is not reused.
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = (https ? httpsRequest : httpRequest)({ ...this.requestOptions('GET', u, headers), agent: false, ...(signal ? { signal } : {}) });
      req.setTimeout(idleMs, () => req.destroy(new NetworkError(`cannot reach ${endpoint}: no answer in ${idleMs} ms`)));
      req.on('response', resolve);
      req.on('error', (err) => {
        if (signal?.aborted) reject(abortError(signal));
        else reject(err instanceof NetworkError ? err : new NetworkError(`cannot reach ${endpoint}: ${reason(err)}`, err));
      });
      req.end();
    });
    const status = res.statusCode ?? 0;
    if (status < 200 || status > 299) {
      const chunks: Buffer[] = [];
      let size = 0;
      try {
        for await (const c of res) {
          size += (c as Buffer).length;
          if (size <= 64 * 1024) chunks.push(c as Buffer);
        }
      } catch {
        /* an error answer stays an error answer */
      }
      throw errorFromAnswer(status, Buffer.concat(chunks).toString('utf8'), u);
    }
    // The request's idle timeout stays armed while the body streams: silence then destroys it, and `body` errors.
    return { status, headers: res.headers, body: res };
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

/**
 * An API error body becomes that TaktError; anything else is mapped from the status. A `path` that is
 * only the request's own path (`sent`; the endpoint names it when no field is at fault, model/errors.ts)
 * is dropped: it tells the caller nothing it did not send, and messages print `path` as the place to look.
 */
function errorFromAnswer(status: number, text: string, sent: URL): TaktError {
  try {
    const body = JSON.parse(text) as Partial<ErrorBody>;
    if (body.error && typeof body.error.message === 'string') {
      const path = body.error.path === requestPath(sent.pathname) ? undefined : body.error.path;
      return new TaktError((body.error.code ?? 'internal') as ErrorCode, body.error.message, {
        path,
        details: body.error.details,
      });
    }
  } catch {
    /* not our error shape; fall through */
  }
  const code: ErrorCode = status === 401 ? 'unauthorized' : status === 403 ? 'forbidden' : status === 404 ? 'not_found' : status >= 500 ? 'unavailable' : 'bad_request';
  return new TaktError(code, `endpoint answered ${status}${text ? `: ${text.slice(0, 200)}` : ''}`);
}

/** What fetch rejects with when its signal aborts: the signal's reason, else a DOMException 'AbortError'. */
function abortError(signal: AbortSignal): Error {
  const r: unknown = signal.reason;
  return r instanceof Error ? r : new DOMException('This operation was aborted', 'AbortError');
}

/** The most specific message of a connection error (Node's happy-eyeballs failure is an AggregateError with none). */
function reason(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  if (err.message) return err.message;
  if (err instanceof AggregateError && err.errors.length) return err.errors.map((e) => reason(e)).join('; ');
  return (err as NodeJS.ErrnoException).code ?? err.name;
}

/** Exponential backoff with jitter, capped; `attempt` starts at 0. */
export function backoffMs(attempt: number, baseMs = 200, capMs = 5000): number {
  const exp = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 16));
  return Math.round(exp / 2 + Math.random() * (exp / 2));
}

/** Resolves after `ms`, or early (without throwing) when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
