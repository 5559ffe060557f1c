/**
 * Joining hosts (docs/remote.md, docs/api.md § Join):
 *
 *   POST   /api/v1/join-tokens            admin: make a join token; answers the one-liner (token shown once)
 *   GET    /api/v1/join-tokens            admin: list (never the secret)
 *   GET    /api/v1/join-tokens/:id        admin
 *   DELETE /api/v1/join-tokens/:id        admin: revoke
 *   GET    /join/:token                   join token: the install script (errors are scripts that fail)
 *   GET    /join/:token/agent.tar.gz      join token: the agent bundle
 *   POST   /api/v1/join                   join token: register this host (inventory in, machine token out);
 *                                         discovery credential: register a machine booted into discovery
 *   PUT    /api/v1/machines/:id/facts     machine token: the agent reports its host's facts
 *   POST   /api/v1/machines/:id/token     admin: rotate a machine's token (the old one stops working)
 *
 * A join token reaches only the three join routes (route config `join`); every other route refuses it.
 */
import type { FastifyInstance } from 'fastify';
import { publicMachine } from '../../engine/engine.js';
import { peerAddress } from '../../engine/liveness.js';
import { TaktError } from '../../model/errors.js';
import { FactsSchema, MAX_FACTS_BYTES, type Facts } from '../../model/facts.js';
import { MAX_JOIN_USES } from '../../model/join.js';
import { failureScript, installScript, shellQuote } from '../../join/script.js';
import { requireOwnMachineRef } from '../auth.js';
import { author, intQuery, type ApiContext } from '../context.js';
import { Name } from './schemas.js';

const createBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    name: { ...Name, description: "the machine's name (single-use tokens only); default: the host's hostname" },
    pipeline: { anyOf: [Name, { type: 'null' }], description: 'start this pipeline on the machine once it has joined' },
    profiles: { type: 'array', items: Name, maxItems: 100 },
    environment: { ...Name, description: 'default remote' },
    expires: { anyOf: [{ type: 'string', maxLength: 32 }, { type: 'number' }], description: 'lifetime, e.g. 1h (default), 30m, 2d; at most 7d' },
    uses: { type: 'integer', minimum: 1, maximum: MAX_JOIN_USES, description: 'registrations allowed (default 1)' },
    url: { type: 'string', maxLength: 2048, description: "the endpoint's URL as the hosts reach it (default: the endpoint's advertised https URL)" },
  },
} as const;

const registerBody = { type: 'object', additionalProperties: false, required: ['facts'], properties: { facts: FactsSchema } } as const;

/** The key pin for `url`: the endpoint's own for https, none for http (loopback only, see endpointUrl). */
function pinFor(ctx: ApiContext, url: string): string | null {
  if (url.startsWith('http:')) return null;
  const tls = ctx.tls;
  if (!tls) throw new TaktError('unavailable', 'this endpoint serves no TLS, so it cannot give hosts an https join command; start it with a non-loopback --listen');
  return tls.spkiPin;
}

/**
 * The one line to run as root on the host. `-k` with a key pin: see docs/remote.md § Trust. Not
 * `curl … | sh`: a pipeline's status is sh's, so a curl that fails (unreachable, wrong pin, TLS) would
 * exit 0. The script is read whole first and run only when curl succeeded. No `-f`: a refusal (401 …) is
 * a script that prints why and exits 1 (failureScript). POSIX sh (dash) and bash alike.
 */
export function joinCommand(joinUrl: string, pin: string | null): string {
  const curl = pin ? `curl -sS --pinnedpubkey ${shellQuote(pin)} -k ${shellQuote(joinUrl)}` : `curl -sS ${shellQuote(joinUrl)}`;
  return `S=$(${curl}) && printf '%s\\n' "$S" | sh`;
}

