/**
 * Issue 10, part 3: a task script cannot reach the endpoint's secrets or other machines. A real endpoint
 * (root, as in CI) with real local agents: one machine's script tries to read the admin token, the key,
 * the database, another machine's token and files, its own agent's token and environment, and to write
 * into the data dir — all denied — while what a script needs (its root, HOME, TMPDIR, work dir, params)
 * still works.
 */
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, Machine } from '../src/model/machine.js';
import { Endpoint, packFiles, TAKT, until } from './helpers/endpoint.js';

const isRoot = process.getuid?.() === 0;
const mode = (path: string) => (lstatSync(path).mode & 0o7777).toString(8).padStart(4, '0');

let ep: Endpoint;

function netnsUnavailable(): string | null {
  if (!isRoot) return 'not root';
  try {
    execFileSync('ip', ['netns', 'add', 'takt-probe-sandbox'], { stdio: 'pipe' });
    execFileSync('ip', ['netns', 'del', 'takt-probe-sandbox'], { stdio: 'pipe' });
    return null;
  } catch (err) {
    return `cannot create a network namespace: ${(err as Error).message}`;
  }
}

async function runOn(name: string, pipeline: string, params: string[] = [], broker = 'local'): Promise<{ machine: Machine; log: string }> {
  const r = await ep.cli(['machines', 'create', name, '--broker', broker, '--pipeline', pipeline, ...params.flatMap((p) => ['--param', p])]);
  expect(r.code, r.stderr).toBe(0);
  await ep.cli(['machines', 'wait', name, '--timeout', '60s']);
  const machine = await ep.api.get<Machine>(`/machines/${name}`);
  const jobs = await ep.api.get<{ items: Job[] }>('/jobs', { machine: machine.id });
  const job = jobs.items[0]!;
  const log = await ep.api.get<{ chunks: Array<{ data: string }> }>(`/jobs/${job.id}/log`);
  return { machine, log: log.chunks.map((c) => c.data).join('') };
}

