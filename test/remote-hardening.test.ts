/**
 * What the red team and a new user found around reaching remote machines, one test per kind: what counts as
 * loopback, no token over plain HTTP beyond it, TLS failures that say what to fix, `--version`, and an
 * agent that picks up a rotated token from its token file without a restart.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient, checkEndpoint } from '../src/client/http.js';
import { renderTable } from '../src/cli/output.js';
import { isLoopbackHost } from '../src/model/host.js';
import { Endpoint, packFiles, runCli, TAKT, until } from './helpers/endpoint.js';

describe('what counts as loopback (plain HTTP is allowed there only)', () => {
  it.each([
    ['127.0.0.1', true],
    ['127.9.8.7', true],
    ['::1', true],
    ['[::1]', true],
    ['0:0:0:0:0:0:0:1', true],
    ['localhost', true],
    ['LOCALHOST', true],
    ['127.evil.test', false],
    ['127.0.0.1.nip.io', false],
    ['localhost.evil.test', false],
    ['10.0.0.1', false],
    ['0.0.0.0', false],
    ['::', false],
    ['::ffff:127.0.0.1', false],
    ['128.0.0.1', false],
    ['', false],
  ])('%j → %s', (host, want) => expect(isLoopbackHost(host)).toBe(want));
});

describe('no token over plain HTTP beyond loopback', () => {
  it.each([
    ['http://127.0.0.1:8092', true],
    ['http://localhost:8092', true],
    ['http://[::1]:8092', true],
    ['https://10.0.0.5:8092', true],
    ['http://10.0.0.5:8092', false],
    ['http://127.0.0.1.nip.io:8092', false],
    ['http://takt.example.org', false],
  ])('%s allowed: %s', (url, ok) => {
    if (ok) expect(() => checkEndpoint(url)).not.toThrow();
    else expect(() => checkEndpoint(url)).toThrow(/refusing to send a token over plain HTTP to .*use https:\/\//);
  });

  it('a client without a token may still ask (health is public)', () => {
    expect(() => new ApiClient({ endpoint: 'http://10.0.0.5:8092' })).not.toThrow();
    expect(() => new ApiClient({ endpoint: 'http://10.0.0.5:8092', token: 'tka.x' })).toThrow(/plain HTTP/);
  });

  it('the CLI and the agent refuse at once, saying why, and send nothing', async () => {
    const cli = await runCli(['machines', 'list'], { TAKT_ENDPOINT: 'http://10.0.0.5:9', TAKT_TOKEN: 'tka.secret' });
    expect(cli.code).toBe(1);
    expect(cli.stderr).toContain('refusing to send a token over plain HTTP to 10.0.0.5:9');
    const agent = await runCli(['agent', '--endpoint', 'http://10.0.0.5:9', '--dir', mkdtempSync(join(tmpdir(), 'takt-hard-'))], { TAKT_TOKEN: 'tkm.m-1.secret' });
    expect(agent.code).toBe(1);
    expect(agent.stderr).toContain('refusing to send a token over plain HTTP');
  });
});

describe('tables stay readable', () => {
  it('a long reason is cut with … in a table, whole in JSON', () => {
    const reason = `host key changed: ${'x'.repeat(400)} END`;
    const table = renderTable([{ reason }], [{ header: 'REASON', get: (r) => r.reason, max: 80 }]);
    expect(table).toContain('…');
    expect(table).not.toContain('END');
    expect(table.split('\n').every((l) => l.length < 100)).toBe(true);
  });
});

describe('the CLI says what to fix', () => {
  it('--version prints the version', async () => {
    const r = await runCli(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('plain HTTP to a TLS port points at https://', async () => {
    const ep = await Endpoint.start({ listen: ['0.0.0.0:0'] });
    try {
      const port = new URL(ep.httpsUrl).port;
      // The wildcard listener answers on loopback too, so this plain request reaches the TLS port from here.
      const r = await runCli(['machines', 'list'], { TAKT_ENDPOINT: `http://127.0.0.1:${port}`, TAKT_TOKEN: ep.token });
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(/use https:\/\//);
      const wrongName = await runCli(['machines', 'list'], { TAKT_ENDPOINT: `https://localhost.localdomain.invalid:${port}`, TAKT_TOKEN: ep.token, TAKT_DATA: ep.data });
      expect(wrongName.code).toBe(3);
    } finally {
      await ep.stop();
    }
  });
});

describe('an agent whose token was rotated', () => {
  let ep: Endpoint;
  let agent: ChildProcess | null = null;
  const dir = mkdtempSync(join(tmpdir(), 'takt-rotate-'));
  beforeAll(async () => {
    ep = await Endpoint.start({ lease: '5s' });
    expect((await ep.call('POST', '/packs', { files: await packFiles('basic') })).status).toBe(201);
  });
  afterAll(async () => {
    agent?.kill('SIGKILL');
    await ep?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reads the token file again when the endpoint rejects its token, and carries on', async () => {
    const created = await ep.call('POST', '/machines', { name: 'rot-1' });
    expect(created.status).toBe(201);
    const { id, token } = created.body.items[0] as { id: string; token: string };
    const tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
    let out = '';
    agent = spawn(process.execPath, [TAKT, 'agent', '--endpoint', ep.url, '--token-file', tokenFile, '--dir', join(dir, 'agent')], { stdio: ['ignore', 'pipe', 'pipe'] });
    agent.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    agent.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    await until(async () => (await ep.call('GET', `/machines/${id}`)).body.agent?.connected === true, 30_000, 'agent connected');

    const rotated = await ep.call('POST', `/machines/${id}/token`, {});
    expect(rotated.status).toBe(200);
    writeFileSync(tokenFile, rotated.body.token + '\n', { mode: 0o600 });
    expect((await ep.call('PATCH', `/machines/${id}`, { pipeline: 'basic' })).status).toBe(200);
    await until(async () => (await ep.call('GET', `/machines/${id}`)).body.state === 'done', 50_000, `machine done (agent output:\n${out})`);
    expect(out).toContain('using the new one in the token file');
    // What people read names the machine, not its id.
    const listed = await runCli(['jobs', 'list', '--machine', 'rot-1'], { TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token, NO_COLOR: '1' });
    expect(listed.code).toBe(0);
    expect(listed.stdout).toContain('rot-1');
    expect(listed.stdout).not.toContain(id);
    expect(out).not.toContain(token);
    expect(out).not.toContain(rotated.body.token);
  }, 120_000);
});
