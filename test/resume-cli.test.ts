/**
 * Issue 12, "resume means the same task, and nothing is skipped": through the CLI against a real endpoint
 * and real local agents. A machine stops on task `b` of `[a, b]`; a new pack version changes the stage;
 * `takt plan` shows what a resume would run (or that it would be refused), and `takt machines resume`
 * does exactly that. A failed work order resumes from its failed task with its original (secure) params.
 */
import Database from 'better-sqlite3';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint } from './helpers/endpoint.js';

let ep: Endpoint;
let work: string;

/** The pack `rz` at `version`, whose stage `s` lists `tasks`. Task `b` fails while its machine's `fail_b` is true. */
function pack(version: string, tasks: string[]): Record<string, string> {
  return {
    'pack.yaml': `name: rz\nversion: ${version}\n`,
    'params/fail_b.yaml': 'name: fail_b\nschema: { type: boolean, default: false }\n',
    'params/wb_ok.yaml': 'name: wb_ok\nschema: { type: boolean, default: false }\n',
    'params/stamp.yaml': 'name: stamp\nschema: { type: string }\n',
    'params/api_key.yaml': 'name: api_key\nsecure: true\nschema: { type: string }\n',
    'tasks/a.yaml': 'name: a\nscript: |\n  echo a ran\n',
    'tasks/b.yaml': [
      'name: b',
      'params: { required: [fail_b], optional: [stamp] }',
      'script: |',
      '  if [ "{{ fail_b }}" = "true" ]; then echo "b is broken"; exit 3; fi',
      '  echo b ran',
      '',
    ].join('\n'),
    'tasks/new.yaml': 'name: new\noutputs: { stamp: { type: string } }\nscript: |\n  takt-set stamp fresh\n',
    'tasks/wa.yaml': 'name: wa\nscript: |\n  echo wa ran\n',
    'tasks/r.yaml': 'name: r\nretries: 1\nscript: |\n  echo r is broken; exit 2\n',
    'tasks/wb.yaml': [
      'name: wb',
      'params: { required: [wb_ok, api_key] }',
      'script: |',
      '  if [ "{{ wb_ok }}" != "true" ]; then echo "wb is not ready"; exit 4; fi',
      '  if [ "{{ api_key }}" != "s3cret-42" ]; then echo "wrong key"; exit 5; fi',
      '  echo wb ran with the original key',
      '',
    ].join('\n'),
    'stages/s.yaml': `name: s\ntasks: [${tasks.join(', ')}]\n`,
    'pipelines/rz.yaml': 'name: rz\nstages: [s]\n',
    'blueprints/fix.yaml': 'name: fix\ntasks: [wa, wb]\n',
  };
}

/** Bundles the pack version into `work`, installs it and puts it in use. */
async function publish(version: string, tasks: string[]): Promise<void> {
  const dir = join(work, version);
  for (const [path, text] of Object.entries(pack(version, tasks))) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), text);
  }
  const b = await json<{ file: string }>(['content', 'bundle', dir, '--out', work]);
  await json(['content', 'install', b.file]);
  const use = await ep.cli(['content', 'use', `rz@${version}`]);
  expect(use.code, use.stderr).toBe(0);
  lastUse = use.stderr;
}
/** What the last `content use` said on stderr (its warnings). */
let lastUse = '';

async function json<T>(args: string[]): Promise<T> {
  const r = await ep.cli([...args, '-o', 'json']);
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  return JSON.parse(r.stdout) as T;
}

interface MachineView {
  name: string;
  state: string;
  reason: string | null;
  stage: string | null;
  task: string | null;
  passed: string[];
  currentJob: string | null;
}

/** Waits (bounded) until the machine has settled in one of `states`, with no job running. */
async function settled(name: string, states: string[]): Promise<MachineView> {
  let m: MachineView | undefined;
  for (let i = 0; i < 600; i++) {
    m = await json<MachineView>(['machines', 'get', name]);
    if (states.includes(m.state) && m.currentJob === null) return m;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`machine ${name} did not reach ${states.join('|')}: ${JSON.stringify(m)}`);
}

