/**
 * The operator in control, through the CLI against a real endpoint with real local agents: cancel a job
 * (its whole process group dies), pause and resume keeping the place, drain many machines, power off
 * mid-job, a task's exit 16, and `machines wait` for many machines, refusing what cannot be waited for.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles, until } from './helpers/endpoint.js';

interface M {
  id: string;
  name: string;
  state: string;
  reason: string | null;
  /** The position: the stage and task it runs next (or is held on). */
  stage: string | null;
  task: string | null;
  currentJob: string | null;
  power: string;
}
interface J {
  id: string;
  task: string;
  kind: string;
  state: string;
  reason: string | null;
  workOrderId: string | null;
}

let ep: Endpoint;
beforeAll(async () => {
  // A long lease: nothing here may end by a lease running out; every end must come from the operator.
  ep = await Endpoint.start({ lease: '30s' });
  await ep.api.post('/packs', { files: await packFiles('control') });
}, 120_000);
afterAll(async () => ep?.stop());

const machine = (name: string) => ep.api.get<M>(`/machines/${name}`);
const jobsOf = async (name: string) => (await ep.api.get<{ items: J[] }>('/jobs', { machine: name, order: 'asc', limit: 100 })).items;

async function create(name: string, pipeline: string | null, labels: string[] = []) {
  const args = ['machines', 'create', name, '--broker', 'local', ...(pipeline ? ['--pipeline', pipeline] : []), ...labels.flatMap((l) => ['--label', l])];
  const r = await ep.cli(args);
  expect(r.code, r.stderr).toBe(0);
}

/** The running `hold` job of a machine, once its script has said its PIDs and root. */
async function holding(name: string): Promise<{ job: J; pids: number[]; root: string }> {
  return until(
    async () => {
      const job = (await jobsOf(name)).find((j) => j.task === 'hold' && j.state === 'running');
      if (!job) return null;
      const log = await ep.api.get<{ chunks: Array<{ data: string }> }>(`/jobs/${job.id}/log`);
      const text = log.chunks.map((c) => c.data).join('');
      const pids = /PIDS (\d+) (\d+)/.exec(text);
      const root = /ROOT (\S+)/.exec(text);
      return pids && root ? { job, pids: [Number(pids[1]), Number(pids[2])], root: root[1]! } : null;
    },
    60_000,
    `${name} to run hold`,
  );
}

/** Whether a process is still running (a zombie holds nothing and counts as gone). */
function alive(pid: number): boolean {
  const stat = `/proc/${pid}/stat`;
  if (!existsSync(stat)) return false;
  try {
    const fields = readFileSync(stat, 'utf8');
    return fields.slice(fields.lastIndexOf(')') + 2).split(' ')[0] !== 'Z';
  } catch {
    return false;
  }
}

const allDead = (pids: number[]) => until(async () => pids.every((p) => !alive(p)), 30_000, `processes ${pids.join(', ')} to be gone`);
const release = (root: string) => writeFileSync(join(root, 'release'), '');

describe('jobs cancel', () => {
  it("kills the script's process group, ends the job cancelled with who and why, and pauses the machine on that task", { timeout: 120_000 }, async () => {
    await create('c-cancel', 'control');
    const { job, pids, root } = await holding('c-cancel');
    expect(pids.every(alive)).toBe(true);

    const r = await ep.cli(['jobs', 'cancel', job.id, '--reason', 'wrong image']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/c-cancel is paused/);
    await allDead(pids);

    const ended = await ep.api.get<J>(`/jobs/${job.id}`);
    expect(ended.state).toBe('cancelled');
    expect(ended.reason).toMatch(/^cancelled by \S+: wrong image$/);
    const m = await machine('c-cancel');
    expect(m).toMatchObject({ state: 'paused', stage: 'work', task: 'hold', currentJob: null });
    expect(m.reason).toMatch(/wrong image/);
    expect(m.reason).not.toMatch(/lost|agent gone/);

    // A job that has ended cannot be cancelled again: said, not a 500.
    const again = await ep.cli(['jobs', 'cancel', job.id]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already ended: cancelled/);

    // Resume re-runs the cancelled task, then the rest; nothing is skipped or run twice.
    release(root);
    expect((await ep.cli(['machines', 'resume', 'c-cancel'])).code).toBe(0);
    expect((await ep.cli(['machines', 'wait', 'c-cancel', '--until', 'done', '--timeout', '60s'])).code).toBe(0);
    expect((await jobsOf('c-cancel')).map((j) => `${j.task}:${j.state}`)).toEqual(['first:succeeded', 'hold:cancelled', 'hold:succeeded', 'last:succeeded']);
  });

  it('a work-order job: its work order is cancelled, the machine is left as it was', { timeout: 120_000 }, async () => {
    await create('c-wo', null);
    const wo = await ep.api.post<{ id: string }>('/workorders', { machine: 'c-wo', blueprint: 'hold-wo' });
    const { job, pids } = await holding('c-wo');
    const r = await ep.cli(['jobs', 'cancel', job.id, '--reason', 'not now']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/work order .* is cancelled/);
    await allDead(pids);
    const after = await ep.api.get<{ state: string; reason: string }>(`/workorders/${wo.id}`);
    expect(after.state).toBe('cancelled');
    expect(after.reason).toMatch(/cancelled by \S+: not now/);
    expect((await machine('c-wo')).state).toBe('idle');
  });
});

