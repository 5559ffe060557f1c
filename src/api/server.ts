/**
 * The HTTP API: REST under /api/v1, the event stream, the OpenAPI document, and the web UI's static page.
 * Every error leaves as `{error:{code,message,path}}` with a 4xx status (`path`: the field, else the
 * request's path); a 500 is a bug and is logged.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { agentVersion, peerAddress } from '../engine/liveness.js';
import { describePattern } from '../model/content.js';
import { requestPath, TaktError } from '../model/errors.js';
import { CHALLENGE_PATTERN, endpointProof } from '../model/proof.js';
import { Authenticator, JOIN_TOKEN_SCOPE, DISCOVERY_SCOPE } from './auth.js';
import { AccessControl, declaredRoutes } from './access.js';
import { auditHook, auditRoutes } from './audit.js';
import { AuditLog } from '../engine/audit.js';
import { userRoutes } from './routes/users.js';
import { LoginLimiter } from './login-limit.js';
import { allowedHost, API_CSP, checkQuery, checkTarget, hostNames, parseJsonBody, SECURITY_HEADERS, uiCsp } from './guard.js';
import type { ApiContext } from './context.js';
import type { RequestHandler } from './listeners.js';
import { contentRoutes } from './routes/content.js';
import { credentialRoutes } from './routes/credentials.js';
import { imageRoutes } from './routes/images.js';
import { dhcpRoutes } from './routes/dhcp.js';
import { eventRoutes } from './routes/events.js';
import { jobRoutes } from './routes/jobs.js';
import { joinRoutes, shellError } from './routes/join.js';
import { Metrics } from './metrics.js';
import { machineRoutes } from './routes/machines.js';
import { reportRoutes } from './routes/reports.js';
import { rolloutRoutes } from './routes/rollouts.js';
import { runRoutes } from './routes/run.js';
import { ajvWords } from '../model/validate.js';
import { lazyValidators, type ValidatorFactory } from './lazy-validators.js';

export interface ServerOptions extends ApiContext {
  adminToken: string;
  logger?: boolean | object;
  /** Host names (besides IP literals and `localhost`) this endpoint answers to; others get 421. */
  hostNames?: readonly string[];
  /** Where the routes' validators are compiled (default: `lazyValidators()`); tests pass one that lists them. */
  validators?: ValidatorFactory;
}

/** Bounds on what one client can hold of the endpoint. */
export interface ServerLimits {
  /** A request whose headers and body have not fully arrived after this long is answered 408 and closed (ms). */
  requestTimeoutMs: number;
  /** Open connections beyond this are refused at accept. */
  maxConnections: number;
}

export const DEFAULT_LIMITS: ServerLimits = { requestTimeoutMs: 120_000, maxConnections: 10_000 };

const UI_FILE = fileURLToPath(new URL('../../ui/index.html', import.meta.url));

const handlers = new WeakMap<FastifyInstance, RequestHandler>();

/** Requests whose answer Fastify serialised from an object (preSerialization ran): only those are JSON to mask. */
const serialised = new WeakSet<FastifyRequest>();

/**
 * The app's request handler, for Listeners to serve on each address; throws for an app not made by
 * buildServer.
 */
export function requestHandlerOf(app: FastifyInstance): RequestHandler {
  const h = handlers.get(app);
  if (!h) throw new Error('requestHandlerOf: not an app made by buildServer');
  return h;
}

/**
 * Errors Node's HTTP parser raises before there is a request (headers too large, not HTTP, a request that
 * did not arrive in time) are answered in the one error shape with the same headers, then closed.
 */
export function answerClientError(err: Error, socket: Socket): void {
  if (!socket.writable || socket.destroyed) return;
  const code = (err as NodeJS.ErrnoException).code;
  const status = code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
  const message =
    status === 431 ? 'the request headers are too large' : status === 408 ? 'the request did not arrive whole in time (--request-timeout)' : 'the request is not valid HTTP/1.1';
  socket.end(rawErrorResponse(status, new TaktError('bad_request', message).toBody()));
}