/** The tasks the machine's pipeline jobs ran, in order, with how they ended. */
async function ran(name: string): Promise<string[]> {
  const jobs = await json<Array<{ task: string; state: string; kind: string }>>(['jobs', 'list', '--machine', name, '--order', 'asc', '--limit', '100']);
  return jobs.filter((j) => j.kind === 'pipeline').map((j) => `${j.task}:${j.state}`);
}

beforeAll(async () => {
  ep = await Endpoint.start();
  work = mkdtempSync(join(tmpdir(), 'takt-resume-'));
  await publish('1.0.0', ['a', 'b']);
});
afterAll(async () => ep?.stop());

describe('resume by identity through the CLI', () => {
  it('insert-before [new, a, b]: plan shows new then b (with the param new promises); resume runs them; a is not re-run', { timeout: 180_000 }, async () => {
    await json(['machines', 'create', 'ins', '--broker', 'local', '--pipeline', 'rz', '--param', 'fail_b=true']);
    const stopped = await settled('ins', ['stopped', 'done']);
    expect(stopped).toMatchObject({ state: 'stopped', stage: 's', task: 'b', passed: ['s/a'] });
    expect(stopped.reason).toMatch(/task 'b' failed with exit code 3/);

    await publish('1.1.0', ['new', 'a', 'b']);
    const plan = await json<{ from: string; refused: unknown; steps: Array<{ stage: string; task: string; params: Array<{ name: string; promisedBy?: string }> }> }>(['plan', 'ins']);
    expect(plan.from).toBe('continue');
    expect(plan.refused).toBeNull();
    expect(plan.steps.map((s) => `${s.stage}/${s.task}`)).toEqual(['s/new', 's/b']);
    expect(plan.steps[1]!.params.find((p) => p.name === 'stamp')).toMatchObject({ promisedBy: 's/new' });
    const table = await ep.cli(['plan', 'ins']);
    expect(table.stdout).toMatch(/stamp = \(set by s\/new when it runs\)/);
    expect(table.stdout).toMatch(/stopped; `takt machines resume ins` would run:\n {2}s\/new\n {2}s\/b\n/);

    expect((await ep.cli(['machines', 'update', 'ins', '--param', 'fail_b=false'])).code).toBe(0);
    const resumed = await ep.cli(['machines', 'resume', 'ins']);
    expect(resumed.code, resumed.stderr).toBe(0);
    const done = await settled('ins', ['stopped', 'done']);
    expect(done.state, done.reason ?? '').toBe('done');
    expect(await ran('ins')).toEqual(['a:succeeded', 'b:failed', 'new:succeeded', 'b:succeeded']);
  });

  it('remove-the-failed-task [new, a]: plan and resume refuse (409), saying what changed and what to do', { timeout: 180_000 }, async () => {
    await json(['machines', 'create', 'rm', '--broker', 'local', '--pipeline', 'rz', '--param', 'fail_b=true']);
    expect(await settled('rm', ['stopped', 'done'])).toMatchObject({ state: 'stopped', task: 'b', passed: ['s/new', 's/a'] });

    await publish('1.2.0', ['new', 'a']);
    // putting the version in use says at once which stopped machine it leaves un-resumable (F6)
    expect(lastUse).toMatch(/warning: rm can not be resumed now: task 'b' \(stage 's'\), where the machine stopped, is no longer in pipeline 'rz'.*takt content use rz@1\.1\.0/);
    const plan = await json<{ from: string; refused: { change: string; message: string }; steps: unknown[] }>(['plan', 'rm']);
    expect(plan).toMatchObject({ from: 'refused', refused: { change: 'vanished' }, steps: [] });
    expect((await ep.cli(['plan', 'rm'])).stdout).toMatch(/resume would be refused: task 'b' \(stage 's'\), where the machine stopped, is no longer in pipeline 'rz'/);
    // plan says between which versions, as resume does (F6)
    expect(plan.refused.message).toMatch(/it stopped under rz@1\.1\.0; the content in use is rz@1\.2\.0/);
    // describe gives the same verdict, never "resume" (F17)
    const d = await json<{ waitingFor: { for: string; text: string } }>(['machines', 'describe', 'rm']);
    expect(d.waitingFor.for).toBe('operator');
    expect(d.waitingFor.text).toMatch(/resume would be refused: task 'b' \(stage 's'\)/);
    expect(d.waitingFor.text).toMatch(/takt machines restart rm/);
    expect(d.waitingFor.text).not.toMatch(/then takt machines resume/);

    const r = await ep.cli(['machines', 'resume', 'rm']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/machine 'rm' cannot resume: task 'b' \(stage 's'\), where the machine stopped, is no longer in pipeline 'rz'/);
    expect(r.stderr).toMatch(/it stopped under rz@1\.1\.0; the content in use is rz@1\.2\.0/);
    expect(r.stderr).toMatch(/takt machines restart rm/);
    // the content way out is a command to type, with the installed version that has the task (F6)
    expect(r.stderr).toMatch(/put rz@1\.1\.0, which has the task, back in use \(`takt content use rz@1\.1\.0`\)/);
    const api = await ep.call('POST', '/machines/rm/resume');
    expect(api.status).toBe(409);
    expect(api.body.error).toMatchObject({ code: 'conflict', details: { change: 'vanished', tasks: [{ stage: 's', task: 'b' }], stoppedUnder: 'rz@1.1.0', now: 'rz@1.2.0', remedies: ['takt machines restart rm', 'takt content use rz@1.1.0'] } });
    // nothing moved: still stopped on b, and it never reached done
    expect(await json<MachineView>(['machines', 'get', 'rm'])).toMatchObject({ state: 'stopped', task: 'b' });

    // the way out that the message names works: a restart runs the pipeline in use from the top
    expect((await ep.cli(['machines', 'restart', 'rm'])).code).toBe(0);
    expect((await settled('rm', ['stopped', 'done'])).state).toBe('done');
  });
});

