/**
 * Users, roles and tokens against a real endpoint process (issue #16, part 1): login through the CLI; a
 * revoked, a rotated and an expired token refused with a 401 that says which; a viewer sees secure values
 * redacted; a role limited by labels filters lists and refuses other machines; history and approvals
 * record user:alice; the bootstrap admin token turned off only once a user holds admin. And the
 * authenticator's cache: a cached token past its expiry is refused without the store.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Authenticator } from '../src/api/auth.js';
import { Users } from '../src/engine/users.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import { Endpoint, packFiles, runCli } from './helpers/endpoint.js';

const PW = 'correct horse battery';
const PACK = {
  'pack.yaml': 'name: sec\nversion: 1.0.0\n',
  'params/pin.yaml': 'name: pin\nsecure: true\nschema: { type: string }\n',
};

let ep: Endpoint;
let config: string;

const login = async (user: string) => {
  const r = await ep.call('POST', '/login', { user, password: PW }, null);
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.token as string;
};

beforeAll(async () => {
  ep = await Endpoint.start();
  config = mkdtempSync(join(tmpdir(), 'takt-config-'));
  expect((await ep.call('POST', '/packs', { files: PACK })).status).toBe(201);
  for (const [name, roles] of [['alice', ['admin']], ['vera', ['viewer']], ['otto', []]] as const) {
    expect((await ep.call('POST', '/users', { name, password: PW, roles })).status).toBe(201);
  }
  expect((await ep.call('POST', '/rolebindings', { role: 'operator', subject: 'user:otto', machines: 'env=dev' })).status).toBe(201);
  for (const [name, env] of [['dev-1', 'dev'], ['prod-1', 'prod']]) {
    expect((await ep.call('POST', '/machines', { name, labels: { env }, params: { pin: '4711-very-secret' } })).status).toBe(201);
  }
}, 120_000);

afterAll(async () => {
  await ep?.stop();
  rmSync(config, { recursive: true, force: true });
});

describe('tokens', () => {
  it('a revoked token is refused saying it was revoked, at once (the cache drops it on the event)', async () => {
    const t = await login('vera');
    expect((await ep.call('GET', '/machines', undefined, t)).status).toBe(200);
    const id = /^tku\.(t-[0-9a-f]+)\./.exec(t)![1]!;
    expect((await ep.call('DELETE', `/tokens/${id}`, undefined, t)).status).toBe(200);
    const r = await ep.call('GET', '/machines', undefined, t);
    expect(r.status).toBe(401);
    expect(r.body.error.message).toMatch(new RegExp(`^token ${id} \\(login\\) was revoked at .* by user:vera; make a new one`));
  });

  it('a rotated token is refused saying it was rotated, and its new secret works', async () => {
    const made = await ep.call('POST', '/tokens', { name: 'ci', owner: 'vera', kind: 'service', roles: ['viewer'], ttl: '1d' });
    expect(made.status).toBe(201);
    const old = made.body.token as string;
    expect((await ep.call('GET', '/machines', undefined, old)).status).toBe(200);
    const rotated = await ep.call('POST', `/tokens/${made.body.tokenInfo.id}/rotate`, undefined, old);
    expect(rotated.status).toBe(200);
    const r = await ep.call('GET', '/machines', undefined, old);
    expect(r.status).toBe(401);
    expect(r.body.error.message).toMatch(/^token t-[0-9a-f]+ \(ci\) was rotated at .*: this is its old secret; use the one takt tokens rotate printed$/);
    expect((await ep.call('GET', '/machines', undefined, rotated.body.token)).status).toBe(200);
  });

  it('an expired token is refused saying when it expired', async () => {
    const made = await ep.call('POST', '/tokens', { name: 'short', owner: 'vera', ttl: '90m' });
    // Expiry moved into the past in the store itself: the endpoint has never seen this token, so it reads it.
    const db = new Database(join(ep.data, 'takt.db'));
    db.prepare('update user_tokens set expires_at = ? where id = ?').run('2020-01-01T00:00:00.000Z', made.body.tokenInfo.id);
    db.close();
    const r = await ep.call('GET', '/machines', undefined, made.body.token);
    expect(r.status).toBe(401);
    expect(r.body.error.message).toBe(`token ${made.body.tokenInfo.id} (short) expired at 2020-01-01T00:00:00.000Z; log in again (takt login) or make a new one (takt tokens create)`);
  });

  it('a token cannot carry a role its owner does not hold, nor be made for someone else without tokens:admin', async () => {
    const vera = await login('vera');
    const r = await ep.call('POST', '/tokens', { name: 'up', roles: ['admin'] }, vera);
    expect(r.status).toBe(403);
    expect(r.body.error.message).toBe("user 'vera' does not hold role 'admin', so a token of theirs cannot carry it");
    expect((await ep.call('POST', '/tokens', { name: 'x', owner: 'alice' }, vera)).status).toBe(403);
    expect((await ep.call('GET', '/tokens', undefined, vera)).body.items.every((t: { owner: string }) => t.owner === 'vera')).toBe(true);
  });

  it('a wrong password and an unknown user get the same refusal', async () => {
    const a = await ep.call('POST', '/login', { user: 'vera', password: 'not the password' }, null);
    const b = await ep.call('POST', '/login', { user: 'nobody', password: 'not the password' }, null);
    expect([a.status, b.status]).toEqual([401, 401]);
    expect(a.body.error.message).toBe(b.body.error.message);
  });
});

describe('roles', () => {
  it('a viewer sees secure values redacted (never ciphertext), and cannot read logs or exports', async () => {
    // Machine answers mask secure values for everyone; history carries their ciphertext, for holders of secrets only.
    const admin = await ep.call('GET', '/changes');
    expect(JSON.stringify(admin.body)).toContain('$secure');
    const vera = await login('vera');
    const r = await ep.call('GET', '/machines/dev-1', undefined, vera);
    expect(r.status).toBe(200);
    expect(r.body.params.pin).toBe('********');
    expect(JSON.stringify(r.body)).not.toContain('$secure');
    const history = await ep.call('GET', '/changes', undefined, vera);
    expect(JSON.stringify(history.body)).not.toContain('$secure');
    expect((await ep.call('GET', '/export', undefined, vera)).status).toBe(403);
  });

  it('a role limited to env=dev lists only dev machines and is refused on others', async () => {
    const otto = await login('otto');
    const list = await ep.call('GET', '/machines', undefined, otto);
    expect(list.body.items.map((m: { name: string }) => m.name)).toEqual(['dev-1']);
    expect(list.body.total).toBe(1);
    // allowed on dev-1: what answers is the machine's state (it runs no pipeline), not the permission check
    const dev = await ep.call('POST', '/machines/dev-1/pause', {}, otto);
    expect(dev.status, JSON.stringify(dev.body)).not.toBe(403);
    expect(dev.body.error?.message ?? '').not.toMatch(/permission/);
    const prod = await ep.call('POST', '/machines/prod-1/pause', {}, otto);
    expect(prod.status).toBe(403);
    expect(prod.body.error.message).toBe('user otto: needs permission machines:run on this machine, and your roles grant it only on machines matching env=dev');
    expect((await ep.call('POST', '/andon/pull', {}, otto)).status).toBe(403);
  });

  it('an approval records the real principal', async () => {
    expect((await ep.call('POST', '/packs', { files: await packFiles('basic') })).status).toBe(201);
    expect((await ep.call('POST', '/packs', { files: await packFiles('expect') })).status).toBe(201);
    const rel = await ep.call('POST', '/machines', { name: 'rel', broker: 'local', pipeline: 'release' });
    expect(rel.status, JSON.stringify(rel.body)).toBe(201);
    const wait = await runCli(['machines', 'wait', 'rel', '--until', 'awaiting-approval', '--timeout', '60s'], { TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token });
    expect(wait.code, wait.stdout + wait.stderr).toBe(0);
    const alice = await login('alice');
    expect((await ep.call('POST', '/machines/rel/approve', { comment: 'window open' }, alice)).status).toBe(200);
    const changes = await ep.call('GET', '/changes', undefined, alice);
    expect(changes.body.items.filter((c: { object: string }) => c.object.startsWith('approvals/')).map((c: { author: string }) => c.author)).toEqual(['user:alice']);
  }, 90_000);

  it('history records the real principal', async () => {
    const alice = await login('alice');
    expect((await ep.call('PATCH', '/machines/prod-1', { labels: { owner: 'alice' } }, alice)).status).toBe(200);
    const changes = await ep.call('GET', '/changes?object=machines/prod-1', undefined, alice);
    expect(changes.body.items.map((c: { author: string }) => c.author)).toContain('user:alice');
  });
});

describe('the CLI', () => {
  it('logs in with --password-stdin, keeps the token 0600, uses it without TAKT_TOKEN, and logs out', async () => {
    const env = { TAKT_ENDPOINT: ep.url, TAKT_CONFIG_DIR: config, TAKT_TOKEN: '', TAKT_DATA: join(config, 'no-data') };
    const r = await runCli(['login', 'alice', '--password-stdin'], env, `${PW}\n`);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^logged in to .* as alice until /);
    expect(statSync(join(config, 'tokens.json')).mode & 0o777).toBe(0o600);
    const who = await runCli(['whoami', '-o', 'json'], env);
    expect(JSON.parse(who.stdout)).toMatchObject({ name: 'alice', kind: 'user' });
    const m = await runCli(['machines', 'update', 'dev-1', '--label', 'cli=yes'], env);
    expect(m.code, m.stderr).toBe(0);
    const h = await runCli(['history', '-o', 'json'], env);
    expect((JSON.parse(h.stdout) as Array<{ author: string }>).some((c) => c.author === 'user:alice')).toBe(true);
    const out = await runCli(['logout'], env);
    expect(out.stdout).toMatch(/^logged out of .* \(alice\)/);
    const after = await runCli(['whoami'], env);
    expect(after.code).not.toBe(0);
  });

  it('a saved login refused (its user deleted) says it is the saved login, and that takt logout removes it', async () => {
    expect((await ep.call('POST', '/users', { name: 'leaver', password: PW, roles: ['viewer'] })).status).toBe(201);
    const env = { TAKT_ENDPOINT: ep.url, TAKT_CONFIG_DIR: join(config, 'leaver'), TAKT_TOKEN: '', TAKT_DATA: join(config, 'no-data') };
    expect((await runCli(['login', 'leaver', '--password-stdin'], env, `${PW}\n`)).code).toBe(0);
    expect((await ep.call('DELETE', '/users/leaver')).status).toBe(200);
    const refused = await runCli(['machines', 'list'], env);
    expect(refused.code).toBe(5);
    expect(refused.stderr).toContain(`the token sent is your saved login for ${ep.url} (in ${join(config, 'leaver', 'tokens.json')}): \`takt logout\` removes it`);
    // A token given outright gets no such hint.
    const given = await runCli(['machines', 'list'], { ...env, TAKT_TOKEN: 'tku.nosuch.token' });
    expect(given.code).toBe(5);
    expect(given.stderr).not.toContain('saved login');
  });

  it('users, roles and tokens speak -o json', async () => {
    const env = { TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token };
    const users = JSON.parse((await runCli(['users', 'list', '-o', 'json'], env)).stdout) as Array<{ name: string; roles: string[] }>;
    expect(users.find((u) => u.name === 'otto')?.roles).toEqual(['operator on env=dev']);
    const roles = JSON.parse((await runCli(['roles', 'list', '-o', 'json'], env)).stdout) as Array<{ name: string }>;
    expect(roles.map((x) => x.name)).toEqual(['viewer', 'operator', 'author', 'admin']);
    const t = JSON.parse((await runCli(['tokens', 'create', 'bot', '--owner', 'vera', '--ttl', '1h', '-o', 'json'], env)).stdout) as { token: string; tokenInfo: { id: string } };
    expect(t.token).toMatch(/^tku\./);
    const rev = await runCli(['tokens', 'revoke', t.tokenInfo.id, '-o', 'json'], env);
    expect(JSON.parse(rev.stdout).state).toBe('revoked');
  });

  it('rotate and revoke take a token by name (people read names); several of one name are refused, listing their ids', async () => {
    const env = { TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token };
    const make = async (owner: string) => (JSON.parse((await runCli(['tokens', 'create', 'deploy-bot', '--owner', owner, '--ttl', '1h', '-o', 'json'], env)).stdout) as { tokenInfo: { id: string } }).tokenInfo.id;
    const vera = await make('vera');
    const rot = await runCli(['tokens', 'rotate', 'deploy-bot', '-o', 'json'], env);
    expect(rot.code, rot.stderr).toBe(0);
    expect(JSON.parse(rot.stdout).tokenInfo.id).toBe(vera);
    const otto = await make('otto');
    const both = await runCli(['tokens', 'revoke', 'deploy-bot'], env);
    expect(both.code).toBe(1);
    expect(both.stderr).toContain(`2 tokens are named 'deploy-bot': `);
    expect(both.stderr).toContain(`${vera} (vera)`);
    expect(both.stderr).toContain(`${otto} (otto)`);
    const one = await runCli(['tokens', 'revoke', 'deploy-bot', '--owner', 'otto', '-o', 'json'], env);
    expect(one.code, one.stderr).toBe(0);
    expect(JSON.parse(one.stdout)).toMatchObject({ id: otto, state: 'revoked' });
    // The revoked one no longer competes for the name.
    expect((await runCli(['tokens', 'revoke', 'deploy-bot', '-o', 'json'], env)).code).toBe(0);
    const none = await runCli(['tokens', 'revoke', 'no-such-token'], env);
    expect(none.code).toBe(4);
    expect(none.stderr).toContain("no token named 'no-such-token' (list them: takt tokens ls)");
  });
});

describe('the bootstrap admin token', () => {
  it('turns off only once a user holds admin, then is refused saying so; a user admin turns it back on', async () => {
    const alice = await login('alice');
    expect((await ep.call('PUT', '/auth/bootstrap', { enabled: false })).status).toBe(200);
    const r = await ep.call('GET', '/machines');
    expect(r.status).toBe(401);
    expect(r.body.error.message).toMatch(/^the bootstrap admin token is turned off on this endpoint/);
    // the last admin cannot be deleted while the bootstrap token is off
    expect((await ep.call('DELETE', '/users/alice', undefined, alice)).status).toBe(409);
    expect((await ep.call('PUT', '/auth/bootstrap', { enabled: true }, alice)).status).toBe(200);
    expect((await ep.call('GET', '/machines')).status).toBe(200);
  });
});

describe('refused while no user holds admin', () => {
  it('the bootstrap token stays on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'takt-boot-'));
    const store = await openSqliteStore(join(dir, 'takt.db'));
    try {
      const users = new Users(store);
      await users.createUser('op', PW, 'test', ['operator']);
      await expect(users.setBootstrap(false, 'test')).rejects.toThrow(/no user holds the admin role: the bootstrap admin token stays on/);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the authenticator cache', () => {
  it('answers a cached token without the store, and refuses it once past its expiry', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'takt-auth-'));
    const store = await openSqliteStore(join(dir, 'takt.db'));
    try {
      let now = Date.parse('2030-01-01T00:00:00Z');
      const users = new Users(store, () => now);
      await users.createUser('bo', PW, 'test', ['viewer']);
      // Lives 20 s: less than the cache keeps an entry (30 s), so its expiry is met while it is cached.
      const { token, tokenInfo } = await users.issue({ owner: 'bo', name: 'k', kind: 'personal', ttlMs: 20_000 }, 'test');
      let reads = 0;
      const counting = new Proxy(store, {
        get: (t, prop, recv) => {
          const v = Reflect.get(t, prop, recv) as unknown;
          if (typeof prop === 'string' && /^(get|list)User|^listRole|^listGroups/.test(prop)) reads++;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
        },
      });
      const auth = new Authenticator('tka.x', counting, undefined, () => now);
      expect(await auth.authenticate(`Bearer ${token}`)).toMatchObject({ kind: 'user', name: 'bo' });
      const after = reads;
      for (let i = 0; i < 100; i++) await auth.authenticate(`Bearer ${token}`);
      expect(reads).toBe(after);
      now = Date.parse(tokenInfo.expiresAt) + 1;
      await expect(auth.authenticate(`Bearer ${token}`)).rejects.toThrow(/expired at/);
      expect(reads).toBe(after);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
