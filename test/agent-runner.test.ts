/**
 * The agent's runner and log batcher, with real bash and real processes but no endpoint.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NetworkError } from '../src/client/http.js';
import { TaktError } from '../src/model/errors.js';
import type { LogRequest } from '../src/model/protocol.js';
import { installHelpers } from '../src/agent/helpers.js';
import { pruneJobDirs } from '../src/agent/jobdirs.js';
import { LogBatcher } from '../src/agent/logs.js';
import { jobPaths } from '../src/agent/paths.js';
import { runScript, type ChunkStream, type RunResult, type RunSetup } from '../src/agent/runner.js';

let home: string;
let binDir: string;

beforeEach(async () => {
  home = await mkdtemp(join(tmpdir(), 'takt-agent-runner-'));
  binDir = join(home, 'bin');
  await installHelpers(binDir);
});
afterEach(async () => {
  await rm(home, { recursive: true, force: true });
});

interface Run extends RunResult {
  chunks: { stream: ChunkStream; data: string }[];
  out: string;
  err: string;
  system: string;
  workDir: string;
}

const TOKEN = 'tkm.m-1.s3cretS3cretS3cret';

async function run(
  script: string,
  opts: { id?: string; params?: Record<string, unknown>; outputs?: string[]; timeoutMs?: number; signal?: AbortSignal; setup?: Partial<RunSetup> } = {},
): Promise<Run> {
  const id = opts.id ?? 'j-1';
  const paths = jobPaths(join(home, 'jobs'), id);
  const chunks: Run['chunks'] = [];
  const setup: RunSetup = { paths, binDir, machineId: 'm-1', root: join(home, 'root'), token: TOKEN, killGraceMs: 300, ...opts.setup };
  const r = await runScript({ id, script, params: opts.params ?? {}, outputs: opts.outputs, timeoutMs: opts.timeoutMs ?? 20_000 }, setup, (stream, data) => chunks.push({ stream, data }), opts.signal);
  const of = (s: ChunkStream) => chunks.filter((c) => c.stream === s).map((c) => c.data).join('');
  return { ...r, chunks, out: of('stdout'), err: of('stderr'), system: of('system'), workDir: paths.workDir };
}

/** True while the process exists and is not a zombie (nobody may reap orphans in a container). */
async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function readPid(file: string): Promise<number> {
  for (let i = 0; i < 100 && !existsSync(file); i++) await new Promise((r) => setTimeout(r, 10));
  return Number((await readFile(file, 'utf8')).trim());
}

