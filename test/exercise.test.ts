/**
 * Issue 4 (part): network-namespace hosts (broker netns) and `takt exercise` across environments.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, symlinkSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cellFor, coverage, lastLine, type ExerciseResult } from '../src/cli/exercise.js';
import type { Job, Machine } from '../src/model/machine.js';
import { Endpoint, packFiles } from './helpers/endpoint.js';
import { namespaceOf } from './helpers/netns.js';

/** netns needs root and working network namespaces; say why when they are not there. */
function netnsUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'not root';
  try {
    execFileSync('ip', ['netns', 'add', 'takt-probe'], { stdio: 'pipe' });
    execFileSync('ip', ['netns', 'del', 'takt-probe'], { stdio: 'pipe' });
    return null;
  } catch (err) {
    return `cannot create a network namespace: ${(err as Error).message}`;
  }
}
const skipNetns = netnsUnavailable();
if (skipNetns) console.warn(`netns tests skipped: ${skipNetns}`);

const job = (stage: string, task: string, state: Job['state'], extra: Partial<Job> = {}) => ({ id: `${task}-${state}`, kind: 'pipeline', stage, task, state, variant: 'default', reason: null, ...extra }) as Job;

describe('coverage matrix', () => {
  it('the last run of a task decides its cell; a declared no-op shows its reason; an unreached task says so', () => {
    const rows = coverage(
      [
        { stage: 's', task: 'a' },
        { stage: 's', task: 'b' },
        { stage: 's', task: 'c' },
      ],
      {
        local: [job('s', 'a', 'failed', { id: 'a1' }), job('s', 'a', 'succeeded', { id: 'a2' }), job('s', 'b', 'succeeded', { variant: 'local', reason: 'no-op: not here' })],
        netns: [job('s', 'a', 'lost', { variant: 'netns', reason: 'lost: no word' })],
      },
      (j) => `log of ${j.id}`,
    );
    expect(rows.map((r) => [r.task, r.cells.local!.status, r.cells.netns!.status])).toEqual([
      ['a', 'passed', 'failed'],
      ['b', 'noop', 'not-reached'],
      ['c', 'not-reached', 'not-reached'],
    ]);
    expect(rows[1]!.cells.local).toMatchObject({ variant: 'local', reason: 'not here' });
    expect(rows[0]!.cells.netns).toMatchObject({ reason: 'lost: no word', logLine: 'log of a-lost' });
    expect(cellFor([], () => null).status).toBe('not-reached');
  });

  it('takes the last non-empty log line', () => {
    expect(lastLine([{ jobId: 'j', seq: 1, stream: 'stdout', data: 'one\ntw', at: '' }, { jobId: 'j', seq: 2, stream: 'stdout', data: 'o\n\n  \n', at: '' }])).toBe('two');
    expect(lastLine([])).toBeNull();
  });
});

