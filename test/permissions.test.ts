/**
 * Route permissions (issue #16, part 1), generated from the running server's route list: every route ×
 * each built-in role × a role bound to all machines or to machines labelled env=own, on a machine
 * labelled own or other → allowed, or 403. Handlers never run for real: the services behind the routes are
 * stand-ins that refuse every call with a marker (409), so "allowed" is any answer but 401/403 and no route
 * changes anything. Also: the model's roles as a table, and the server refusing a route with no declaration.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { declaredRoutes, routeTableOf } from '../src/api/access.js';
import type { ApiContext } from '../src/api/context.js';
import { lazyValidators, type PendingValidator } from '../src/api/lazy-validators.js';
import { buildServer } from '../src/api/server.js';
import { Users } from '../src/engine/users.js';
import { TaktError } from '../src/model/errors.js';
import { decide, expandRole, grantOf, isRouteAccess, ROLE_NAMES, type Permission } from '../src/model/permissions.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import type { SqlStore } from '../src/store/sql-store.js';

/**
 * Independent of model/permissions.ts: what each built-in role may do, as the brief states it. The audit
 * log is for admins only: no `*:read` reaches it.
 */
const read = (p: Permission) => p.endsWith(':read') && !p.startsWith('audit:');
const ROLE_ALLOWS: Record<string, (p: Permission) => boolean> = {
  viewer: (p) => read(p),
  operator: (p) => read(p) || p.endsWith(':run') || p.endsWith(':approve'),
  author: (p) => read(p) || p === 'content:write' || p === 'machines:write' || p === 'images:write',
  admin: () => true,
};

describe('built-in roles (model)', () => {
  it.each([
    ['viewer', 'machines:read', true],
    ['viewer', 'jobs:secrets', false],
    ['viewer', 'machines:run', false],
    ['operator', 'machines:run', true],
    ['operator', 'machines:approve', true],
    ['operator', 'content:write', false],
    ['author', 'content:write', true],
    ['author', 'machines:write', true],
    ['author', 'machines:run', false],
    ['author', 'users:admin', false],
    ['admin', 'users:admin', true],
    ['admin', 'history:secrets', true],
    ['viewer', 'audit:read', false],
    ['operator', 'audit:read', false],
    ['admin', 'audit:read', true],
  ] as const)('%s → %s: %s', (role, perm, allowed) => {
    expect(expandRole(role).includes(perm)).toBe(allowed);
    expect(decide([grantOf({ role })], perm, null).allowed).toBe(allowed);
  });

  it('a role limited by labels counts on the machines it selects, for reads elsewhere, and not for fleet-wide writes', () => {
    const g = [grantOf({ role: 'operator', machines: 'env=own', pipelines: ['p1'] })];
    expect(decide(g, 'machines:run', { labels: { env: 'own' }, pipeline: 'p1' }).allowed).toBe(true);
    expect(decide(g, 'machines:run', { labels: { env: 'own' }, pipeline: 'p2' }).allowed).toBe(false);
    expect(decide(g, 'machines:run', { labels: { env: 'other' }, pipeline: 'p1' }).allowed).toBe(false);
    expect(decide(g, 'machines:read', null).allowed).toBe(true);
    const fleet = decide(g, 'rollouts:run', null);
    expect(fleet.allowed).toBe(false);
    expect(!fleet.allowed && fleet.reason).toMatch(/only on machines matching env=own on pipeline p1/);
  });

  it('an unknown role is refused naming the known ones', () => {
    expect(() => grantOf({ role: 'root' })).toThrow(/unknown role 'root': the roles are viewer, operator, author, admin/);
  });
});

describe('deny by default', () => {
  it('a route without a permission declaration stops the server from starting, naming it', async () => {
    const app = Fastify();
    const table = declaredRoutes(app);
    app.get('/declared', { config: { permission: 'machines:read' } }, async () => 'ok');
    app.get('/forgotten', async () => 'oops');
    app.post('/typo', { config: { permission: 'machine:read' as Permission } }, async () => 'oops');
    expect(() => table.assertDeclared()).toThrow(/these do not: GET \/forgotten, HEAD \/forgotten, POST \/typo \(machine:read\)/);
    await app.close();
  });
});