describe('machines pause / resume', () => {
  it('without --cancel the running job finishes, then the machine holds at the next task; resume continues there', { timeout: 120_000 }, async () => {
    await create('c-pause', 'control');
    const { job, root } = await holding('c-pause');
    const r = await ep.cli(['machines', 'pause', 'c-pause', '--reason', 'maintenance']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/pausing: its running job \(task 'work\/hold'\) finishes first/);
    const listed = await ep.cli(['machines', 'list', '--state', 'paused', '-o', 'json']);
    expect((JSON.parse(listed.stdout) as M[]).map((m) => m.name)).toContain('c-pause');

    release(root);
    await until(async () => (await ep.api.get<J>(`/jobs/${job.id}`)).state === 'succeeded', 60_000, 'hold to finish');
    const m = await machine('c-pause');
    // Moved past the finished task, and held before the next: no job for 'last' was started.
    expect(m).toMatchObject({ state: 'paused', stage: 'finish', task: 'last', currentJob: null, reason: expect.stringMatching(/paused by \S+: maintenance/) });
    expect((await jobsOf('c-pause')).map((j) => j.task)).toEqual(['first', 'hold']);
    // Pausing again is said, not an error.
    const again = await ep.cli(['machines', 'stop', 'c-pause']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/already paused/);

    expect((await ep.cli(['machines', 'resume', 'c-pause'])).code).toBe(0);
    expect((await ep.cli(['machines', 'wait', 'c-pause', '--timeout', '60s'])).code).toBe(0);
    expect((await jobsOf('c-pause')).map((j) => `${j.task}:${j.state}`)).toEqual(['first:succeeded', 'hold:succeeded', 'last:succeeded']);

    // A machine with nothing to pause: a clear error.
    const done = await ep.cli(['machines', 'pause', 'c-pause']);
    expect(done.code).toBe(1);
    expect(done.stderr).toMatch(/machine is done; .*finished its pipeline/);
  });

  it('with --cancel the job is killed and the machine pauses on its task', { timeout: 120_000 }, async () => {
    await create('c-stop', 'control');
    const { job, pids, root } = await holding('c-stop');
    const r = await ep.cli(['machines', 'stop', 'c-stop', '--cancel', '--reason', 'bad disk']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/paused on task 'hold': job \S+ cancelled/);
    await allDead(pids);
    expect((await ep.api.get<J>(`/jobs/${job.id}`)).reason).toMatch(/^cancelled by \S+: bad disk$/);
    expect(await machine('c-stop')).toMatchObject({ state: 'paused', stage: 'work', task: 'hold' });
    release(root);
    expect((await ep.cli(['machines', 'resume', 'c-stop'])).code).toBe(0);
    expect((await ep.cli(['machines', 'wait', 'c-stop', '--timeout', '60s'])).code).toBe(0);
    expect((await jobsOf('c-stop')).map((j) => `${j.task}:${j.state}`)).toEqual(['first:succeeded', 'hold:cancelled', 'hold:succeeded', 'last:succeeded']);
  });

  it('a task that exits 16 leaves the machine paused, not stopped; wait --until paused sees it, resume goes on', { timeout: 120_000 }, async () => {
    await create('c-16', 'pauser');
    const w = await ep.cli(['machines', 'wait', 'c-16', '--until', 'paused', '--timeout', '60s']);
    expect(w.code, w.stderr).toBe(0);
    const m = await machine('c-16');
    expect(m).toMatchObject({ state: 'paused', stage: 'pausing', task: 'last' });
    expect(m.reason).toMatch(/paused by task 'pause-line' \(exit code 16\)/);
    // Waiting for done on a paused machine is not a failure (exit 1): it waits, says why, and times out.
    const d = await ep.cli(['machines', 'wait', 'c-16', '--until', 'done', '--timeout', '1s']);
    expect(d.code).toBe(124);
    expect(d.stderr).toMatch(/c-16 is paused/);
    expect((await ep.cli(['machines', 'resume', 'c-16'])).code).toBe(0);
    expect((await ep.cli(['machines', 'wait', 'c-16', '--timeout', '60s'])).code).toBe(0);
    expect((await jobsOf('c-16')).map((j) => j.task)).toEqual(['first', 'pause-line', 'last']);
  });
});

