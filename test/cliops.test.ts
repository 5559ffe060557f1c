/**
 * Operator-CLI leftovers of issue #12, against a real endpoint and the real CLI: the admin token read from
 * a data dir is checked (file mode and owner) and only sent to the endpoint that proves it holds it.
 */
import { chmodSync, chownSync, copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles, runCli, TAKT, until } from './helpers/endpoint.js';

let ep: Endpoint;
beforeAll(async () => {
  ep = await Endpoint.start();
}, 60_000);
afterAll(async () => ep?.stop());

/** Only the data dir speaks: no --endpoint/--token and no TAKT_ENDPOINT/TAKT_TOKEN. */
const fromDataDir = (data: string, extra: Record<string, string> = {}) => ({ TAKT_DATA: data, TAKT_ENDPOINT: '', TAKT_TOKEN: '', ...extra });

/** A data dir of our own holding a copy of the endpoint's admin token (0600) and `endpoint` pointing at `url`. */
function dataDirFor(url: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'takt-cliops-'));
  copyFileSync(join(ep.data, 'admin.token'), join(dir, 'admin.token'));
  chmodSync(join(dir, 'admin.token'), 0o600);
  writeFileSync(join(dir, 'endpoint'), url + '\n', { mode: 0o600 });
  return dir;
}