describe('every route × every role × own/other machine', () => {
  let dir: string;
  let store: SqlStore;
  let app: Awaited<ReturnType<typeof buildServer>>;
  const tokens = new Map<string, string>();
  const MARK = 'stand-in: the handler was reached';

  /** A service whose every method refuses with the marker (a property read gives such a method too). */
  const standIn = (): unknown =>
    new Proxy(function () {}, {
      get: (_t, prop) => (prop === 'then' ? undefined : standIn()),
      apply: () => {
        const p = Promise.reject(new TaktError('conflict', MARK));
        p.catch(() => undefined);
        return p;
      },
    });

  /** Every route part's validator, compiled on first use (api/lazy-validators.ts); the last test compiles them all. */
  const validators: PendingValidator[] = [];
  const machines: Record<string, { id: string; labels: Record<string, string>; pipeline: string }> = {
    'm-own': { id: 'm-own', labels: { env: 'own' }, pipeline: 'p1' },
    'm-other': { id: 'm-other', labels: { env: 'other' }, pipeline: 'p1' },
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'takt-perm-'));
    store = await openSqliteStore(join(dir, 'takt.db'));
    const users = new Users(store);
    for (const role of ROLE_NAMES) {
      for (const scope of ['all', 'own'] as const) {
        const name = `${role}-${scope}`;
        await users.createUser(name, 'correct horse battery', 'test');
        await users.bind({ role, subject: `user:${name}`, ...(scope === 'own' ? { machines: 'env=own' } : {}) }, 'test');
        tokens.set(name, (await users.issue({ owner: name, name: 't', kind: 'personal' }, 'test')).token);
      }
    }
    // The real store answers user and token reads (the authenticator) and machine lookups for scoped roles
    // come from the two machines above; every other call is the marker.
    const real = store as unknown as Record<string, unknown>;
    const reads: Record<string, (id: string) => Promise<unknown>> = {
      getMachine: async (id) => machines[id],
      getMachineByName: async () => undefined,
      getJobState: async (id) => (id.startsWith('j-') ? { id, machineId: id.replace('j-', 'm-'), state: 'running' } : undefined),
      getWorkOrder: async (id) => (id.startsWith('w-') ? { id, machineId: id.replace('w-', 'm-') } : undefined),
    };
    const passThrough = new Set(['onEvents', 'onOwnEvents', 'getUserToken', 'getUserTokenHash', 'listRoleBindings', 'listGroups', 'getSetting', 'transact', 'dialect']);
    const fakeStore = new Proxy(
      {},
      {
        get: (_t, prop: string) => {
          if (reads[prop]) return reads[prop];
          if (passThrough.has(prop)) return typeof real[prop] === 'function' ? (real[prop] as (...a: unknown[]) => unknown).bind(store) : real[prop];
          return standIn();
        },
      },
    );
    const absent = new Set(['hostNames', 'logger', 'log', 'tls', 'publicUrl', 'credentials', 'dhcpLeases', 'power', 'discoveryDigest', 'audit', 'sso']);
    const ctx = new Proxy({ store: fakeStore, brokers: new Map(), version: 'test', adminToken: 'tka.test-admin', validators: lazyValidators(validators) } as Record<string, unknown>, {
      get: (t, prop: string) => (prop in t ? t[prop] : absent.has(prop) ? undefined : standIn()),
      has: (t, prop) => prop in t,
    });
    app = await buildServer(ctx as unknown as ApiContext & { adminToken: string });
  });

  afterAll(async () => {
    await app?.close();
    await store?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const fill = (url: string, which: 'own' | 'other', scope: string | undefined) =>
    url
      .replace(':id', scope === 'job' ? `j-${which}` : scope === 'workorder' ? `w-${which}` : scope === 'machine' ? `m-${which}` : 'x-1')
      .replace(':token', 'tkj.x')
      .replace(':seq', '1')
      .replace(':version', '1.0.0')
      .replace(/:\w+/g, 'x');

  it('allows exactly what each role grants, on the machines its binding selects', async () => {
    const routes = routeTableOf(app).list.filter((r) => r.method !== 'HEAD');
    expect(routes.length).toBeGreaterThan(80);
    // A new route without a declaration never gets here (the server refuses to start); this names it anyway.
    for (const r of routes) expect(isRouteAccess(r.permission), `${r.method} ${r.url}`).toBe(true);
    const wrong: string[] = [];
    let checked = 0;
    for (const r of routes) {
      for (const role of ROLE_NAMES) {
        for (const binding of ['all', 'own'] as const) {
          for (const which of ['own', 'other'] as const) {
            const url = fill(r.url, which, r.scope);
            // The event stream answers as a stream that never ends: its headers say it was allowed.
            if (r.url === '/api/v1/events') {
              const denied = await app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${tokens.get(`${role}-${binding}`)}`, host: '127.0.0.1' }, payloadAsStream: true } as never) as unknown as { statusCode: number; stream(): { destroy?: () => void } };
              denied.stream().destroy?.();
              if ((denied.statusCode === 403) === ROLE_ALLOWS[role]!('events:read')) wrong.push(`${role}(${binding}) GET /api/v1/events: ${denied.statusCode}`);
              checked++;
              continue;
            }
            const res = await app.inject({
              method: r.method as 'GET',
              url,
              headers: { authorization: `Bearer ${tokens.get(`${role}-${binding}`)}`, host: '127.0.0.1', ...(r.method === 'GET' || r.method === 'DELETE' ? {} : { 'content-type': 'application/json' }) },
              ...(r.method === 'GET' || r.method === 'DELETE' ? {} : { payload: '{}' }),
            });
            const p = r.permission!;
            let expected: boolean;
            if (p === 'public' || p === 'self') expected = true;
            else if (!ROLE_ALLOWS[role]!(p as Permission)) expected = false;
            else if (binding === 'all') expected = true;
            else if (r.scope === 'machine' || r.scope === 'job' || r.scope === 'workorder') expected = which === 'own';
            else expected = p.endsWith(':read');
            // A refusal by the permission check names the user; agent-only routes' handlers refuse users on their own (403 too).
            const denied = res.statusCode === 403 && res.body.includes(`user ${role}-${binding}: needs permission`);
            // Past the check, a stand-in may make a handler fail (500): that still means it was allowed.
            if (res.statusCode === 401 || denied === expected) wrong.push(`${role}(${binding}) ${r.method} ${url} [${p}${r.scope ? ` ${r.scope}` : ''}]: ${res.statusCode} ${res.body.slice(0, 160)}`);
            checked++;
          }
        }
      }
    }
    expect(wrong).toEqual([]);
    expect(checked).toBe(routes.length * ROLE_NAMES.length * 4);
  }, 120_000);

  it('says in a 403 which permission was needed and what the roles grant', async () => {
    const res = await app.inject({ method: 'POST', url: '/api/v1/machines/m-other/resume', headers: { authorization: `Bearer ${tokens.get('operator-own')}`, host: '127.0.0.1' } });
    expect(res.statusCode).toBe(403);
    expect(res.json().error.message).toBe('user operator-own: needs permission machines:run on this machine, and your roles grant it only on machines matching env=own');
    const viewer = await app.inject({ method: 'GET', url: '/api/v1/jobs/j-own/log', headers: { authorization: `Bearer ${tokens.get('viewer-all')}`, host: '127.0.0.1' } });
    expect(viewer.statusCode).toBe(403);
    expect(viewer.json().error.message).toBe('user viewer-all: needs permission jobs:secrets, which your roles (viewer) do not grant');
  });

  it("every route's request schemas compile (validators compile on first use, so a bad schema must fail here, not in a request)", () => {
    expect(validators.length).toBeGreaterThan(40);
    const bad = validators.flatMap((v) => {
      try {
        v.compile();
        return [];
      } catch (err) {
        return [`${v.route}: ${(err as Error).message}`];
      }
    });
    expect(bad).toEqual([]);
  });

  it('the OpenAPI document gives every operation its permission', async () => {
    const doc = (await app.inject({ method: 'GET', url: '/api/v1/openapi.json', headers: { authorization: 'Bearer tka.test-admin', host: '127.0.0.1' } })).json() as { paths: Record<string, Record<string, Record<string, unknown>>> };
    const ops = Object.entries(doc.paths).flatMap(([p, o]) => Object.entries(o).map(([m, op]) => [`${m.toUpperCase()} ${p}`, op['x-takt-permission']] as const));
    expect(ops.length).toBeGreaterThan(60);
    expect(ops.filter(([, perm]) => !isRouteAccess(perm))).toEqual([]);
    expect(Object.fromEntries(ops)['POST /api/v1/machines/{id}/approve']).toBe('machines:approve');
    expect(Object.fromEntries(ops)['POST /api/v1/login']).toBe('public');
  });
});
