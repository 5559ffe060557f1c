/**
 * Issue 12: one `takt serve` per data dir (a second is refused with the PID that holds it; a dead one's
 * lock is taken over), and the CLI finds a non-default port through the `endpoint` file serve writes.
 * A start refused for a bad flag or store writes nothing into the data dir.
 */
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { endpointFromDataDir } from '../src/cli/client.js';
import { Endpoint, runCli, serveRefusal } from './helpers/endpoint.js';

let ep: Endpoint;
beforeAll(async () => {
  ep = await Endpoint.start();
});
afterAll(async () => ep?.stop());


describe('one takt serve per data dir', () => {
  it('a second serve on the same data dir is refused with the PID that holds it; the first keeps serving', async () => {
    const url = ep.url;
    const lock = JSON.parse(readFileSync(join(ep.data, 'serve.lock'), 'utf8')) as { pid: number; startedAt: string };
    expect(lock.pid).toBe(ep.proc!.pid);
    const second = await serveRefusal(ep.data);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`data dir ${ep.data} is in use by takt serve PID ${ep.proc!.pid} (started ${lock.startedAt}); stop it or use another --data dir`);
    // nothing of the first was touched
    expect(readFileSync(join(ep.data, 'endpoint'), 'utf8').trim()).toBe(url);
    expect((await ep.call('GET', '/machines')).status).toBe(200);
  });

  it("a killed serve's lock is stale: the next start takes it over", async () => {
    await ep.crash();
    expect(existsSync(join(ep.data, 'serve.lock'))).toBe(true);
    await ep.boot();
    const lock = JSON.parse(readFileSync(join(ep.data, 'serve.lock'), 'utf8')) as { pid: number };
    expect(lock.pid).toBe(ep.proc!.pid);
  });

  it('a stopped serve leaves neither its lock nor its endpoint file', async () => {
    const other = await Endpoint.start();
    const data = other.data;
    const p = other.proc!;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await exited;
    expect(existsSync(join(data, 'serve.lock'))).toBe(false);
    expect(existsSync(join(data, 'endpoint'))).toBe(false);
    await other.stop();
  });
});

describe('a refused start writes nothing into the data dir', () => {
  // Each case: the environment of a `takt serve` that must be refused, and what it says.
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ TAKT_STORE: 'mysql://u:hunter2@db/takt' }, /--store 'mysql:\/\/u:\*\*\*\*@db\/takt' is not a store/],
    [{ TAKT_STORE: 'postgres://[db/takt' }, /is not a URL: use postgres:\/\//],
    [{ TAKT_STORE: `sqlite:${tmpdir()}` }, /is a directory; name the database file in it/],
    [{ TAKT_MAX_LOG_BYTES: 'lots' }, /--max-log-bytes/],
    [{ TAKT_SSH_MAX_SESSIONS: '0' }, /--ssh-max-sessions/],
    [{ TAKT_AUDIT_KEEP_DAYS: '0' }, /--audit-keep-days/],
    [{ TAKT_CHURN_CHECK: 'often' }, /--churn-check/],
    [{ TAKT_MAX_CONNECTIONS: '1' }, /--max-connections/],
  ];

  it.each(cases)('%j: refused (bad usage), and a new data dir is not even made', async (env, message) => {
    const parent = mkdtempSync(join(tmpdir(), 'takt-refused-'));
    try {
      const data = join(parent, 'data');
      const r = await serveRefusal(data, env);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toContain('hunter2');
      expect(existsSync(data)).toBe(false);
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  });

  it('a store that cannot be opened leaves an existing data dir as it was: no endpoint-id, no lock', async () => {
    const data = mkdtempSync(join(tmpdir(), 'takt-refused-'));
    try {
      // Nothing listens on port 1.
      const r = await serveRefusal(data, { TAKT_STORE: 'postgres://takt@127.0.0.1:1/takt' });
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch(/cannot use PostgreSQL at postgres:\/\/takt@127\.0\.0\.1:1\/takt/);
      expect(readdirSync(data)).toEqual([]);
    } finally {
      rmSync(data, { recursive: true, force: true });
    }
  });
});

describe('the CLI finds the endpoint through the data dir', () => {
  it('a non-default port is found from the endpoint file, with no --endpoint or TAKT_ENDPOINT', async () => {
    expect(new URL(ep.url).port).not.toBe('8092');
    const r = await runCli(['machines', 'list', '-o', 'json'], { TAKT_DATA: ep.data, TAKT_ENDPOINT: '', TAKT_TOKEN: '' });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual([]);
  });

  it('the endpoint file is trusted only when it is ours and only we can write it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'takt-endpoint-'));
    const file = join(dir, 'endpoint');
    const before = process.env.TAKT_DATA;
    process.env.TAKT_DATA = dir;
    try {
      expect(endpointFromDataDir()).toBeUndefined(); // none
      writeFileSync(file, 'http://127.0.0.1:9123\n', { mode: 0o600 });
      expect(endpointFromDataDir()).toBe('http://127.0.0.1:9123');
      chmodSync(file, 0o620);
      expect(endpointFromDataDir()).toBeUndefined(); // group-writable
      chmodSync(file, 0o600);
      writeFileSync(file, 'not a url\n');
      expect(endpointFromDataDir()).toBeUndefined();
    } finally {
      if (before === undefined) delete process.env.TAKT_DATA;
      else process.env.TAKT_DATA = before;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