export async function buildServer(opts: ServerOptions): Promise<FastifyInstance> {
  const ui = await readFile(UI_FILE, 'utf8');
  const csp = uiCsp(ui);
  const hosts = hostNames(opts.hostNames ?? []);
  let handler: RequestHandler | null = null;
  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: 1024 * 1024,
    // Unique per process start and cheap: a random prefix and a counter (a CSPRNG call per request cost
    // more than the rest of the id; ids are for finding a request in the log, not secrets).
    genReqId: requestIds(),
    // Fastify gets a server it never listens on: the endpoint's sockets are made by Listeners (listeners.ts)
    // from the handler kept here, so one app is served on several addresses, plain and TLS.
    serverFactory: (h) => {
      handler = h as RequestHandler;
      return createServer(h);
    },
    ajv: { customOptions: { allErrors: false, removeAdditional: false, coerceTypes: false } },
    // Validators compile on a route's first request, not at start (api/lazy-validators.ts).
    schemaController: { compilersFactory: { buildValidator: (opts.validators ?? lazyValidators()) as never } },
    // Errors the framework raises before routing (a path that is not valid percent-encoding, a bad
    // content type) leave in the one error shape too.
    frameworkErrors: (err, req, res) => {
      const reply = res as unknown as FastifyReply;
      const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 400;
      void reply
        .headers({ ...SECURITY_HEADERS, 'content-security-policy': API_CSP, 'x-request-id': req.id })
        .code(status)
        .send(new TaktError(status === 404 ? 'not_found' : 'bad_request', err.message.replace(/^FST_\w+: /, '')).toBody(requestPath(req.url)));
    },
    // Errors Node's HTTP parser raises before there is a request (headers too large, not HTTP, a request
    // that did not arrive in time) are answered in the one error shape with the same headers, then closed.
    clientErrorHandler: answerClientError,
  });
  if (handler) handlers.set(app, handler);
  // One limiter for every unauthenticated entry (api/login-limit.ts): logins, refused tokens, single sign-on.
  const limiter = opts.loginLimiter ?? new LoginLimiter();
  const auth = new Authenticator(opts.adminToken, opts.store, opts.discoveryDigest, Date.now, limiter);
  const access = new AccessControl(opts.store);
  app.addHook('onClose', async () => access.close());
  // Every route declares what it needs (config.permission); collected here, checked before the app is ready.
  const routes = declaredRoutes(app);
  const metrics = new Metrics(opts.store);
  app.addHook('onClose', async () => metrics.close());
  // Who did what (api/audit.ts): one hook for every route; its entries are written before the store closes.
  const audit = opts.audit ?? new AuditLog(opts.store, { ...(opts.log ? { log: opts.log } : {}) });
  app.addHook('onClose', async () => audit.flush());

  await app.register(swagger, {
    openapi: {
      info: { title: 'takt API', version: opts.version, description: 'Infrastructure pipeline engine. Authenticate with "Authorization: Bearer <token>". Each operation\'s x-takt-permission is the permission (resource:verb) a user token needs for it (docs/security.md).' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    // Each operation says the permission it needs (and a public one needs no token).
    transformObject: (doc) => routes.annotate((doc as { openapiObject: Parameters<typeof routes.annotate>[0] }).openapiObject),
  });

  // One JSON parser for every route: bounded nesting and no prototype keys, before any schema runs.
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, parseJsonBody(body as string));
    } catch (err) {
      done(err as Error, undefined);
    }
  });

  app.decorateRequest('principal', null as never);
  // Decided on the route the router matched (never on the raw URL text, which may be encoded): a request
  // that matches no route is 404 before its body is read — or, when its path is a route's with another
  // method, 405 to a caller whose token is valid (401 to any other); every matched route needs a principal
  // unless it declares itself public; a machine token reaches only the routes that accept machines, a join
  // token only the join routes.
  app.addHook('onRequest', async (req, reply) => {
    reply.headers(SECURITY_HEADERS);
    reply.header('x-request-id', req.id);
    checkTarget(req.raw.url ?? '', req.raw.rawHeaders);
    if (!allowedHost(req.headers.host, hosts)) {
      throw new TaktError('misdirected', `this endpoint does not answer to host '${req.headers.host ?? ''}'; use its address or add the name with --host-name`);
    }
    if (req.is404) {
      // No body is read for a request no route takes: the connection closes after the answer.
      reply.header('connection', 'close');
      const allow = allowedMethods(app, req.raw.url ?? req.url);
      if (allow.length === 0) throw notFoundError(req.method, req.url);
      // RFC 9110 §15.5.6: the path is a route's, the method is not one of its. Said only after the token
      // is checked, as the route itself would check it: a caller without a valid token learns nothing
      // from a 405 (the order is 421, 404, 401/429, 405; docs/api.md § Errors).
      req.principal = await auth.authenticate(req.headers.authorization, false, req.ip);
      reply.header('allow', allow.join(', '));
      throw new TaktError('method_not_allowed', `${req.method} is not a method of ${requestPath(req.url)}: it takes ${allow.join(', ')}`);
    }
    const cfg = req.routeOptions.config;
    if (cfg?.permission !== 'public') {
      const pathToken = cfg?.join === 'path' && req.headers.authorization === undefined ? (req.params as { token?: string }).token : undefined;
      req.principal = await auth.authenticate(pathToken !== undefined ? `Bearer ${pathToken}` : req.headers.authorization, !!cfg?.join, req.ip);
      // Liveness: every request a machine's token authenticates is its agent heard from (liveness.ts).
      if (req.principal.kind === 'machine') opts.engine.heard(req.principal.machineId, { version: agentVersion(req.headers['user-agent']), address: peerAddress(req.ip), via: 'agent' });
      if (req.principal.kind === 'machine' && !cfg?.machine) {
        throw new TaktError('forbidden', 'a machine token can only read and act on its own machine and its jobs');
      }
      if (req.principal.kind === 'join' && !cfg?.join) throw new TaktError('forbidden', JOIN_TOKEN_SCOPE);
      if (req.principal.kind === 'discovery' && !cfg?.discovery) throw new TaktError('forbidden', DISCOVERY_SCOPE);
      // A user: the route's declared permission, on its machine for a role bound to some machines only.
      if (req.principal.kind === 'user') await access.check(req.principal, cfg, req.params as Record<string, string>);
    }
    // Only after authentication: a caller without a token learns nothing about a route's inputs.
    checkQuery(req.query);
  });

  // What a user may not see: machines outside a scoped role (before serialisation), secure values
  // (ciphertext) without `secrets` (after it: one substring search finds that an answer holds none).
  app.addHook('preSerialization', async (req, _reply, payload) => {
    serialised.add(req);
    return access.shape(req.principal, req.routeOptions.config, payload);
  });
  app.addHook('onSend', async (req, _reply, payload) => (typeof payload === 'string' && serialised.has(req) ? access.redactText(req.principal, req.routeOptions.config, payload) : payload));

  auditHook(app, audit);

  app.addHook('onResponse', async (req, reply) => {
    // Unmatched URLs share one label, so probing clients cannot grow the metric without bound.
    metrics.observeRequest(req.method, req.routeOptions.url ?? '(no route)', reply.statusCode, reply.elapsedTime / 1000);
  });

  app.setErrorHandler((err: FastifyError | TaktError, req, reply) => {
    // `path` of an error that names no field: the request's own (model/errors.ts).
    const where = requestPath(req.url);
    // A 429's wait, on every answer that carries one (a join script's too).
    if (err instanceof TaktError && err.retryAfter !== undefined) reply.header('retry-after', String(err.retryAfter));
    // `curl … | sh` runs whatever comes back: an error must be a script that says it and fails.
    if (req.routeOptions.config?.shellErrors && err instanceof TaktError && err.status < 500) {
      return reply.code(err.status).type('text/plain; charset=utf-8').send(shellError(err.message));
    }
    if (err instanceof TaktError) {
      if (err.status < 500) return reply.code(err.status).send(err.toBody(where));
    } else {
      const fe = err as FastifyError;
      if (fe.validation) return reply.code(422).send(validationError(fe).toBody(where));
      const status = fe.statusCode ?? 500;
      if (status === 413) return reply.code(413).send(new TaktError('too_large', `request body is too large (limit ${req.routeOptions.bodyLimit ?? 1048576} bytes)`).toBody(where));
      if (status === 415) {
        const type = String(req.headers['content-type'] ?? '(none)').slice(0, 100);
        return reply.code(415).send(new TaktError('bad_request', `the body's content-type ${type} is not one this route takes: send JSON with content-type: application/json`).toBody(where));
      }
      if (status >= 400 && status < 500) {
        const code = status === 404 ? 'not_found' : 'bad_request';
        return reply.code(status).send(new TaktError(code, fe.message.replace(/^FST_\w+: /, '')).toBody(where));
      }
    }
    // Every 5xx is a bug or an outage: logged with the request id the answer carries.
    opts.log?.('error', `${req.method} ${req.routeOptions.url ?? '(no route)'} failed: ${err.message}`, { requestId: req.id, stack: err.stack });
    req.log.error({ err, requestId: req.id }, 'unhandled error');
    const status = err instanceof TaktError ? err.status : 500;
    const body = err instanceof TaktError ? err.toBody(where) : new TaktError('internal', 'internal error; the endpoint log has the details').toBody(where);
    body.error.requestId = req.id;
    if (req.routeOptions.config?.shellErrors) return reply.code(status).type('text/plain; charset=utf-8').send(shellError(`${body.error.message} (request ${req.id})`));
    return reply.code(status).send(body);
  });

  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send(notFoundError(req.method, req.url).toBody(requestPath(req.url)));
  });

  // `?challenge=` (model/proof.ts): the CLI checks this is the endpoint its data dir's admin token belongs to before sending it.
  app.get<{ Querystring: { challenge?: string } }>('/api/v1/health', { config: { permission: 'public' }, schema: { hide: true } }, async (req) => {
    const challenge = req.query.challenge;
    if (challenge === undefined) return { status: 'ok', version: opts.version };
    if (!CHALLENGE_PATTERN.test(challenge)) throw new TaktError('bad_request', 'query parameter challenge must be 16 to 128 characters of base64url (A-Z a-z 0-9 - _)', { path: 'challenge' });
    return { status: 'ok', version: opts.version, proof: endpointProof(opts.adminToken, challenge) };
  });
  app.get('/api/v1/openapi.json', { config: { permission: 'api:read' }, schema: { hide: true } }, async () => app.swagger());
  app.get('/metrics', { config: { permission: 'reports:read' }, schema: { hide: true } }, async (_req, reply) => {
    const { contentType, body } = await metrics.text();
    reply.type(contentType);
    return body;
  });
  app.get('/', { config: { permission: 'public' }, schema: { hide: true } }, async (_req, reply) => {
    reply.type('text/html; charset=utf-8').header('content-security-policy', csp).header('cache-control', 'no-store');
    return ui;
  });

  machineRoutes(app, opts);
  jobRoutes(app, opts);
  contentRoutes(app, opts);
  eventRoutes(app, opts, access);
  rolloutRoutes(app, opts);
  runRoutes(app, opts);
  reportRoutes(app, opts);
  joinRoutes(app, opts);
  credentialRoutes(app, opts);
  await imageRoutes(app, opts);
  dhcpRoutes(app, opts);
  userRoutes(app, opts, limiter);
  auditRoutes(app, opts, audit);
  // Deny by default: a route that says nothing about who may call it stops the endpoint from starting.
  routes.assertDeclared();
  // Everything but the UI page is data: nothing in an API answer may load or run.
  app.addHook('onSend', async (_req, reply) => {
    if (!reply.hasHeader('content-security-policy')) reply.header('content-security-policy', API_CSP);
  });
  await app.ready();
  return app;
}

