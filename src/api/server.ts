/**
 * The HTTP API: REST under /api/v1, the event stream, the OpenAPI document, and the web UI's static page.
 * Every error leaves as `{error:{code,message,path}}` with a 4xx status; a 500 is a bug and is logged.
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import { TaktError } from '../model/errors.js';
import { Authenticator } from './auth.js';
import type { ApiContext } from './context.js';
import { contentRoutes } from './routes/content.js';
import { eventRoutes } from './routes/events.js';
import { jobRoutes } from './routes/jobs.js';
import { Metrics } from './metrics.js';
import { machineRoutes } from './routes/machines.js';
import { reportRoutes } from './routes/reports.js';
import { rolloutRoutes } from './routes/rollouts.js';

export interface ServerOptions extends ApiContext {
  adminToken: string;
  logger?: boolean | object;
}

const UI_FILE = fileURLToPath(new URL('../../ui/index.html', import.meta.url));

export async function buildServer(opts: ServerOptions): Promise<FastifyInstance> {
  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: 1024 * 1024,
    // Long-polls and event streams stay open; the claim itself bounds its wait.
    requestTimeout: 0,
    ajv: { customOptions: { allErrors: false, removeAdditional: false, coerceTypes: false } },
  });
  const auth = new Authenticator(opts.adminToken, opts.store);
  const metrics = new Metrics(opts.store);
  app.addHook('onClose', async () => metrics.close());

  await app.register(swagger, {
    openapi: {
      info: { title: 'takt API', version: opts.version, description: 'Infrastructure pipeline engine. Authenticate with "Authorization: Bearer <token>".' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  app.decorateRequest('principal', null as never);
  app.addHook('onRequest', async (req) => {
    const cfg = req.routeOptions.config;
    if (cfg?.public || !(req.url.startsWith('/api/') || req.routeOptions.url === '/metrics')) return;
    req.principal = await auth.authenticate(req.headers.authorization);
    if (req.principal.kind === 'machine' && !cfg?.machine) {
      throw new TaktError('forbidden', 'a machine token can only read and act on its own machine and its jobs');
    }
  });

  app.addHook('onResponse', async (req, reply) => {
    // Unmatched URLs share one label, so probing clients cannot grow the metric without bound.
    metrics.observeRequest(req.method, req.routeOptions.url ?? '(no route)', reply.statusCode, reply.elapsedTime / 1000);
  });

  app.setErrorHandler((err: FastifyError | TaktError, req, reply) => {
    if (err instanceof TaktError) return reply.code(err.status).send(err.toBody());
    const fe = err as FastifyError;
    if (fe.validation) {
      const v = fe.validation[0]!;
      const extra = (v.params as { additionalProperty?: string; missingProperty?: string } | undefined) ?? {};
      const field = extra.additionalProperty ?? extra.missingProperty;
      const path = `${v.instancePath ?? ''}${field ? `/${field}` : ''}`;
      const message =
        v.keyword === 'additionalProperties'
          ? `unknown field '${field}'`
          : v.keyword === 'required'
            ? `missing required field '${field}'`
            : `${path || fe.validationContext || 'body'} ${v.message ?? 'is invalid'}`;
      return reply.code(422).send(new TaktError('invalid', message, { path: path || '/' }).toBody());
    }
    const status = fe.statusCode ?? 500;
    if (status === 413) return reply.code(413).send(new TaktError('too_large', `request body is too large (limit ${req.routeOptions.bodyLimit ?? 1048576} bytes)`).toBody());
    if (status >= 400 && status < 500) {
      const code = status === 415 ? 'bad_request' : status === 404 ? 'not_found' : 'bad_request';
      return reply.code(status).send(new TaktError(code, fe.message.replace(/^FST_\w+: /, '')).toBody());
    }
    req.log.error({ err }, 'unhandled error');
    return reply.code(500).send(new TaktError('internal', 'internal error; the endpoint log has the details').toBody());
  });

  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send(new TaktError('not_found', `no route ${req.method} ${req.url.split('?')[0]}; see GET /api/v1/openapi.json`).toBody());
  });

  app.get('/api/v1/health', { config: { public: true }, schema: { hide: true } }, async () => ({ status: 'ok', version: opts.version }));
  app.get('/api/v1/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  app.get('/metrics', { schema: { hide: true } }, async (_req, reply) => {
    const { contentType, body } = await metrics.text();
    reply.type(contentType);
    return body;
  });
  app.get('/', { config: { public: true }, schema: { hide: true } }, async (_req, reply) => {
    reply.type('text/html; charset=utf-8');
    return readFile(UI_FILE, 'utf8');
  });

  machineRoutes(app, opts);
  jobRoutes(app, opts);
  contentRoutes(app, opts);
  eventRoutes(app, opts);
  rolloutRoutes(app, opts);
  reportRoutes(app, opts);
  await app.ready();
  return app;
}
