/**
 * Exactly-once results: the agent's state files, and runAgent against a scripted stand-in endpoint
 * (restart recovery, delivery through failures, heartbeat give-up, actions, stop).
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runAgent } from '../src/agent/agent.js';
import { AgentState, interruptedReport, RESTARTED_ERROR, type PendingReport } from '../src/agent/state.js';
import type { ClaimedJob, ClaimResponse, CompleteRequest } from '../src/model/protocol.js';

let home: string;

beforeEach(async () => {
  home = await mkdtemp(join(tmpdir(), 'takt-agent-state-'));
});
afterEach(async () => {
  await rm(home, { recursive: true, force: true });
});

const report = (exitCode: number | null, outputs: Record<string, string> = {}): CompleteRequest => ({ exitCode, outputs });

describe('AgentState', () => {
  it('writes pending.json atomically (tmp + rename), private to the agent, and reads it back', async () => {
    const state = new AgentState(join(home, 'state'));
    await state.init();
    const p: PendingReport = { jobId: 'j-1', report: report(0, { ip: '10.0.0.5' }), endedAt: '2025-01-01T00:00:00.000Z' };
    await state.writePending(p);
    expect(await state.readPending()).toEqual(p);
    expect(await readdir(state.dir)).toEqual(['pending.json']); // no temporary left behind
    expect((await stat(state.pendingFile)).mode & 0o777).toBe(0o600);
    await state.writePending({ ...p, report: report(1) });
    expect((await state.readPending())?.report.exitCode).toBe(1);
    await state.clearPending();
    expect(await state.readPending()).toBeNull();
  });

  it('ignores and cleans up a half-written temporary from a crash', async () => {
    const dir = join(home, 'state');
    const state = new AgentState(dir);
    await state.init();
    const p: PendingReport = { jobId: 'j-1', report: report(0), endedAt: 'now' };
    await state.writePending(p);
    await writeFile(join(dir, 'pending.json.4242.tmp'), '{"jobId":"j-2","rep'); // the crash happened mid-write
    expect(await state.readPending()).toEqual(p);
    await new AgentState(dir).init();
    expect(await readdir(dir)).toEqual(['pending.json']);
  });

  it('moves an unreadable state file aside instead of failing', async () => {
    const logs: string[] = [];
    const state = new AgentState(join(home, 'state'), (_l, msg) => logs.push(msg));
    await state.init();
    await writeFile(state.pendingFile, 'not json');
    expect(await state.readPending()).toBeNull();
    expect(existsSync(state.pendingFile)).toBe(false);
    expect((await readdir(state.dir)).some((n) => n.startsWith('pending.json.corrupt-'))).toBe(true);
    expect(logs).toContain('state file unreadable; moved aside');
  });

  it('recover: current.json means the job was interrupted; a report already saved for it wins', async () => {
    const state = new AgentState(join(home, 'state'));
    await state.init();
    expect(await state.recover()).toEqual({ pending: null, interrupted: null });

    await state.writeCurrent({ jobId: 'j-1', task: 'install', startedAt: 'then' });
    const r = await state.recover();
    expect(r.interrupted?.jobId).toBe('j-1');
    expect(interruptedReport(r.interrupted!).report).toEqual({ exitCode: null, outputs: {}, error: RESTARTED_ERROR });

    // Died between writing pending.json and deleting current.json: the saved result is the truth.
    const p: PendingReport = { jobId: 'j-1', report: report(0), endedAt: 'now' };
    await state.writePending(p);
    expect(await state.recover()).toEqual({ pending: p, interrupted: null });
    expect(existsSync(state.currentFile)).toBe(false);
  });
});

// ---- runAgent against a stand-in endpoint --------------------------------------------------------------

interface Seen {
  method: string;
  path: string;
  query: URLSearchParams;
  body: unknown;
  auth: string | undefined;
}
type Answer = { status: number; body?: unknown };
type Handler = (req: Seen) => Answer | Promise<Answer>;

interface Fake {
  url: string;
  seen: Seen[];
  close(): Promise<void>;
}

const servers: Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

async function fakeEndpoint(handler: Handler): Promise<Fake> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8').on('data', (d: string) => (text += d));
    req.on('end', () => {
      void (async () => {
        const url = new URL(req.url ?? '/', 'http://x');
        const s: Seen = { method: req.method ?? '', path: url.pathname, query: url.searchParams, body: text ? JSON.parse(text) : undefined, auth: req.headers.authorization };
        seen.push(s);
        const a = await handler(s);
        res.writeHead(a.status, { 'content-type': 'application/json' }).end(a.body === undefined ? '' : JSON.stringify(a.body));
      })();
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, seen, close: () => new Promise((r) => server.close(() => r())) };
}

const TOKEN = 'tkm.m-1.s3cretS3cretS3cret';
const machine = (power: 'on' | 'off' = 'on'): ClaimResponse['machine'] => ({ state: 'running', reason: null, power });
const job = (id: string, script: string, extra: Partial<ClaimedJob> = {}): ClaimedJob => ({ id, task: 'demo', script, params: {}, timeoutMs: 10_000, leaseMs: 30_000, ...extra });
const completes = (f: Fake) => f.seen.filter((s) => s.path.endsWith('/complete'));
const agentOpts = (url: string, logs: string[] = []) => ({
  endpoint: url,
  token: TOKEN,
  dir: home,
  root: join(home, 'root'),
  claimWaitSeconds: 0,
  log: (level: string, msg: string) => logs.push(`${level}: ${msg}`),
});

describe('runAgent', () => {
  it('refuses a token that is not a machine token', async () => {
    await expect(runAgent({ endpoint: 'http://127.0.0.1:1', token: 'nope', dir: home })).rejects.toThrow(/not a machine token/);
  });

  it('runs a claimed job: logs in order, outputs reported, reboot action exits 64', async () => {
    let claims = 0;
    const fake = await fakeEndpoint((r) => {
      if (r.path === '/api/v1/machines/m-1/claim') {
        claims++;
        return { status: 200, body: { job: job('j-1', 'echo "hello $(takt-get who)"\necho warn >&2\ntakt-set ip 10.0.0.5\nexit 64\n', { params: { who: 'world' } }), machine: machine() } };
      }
      if (r.path === '/api/v1/jobs/j-1/log') return { status: 204 };
      if (r.path === '/api/v1/jobs/j-1/complete') return { status: 200, body: { job: { id: 'j-1', state: 'succeeded' }, action: 'reboot' } };
      return { status: 404, body: { error: { code: 'not_found', message: 'no' } } };
    });
    const code = await runAgent(agentOpts(fake.url));
    expect(code).toBe(64);
    expect(claims).toBe(1);
    const claim = fake.seen[0]!;
    expect(claim.auth).toBe(`Bearer ${TOKEN}`);
    expect(claim.query.get('wait')).toBe('0');
    // The log arrives in order, before or with the report: posted chunks first, the rest in the report.
    type Chunk = { seq: number; stream: string; data: string };
    const reports = completes(fake).map((s) => s.body as { log?: Chunk[] });
    const logs = [...fake.seen.filter((s) => s.path.endsWith('/log')).map((s) => s.body as Chunk), ...(reports[0]?.log ?? [])];
    expect(logs.map((l) => l.seq)).toEqual(logs.map((_, i) => i + 1));
    expect(logs.filter((l) => l.stream === 'stdout').map((l) => l.data).join('')).toBe('hello world\n');
    expect(logs.filter((l) => l.stream === 'stderr').map((l) => l.data).join('')).toBe('warn\n');
    expect(fake.seen.findIndex((s) => s.path.endsWith('/complete'))).toBeGreaterThan(fake.seen.findLastIndex((s) => s.path.endsWith('/log')));
    expect(reports.map(({ log: _log, ...r }) => r)).toEqual([{ exitCode: 64, outputs: { ip: '10.0.0.5' }, claim: true }]);
    expect(await readdir(join(home, 'state'))).toEqual([]);
  });

  it('at start, delivers a saved report, then reports an interrupted job (killing its leftovers) before claiming', async () => {
    const state = new AgentState(join(home, 'state'));
    await state.init();
    await state.writePending({ jobId: 'j-old', report: report(0, { a: '1' }), endedAt: 'then' });
    await state.writeCurrent({ jobId: 'j-mid', startedAt: 'then' });
    // A script of the interrupted job that outlived its agent.
    const orphan = spawn('sleep', ['100'], { detached: true, stdio: 'ignore', env: { ...process.env, TAKT_JOB_ID: 'j-mid' } });
    const orphanExit = new Promise((r) => orphan.once('exit', r));

    let failFirst = 2;
    const fake = await fakeEndpoint((r) => {
      if (r.path.endsWith('/complete')) {
        if (r.path.includes('j-old') && failFirst-- > 0) return { status: 503, body: { error: { code: 'unavailable', message: 'restarting' } } };
        return { status: 200, body: { job: { id: 'x', state: 'failed' }, action: 'continue' } };
      }
      return { status: 200, body: { job: null, machine: machine('off') } };
    });
    const code = await runAgent(agentOpts(fake.url));
    expect(code).toBe(32);
    expect(fake.seen.map((s) => s.path)).toEqual([
      '/api/v1/jobs/j-old/complete', '/api/v1/jobs/j-old/complete', '/api/v1/jobs/j-old/complete',
      '/api/v1/jobs/j-mid/complete',
      '/api/v1/machines/m-1/claim',
    ]);
    expect(completes(fake)[0]!.body).toEqual({ exitCode: 0, outputs: { a: '1' } });
    expect(completes(fake)[3]!.body).toEqual({ exitCode: null, outputs: {}, error: RESTARTED_ERROR });
    await orphanExit;
    expect(orphan.signalCode).toBe('SIGKILL');
    expect(await readdir(state.dir)).toEqual([]);
  });

  it('drops a report the endpoint has already settled (409) and carries on', async () => {
    const state = new AgentState(join(home, 'state'));
    await state.init();
    await state.writePending({ jobId: 'j-old', report: report(1), endedAt: 'then' });
    const logs: string[] = [];
    const fake = await fakeEndpoint((r) =>
      r.path.endsWith('/complete')
        ? { status: 409, body: { error: { code: 'conflict', message: 'job j-old already ended as failed' } } }
        : { status: 200, body: { job: null, machine: machine('off') } },
    );
    expect(await runAgent(agentOpts(fake.url, logs))).toBe(32);
    expect(logs).toContain('warn: the endpoint did not take the job report; dropping it');
    expect(existsSync(state.pendingFile)).toBe(false);
  });

  it('kills the job and reports nothing when the heartbeat says it is no longer running', async () => {
    let claims = 0;
    const fake = await fakeEndpoint((r) => {
      if (r.path.endsWith('/claim')) {
        claims++;
        return claims === 1
          ? { status: 200, body: { job: job('j-1', 'sleep 100 &\necho $! > child.pid\nsleep 100\n', { leaseMs: 300 }), machine: machine() } }
          : { status: 200, body: { job: null, machine: machine('off') } };
      }
      // Cancelled once the script has started its child (so the test can see that the child dies too).
      if (r.path.endsWith('/heartbeat')) return { status: 200, body: { running: !existsSync(join(home, 'jobs', 'j-1', 'child.pid')) } };
      return { status: 204 };
    });
    const started = Date.now();
    expect(await runAgent(agentOpts(fake.url))).toBe(32);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(completes(fake)).toEqual([]);
    const child = Number(await readFile(join(home, 'jobs', 'j-1', 'child.pid'), 'utf8'));
    expect(isRunning(child)).toBe(false);
    expect(await readdir(join(home, 'state'))).toEqual([]);
  });

  it('reports a timeout with exit code null', async () => {
    let claims = 0;
    const fake = await fakeEndpoint((r) => {
      if (r.path.endsWith('/claim')) {
        claims++;
        return claims === 1
          ? { status: 200, body: { job: job('j-1', 'sleep 100', { timeoutMs: 200 }), machine: machine() } }
          : { status: 200, body: { job: null, machine: machine('off') } };
      }
      if (r.path.endsWith('/complete')) return { status: 200, body: { job: { id: 'j-1', state: 'failed' }, action: 'continue' } };
      return { status: 204 };
    });
    expect(await runAgent(agentOpts(fake.url))).toBe(32);
    const reports = completes(fake).map((s) => s.body as { log?: { data: string }[] });
    expect(reports.map(({ log: _log, ...r }) => r)).toEqual([{ exitCode: null, outputs: {}, timedOut: true, claim: true }]);
    // The agent's note may go out as a log chunk or in the completion's tail, as the batcher's timer falls.
    const chunks = fake.seen.filter((s) => s.path.endsWith('/log')).map((s) => (s.body as { data: string }).data);
    expect([...chunks, ...(reports[0]!.log ?? []).map((c) => c.data)].join('')).toMatch(/timed out after 200 ms/);
  });

  it('logs a rejected token clearly and keeps trying; stops with 0 when aborted', async () => {
    const logs: string[] = [];
    const fake = await fakeEndpoint(() => ({ status: 401, body: { error: { code: 'unauthorized', message: 'invalid machine token' } } }));
    const ac = new AbortController();
    const running = runAgent(agentOpts(fake.url, logs), ac.signal);
    for (let i = 0; i < 100 && !logs.some((l) => l.startsWith('error: token rejected')); i++) await new Promise((r) => setTimeout(r, 20));
    expect(logs).toContain('error: token rejected: invalid machine token');
    ac.abort();
    expect(await running).toBe(0);
  });

  it('on stop, kills the running job and leaves it for the next start to report', async () => {
    const fake = await fakeEndpoint((r) =>
      r.path.endsWith('/claim') ? { status: 200, body: { job: job('j-1', 'echo started\nsleep 100\n'), machine: machine() } } : { status: 204 },
    );
    const ac = new AbortController();
    const running = runAgent(agentOpts(fake.url), ac.signal);
    for (let i = 0; i < 200 && !fake.seen.some((s) => s.path.endsWith('/log')); i++) await new Promise((r) => setTimeout(r, 20));
    ac.abort();
    expect(await running).toBe(0);
    expect(completes(fake)).toEqual([]);
    const current = JSON.parse(await readFile(join(home, 'state', 'current.json'), 'utf8')) as { jobId: string };
    expect(current.jobId).toBe('j-1');
  });

  it('waits out an unreachable endpoint, then claims', async () => {
    // Nothing listens on the port at first; the endpoint comes up a moment later on the same port.
    const probe = await fakeEndpoint(() => ({ status: 200 }));
    const url = probe.url;
    await probe.close();
    servers.length = 0;
    const logs: string[] = [];
    const ac = new AbortController();
    const running = runAgent(agentOpts(url, logs), ac.signal);
    for (let i = 0; i < 500 && !logs.includes('warn: cannot claim jobs; retrying'); i++) await new Promise((r) => setTimeout(r, 20));
    expect(logs).toContain('warn: cannot claim jobs; retrying');
    const port = Number(new URL(url).port);
    const server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ job: null, machine: machine('off') })));
    servers.push(server);
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
    expect(await running).toBe(32);
    expect(logs).toContain('info: endpoint reachable again');
  });
});

/** Running and not a zombie (nobody may reap orphans in a container). */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}