/** Request ids `r-<8 hex>-<counter in base 36>`: the prefix is random per endpoint start. */
function requestIds(): () => string {
  const prefix = `r-${randomBytes(4).toString('hex')}-`;
  let n = 0;
  return () => prefix + (++n).toString(36);
}

/** A whole HTTP/1.1 error response as bytes, for a socket that has no request to answer through. */
function rawErrorResponse(status: number, body: object): string {
  const text = JSON.stringify(body);
  const headers: Record<string, string> = {
    ...SECURITY_HEADERS,
    'content-security-policy': API_CSP,
    'x-request-id': `r-${randomBytes(6).toString('hex')}`,
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(text)),
    connection: 'close',
  };
  return `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n${text}`;
}

/** The 404 answer; echoes only the path (never the query, which may hold a token or a value). */
function notFoundError(method: string, url: string): TaktError {
  return new TaktError('not_found', `no route ${method} ${requestPath(url)}; see GET /api/v1/openapi.json`);
}

/** The methods a 405's Allow header may name (HEAD: every GET route answers it too). */
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

/**
 * The methods some route takes at `url` (the request target as sent), asked of the router the request
 * was routed by, so an encoded or odd spelling is matched as the request was; empty: no route has it.
 */
function allowedMethods(app: FastifyInstance, url: string): string[] {
  return METHODS.filter((method) => app.findRoute({ method, url }) !== null);
}

