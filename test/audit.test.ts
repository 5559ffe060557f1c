/**
 * The audit log (issue #16) against a real endpoint process: a sample of reads and writes makes entries
 * (and plain reads make none); a write's entry is in the database by the time its answer arrives; failed
 * logins and a revoked token make entries with their source address; a viewer cannot read the log (403,
 * itself audited); a machine's agent traffic does not flood it, its refusals are recorded; the filters
 * and paging; `takt audit` with names. Pruning on real SQLite and PostgreSQL stores: old entries go, one
 * replica per period takes the turn.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditLog } from '../src/engine/audit.js';
import { isAudited, parseAuditTime, type AuditRecord } from '../src/model/audit.js';
import { openPostgresStore } from '../src/store/postgres.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import type { Store } from '../src/store/store.js';
import { auditKeepDays } from '../src/cli/serve.js';
import { Endpoint, until } from './helpers/endpoint.js';
import { AgentProcess } from './helpers/liveness.js';
import { freshDatabase, pgUnavailable } from './helpers/postgres.js';

const PW = 'correct horse battery';

let ep: Endpoint;
let alice: string;
let vera: string;
let machineId: string;
let machineToken: string;
let agent: AgentProcess | null = null;

const login = async (user: string) => {
  const r = await ep.call('POST', '/login', { user, password: PW }, null);
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.token as string;
};

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const audit = async (query: Record<string, string> = {}): Promise<any[]> => {
  const r = await ep.call('GET', `/audit?${new URLSearchParams({ limit: '1000', ...query })}`);
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return r.body.items;
};

beforeAll(async () => {
  ep = await Endpoint.start();
  for (const [name, roles] of [['alice', ['admin']], ['vera', ['viewer']]] as const) {
    expect((await ep.call('POST', '/users', { name, password: PW, roles })).status).toBe(201);
  }
  alice = await login('alice');
  vera = await login('vera');
  const m = await ep.call('POST', '/machines', { name: 'web-1', labels: { env: 'dev' } }, alice);
  expect(m.status).toBe(201);
  machineId = m.body.items[0].id;
  machineToken = m.body.items[0].token;
}, 120_000);

afterAll(async () => {
  await agent?.dispose();
  await ep?.stop();
});

describe('what is recorded', () => {
  it('writes (with who, the route pattern, the resource by name) and reads of secrets; plain reads are not', async () => {
    const newest = (await audit())[0].id as number;
    expect((await ep.call('PATCH', `/machines/${machineId}?dryRun=false`, { labels: { env: 'dev', tier: 'web' } }, alice)).status).toBe(200);
    expect((await ep.call('GET', '/machines', undefined, alice)).status).toBe(200);
    expect((await ep.call('GET', `/machines/${machineId}`, undefined, alice)).status).toBe(200);
    expect((await ep.call('GET', '/export', undefined, alice)).status).toBe(200);
    expect((await ep.call('GET', '/credentials')).status).toBe(200);
    const items = await audit();
    // Reads of the audit log itself are recorded too (not counted here).
    const fresh = items.filter((e) => e.id > newest && e.route !== '/api/v1/audit');
    const lines = fresh.map((e) => `${e.principal} ${e.method} ${e.route} ${e.resource ?? '-'} ${e.outcome} ${e.status}`);
    expect(lines).toEqual([
      'admin GET /api/v1/credentials - ok 200',
      'user:alice GET /api/v1/export - ok 200',
      // The query string is not kept: the route pattern is; the machine is shown by name.
      'user:alice PATCH /api/v1/machines/:id web-1 ok 200',
    ]);
    const patch = fresh[2];
    expect(patch.token).toMatch(/^t-[0-9a-f]{16}$/);
    expect(alice).toContain(`tku.${patch.token}.`);
    expect(patch.source).toBe('127.0.0.1');
    expect(patch.requestId).toMatch(/^r-/);
    expect(Date.parse(patch.at)).toBeGreaterThan(Date.now() - 120_000);
    // The create of beforeAll names what it made (its id, shown by name).
    expect(items.find((e) => e.method === 'POST' && e.route === '/api/v1/machines')).toMatchObject({ principal: 'user:alice', resource: 'web-1', status: 201 });
  });

  it("a write's entry is committed before its answer leaves (read from the database file, not through the API)", async () => {
    const r = await ep.call('PUT', '/groups/ops', { add: ['alice'] }, alice);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const db = new Database(join(ep.data, 'takt.db'), { readonly: true });
    try {
      const row = db.prepare("select principal, method, route, resource, status from audit where route = '/api/v1/groups/:name' and method = 'PUT'").get();
      expect(row).toEqual({ principal: 'user:alice', method: 'PUT', route: '/api/v1/groups/:name', resource: 'ops', status: 200 });
    } finally {
      db.close();
    }
  });

  it('failed logins and a revoked token are recorded with their source address and why; secrets are not', async () => {
    const bad = await ep.call('POST', '/login', { user: 'alice', password: 'wrong password!' }, null);
    expect(bad.status).toBe(401);
    expect((await ep.call('POST', '/login', { user: 'nobody', password: 'wrong password!' }, null)).status).toBe(401);
    const t = await login('vera');
    const id = /^tku\.(t-[0-9a-f]+)\./.exec(t)![1]!;
    expect((await ep.call('DELETE', `/tokens/${id}`, undefined, t)).status).toBe(200);
    expect((await ep.call('GET', '/machines', undefined, t)).status).toBe(401);
    expect((await ep.call('GET', '/machines', undefined, 'not-a-token')).status).toBe(401);

    const denied = await audit({ outcome: 'denied', since: '10m' });
    const logins = denied.filter((e) => e.route === '/api/v1/login');
    expect(logins.map((e) => e.resource).sort()).toEqual(['user:alice', 'user:nobody']);
    for (const e of logins) expect(e).toMatchObject({ principal: 'anonymous', source: '127.0.0.1', status: 401, method: 'POST' });
    const revoked = denied.find((e) => e.token === id && e.route === '/api/v1/machines');
    expect(revoked).toMatchObject({ principal: 'anonymous', source: '127.0.0.1', status: 401, outcome: 'denied' });
    expect(revoked.detail).toMatch(new RegExp(`token ${id} \\(login\\) was revoked`));
    expect(denied.some((e) => e.route === '/api/v1/machines' && e.token === null && e.status === 401)).toBe(true);
    // The successful login is recorded (a write), by whom it named; no password or token text anywhere.
    const all = JSON.stringify(await audit());
    expect(all).not.toContain('wrong password!');
    expect(all).not.toContain(PW);
    expect(all).not.toContain(t.split('.')[2]!);
  });

  it('a viewer cannot read the audit log (*:read does not reach it): 403, itself audited', async () => {
    const r = await ep.call('GET', '/audit', undefined, vera);
    expect(r.status).toBe(403);
    expect(r.body.error.message).toMatch(/needs permission audit:read/);
    const e = (await audit({ principal: 'user:vera', route: '/audit' }))[0];
    expect(e).toMatchObject({ principal: 'user:vera', method: 'GET', route: '/api/v1/audit', status: 403, outcome: 'denied' });
  });

  it("a machine's agent traffic (claims, log chunks, completion) makes no entries; its token refused on a route it may not call does", async () => {
    agent = new AgentProcess(ep.url, machineToken).start();
    const run = await ep.call('POST', '/run', { machines: ['web-1'], command: 'echo hello from web-1' }, alice);
    expect(run.status, JSON.stringify(run.body)).toBe(201);
    const wo = run.body.items[0].workOrder.id as string;
    await until(async () => (await ep.call('GET', `/workorders/${wo}`)).body.state === 'succeeded', 120_000, `work order ${wo} succeeded`);
    expect((await ep.call('GET', '/machines', undefined, machineToken)).status).toBe(403);
    const items = await audit({ principal: 'machine:web-1' });
    expect(items.map((e) => `${e.method} ${e.route} ${e.status}`)).toEqual(['GET /api/v1/machines 403']);
    // The run that queued it is recorded, by alice.
    expect((await audit({ route: '/api/v1/run' }))[0]).toMatchObject({ principal: 'user:alice', status: 201 });
    // Reading the job's log is a read of secret-bearing data: recorded, with the job as the resource.
    const job = (await ep.call('GET', `/jobs?machine=web-1`)).body.items[0].id as string;
    expect((await ep.call('GET', `/jobs/${job}/log`, undefined, alice)).status).toBe(200);
    expect((await audit({ resource: job }))[0]).toMatchObject({ principal: 'user:alice', method: 'GET', route: '/api/v1/jobs/:id/log', outcome: 'ok' });
  }, 150_000);
});

describe('filters', () => {
  it('principal, route, resource, outcome, since/until and a cursor', async () => {
    const byAlice = await audit({ principal: 'user:alice' });
    expect(byAlice.length).toBeGreaterThan(2);
    expect(byAlice.every((e) => e.principal === 'user:alice')).toBe(true);
    expect((await audit({ route: '/login' })).every((e) => e.route === '/api/v1/login')).toBe(true);
    // A machine by name or by id.
    const byName = await audit({ resource: 'web-1' });
    expect(byName.length).toBeGreaterThanOrEqual(2);
    expect((await audit({ resource: machineId })).map((e) => e.id)).toEqual(byName.map((e) => e.id));
    expect((await audit({ outcome: 'ok' })).every((e) => e.outcome === 'ok')).toBe(true);
    expect(await audit({ until: '2000-01-01T00:00:00Z' })).toEqual([]);
    expect(await audit({ since: new Date(Date.now() + 3_600_000).toISOString() })).toEqual([]);
    expect((await audit({ since: '1h' })).length).toBeGreaterThan(5);

    // Paging through alice's entries (the admin's own reads of the log add entries between pages).
    const all = await audit({ principal: 'user:alice' });
    const first = await ep.call('GET', '/audit?limit=3&principal=user:alice');
    expect(first.body.items.map((e: { id: number }) => e.id)).toEqual(all.slice(0, 3).map((e) => e.id));
    const second = await ep.call('GET', `/audit?limit=3&principal=user:alice&cursor=${first.body.next}`);
    expect(second.body.items.map((e: { id: number }) => e.id)).toEqual(all.slice(3, 6).map((e) => e.id));

    for (const q of ['since=yesterday', 'until=2026-13-01T00:00:00Z', 'outcome=maybe', 'limit=0', 'limit=1001', 'cursor=x']) {
      const r = await ep.call('GET', `/audit?${q}`);
      expect(r.status, q).toBeGreaterThanOrEqual(400);
      expect(r.status, q).toBeLessThan(500);
      expect(r.body.error.message, q).toBeTruthy();
    }
  });

  it('takt audit prints a table with names, and -o json', async () => {
    const table = await ep.cli(['audit', '--principal', 'user:alice', '--route', '/machines', '--limit', '5']);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/WHEN\s+WHO\s+FROM\s+REQUEST\s+RESOURCE\s+OUTCOME/);
    expect(table.stdout).toMatch(/user:alice\s+127\.0\.0\.1\s+PATCH \/api\/v1\/machines\/:id\s+web-1\s+ok 200/);
    const json = await ep.cli(['audit', '--outcome', 'denied', '--since', '1h', '-o', 'json']);
    expect(json.code, json.stderr).toBe(0);
    const body = JSON.parse(json.stdout);
    expect(body.items.length).toBeGreaterThan(0);
    expect(body.items.every((e: { outcome: string }) => e.outcome === 'denied')).toBe(true);
    const bad = await ep.cli(['audit', '--since', 'last tuesday']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/since must be an RFC 3339 time .* or a duration/);
  });
});

describe('rules (pure)', () => {
  it('which requests are audited', () => {
    const r = (method: string, permission: string, principalKind: 'admin' | 'user' | 'machine' | null, status: number, machineRoute = false) => isAudited({ method, permission, principalKind, machineRoute, status });
    expect(r('GET', 'machines:read', 'user', 200)).toBe(false);
    expect(r('GET', 'machines:read', 'user', 403)).toBe(true);
    expect(r('GET', 'machines:read', null, 401)).toBe(true);
    expect(r('GET', 'jobs:secrets', 'user', 200, true)).toBe(true);
    expect(r('GET', 'jobs:secrets', 'machine', 200, true)).toBe(false);
    expect(r('POST', 'jobs:admin', 'machine', 200, true)).toBe(false);
    expect(r('POST', 'jobs:admin', 'machine', 409, true)).toBe(true);
    expect(r('POST', 'machines:write', 'admin', 422)).toBe(true);
    expect(r('DELETE', 'machines:write', 'user', 200)).toBe(true);
  });

  it('times: RFC 3339 or a duration back from now; --audit-keep-days bounds', () => {
    const now = Date.parse('2026-12-01T12:00:00Z');
    expect(parseAuditTime('1h', 'since', now)).toBe('2026-12-01T11:00:00.000Z');
    expect(parseAuditTime('2026-12-01T10:00:00+01:00', 'since', now)).toBe('2026-12-01T09:00:00.000Z');
    expect(() => parseAuditTime('2026-12-01', 'since', now)).toThrow(/RFC 3339/);
    expect(auditKeepDays(undefined)).toBe(90);
    expect(auditKeepDays('7')).toBe(7);
    for (const bad of ['0', '-1', '1.5', 'ninety', '4000']) expect(() => auditKeepDays(bad), bad).toThrow(/--audit-keep-days must be a whole number of days from 1 to 3650/);
  });
});

/** Entries at `at`, for pruning. */
const entries = (at: string, n: number): AuditRecord[] =>
  Array.from({ length: n }, (_, i) => ({ at, principal: 'user:alice', token: null, source: '127.0.0.1', method: 'POST', route: '/api/v1/machines', resource: `m${i}`, status: 201, outcome: 'ok' as const, detail: null, requestId: `r-${i}` }));

