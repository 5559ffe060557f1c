/**
 * Issue 3: `takt export DIR` writes the complete desired state as YAML; `takt import DIR` restores it.
 * export → import (fresh endpoint) → export is byte-identical.
 */
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { MACHINE_STATES, type Machine } from '../src/model/machine.js';
import { newHostReason } from '../src/engine/portable.js';
import { Endpoint, packFiles, ROOT, until } from './helpers/endpoint.js';
import { AgentProcess } from './helpers/liveness.js';

let a: Endpoint;
let b: Endpoint;
const dir = mkdtempSync(join(tmpdir(), 'takt-export-'));

function readTree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of readdirSync(d)) {
      const p = join(d, e);
      if (statSync(p).isDirectory()) walk(p);
      else out[relative(root, p)] = readFileSync(p, 'utf8');
    }
  };
  walk(root);
  return out;
}

/** A fresh data dir holding `from`'s secret.key (mode 0600), as docs/operations.md says to carry it. */
function withKeyOf(from: Endpoint): string {
  const data = mkdtempSync(join(tmpdir(), 'takt-test-'));
  copyFileSync(join(from.data, 'secret.key'), join(data, 'secret.key'));
  chmodSync(join(data, 'secret.key'), 0o600);
  return data;
}

beforeAll(async () => {
  a = await Endpoint.start();
  // b restores a's export: it carries a's secret.key, so a's sealed values open there.
  b = await Endpoint.start({ data: withKeyOf(a) });
  const basic = await packFiles('basic');
  await a.api.post('/packs', { files: basic });
  await a.api.post('/packs', { files: { ...basic, 'pack.yaml': basic['pack.yaml']!.replace('1.0.0', '1.1.0') } });
  await a.api.post('/packs', { files: await packFiles('seed') });
  await a.api.post('/profiles', { name: 'web', description: 'web tier', params: { msg: 'from web', code: 2 } });
  await a.api.post('/tasks', { name: 'local-hello', params: { required: ['msg'] }, script: 'echo {{ msg }}' });
  await a.api.post('/machines', { name: 'plain', params: { msg: 'hi', api_key: 'k-secret', count: 3 }, profiles: ['web'], pipeline: 'basic' });
  await a.api.post('/machines', { name: 'sandbox', broker: 'local', pipeline: 'seed', params: { port: 9000 } });
  // An export holds where each machine stands: exported mid-pipeline and again later, the files differ.
  expect((await a.cli(['machines', 'wait', 'sandbox', '--until', 'done', '--timeout', '60s'])).code).toBe(0);
});
afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

