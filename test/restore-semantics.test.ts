/**
 * Restoring desired state is not observed state (issue 12), through the CLI against a real endpoint with
 * local machines and a small pack:
 * - rewind, revert and import that change a machine's pipeline start no work: the machine takes the place it
 *   had in that pipeline (or is held at the start when that place is not valid), and --dry-run says so;
 * - they restore params as desired and never delete or roll back an output; a restored param an output
 *   shadows is reported;
 * - `--stale` does not flag a task whose param a later task of the same pass set as an output.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Change, Job, Machine } from '../src/model/machine.js';
import { Endpoint, writePack } from './helpers/endpoint.js';

let ep: Endpoint;
/** Each story starts agents and runs pipelines: a bound for a loaded 2-core machine, not a timing claim. */
const STORY = 300_000;
let work: string;

const PACK: Record<string, string> = {
  'pack.yaml': 'name: sem\nversion: 1.0.0\n',
  'params/x.yaml': 'name: x\nschema: { type: string, default: none }\n',
  'params/fail_check.yaml': 'name: fail_check\nschema: { type: boolean, default: false }\n',
  'params/build_id.yaml': 'name: build_id\nschema: { type: string }\n',
  'tasks/a.yaml': 'name: a\nparams: { optional: [x] }\nscript: |\n  echo "x={{ x }}"\n',
  'tasks/check.yaml': 'name: check\nparams: { optional: [fail_check] }\nscript: |\n  if [ "{{ fail_check }}" = "true" ]; then echo "check failed on purpose"; exit 1; fi\n',
  'tasks/c.yaml': 'name: c\nscript: |\n  echo c\n',
  'tasks/setx.yaml': 'name: setx\noutputs:\n  x: { type: string }\nscript: |\n  takt-set x from-setx\n',
  'tasks/stamp.yaml': 'name: stamp\nparams: { optional: [build_id] }\noutputs:\n  build_id: { type: string }\nscript: |\n  echo "build_id was {{ build_id }}"\n  takt-set build_id b-9\n',
  'stages/s1.yaml': 'name: s1\ntasks: [a, check]\n',
  'stages/s2.yaml': 'name: s2\ntasks: [c]\n',
  'stages/one.yaml': 'name: one\ntasks: [stamp]\n',
  'stages/feed.yaml': 'name: feed\ntasks: [a, setx]\n',
  'pipelines/other.yaml': 'name: other\nstages: [s1, s2]\n',
  'pipelines/demo.yaml': 'name: demo\nstages: [one]\n',
  'pipelines/feed.yaml': 'name: feed\nstages: [feed]\n',
};

async function ok(args: string[]) {
  const r = await ep.cli(args);
  expect(r.code, `takt ${args.join(' ')}:\n${r.stdout}\n${r.stderr}`).toBe(0);
  return r;
}
async function json<T>(args: string[]): Promise<T> {
  return JSON.parse((await ok([...args, '-o', 'json'])).stdout) as T;
}
const machine = (name: string) => ep.api.get<Machine>(`/machines/${name}`);
const latest = async () => (await ep.api.get<{ items: Change[] }>('/changes', { limit: 1 })).items[0]!.seq;
const jobs = async (name: string) => (await json<Job[]>(['jobs', 'list', '--machine', name])).filter((j) => j.kind === 'pipeline');
const wait = (name: string, until: string) => ok(['machines', 'wait', name, '--until', until, '--timeout', '90s']);

/** A machine on `other`, stopped on s1/check after s1/a succeeded, then moved to `demo` (which it runs to done). */
async function stoppedOnOtherThenDemo(name: string): Promise<{ onOther: number }> {
  await ok(['machines', 'create', name, '--broker', 'local', '--pipeline', 'other', '--param', 'fail_check=true']);
  await wait(name, 'stopped');
  expect(await machine(name)).toMatchObject({ state: 'stopped', stage: 's1', task: 'check', passed: ['s1/a'] });
  const onOther = await latest();
  await ok(['machines', 'update', name, '--pipeline', 'demo']);
  await wait(name, 'done');
  return { onOther };
}

