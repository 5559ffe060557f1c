/**
 * Issue 3: the churn policy — machines older than max-age are rebuilt by rollouts the policy creates,
 * never more than the budget at once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job } from '../src/model/machine.js';
import { Endpoint, packFiles, until } from './helpers/endpoint.js';

let ep: Endpoint;

interface Status {
  policy: { maxAge: string; budget: string } | null;
  machines: number;
  budget: number;
  ages: Array<{ bucket: string; machines: number }>;
  over: Array<{ name: string }>;
  rollouts: Array<{ id: string; state: string }>;
}

beforeAll(async () => {
  process.env.TAKT_CHURN_CHECK = '500ms';
  ep = await Endpoint.start();
  await ep.api.post('/packs', { files: await packFiles('seed') });
  expect((await ep.cli(['machines', 'create', 'old', '--broker', 'local', '--count', '4', '--pipeline', 'seed'])).code).toBe(0);
  for (let i = 1; i <= 4; i++) expect((await ep.cli(['machines', 'wait', `old-${i}`, '--timeout', '60s'])).code).toBe(0);
});
afterAll(async () => ep?.stop());

describe('churn policy', () => {
  it('shows the age distribution, and with no policy schedules nothing', async () => {
    const s = JSON.parse((await ep.cli(['policy', 'status', '-o', 'json'])).stdout) as Status;
    expect(s).toMatchObject({ policy: null, machines: 4, rollouts: [] });
    const text = await ep.cli(['policy', 'status']);
    expect(text.stdout).toContain('no max-age policy set');
  });

  it('rebuilds machines past max-age in a rollout, at most the budget at once', async () => {
    const before = new Map<string, number>();
    for (let i = 1; i <= 4; i++) before.set(`old-${i}`, (await ep.api.get<{ items: Job[] }>('/jobs', { machine: `old-${i}` })).items.length);
    const set = await ep.cli(['policy', 'set', 'max-age', '2s', '--budget', '50%', '-o', 'json']);
    expect(set.code, set.stderr).toBe(0);
    expect((JSON.parse(set.stdout) as Status).budget).toBe(2);
    // the policy's rollout rebuilds all four
    await until(
      async () => {
        for (let i = 1; i <= 4; i++) {
          const jobs = (await ep.api.get<{ items: Job[] }>('/jobs', { machine: `old-${i}` })).items;
          if (jobs.length < before.get(`old-${i}`)! + 2 || jobs.some((j) => j.state === 'running')) return false;
        }
        return true;
      },
      60_000,
      'all four rebuilt',
    );
    expect((await ep.cli(['policy', 'clear', 'max-age'])).code).toBe(0);
    const ro = (await ep.api.get<{ items: Array<{ author: string; spec: { maxInFlight: number; select: Record<string, string> } }> }>('/rollouts')).items.filter(
      (r) => r.author === 'policy:churn',
    );
    expect(ro.length).toBeGreaterThanOrEqual(1);
    expect(ro[ro.length - 1]!.spec).toMatchObject({ maxInFlight: 2, select: { policy: 'churn max-age 2s' } });
    // never more than two machines rebuilding at once: the rebuild windows overlap at most pairwise
    const windows: Array<[number, number]> = [];
    for (let i = 1; i <= 4; i++) {
      const jobs = (await ep.api.get<{ items: Job[] }>('/jobs', { machine: `old-${i}`, order: 'asc' })).items.slice(before.get(`old-${i}`)!, before.get(`old-${i}`)! + 2);
      windows.push([Date.parse(jobs[0]!.createdAt), Date.parse(jobs[jobs.length - 1]!.finishedAt!)]);
    }
    for (const [start] of windows) expect(windows.filter(([a, b]) => a <= start && start < b).length).toBeLessThanOrEqual(2);
    // the change is in the history
    const hist = await ep.cli(['history', '--object', 'policies/churn']);
    expect(hist.stdout).toMatch(/create +policies\/churn/);
  });

  it('refuses a bad policy', async () => {
    expect((await ep.cli(['policy', 'set', 'max-age', 'soon'])).stderr).toMatch(/not a duration/);
    expect((await ep.cli(['policy', 'set', 'max-age', '30d', '--budget', '150%'])).stderr).toMatch(/budget '150%'/);
    expect((await ep.cli(['policy', 'set', 'min-age', '30d'])).stderr).toMatch(/'min-age' is invalid for argument 'setting'. Allowed choices are max-age/);
  });
});