describe('export and import', () => {
  it('exports a directory of YAML: pack versions as files, pins, local content, machines; secrets stay sealed', async () => {
    const r = await a.cli(['export', join(dir, 'one')]);
    expect(r.code, r.stderr).toBe(0);
    const tree = readTree(join(dir, 'one'));
    expect(Object.keys(tree)).toEqual(
      expect.arrayContaining([
        'takt-export.yaml',
        'packs/basic/1.0.0/pack.yaml',
        'packs/basic/1.1.0/tasks/hello.yaml',
        'packs/seed/1.0.0/tasks/configure.yaml',
        'local/profiles/web.yaml',
        'local/tasks/local-hello.yaml',
        'machines/plain.yaml',
        'machines/sandbox.yaml',
      ]),
    );
    expect(tree['takt-export.yaml']).toBe('format: takt-export/1\ninUse:\n  basic: 1.0.0\n  seed: 1.0.0\n');
    expect(tree['packs/basic/1.0.0/tasks/hello.yaml']).toBe((await packFiles('basic'))['tasks/hello.yaml']);
    expect(tree['machines/plain.yaml']).toMatch(/pipeline: basic/);
    expect(JSON.stringify(tree)).not.toContain('k-secret');
    expect(tree['machines/plain.yaml']).toMatch(/api_key:\n\s+\$secure: v1:/);
    // A YAML 1.1 reader (Ansible, PyYAML) takes a bare `on` for true: strings like it are quoted (F9).
    expect(tree['machines/plain.yaml']).toMatch(/^power: "on"$/m);
  });

  it('import into a fresh endpoint, export again: byte-identical', async () => {
    const imp = await b.cli(['import', join(dir, 'one'), '-o', 'json']);
    expect(imp.code, imp.stdout + imp.stderr).toBe(0);
    const r = JSON.parse(imp.stdout) as { packVersionsInstalled: string[]; machines: { created: string[] }; problems: string[] };
    expect(r.problems).toEqual([]);
    expect(r.packVersionsInstalled.sort()).toEqual(['basic@1.0.0', 'basic@1.1.0', 'seed@1.0.0']);
    expect(r.machines.created.sort()).toEqual(['plain', 'sandbox']);
    expect((await b.cli(['export', join(dir, 'two')])).code).toBe(0);
    expect(readTree(join(dir, 'two'))).toEqual(readTree(join(dir, 'one')));
    // with the key carried, the secure value opens: the plan renders it
    const plan = await b.api.get<{ steps: Array<{ task: string; error: string | null }> }>('/machines/plain/plan');
    expect(plan.steps.find((s) => s.task === 'hello')?.error ?? null).toBeNull();
    // the brokered machine's sandbox is new and empty here: held (not `done`) until a restart recreates it;
    // its file above exported byte-identical all the same (sandbox.yaml included)
    await until(async () => (await b.api.get<Machine>('/machines/sandbox')).agent.connected, 60_000, 'sandbox agent connected');
    expect(await b.api.get<Machine>('/machines/sandbox')).toMatchObject({ state: 'paused', reason: newHostReason('sandbox'), restoredPlace: { state: 'done', reason: null }, outputs: {}, currentJob: null });
    expect(readFileSync(join(dir, 'two', 'machines', 'sandbox.yaml'), 'utf8')).toBe(readFileSync(join(dir, 'one', 'machines', 'sandbox.yaml'), 'utf8'));
    expect((await b.api.get<{ items: unknown[] }>('/jobs', { machine: 'sandbox', limit: 100 })).items.every((j) => (j as { state: string }).state === 'succeeded')).toBe(true);
  });

  it('the restart the held machine names recreates its sandbox: its pipeline runs from the first task', async () => {
    const before = (await b.api.get<{ items: unknown[] }>('/jobs', { machine: 'sandbox', limit: 100 })).items.length;
    const r = await b.cli(['machines', 'restart', 'sandbox']);
    expect(r.code, r.stderr).toBe(0);
    expect((await b.cli(['machines', 'wait', 'sandbox', '--until', 'done', '--timeout', '60s'])).code).toBe(0);
    const jobs = (await b.api.get<{ items: Array<{ state: string }> }>('/jobs', { machine: 'sandbox', limit: 100 })).items;
    expect(jobs.length).toBeGreaterThan(before);
    expect((await b.api.get<Machine>('/machines/sandbox')).reason).toBeNull();
    // no longer held: the place its export gave it is dropped, and an export writes where it stands now
    expect((await b.api.get<Machine>('/machines/sandbox')).restoredPlace).toBeUndefined();
    // its new sandbox is this endpoint's: the machine names this endpoint (its endpoint id), not the one it came from
    expect((await b.api.get<Machine>('/machines/sandbox')).host).toBe(readFileSync(join(b.data, 'endpoint-id'), 'utf8').trim());
    expect((await a.api.get<Machine>('/machines/sandbox')).host).toBe(readFileSync(join(a.data, 'endpoint-id'), 'utf8').trim());
  });

  it("refuses secure values sealed with another endpoint's key, up front, naming each: nothing imported", async () => {
    const c = await Endpoint.start();
    try {
      for (const args of [['--dry-run'], []]) {
        const r = await c.cli(['import', join(dir, 'one'), ...args]);
        expect(r.code, r.stdout).toBe(1);
        expect(r.stderr).toContain('machines/plain.yaml /params/api_key: this secure value was sealed with another endpoint\'s key');
        expect(r.stderr).toContain("Put that endpoint's secret.key in this endpoint's data dir");
        expect(r.stderr).toContain('`takt machines update plain --param api_key=VALUE`');
      }
      expect((await c.api.get<{ items: unknown[] }>('/machines')).items).toEqual([]);
      expect((await c.api.get<{ items: unknown[] }>('/changes', { limit: 10 })).items).toEqual([]);
    } finally {
      await c.stop();
    }
  });

  it('importing the same state again changes nothing', async () => {
    const before = (await a.api.get<{ items: unknown[] }>('/changes', { limit: 1000 })).items.length;
    const r = await a.cli(['import', join(dir, 'one')]);
    expect(r.code, r.stderr).toBe(0);
    expect((await a.api.get<{ items: unknown[] }>('/changes', { limit: 1000 })).items.length).toBe(before);
    // an export written before strings were quoted (`power: on` bare) reads the same: still nothing to change
    cpSync(join(dir, 'one'), join(dir, 'old'), { recursive: true });
    for (const f of ['plain', 'sandbox']) {
      const path = join(dir, 'old', 'machines', `${f}.yaml`);
      writeFileSync(path, readFileSync(path, 'utf8').replace('power: "on"', 'power: on'));
    }
    expect(readFileSync(join(dir, 'old', 'machines', 'plain.yaml'), 'utf8')).toMatch(/^power: on$/m);
    const old = await a.cli(['import', join(dir, 'old')]);
    expect(old.code, old.stderr).toBe(0);
    expect((await a.api.get<{ items: unknown[] }>('/changes', { limit: 1000 })).items.length).toBe(before);
  });

  it('import restores what changed since the export, and reports what it leaves', async () => {
    await a.api.patch('/machines/plain', { params: { msg: 'drifted', count: null }, profiles: [] });
    await a.api.put('/profiles/web', { name: 'web', params: { msg: 'drifted' } });
    await a.api.post('/machines', { name: 'newcomer' });
    const r = await a.cli(['import', join(dir, 'one'), '-o', 'json']);
    expect(r.code).toBe(1); // something was left: the newcomer
    const res = JSON.parse(r.stdout) as { problems: string[] };
    expect(res.problems).toEqual([expect.stringMatching(/^machines\/newcomer: not in the export/)]);
    await a.api.delete('/machines/newcomer');
    expect((await a.cli(['export', join(dir, 'three')])).code).toBe(0);
    expect(readTree(join(dir, 'three'))).toEqual(readTree(join(dir, 'one')));
  });

  it('refuses what is not an export', async () => {
    const r = await a.cli(['import', join(dir, 'nope')]);
    expect(r.stderr).toMatch(/no such directory/);
    const notExport = await a.cli(['import', 'test/packs/basic']);
    expect(notExport.stderr).toMatch(/takt-export\.yaml is missing/);
  });

  it.each([
    ['an empty path (it would write into the current directory)', () => '', /export DIR: an empty path/],
    ['a path under /proc (Node\'s recursive mkdir never returns there)', () => '/proc/takt-export-test', /is under \/proc, the kernel's/],
    ['a file', () => join(dir, 'a-file'), /a-file is a file, not a directory;/],
    ['a path through a file', () => join(dir, 'a-file', 'sub'), /a-file is a file, not a directory \(in /],
    ['a directory that holds something else', () => join(dir, 'other'), /is not empty and holds no takt export/],
  ])('export refuses %s, before fetching anything, and writes nothing', async (_what, target, message) => {
    writeFileSync(join(dir, 'a-file'), 'mine');
    mkdirSync(join(dir, 'other'), { recursive: true });
    writeFileSync(join(dir, 'other', 'notes.txt'), 'mine');
    const r = await a.cli(['export', target()]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/unexpected error/);
    expect(readFileSync(join(dir, 'a-file'), 'utf8')).toBe('mine');
    expect(readdirSync(join(dir, 'other'))).toEqual(['notes.txt']);
    expect(existsSync(join(ROOT, 'takt-export.yaml'))).toBe(false);
  });

  it('export over an earlier export replaces it whole and leaves no staging dir', async () => {
    const out = join(dir, 'again');
    expect((await a.cli(['export', out])).code).toBe(0);
    writeFileSync(join(out, 'machines', 'deleted-long-ago.yaml'), 'name: gone\n');
    expect((await a.cli(['export', out])).code).toBe(0);
    expect(existsSync(join(out, 'machines', 'deleted-long-ago.yaml'))).toBe(false);
    expect(readdirSync(out).sort()).toEqual(readdirSync(join(dir, 'one')).sort());
  });
});

/**
 * Issue 12: a restore onto a fresh endpoint keeps each machine's place, outputs and build record, starts
 * no work by itself, says how to re-attach each agent, and exports again byte-identically.
 */
describe('restore onto a fresh endpoint', () => {
  /** The state a restored machine that was running is held in (`paused` where the model has it). */
  const HELD = (MACHINE_STATES as readonly string[]).includes('paused') ? 'paused' : 'stopped';
  let src: Endpoint;
  let dst: Endpoint;
  const agents: AgentProcess[] = [];
  const out = mkdtempSync(join(tmpdir(), 'takt-restore-'));
  type Job = { id: string; task: string; state: string; stage: string | null };
  const jobsOf = async (ep: Endpoint, machine: string) => (await ep.api.get<{ items: Job[] }>('/jobs', { machine, limit: 1000 })).items;
  const get = (ep: Endpoint, name: string) => ep.api.get<Machine>(`/machines/${name}`);

  beforeAll(async () => {
    [src, dst] = await Promise.all([Endpoint.start(), Endpoint.start()]);
    await src.api.post('/packs', { files: await packFiles('basic') });
    await src.api.post('/tasks', { name: 'slow', params: { optional: ['secs'] }, script: 'sleep {{ secs }}' });
    await src.api.post('/stages', { name: 'slow-stage', tasks: ['slow'] });
    await src.api.post('/pipelines', { name: 'restore', stages: ['one', 'slow-stage'] });
    // busy: running its second stage when exported; broken: stopped on fail-if; bare: no broker, no agent.
    await src.api.post('/machines', { name: 'busy', broker: 'local', pipeline: 'restore', params: { secs: 600 }, labels: { role: 'web', env: 'prod' } });
    await src.api.post('/machines', { name: 'broken', broker: 'local', pipeline: 'basic', params: { code: 3 } });
    await src.api.post('/machines', { name: 'bare', pipeline: 'basic' });
    await until(async () => (await jobsOf(src, 'busy')).some((j) => j.task === 'slow' && j.state === 'running'), 60_000, 'busy running slow');
    await until(async () => (await get(src, 'broken')).state === 'stopped', 60_000, 'broken stopped');
  });
  afterAll(async () => {
    await Promise.all(agents.map((a) => a.dispose()));
    await Promise.all([src?.stop(), dst?.stop()]);
  });

  it('exports each machine with its place (never running), its outputs and its build record', async () => {
    expect((await src.cli(['export', join(out, 'one')])).code).toBe(0);
    const busy = parse(readFileSync(join(out, 'one', 'machines', 'busy.yaml'), 'utf8')) as { place: { state: string; reason: string; position: Record<string, unknown> }; outputs: Record<string, unknown>; built: Array<{ task: string }> };
    expect(busy.place).toEqual({ state: HELD, reason: expect.stringMatching(/restored from an export while it was running; `takt machines resume busy`/), position: expect.objectContaining({ stage: 'slow-stage', task: 'slow', passed: ['one/hello', 'one/use-count'], attempt: 0, approvedStage: null }) });
    expect(busy.outputs).toEqual({ count: 3 });
    expect(busy.built.map((e) => e.task)).toEqual(['hello', 'use-count']);
    // two exports of the same endpoint are the same bytes (no timestamps that move)
    expect((await src.cli(['export', join(out, 'again')])).code).toBe(0);
    expect(readTree(join(out, 'again'))).toEqual(readTree(join(out, 'one')));
  });

  it('--dry-run lists what the import would do and writes nothing', async () => {
    const r = await dst.cli(['import', join(out, 'one'), '--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^dry run: importing .* would make \d+ change\(s\):/);
    expect(r.stdout).toContain(`  create machines/busy (${HELD} on restore, build record of 2 tasks)`);
    expect(r.stdout).toContain('  install basic@1.0.0');
    expect((await dst.api.get<{ items: unknown[] }>('/machines')).items).toEqual([]);
    expect((await dst.api.get<{ items: unknown[] }>('/changes', { limit: 10 })).items).toEqual([]);
  });

  it('keeps every place, outputs and build record; no machine starts work; says how to re-attach each agent', async () => {
    const imp = await dst.cli(['import', join(out, 'one')]);
    expect(imp.code, imp.stdout + imp.stderr).toBe(0);
    expect(imp.stdout).toContain("re-attach each machine's agent (new tokens were issued):");
    expect(imp.stdout).toContain("  busy: its agent was started by broker 'local' with a new token");
    // sandbox machines restored onto this (new) host are held, listed with the command that recreates them
    expect(imp.stdout).toContain('held (restored onto a new host: their sandbox is new and empty); restart each to recreate it:');
    expect(imp.stdout).toContain('  busy: takt machines restart busy');
    expect(imp.stdout).toContain('  broken: takt machines restart broken');
    expect(imp.stdout).not.toContain('  bare: takt machines restart');
    expect(imp.stdout).toMatch(/ {2}bare: give its agent a new token: `\(umask 077; takt machines token bare --rotate > bare\.token\)` \(umask 077/);

    const busy = await get(dst, 'busy');
    expect(busy).toMatchObject({ state: HELD, stage: 'slow-stage', task: 'slow', passed: ['one/hello', 'one/use-count'], outputs: { count: 3 }, currentJob: null });
    expect(busy.reason).toBe(newHostReason('busy'));
    // labels are desired state: they travel, and select the restored machine
    expect(busy.labels).toEqual({ env: 'prod', role: 'web' });
    const selected = JSON.parse((await dst.cli(['machines', 'list', '-l', 'role=web', '-o', 'json'])).stdout) as Array<{ name: string }>;
    expect(selected.map((m) => m.name)).toEqual(['busy']);
    expect(await get(dst, 'broken')).toMatchObject({ state: HELD, stage: 'two', task: 'fail-if', reason: newHostReason('broken') });
    expect(await get(dst, 'bare')).toMatchObject({ state: HELD, reason: expect.stringMatching(/restored from an export/) });
    // busy's agent is up on the new endpoint, and still no job is created: only the restored record
    await until(async () => (await get(dst, 'busy')).agent.connected, 60_000, 'busy agent connected');
    expect((await jobsOf(dst, 'busy')).map((j) => [j.task, j.state])).toEqual(expect.arrayContaining([['hello', 'succeeded'], ['use-count', 'succeeded']]));
    expect(await jobsOf(dst, 'busy')).toHaveLength(2);
    expect((await get(dst, 'busy')).state).toBe(HELD);

    // the build record works as on the source: record and --built-with
    const rec = JSON.parse((await dst.cli(['machines', 'record', 'busy', '-o', 'json'])).stdout) as { entries: Array<{ task: string; pack: string }>; stale: string[] };
    expect(rec.entries.map((e) => [e.task, e.pack])).toEqual([['hello', 'basic@1.0.0'], ['use-count', 'basic@1.0.0']]);
    const built = JSON.parse((await dst.cli(['machines', 'list', '--built-with', 'basic@1.0.0', '-o', 'json'])).stdout) as Array<{ name: string }>;
    expect(built.map((m) => m.name).sort()).toEqual(['broken', 'busy']);

    // exported again: byte-identical; imported again: nothing to do
    expect((await dst.cli(['export', join(out, 'two')])).code).toBe(0);
    expect(readTree(join(out, 'two'))).toEqual(readTree(join(out, 'one')));
    const again = JSON.parse((await dst.cli(['import', join(out, 'one'), '-o', 'json'])).stdout) as { changes: string[]; machines: { created: string[]; updated: string[] } };
    expect(again).toMatchObject({ changes: [], machines: { created: [], updated: [] } });
  });

  it('resume continues where the machine was: the tasks that succeeded do not run again', async () => {
    await dst.cli(['machines', 'update', 'busy', '--param', 'secs=0']);
    expect((await dst.cli(['machines', 'resume', 'busy'])).code).toBe(0);
    expect((await dst.cli(['machines', 'wait', 'busy', '--until', 'done', '--timeout', '60s'])).code).toBe(0);
    const ran = (await jobsOf(dst, 'busy')).map((j) => j.task).sort();
    expect(ran).toEqual(['hello', 'slow', 'use-count']);
  });

  it('the re-attach command for a machine without a broker works', async () => {
    const t = await dst.cli(['machines', 'token', 'bare', '--rotate']);
    expect(t.code, t.stderr).toBe(0);
    agents.push(new AgentProcess(dst.url, t.stdout.trim()).start());
    expect((await get(dst, 'bare')).state).toBe(HELD);
    expect((await dst.cli(['machines', 'resume', 'bare'])).code).toBe(0);
    expect((await dst.cli(['machines', 'wait', 'bare', '--until', 'done', '--timeout', '60s'])).code).toBe(0);
  });
});