async function pruning(open: () => Promise<Store>, openReplica: () => Promise<Store>) {
  const now = Date.parse('2026-12-01T12:00:00Z');
  const store = await open();
  const replica = await openReplica();
  try {
    const a = new AuditLog(store, { keepDays: 30, now: () => now });
    const b = new AuditLog(replica, { keepDays: 30, now: () => now });
    a.record(entries('2026-10-01T00:00:00.000Z', 3)[0]!, false);
    for (const e of [...entries('2026-10-01T00:00:00.000Z', 3), ...entries('2026-11-30T00:00:00.000Z', 2)]) void b.record(e, false);
    await a.flush();
    await b.flush();
    expect((await store.listAudit({ limit: 100 })).length).toBe(6);
    // One of the two replicas takes the turn and prunes; the other is told it was taken.
    const [x, y] = await Promise.all([a.prune(), b.prune()]);
    expect([x, y].filter((n) => n === null)).toHaveLength(1);
    expect([x, y].find((n) => n !== null)).toBe(4);
    const left = await store.listAudit({ limit: 100 });
    expect(left.map((e) => e.at)).toEqual(['2026-11-30T00:00:00.000Z', '2026-11-30T00:00:00.000Z']);
    // Within the period nobody gets it again; after it, one does.
    expect(await a.prune()).toBeNull();
    const later = new AuditLog(store, { keepDays: 1, now: () => now + 11 * 60_000 });
    expect(await later.prune()).toBe(2);
  } finally {
    await replica.close();
    await store.close();
  }
}

describe('pruning (real stores)', () => {
  it('SQLite: entries older than keep-days go; one turn per period', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'takt-audit-'));
    try {
      const file = join(dir, 'takt.db');
      await pruning(
        () => openSqliteStore(file),
        () => openSqliteStore(file),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('PostgreSQL: two replicas on one database, one of them prunes', async (ctx) => {
    const why = await pgUnavailable();
    if (why) return ctx.skip();
    const db = await freshDatabase();
    try {
      await pruning(
        () => openPostgresStore(db.url, { exclusive: false }),
        () => openPostgresStore(db.url, { exclusive: false }),
      );
    } finally {
      await db.drop();
    }
  });
});