describe('machines power off mid-job', () => {
  it('cancels the job (no "lost"), kills its processes and keeps the place; power on runs the task again', { timeout: 120_000 }, async () => {
    await create('c-power', 'control');
    const { job, pids, root } = await holding('c-power');
    const r = await ep.cli(['machines', 'power', 'c-power', 'off']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/cancelled by \S+: machine powered off/);
    await allDead(pids);
    const ended = await ep.api.get<J>(`/jobs/${job.id}`);
    expect(ended.state).toBe('cancelled');
    expect(ended.reason).toMatch(/^cancelled by \S+: machine powered off$/);
    expect(await machine('c-power')).toMatchObject({ power: 'off', state: 'running', stage: 'work', task: 'hold', currentJob: null });

    release(root);
    expect((await ep.cli(['machines', 'power', 'c-power', 'on'])).code).toBe(0);
    expect((await ep.cli(['machines', 'wait', 'c-power', '--timeout', '60s'])).code).toBe(0);
    const jobs = await jobsOf('c-power');
    expect(jobs.map((j) => `${j.task}:${j.state}`)).toEqual(['first:succeeded', 'hold:cancelled', 'hold:succeeded', 'last:succeeded']);
    expect(jobs.some((j) => /lost|agent gone/.test(j.reason ?? ''))).toBe(false);
  });
});

describe('describe a machine paused while its job runs', () => {
  it('says "pausing: the current job finishes first, then it holds", then that resume goes on', { timeout: 120_000 }, async () => {
    await create('c-pausing', 'control');
    const { job, root } = await holding('c-pausing');
    expect((await ep.cli(['machines', 'pause', 'c-pausing'])).code).toBe(0);
    const during = await ep.api.get<{ waitingFor: { for: string; text: string } }>('/machines/c-pausing/describe');
    expect(during.waitingFor.for).toBe('job');
    expect(during.waitingFor.text).toMatch(new RegExp(`^pausing: the current job finishes first, then it holds — job ${job.id} \\(hold\\)`));
    release(root);
    await until(async () => ((await machine('c-pausing')).currentJob === null ? true : null), 60_000, 'the hold job to end');
    const after = await ep.api.get<{ waitingFor: { for: string; text: string } }>('/machines/c-pausing/describe');
    expect(after.waitingFor).toMatchObject({ for: 'operator' });
    expect(after.waitingFor.text).toMatch(/^an operator: it holds where it stands; takt machines resume c-pausing goes on with task finish\/last/);
  });
});

describe('restart and resume of a powered-off machine (F21)', () => {
  it('keep it off and say so; --power-on powers it on, recorded in history', async () => {
    // No broker, no agent: nothing runs, only desired state moves.
    const made = await ep.cli(['machines', 'create', 'c-off', '--pipeline', 'control']);
    expect(made.code, made.stderr).toBe(0);
    expect((await ep.cli(['machines', 'power', 'c-off', 'off'])).code).toBe(0);
    const r = await ep.cli(['machines', 'restart', 'c-off']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/c-off is powered off: it stays off, and runs from its first task when powered on \(takt machines power c-off on, or restart with --power-on\)/);
    expect(await machine('c-off')).toMatchObject({ power: 'off', state: 'running' });
    const on = await ep.cli(['machines', 'restart', 'c-off', '--power-on']);
    expect(on.code, on.stderr).toBe(0);
    expect(on.stderr).toMatch(/c-off was powered off: powered on \(--power-on\)/);
    expect((await machine('c-off')).power).toBe('on');
    const changes = (await ep.api.get<{ items: Array<{ before: { power?: string } | null; after: { power?: string } | null }> }>('/changes', { object: 'machines/c-off', limit: 20 })).items;
    const powerChanges = changes.filter((c) => c.before && c.after && c.before.power !== c.after.power).map((c) => `${c.before?.power}->${c.after?.power}`);
    // newest first: the --power-on restart, then the operator's power off; the plain restart changed no power
    expect(powerChanges).toEqual(['off->on', 'on->off']);
  });
});

