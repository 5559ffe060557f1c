/**
 * Issue 12: one `takt serve` per data dir (a second is refused with the PID that holds it; a dead one's
 * lock is taken over), and the CLI finds a non-default port through the `endpoint` file serve writes.
 */
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
