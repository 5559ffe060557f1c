/**
 * Issue 3: rollouts in waves with a canary, a failure budget (andon), approvals between waves, pause,
 * resume, abort, retry of only the failed machines, and `takt andon pull` — real agents, through the CLI.
 */
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, Machine } from '../src/model/machine.js';
import { planAction, type Busy } from '../src/engine/rollouts.js';
import { Endpoint, packFiles, until } from './helpers/endpoint.js';

let ep: Endpoint;

interface View {
  id: string;
  state: string;
  reason: string | null;
  wave: number;
  waves: number;
  counts: { pending: number; waiting: number; running: number; succeeded: number; failed: number; skipped: number };
  items: Array<{ machineName: string; wave: number; state: string; reason: string | null }>;
}

const rollout = (id: string) => ep.api.get<View>(`/rollouts/${id}`);
const waitState = (id: string, states: string[]) =>
  until(async () => {
    const r = await rollout(id);
    return states.includes(r.state) ? r : null;
  }, 60_000, `rollout ${id} to be ${states.join('/')}`);
const jobsOf = async (name: string) => (await ep.api.get<{ items: Job[] }>('/jobs', { machine: name, limit: 1000 })).items;

beforeAll(async () => {
  ep = await Endpoint.start();
  await ep.api.post('/packs', { files: await packFiles('basic') });
  const made = await ep.cli(['machines', 'create', 'fleet', '--broker', 'local', '--count', '6']);
  expect(made.code, made.stderr).toBe(0);
});
afterAll(async () => ep?.stop());

