/**
 * Crashes and timeouts with real processes: kill -9 the endpoint mid-pipeline, kill -9 an agent mid-job,
 * a task that overruns its timeout.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Endpoint, packFiles, sleep, until } from './helpers/endpoint.js';

interface M {
  id: string;
  name: string;
  state: string;
  reason: string | null;
}
interface J {
  id: string;
  task: string;
  state: string;
  reason: string | null;
}

let ep: Endpoint | undefined;
afterEach(async () => {
  await ep?.stop();
  ep = undefined;
});

async function setup(lease = '5s') {
  ep = await Endpoint.start({ lease });
  await ep.api.post('/packs', { files: await packFiles('basic') });
  return ep;
}

const jobsOf = async (e: Endpoint, machine: string) => (await e.api.get<{ items: J[] }>('/jobs', { machine, limit: 100, order: 'asc' })).items;

describe('kill -9 the endpoint mid-pipeline', () => {
  it('every machine finishes with each task run exactly once, or stops with a clear lost reason', { timeout: 150_000 }, async () => {
    const e = await setup('5s');
    const created = await e.cli(['machines', 'create', 'crash', '--broker', 'local', '--count', '10', '--pipeline', 'steps', '-o', 'json']);
    expect(created.code, created.stderr).toBe(0);
    const machines = JSON.parse(created.stdout) as M[];
    // let every machine get some way in, with jobs in flight
    await until(async () => (await e.api.get<{ items: J[] }>('/jobs', { state: 'succeeded', limit: 1000 })).items.length >= 15, 30_000, 'progress');
    const running = (await e.api.get<{ items: J[] }>('/jobs', { state: 'running', limit: 1000 })).items.length;
    expect(running).toBeGreaterThan(0);
    await e.crash();
    // agents keep running their jobs and hold their results while the endpoint is down
    await sleep(1500);
    await e.boot();

    const final = await until(
      async () => {
        const list = (await e.api.get<{ items: M[] }>('/machines', { limit: 100 })).items;
        return list.every((m) => m.state === 'done' || m.state === 'stopped') ? list : null;
      },
      90_000,
      'all machines to finish',
    );
    expect(final).toHaveLength(10);
    let done = 0;
    for (const m of final) {
      const jobs = await jobsOf(e, m.id);
      const runs = readFileSync(join(e.data, 'machines', m.id, 'root', 'runs.log'), 'utf8').trim().split('\n');
      const starts = runs.filter((l) => l.includes(' start ')).map((l) => l.split(' ')[2]);
      // no job ran twice, and every job that started on the machine is a job the endpoint knows about
      expect(new Set(starts).size).toBe(starts.length);
      expect(starts.every((id) => jobs.some((j) => j.id === id))).toBe(true);
      if (m.state === 'done') {
        done += 1;
        // A claim answered just before the kill never reached its agent: that job was handed back
        // (cancelled, never started) and the task ran on the agent's next claim.
        const handedBack = jobs.filter((j) => j.state === 'cancelled' && /never answered/.test(j.reason ?? ''));
        expect(handedBack.every((j) => !starts.includes(j.id))).toBe(true);
        expect(jobs.filter((j) => !handedBack.includes(j)).map((j) => j.state)).toEqual(Array(6).fill('succeeded'));
        expect(starts).toHaveLength(6);
      } else {
        // a job in flight whose result was lost: stopped on it, saying so
        expect(m.reason).toMatch(/lost|restarted/);
        expect(jobs.filter((j) => j.state === 'succeeded').length).toBeLessThan(6);
      }
    }
    console.log(`crash test: ${done} of 10 machines done after kill -9`);
    expect(done).toBeGreaterThanOrEqual(8);
    void machines;
  });
});

describe('timeouts and agent crashes', () => {
  it('a task that overruns its timeout is killed and stops the machine with the reason', async () => {
    const e = await setup();
    const r = await e.cli(['machines', 'create', 'slow', '--broker', 'local', '--pipeline', 'sleepy', '--param', 'secs=30', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const wait = await e.cli(['machines', 'wait', 'slow', '--until', 'stopped', '--timeout', '30s', '-o', 'json']);
    expect(wait.code, wait.stderr).toBe(0);
    expect((JSON.parse(wait.stdout) as M).reason).toBe("task 'sleeper' timed out after 1s and was killed");
    // fix the cause and resume: the same task runs again and the pipeline completes
    await e.cli(['machines', 'update', 'slow', '--param', 'secs=0.1']);
    await e.cli(['machines', 'resume', 'slow']);
    expect((await e.cli(['machines', 'wait', 'slow', '--timeout', '30s'])).code).toBe(0);
  });

  it('an agent killed mid-job comes back, reports the job as interrupted, and the machine stops on it', async () => {
    const e = await setup();
    const r = await e.cli(['machines', 'create', 'victim', '--broker', 'local', '--pipeline', 'sleepy', '--param', 'secs=0.9', '-o', 'json']);
    const m = (JSON.parse(r.stdout) as M[])[0]!;
    await until(async () => (await jobsOf(e, m.id)).some((j) => j.state === 'running'), 20_000, 'a running job');
    const pid = Number(readFileSync(join(e.data, 'machines', m.id, 'agent.pid'), 'utf8'));
    process.kill(pid, 'SIGKILL');
    const stopped = await until(async () => {
      const x = await e.api.get<M>(`/machines/${m.id}`);
      return x.state === 'stopped' ? x : null;
    }, 30_000, 'the machine to stop');
    expect(stopped.reason).toMatch(/task 'sleeper' (failed: the agent restarted|lost)/);
    const jobs = await jobsOf(e, m.id);
    expect(jobs.filter((j) => j.state === 'running')).toHaveLength(0);
    // the supervised agent is back and takes work again
    await e.cli(['machines', 'resume', m.id]);
    expect((await e.cli(['machines', 'wait', m.id, '--timeout', '30s'])).code).toBe(0);
  });
});