describe.skipIf(!isRoot)('local machines of a root endpoint are sandboxed', () => {
  let other: Machine;
  let probe: { machine: Machine; log: string };

  beforeAll(async () => {
    ep = await Endpoint.start();
    await ep.api.post('/packs', { files: await packFiles('sandbox') });
    other = (await runOn('keeper', 'keep-secret')).machine;
    expect(other.state).toBe('done');
    probe = await runOn('prober', 'probe', [`other=${other.id}`]);
  }, 120_000);
  afterAll(async () => ep?.stop());

  it('runs scripts as a user of their own, one per machine, from the sandbox range', () => {
    expect(probe.machine.state, probe.machine.reason ?? '').toBe('done');
    const [uid, gid] = String(probe.machine.outputs.uid).split(':').map(Number);
    const otherUid = Number(other.outputs.uid);
    expect(uid).toBeGreaterThanOrEqual(1_600_000_000);
    expect(gid).toBe(uid);
    expect(otherUid).toBeGreaterThanOrEqual(1_600_000_000);
    expect(otherUid).not.toBe(uid);
    const record = JSON.parse(readFileSync(join(ep.data, 'sandbox-uids.json'), 'utf8')) as { machines: Record<string, number> };
    expect(record.machines).toEqual({ [other.id]: otherUid, [probe.machine.id]: uid });
  });

  it.each([
    'read-admin-token',
    'read-secret-key',
    'read-database',
    'read-database-wal',
    'list-data-dir',
    'read-uid-record',
    'read-other-token',
    'list-other-machine',
    'read-other-file',
    'read-own-token',
    'read-own-token-old-place',
    'list-own-private',
    'read-own-state',
    'read-agent-log',
    'read-agent-environ',
    'signal-agent',
    'write-data-dir',
    'write-machines-dir',
    'write-own-machine-dir',
    'write-jobs-dir',
    'replace-helper',
    'hardlink-admin-token',
  ])('denies %s', (name) => {
    expect(probe.log).toContain(`PROBE ${name}: denied`);
  });

  it.each(['write-own-root', 'write-home', 'write-tmpdir', 'write-work-dir', 'read-own-param'])('still allows %s', (name) => {
    expect(probe.log).toContain(`PROBE ${name}: ALLOWED`);
  });

  it('leaves no token in any environment the script can read, and gives it a clean one', () => {
    expect(probe.log).toContain('PROBE environs-with-a-token: 0');
    const keys = /PROBE env-keys: (.*)/.exec(probe.log)![1]!.trim().split(' ');
    expect(keys).toContain('HOME');
    expect(keys).toContain('TAKT_ROOT');
    // Nothing of the endpoint's environment beyond PATH and locale (vitest sets e.g. VITEST, NODE_ENV).
    expect(keys.filter((k) => !/^(PATH|LANG|LANGUAGE|TZ|LC_\w+|HOME|USER|LOGNAME|SHELL|TMPDIR|PWD|SHLVL|OLDPWD|_|TAKT_\w+)$/.test(k))).toEqual([]);
    expect(probe.log).not.toContain('tkm.');
    expect(probe.log).not.toContain(ep.token);
  });

  it('nothing was written where the probe tried', () => {
    expect(existsSync(join(ep.data, 'pwned'))).toBe(false);
    expect(existsSync(join(ep.data, 'machines', 'pwned'))).toBe(false);
    expect(existsSync(join(ep.data, 'machines', probe.machine.id, 'pwned'))).toBe(false);
    expect(existsSync(join(ep.data, 'machines', probe.machine.id, 'jobs', 'pwned'))).toBe(false);
    expect(readFileSync(join(ep.data, 'machines', probe.machine.id, 'bin', 'takt-set'), 'utf8')).toContain('takt-set KEY');
  });

  it('lays the machine out as documented', () => {
    const dir = join(ep.data, 'machines', probe.machine.id);
    const uid = Number(String(probe.machine.outputs.uid).split(':')[0]);
    expect([mode(ep.data), mode(join(ep.data, 'machines')), mode(dir)]).toEqual(['0711', '0711', '0750']);
    expect(lstatSync(dir).gid).toBe(uid);
    expect([mode(join(dir, 'private')), mode(join(dir, 'private', 'agent.token')), mode(join(dir, 'agent.log'))]).toEqual(['0700', '0600', '0600']);
    expect(lstatSync(join(dir, 'private', 'agent.token')).uid).toBe(0);
    for (const d of ['root', 'home', 'tmp']) expect([d, lstatSync(join(dir, d)).uid, mode(join(dir, d))]).toEqual([d, uid, '0700']);
    expect([lstatSync(join(dir, 'jobs')).uid, mode(join(dir, 'jobs'))]).toEqual([0, '0750']);
    for (const f of ['admin.token', 'secret.key', 'takt.db']) expect([f, mode(join(ep.data, f))]).toEqual([f, '0600']);
  });

  it.skipIf(netnsUnavailable() !== null)('a netns machine is sandboxed the same way', async () => {
    const { machine, log } = await runOn('netns-prober', 'probe', [`other=${other.id}`], 'netns');
    expect(machine.state, machine.reason ?? '').toBe('done');
    const uid = Number(String(machine.outputs.uid).split(':')[0]);
    expect(uid).toBeGreaterThanOrEqual(1_600_000_000);
    expect(uid).not.toBe(Number(other.outputs.uid));
    for (const name of ['read-admin-token', 'read-secret-key', 'read-other-token', 'read-other-file', 'read-own-token', 'read-agent-environ', 'write-data-dir']) {
      expect(log).toContain(`PROBE ${name}: denied`);
    }
    expect(log).toContain('PROBE write-own-root: ALLOWED');
    expect(log).toContain('PROBE environs-with-a-token: 0');
    // Its agent reached the endpoint as a remote agent does: over TLS on the bridge, trusting the endpoint's CA.
    const agentLog = readFileSync(join(ep.data, 'machines', machine.id, 'agent.log'), 'utf8');
    expect(agentLog).toMatch(/"endpoint":"https:\/\/10\.2\d\d\.\d+\.1:\d+"/);
    expect((await ep.cli(['machines', 'delete', 'netns-prober'])).code).toBe(0);
  });

  it('does not read an output through a link the script planted (its own token)', async () => {
    const { machine, log } = await runOn('exfil', 'exfil');
    expect(machine.state).toBe('stopped');
    expect(machine.params.leak).toBeUndefined();
    expect(log).toContain('output leak: a symbolic link, not read');
    const jobs = await ep.api.get<{ items: Job[] }>('/jobs', { machine: machine.id });
    expect(JSON.stringify(jobs)).not.toContain('tkm.');
  });

  it('keeps a machine its uid across an endpoint restart, and frees it (and its processes) on delete', async () => {
    const before = JSON.parse(readFileSync(join(ep.data, 'sandbox-uids.json'), 'utf8')) as { machines: Record<string, number> };
    await ep.crash();
    await ep.boot();
    const after = JSON.parse(readFileSync(join(ep.data, 'sandbox-uids.json'), 'utf8')) as { machines: Record<string, number> };
    expect(after.machines).toEqual(before.machines);
    const uid = before.machines[other.id]!;
    expect(readlinkOrNull(`/var/lib/takt/sandbox-uids/${uid}`)).toBe(join(ep.data, 'machines', other.id));
    expect(processesOf(uid).length).toBeGreaterThan(0); // the service it detached outlived its job
    expect((await ep.cli(['machines', 'delete', 'keeper'])).code).toBe(0);
    const freed = JSON.parse(readFileSync(join(ep.data, 'sandbox-uids.json'), 'utf8')) as { machines: Record<string, number> };
    expect(freed.machines[other.id]).toBeUndefined();
    expect(readlinkOrNull(`/var/lib/takt/sandbox-uids/${uid}`)).toBeNull();
    // SIGKILL is delivered at once but a busy kernel takes a moment to end the process.
    await until(async () => processesOf(uid).length === 0 || null, 30_000, `the processes of uid ${uid} to end`);
  });
});

