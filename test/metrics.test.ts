/**
 * Issue 4 (part): cycle-time report and Prometheus metrics over a real endpoint with real agents.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CycleTimeReport } from '../src/engine/cycletime.js';
import { Endpoint, packFiles } from './helpers/endpoint.js';

let ep: Endpoint;
const scrape = (token?: string) => fetch(`${ep.url}/metrics`, { headers: token ? { authorization: `Bearer ${token}` } : {} });

beforeAll(async () => {
  ep = await Endpoint.start();
  await ep.api.post('/packs', { files: await packFiles('basic') });
  for (const [name, code] of [
    ['good', '0'],
    ['bad', '3'],
  ] as const) {
    const r = await ep.cli(['machines', 'create', name, '--broker', 'local', '--count', name === 'good' ? '2' : '1', '--pipeline', 'basic', '--param', `code=${code}`]);
    expect(r.code, r.stderr).toBe(0);
  }
  for (const [m, until] of [
    ['good-1', 'done'],
    ['good-2', 'done'],
    ['bad', 'stopped'],
  ]) {
    const w = await ep.cli(['machines', 'wait', m!, '--until', until!, '--timeout', '60s']);
    expect(w.code, w.stdout + w.stderr).toBe(0);
  }
});
afterAll(async () => ep?.stop());

describe('takt report cycle-time', () => {
  it('counts walks, failures and timings per pipeline, stage and task', async () => {
    const r = await ep.cli(['report', 'cycle-time', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as CycleTimeReport;
    expect(rep.pipelines).toEqual([expect.objectContaining({ pipeline: 'basic', walks: 3, completed: 2, failed: 1 })]);
    expect(rep.pipelines[0]!.cycleMs!.n).toBe(2);
    const failIf = rep.tasks.find((t) => t.task === 'fail-if')!;
    expect(failIf).toMatchObject({ pipeline: 'basic', stage: 'two', runs: 3, failed: 1 });
    expect(failIf.failureRate).toBeCloseTo(1 / 3);
    // Every task after the first of a walk waited for the one before it.
    expect(rep.tasks.find((t) => t.task === 'use-count')!.queueMs!.n).toBe(3);
    expect(rep.tasks.find((t) => t.task === 'hello')!.queueMs).toBeNull();
    expect(rep.stages.map((s) => [s.stage, s.passes, s.failed])).toEqual([
      ['one', 3, 0],
      ['two', 3, 1],
      ['three', 2, 0],
    ]);
  });

  it('prints tables with bars, and filters by pipeline', async () => {
    const r = await ep.cli(['report', 'cycle-time', '--since', '1h', '--pipeline', 'basic']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/pipelines[\s\S]*basic[\s\S]*stages[\s\S]*tasks[\s\S]*fail-if/);
    expect(r.stdout).toContain('█');
  });

  it('explains bad input', async () => {
    const bad = await ep.cli(['report', 'cycle-time', '--since', 'yesterday']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("since 'yesterday' is not a duration");
    const missing = await ep.cli(['report', 'cycle-time', '--pipeline', 'nope']);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain("pipeline 'nope' not found");
    const res = await fetch(`${ep.url}/api/v1/reports/cycle-time?window=1h`, { headers: { authorization: `Bearer ${ep.token}` } });
    expect(res.status).toBe(422);
  });
});

describe('/metrics', () => {
  it('needs the admin token: none is 401, a machine token 403', async () => {
    expect((await scrape()).status).toBe(401);
    const m = await ep.api.post<{ items: Array<{ token: string }> }>('/machines', { name: 'scraper' });
    expect((await scrape(m.items[0]!.token)).status).toBe(403);
  });

  it('exposes jobs, durations, machines by state and API latency in the Prometheus format', async () => {
    const res = await scrape(ep.token);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain');
    const text = await res.text();
    const value = (line: string) => Number(text.split('\n').find((l) => l.startsWith(line + ' '))?.slice(line.length + 1));
    expect(value('takt_jobs_finished_total{pipeline="basic",stage="two",task="fail-if",state="failed"}')).toBe(1);
    expect(value('takt_jobs_finished_total{pipeline="basic",stage="two",task="fail-if",state="succeeded"}')).toBe(2);
    expect(value('takt_job_run_seconds_count{pipeline="basic",stage="three",task="record"}')).toBe(2);
    expect(value('takt_machines{state="done"}')).toBe(2);
    expect(value('takt_machines{state="stopped"}')).toBe(1);
    expect(text).toMatch(/takt_http_request_duration_seconds_count\{method="POST",route="\/api\/v1\/machines\/:id\/claim",status="200"\} \d+/);
    expect(text).toContain('process_resident_memory_bytes');
  });
});