beforeAll(async () => {
  ep = await Endpoint.start();
  work = mkdtempSync(join(tmpdir(), 'takt-restore-'));
  writePack(join(work, 'sem'), PACK);
  await ok(['content', 'push', join(work, 'sem')]);
});
afterAll(async () => {
  await ep?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('a restore that changes the pipeline starts no work', () => {
  it('rewind puts the machine back at the place it had in that pipeline, held; --dry-run says so; resume continues there', async () => {
    const { onOther } = await stoppedOnOtherThenDemo('rw-1');
    const before = (await jobs('rw-1')).length;

    const dry = await ok(['history', 'rewind', '--to', String(onOther), '--dry-run']);
    expect(dry.stdout).toContain('  update machines/rw-1: pipeline');
    expect(dry.stdout).toMatch(/ {2}rw-1: pipeline demo → other: stopped at s1\/check \(1 task had succeeded\); `takt machines resume rw-1` continues, `takt machines restart rw-1` runs it from the top/);
    expect((await machine('rw-1')).pipeline).toBe('demo');

    const r = await ok(['history', 'rewind', '--to', String(onOther)]);
    expect(r.stdout).toMatch(/rw-1: pipeline demo → other: stopped at s1\/check/);
    const m = await machine('rw-1');
    expect(m).toMatchObject({ pipeline: 'other', state: 'stopped', stage: 's1', task: 'check', passed: ['s1/a'], currentJob: null });
    expect(m.reason).toMatch(/^task 'check' failed with exit code 1 — pipeline changed from demo to other by rewind to #\d+; held at s1\/check.*`takt machines resume rw-1` continues there/);
    // Nothing was started: the machine is stopped, no job was created.
    expect((await jobs('rw-1')).length).toBe(before);

    // The operator continues it: the failed task runs again, `a` (which succeeded) does not.
    await ok(['machines', 'update', 'rw-1', '--unset', 'fail_check']);
    await ok(['machines', 'resume', 'rw-1']);
    await wait('rw-1', 'done');
    const ran = (await jobs('rw-1')).filter((j) => j.pipeline === 'other' && j.state === 'succeeded').map((j) => j.task).sort();
    expect(ran).toEqual(['a', 'c', 'check']);
  }, STORY);

  it('revert of a pipeline change holds the machine at its place there', async () => {
    await stoppedOnOtherThenDemo('rv-1');
    const change = await ep.api.get<{ items: Change[] }>('/changes', { object: `machines/${(await machine('rv-1')).id}`, limit: 1 });
    const seq = change.items[0]!.seq;
    const before = (await jobs('rv-1')).length;
    const r = await ok(['history', 'revert', String(seq)]);
    expect(r.stdout).toMatch(/rv-1: pipeline demo → other: stopped at s1\/check/);
    const m = await machine('rv-1');
    expect(m).toMatchObject({ pipeline: 'other', state: 'stopped', stage: 's1', task: 'check', passed: ['s1/a'] });
    expect(m.reason).toContain(`pipeline changed from demo to other by revert of #${seq}; held at s1/check`);
    expect((await jobs('rv-1')).length).toBe(before);
  }, STORY);

  it("import takes the export's place in the pipeline, or holds the machine at the start when that place is not valid", async () => {
    await ok(['machines', 'create', 'im-1', '--broker', 'local', '--pipeline', 'other', '--param', 'fail_check=true']);
    await wait('im-1', 'stopped');
    const dir = join(work, 'state-place');
    await ok(['export', dir]);
    await ok(['machines', 'update', 'im-1', '--pipeline', 'demo']);
    await wait('im-1', 'done');
    const before = (await jobs('im-1')).length;

    // An export whose place is not in the content (the task it stood on is gone): held at the start.
    const file = join(dir, 'machines', 'im-1.yaml');
    const text = readFileSync(file, 'utf8');
    expect(text).toMatch(/task: check/);
    writeFileSync(file, text.replace(/task: check/, 'task: gone'));
    const bad = await ep.cli(['import', dir, '--dry-run']);
    expect(bad.stdout).toMatch(/ {2}im-1: pipeline demo → other: held at start \(its recorded place is not valid in the content in use: task 'gone' \(stage 's1'\), where the machine stopped, is no longer in pipeline 'other'\); `takt machines resume im-1` runs it/);

    writeFileSync(file, text);
    const dry = await ep.cli(['import', dir, '--dry-run']);
    expect(dry.stdout).toContain('  update machines/im-1: pipeline');
    expect(dry.stdout).toMatch(/ {2}im-1: pipeline demo → other: stopped at s1\/check \(1 task had succeeded\)/);
    expect((await machine('im-1')).pipeline).toBe('demo');

    const r = await ep.cli(['import', dir]);
    expect(r.stdout).toMatch(/im-1: pipeline demo → other: stopped at s1\/check/);
    const m = await machine('im-1');
    expect(m).toMatchObject({ pipeline: 'other', state: 'stopped', stage: 's1', task: 'check', passed: ['s1/a'] });
    expect(m.reason).toMatch(/^task 'check' failed with exit code 1 — pipeline changed from demo to other by an import; held at s1\/check/);
    expect((await jobs('im-1')).length).toBe(before);

    // Held at the start, the machine waits for the operator too.
    await ok(['machines', 'update', 'im-1', '--pipeline', 'demo']);
    await wait('im-1', 'done');
    writeFileSync(file, text.replace(/task: check/, 'task: gone'));
    await ep.cli(['import', dir]);
    const held = await machine('im-1');
    expect(held).toMatchObject({ pipeline: 'other', state: 'paused', stage: null, task: null, passed: [] });
    expect(held.reason).toMatch(/held at its start .*`takt machines resume im-1` runs it from its first task/);
    expect((await jobs('im-1')).length).toBe(before + 1);
  }, STORY);
});

describe('outputs are observed: restores keep them, and say when one shadows a restored param', () => {
  it('rewind, revert and import restore the param, keep the output, and report the shadowing', async () => {
    await ok(['machines', 'create', 'out-1', '--broker', 'local', '--pipeline', 'demo', '--param', 'build_id=b-7']);
    await wait('out-1', 'done');
    expect(await machine('out-1')).toMatchObject({ params: { build_id: 'b-7' }, outputs: { build_id: 'b-9' } });
    const to = await latest();
    const dir = join(work, 'state-outputs');
    await ok(['export', dir]);
    const unset = async () => {
      await ok(['machines', 'update', 'out-1', '--unset', 'build_id']);
      expect(await machine('out-1')).toMatchObject({ params: {}, outputs: { build_id: 'b-9' } });
      return latest();
    };
    const note = "out-1: param build_id restored to \"b-7\"; the machine's output build_id=\"b-9\" still takes precedence";
    const restored = async () => expect(await machine('out-1')).toMatchObject({ params: { build_id: 'b-7' }, outputs: { build_id: 'b-9' }, state: 'done' });

    // rewind: the param is restored and counted (not skipped as "0 changes")
    await unset();
    const dry = await ok(['history', 'rewind', '--to', String(to), '--dry-run']);
    expect(dry.stdout).toMatch(/would make 1 change\(s\):\n {2}update machines\/out-1: params\.build_id\n/);
    expect(dry.stdout).toContain(`  ${note}`);
    const rw = await ok(['history', 'rewind', '--to', String(to)]);
    expect(rw.stdout).toMatch(/rewound to #\d+: 1 change\(s\)/);
    expect(rw.stdout).toContain(`  ${note}`);
    await restored();

    // revert of the unset
    const seq = await unset();
    const rv = await ok(['history', 'revert', String(seq)]);
    expect(rv.stdout).toContain(`  ${note}`);
    await restored();

    // import
    await unset();
    const idry = await ok(['import', dir, '--dry-run']);
    expect(idry.stdout).toContain('  update machines/out-1: params.build_id');
    expect(idry.stdout).toContain(`  ${note}`);
    const im = await ep.cli(['import', dir]);
    expect(im.stdout).toContain(`  ${note}`);
    await restored();
    // What templates see is still the output; the operator's own `--param` replaces it as before.
    await ok(['machines', 'update', 'out-1', '--param', 'build_id=b-8']);
    expect(await machine('out-1')).toMatchObject({ params: { build_id: 'b-8' }, outputs: {} });
  }, STORY);
});

describe('--stale compares desired inputs', () => {
  it('a task whose param a later task of the same pass set as an output is not stale after a clean run', async () => {
    await ok(['machines', 'create', 'feed-1', '--broker', 'local', '--pipeline', 'feed']);
    await wait('feed-1', 'done');
    expect((await machine('feed-1')).outputs).toEqual({ x: 'from-setx' });
    expect((await json<{ stale: string[] }>(['machines', 'record', 'feed-1'])).stale).toEqual([]);
    const stale = await json<Array<{ name: string }>>(['machines', 'list', '--stale', '--pipeline', 'feed']);
    expect(stale.map((m) => m.name)).toEqual([]);
    // A desired change still counts: the operator's x replaces the output, and `a` saw the default.
    await ok(['machines', 'update', 'feed-1', '--param', 'x=new']);
    expect((await json<{ stale: string[] }>(['machines', 'record', 'feed-1'])).stale).toEqual(['a: param x changed ("none" → "new")']);
  }, STORY);
});
