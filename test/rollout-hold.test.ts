/**
 * A rollout's hold on a busy machine (`--busy wait`) is kept in the store (migration 0015_rollout_hold):
 * an endpoint restart while the rollout waits does not let the machine run its old pipeline's next task.
 * The busy job is a `gate` task that runs until the test creates `go` in the machine's root; the endpoint
 * is down (kill -9, agents stay up) when the gate opens, so the job's result reaches the restarted
 * endpoint, whose claim must find the hold in the store. No timing involved.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import SQLite from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, Machine } from '../src/model/machine.js';
import { Endpoint, packFiles, until } from './helpers/endpoint.js';

let ep: Endpoint;

interface View {
  id: string;
  state: string;
  reason: string | null;
  items: Array<{ machineName: string; state: string; reason: string | null }>;
}

const gates = {
  'pack.yaml': 'name: gates\nversion: 1.0.0\n',
  'tasks/gate.yaml': 'name: gate\nscript: |\n  until [ -e "$TAKT_ROOT/go" ]; do sleep 0.05; done\n  echo released\n',
  'tasks/after-gate.yaml': 'name: after-gate\nscript: echo after\n',
  'stages/gated.yaml': 'name: gated\ntasks: [gate, after-gate]\n',
  'pipelines/gated.yaml': 'name: gated\nstages: [gated]\n',
};

const machine = (name: string) => ep.api.get<Machine>(`/machines/${name}`);
const jobsOf = async (name: string) => (await ep.api.get<{ items: Job[] }>('/jobs', { machine: name, limit: 1000 })).items;
/** The holds in the endpoint's store, read from its SQLite file (the endpoint may be down). */
function storedHolds(): Array<{ machine_id: string; rollout_id: string }> {
  const db = new SQLite(join(ep.data, 'takt.db'), { readonly: true, fileMustExist: true });
  try {
    return db.prepare('select machine_id, rollout_id from machine_holds order by machine_id').all() as Array<{ machine_id: string; rollout_id: string }>;
  } finally {
    db.close();
  }
}

beforeAll(async () => {
  ep = await Endpoint.start();
  await ep.api.post('/packs', { files: await packFiles('basic') });
  await ep.api.post('/packs', { files: gates });
  const made = await ep.cli(['machines', 'create', 'held', '--broker', 'local', '--pipeline', 'gated']);
  expect(made.code, made.stderr).toBe(0);
}, 120_000);
afterAll(async () => ep?.stop());

describe('rollout --busy wait across an endpoint restart', () => {
  it('the hold is in the store: after a restart the finished job is followed by the rollout, not the old pipeline', { timeout: 180_000 }, async () => {
    const held = await machine('held');
    const job = await until(async () => (await jobsOf('held')).find((j) => j.task === 'gate' && j.state === 'running'), 60_000, 'the gate job to run');
    const created = await ep.cli(['rollouts', 'create', '--pipeline', 'basic', '--select', 'name=held', '--canary', '0', '--busy', 'wait', '--no-wait', '-o', 'json']);
    expect(created.code, created.stderr).toBe(0);
    const rolloutId = (JSON.parse(created.stdout) as View).id;
    await until(async () => (await ep.api.get<View>(`/rollouts/${rolloutId}`)).items[0]?.state === 'waiting', 60_000, 'the rollout to wait for held');
    await until(async () => storedHolds().length === 1, 30_000, 'the hold to be stored');
    expect(storedHolds()).toEqual([{ machine_id: held.id, rollout_id: rolloutId }]);
    // describe names the rollout that waits for the machine.
    const shown = await ep.cli(['machines', 'describe', 'held']);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toMatch(new RegExp(`^Rollout: +${rolloutId} \\(running, wave 0, this machine waiting\\)$`, 'm'));

    // Down while the hold stands; the gate opens meanwhile, so the job's result waits in its agent.
    await ep.crash();
    expect(storedHolds()).toEqual([{ machine_id: held.id, rollout_id: rolloutId }]);
    writeFileSync(join(ep.data, 'machines', held.id, 'root', 'go'), '');
    ep.output = '';
    await ep.boot();

    const done = await until(async () => {
      const r = await ep.api.get<View>(`/rollouts/${rolloutId}`);
      return r.state === 'completed' || r.state === 'stopped' ? r : null;
    }, 120_000, 'the rollout to end');
    expect(done.reason).toBe('1 of 1 succeeded');
    expect(done.items[0]).toMatchObject({ machineName: 'held', state: 'succeeded', reason: `waited for job ${job.id} (task gate)` });
    const jobs = await jobsOf('held');
    // The gate job was not cancelled nor lost, and the old pipeline's next task never started.
    expect(jobs.find((j) => j.id === job.id)).toMatchObject({ state: 'succeeded' });
    expect(jobs.filter((j) => j.task === 'after-gate')).toEqual([]);
    expect(await machine('held')).toMatchObject({ pipeline: 'basic', state: 'done' });
    // The rollout released its hold once it had reassigned the machine.
    expect(storedHolds()).toEqual([]);
  });
});
