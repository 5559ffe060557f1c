/**
 * End to end through the CLI: `takt serve --demo` with real local agents running real bash.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, ROOT, until } from './helpers/endpoint.js';

let ep: Endpoint;

interface M {
  id: string;
  name: string;
  state: string;
  reason: string | null;
  pipeline: string;
  environment: string;
  params: Record<string, unknown>;
  outputs: Record<string, unknown>;
}

async function machines(): Promise<M[]> {
  const r = await ep.cli(['machines', 'list', '-o', 'json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as M[];
}

beforeAll(async () => {
  ep = await Endpoint.start({ demo: true });
});
afterAll(async () => ep?.stop());

describe('the demo', () => {
  it('three local machines walk the demo pipeline to done', async () => {
    for (const name of ['demo-1', 'demo-2', 'demo-3']) {
      const r = await ep.cli(['machines', 'wait', name, '--until', 'done', '--timeout', '60s']);
      expect(r.code, `${name}: ${r.stdout}${r.stderr}`).toBe(0);
    }
    const list = await machines();
    expect(list.map((m) => m.name)).toEqual(['demo-1', 'demo-2', 'demo-3']);
    for (const m of list) expect(m).toMatchObject({ state: 'done', pipeline: 'demo', environment: 'local' });
    // the endpoint log shows the machines finishing
    expect(ep.output).toMatch(/machine demo-1 done/);
  });

  it('really ran: the sandbox has the file a task wrote, and a param set by one task was read by a later one', async () => {
    const m = (await machines()).find((x) => x.name === 'demo-1')!;
    const motd = readFileSync(join(ep.data, 'machines', m.id, 'root', 'etc', 'motd'), 'utf8');
    expect(motd).toContain('demo-1');
    const buildId = m.outputs.build_id as string;
    expect(buildId).toMatch(/^demo-/);
    expect(motd).toContain(buildId);
    const jobs = JSON.parse((await ep.cli(['jobs', 'list', '--machine', 'demo-1', '-o', 'json'])).stdout) as Array<{ task: string; variant: string; state: string }>;
    expect(jobs.every((j) => j.state === 'succeeded')).toBe(true);
    // one task ran its `local` environment variant
    expect(jobs.some((j) => j.variant === 'local')).toBe(true);
  });

  it('a failing task stops its machine only; the log shows why; fixing the param and resuming completes it', async () => {
    expect((await ep.cli(['machines', 'update', 'demo-2', '--param', 'fail_verify=true'])).code).toBe(0);
    expect((await ep.cli(['machines', 'restart', 'demo-2'])).code).toBe(0);
    expect((await ep.cli(['machines', 'restart', 'demo-3'])).code).toBe(0);
    const waited = await ep.cli(['machines', 'wait', 'demo-2', '--until', 'done', '--timeout', '60s']);
    expect(waited.code).toBe(1); // stopped instead of done
    expect((await ep.cli(['machines', 'wait', 'demo-3', '--until', 'done', '--timeout', '60s'])).code).toBe(0);

    const list = await machines();
    const m2 = list.find((m) => m.name === 'demo-2')!;
    expect(m2.state).toBe('stopped');
    expect(m2.reason).toBe("task 'verify-motd' failed with exit code 1");
    expect(list.filter((m) => m.name !== 'demo-2').every((m) => m.state === 'done')).toBe(true);

    const failed = JSON.parse((await ep.cli(['jobs', 'list', '--machine', 'demo-2', '--state', 'failed', '-o', 'json'])).stdout) as Array<{ id: string }>;
    expect(failed).toHaveLength(1);
    const log = await ep.cli(['jobs', 'log', failed[0]!.id]);
    expect(log.code).toBe(0);
    expect(log.stdout).toMatch(/fail_verify is true/); // the script's stderr is job output, on stdout (F4)

    expect((await ep.cli(['machines', 'update', 'demo-2', '--unset', 'fail_verify'])).code).toBe(0);
    expect((await ep.cli(['machines', 'resume', 'demo-2'])).code).toBe(0);
    expect((await ep.cli(['machines', 'wait', 'demo-2', '--until', 'done', '--timeout', '60s'])).code).toBe(0);
    // resume re-ran the failed task, not the whole pipeline
    const jobs = JSON.parse((await ep.cli(['jobs', 'list', '--machine', 'demo-2', '--task', 'verify-motd', '-o', 'json'])).stdout) as Array<{ state: string }>;
    expect(jobs.map((j) => j.state).sort()).toEqual(['failed', 'succeeded', 'succeeded']);
  });

  it('plan shows each param with its value and layer; render prints the exact script', async () => {
    expect((await ep.cli(['machines', 'wait', 'demo-1', '--timeout', '60s'])).code).toBe(0);
    const finished = JSON.parse((await ep.cli(['plan', 'demo-1', '-o', 'json'])).stdout) as { state: string; from: string; steps: unknown[] };
    expect(finished).toMatchObject({ state: 'done', from: 'restart' });
    expect(finished.steps).toHaveLength(8);
    await ep.cli(['machines', 'update', 'demo-1', '--param', 'greeting=hi from the machine']);
    // The plan of a done machine is what a restart would run, all of it: planned before the restart, so a
    // machine quicker than the CLI (on a loaded host) cannot have run write-motd before the plan is asked.
    const plan = JSON.parse((await ep.cli(['plan', 'demo-1', '-o', 'json'])).stdout) as {
      steps: Array<{ task: string; params: Array<{ name: string; value: unknown; from: string }> }>;
    };
    const write = plan.steps.find((s) => s.task === 'write-motd');
    expect(write?.params.find((p) => p.name === 'greeting')).toMatchObject({ value: 'hi from the machine', from: 'machine' });
    expect(write?.params.find((p) => p.name === 'motd_owner')?.from).toMatch(/default|profile|pipeline|stage/);
    const table = await ep.cli(['plan', 'demo-1']);
    expect(table.stdout).toMatch(/greeting = "hi from the machine" \(machine\)/);
    const r = await ep.cli(['render', 'write-motd', '--machine', 'demo-1']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('hi from the machine');
    expect(r.stdout).not.toContain('{{');
    await ep.cli(['machines', 'restart', 'demo-1']);
    await ep.cli(['machines', 'wait', 'demo-1', '--until', 'done', '--timeout', '60s']);
  });

  it('a work order runs a blueprint without moving the pipeline position', async () => {
    expect((await ep.cli(['machines', 'wait', 'demo-1', '--timeout', '60s'])).code).toBe(0);
    const before = (await machines()).find((m) => m.name === 'demo-1')!;
    const a = JSON.parse((await ep.cli(['workorders', 'create', '--machine', 'demo-1', '--blueprint', 'inventory', '-o', 'json'])).stdout) as { id: string };
    const b = JSON.parse((await ep.cli(['workorders', 'create', '--machine', 'demo-1', '--blueprint', 'inventory', '-o', 'json'])).stdout) as { id: string };
    await until(async () => {
      const list = JSON.parse((await ep.cli(['workorders', 'list', '--machine', 'demo-1', '-o', 'json'])).stdout) as Array<{ id: string; state: string }>;
      return [a.id, b.id].every((id) => list.find((w) => w.id === id)?.state === 'succeeded');
    }, 30_000, 'work orders to succeed');
    type J = { workOrderId: string; createdAt: string; finishedAt: string };
    const byWo = async (id: string) => JSON.parse((await ep.cli(['jobs', 'list', '--workorder', id, '-o', 'json'])).stdout) as J[];
    const [ja, jb] = [await byWo(a.id), await byWo(b.id)];
    expect(ja).toHaveLength(2);
    expect(jb).toHaveLength(2);
    // one at a time: the second work order's jobs start after the first one's finished
    const aEnd = Math.max(...ja.map((j) => Date.parse(j.finishedAt)));
    const bStart = Math.min(...jb.map((j) => Date.parse(j.createdAt)));
    expect(bStart).toBeGreaterThanOrEqual(aEnd);
    const after = (await machines()).find((m) => m.name === 'demo-1')!;
    expect(after).toMatchObject({ state: 'done', passed: (before as unknown as { passed: string[] }).passed });
  });

  it('machines create --broker local makes real machines with their own sandbox', async () => {
    const r = await ep.cli(['machines', 'create', 'extra', '--broker', 'local', '--count', '2', '--pipeline', 'demo', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const made = JSON.parse(r.stdout) as M[];
    expect(made.map((m) => m.name)).toEqual(['extra-1', 'extra-2']);
    for (const m of made) {
      const waited = await ep.cli(['machines', 'wait', m.name, '--timeout', '60s']);
      expect(waited.code, waited.stdout + waited.stderr).toBe(0);
      expect(existsSync(join(ep.data, 'machines', m.id, 'root', 'etc', 'motd'))).toBe(true);
    }
    const del = await ep.cli(['machines', 'delete', 'extra-2']);
    expect(del.code).toBe(0);
    expect(existsSync(join(ep.data, 'machines', made[1]!.id))).toBe(false);
  });

  it('the CLI explains bad input and missing things', async () => {
    const nf = await ep.cli(['machines', 'get', 'nope']);
    expect(nf.code).toBe(4);
    expect(nf.stderr).toMatch(/machine 'nope' not found/);
    const bad = await ep.cli(['machines', 'update', 'demo-1', '--param', 'code']);
    expect(bad.stderr).toMatch(/not KEY=VALUE/);
    const badToken = await ep.cli(['machines', 'list', '--token', 'wrong']);
    expect(badToken.code).toBe(5);
    expect(badToken.stderr).toMatch(/token not accepted/);
    const down = await ep.cli(['machines', 'list', '--endpoint', 'http://127.0.0.1:9']);
    expect(down.code).toBe(3);
    expect(down.stderr).toMatch(/cannot reach/);
  });

  // F27: `npm start` is `serve --demo`; a restart must not roll back the operator's pin nor re-walk machines.
  it('restarting with --demo keeps the pinned demo version and leaves the demo machines where they are', async () => {
    for (const name of ['demo-1', 'demo-2', 'demo-3']) expect((await ep.cli(['machines', 'wait', name, '--timeout', '60s'])).code).toBe(0);
    const pack = join(mkdtempSync(join(tmpdir(), 'takt-demo-')), 'demo');
    cpSync(join(ROOT, 'content', 'demo'), pack, { recursive: true });
    const manifest = join(pack, 'pack.yaml');
    writeFileSync(manifest, readFileSync(manifest, 'utf8').replace(/^version: .*$/m, 'version: 99.0.0'));
    expect((await ep.cli(['content', 'install', pack])).code).toBe(0);
    expect((await ep.cli(['content', 'use', 'demo@99.0.0'])).code).toBe(0);
    const changes = (await ep.api.get<{ items: unknown[] }>('/changes', { limit: 1000 })).items.length;
    const before = (await machines()).map((m) => [m.name, m.state]);

    await ep.crash();
    ep.output = '';
    await ep.boot();

    const versions = JSON.parse((await ep.cli(['content', 'versions', 'demo', '-o', 'json'])).stdout) as Array<{ version: string; inUse: boolean }>;
    expect(versions.filter((v) => v.inUse).map((v) => v.version)).toEqual(['99.0.0']);
    expect((await ep.api.get<{ items: unknown[] }>('/changes', { limit: 1000 })).items.length).toBe(changes);
    expect((await machines()).map((m) => [m.name, m.state])).toEqual(before);
    expect(ep.output).toMatch(/demo: left demo@99\.0\.0 in use/);
    expect(ep.output).toMatch(/demo: left existing demo-1 \(done\), demo-2 \(done\), demo-3 \(done\) as they are/);
  });
});
