/**
 * `takt serve --store postgres://…` end to end: the demo pipeline runs to done on three local machines
 * with real agents, with every record in PostgreSQL (none in the data dir), and survives a restart. The
 * database is a fresh one of its own (test/helpers/postgres.ts); skipped, saying why, only when no
 * PostgreSQL is reachable and CI is not set.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint } from './helpers/endpoint.js';
import { freshDatabase, pgUnavailable } from './helpers/postgres.js';

const pgWhy = await pgUnavailable();

describe.skipIf(pgWhy !== null)(pgWhy === null ? 'takt serve on PostgreSQL' : `takt serve on PostgreSQL — SKIPPED: ${pgWhy}`, () => {
  let ep: Endpoint;
  let db: Awaited<ReturnType<typeof freshDatabase>>;
  let url: string;

  beforeAll(async () => {
    db = await freshDatabase();
    // A password in the URL (trust auth ignores it) must never reach the log.
    const u = new URL(db.url);
    u.password = 'sekrit-pw';
    url = u.toString();
    ep = await Endpoint.start({ demo: true, env: { TAKT_STORE: url } });
  });
  afterAll(async () => {
    await ep?.stop();
    await db?.drop();
  });

  const machines = async () => {
    const r = await ep.cli(['machines', 'list', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as Array<{ name: string; state: string; pipeline: string }>;
  };

  it('runs the demo pipeline to done, says which store it uses, and keeps nothing in a SQLite file', async () => {
    for (const name of ['demo-1', 'demo-2', 'demo-3']) {
      const r = await ep.cli(['machines', 'wait', name, '--until', 'done', '--timeout', '90s']);
      expect(r.code, `${name}: ${r.stdout}${r.stderr}\n${ep.output}`).toBe(0);
    }
    expect((await machines()).map((m) => [m.name, m.state])).toEqual([
      ['demo-1', 'done'],
      ['demo-2', 'done'],
      ['demo-3', 'done'],
    ]);
    const jobs = JSON.parse((await ep.cli(['jobs', 'list', '--machine', 'demo-2', '-o', 'json'])).stdout) as Array<{ state: string }>;
    expect(jobs.length).toBeGreaterThan(3);
    expect(jobs.every((j) => j.state === 'succeeded')).toBe(true);
    expect(ep.output).toContain(`store: postgres ${url.replace('sekrit-pw', '****')}`);
    expect(ep.output).not.toContain('sekrit-pw');
    expect(existsSync(join(ep.data, 'takt.db'))).toBe(false);
  });

  it('a restarted endpoint finds its machines and history in the database', async () => {
    const changes = async () => (await ep.api.get<{ items: Array<{ seq: number }> }>('/changes', { limit: 1000 })).items;
    const before = await changes();
    // The demo's installs and machines are numbered changes, 1 up without gaps.
    expect(before.length).toBeGreaterThan(3);
    expect(before.map((c) => c.seq).sort((a, b) => a - b)).toEqual(before.map((_, i) => i + 1));
    await ep.terminate();
    await ep.boot();
    expect((await machines()).map((m) => [m.name, m.state])).toEqual([
      ['demo-1', 'done'],
      ['demo-2', 'done'],
      ['demo-3', 'done'],
    ]);
    expect(await changes()).toEqual(before);
    expect(existsSync(join(ep.data, 'takt.db'))).toBe(false);
  });
});
