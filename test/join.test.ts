/**
 * Joining hosts against a real endpoint (loopback HTTP; test/join-remote.test.ts does it over TLS from
 * network namespaces): join tokens made, listed and revoked; a join token refused on every other route;
 * expired, used-up and revoked tokens refused saying which (as JSON, and as a failing script for
 * `curl | sh`); registration makes one machine and a host that joins again is that machine with a new
 * token; facts reported by the agent only, shown by `machines get`, used in templates and rollout
 * selectors, never in history or exports; `machines token --rotate`; and the one-liner run for real.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JOIN_TOKEN_SCOPE } from '../src/api/auth.js';
import type { Facts } from '../src/model/facts.js';
import { Endpoint, packFiles, until, type Answer } from './helpers/endpoint.js';
import { BUNDLE_CACHE } from './helpers/join.js';


let ep: Endpoint;
const call = (...args: Parameters<Endpoint['call']>) => ep.call(...args);

const facts = (over: Partial<Facts> = {}): Facts => ({
  hostname: 'Host-A.example',
  machineId: 'a'.repeat(32),
  productUuid: null,
  macs: ['52:54:00:00:00:0a'],
  addresses: [{ interface: 'eth0', address: '10.250.9.2', family: 'IPv4', prefix: 24 }],
  os: { id: 'testos', versionId: '1', prettyName: 'Test OS 1', idLike: ['debian'] },
  kernel: '6.1.0-test',
  arch: 'x86_64',
  cpu: { model: 'Test CPU', count: 4 },
  memoryBytes: 4 * 2 ** 30,
  disks: [{ name: 'vda', sizeBytes: 10 * 2 ** 30, model: null, rotational: false }],
  agentVersion: '0.1.0',
  ...over,
});

interface Made {
  id: string;
  token: string;
  command: string;
  joinUrl: string;
}

async function makeToken(body: Record<string, unknown> = {}): Promise<Made> {
  const r = await call('POST', '/join-tokens', { url: ep.url, ...body });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body as Made;
}

async function register(token: string, f: Facts = facts()) {
  return call('POST', '/join', { facts: f }, token);
}

beforeAll(async () => {
  ep = await Endpoint.start({ env: { TAKT_BUNDLE_CACHE: BUNDLE_CACHE } });
  for (const pack of ['joined', 'basic']) expect((await call('POST', '/packs', { files: await packFiles(pack), use: true })).status).toBe(201);
});
afterAll(async () => ep?.stop());

describe('join tokens', () => {
  it('are made with what they create, listed and fetched without their secret, and revoked', async () => {
    const before = Date.now();
    const t = await makeToken({ pipeline: 'joined', uses: 2, expires: '30m', profiles: [] });
    expect(t.token).toMatch(/^tkj\.jt-[0-9a-f]+\.[A-Za-z0-9_-]{32}$/);
    expect(t).toMatchObject({ name: null, pipeline: 'joined', environment: 'remote', maxUses: 2, uses: 0, usesLeft: 2, state: 'active', createdBy: 'admin', machines: [], pin: null });
    expect(t.joinUrl).toBe(`${ep.url}/join/${t.token}`);
    expect(t.command).toBe(`S=$(curl -sS '${t.joinUrl}') && printf '%s\\n' "$S" | sh`);
    const expires = Date.parse((t as unknown as { expiresAt: string }).expiresAt);
    expect(expires - before).toBeGreaterThanOrEqual(30 * 60_000 - 1000);
    expect(expires - before).toBeLessThanOrEqual(30 * 60_000 + 60_000);

    const list = await call('GET', '/join-tokens');
    expect(list.body.items.map((x: { id: string }) => x.id)).toContain(t.id);
    expect(JSON.stringify(list.body)).not.toContain(t.token.split('.')[2]);
    const one = await call('GET', `/join-tokens/${t.id}`);
    expect(one.body).toMatchObject({ id: t.id, usesLeft: 2 });
    expect(JSON.stringify(one.body)).not.toContain(t.token.split('.')[2]);

    const revoked = await call('DELETE', `/join-tokens/${t.id}`);
    expect(revoked.body).toMatchObject({ id: t.id, state: 'revoked', revokedBy: 'admin' });
    expect((await call('DELETE', `/join-tokens/${t.id}`)).body.revokedAt).toBe(revoked.body.revokedAt);
    expect((await call('DELETE', '/join-tokens/jt-nope')).status).toBe(404);
  });

  it.each([
    [{ uses: 0 }, 422, /uses/],
    [{ uses: 1001 }, 422, /uses/],
    [{ expires: '8d' }, 400, /expires "8d" is out of range: allowed from 1m to 7d/],
    [{ expires: 'soon' }, 400, /not a duration/],
    [{ name: 'web-x', uses: 2 }, 422, /can be used once/],
    [{ name: 'm-1234' }, 422, /looks like a takt id/],
    [{ pipeline: 'nope' }, 404, /pipeline 'nope' not found/],
    [{ url: 'http://10.0.0.1:8092' }, 422, /plain HTTP beyond loopback/],
    [{ url: 'https://10.0.0.1:8092/x' }, 422, /just scheme, host and port/],
    [{ url: 'https://$(id):8092' }, 422, /host must be an IP address or a DNS name/],
    [{ url: 'http://127.0.0.1.nip.io:8092' }, 422, /plain HTTP beyond loopback/],
    [{ extra: 1 }, 422, /unknown field 'extra'/],
  ])('refuse %j with %i', async (body, status, why) => {
    const r = await call('POST', '/join-tokens', { url: ep.url, ...body });
    expect(r.status, JSON.stringify(r.body)).toBe(status);
    expect(r.body.error.message).toMatch(why);
  });

  it('for a name that exists hint that a host re-joins without a name, by its identity (new user F11)', async () => {
    await register((await makeToken({ name: 'named-once' })).token, facts({ machineId: '4'.repeat(32), hostname: 'named-once' }));
    const r = await call('POST', '/join-tokens', { url: ep.url, name: 'named-once' });
    expect(r.status).toBe(409);
    expect(r.body.error.message).toMatch(/already exists; to join its host again, make a token without a name .*recognised by the host's machine identity/);
  });

  it('need a URL the hosts can reach when the endpoint listens on loopback only', async () => {
    const r = await call('POST', '/join-tokens', {});
    expect(r.status).toBe(422);
    expect(r.body.error.message).toMatch(/listens on loopback only.*--listen/);
  });

  it('from the CLI: the command alone on stdout, everything with -o json; list and revoke', async () => {
    const table = await ep.cli(['machines', 'join', 'cli-host', '--url', ep.url, '--pipeline', 'joined']);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/^S=\$\(curl -sS 'http:\/\/127\.0\.0\.1:\d+\/join\/tkj\.[^']+'\) && printf '%s\\n' "\$S" \| sh\n$/);
    expect(table.stderr).toMatch(/join token jt-\w+ \(machine cli-host, pipeline joined; expires .*\)\. Run this as root on the host:/);
    const json = await ep.cli(['-o', 'json', 'machines', 'join', '--url', ep.url, '--uses', '3', '--expires', '2h']);
    const made = JSON.parse(json.stdout) as Made & { maxUses: number; expiresAt: string };
    expect(made).toMatchObject({ maxUses: 3, pin: null });
    expect(made.command).toContain(made.token);
    const list = await ep.cli(['join-tokens', 'list']);
    expect(list.stdout).toContain(made.id);
    expect(list.stdout).toContain('3/3');
    expect(list.stdout).not.toContain(made.token);
    const revoke = await ep.cli(['join-tokens', 'revoke', made.id]);
    expect(revoke.stdout).toContain(`revoked join token ${made.id}`);
    const bad = await ep.cli(['machines', 'join', '--url', ep.url, '--uses', 'many']);
    expect(bad.code).toBe(2); // bad usage
    expect(bad.stderr).toContain("--uses must be a whole number");
  });
});

describe('a join token', () => {
  it('is refused on every route but the join routes', async () => {
    const t = await makeToken({ uses: 5 });
    const doc = (await call('GET', '/openapi.json')).body as { paths: Record<string, Record<string, unknown>> };
    const routes: Array<[string, string]> = [['GET', '/api/v1/openapi.json'], ['GET', '/metrics']];
    for (const [path, methods] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        if (path === '/api/v1/join' && method === 'post') continue;
        // Public routes (login) take no token at all, so there is nothing to refuse.
        if ((op as { 'x-takt-permission'?: string })['x-takt-permission'] === 'public') continue;
        routes.push([method.toUpperCase(), path.replace(/\{[^}]+\}/g, 'x')]);
      }
    }
    expect(routes.length).toBeGreaterThan(40);
    for (const [method, path] of routes) {
      const res = await fetch(`${ep.url}${path}`, { method, headers: { authorization: `Bearer ${t.token}`, 'content-type': 'application/json' }, body: ['POST', 'PUT', 'PATCH'].includes(method) ? '{}' : undefined });
      const body = (await res.json()) as { error?: { code: string; message: string } };
      expect([method, path, res.status]).toEqual([method, path, 403]);
      expect(body.error?.message).toBe(JOIN_TOKEN_SCOPE);
    }
    // It took no use doing so.
    expect((await call('GET', `/join-tokens/${t.id}`)).body.uses).toBe(0);
  });

  it.each([
    ['expired', async (id: string) => setColumn(id, 'expires_at', '2000-01-01T00:00:00.000Z'), /expired at 2000-01-01T00:00:00.000Z/],
    ['used up', async (id: string, token: string) => expect((await register(token, facts({ machineId: 'b'.repeat(32), hostname: 'used-up' }))).status).toBe(201), /is used up \(1 of 1 use\)/],
    ['revoked', async (id: string) => expect((await call('DELETE', `/join-tokens/${id}`)).status).toBe(200), /was revoked at/],
  ])('%s is refused saying so: registering, the script (as a script that fails) and the bundle', async (_what, spoil, why) => {
    const t = await makeToken();
    await spoil(t.id, t.token);
    const r = await register(t.token, facts({ machineId: 'c'.repeat(32) }));
    expect(r.status).toBe(401);
    expect(r.body.error.message).toMatch(why);
    const script = await fetch(t.joinUrl);
    expect(script.status).toBe(401);
    expect(script.headers.get('content-type')).toMatch(/^text\/plain/);
    const run = spawnSync('sh', [], { input: await script.text() });
    expect(run.status).toBe(1);
    expect(run.stderr.toString()).toMatch(new RegExp(`^takt join: .*${why.source}`));
    const bundle = await fetch(`${t.joinUrl}/agent.tar.gz`);
    expect(bundle.status).toBe(401);
    // The printed one-liner runs the refusal and fails with it.
    const line = spawnSync('sh', ['-c', t.command]);
    expect(line.status).toBe(1);
    expect(line.stderr.toString()).toMatch(new RegExp(`^takt join: .*${why.source}`));
  });

  it('that does not exist, or a wrong secret, is refused like any bad token', async () => {
    const t = await makeToken();
    const wrong = `${t.token.slice(0, -4)}AAAA`;
    expect((await register(wrong)).status).toBe(401);
    expect((await fetch(`${ep.url}/join/${wrong}`)).status).toBe(401);
    expect((await fetch(`${ep.url}/join/tkj.jt-0000000000.${'A'.repeat(32)}`)).status).toBe(401);
    // Each says it is not a valid join token, never "not the admin token nor … a machine" (new user F11).
    for (const bad of [wrong, 'garbage', 'tkj.jt-nope.x', `tkj.jt-0000000000.${'A'.repeat(32)}`]) {
      const r = await fetch(`${ep.url}/join/${bad}`);
      expect([bad, r.status]).toEqual([bad, 401]);
      const run = spawnSync('sh', [], { input: await r.text() });
      expect(run.stderr.toString()).toMatch(/^takt join: join token not accepted: it is not a valid join token/);
      expect((await register(bad)).body.error.message).toMatch(/not a valid join token/);
    }
    // Neither the admin nor a machine token fetches an install script.
    expect((await fetch(`${ep.url}/join/${ep.token}`)).status).toBe(403);
  });
});

describe('registration', () => {
  it('makes one machine as the token says, and a host that joins again is that machine with a new token', async () => {
    const t = await makeToken({ pipeline: 'joined', uses: 3 });
    const first = await register(t.token, facts({ hostname: 'Rejoin-Host.example' }));
    expect(first.status, JSON.stringify(first.body)).toBe(201);
    const m = first.body.machine;
    expect(m).toMatchObject({ name: 'rejoin-host.example', environment: 'remote', pipeline: 'joined', broker: null, state: 'running' });
    expect(m.facts).toMatchObject({ hostname: 'Rejoin-Host.example', machineId: 'a'.repeat(32), os: { id: 'testos' } });
    expect(first.body.rejoined).toBe(false);
    const oldToken = first.body.token as string;
    expect(oldToken).toMatch(new RegExp(`^tkm\\.${m.id}\\.`));
    expect((await call('GET', `/machines/${m.id}`, undefined, oldToken)).status).toBe(200);

    const count = (await call('GET', '/machines')).body.total as number;
    const again = await register(t.token, facts({ hostname: 'renamed-since', memoryBytes: 8 * 2 ** 30 }));
    expect(again.status).toBe(201);
    expect(again.body).toMatchObject({ rejoined: true, machine: { id: m.id, name: m.name, facts: { hostname: 'renamed-since', memoryBytes: 8 * 2 ** 30 } } });
    expect((await call('GET', '/machines')).body.total).toBe(count);
    const old = await call('GET', `/machines/${m.id}`, undefined, oldToken);
    expect(old.status).toBe(401);
    expect((await call('GET', `/machines/${m.id}`, undefined, again.body.token)).status).toBe(200);

    const view = (await call('GET', `/join-tokens/${t.id}`)).body;
    expect(view).toMatchObject({ uses: 2, usesLeft: 1, machines: [m.id, m.id] });

    // Desired-state history: the machine's creation by the join token; facts never.
    const changes = (await call('GET', '/changes?limit=1000')).body.items as Array<{ object: string; author: string; after: unknown; before: unknown }>;
    const mine = changes.filter((c) => c.object === `machines/${m.id}`);
    expect(mine).toHaveLength(1);
    expect(mine[0]).toMatchObject({ author: `join:${t.id}` });
    expect(JSON.stringify(changes)).not.toContain('renamed-since');
  });

  it('by MAC when the host has no machine-id; names taken get a suffix; a machine a broker made is never taken over', async () => {
    const t = await makeToken({ uses: 4 });
    const a = await register(t.token, facts({ machineId: null, hostname: 'macs', macs: ['52:54:00:00:01:01', '52:54:00:00:01:02'] }));
    const b = await register(t.token, facts({ machineId: null, hostname: 'macs', macs: ['52:54:00:00:01:02'] }));
    expect(b.body).toMatchObject({ rejoined: true, machine: { id: a.body.machine.id } });
    const c = await register(t.token, facts({ machineId: null, hostname: 'macs', macs: ['52:54:00:00:01:09'] }));
    expect(c.body).toMatchObject({ rejoined: false, machine: { name: 'macs-2' } });
  });

  it('never by a weaker identity than the machine has, and a named token takes over no other machine (red team F1)', async () => {
    const victim = await register((await makeToken({ name: 'victim-f1' })).token, facts({ machineId: '7'.repeat(32), hostname: 'victim-f1', macs: ['52:54:00:00:07:07'] }));
    expect(victim.status).toBe(201);
    // Only the victim's MAC (public on the LAN), no machine-id: a new machine, never the victim.
    const byMac = await register((await makeToken()).token, facts({ machineId: null, hostname: 'intruder', macs: ['52:54:00:00:07:07'] }));
    expect(byMac.status, JSON.stringify(byMac.body)).toBe(201);
    expect(byMac.body).toMatchObject({ rejoined: false, machine: { name: 'intruder' } });
    expect(byMac.body.machine.id).not.toBe(victim.body.machine.id);
    // The victim's machine-id with a token made for another name: refused, taking no use.
    const named = await makeToken({ name: 'intern-laptop' });
    const taken = await register(named.token, facts({ machineId: '7'.repeat(32), hostname: 'intern-laptop' }));
    expect(taken.status).toBe(409);
    expect(taken.body.error.message).toMatch(/already machine 'victim-f1'.*for a machine named 'intern-laptop'/);
    expect((await call('GET', `/join-tokens/${named.id}`)).body.uses).toBe(0);
    // The victim's token still works.
    expect((await call('GET', `/machines/${victim.body.machine.id}`, undefined, victim.body.token)).status).toBe(200);
  });

  it('refuses to take over a machine whose agent is connected from another address (a cloned machine-id), allows it from the same one', async () => {
    const t = await makeToken({ uses: 3 });
    const host = facts({ machineId: '8'.repeat(32), hostname: 'clone-src' });
    const first = await register(t.token, host);
    expect(first.status).toBe(201);
    // Its agent is in touch (from 127.0.0.1).
    expect((await call('GET', `/machines/${first.body.machine.id}`, undefined, first.body.token)).status).toBe(200);
    const clone = await postFrom('127.0.0.2', '/api/v1/join', { facts: { ...host, hostname: 'clone' } }, t.token);
    expect(clone.status, JSON.stringify(clone.body)).toBe(409);
    expect(clone.body.error.message).toMatch(/same machine identity as machine 'clone-src', whose agent is connected right now from 127\.0\.0\.1 \(this host is 127\.0\.0\.2\).*rm \/etc\/machine-id && systemd-machine-id-setup/);
    expect((await call('GET', `/machines/${first.body.machine.id}`, undefined, first.body.token)).status).toBe(200);
    // The same host joining again (an upgrade while its agent runs) is that machine.
    const again = await register(t.token, host);
    expect(again.body).toMatchObject({ rejoined: true, machine: { id: first.body.machine.id } });
  });

  it('two registrations of one host at once make one machine', async () => {
    const t = await makeToken({ uses: 2 });
    const host = facts({ machineId: '1'.repeat(32), hostname: 'twice-at-once' });
    const [a, b] = await Promise.all([register(t.token, host), register(t.token, host)]);
    expect([a.status, b.status]).toEqual([201, 201]);
    expect(a.body.machine.id).toBe(b.body.machine.id);
    expect([a.body.rejoined, b.body.rejoined].sort()).toEqual([false, true]);
    expect((await call('GET', '/machines?name=twice-at-once')).body.total).toBe(1);
  });

  it('refuses facts that break the schema or their bounds, taking no use', async () => {
    const t = await makeToken();
    const bad = await register(t.token, { ...facts(), macs: ['not-a-mac'] });
    expect(bad.status).toBe(422);
    expect(bad.body.error.path).toBe('/facts/macs/0');
    const huge = await register(t.token, facts({ disks: Array.from({ length: 129 }, (_, i) => ({ name: `d${i}`, sizeBytes: 1, model: null, rotational: null })) }));
    expect(huge.status).toBe(422);
    const big = await call('POST', '/join', undefined, t.token, JSON.stringify({ facts: facts({ hostname: 'x'.repeat(70_000) }) }));
    expect(big.status).toBe(413);
    expect((await call('GET', `/join-tokens/${t.id}`)).body.uses).toBe(0);
  });
});

describe('facts', () => {
  let machine: { id: string; name: string };
  let token: string;
  beforeAll(async () => {
    const t = await makeToken({ name: 'facts-host', pipeline: 'joined' });
    const r = await register(t.token, facts({ machineId: 'd'.repeat(32), hostname: 'facts-host', os: { id: 'factos', versionId: '7', prettyName: 'Fact OS 7', idLike: [] } }));
    machine = r.body.machine;
    token = r.body.token;
  });

  it('are reported by the machine itself only, and shown by GET /machines/:id and `machines get` but not in lists', async () => {
    const put = await call('PUT', `/machines/${machine.id}/facts`, facts({ machineId: 'd'.repeat(32), hostname: 'facts-host', kernel: '6.9.9-new', os: { id: 'factos', versionId: '7', prettyName: 'Fact OS 7', idLike: [] } }), token);
    expect(put.status).toBe(200);
    expect(put.body.facts.kernel).toBe('6.9.9-new');
    const other = await register((await makeToken()).token, facts({ machineId: 'e'.repeat(32), hostname: 'other' }));
    expect((await call('PUT', `/machines/${machine.id}/facts`, facts(), other.body.token)).status).toBe(403);
    expect((await call('PUT', `/machines/${machine.id}/facts`, facts())).status).toBe(403);

    const got = await call('GET', `/machines/${machine.id}`);
    expect(got.body.facts).toMatchObject({ kernel: '6.9.9-new', observedAt: expect.any(String) });
    const list = await call('GET', '/machines?name=facts-host');
    expect(list.body.items[0].facts).toBeUndefined();
    const cli = await ep.cli(['machines', 'get', 'facts-host']);
    expect(cli.stdout).toMatch(/\nFacts \(observed .*\)\n {2}hostname +facts-host\n/);
    expect(cli.stdout).toMatch(/ {2}kernel +6\.9\.9-new \(x86_64\)/);
    expect(cli.stdout).toMatch(/ {2}cpu +4 × Test CPU/);
  });

  it('cannot change the identity registration recorded, so no agent redirects another host\'s re-join (red team F6)', async () => {
    const squatter = await register((await makeToken({ name: 'squatter' })).token, facts({ machineId: '5'.repeat(32), hostname: 'squatter' }));
    const claim = facts({ machineId: '6'.repeat(32), productUuid: 'uuid-6', macs: ['52:54:00:00:06:06'], hostname: 'squatter', kernel: '6.9.9-sq' });
    const put = await call('PUT', `/machines/${squatter.body.machine.id}/facts`, claim, squatter.body.token);
    expect(put.status).toBe(200);
    expect(put.body.facts).toMatchObject({ machineId: '5'.repeat(32), productUuid: null, macs: ['52:54:00:00:00:0a'], kernel: '6.9.9-sq' });
    // The host that really has machine-id 666… joins and gets a machine of its own.
    const real = await register((await makeToken()).token, facts({ machineId: '6'.repeat(32), hostname: 'real-six' }));
    expect(real.body).toMatchObject({ rejoined: false, machine: { name: 'real-six' } });
  });

  it('reach templates as facts.*, beside the params', async () => {
    const r = await call('GET', `/machines/${machine.id}/render?task=show-facts`);
    expect(r.status).toBe(200);
    expect(r.body.displayScript).toContain(`facts: hostname=facts-host machine-id=${'d'.repeat(32)} os=factos cpus=4`);
    expect(r.body.params).toEqual([]);
    // A machine with no facts yet cannot render a template that needs them (strict), and says which.
    const bare = await call('POST', '/machines', { name: 'no-facts' });
    const none = await call('GET', `/machines/${bare.body.items[0].id}/render?task=show-facts`);
    expect(none.body.error).toMatch(/facts/);
  });

  it('select machines in rollouts as facts.<path>=value; an unknown fact is refused', async () => {
    const r = await call('POST', '/rollouts', { pipeline: 'joined', select: { 'facts.os.id': 'factos' }, canary: 0, batch: 5 });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const view = await call('GET', `/rollouts/${r.body.id}`);
    expect(view.body.items.map((i: { machineName: string }) => i.machineName)).toEqual(['facts-host']);
    await call('POST', `/rollouts/${r.body.id}/abort`);
    const bad = await call('POST', '/rollouts', { pipeline: 'joined', select: { 'facts.shoe.size': '9' } });
    expect(bad.status).toBe(422);
    expect(bad.body.error.message).toMatch(/unknown fact 'shoe.size'/);
    const none = await call('POST', '/rollouts', { pipeline: 'joined', select: { 'facts.os.id': 'nothing-runs-this' } });
    expect(none.status).toBe(422);
  });

  it('are never exported as desired state', async () => {
    const exp = await call('GET', '/export');
    expect(exp.status).toBe(200);
    const text = JSON.stringify(exp.body);
    expect(text).toContain('facts-host');
    expect(text).not.toContain('6.9.9-new');
    expect(text).not.toContain('d'.repeat(32));
  });
});

describe('machines token --rotate', () => {
  it('issues a new token once and the old one stops working at once', async () => {
    const t = await makeToken({ name: 'rotate-me' });
    const r = await register(t.token, facts({ machineId: 'f'.repeat(32), hostname: 'rotate-me' }));
    const old = r.body.token as string;
    expect((await call('GET', '/machines/rotate-me', undefined, old)).status).toBe(200);
    const refused = await ep.cli(['machines', 'token', 'rotate-me']);
    expect(refused.code).toBe(2); // bad usage
    expect(refused.stderr).toMatch(/--rotate issues a new one/);
    const rotated = await ep.cli(['machines', 'token', 'rotate-me', '--rotate']);
    expect(rotated.code, rotated.stderr).toBe(0);
    // stdout is the token alone (`--rotate > token` writes a token file); the notice is on stderr (new user F6).
    expect(rotated.stdout).toMatch(new RegExp(`^tkm\\.${r.body.machine.id}\\.[A-Za-z0-9_-]+\n$`));
    expect(rotated.stderr).toMatch(/new token of rotate-me \(shown once\); the old one no longer works/);
    const fresh = rotated.stdout.trim();
    expect((await call('GET', '/machines/rotate-me', undefined, old)).status).toBe(401);
    expect((await call('GET', '/machines/rotate-me', undefined, fresh)).status).toBe(200);
    // The rotation is an event (naming who did it), and neither token's secret is in any event.
    const events = readEvents();
    expect(events.filter((e) => e.topic === `machines.token.${r.body.machine.id}`).map((e) => JSON.parse(e.data).by)).toContain('admin');
    const all = JSON.stringify(events);
    expect(all).not.toContain(fresh.split('.')[2]);
    expect(all).not.toContain(old.split('.')[2]);
  });

  it('is refused for a machine a broker runs (it holds the token)', async () => {
    const made = await call('POST', '/machines', { name: 'brokered', broker: 'local' });
    expect(made.status).toBe(201);
    const r = await call('POST', '/machines/brokered/token', {});
    expect(r.status).toBe(409);
    expect(r.body.error.message).toMatch(/run by broker 'local'/);
    await call('DELETE', '/machines/brokered');
  });
});

/** POSTs JSON to the endpoint from local address `from` (another loopback address: another host). */
function postFrom(from: string, path: string, body: unknown, token: string): Promise<Answer> {
  const u = new URL(ep.url);
  const data = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, method: 'POST', localAddress: from, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

/** Every event row the endpoint stored, read straight from its database. */
function readEvents(): Array<{ topic: string; data: string }> {
  const db = new Database(join(ep.data, 'takt.db'), { readonly: true });
  try {
    db.pragma('busy_timeout = 5000');
    return db.prepare('select topic, data from events order by id').all() as Array<{ topic: string; data: string }>;
  } finally {
    db.close();
  }
}

/** Writes one column of a join token's row straight into the endpoint's database (to age it). */
function setColumn(id: string, column: 'expires_at', value: string) {
  const db = new Database(join(ep.data, 'takt.db'));
  try {
    db.pragma('busy_timeout = 5000');
    db.prepare(`update join_tokens set ${column} = ? where id = ?`).run(value, id);
  } finally {
    db.close();
  }
}

describe('the one-liner on this host (loopback HTTP)', () => {
  const isRoot = process.getuid?.() === 0;
  let prefixDir: string | undefined;
  const started: number[] = [];
  afterAll(() => {
    for (const pid of started) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    if (prefixDir) rmSync(prefixDir, { recursive: true, force: true });
  });

  it.skipIf(!isRoot)('installs the bundle under TAKT_PREFIX, registers, and the printed agent command runs its jobs', async () => {
    const t = await makeToken({ pipeline: 'joined', name: 'oneliner' });
    prefixDir = mkdtempSync(join(tmpdir(), 'takt-join-prefix-'));
    const prefix = join(prefixDir, 'opt', 'takt');
    const run = spawnSync('sh', ['-c', t.command], { env: { ...process.env, TAKT_PREFIX: prefix, TAKT_SYSTEMD: 'no' }, timeout: 120_000 });
    const stderr = run.stderr.toString();
    expect(run.status, stderr).toBe(0);
    expect(stderr).toMatch(/takt join: joined; systemd is not running this host/);
    const command = run.stdout.toString().trim();
    expect(command).toBe(`${prefix}/bin/takt agent --endpoint ${ep.url} --token-file ${prefix}/etc/token --dir ${prefix}/var --report-facts`);
    expect(statSync(join(prefix, 'etc', 'token')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(prefix, 'etc', 'token'), 'utf8')).toMatch(/^tkm\./);
    expect(command).not.toContain('tkm.');
    const m = (await call('GET', '/machines/oneliner')).body;
    expect(m).toMatchObject({ environment: 'remote', pipeline: 'joined', facts: { arch: 'x86_64' } });

    // The agent, with no node on its PATH, runs the pipeline to done.
    const agent = spawn('sh', ['-c', command], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    started.push(-agent.pid!);
    let log = '';
    agent.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    await until(async () => (await call('GET', '/machines/oneliner')).body.state === 'done', 60_000, `oneliner done (agent log: ${log})`);
    const jobs = (await call('GET', `/jobs?machine=oneliner`)).body.items as Array<{ task: string; state: string }>;
    expect(jobs.map((j) => `${j.task}:${j.state}`).sort()).toEqual(['check-runtime:succeeded', 'show-facts:succeeded']);
    expect(log).toContain('host facts reported');

    // Run again (an upgrade, from this same address while its agent runs): the host says plainly that it
    // joined again as the existing machine and that the machine's previous token no longer works.
    expect(stderr).not.toMatch(/joined again|previous token/);
    const again = spawnSync('sh', ['-c', (await makeToken()).command], { env: { ...process.env, TAKT_PREFIX: prefix, TAKT_SYSTEMD: 'no' }, timeout: 120_000 });
    expect(again.status, again.stderr.toString()).toBe(0);
    expect(again.stderr.toString()).toMatch(/joined again as machine oneliner \(m-\w+\): this host was already that machine[^\n]*\n.*machine oneliner's previous token no longer works/);
  });
});
