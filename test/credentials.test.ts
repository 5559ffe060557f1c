/**
 * Credentials (SSH keys for agentless machines) against a real endpoint and the real CLI: added from a
 * file (an encrypted one with its passphrase on stdin), listed with their fingerprint, refused when they
 * are not usable private keys, refused for removal while a machine uses them — and the key and its
 * passphrase never seen again: not in answers, events, history, the export, the server log or the
 * database file (sealed). Machines that name an SSH target are checked with clear paths, and one that
 * cannot be reached says so in its reason. No sshd needed (see ssh.test.ts for real hosts).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles, runCli, until } from './helpers/endpoint.js';

let ep: Endpoint;
const work = mkdtempSync(join(tmpdir(), 'takt-cred-'));
const key = join(work, 'id_ed25519');
const encKey = join(work, 'id_enc');
const PASSPHRASE = 'correct horse battery staple 7731';
/** A part of each private key's body: must never show up anywhere but the key file. */
const bodyOf = (file: string) => readFileSync(file, 'utf8').split('\n')[3]!;

const call = (method: string, path: string, body?: unknown, token?: string | null) => ep.call(method, path, body, token);

function filesUnder(root: string): string[] {
  if (!existsSync(root)) return [];
  return readdirSync(root).flatMap((e) => {
    const p = join(root, e);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

beforeAll(async () => {
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', PASSPHRASE, '-f', encKey]);
  ep = await Endpoint.start();
  expect((await call('POST', '/packs', { files: await packFiles('ssh') })).status).toBe(201);
});

afterAll(async () => {
  await ep?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('credentials', () => {
  it('add from a file: listed by name, kind, type and the fingerprint ssh-keygen prints; the public key for authorized_keys', async () => {
    const r = await ep.cli(['credentials', 'add', 'lab', '--ssh-key', key]);
    expect(r.code, r.stderr).toBe(0);
    const fp = execFileSync('ssh-keygen', ['-lf', `${key}.pub`]).toString().split(' ')[1]!;
    expect(r.stdout).toContain(fp);
    const list = JSON.parse((await ep.cli(['credentials', 'list', '-o', 'json'])).stdout) as Array<Record<string, unknown>>;
    expect(list).toEqual([{ name: 'lab', kind: 'ssh-key', keyType: 'ssh-ed25519', fingerprint: fp, publicKey: expect.stringMatching(/^ssh-ed25519 AAAA\S+ takt:lab$/), createdAt: expect.any(String), usedBy: [] }]);
    expect(String(list[0]!.publicKey).split(' ')[1]).toBe(readFileSync(`${key}.pub`, 'utf8').split(' ')[1]);
  });

  it('an encrypted key takes its passphrase from stdin, never argv; a wrong one is refused', async () => {
    const wrong = await runCli(['credentials', 'add', 'enc', '--ssh-key', encKey, '--passphrase-stdin'], { TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token }, 'not it\n');
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain('the passphrase does not open it');
    // Without a terminal and without --passphrase-stdin it says how to give it.
    const none = await ep.cli(['credentials', 'add', 'enc', '--ssh-key', encKey]);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain('--passphrase-stdin');
    const ok = await runCli(['credentials', 'add', 'enc', '--ssh-key', encKey, '--passphrase-stdin', '-o', 'json'], { TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token }, `${PASSPHRASE}\n`);
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout).keyType).toBe('ssh-ed25519');
  });

  it.each([
    ['a public key', () => ({ name: 'pub', kind: 'ssh-key', privateKey: readFileSync(`${key}.pub`, 'utf8') }), 422, '/privateKey', 'public key'],
    ['not a key', () => ({ name: 'junk', kind: 'ssh-key', privateKey: 'hello' }), 422, '/privateKey', 'not a private key'],
    ['a taken name', () => ({ name: 'lab', kind: 'ssh-key', privateKey: readFileSync(key, 'utf8') }), 409, '/name', 'already exists'],
    ['a bad name', () => ({ name: 'Bad Name', kind: 'ssh-key', privateKey: 'x' }), 422, '/name', 'name'],
    ['an unknown kind', () => ({ name: 'x', kind: 'password', privateKey: 'x' }), 422, '/kind', 'kind'],
  ])('refused: %s', async (_what, body, status, path, words) => {
    const r = await call('POST', '/credentials', body());
    expect(r.status).toBe(status);
    expect(r.body.error.path).toBe(path);
    expect(r.body.error.message).toContain(words);
    expect(JSON.stringify(r.body)).not.toContain(bodyOf(key));
  });

  it('admin only: a machine token is refused on every credentials route', async () => {
    const m = await call('POST', '/machines', { name: 'plain' });
    const token = m.body.items[0].token as string;
    for (const [method, path] of [['GET', '/credentials'], ['GET', '/credentials/lab'], ['POST', '/credentials'], ['DELETE', '/credentials/lab']] as const) {
      const r = await call(method, path, method === 'POST' ? { name: 'x', kind: 'ssh-key', privateKey: 'x' } : undefined, token);
      expect(r.status, `${method} ${path}`).toBe(403);
    }
    expect((await call('DELETE', '/machines/plain')).status).toBe(200);
  });
});

describe('machines with ssh settings', () => {
  it('are checked, with the path of the bad field', async () => {
    const cases: Array<[unknown, number, string]> = [
      [{ name: 'a', ssh: { user: 'root', host: 'bad_host', credential: 'lab' } }, 422, '/ssh/host'],
      [{ name: 'a', ssh: { user: 'root', host: '10.0.0.5', credential: 'nope' } }, 404, '/ssh/credential'],
      [{ name: 'a', ssh: { user: 'root', host: '10.0.0.5', port: 70000, credential: 'lab' } }, 422, '/ssh/port'],
      [{ name: 'a', ssh: { user: 'root', host: '10.0.0.5', credential: 'lab' }, broker: 'local' }, 422, '/broker'],
      [{ name: 'a', ssh: { user: 'root', host: '10.0.0.5', credential: 'lab' }, count: 2 }, 422, '/count'],
      [{ name: 'a', broker: 'ssh' }, 422, '/ssh'],
      [{ name: 'a', ssh: { user: 'root', host: '10.0.0.5', credential: 'lab', root: 'rel' } }, 422, '/ssh/root'],
    ];
    for (const [body, status, path] of cases) {
      const r = await call('POST', '/machines', body);
      expect(r.status, JSON.stringify(body)).toBe(status);
      expect(r.body.error.path, JSON.stringify(r.body)).toBe(path);
    }
    const cli = await ep.cli(['machines', 'create', 'a', '--ssh', 'root@2001:db8::5', '--ssh-key', 'lab']);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toContain("--ssh 'root@2001:db8::5': put an IPv6 address in brackets");
    expect((await call('GET', '/machines/a')).status).toBe(404);
  });

  it('one that cannot be reached says so in its reason, keeps trying, and holds its credential', async () => {
    const r = await ep.cli(['machines', 'create', 'far', '--ssh', 'root@127.0.0.1:1', '--ssh-key', 'lab', '--pipeline', 'once', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const made = JSON.parse(r.stdout)[0];
    expect(made).toMatchObject({ broker: 'ssh', environment: 'ssh', ssh: { user: 'root', host: '127.0.0.1', port: 1, credential: 'lab', hostKey: null } });
    expect(made).not.toHaveProperty('token');
    const m = await until(async () => {
      const g = (await call('GET', '/machines/far')).body;
      return g.reason?.startsWith('cannot reach root@127.0.0.1:1: ') ? g : null;
    }, 30_000, 'the unreachable reason');
    expect(m.state).toBe('running');
    expect(m.reason).toMatch(/ECONNREFUSED/);
    // No job was claimed for a host that cannot be reached.
    expect((await call('GET', `/jobs?machine=${m.id}`)).body.items).toEqual([]);

    const rm = await ep.cli(['credentials', 'remove', 'lab']);
    expect(rm.code).toBe(1);
    expect(rm.stderr).toContain("credential 'lab' is used by machine far");
    expect(JSON.parse((await ep.cli(['credentials', 'get', 'lab', '-o', 'json'])).stdout).usedBy).toEqual(['far']);

    const accept = await ep.cli(['machines', 'update', 'far', '--ssh-accept-new-key']);
    expect(accept.code).toBe(1);
    expect(accept.stderr).toContain('no changed host key to accept');
    const moved = await ep.cli(['machines', 'update', 'far', '--ssh', 'admin@127.0.0.1:2', '--ssh-key', 'enc', '-o', 'json']);
    expect(moved.code, moved.stderr).toBe(0);
    expect(JSON.parse(moved.stdout).ssh).toMatchObject({ user: 'admin', port: 2, credential: 'enc' });
    await until(async () => ((await call('GET', '/machines/far')).body.reason ?? '').startsWith('cannot reach admin@127.0.0.1:2'), 30_000, 'the new target in the reason');
    expect((await call('DELETE', '/machines/far')).status).toBe(200);
    expect((await ep.cli(['credentials', 'remove', 'lab'])).code).toBe(0);
    expect((await call('GET', '/credentials/lab')).status).toBe(404);
  });

  it('an agent machine cannot be given ssh settings', async () => {
    expect((await call('POST', '/machines', { name: 'agented' })).status).toBe(201);
    const r = await call('PATCH', '/machines/agented', { ssh: { port: 3 } });
    expect(r.status).toBe(409);
    expect(r.body.error.path).toBe('/ssh');
  });
});

describe('export and import', () => {
  it('an SSH machine travels with its settings and the credential name, never the key; the target needs that credential', async () => {
    const made = await ep.cli(['machines', 'create', 'travel', '--ssh', 'deploy@[::1]:1', '--ssh-key', 'enc', '--ssh-root', '/srv/x']);
    expect(made.code, made.stderr).toBe(0);
    const files = (await call('GET', '/export')).body.files as Record<string, string>;
    const doc = Object.entries(files).find(([f]) => f.startsWith('machines/') && files[f]!.includes('name: travel'))?.[1];
    expect(doc).toMatch(/ssh:\n(\s+\w+: .*\n)+/);
    expect(doc).toContain('credential: enc');
    expect(doc).toContain('host: ::1');
    const other = await Endpoint.start();
    try {
      expect((await other.call('POST', '/packs', { files: await packFiles('ssh') })).status).toBe(201);
      const refused = await other.call('POST', '/import', { files });
      expect(refused.status).toBeGreaterThanOrEqual(400);
      expect(JSON.stringify(refused.body)).toContain("credential 'enc' not found");
      const add = await runCli(['credentials', 'add', 'enc', '--ssh-key', encKey, '--passphrase-stdin'], { TAKT_ENDPOINT: other.url, TAKT_TOKEN: other.token }, `${PASSPHRASE}\n`);
      expect(add.code, add.stderr).toBe(0);
      const ok = await other.call('POST', '/import', { files });
      expect(ok.status, JSON.stringify(ok.body)).toBe(200);
      expect((await other.call('GET', '/machines/travel')).body).toMatchObject({ broker: 'ssh', ssh: { user: 'deploy', host: '::1', port: 1, credential: 'enc', root: '/srv/x', hostKey: null } });
    } finally {
      await other.stop();
    }
    expect((await call('DELETE', '/machines/travel')).status).toBe(200);
  });
});

describe('the key is never seen again', () => {
  it('not in answers, events, history, the export, the server log or any file the endpoint keeps', async () => {
    const seen: Array<{ where: string; text: string }> = [];
    const get = async (path: string) => seen.push({ where: path, text: JSON.stringify((await call('GET', path)).body) });
    for (const p of ['/credentials', '/credentials/enc', '/machines', '/export', '/changes?limit=1000']) await get(p);
    const changes = (await call('GET', '/changes?limit=1000')).body.items as Array<{ seq: number; object: string }>;
    expect(changes.some((c) => c.object === 'credentials/lab')).toBe(true);
    for (const c of changes) await get(`/changes/${c.seq}`);
    // The event stream from the start.
    const ctl = new AbortController();
    const res = await fetch(`${ep.url}/api/v1/events?since=0`, { headers: { authorization: `Bearer ${ep.token}` }, signal: ctl.signal });
    const reader = res.body!.getReader();
    let events = '';
    while (!events.includes('credentials.delete.lab')) {
      const { value, done } = await reader.read();
      if (done) break;
      events += new TextDecoder().decode(value);
    }
    ctl.abort();
    expect(events).toContain('credentials.create.enc');
    seen.push({ where: 'events', text: events });
    seen.push({ where: 'server log', text: ep.output });
    for (const f of filesUnder(ep.data)) if (!f.endsWith('secret.key')) seen.push({ where: f, text: readFileSync(f).toString('latin1') });
    expect(seen.some((s) => s.where.endsWith('takt.db'))).toBe(true);
    const secrets = { key: bodyOf(key), encKey: bodyOf(encKey), passphrase: PASSPHRASE };
    const hits = seen.flatMap((s) => Object.entries(secrets).filter(([, v]) => s.text.includes(v)).map(([k]) => `${k} in ${s.where}`));
    expect(hits).toEqual([]);
  });

  it('serve refuses a bad --ssh-max-sessions with the flag name', async () => {
    const data = mkdtempSync(join(tmpdir(), 'takt-cred-serve-'));
    try {
      const r = await runCli(['serve', '--listen', '127.0.0.1:0', '--data', data, '--ssh-max-sessions', '0']);
      expect(r.code).toBe(2); // bad usage
      expect(r.stderr).toContain('--ssh-max-sessions must be a whole number from 1');
    } finally {
      rmSync(data, { recursive: true, force: true });
    }
  });
});