describe('rollouts', () => {
  it('a canary that fails stops the rollout before wave 2, with nothing else touched; retry re-runs only it', async () => {
    await ep.api.patch('/machines/fleet-1', { params: { code: 3 } });
    const r = await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'name=fleet', '--canary', '1', '--batch', '5', '--max-failures', '0']);
    expect(r.code).toBe(1); // the watch ends with the rollout stopped
    expect(r.stdout).toMatch(/canary\s+\S+ 0\/1 ok 1 failed/);
    expect(r.stdout).toMatch(/fleet-1: task 'fail-if' failed with exit code 3/);
    const [view] = (await ep.api.get<{ items: View[] }>('/rollouts')).items;
    // stopped by the andon, it says what to do next (F19)
    expect(r.stdout).toContain(`Fix the cause, then re-run its failed machines with \`takt rollouts retry ${view!.id}\`, or end it with \`takt rollouts abort ${view!.id}\``);
    expect(view!.state).toBe('stopped');
    expect(view!.reason).toBe("andon: 1 failure(s) with a budget of 0; fleet-1: task 'fail-if' failed with exit code 3");
    expect(view!.counts).toMatchObject({ failed: 1, pending: 5, running: 0, succeeded: 0 });
    for (const n of [2, 3, 4, 5, 6]) {
      expect(await jobsOf(`fleet-${n}`)).toHaveLength(0);
      expect((await ep.api.get<Machine>(`/machines/fleet-${n}`)).state).toBe('idle');
    }
    // the failing machine stays stopped with its log
    const failedJob = (await jobsOf('fleet-1')).find((j) => j.state === 'failed')!;
    const log = await ep.cli(['jobs', 'log', failedJob.id]);
    expect(log.stdout).toContain('about to exit 3');

    // fix the cause, retry: only the failed machine runs again, then the rest of the waves
    await ep.api.patch('/machines/fleet-1', { params: { code: null } });
    // retry shows the same progress as create, until the rollout ends
    const retried = await ep.cli(['rollouts', 'retry', view!.id]);
    expect(retried.code, retried.stderr).toBe(0);
    expect(retried.stdout).toMatch(/canary\s+\S+ 1\/1 ok/);
    expect(retried.stdout).toMatch(/wave 2\s+\S+ 5\/5 ok/);
    expect(retried.stdout).toMatch(/completed — 6 of 6 succeeded/);
    const done = await waitState(view!.id, ['completed', 'stopped']);
    expect(done.state).toBe('completed');
    expect(done.counts).toMatchObject({ succeeded: 6, failed: 0 });
    expect(done.reason).toBe('6 of 6 succeeded');
    for (const n of [1, 2, 3, 4, 5, 6]) expect((await ep.api.get<Machine>(`/machines/fleet-${n}`)).state).toBe('done');
  });

  it('waits for approval between waves, and keeps to the in-flight limit', async () => {
    const r = await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'name=fleet', '--canary', '2', '--batch', '2', '--max-in-flight', '1', '--approve-between-waves']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/awaiting-approval: wave 1 of 3 is through; approve to start wave 2/);
    const [view] = (await ep.api.get<{ items: View[] }>('/rollouts')).items;
    expect(view!.counts).toMatchObject({ succeeded: 2, pending: 4 });
    // one at a time: the canary's two machines ran one after the other
    const a = await jobsOf('fleet-1');
    const b = await jobsOf('fleet-2');
    const lastA = Math.max(...a.slice(0, 4).map((j) => Date.parse(j.finishedAt!)));
    const firstB = Math.min(...b.slice(0, 4).map((j) => Date.parse(j.createdAt)));
    expect(firstB).toBeGreaterThanOrEqual(lastA);

    expect((await ep.cli(['rollouts', 'approve', view!.id])).code).toBe(0);
    const held = await waitState(view!.id, ['awaiting-approval']);
    expect(held.wave).toBe(1);
    expect(held.counts).toMatchObject({ succeeded: 4, pending: 2 });
    expect((await ep.cli(['rollouts', 'approve', view!.id])).code).toBe(0);
    expect((await waitState(view!.id, ['completed'])).counts.succeeded).toBe(6);
  });

  it('andon pull pauses every running rollout; resume continues; abort skips what has not started', async () => {
    // Approval between waves gives the rollout a place to hold that does not depend on how fast agents are.
    const created = JSON.parse(
      (await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'name=fleet', '--canary', '0', '--batch', '2', '--max-in-flight', '1', '--approve-between-waves', '--no-wait', '-o', 'json'])).stdout,
    ) as View;
    expect(created.waves).toBe(3);
    const pulled = await ep.cli(['andon', 'pull']);
    expect(pulled.stdout).toContain(`paused ${created.id}`);
    const paused = await rollout(created.id);
    expect(paused).toMatchObject({ state: 'paused', reason: 'andon pulled by admin' });
    // Approving a paused rollout says what state it is in and which verb helps.
    const approve = await ep.cli(['rollouts', 'approve', created.id]);
    expect(approve.code).toBe(1);
    expect(approve.stderr).toContain(
      `cannot approve rollout ${created.id}: it is paused (andon pulled by admin); approve applies to a rollout that is awaiting-approval. Continue it with \`takt rollouts resume ${created.id}\``,
    );
    // Nothing new starts while paused (what was running may finish). The wait cannot make this pass
    // wrongly: a rollout that is not held would only have more machines started.
    const started = (v: View) => v.items.length - v.counts.pending;
    await new Promise((res) => setTimeout(res, 1500));
    const stillPaused = await rollout(created.id);
    expect(stillPaused.state).toBe('paused');
    expect(started(stillPaused)).toBe(started(paused));
    // Resumed, it runs wave 1 and holds for approval before wave 2; resume follows the progress until then.
    const resumed = await ep.cli(['rollouts', 'resume', created.id]);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stdout).toMatch(/awaiting-approval: wave 1 of 3 is through; approve to start wave 2/);
    const held = await waitState(created.id, ['awaiting-approval']);
    expect(held.counts).toMatchObject({ succeeded: 2, pending: 4 });
    const aborted = JSON.parse((await ep.cli(['rollouts', 'abort', created.id, '-o', 'json'])).stdout) as View;
    expect(aborted.state).toBe('aborted');
    expect(aborted.counts).toMatchObject({ succeeded: 2, skipped: 4 });
    const again = await ep.cli(['rollouts', 'resume', created.id]);
    expect(again.stderr).toMatch(new RegExp(`cannot resume rollout ${created.id}: it is aborted \\(aborted by admin\\); resume applies to a rollout that is paused\\. It has ended: \`takt rollouts retry ${created.id}\``));
    const retryNothing = await ep.cli(['rollouts', 'retry', created.id]);
    expect(retryNothing.stderr).toContain(`cannot retry rollout ${created.id}: it is aborted (aborted by admin) and has no failed machines to retry.`);
  });

  it('refuses bad rollouts clearly', async () => {
    expect((await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'name=nothing-like-this'])).stderr).toMatch(/matches no machine/);
    expect((await ep.cli(['rollouts', 'create', '--pipeline', 'nope', '--select', 'name=fleet'])).stderr).toMatch(/pipeline 'nope' not found/);
    expect((await ep.cli(['rollouts', 'create', '--select', 'name=fleet'])).stderr).toMatch(/either a pipeline or a blueprint/);
    expect((await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'colour=red'])).stderr).toMatch(/unknown selector 'colour'/);
  });

  it('runs a blueprint as work orders across the fleet', async () => {
    const r = await ep.cli(['rollouts', 'create', '--blueprint', 'scan', '--select', 'name=fleet', '--canary', '1', '--batch', '5']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/completed — 6 of 6 succeeded/);
    const wos = await ep.api.get<{ items: Array<{ state: string }> }>('/workorders', { limit: 100 });
    expect(wos.items.filter((w) => w.state === 'succeeded')).toHaveLength(6);
  });
});