describe('the admin token in a data dir', () => {
  it('is used when only its owner can read it, and refused (with the chmod to run) when group or others can', async () => {
    const dir = dataDirFor(ep.url);
    try {
      const ok = await runCli(['machines', 'list', '-o', 'json'], fromDataDir(dir));
      expect(ok.code, ok.stderr).toBe(0);
      for (const mode of [0o640, 0o604, 0o660]) {
        chmodSync(join(dir, 'admin.token'), mode);
        const r = await runCli(['machines', 'list'], fromDataDir(dir));
        expect(r.code).not.toBe(0);
        expect(r.stderr).toContain(`refusing to use the admin token in ${dir}/admin.token: it is mode 0${mode.toString(8)}`);
        expect(r.stderr).toContain(`run: chmod 600 ${dir}/admin.token`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.runIf(process.getuid?.() === 0)('is refused when another user owns it, saying the chown to run', async () => {
    const dir = dataDirFor(ep.url);
    try {
      chownSync(join(dir, 'admin.token'), 65534, 65534);
      const r = await runCli(['machines', 'list'], fromDataDir(dir));
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain(`it is owned by uid 65534, not by you (uid 0)`);
      expect(r.stderr).toContain(`run: sudo chown ${userInfo().username} ${dir}/admin.token`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('goes to the data dir\'s own endpoint when it proves it holds the token (endpoint file, no other settings)', async () => {
    const r = await runCli(['machines', 'list', '-o', 'json'], fromDataDir(ep.data));
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual([]);
  });

  describe('never goes to another server on the recorded port', () => {
    let fake: Server;
    let fakeUrl = '';
    const seen: { url: string; headers: IncomingHttpHeaders }[] = [];
    beforeAll(async () => {
      // What a stale endpoint file can point at: another program now on the port, answering like takt would.
      fake = createServer((req, res) => {
        seen.push({ url: req.url ?? '', headers: req.headers });
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(req.url?.startsWith('/api/v1/health') ? JSON.stringify({ status: 'ok', version: '0', proof: 'made-up' }) : '[]');
      });
      await new Promise<void>((resolve) => fake.listen(0, '127.0.0.1', resolve));
      fakeUrl = `http://127.0.0.1:${(fake.address() as AddressInfo).port}`;
    });
    afterAll(() => new Promise<void>((resolve) => fake.close(() => resolve())));

    it.each([
      { how: 'a stale endpoint file', env: (dir: string) => fromDataDir(dir) },
      { how: 'TAKT_ENDPOINT with the data dir\'s token', env: (dir: string) => fromDataDir(dir, { TAKT_ENDPOINT: fakeUrl }) },
    ])('$how: refused, and no request carries an Authorization header', async ({ env }) => {
      const dir = dataDirFor(fakeUrl);
      seen.length = 0;
      try {
        const r = await runCli(['machines', 'list'], env(dir));
        expect(r.code).not.toBe(0);
        expect(r.stderr).toContain(`refusing to send the admin token in ${dir}/admin.token to ${fakeUrl}: the server there did not prove it is the takt serve of ${dir}`);
        expect(seen.length).toBeGreaterThan(0); // it was asked, without the token
        expect(seen.filter((s) => s.headers.authorization !== undefined)).toEqual([]);
        expect(seen.every((s) => s.url.startsWith('/api/v1/health?challenge='))).toBe(true);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('a token given explicitly (TAKT_TOKEN) is the operator\'s choice and is sent as asked', async () => {
      seen.length = 0;
      const r = await runCli(['machines', 'list', '-o', 'json'], { TAKT_ENDPOINT: fakeUrl, TAKT_TOKEN: 'tka.explicit' });
      expect(r.code, r.stderr).toBe(0);
      expect(seen.map((s) => s.headers.authorization)).toEqual(['Bearer tka.explicit']);
    });
  });
});

describe('takt content remove NAME@VERSION', () => {
  type J = { id: string; task: string; state: string; pack: string | null };
  const versions = async () => (JSON.parse((await ep.cli(['content', 'versions', 'control', '-o', 'json'])).stdout) as Array<{ version: string }>).map((v) => v.version);

  it('refuses the version in use and one a machine runs a task from; --dry-run removes nothing; build records keep the version', async () => {
    const v1 = await packFiles('control');
    const v2 = { ...v1, 'pack.yaml': v1['pack.yaml']!.replace('1.0.0', '1.0.1') };
    await ep.api.post('/packs', { files: v1, use: true });
    expect((await ep.cli(['machines', 'create', 'cr1', '--broker', 'local', '--pipeline', 'control'])).code).toBe(0);
    // cr1 runs `hold` from control@1.0.0 until released
    const root = await until(async () => {
      const job = (await ep.api.get<{ items: J[] }>('/jobs', { machine: 'cr1', limit: 10 })).items.find((j) => j.task === 'hold' && j.state === 'running');
      if (!job) return null;
      const text = (await ep.api.get<{ chunks: Array<{ data: string }> }>(`/jobs/${job.id}/log`)).chunks.map((c) => c.data).join('');
      return /ROOT (\S+)/.exec(text)?.[1] ?? null;
    }, 60_000, 'cr1 to run hold');

    const inUse = await ep.cli(['content', 'remove', 'control@1.0.0']);
    expect(inUse.code).not.toBe(0);
    expect(inUse.stderr).toContain('cannot remove control@1.0.0: it is the version in use; put another in use first (`takt content use control@VERSION`)');

    await ep.api.post('/packs', { files: v2, use: true });
    const running = await ep.cli(['content', 'rm', 'control@1.0.0']);
    expect(running.code).not.toBe(0);
    expect(running.stderr).toContain('cannot remove control@1.0.0: machine cr1 is running a task from it');

    writeFileSync(join(root, 'release'), '');
    expect((await ep.cli(['machines', 'wait', 'cr1', '--until', 'done', '--timeout', '60s'])).code).toBe(0);

    const dry = await ep.cli(['content', 'remove', 'control@1.0.0', '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(/^would remove control@1\.0\.0 \(sha256 \w{12}\); nothing removed \(--dry-run\)\n$/);
    expect(await versions()).toEqual(['1.0.0', '1.0.1']);

    const r = await ep.cli(['content', 'remove', 'control@1.0.0', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ name: 'control', version: '1.0.0', removed: true, dryRun: false });
    expect(await versions()).toEqual(['1.0.1']);
    // the change is in history; the machine's build record still names the version it was built from
    const last = (await ep.api.get<{ items: Array<{ object: string; action: string }> }>('/changes', { limit: 1 })).items[0];
    expect(last).toMatchObject({ object: 'packversions/control@1.0.0', action: 'delete' });
    const record = JSON.stringify(JSON.parse((await ep.cli(['machines', 'record', 'cr1', '-o', 'json'])).stdout));
    expect(record).toContain('control@1.0.0');

    const again = await ep.cli(['content', 'remove', 'control@1.0.0']);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toContain('control@1.0.0 is not installed (installed: 1.0.1)');
  });
});

describe('takt run, interrupted', () => {
  type W = { id: string; state: string; reason: string | null; command?: string | null };
  const workOrders = async (machine: string) => (await ep.api.get<{ items: W[] }>('/workorders', { machine, limit: 100 })).items.filter((w) => w.command);

  /** `takt run --machine M -- true` as a child process; resolves its exit once it ends. */
  function start(machine: string) {
    const p = spawn(process.execPath, [TAKT, 'run', '--machine', machine, '--', 'true'], {
      env: { ...process.env, NO_COLOR: '1', TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => p.on('close', (code, signal) => resolve({ code, signal })));
    return { p, exited, out: () => ({ stdout, stderr }) };
  }

  it('Ctrl-C cancels the work orders not started, says so and exits 130; none is left queued', async () => {
    // No agent: its work order stays queued until someone cancels it.
    expect((await ep.cli(['machines', 'create', 'int-1'])).code).toBe(0);
    const run = start('int-1');
    // The CLI waits once the work order exists and it has said where it queued.
    await until(async () => ((await workOrders('int-1')).length === 1 && run.out().stderr.includes('queued on 1 machine(s)') ? true : null), 60_000, 'the work order');
    run.p.kill('SIGINT');
    const { code } = await run.exited;
    const { stdout, stderr } = run.out();
    expect(code, stderr).toBe(130);
    expect(stderr).toContain('takt run: interrupted: cancelling the work orders not started yet (Ctrl-C again to exit at once');
    const [wo] = await workOrders('int-1');
    expect(wo).toMatchObject({ state: 'cancelled' });
    expect(stderr).toContain(`takt run: cancelled 1 work order(s) not started: int-1 (${wo!.id})`);
    expect(stdout).toContain('int-1 | NOT STARTED | not-started >>\nnot started when interrupted (Ctrl-C): cancelled, it will not run later');
  });

  it('a second Ctrl-C exits at once', async () => {
    expect((await ep.cli(['machines', 'create', 'int-2'])).code).toBe(0);
    const run = start('int-2');
    await until(async () => ((await workOrders('int-2')).length === 1 && run.out().stderr.includes('queued on 1 machine(s)') ? true : null), 60_000, 'the work order');
    run.p.kill('SIGINT');
    await until(async () => (run.out().stderr.includes('interrupted: cancelling') ? true : null), 30_000, 'the first interrupt to be heard');
    run.p.kill('SIGINT');
    const { code } = await run.exited;
    expect(code).toBe(130);
    // The exit may beat the cancel the first Ctrl-C started: then the work order is still queued (and listed).
    expect(['cancelled', 'queued']).toContain((await workOrders('int-2'))[0]!.state);
  }, 120_000);
});