describe('runScript', () => {
  it.each([0, 1, 16, 128 + 64])('passes exit code %i through', async (code) => {
    const r = await run(`exit ${code}`);
    expect(r).toMatchObject({ exitCode: code, timedOut: false, aborted: false, outputs: {} });
    expect(r.error).toBeUndefined();
  });

  it('runs with bash -e: the first failing command ends the script', async () => {
    const r = await run('echo before\nfalse\necho after\n');
    expect(r.exitCode).toBe(1);
    expect(r.out).toBe('before\n');
  });

  it('streams stdout and stderr separately, each in order', async () => {
    const r = await run('for i in 1 2 3; do echo out$i; echo err$i >&2; done');
    expect(r.out).toBe('out1\nout2\nout3\n');
    expect(r.err).toBe('err1\nerr2\nerr3\n');
  });

  it('delivers large output completely', async () => {
    const r = await run('head -c 300000 /dev/zero | tr "\\0" x; echo; echo done >&2');
    expect(r.out.length).toBe(300_001);
    expect(r.err).toBe('done\n');
  });

  it('gives the script its environment: TAKT_* vars, helpers on PATH, cwd = work dir', async () => {
    const r = await run('echo "$TAKT_JOB_ID|$TAKT_MACHINE_ID|$TAKT_ROOT|$TAKT_WORK_DIR|$PWD|${PATH%%:*}|$TAKT_PARAMS_DIR|$TAKT_OUTPUTS_DIR|$(command -v takt-get)"', { id: 'j-env' });
    const workDir = join(home, 'jobs', 'j-env');
    expect(r.out.trim().split('|')).toEqual([
      'j-env', 'm-1', join(home, 'root'), workDir, workDir, binDir, join(workDir, '.takt', 'params'), join(workDir, '.takt', 'outputs'), join(binDir, 'takt-get'),
    ]);
    // What the job was given in the clear (its script, params, outputs) does not outlive it.
    expect(existsSync(join(workDir, 'task.sh'))).toBe(false);
    expect(existsSync(join(workDir, '.takt'))).toBe(false);
  });

  it('never passes the token to the script, whatever variable carries it', async () => {
    const baseEnv = { PATH: process.env.PATH, HOME: home, TAKT_TOKEN: TOKEN, SOME_VAR: `x ${TOKEN} y`, SECRET_ONLY: 's3cretS3cretS3cret', KEEP_ME: 'yes' };
    const r = await run('env', { setup: { baseEnv } });
    expect(r.exitCode).toBe(0);
    expect(r.out).not.toContain('s3cretS3cretS3cret');
    expect(r.out).not.toContain('TAKT_TOKEN');
    expect(r.out).toContain('KEEP_ME=yes');
  });

  it('takt-get prints params: strings raw, other values as JSON', async () => {
    const params = { name: 'web-1', count: 3, tags: ['a', 'b'], on: true, multi: 'line1\nline2' };
    const r = await run('takt-get name; echo; takt-get count; echo; takt-get tags; echo; takt-get on; echo; takt-get multi', { params });
    expect(r.exitCode).toBe(0);
    expect(r.out).toBe('web-1\n3\n["a","b"]\ntrue\nline1\nline2');
  });

  it('takt-get fails clearly on a param the job does not have', async () => {
    const r = await run('v=$(takt-get nope)\necho "not reached"', { params: { other: 1 } });
    expect(r.exitCode).toBe(1);
    expect(r.err).toBe("takt-get: no param 'nope' (declare it in the task's params)\n");
    expect(r.out).toBe('');
  });

  it('takt-set records outputs from an argument or stdin, trimming one trailing newline', async () => {
    const r = await run([
      'takt-set ip 10.0.0.5',
      'echo "from stdin" | takt-set note',
      'printf "a\\nb\\n\\n" | takt-set lines',
      'takt-set empty ""',
      'takt-set ip 10.0.0.6', // the last value wins
    ].join('\n'));
    expect(r.exitCode).toBe(0);
    expect(r.outputs).toEqual({ ip: '10.0.0.6', note: 'from stdin', lines: 'a\nb\n', empty: '' });
  });

  it('takt-set refuses invalid output names', async () => {
    for (const bad of ['Upper', '1abc', 'has-dash', 'a.b', '../x', 'Ä']) {
      const r = await run(`takt-set '${bad}' v`);
      expect(r.exitCode, bad).toBe(1);
      expect(r.err).toContain(`takt-set: invalid output name '${bad}'`);
      expect(r.outputs).toEqual({});
    }
  });

  it('keeps outputs a failed script set, and reports oversized ones as an error', async () => {
    // Written past takt-set, which would refuse it at once (see below).
    const r = await run('takt-set small ok\nhead -c 300000 /dev/zero | tr "\\0" a > "$TAKT_OUTPUTS_DIR/big"\nexit 3');
    expect(r.exitCode).toBe(3);
    expect(r.outputs).toEqual({ small: 'ok' });
    expect(r.error).toMatch(/outputs too large to report.*big \(300000 bytes\)/);
  });

  it('measures outputs as sent: 200 KB of control bytes is 1.2 MB of JSON, left out and named', async () => {
    const r = await run('takt-set small ok\nhead -c 200000 /dev/zero | tr "\\0" "\\1" | takt-set blob');
    expect(r.exitCode).toBe(0);
    expect(r.outputs).toEqual({ small: 'ok' });
    expect(r.error).toContain('outputs too large to report (at most 262144 bytes each and 786432 in all, as sent in JSON): blob (200000 bytes, 1200002 as sent)');
  });

  it('takt-set refuses a value over the limit at once, naming it', async () => {
    const r = await run('head -c 300000 /dev/zero | tr "\\0" a | takt-set big\necho not reached');
    expect(r.exitCode).toBe(1);
    expect(r.err).toContain("takt-set: output 'big' is 300000 bytes, over the limit of 262144");
    expect(r.out).toBe('');
    expect(r.outputs).toEqual({});
  });

  it('takt-set refuses an output the task does not declare, at that line', async () => {
    const r = await run('takt-set ip 10.0.0.5\ntakt-set nope x\necho not reached', { outputs: ['ip', 'mask'] });
    expect(r.exitCode).toBe(1);
    expect(r.err).toContain("takt-set: task does not declare output 'nope' (it declares: ip mask)");
    expect(r.out).toBe('');
    expect(r.outputs).toEqual({ ip: '10.0.0.5' });
    const none = await run('takt-set ip 1', { outputs: [] });
    expect(none.err).toContain("takt-set: task does not declare output 'ip' (it declares: none)");
  });

  it('reports only declared outputs: others written past takt-set are left out and named', async () => {
    const r = await run('takt-set ip 1\ncd "$TAKT_OUTPUTS_DIR" && seq -f "o%g" 70000 | xargs touch', { outputs: ['ip'] });
    expect(r.exitCode).toBe(0);
    expect(r.outputs).toEqual({ ip: '1' });
    expect(r.error).toBe('outputs the task does not declare, not reported: o1, o10, o100, o1000, o10000 and 69995 more (it declares ip)');
  });

  it('kills the whole process group on timeout, including backgrounded children', async () => {
    const started = Date.now();
    const r = await run('sleep 100 &\necho $! > child.pid\necho started\nsleep 100\n', { timeoutMs: 300 });
    expect(Date.now() - started).toBeLessThan(5000);
    expect(r).toMatchObject({ exitCode: null, timedOut: true, aborted: false });
    expect(r.out).toBe('started\n');
    expect(r.system).toMatch(/timed out after 300 ms/);
    expect(await alive(await readPid(join(r.workDir, 'child.pid')))).toBe(false);
  });

  it('SIGKILLs what ignores SIGTERM after the grace period', async () => {
    const r = await run("trap '' TERM\nsleep 100 &\necho $! > child.pid\nsleep 100\n", { timeoutMs: 200, setup: { killGraceMs: 200 } });
    expect(r).toMatchObject({ exitCode: null, timedOut: true });
    expect(await alive(await readPid(join(r.workDir, 'child.pid')))).toBe(false);
  });

  it('kills the process group when the signal aborts', async () => {
    const ac = new AbortController();
    const pending = run('sleep 100 &\necho $! > child.pid\nsleep 100\n', { signal: ac.signal });
    const pid = await readPid(join(home, 'jobs', 'j-1', 'child.pid'));
    ac.abort();
    const r = await pending;
    expect(r).toMatchObject({ exitCode: null, timedOut: false, aborted: true });
    expect(await alive(pid)).toBe(false);
  });

  it('does not wait for, and does not leave behind, processes the script left running', async () => {
    const started = Date.now();
    const r = await run('sleep 100 &\necho $! > holds-stdout.pid\nsleep 100 >/dev/null 2>&1 &\necho $! > quiet.pid\nexit 0\n');
    expect(r.exitCode).toBe(0);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(await alive(await readPid(join(r.workDir, 'holds-stdout.pid')))).toBe(false);
    expect(await alive(await readPid(join(r.workDir, 'quiet.pid')))).toBe(false);
  });

  it('reports a spawn failure as an error', async () => {
    const r = await run('exit 0', { setup: { shell: join(home, 'no-such-bash') } });
    expect(r.exitCode).toBeNull();
    expect(r.error).toMatch(/cannot start the script/);
  });

  it('starts every job in a fresh work dir', async () => {
    await run('touch leftover', { id: 'j-same' });
    const r = await run('ls', { id: 'j-same' });
    expect(r.out).toBe('task.sh\n');
  });
});