/**
 * Busy machines: a rollout says what it will do to them and waits for them by default. The busy job is a
 * `gate` task that runs until the test creates `go` in the machine's root: no timing involved.
 */
describe('rollouts and busy machines', () => {
  const gates = {
    'pack.yaml': 'name: gates\nversion: 1.0.0\n',
    'tasks/gate.yaml': 'name: gate\nscript: |\n  until [ -e "$TAKT_ROOT/go" ]; do sleep 0.05; done\n  echo released\n',
    'tasks/after-gate.yaml': 'name: after-gate\nscript: echo after\n',
    'stages/gated.yaml': 'name: gated\ntasks: [gate, after-gate]\n',
    'pipelines/gated.yaml': 'name: gated\nstages: [gated]\n',
  };
  interface PlanItem { machineName: string; pipeline: string | null; state: string; job: { id: string; task: string } | null; wave: number; action: string; detail: string }
  const machine = (name: string) => ep.api.get<Machine>(`/machines/${name}`);
  const goFile = async (name: string) => join(ep.data, 'machines', (await machine(name)).id, 'root', 'go');
  /** Puts the machine on the gated pipeline and waits until its gate job runs; answers that job. */
  const gate = async (name: string): Promise<Job> => {
    rmSync(await goFile(name), { force: true });
    await ep.api.patch(`/machines/${name}`, { pipeline: 'gated' });
    return until(async () => (await jobsOf(name)).find((j) => j.task === 'gate' && j.state === 'running'), 60_000, `${name}'s gate job to run`);
  };
  const open = async (name: string) => writeFileSync(await goFile(name), '');
  const rollouts = async () => (await ep.api.get<{ items: View[] }>('/rollouts')).items;

  beforeAll(async () => {
    await ep.api.post('/packs', { files: gates });
    const made = await ep.cli(['machines', 'create', 'busy', '--broker', 'local', '--count', '2']);
    expect(made.code, made.stderr).toBe(0);
  });

  it('--dry-run lists each machine, its job, wave and what would happen to it, and creates nothing', async () => {
    const job = await gate('busy-1');
    const before = (await rollouts()).length;
    const jobsBefore = (await jobsOf('busy-2')).length;
    const expected = { wait: `wait for job ${job.id} (task gate) to end, then reassign to pipeline basic (from the top)`, skip: 'busy (job ' + job.id + ' (task gate)): left out', cancel: `cancel job ${job.id} (task gate), then reassign to pipeline basic (from the top)` };
    for (const busy of ['wait', 'skip', 'cancel'] as const) {
      const r = await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'name=busy', '--canary', '1', '--busy', busy, '--dry-run', '-o', 'json']);
      expect(r.code, r.stderr).toBe(0);
      const plan = JSON.parse(r.stdout) as { dryRun: boolean; items: PlanItem[] };
      expect(plan.dryRun).toBe(true);
      expect(plan.items).toEqual([
        { machineName: 'busy-1', pipeline: 'gated', state: 'running', job: { id: job.id, task: 'gate' }, wave: 0, action: busy, detail: expected[busy] },
        { machineName: 'busy-2', pipeline: null, state: 'idle', job: null, wave: 1, action: 'reassign', detail: 'reassign to pipeline basic (from the top)' },
      ]);
    }
    const table = await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'name=busy', '--dry-run']);
    expect(table.stdout).toContain('nothing was created');
    expect(table.stdout).toMatch(new RegExp(`busy-1 .*gated .*running .*${job.id} \\(gate\\) .*canary .*wait`));
    // Nothing was created or touched.
    expect((await rollouts()).length).toBe(before);
    expect((await jobsOf('busy-2')).length).toBe(jobsBefore);
    expect((await jobsOf('busy-1')).find((j) => j.id === job.id)!.state).toBe('running');
  });

  it('-l selects the machines by label (with --select)', async () => {
    await ep.api.patch('/machines/busy-2', { labels: { tier: 'canary' } });
    const r = await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '-l', 'tier=canary', '--dry-run', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { items: PlanItem[] }).items.map((i) => i.machineName)).toEqual(['busy-2']);
    const both = await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'name=fleet', '-l', 'tier=canary']);
    expect(both.stderr).toMatch(/the selection name=fleet, labels tier=canary matches no machine/);
    const bad = await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '-l', 'tier=a b']);
    expect(bad.stderr).toMatch(/label selector term 'tier=a b'/);
  });

  it('--busy wait (the default): the wave waits for the job to end, then reassigns the machine before its next task', async () => {
    const job = (await jobsOf('busy-1')).find((j) => j.task === 'gate' && j.state === 'running')!;
    const created = JSON.parse((await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'name=busy', '--canary', '0', '--batch', '2', '--no-wait', '-o', 'json'])).stdout) as View;
    const waiting = await until(async () => {
      const r = await rollout(created.id);
      return r.items.find((i) => i.machineName === 'busy-1')?.state === 'waiting' && r.items.find((i) => i.machineName === 'busy-2')?.state === 'succeeded' ? r : null;
    }, 60_000, 'busy-1 waited for, busy-2 done');
    expect(waiting.state).toBe('running');
    expect(waiting.items.find((i) => i.machineName === 'busy-1')!.reason).toBe(`waiting for job ${job.id} (task gate) to end`);
    // The status says what the rollout waits for.
    const shownGet = await ep.cli(['rollouts', 'get', created.id]);
    expect(shownGet.stdout).toContain(`waiting for busy-1: job ${job.id} (task gate) to end`);
    expect((await ep.cli(['rollouts', 'list'])).stdout).toMatch(new RegExp(`${created.id} .*running.* busy-1(\\s|$)`, 'm'));
    expect((await jobsOf('busy-1')).find((j) => j.id === job.id)!.state).toBe('running');

    await open('busy-1');
    const done = await waitState(created.id, ['completed', 'stopped']);
    expect(done.reason).toBe('2 of 2 succeeded');
    expect(done.items.find((i) => i.machineName === 'busy-1')!.reason).toBe(`waited for job ${job.id} (task gate)`);
    const jobs = await jobsOf('busy-1');
    // The job was not cancelled, and the gated pipeline's next task never started: the machine was reassigned between them.
    expect(jobs.find((j) => j.id === job.id)).toMatchObject({ state: 'succeeded' });
    expect(jobs.filter((j) => j.task === 'after-gate')).toHaveLength(0);
    expect(await machine('busy-1')).toMatchObject({ pipeline: 'basic', state: 'done' });
  });

  it('--busy skip leaves the busy machine out and the report says so', async () => {
    const job = await gate('busy-1');
    const r = await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'name=busy', '--canary', '0', '--busy', 'skip']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/completed — 1 of 2 succeeded, 1 skipped \(busy: busy-1\)/);
    const [view] = await rollouts();
    expect(view!.items.find((i) => i.machineName === 'busy-1')).toMatchObject({ state: 'skipped', reason: `busy: job ${job.id} (task gate); left out (--busy skip)` });
    expect((await jobsOf('busy-1')).find((j) => j.id === job.id)!.state).toBe('running');
    expect((await machine('busy-1')).pipeline).toBe('gated');
  });

  it('--busy cancel cancels the job saying who and why, then reassigns', async () => {
    const job = (await jobsOf('busy-1')).find((j) => j.task === 'gate' && j.state === 'running')!;
    const r = await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'name=busy-1', '--busy', 'cancel']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/completed — 1 of 1 succeeded/);
    const [view] = await rollouts();
    const jobs = await jobsOf('busy-1');
    expect(jobs.find((j) => j.id === job.id)).toMatchObject({ state: 'cancelled', reason: `cancelled by admin (rollout ${view!.id}): the rollout takes over this busy machine (--busy cancel)` });
    expect(view!.items[0]).toMatchObject({ state: 'succeeded', reason: `cancelled job ${job.id} (task gate)` });
    expect(jobs.filter((j) => j.task === 'after-gate')).toHaveLength(0);
    expect(await machine('busy-1')).toMatchObject({ pipeline: 'basic', state: 'done' });
    expect(existsSync(await goFile('busy-1'))).toBe(false);
  });
});