/** A schema violation as a 422 naming the field (never echoing the value, which may be secure). */
/**
 * The first schema error of a request as one message in words: the field (or, for a key that breaks a
 * `propertyNames` rule, the key itself), what is wrong, and a known name pattern described, not quoted.
 */
function validationError(fe: FastifyError): TaktError {
  const v = fe.validation![0]! as NonNullable<FastifyError['validation']>[number] & { propertyName?: string };
  const extra = (v.params as { additionalProperty?: string; missingProperty?: string; propertyName?: string; pattern?: string; allowedValues?: unknown[] } | undefined) ?? {};
  const key = v.propertyName ?? extra.propertyName;
  const field = extra.additionalProperty ?? extra.missingProperty ?? key;
  const path = `${v.instancePath ?? ''}${field ? `/${field.replace(/~/g, '~0').replace(/\//g, '~1')}` : ''}`;
  const where = v.instancePath || fe.validationContext || 'body';
  const words = extra.pattern !== undefined ? describePattern(extra.pattern) : undefined;
  const want = words ? `must be ${words}` : v.keyword === 'enum' && extra.allowedValues ? `must be one of ${extra.allowedValues.map((x) => JSON.stringify(x)).join(', ')}` : ajvWords(v.keyword, v.params, v.message);
  const message =
    v.keyword === 'additionalProperties'
      ? `unknown field '${field}'`
      : v.keyword === 'required'
        ? `missing required field '${field}'`
        : key !== undefined
          ? `${where}: key ${JSON.stringify(key)} ${v.keyword === 'propertyNames' ? 'is not allowed' : want}`
          : `${path || where} ${want}`;
  return new TaktError('invalid', message, { path: path || '/' });
}