describe.skipIf(skipNetns !== null)('netns broker and takt exercise', () => {
  let ep: Endpoint;
  beforeAll(async () => {
    ep = await Endpoint.start();
    await ep.api.post('/packs', { files: await packFiles('envs') });
  });
  afterAll(async () => ep?.stop());

  const namespaces = () => execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });

  it('a netns machine lives in its own namespace with its own address, and its agent reaches the endpoint over the bridge', async () => {
    const r = await ep.cli(['machines', 'create', 'ns1', '--broker', 'netns', '--pipeline', 'envs']);
    expect(r.code, r.stderr).toBe(0);
    const w = await ep.cli(['machines', 'wait', 'ns1', '--until', 'done', '--timeout', '60s']);
    expect(w.code, w.stdout + w.stderr).toBe(0);
    const m = await ep.api.get<Machine>('/machines/ns1');
    expect(m.environment).toBe('netns');
    expect(String(m.outputs.address)).toMatch(/^10\.\d+\.\d+\.\d+$/);
    const ns = namespaceOf(ep.data, m.id);
    expect(namespaces()).toContain(ns);
    // The agent process is in that namespace, not the host's.
    const agentPid = readFileSync(join(ep.data, 'machines', m.id, 'agent.pid'), 'utf8').trim();
    expect(execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).split('\n')).toContain(agentPid);

    const d = await ep.cli(['machines', 'delete', 'ns1']);
    expect(d.code, d.stderr).toBe(0);
    expect(namespaces()).not.toContain(ns);
  });

  it('after an endpoint crash, netns agents come back through the bridge; if their port was taken meanwhile they restart on a new one', async () => {
    expect((await ep.cli(['machines', 'create', 'ns2', '--broker', 'netns', '--pipeline', 'envs'])).code).toBe(0);
    expect((await ep.cli(['machines', 'wait', 'ns2', '--until', 'done', '--timeout', '60s'])).code).toBe(0);
    const net = JSON.parse(readFileSync(join(ep.data, 'netns.json'), 'utf8')) as { prefix: string; port: number };
    await ep.crash();
    // Something else takes the forwarder's port on the bridge address while the endpoint is down.
    const squatter = createServer(() => undefined);
    await new Promise<void>((r) => squatter.listen({ host: `${net.prefix}.1`, port: net.port }, r));
    try {
      await ep.boot();
      await expect.poll(() => ep.output, { timeout: 10_000 }).toContain('netns: the bridge port the agents know is taken');
      expect((await ep.cli(['machines', 'restart', 'ns2'])).code).toBe(0);
      const w = await ep.cli(['machines', 'wait', 'ns2', '--until', 'done', '--timeout', '60s']);
      expect(w.code, w.stdout + w.stderr).toBe(0);
    } finally {
      squatter.close();
    }
    expect((await ep.cli(['machines', 'delete', 'ns2'])).code).toBe(0);
  });

  it('takt exercise runs the whole pipeline on local and netns, prints the matrix and leaves nothing behind', async () => {
    const r = await ep.cli(['exercise', 'envs', '--envs', 'local,netns', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const x = JSON.parse(r.stdout) as ExerciseResult;
    expect(x.passed).toBe(true);
    const cell = (task: string, env: string) => x.rows.find((row) => row.task === task)!.cells[env]!;
    expect(cell('where', 'local')).toMatchObject({ status: 'passed', variant: 'local' });
    expect(cell('where', 'netns')).toMatchObject({ status: 'passed', variant: 'netns' });
    expect(cell('routes', 'local')).toMatchObject({ status: 'noop', reason: expect.stringContaining("shares the host's network") });
    expect(cell('routes', 'netns')).toMatchObject({ status: 'passed', variant: 'netns' });
    expect(cell('gate', 'netns')).toMatchObject({ status: 'passed', variant: 'default' });
    expect(x.machines.netns!.state).toBe('done');
    expect((await ep.api.get<{ items: Machine[] }>('/machines')).items).toEqual([]);
    expect(namespaces()).not.toContain(x.machines.netns!.id);
  });

  it('a failure shows in its cell with its log line, and exercise exits 1', async () => {
    const r = await ep.cli(['exercise', 'envs', '--envs', 'local,netns', '--param', 'code=5']);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain("✗ default: task 'gate' failed with exit code 5");
    expect(r.stdout).toContain('gate exits 5');
    expect(r.stdout).toContain('the pipeline failed in at least one environment');
    expect((await ep.api.get<{ items: Machine[] }>('/machines')).items).toEqual([]);
  });

  it('an unknown environment is a clear error, and nothing is left behind', async () => {
    const r = await ep.cli(['exercise', 'envs', '--envs', 'local,mars']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("unknown broker 'mars'; available: local, netns");
    expect((await ep.api.get<{ items: Machine[] }>('/machines')).items).toEqual([]);
  });
});

describe.skipIf(skipNetns !== null)('netns broker on a host that cannot run it', () => {
  it('says what is missing, and records no machine', async () => {
    // A PATH with node and nothing else: no `ip`.
    const bin = mkdtempSync(join(tmpdir(), 'takt-noip-'));
    symlinkSync(process.execPath, join(bin, 'node'));
    const ep = await Endpoint.start({ env: { PATH: bin } });
    try {
      const r = await ep.cli(['machines', 'create', 'x', '--broker', 'netns']);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("the netns broker needs iproute2's `ip` command");
      expect((await ep.api.get<{ items: Machine[] }>('/machines')).items).toEqual([]);
    } finally {
      await ep.stop();
    }
  });
});