describe('machines deleted during a rollout (F30)', () => {
  const machine = (name: string) => ep.api.get<Machine>(`/machines/${name}`);
  const item = (r: View, name: string) => r.items.find((i) => i.machineName === name);

  it('a running canary deleted on purpose is left out ("machine deleted by …"), not a failure: the next wave runs', async () => {
    const made = await ep.cli(['machines', 'create', 'gone', '--broker', 'local', '--count', '2']);
    expect(made.code, made.stderr).toBe(0);
    // gone-2's gate is open before its turn; gone-1's never is: it is busy on the gate when deleted
    writeFileSync(join(ep.data, 'machines', (await machine('gone-2')).id, 'root', 'go'), '');
    const c = await ep.cli(['rollouts', 'create', '--pipeline', 'gated', '--select', 'name=gone', '--canary', '1', '--batch', '1', '--no-wait', '-o', 'json']);
    expect(c.code, c.stderr).toBe(0);
    const id = (JSON.parse(c.stdout) as View).id;
    await until(async () => (await jobsOf('gone-1')).find((j) => j.task === 'gate' && j.state === 'running'), 60_000, "gone-1's gate job to run");
    expect((await ep.cli(['machines', 'rm', 'gone-1'])).code).toBe(0);
    const done = await waitState(id, ['completed', 'stopped']);
    expect(done.state, done.reason ?? '').toBe('completed');
    expect(item(done, 'gone-1')).toMatchObject({ state: 'skipped', reason: 'machine deleted by admin; left out' });
    expect(item(done, 'gone-2')?.state).toBe('succeeded');
    expect(done.reason).toBe('1 of 2 succeeded, 1 skipped (deleted: gone-1)');
  });

  it('retry of a stopped rollout leaves out machines deleted since (failed or pending), names them, never their ids', async () => {
    const made = await ep.cli(['machines', 'create', 'del', '--broker', 'local', '--count', '3']);
    expect(made.code, made.stderr).toBe(0);
    await ep.api.patch('/machines/del-1', { params: { code: 3 } });
    const r = await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'name=del', '--canary', '1', '--batch', '1']);
    expect(r.code).toBe(1);
    const id = (await ep.api.get<{ items: View[] }>('/rollouts')).items.find((x) => x.items.some((i) => i.machineName === 'del-1'))!.id;
    expect((await rollout(id)).state).toBe('stopped');
    // del-1 (failed) and del-2 (not started) are decommissioned; retry must get past them
    for (const n of ['del-1', 'del-2']) expect((await ep.cli(['machines', 'rm', n])).code).toBe(0);
    const retried = await ep.cli(['rollouts', 'retry', id]);
    expect(retried.code, retried.stdout + retried.stderr).toBe(0);
    expect(retried.stdout).not.toMatch(/m-[0-9a-f]{6,}/);
    const done = await waitState(id, ['completed', 'stopped']);
    expect(done.state, done.reason ?? '').toBe('completed');
    expect(item(done, 'del-1')).toMatchObject({ state: 'skipped', reason: 'machine deleted by admin; left out' });
    expect(item(done, 'del-2')).toMatchObject({ state: 'skipped', reason: 'machine deleted by admin; left out' });
    expect(item(done, 'del-3')?.state).toBe('succeeded');
    expect(done.reason).toBe('1 of 3 succeeded, 2 skipped (deleted: del-1, del-2)');
  });

  it('a blueprint rollout leaves out a machine deleted before its turn', async () => {
    const made = await ep.cli(['machines', 'create', 'bdel', '--broker', 'local', '--count', '2']);
    expect(made.code, made.stderr).toBe(0);
    const c = await ep.cli(['rollouts', 'create', '--blueprint', 'scan', '--select', 'name=bdel', '--canary', '1', '--batch', '1', '--approve-between-waves', '--no-wait', '-o', 'json']);
    expect(c.code, c.stderr).toBe(0);
    const id = (JSON.parse(c.stdout) as View).id;
    expect((await waitState(id, ['awaiting-approval', 'stopped', 'completed'])).state).toBe('awaiting-approval');
    expect((await ep.cli(['machines', 'rm', 'bdel-2'])).code).toBe(0);
    expect((await ep.cli(['rollouts', 'approve', id, '--no-wait'])).code).toBe(0);
    const done = await waitState(id, ['completed', 'stopped']);
    expect(done.state, done.reason ?? '').toBe('completed');
    expect(item(done, 'bdel-2')).toMatchObject({ state: 'skipped', reason: 'machine deleted by admin; left out' });
    expect(done.reason).toBe('1 of 2 succeeded, 1 skipped (deleted: bdel-2)');
  });
});