describe.skipIf(!isRoot)('local machines of an endpoint that is not root', () => {
  it('are created with a plain warning (API, CLI and server log) that they are not isolated from it', async () => {
    const e = await Endpoint.start({ uid: 65534 });
    try {
      const r = await e.cli(['machines', 'create', 'plain', '--broker', 'local']);
      expect(r.code, r.stderr).toBe(0);
      const notice = 'local machines are not isolated from the endpoint: it runs as uid 65534, not root, so their scripts run as that user';
      expect(r.stderr).toContain(`warning: ${notice}`);
      const api = await e.api.post<{ warnings?: string[] }>('/machines', { name: 'plain-2', broker: 'local' });
      expect(api.warnings?.[0]).toContain(notice);
      expect(e.output).toContain(notice);
      expect(mode(e.data)).toBe('0700');
      expect(existsSync(join(e.data, 'sandbox-uids.json'))).toBe(false);
    } finally {
      await e.stop();
    }
  });
});

function readlinkOrNull(path: string): string | null {
  try {
    return readlinkSync(path);
  } catch {
    return null;
  }
}

function processesOf(uid: number): number[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .filter((pid) => {
      try {
        const status = readFileSync(`/proc/${pid}/status`, 'utf8');
        return Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]) === uid && !/^State:\s+Z/m.test(status); // zombies hold nothing
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** `takt serve` on `data` until it exits or has started (then it is stopped): its exit code and output. */
function serveOnce(data: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [TAKT, 'serve', '--listen', '127.0.0.1:0', '--data', data], { env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const onData = (d: Buffer) => {
      output += d.toString();
      if (output.includes('listening on')) p.kill('SIGTERM');
    };
    p.stdout.on('data', onData);
    p.stderr.on('data', onData);
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, output }));
  });
}

describe('the data dir', () => {
  it('a world-writable data dir is refused, saying how to fix it, and left as it was', async () => {
    const data = mkdtempSync(join(tmpdir(), 'takt-test-'));
    try {
      chmodSync(data, 0o777);
      const r = await serveOnce(data);
      expect(r.code).not.toBe(0);
      expect(r.output).toContain(`refusing to use data dir ${data}: ${data} is mode 0777, writable by every user`);
      expect(r.output).toContain(`chmod go-w ${data}`);
      expect(readdirSync(data)).toEqual([]);
    } finally {
      rmSync(data, { recursive: true, force: true });
    }
  });

  it('a group-writable data dir is refused too', async () => {
    const data = mkdtempSync(join(tmpdir(), 'takt-test-'));
    try {
      chmodSync(data, 0o770);
      const r = await serveOnce(data);
      expect(r.code).not.toBe(0);
      expect(r.output).toContain('is mode 0770, writable by its group');
    } finally {
      rmSync(data, { recursive: true, force: true });
    }
  });

  it.skipIf(!isRoot)('a data dir, or a file in it, owned by another user is refused', async () => {
    const data = mkdtempSync(join(tmpdir(), 'takt-test-'));
    try {
      chownSync(data, 65534, 65534);
      let r = await serveOnce(data);
      expect(r.code).not.toBe(0);
      expect(r.output).toContain(`${data} is owned by uid 65534`);
      chownSync(data, 0, 0);
      writeFileSync(join(data, 'takt.db'), '');
      chownSync(join(data, 'takt.db'), 65534, 65534);
      r = await serveOnce(data);
      expect(r.code).not.toBe(0);
      expect(r.output).toContain(`${join(data, 'takt.db')} is owned by uid 65534`);
    } finally {
      rmSync(data, { recursive: true, force: true });
    }
  });

  it('modes that were opened up are put back at start: database, WAL, tokens, key, logs', async () => {
    const e = await Endpoint.start();
    try {
      await e.api.post('/packs', { files: await packFiles('sandbox') });
      expect((await e.cli(['machines', 'create', 'm', '--broker', 'local'])).code).toBe(0);
      const m = await e.api.get<Machine>('/machines/m');
      await e.crash();
      const files = readdirSync(e.data).filter((f) => /^(admin\.token|secret\.key|takt\.db.*|endpoint|sandbox-uids\.json)$/.test(f));
      expect(files).toEqual(expect.arrayContaining(['admin.token', 'secret.key', 'takt.db', 'takt.db-wal', 'takt.db-shm']));
      for (const f of files) chmodSync(join(e.data, f), 0o644);
      chmodSync(e.data, 0o755);
      const dir = join(e.data, 'machines', m.id);
      chmodSync(join(dir, 'private'), 0o755);
      chmodSync(join(dir, 'private', 'agent.token'), 0o644);
      chmodSync(join(dir, 'agent.log'), 0o644);
      await e.boot();
      for (const f of files) expect([f, mode(join(e.data, f))]).toEqual([f, '0600']);
      expect(mode(e.data)).toBe(isRoot ? '0711' : '0700');
      expect([mode(join(dir, 'private')), mode(join(dir, 'private', 'agent.token')), mode(join(dir, 'agent.log'))]).toEqual(['0700', '0600', '0600']);
      expect(e.output).toMatch(/admin\.token was mode 0644; set to 0600/);
    } finally {
      await e.stop();
    }
  });
});