describe('work orders resume', () => {
  it('a failed work order continues from its failed task with its original secure params; what succeeded does not run again', { timeout: 180_000 }, async () => {
    await json(['machines', 'create', 'wo', '--broker', 'local']);
    const w = await json<{ id: string }>(['workorders', 'create', '--machine', 'wo', '--blueprint', 'fix', '--param', 'api_key=s3cret-42']);
    let wo: { state: string; reason: string | null } | undefined;
    for (let i = 0; i < 600; i++) {
      wo = await json<{ state: string; reason: string | null }>(['workorders', 'get', w.id]);
      if (wo.state === 'failed' || wo.state === 'succeeded') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(wo).toMatchObject({ state: 'failed', reason: "task 'wb' failed with exit code 4" });

    // the cause is fixed on the machine; the work order keeps the params it was created with
    expect((await ep.cli(['machines', 'update', 'wo', '--param', 'wb_ok=true'])).code).toBe(0);
    const resumed = await json<{ state: string; params: Record<string, unknown> }>(['workorders', 'resume', w.id]);
    expect(resumed.state).toBe('queued');
    expect(resumed.params.api_key).not.toBe('s3cret-42'); // masked, never shown
    for (let i = 0; i < 600; i++) {
      wo = await json<{ state: string; reason: string | null }>(['workorders', 'get', w.id]);
      if (wo.state === 'failed' || wo.state === 'succeeded') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(wo!.state, wo!.reason ?? '').toBe('succeeded');
    const jobs = await json<Array<{ task: string; state: string }>>(['jobs', 'list', '--workorder', w.id, '--order', 'asc']);
    expect(jobs.map((j) => `${j.task}:${j.state}`)).toEqual(['wa:succeeded', 'wb:failed', 'wb:succeeded']);

    // only failed or cancelled work orders resume; a succeeded one is refused with the reason
    const again = await ep.cli(['workorders', 'resume', w.id]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/has succeeded: only a failed or cancelled work order can be resumed \(it has nothing left to run\)/);
    expect((await ep.call('POST', `/workorders/${w.id}/resume`)).status).toBe(409);
    expect((await ep.call('POST', '/workorders/w-nope/resume')).status).toBe(404);
  });
});

describe('work orders resume: cancelled and not ended', () => {
  it('a queued work order is refused (not ended); cancelled, it resumes to queued again', async () => {
    // no broker, so no agent: the work order stays queued
    await json(['machines', 'create', 'noagent']);
    const w = await json<{ id: string }>(['workorders', 'create', '--machine', 'noagent', '--blueprint', 'fix', '--param', 'api_key=s3cret-42']);
    const early = await ep.cli(['workorders', 'resume', w.id]);
    expect(early.code).not.toBe(0);
    expect(early.stderr).toMatch(/is queued: only a failed or cancelled work order can be resumed \(it has not ended; cancel it first/);
    expect(await json(['workorders', 'cancel', w.id])).toMatchObject({ state: 'cancelled' });
    expect(await json(['workorders', 'resume', w.id])).toMatchObject({ state: 'queued', reason: null, finishedAt: null });
    const plan = await json<{ workOrders: Array<{ id: string; steps: Array<{ task: string }> }> }>(['plan', 'noagent']);
    expect(plan.workOrders.find((x) => x.id === w.id)?.steps.map((s) => s.task)).toEqual(['wa', 'wb']);
  });
});

describe('work-order params must be declared by a task of the blueprint (F12)', () => {
  it('a typo is refused with the closest name; a name no task of it reads is refused with the list; --allow-undeclared stores it', async () => {
    await json(['machines', 'create', 'typo']);
    const typo = await ep.cli(['workorders', 'create', '--machine', 'typo', '--blueprint', 'fix', '--param', 'api_kee=s3cret-42']);
    expect(typo.code).not.toBe(0);
    expect(typo.stderr).toMatch(/param 'api_kee' is not declared by any task of blueprint 'fix' \(did you mean 'api_key'\?\); to store it anyway, pass --allow-undeclared/);
    // declared by some content (task b), but by no task of this blueprint: it would change nothing
    const other = await ep.call('POST', '/workorders', { machine: 'typo', blueprint: 'fix', params: { fail_b: true } });
    expect(other.status).toBe(422);
    expect(other.body.error).toMatchObject({ code: 'invalid', path: '/params/fail_b' });
    expect(other.body.error.message).toMatch(/they declare: api_key, wb_ok/);
    expect(await json<unknown[]>(['workorders', 'list', '--machine', 'typo'])).toEqual([]);
    const forced = await json<{ params: Record<string, unknown> }>(['workorders', 'create', '--machine', 'typo', '--blueprint', 'fix', '--param', 'fail_b=true', '--allow-undeclared']);
    expect(forced.params).toEqual({ fail_b: true });
  });
});

describe('machines stored before positions were kept by identity', () => {
  it('are upgraded at start from their old indices: the tasks before the index succeeded, the one at it is where they stand', async () => {
    // rz@1.2.0 is in use: stage s = [new, a]. A machine without a broker has no agent: nothing moves it.
    await json(['machines', 'create', 'old', '--pipeline', 'rz']);
    await ep.crash();
    const db = new Database(join(ep.data, 'takt.db'));
    try {
      // As 0010 left it: index position (task 1 of stage 0, stage 0 approved), no identity columns.
      db.prepare("update machines set passed = null, stage = null, task = null, approved_stage_key = null, stage_index = 0, task_index = 1, approved_stage = 0, state = 'stopped' where name = 'old'").run();
    } finally {
      db.close();
    }
    await ep.boot();
    expect(await json(['machines', 'get', 'old'])).toMatchObject({ state: 'stopped', stage: 's', task: 'a', passed: ['s/new'], approvedStage: 's' });
    const plan = await json<{ steps: Array<{ task: string }> }>(['plan', 'old']);
    expect(plan.steps.map((s) => s.task)).toEqual(['a']);
  });
});

describe('resume by identity through the CLI: the other content changes (issue 12 table)', () => {
  // Each row: a machine stops on `b` of [a, b] (a succeeded), version `${major}.1.0` changes the stage, the
  // cause is fixed, and plan and resume agree: what is left runs, nothing succeeded runs again, nothing is
  // skipped, or the resume is refused with what changed and what to do.
  type Row = [name: string, major: number, tasks: string[], want: { plan: string[]; ran: string[] } | { refused: RegExp }];
  const rows: Row[] = [
    ['insert-after [a, b, new]: b, then new', 2, ['a', 'b', 'new'], { plan: ['s/b', 's/new'], ran: ['a:succeeded', 'b:failed', 'b:succeeded', 'new:succeeded'] }],
    ['remove-before [b]: b runs again (not skipped), then done', 3, ['b'], { plan: ['s/b'], ran: ['a:succeeded', 'b:failed', 'b:succeeded'] }],
    ['reorder [b, a]: refused, a succeeded before b but now comes after it', 4, ['b', 'a'], { refused: /task 'a' \(stage 's'\) succeeded before task 'b' \(stage 's'\), where the machine stopped, but pipeline 'rz' now runs it after/ }],
  ];
  it.each(rows)('%s', async (_name, major, tasks, want) => {
    const name = `t${major}`;
    await publish(`${major}.0.0`, ['a', 'b']);
    await json(['machines', 'create', name, '--broker', 'local', '--pipeline', 'rz', '--param', 'fail_b=true']);
    expect(await settled(name, ['stopped', 'done'])).toMatchObject({ state: 'stopped', stage: 's', task: 'b', passed: ['s/a'] });
    await publish(`${major}.1.0`, tasks);
    expect((await ep.cli(['machines', 'update', name, '--param', 'fail_b=false'])).code).toBe(0);
    const plan = await json<{ from: string; refused: { message: string } | null; steps: Array<{ stage: string; task: string }> }>(['plan', name]);
    const resumed = await ep.cli(['machines', 'resume', name]);
    if ('refused' in want) {
      expect(plan).toMatchObject({ from: 'refused', steps: [] });
      expect(plan.refused!.message).toMatch(want.refused);
      expect(resumed.code).not.toBe(0);
      expect(resumed.stderr).toMatch(want.refused);
      expect(resumed.stderr).toMatch(new RegExp(`takt machines restart ${name}`));
      expect(await json<MachineView>(['machines', 'get', name])).toMatchObject({ state: 'stopped', task: 'b' });
      expect(await ran(name)).toEqual(['a:succeeded', 'b:failed']);
      return;
    }
    expect(plan.refused).toBeNull();
    expect(plan.steps.map((s) => `${s.stage}/${s.task}`)).toEqual(want.plan);
    expect((await ep.cli(['plan', name])).stdout).not.toMatch(/nothing left to run/);
    expect(resumed.code, resumed.stderr).toBe(0);
    const end = await settled(name, ['stopped', 'done']);
    expect(end.state, end.reason ?? '').toBe('done');
    expect(await ran(name)).toEqual(want.ran);
    // done only with every task of the pipeline it was resumed on succeeded in this pass
    for (const t of tasks) expect(end.passed).toContain(`s/${t}`);
  }, 180_000);
});

describe('a task with retries: 1', () => {
  it('labels its first failure "attempt 1 of 2; retrying" and the last "attempt 2 of 2; no retries left"', async () => {
    await publish('5.0.0', ['r']);
    await json(['machines', 'create', 'rt', '--broker', 'local', '--pipeline', 'rz']);
    const m = await settled('rt', ['stopped', 'done']);
    expect(m).toMatchObject({ state: 'stopped', task: 'r', reason: "task 'r' failed with exit code 2 (attempt 2 of 2; no retries left)" });
    const jobs = await json<Array<{ reason: string | null }>>(['jobs', 'list', '--machine', 'rt', '--order', 'asc']);
    expect(jobs.map((j) => j.reason)).toEqual(["task 'r' failed with exit code 2 (attempt 1 of 2; retrying)", "task 'r' failed with exit code 2 (attempt 2 of 2; no retries left)"]);
    expect((await ep.cli(['jobs', 'list', '--machine', 'rt'])).stdout).not.toMatch(/retry 1 of 1/);
  }, 120_000);
});