describe('what a rollout does to a machine (dry run)', () => {
  const job: Busy = { job: { id: 'j-1', task: 'build' }, what: 'job j-1 (task build)' };
  const held: Busy = { job: null, what: 'it is awaiting-approval' };
  const reassign = 'reassign to pipeline web (from the top)';
  it.each([
    ['web', 'wait', null, 'reassign', reassign],
    ['web', 'wait', job, 'wait', `wait for job j-1 (task build) to end, then ${reassign}`],
    ['web', 'wait', held, 'wait', `wait while awaiting-approval, then ${reassign}`],
    ['web', 'skip', job, 'skip', 'busy (job j-1 (task build)): left out'],
    ['web', 'skip', held, 'skip', 'busy (awaiting-approval): left out'],
    ['web', 'cancel', job, 'cancel', `cancel job j-1 (task build), then ${reassign}`],
    ['web', 'cancel', held, 'reassign', `${reassign}; it is awaiting-approval and that is given up`],
    [undefined, 'wait', null, 'queue', 'queue blueprint scan as a work order'],
    [undefined, 'wait', job, 'wait', 'wait for job j-1 (task build) to end, then queue blueprint scan as a work order'],
  ] as const)('pipeline %s, --busy %s, busy %o: %s', (pipeline, busy, b, action, detail) => {
    const spec = pipeline ? { pipeline, busy } : { blueprint: 'scan', busy };
    expect(planAction(spec, b)).toEqual({ action, detail });
  });
});