export function joinRoutes(app: FastifyInstance, ctx: ApiContext) {
  const { joins } = ctx;

  app.post('/api/v1/join-tokens', { config: { permission: 'join:write' }, schema: { body: createBody } }, async (req, reply) => {
    const body = req.body as { name?: string; pipeline?: string | null; profiles?: string[]; environment?: string; expires?: string | number; uses?: number; url?: string };
    const url = body.url ?? ctx.publicUrl ?? null;
    if (!url) {
      throw new TaktError('invalid', 'this endpoint listens on loopback only, so no other host can reach it: start it with --listen ADDR:PORT (served over TLS), or give the URL hosts use (url, --url)', { path: '/url' });
    }
    const { joinToken, token } = await joins.create({ ...body, url }, author(req));
    const pin = pinFor(ctx, joinToken.url);
    const joinUrl = `${joinToken.url}/join/${token}`;
    // Building the bundle takes seconds: start it now, so it is ready when the host asks.
    void ctx.agentBundle.get().catch(() => undefined);
    reply.code(201);
    return { ...joinToken, token, joinUrl, pin, caFingerprint: ctx.tls?.caFingerprint ?? null, command: joinCommand(joinUrl, pin) };
  });

  app.get('/api/v1/join-tokens', { config: { permission: 'join:read' } }, async (req) => {
    const q = req.query as Record<string, string | undefined>;
    return { items: await joins.list({ limit: intQuery(q.limit, 'limit', 100, 1000), offset: intQuery(q.offset, 'offset', 0) }) };
  });
  app.get('/api/v1/join-tokens/:id', { config: { permission: 'join:read' } }, async (req) => joins.get((req.params as { id: string }).id));
  app.delete('/api/v1/join-tokens/:id', { config: { permission: 'join:write' } }, async (req) => joins.revoke((req.params as { id: string }).id, author(req)));

  app.get('/join/:token', { config: { permission: 'join:admin', join: 'path', shellErrors: true }, schema: { hide: true } }, async (req, reply) => {
    const id = joinId(req.principal);
    const t = await joins.get(id);
    const bundle = await ctx.agentBundle.get();
    const tls = ctx.tls;
    const script = installScript({
      url: t.url,
      pin: pinFor(ctx, t.url),
      caPem: t.url.startsWith('https:') ? (tls?.caPem ?? null) : null,
      token: (req.params as { token: string }).token,
      bundleSha256: bundle.sha256,
      version: ctx.version,
    });
    reply.type('text/plain; charset=utf-8').header('cache-control', 'no-store');
    return script;
  });

  app.get('/join/:token/agent.tar.gz', { config: { permission: 'join:admin', join: 'path' }, schema: { hide: true } }, async (req, reply) => {
    joinId(req.principal);
    const { bundle, file } = await ctx.agentBundle.open();
    reply.type('application/gzip').header('content-length', bundle.bytes).header('x-takt-sha256', bundle.sha256).header('cache-control', 'no-store');
    return reply.send(file.createReadStream());
  });

  app.post('/api/v1/join', { config: { permission: 'join:admin', join: true, discovery: true }, bodyLimit: MAX_FACTS_BYTES + 1024, schema: { body: registerBody } }, async (req, reply) => {
    const facts = (req.body as { facts: Facts }).facts;
    const p = req.principal;
    if (p.kind === 'discovery') {
      const r = await joins.discover(p.mac, facts, peerAddress(req.ip));
      const c = r.classification;
      ctx.log?.('info', `discovery: ${r.machine.name} registered${r.rejoined ? ' again' : ''}; ${'error' in c ? `not classified: ${c.error}` : c.rule ? `classified by rule ${c.rule.name} (${c.rule.pack})` : `no classification rule matched: ${c.reasons.join('; ')}`}`, { mac: p.mac });
      reply.code(201);
      const classification = 'error' in c ? { error: c.error } : { rule: c.rule, reasons: c.reasons, gave: c.gave };
      return { machine: { ...publicMachine(r.machine), facts: r.machine.facts }, token: r.token, rejoined: r.rejoined, classification };
    }
    const r = await joins.register(joinId(p), facts, peerAddress(req.ip));
    reply.code(201);
    // The token is shown this once: only its digest is stored.
    return { machine: { ...publicMachine(r.machine), facts: r.machine.facts }, token: r.token, rejoined: r.rejoined };
  });

  app.put(
    '/api/v1/machines/:id/facts',
    {
      config: { permission: 'machines:admin', scope: 'machine', machine: true },
      bodyLimit: MAX_FACTS_BYTES,
      schema: { body: FactsSchema },
      // Whose facts, before the body is looked at: another machine's token learns nothing from a 422.
      preValidation: async (req) => {
        const p = req.principal;
        // Observed state comes from the one who observes it: the machine's own agent, never another token.
        if (p.kind !== 'machine') throw new TaktError('forbidden', "facts are reported by the machine's own agent (its machine token)");
        if (p.machineId !== (req.params as { id: string }).id) throw new TaktError('forbidden', 'a machine token can only read and act on its own machine and its jobs');
      },
    },
    async (req) => ({ facts: await joins.setFacts((req.params as { id: string }).id, req.body as Facts) }),
  );

  // The deploying agent asks for its machine's deploy token after writing the image, and writes it into the
  // disk's join block (model/joinblock.ts); the deployed OS registers with it once.
  app.post(
    '/api/v1/machines/:id/deploy-token',
    {
      config: { permission: 'machines:admin', scope: 'machine', machine: true },
      schema: { body: { type: 'object', additionalProperties: false, required: ['url'], properties: { url: { type: 'string', minLength: 1, maxLength: 300, description: 'the endpoint URL the deployed OS will use (the deploying agent\'s own)' } } } },
    },
    async (req) => {
      const id = (req.params as { id: string }).id;
      await requireOwnMachineRef(req.principal, id, ctx.store);
      if (!ctx.tls || !ctx.tls.caFingerprint.includes(':')) throw new TaktError('unavailable', 'this endpoint serves no TLS with a CA of its own, so a deployed OS could not pin it; start it with --listen on the provisioning network');
      const { joinToken, token } = await joins.deployToken(id, (req.body as { url: string }).url, author(req));
      return { machine: joinToken.machine, api: joinToken.url, caFingerprint: ctx.tls.caFingerprint, token, expiresAt: joinToken.expiresAt, joinToken: joinToken.id };
    },
  );

  app.post('/api/v1/machines/:id/token', { config: { permission: 'machines:admin', scope: 'machine' } }, async (req) => {
    const r = await joins.rotateToken((req.params as { id: string }).id, author(req));
    return { machine: publicMachine(r.machine), token: r.token };
  });
}

/** The join token behind a join route's request (the route config admits no other principal but the admin). */
function joinId(p: { kind: string; tokenId?: string }): string {
  if (p.kind !== 'join' || !p.tokenId) throw new TaktError('forbidden', 'this route is for hosts joining with a join token');
  return p.tokenId;
}

/** The install route's error answer: a script that prints the message and fails. */
export const shellError = failureScript;
