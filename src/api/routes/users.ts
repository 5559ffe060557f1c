/**
 * Users, groups, roles, tokens and login — by password, and by single sign-on (OpenID Connect: the
 * browser's code flow and the CLI's device flow, api/oidc.ts) — (issue #16; engine/users.ts has the rules). Each route
 * declares its permission; `self` routes act on the caller's own account and tokens, and on anyone's for
 * a holder of `users:admin` / `tokens:admin` (or the bootstrap admin token).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Users } from '../../engine/users.js';
import { TaktError } from '../../model/errors.js';
import { BUILTIN_ROLES, expandRole, isScoped, patternGrants, ROLE_NAMES, type Permission } from '../../model/permissions.js';
import { LOGIN_TOKEN_TTL_MS, parseTtl } from '../../model/users.js';
import { author, type ApiContext } from '../context.js';
import { CALLBACK_PATH, requestOrigin, STATE_COOKIE, type Sso } from '../oidc.js';
import { LoginLimiter } from '../login-limit.js';

/** One cookie's value from a Cookie header, or undefined. */
function cookieOf(header: string | undefined, name: string): string | undefined {
  for (const part of (header ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

const str = (max: number) => ({ type: 'string', minLength: 1, maxLength: max }) as const;
const roleList = { type: 'array', maxItems: 16, items: { enum: ROLE_NAMES } } as const;

/** True when the caller holds `perm` on everything (the admin token does). */
function holds(req: FastifyRequest, perm: Permission): boolean {
  const p = req.principal;
  if (p.kind === 'admin') return true;
  return p.kind === 'user' && p.grants.some((g) => !isScoped(g) && g.permissions.some((x) => patternGrants(x, perm)));
}

/** The caller's user name, or undefined for the admin token (which has no account). */
function selfName(req: FastifyRequest): string | undefined {
  return req.principal.kind === 'user' ? req.principal.name : undefined;
}

/** `undefined` when the caller may act on anyone's tokens, else their own name. @throws 403 for a non-user without admin. */
function tokenOwnerLimit(req: FastifyRequest): string | undefined {
  if (holds(req, 'tokens:admin')) return undefined;
  const me = selfName(req);
  if (!me) throw new TaktError('forbidden', 'only users and token admins manage tokens');
  return me;
}

/** The name device-flow polls are counted under by the login limiter (not a takt name: it has parentheses). */
const DEVICE_KEY = '(device code)';

/**
 * The user, login and single sign-on routes. `limiter`: the endpoint's one rate limiter (buildServer's,
 * shared with token authentication); default `ctx.loginLimiter`, else one with the defaults.
 */
export function userRoutes(app: FastifyInstance, ctx: ApiContext, limiter: LoginLimiter = ctx.loginLimiter ?? new LoginLimiter()) {
  const users = new Users(ctx.store);

  app.post(
    '/api/v1/login',
    {
      config: { permission: 'public' },
      schema: {
        description: 'Exchange a user name and password for a personal token (shown once) with an expiry (default 12h).',
        body: { type: 'object', additionalProperties: false, required: ['user', 'password'], properties: { user: str(63), password: str(1024), ttl: { type: 'string', maxLength: 16, description: 'lifetime: 90m, 12h, 30d' } } },
      },
    },
    async (req, reply) => {
      const b = req.body as { user: string; password: string; ttl?: string };
      const ttl = b.ttl ? parseTtl(b.ttl) : LOGIN_TOKEN_TTL_MS;
      // Refused before the password is checked once this name+address (or this address) used its budget.
      limiter.check(b.user, req.ip);
      let r: Awaited<ReturnType<typeof users.login>>;
      try {
        r = await users.login(b.user, b.password, ttl);
      } catch (err) {
        if (err instanceof TaktError && err.code === 'unauthorized') limiter.failed(b.user, req.ip);
        throw err;
      }
      limiter.succeeded(b.user, req.ip);
      reply.code(201);
      return r;
    },
  );

  // Single sign-on (api/oidc.ts). All public: they are how someone without a token gets one.
  const sso = () => {
    if (!ctx.sso) throw new TaktError('not_found', 'single sign-on is not set up on this endpoint (takt serve --oidc-issuer URL --oidc-client-id ID); log in with a password: takt login NAME');
    return ctx.sso;
  };
  app.get('/api/v1/login/sso', { config: { permission: 'public' }, schema: { description: 'The single sign-on (OpenID Connect) provider and whether the device flow (takt login --sso) is available; 404 when single sign-on is not set up.' } }, async () => sso().info());
  app.post('/api/v1/login/sso/device', { config: { permission: 'public' }, schema: { description: 'Start a device sign-in (RFC 8628): the code and URL to show the user, and the device code to poll with.' } }, async (req, reply) => {
    const s = sso();
    // Each start is a request to the provider and a code kept here: bounded per address.
    limiter.attempt(req.ip, 'sso');
    const r = await s.startDevice();
    reply.code(201);
    return r;
  });
  app.post(
    '/api/v1/login/sso/device/token',
    {
      config: { permission: 'public' },
      schema: {
        description: "Poll a device sign-in once (every 'interval' seconds; 5 more after slow_down): pending, slow_down, or a personal token (shown once) for the user who signed in.",
        body: { type: 'object', additionalProperties: false, required: ['deviceCode'], properties: { deviceCode: str(2048), ttl: { type: 'string', maxLength: 16, description: 'lifetime: 90m, 12h, 30d (default 12h)' } } },
      },
    },
    async (req, reply) => {
      const b = req.body as { deviceCode: string; ttl?: string };
      const ttlMs = b.ttl ? parseTtl(b.ttl) : LOGIN_TOKEN_TTL_MS;
      // Guessing device codes: refused polls count per address (under the name '(device code)').
      limiter.check(DEVICE_KEY, req.ip);
      let r: Awaited<ReturnType<Sso['pollDevice']>>;
      try {
        r = await sso().pollDevice(b.deviceCode);
      } catch (err) {
        if (err instanceof TaktError && (err.code === 'unauthorized' || err.code === 'bad_request' || err.code === 'forbidden')) limiter.failed(DEVICE_KEY, req.ip);
        throw err;
      }
      if (r.status !== 'done') return r;
      const issued = await users.ssoLogin(r.identity, ttlMs);
      reply.code(201);
      return { status: 'done', user: issued.user.name, groups: issued.groups, token: issued.token, tokenInfo: issued.tokenInfo };
    },
  );
  app.get('/api/v1/login/sso/start', { config: { permission: 'public' }, schema: { hide: true } }, async (req, reply) => {
    const s = sso();
    // Each start keeps a verifier, state and nonce for 10 minutes: bounded per address (and in all, oidc.ts).
    limiter.attempt(req.ip, 'sso');
    const { url, state } = await s.startBrowser(requestOrigin(req) + CALLBACK_PATH);
    // Ties the callback to this browser; Lax so it comes along on the provider's top-level redirect back.
    reply.header('set-cookie', `${STATE_COOKIE}=${state}; Path=${CALLBACK_PATH}; Max-Age=600; HttpOnly; SameSite=Lax${req.protocol === 'https' ? '; Secure' : ''}`);
    return reply.redirect(url, 302);
  });
  app.get('/api/v1/login/sso/callback', { config: { permission: 'public' }, schema: { hide: true } }, async (req, reply) => {
    const s = sso();
    const clear = `${STATE_COOKIE}=; Path=${CALLBACK_PATH}; Max-Age=0; HttpOnly; SameSite=Lax${req.protocol === 'https' ? '; Secure' : ''}`;
    reply.header('set-cookie', clear);
    try {
      // Failed callbacks (a forged or stale state, a code the provider refuses) are bounded per address.
      limiter.check(null, req.ip, 'sso');
      let identity: Awaited<ReturnType<Sso['finishBrowser']>>;
      try {
        identity = await s.finishBrowser(new URL(req.url, requestOrigin(req)), cookieOf(req.headers.cookie, STATE_COOKIE));
      } catch (err) {
        if (err instanceof TaktError && err.code === 'unauthorized') limiter.failed(null, req.ip, 'sso');
        throw err;
      }
      const issued = await users.ssoLogin(identity);
      // The UI keeps its token as it does a pasted one: the fragment never reaches a server, and the page
      // moves it into its storage and out of the address bar and history at once.
      return reply.redirect(`/#token=${encodeURIComponent(issued.token)}`, 302);
    } catch (err) {
      if (!(err instanceof TaktError) || err.status >= 500) req.log.error({ err }, 'single sign-on callback failed');
      const message = err instanceof TaktError ? err.message : 'single sign-on failed; the endpoint log has the details';
      return reply.redirect(`/#ssoError=${encodeURIComponent(message)}`, 302);
    }
  });

  app.get('/api/v1/whoami', { config: { permission: 'self' }, schema: { description: 'Who the token is and what it may do.' } }, async (req) => {
    const p = req.principal;
    if (p.kind === 'admin') return { name: 'admin', kind: 'admin', roles: ['admin'], permissions: ['*'] };
    if (p.kind !== 'user') throw new TaktError('forbidden', 'not a user token');
    return {
      name: p.name,
      kind: 'user',
      token: p.tokenId,
      roles: p.grants.map((g) => ({ role: g.role, ...(g.machines ? { machines: g.machines } : {}), ...(g.pipelines ? { pipelines: g.pipelines } : {}) })),
      permissions: [...new Set(p.grants.flatMap((g) => expandRole(g.role)))].sort(),
    };
  });

  app.get('/api/v1/users', { config: { permission: 'users:read' } }, async () => ({ items: await users.listUsers() }));
  app.post(
    '/api/v1/users',
    { config: { permission: 'users:admin' }, schema: { body: { type: 'object', additionalProperties: false, required: ['name', 'password'], properties: { name: str(63), password: str(1024), roles: roleList } } } },
    async (req, reply) => {
      const b = req.body as { name: string; password: string; roles?: string[] };
      reply.code(201);
      return users.createUser(b.name, b.password, author(req), b.roles);
    },
  );
  app.delete('/api/v1/users/:name', { config: { permission: 'users:admin' } }, async (req) => users.deleteUser((req.params as { name: string }).name, author(req)));
  app.put(
    '/api/v1/users/:name/password',
    { config: { permission: 'self' }, schema: { body: { type: 'object', additionalProperties: false, required: ['password'], properties: { password: str(1024) } } } },
    async (req) => {
      const name = (req.params as { name: string }).name;
      if (selfName(req) !== name && !holds(req, 'users:admin')) throw new TaktError('forbidden', `only ${name} or a user admin can change ${name}'s password`);
      await users.setPassword(name, (req.body as { password: string }).password);
      return { name, password: 'changed' };
    },
  );

  app.get('/api/v1/groups', { config: { permission: 'users:read' } }, async () => ({ items: await users.listGroups() }));
  app.put(
    '/api/v1/groups/:name',
    {
      config: { permission: 'users:admin' },
      schema: { body: { type: 'object', additionalProperties: false, properties: { add: { type: 'array', maxItems: 1000, items: str(63) }, remove: { type: 'array', maxItems: 1000, items: str(63) } } } },
    },
    async (req) => users.putGroup((req.params as { name: string }).name, req.body as { add?: string[]; remove?: string[] }, author(req)),
  );
  app.delete('/api/v1/groups/:name', { config: { permission: 'users:admin' } }, async (req) => {
    await users.deleteGroup((req.params as { name: string }).name, author(req));
    return { deleted: (req.params as { name: string }).name };
  });

  app.get('/api/v1/roles', { config: { permission: 'roles:read' } }, async () => ({
    items: ROLE_NAMES.map((name) => ({ name, description: BUILTIN_ROLES[name]!.description, grants: BUILTIN_ROLES[name]!.permissions, permissions: expandRole(name) })),
  }));
  app.get('/api/v1/rolebindings', { config: { permission: 'roles:read' } }, async () => ({ items: await users.listBindings() }));
  app.post(
    '/api/v1/rolebindings',
    {
      config: { permission: 'roles:admin' },
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['role', 'subject'],
          properties: {
            role: { enum: ROLE_NAMES },
            subject: { type: 'string', maxLength: 80, description: 'user:NAME or group:NAME' },
            machines: { type: 'string', minLength: 1, maxLength: 1024, description: 'only machines matching this label selector, e.g. env=prod' },
            pipelines: { type: 'array', minItems: 1, maxItems: 64, items: str(63), description: 'only machines on these pipelines' },
          },
        },
      },
    },
    async (req, reply) => {
      reply.code(201);
      return users.bind(req.body as { role: string; subject: string; machines?: string; pipelines?: string[] }, author(req));
    },
  );
  app.delete('/api/v1/rolebindings/:id', { config: { permission: 'roles:admin' } }, async (req) => users.unbind((req.params as { id: string }).id, author(req)));

  app.get('/api/v1/tokens', { config: { permission: 'self' }, schema: { description: "Your tokens; a token admin sees everyone's (?owner= for one user's)." } }, async (req) => {
    const limit = tokenOwnerLimit(req);
    const owner = (req.query as { owner?: string }).owner;
    if (limit !== undefined && owner !== undefined && owner !== limit) throw new TaktError('forbidden', "only a token admin lists others' tokens");
    return { items: await users.listTokens(limit ?? owner) };
  });
  app.post(
    '/api/v1/tokens',
    {
      config: { permission: 'self' },
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['name'],
          properties: {
            name: str(63),
            kind: { enum: ['personal', 'service'] },
            owner: { ...str(63), description: 'whose token (default: yours; another user needs tokens:admin)' },
            roles: { ...roleList, description: "roles it carries, each one the owner holds (default: all the owner's)" },
            ttl: { type: 'string', maxLength: 16, description: 'lifetime: 90m, 12h, 30d (default 30d, at most 365d)' },
          },
        },
      },
    },
    async (req, reply) => {
      const b = req.body as { name: string; kind?: 'personal' | 'service'; owner?: string; roles?: string[]; ttl?: string };
      const limit = tokenOwnerLimit(req);
      const owner = b.owner ?? selfName(req);
      if (!owner) throw new TaktError('invalid', "the admin token has no account: say whose token it is ('owner')", { path: '/owner' });
      if (limit !== undefined && owner !== limit) throw new TaktError('forbidden', "only a token admin makes tokens for others");
      reply.code(201);
      return users.issue({ owner, name: b.name, kind: b.kind ?? 'personal', roles: b.roles, ttlMs: b.ttl ? parseTtl(b.ttl) : undefined }, author(req));
    },
  );
  app.post('/api/v1/tokens/:id/rotate', { config: { permission: 'self' } }, async (req) => users.rotate((req.params as { id: string }).id, tokenOwnerLimit(req), author(req)));
  app.delete('/api/v1/tokens/:id', { config: { permission: 'self' } }, async (req) => users.revoke((req.params as { id: string }).id, tokenOwnerLimit(req), author(req)));

  app.get('/api/v1/auth/bootstrap', { config: { permission: 'users:read' } }, async () => users.bootstrap());
  app.put(
    '/api/v1/auth/bootstrap',
    { config: { permission: 'users:admin' }, schema: { body: { type: 'object', additionalProperties: false, required: ['enabled'], properties: { enabled: { type: 'boolean' } } } } },
    async (req) => users.setBootstrap((req.body as { enabled: boolean }).enabled, author(req)),
  );
}