describe('machines drain and wait for many', () => {
  it('drains by label selector, says what happened to each, and wait -l sees them all paused', { timeout: 150_000 }, async () => {
    for (const n of ['d-1', 'd-2']) await create(n, 'control', ['role=drain']);
    await create('d-done', 'quick', ['role=drain']);
    await create('d-other', 'control', ['role=keep']);
    const held = await Promise.all(['d-1', 'd-2', 'd-other'].map(holding));
    expect((await ep.cli(['machines', 'wait', 'd-done', '--timeout', '60s'])).code).toBe(0);

    const refused = await ep.cli(['machines', 'drain']);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/refusing to drain every machine/);

    const r = await ep.cli(['machines', 'drain', '-l', 'role=drain', '--cancel', '--reason', 'rack work', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const rows = JSON.parse(r.stdout) as Array<{ machine: string; state: string | null; result: string; cancelled: string | null }>;
    expect(rows.map((x) => x.machine).sort()).toEqual(['d-1', 'd-2', 'd-done']);
    const row = (n: string) => rows.find((x) => x.machine === n)!;
    for (const [i, n] of ['d-1', 'd-2'].entries()) {
      expect(row(n)).toMatchObject({ state: 'paused', cancelled: held[i]!.job.id });
      expect(row(n).result).toMatch(/^paused on task 'hold': job \S+ cancelled/);
    }
    expect(row('d-done')).toMatchObject({ state: null, cancelled: null });
    expect(row('d-done').result).toMatch(/^left as is: machine is done/);
    expect((await ep.api.get<J>(`/jobs/${held[0]!.job.id}`)).reason).toBe(`cancelled by ${(await ep.api.get<J>(`/jobs/${held[1]!.job.id}`)).reason!.split(' ')[2]} rack work`);
    await allDead([...held[0]!.pids, ...held[1]!.pids]);

    const w = await ep.cli(['machines', 'wait', '-l', 'role=drain,!gone', '--until', 'paused', '--timeout', '1s']);
    // d-done never pauses: the wait names it when it times out.
    expect(w.code).toBe(124);
    expect(w.stdout).toMatch(/d-1 is paused/);
    expect(w.stderr).toMatch(/d-done is done/);

    const both = await ep.cli(['machines', 'wait', 'd-1', 'd-2', '--until', 'paused', '--timeout', '30s', '-o', 'json']);
    expect(both.code, both.stderr).toBe(0);
    expect((JSON.parse(both.stdout) as M[]).map((m) => `${m.name}:${m.state}`)).toEqual(['d-1:paused', 'd-2:paused']);
    // The machine outside the selector was never touched.
    expect((await machine('d-other')).state).toBe('running');
    expect(held[2]!.pids.every(alive)).toBe(true);

    for (const h of held) release(h.root);
    const resumed = await Promise.all(['d-1', 'd-2'].map((n) => ep.cli(['machines', 'resume', n])));
    expect(resumed.map((x) => x.code)).toEqual([0, 0]);
    const all = await ep.cli(['machines', 'wait', '-l', 'role=drain', '--until', 'done', '--timeout', '60s']);
    expect(all.code, all.stderr + all.stdout).toBe(0);
  });

  it('a machine that stops on a failure makes a wait for many exit 1, once the others are there', { timeout: 60_000 }, async () => {
    await create('f-bad', 'failing');
    await create('f-good', 'quick');
    const w = await ep.cli(['machines', 'wait', 'f-bad', 'f-good', '--until', 'done', '--timeout', '60s']);
    expect(w.code).toBe(1);
    expect(w.stdout).toMatch(/f-bad stopped: task 'fail' failed with exit code 3/);
    expect(w.stdout).toMatch(/f-good is done/);
  });
});

describe('machines wait refuses what cannot be waited for, at once', () => {
  it.each([
    [['machines', 'wait', 'c-16', '--until', 'bogus', '--timeout', '10m'], /--until 'bogus' is not a machine state; the states are idle, running, paused, stopped, done, awaiting-approval/],
    [['machines', 'wait', '--until', 'done'], /name the machines to wait for, or give -l SELECTOR or --rollout ID/],
    [['machines', 'wait', 'c-16', '-l', 'role=web'], /not several/],
    [['machines', 'wait', 'c-16', '--timeout', 'soon'], /--timeout/],
    [['machines', 'wait', 'c-16', '--frobnicate'], /unknown option/],
  ])('%j', async (args, message) => {
    const r = await ep.cli(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('a named machine that does not exist is 4', async () => {
    expect((await ep.cli(['machines', 'wait', 'no-such-machine'])).code).toBe(4);
  });
});

describe('machines wait --rollout', () => {
  it('waits until the rollout ends and exits 0 when it completed', { timeout: 120_000 }, async () => {
    await create('roll-1', null);
    const created = await ep.api.post<{ id: string }>('/rollouts', { pipeline: 'quick', select: { name: 'roll-1' }, canary: 1, batch: 1 });
    const w = await ep.cli(['machines', 'wait', '--rollout', created.id, '--timeout', '60s']);
    expect(w.code, w.stderr).toBe(0);
    expect(w.stdout).toMatch(new RegExp(`rollout ${created.id} completed`));
  });
});