describe('pruneJobDirs', () => {
  it('keeps the newest job dirs', async () => {
    const jobs = join(home, 'jobs');
    for (let i = 0; i < 25; i++) {
      const d = join(jobs, `j-${String(i).padStart(2, '0')}`);
      await mkdir(d, { recursive: true });
      const t = new Date(Date.now() - (25 - i) * 60_000);
      await utimes(d, t, t);
    }
    const removed = await pruneJobDirs(jobs, 20);
    expect(removed.sort()).toEqual(['j-00', 'j-01', 'j-02', 'j-03', 'j-04']);
    expect((await readdir(jobs)).length).toBe(20);
  });
});

describe('LogBatcher', () => {
  const waitFor = async (ok: () => boolean) => {
    for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 5));
    expect(ok()).toBe(true);
  };

  function recorder(fail?: (chunk: LogRequest, attempt: number) => Error | null) {
    const sent: LogRequest[] = [];
    const attempts = new Map<number, number>();
    const post = async (chunk: LogRequest) => {
      const n = attempts.get(chunk.seq) ?? 0;
      attempts.set(chunk.seq, n + 1);
      const err = fail?.(chunk, n);
      if (err) throw err;
      sent.push(chunk);
    };
    return { sent, attempts, post };
  }

  it('batches writes and numbers chunks 1, 2, 3… in order', async () => {
    const rec = recorder();
    const b = new LogBatcher({ post: rec.post, flushMs: 20 });
    for (let i = 0; i < 50; i++) b.push('stdout', `line ${i}\n`);
    b.push('stderr', 'oops\n');
    b.push('stdout', 'after\n');
    await b.close(1000);
    expect(rec.sent.map((c) => c.seq)).toEqual([1, 2, 3]);
    expect(rec.sent.map((c) => c.stream)).toEqual(['stdout', 'stderr', 'stdout']);
    expect(rec.sent[0]!.data).toBe(Array.from({ length: 50 }, (_, i) => `line ${i}\n`).join(''));
  });

  it('closeWithTail hands back what is unsent, numbered after what was sent, without posting it', async () => {
    const rec = recorder();
    const b = new LogBatcher({ post: rec.post, flushMs: 10 });
    b.push('stdout', 'early\n');
    await waitFor(() => rec.sent.length === 1);
    b.push('stdout', 'late\n');
    b.push('stderr', 'err\n');
    b.push('stdout', 'last\n');
    // the switches to stderr and back sent 'late' at once; the send under way finishes, the rest is the tail
    const { stats, tail } = await b.closeWithTail(1000, 1024);
    expect(rec.sent.map((c) => [c.seq, c.data])).toEqual([[1, 'early\n'], [2, 'late\n']]);
    expect(tail).toEqual([
      { seq: 3, stream: 'stderr', data: 'err\n' },
      { seq: 4, stream: 'stdout', data: 'last\n' },
    ]);
    expect(stats).toMatchObject({ chunksSent: 4, bytesDropped: 0 });
    b.push('stdout', 'after close\n');
    expect(b.queuedBytes).toBe(0);
  });

  it('closeWithTail posts a backlog larger than the tail allows, and hands back nothing', async () => {
    const rec = recorder();
    const b = new LogBatcher({ post: rec.post, flushMs: 10_000 });
    b.push('stdout', 'x'.repeat(100));
    const { tail } = await b.closeWithTail(1000, 50);
    expect(tail).toEqual([]);
    expect(rec.sent.map((c) => c.data.length)).toEqual([100]);
  });

  it('flushes after flushMs without waiting for close', async () => {
    const rec = recorder();
    const b = new LogBatcher({ post: rec.post, flushMs: 20 });
    b.push('stdout', 'hello\n');
    expect(rec.sent).toEqual([]);
    await waitFor(() => rec.sent.length > 0);
    expect(rec.sent).toEqual([{ seq: 1, stream: 'stdout', data: 'hello\n' }]);
    await b.close(100);
  });

  it('splits at maxChunkBytes without cutting a UTF-8 character', async () => {
    const rec = recorder();
    const b = new LogBatcher({ post: rec.post, flushMs: 1000, maxChunkBytes: 17 });
    const text = 'é'.repeat(100) + 'x'.repeat(50);
    b.push('stdout', text);
    await b.close(1000);
    expect(rec.sent.every((c) => Buffer.byteLength(c.data) <= 17 && !c.data.includes('\uFFFD'))).toBe(true);
    expect(rec.sent.map((c) => c.data).join('')).toBe(text);
    expect(rec.sent.map((c) => c.seq)).toEqual(rec.sent.map((_, i) => i + 1));
  });

  it('retries through network errors, resending a chunk with the same seq', async () => {
    const rec = recorder((c, attempt) => (c.seq === 1 && attempt < 2 ? new NetworkError('down') : null));
    const b = new LogBatcher({ post: rec.post, flushMs: 5, backoff: () => 5 });
    b.push('stdout', 'a');
    await waitFor(() => rec.attempts.size > 0); // 'a' is on its way in a chunk of its own
    b.push('stdout', 'b');
    const stats = await b.close(2000);
    expect(rec.attempts.get(1)).toBe(3);
    expect(rec.sent.map((c) => [c.seq, c.data])).toEqual([[1, 'a'], [2, 'b']]);
    expect(stats).toMatchObject({ chunksSent: 2, bytesDropped: 0, gone: false });
  });

  it('stops for good when the endpoint answers 404/409 for the job', async () => {
    const rec = recorder(() => new TaktError('conflict', 'job is lost; its log is closed'));
    const b = new LogBatcher({ post: rec.post, flushMs: 5, backoff: () => 5 });
    b.push('stdout', 'a');
    await waitFor(() => rec.attempts.size > 0); // 'a' is on its way in a chunk of its own
    b.push('stdout', 'b');
    const stats = await b.close(2000);
    expect(stats.gone).toBe(true);
    expect(rec.attempts.size).toBe(1);
  });

  it('bounds memory: drops the middle of the backlog and says how much', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const sent: LogRequest[] = [];
    const b = new LogBatcher({
      post: async (c) => {
        await gate;
        sent.push(c);
      },
      flushMs: 1000,
      maxChunkBytes: 1024,
      maxQueuedBytes: 8192,
    });
    const piece = (i: number) => `${String(i).padStart(4, '0')}${'.'.repeat(1019)}\n`; // 1024 bytes
    for (let i = 0; i < 40; i++) {
      b.push('stdout', piece(i));
      expect(b.queuedBytes).toBeLessThanOrEqual(8192 + 1024);
    }
    release();
    const stats = await b.close(2000);
    const marker = sent.find((c) => c.stream === 'system');
    expect(marker?.data).toMatch(/^takt-agent: (\d+) bytes of output were dropped here/);
    const dropped = Number(/(\d+) bytes/.exec(marker!.data)![1]);
    const delivered = sent.filter((c) => c.stream === 'stdout').map((c) => c.data).join('');
    expect(delivered.length + dropped).toBe(40 * 1024);
    expect(stats.bytesDropped).toBe(dropped);
    expect(delivered.startsWith(piece(0))).toBe(true); // the start…
    expect(delivered.endsWith(piece(39))).toBe(true); // …and the latest output survive
    expect(sent.map((c) => c.seq)).toEqual(sent.map((_, i) => i + 1));
  });

  it('close gives up after its timeout so a report is never held up forever', async () => {
    const b = new LogBatcher({ post: async () => { throw new NetworkError('down'); }, flushMs: 5, backoff: () => 10 });
    b.push('stdout', 'lost');
    const started = Date.now();
    const stats = await b.close(150);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(stats).toMatchObject({ chunksSent: 0, bytesDropped: 4 });
  });
});

// The work-dir layout is part of what scripts may rely on (docs/agent.md).
it('jobPaths keeps odd job ids inside the jobs dir', () => {
  expect(jobPaths('/a/jobs', '../../etc').workDir.startsWith('/a/jobs/')).toBe(true);
  expect(jobPaths('/a/jobs', 'j-1').workDir).toBe('/a/jobs/j-1');
});
