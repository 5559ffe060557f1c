/**
 * Issue 3: rollouts in waves with a canary, a failure budget (andon), approvals between waves, pause,
 * resume, abort, retry of only the failed machines, and `takt andon pull` — real agents, through the CLI.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, Machine } from '../src/model/machine.js';
import { Endpoint, packFiles, until } from './helpers/endpoint.js';

let ep: Endpoint;

interface View {
  id: string;
  state: string;
  reason: string | null;
  wave: number;
  waves: number;
  counts: { pending: number; running: number; succeeded: number; failed: number; skipped: number };
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
    const retried = await ep.cli(['rollouts', 'retry', view!.id, '-o', 'json']);
    expect(retried.code, retried.stderr).toBe(0);
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
    // Nothing new starts while paused (what was running may finish). The wait cannot make this pass
    // wrongly: a rollout that is not held would only have more machines started.
    const started = (v: View) => v.items.length - v.counts.pending;
    await new Promise((res) => setTimeout(res, 1500));
    const stillPaused = await rollout(created.id);
    expect(stillPaused.state).toBe('paused');
    expect(started(stillPaused)).toBe(started(paused));
    expect((await ep.cli(['rollouts', 'resume', created.id])).code).toBe(0);
    // Resumed, it runs wave 1 and holds for approval before wave 2.
    const held = await waitState(created.id, ['awaiting-approval']);
    expect(held.counts).toMatchObject({ succeeded: 2, pending: 4 });
    const aborted = JSON.parse((await ep.cli(['rollouts', 'abort', created.id, '-o', 'json'])).stdout) as View;
    expect(aborted.state).toBe('aborted');
    expect(aborted.counts).toMatchObject({ succeeded: 2, skipped: 4 });
    expect((await ep.cli(['rollouts', 'resume', created.id])).stderr).toMatch(/is aborted .*only when paused/);
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
