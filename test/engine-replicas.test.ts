/**
 * Once-only work across replicas (issue #15, engine side): two or three Engine instances over stores of
 * their own on one PostgreSQL database, in one process, as several `takt serve` would run — racing on
 * claims, lease sweeps, rollout steps, churn checks and liveness, with content and metrics following the
 * other replicas. Every race runs many rounds (bounded) so that an unguarded step would show. Real
 * PostgreSQL, a fresh database per test (test/helpers/postgres.ts); skipped, saying why, only when no
 * PostgreSQL is reachable and CI is not set.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { PackFiles } from '../src/content/files.js';
import { Churn } from '../src/engine/churn.js';
import { ContentService, isContentTopic } from '../src/engine/content.js';
import { Engine } from '../src/engine/engine.js';
import { Records } from '../src/engine/records.js';
import { Rollouts } from '../src/engine/rollouts.js';
import { Metrics } from '../src/api/metrics.js';
import type { Job, TaktEvent } from '../src/model/machine.js';
import type { RolloutItem } from '../src/model/rollout.js';
import { Sealer } from '../src/model/secure.js';
import { openPostgresStore } from '../src/store/postgres.js';
import type { SqlStore } from '../src/store/sql-store.js';
import { allEvents, freshDatabase, pgUnavailable } from './helpers/postgres.js';

const pgWhy = await pgUnavailable();

/** A pack `rr@version` with pipelines `one` (task `t1`) and `two` (tasks `t1`, `t2`), plus `extra` pipelines of task t1. */
function pack(version = '1.0.0', extra: string[] = []): PackFiles {
  const files: PackFiles = {
    'pack.yaml': `name: rr\nversion: ${version}\n`,
    'tasks/t1.yaml': 'name: t1\nscript: |\n  true\n',
    'tasks/t2.yaml': 'name: t2\nscript: |\n  true\n',
    'stages/s1.yaml': 'name: s1\ntasks: [t1]\n',
    'stages/s2.yaml': 'name: s2\ntasks: [t1, t2]\n',
    'pipelines/one.yaml': 'name: one\nstages: [s1]\n',
    'pipelines/two.yaml': 'name: two\nstages: [s2]\n',
  };
  for (const p of extra) files[`pipelines/${p}.yaml`] = `name: ${p}\nstages: [s1]\n`;
  return files;
}


/** Resolves when `store` has heard an event matching `match` (the test's timeout bounds the wait). */
function heard(store: SqlStore, match: (e: TaktEvent) => boolean): Promise<TaktEvent> {
  return new Promise((resolve) => {
    const off = store.onEvents((events) => {
      const e = events.find(match);
      if (e) {
        off();
        resolve(e);
      }
    });
  });
}

/** A succeeded report. */
const ok = (claim = false) => ({ exitCode: 0, outputs: {}, ...(claim ? { claim: true } : {}) });

describe.skipIf(pgWhy !== null)(pgWhy === null ? 'once-only work across engine replicas on PostgreSQL' : `once-only work across engine replicas on PostgreSQL — SKIPPED: ${pgWhy}`, () => {
  let db: Awaited<ReturnType<typeof freshDatabase>> | undefined;
  const cleanups: Array<() => void | Promise<void>> = [];
  const sealer = new Sealer(randomBytes(32));

  interface Replica {
    store: SqlStore;
    content: ContentService;
    engine: Engine;
    records: Records;
  }

  /** A replica: its own store on the test's database, its own content cache and engine. */
  async function replica(opts: { leaseMs?: number; livenessClock?: () => number; goneAfterMs?: number; seenThrottleMs?: number } = {}): Promise<Replica> {
    db ??= await freshDatabase();
    const store = await openPostgresStore(db.url, { exclusive: false });
    const content = new ContentService(store, sealer);
    await content.load();
    const engine = new Engine(store, content, sealer, { leaseMs: opts.leaseMs ?? 60_000, ...opts });
    cleanups.push(async () => {
      engine.stop();
      content.stop();
      await store.close().catch(() => undefined);
    });
    return { store, content, engine, records: new Records(store, content, sealer) };
  }

  /** Installs pack rr through `r` and waits until every other replica's content has it. */
  async function install(r: Replica, others: Replica[], version = '1.0.0', extra: string[] = []) {
    const arrived = others.map((o) => heard(o.store, (e) => e.topic === 'packs.create.rr' || e.topic === 'packs.update.rr'));
    await r.content.installPack(pack(version, extra), 'test', { use: true });
    await Promise.all(arrived);
    for (const o of others) await o.content.fresh();
  }

  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    await db?.drop();
    db = undefined;
  });

  it('(a) claims long-polling on both engines for one machine while work is created: one job per task, each answered to one claim', async () => {
    const [a, b] = [await replica(), await replica()];
    await install(a, [b]);
    const engines = [a.engine, b.engine];
    const answered = new Map<string, number>();
    const ROUNDS = 50;
    for (let round = 0; round < ROUNDS; round++) {
      const { machine } = await engines[round % 2]!.createMachine({ name: `m${round}` }, 'test');
      // Both engines long-poll for the machine (an agent's retried claim on the other replica), then the
      // work is created through either: both wake together.
      const polls = engines.map((e) => e.claim(machine.id, 20_000, undefined, null));
      await engines[(round + 1) % 2]!.updateMachine(machine.id, { pipeline: 'two' }, 'test');
      const got = await Promise.all(polls);
      const jobs = got.flatMap((r) => (r.job ? [r.job] : []));
      for (const j of jobs) answered.set(j.id, (answered.get(j.id) ?? 0) + 1);
      // The job that runs is the one still running (a second claim of the same agent hands the first back).
      let running: string | undefined;
      for (const j of jobs) if ((await a.store.getJob(j.id))?.state === 'running') running = running ? `${running},${j.id}` : j.id;
      expect(running, `round ${round}: exactly one running job of the machine`).toMatch(/^j[^,]*$/);
      // The rest of the pipeline, completing through the other engine with the next job in the answer.
      let next: string | undefined = running;
      for (let step = 0; next && step < 10; step++) {
        const r = await engines[(round + step + 1) % 2]!.complete(next, machine.id, ok(true));
        next = r.next?.job?.id;
        if (next) answered.set(next, (answered.get(next) ?? 0) + 1);
      }
      const m = await b.store.getMachine(machine.id);
      expect(m?.state, `round ${round}: ${m?.reason}`).toBe('done');
      const all = await a.store.listJobs({ machineId: machine.id, order: 'asc', limit: 100 });
      // Exactly one succeeded job per task; anything else was handed back (never ran), never lost or doubled.
      expect(all.filter((j) => j.state === 'succeeded').map((j) => j.task), `round ${round}`).toEqual(['t1', 't2']);
      for (const j of all.filter((x) => x.state !== 'succeeded')) expect(j.reason, `round ${round}: ${j.id}`).toMatch(/never answered/);
    }
    // No job was handed to two claims.
    for (const [id, n] of answered) expect(n, `job ${id} answered ${n} times`).toBe(1);
  });

  it("(a2) an agent's completion through engine A racing a claim of its machine through engine B: the job ends once", async () => {
    const [a, b] = [await replica(), await replica()];
    await install(a, [b]);
    const ROUNDS = 40;
    const outcomes = { completed: 0, refused: 0 };
    for (let round = 0; round < ROUNDS; round++) {
      const { machine } = await a.engine.createMachine({ name: `r${round}`, pipeline: 'two' }, 'test');
      const first = (await a.engine.claim(machine.id, 0, undefined, null)).job!;
      // Both are row-scoped, on two replicas: they run at once and meet at the machine's row lock. The
      // claim (lastJob null: its answer to `first` was lost) hands `first` back; the completion ends it.
      const [done] = await Promise.allSettled([a.engine.complete(first.id, machine.id, ok(true)), b.engine.claim(machine.id, 0, undefined, null)]);
      if (done.status === 'fulfilled') outcomes.completed++;
      else {
        expect(String(done.reason), `round ${round}`).toMatch(/already ended/);
        outcomes.refused++;
      }
      const events = await allEvents(a.store);
      for (const j of await a.store.listJobs({ machineId: machine.id, limit: 100 })) {
        const ends = events.filter((e) => e.topic === `jobs.update.${j.id}` && (e.data as Job).state !== 'running');
        expect(ends.length, `round ${round}: job ${j.id} (${j.task}) ended ${ends.length} times`).toBeLessThanOrEqual(1);
        if (ends.length === 1) expect((ends[0]!.data as Job).state, `round ${round}: job ${j.id}`).toBe(j.state);
      }
      const ended = (await a.store.getJob(first.id))!;
      expect(ended.state, `round ${round}`).toBe(done.status === 'fulfilled' ? 'succeeded' : 'cancelled');
      // At most one job of the machine runs.
      expect((await a.store.listJobs({ machineId: machine.id, state: 'running', limit: 10 })).length, `round ${round}`).toBeLessThanOrEqual(1);
    }
    expect(outcomes.completed + outcomes.refused).toBe(ROUNDS);
  });

  it('(b) two engines sweeping the same expired lease at once: one outcome', async () => {
    const [a, b] = [await replica({ leaseMs: 60_000 }), await replica({ leaseMs: 60_000 })];
    await install(a, [b]);
    const ROUNDS = 50;
    const ids: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const { machine } = await a.engine.createMachine({ name: `l${round}`, pipeline: 'one' }, 'test');
      const r = await a.engine.claim(machine.id, 0, undefined, null);
      ids.push(r.job!.id);
    }
    // Every lease runs out at once; both engines sweep, twice each, concurrently.
    await a.store.transact(async (tx) => {
      for (const id of ids) await tx.renewLease(id, new Date(Date.now() - 1000).toISOString());
    });
    await Promise.all([a.engine.sweepLeases(), b.engine.sweepLeases(), a.engine.sweepLeases(), b.engine.sweepLeases()]);
    const events = await allEvents(a.store);
    for (const id of ids) {
      const job = (await a.store.getJob(id)) as Job;
      expect(job.state).toBe('lost');
      const ends = events.filter((e) => e.topic === `jobs.update.${id}` && (e.data as Job).state === 'lost');
      expect(ends.length, `job ${id} lost ${ends.length} times`).toBe(1);
      expect((await a.store.getMachine(job.machineId))?.state).toBe('stopped');
    }
  });

  it('(c) two Rollouts stepping one rollout with a canary: never two waves at once, each machine started once', async () => {
    const [a, b] = [await replica(), await replica()];
    await install(a, [b]);
    const ROLLOUTS = 6;
    const MACHINES = 8;
    const ra = new Rollouts(a.store, a.engine, a.records, { tickMs: 50 });
    const rb = new Rollouts(b.store, b.engine, b.records, { tickMs: 50 });
    const machines: string[] = [];
    for (let i = 0; i < MACHINES; i++) machines.push((await a.engine.createMachine({ name: `r${i}` }, 'test')).machine.id);
    // Agents: each machine's jobs are claimed and completed at once, through either engine.
    let done = false;
    const agents = machines.map(async (id, i) => {
      const engines = [a.engine, b.engine];
      for (let n = 0; !done && n < 10_000; n++) {
        const r = await engines[(i + n) % 2]!.claim(id, 200, undefined, undefined);
        if (r.job) await engines[(i + n + 1) % 2]!.complete(r.job.id, id, ok());
      }
    });
    ra.start();
    rb.start();
    cleanups.push(() => {
      done = true;
      ra.stop();
      rb.stop();
    });
    try {
      for (let k = 0; k < ROLLOUTS; k++) {
        const created = await (k % 2 ? rb : ra).create({ pipeline: k % 2 ? 'two' : 'one', select: { name: 'r' }, canary: 1, batch: 2, maxInFlight: 2 }, 'test');
        // Wait for its end on the events (bounded by the test's timeout).
        const end = heard(a.store, (e) => e.topic === `rollouts.update.${created.id}` && ['completed', 'stopped'].includes((e.data as { state: string }).state));
        const view = await ra.view(created.id);
        if (view.state === 'running') await end;
        const final = await ra.view(created.id);
        expect(final.state, `rollout ${k}: ${final.reason}`).toBe('completed');
        expect(final.counts.succeeded).toBe(MACHINES);
        // Replay the rollout's item events in commit order: each item starts once, only in the open wave.
        const states = new Map<string, RolloutItem>(final.items.map((i) => [i.machineId, { ...i, state: 'pending' }]));
        const starts = new Map<string, number>();
        for (const e of await allEvents(a.store)) {
          if (e.topic !== `rollouts.item.${created.id}`) continue;
          const item = e.data as RolloutItem;
          if (item.state === 'running' && states.get(item.machineId)?.state !== 'running') {
            starts.set(item.machineId, (starts.get(item.machineId) ?? 0) + 1);
            const earlier = [...states.values()].filter((x) => x.wave < item.wave && ['pending', 'waiting', 'running'].includes(x.state));
            expect(earlier.map((x) => x.machineName), `rollout ${k}: wave ${item.wave} started ${item.machineName} while an earlier wave was open`).toEqual([]);
          }
          states.set(item.machineId, item);
          const inFlight = [...states.values()].filter((x) => x.state === 'running').length;
          expect(inFlight, `rollout ${k}: in flight`).toBeLessThanOrEqual(2);
        }
        for (const id of machines) expect(starts.get(id), `rollout ${k}: machine ${id} started`).toBe(1);
      }
    } finally {
      done = true;
      await Promise.all(agents);
    }
  });

  it('(d) churn checks on two replicas at once: one rollout for the due machines', async () => {
    const [a, b] = [await replica(), await replica()];
    await install(a, [b]);
    /** A machine built (done) through both engines. */
    const built = async (name: string) => {
      const { machine } = await a.engine.createMachine({ name, pipeline: 'one' }, 'test');
      const r = await b.engine.claim(machine.id, 0, undefined, null);
      await a.engine.complete(r.job!.id, machine.id, ok());
    };
    const ra = new Rollouts(a.store, a.engine, a.records);
    const rb = new Rollouts(b.store, b.engine, b.records);
    const ca = new Churn(a.store, a.records, ra);
    const cb = new Churn(b.store, b.records, rb);
    // Due at once: built more than a second ago by the time the checks run (the records say when).
    await a.store.transact((tx) => tx.putSetting('policy.churn', { maxAge: '1s', maxAgeMs: 1, budget: '2' }));
    cleanups.unshift(async () => {
      await ra.idle();
      await rb.idle();
    });
    const ROUNDS = 30;
    for (let round = 0; round < ROUNDS; round++) {
      // Two more due machines each round: the aborted rollout's first tick may have restarted some.
      await built(`c${round}x`);
      await built(`c${round}y`);
      await Promise.all([ca.check(), cb.check(), ca.check(), cb.check()]);
      const mine = (await a.store.listRollouts({ limit: 1000 })).filter((r) => r.author === 'policy:churn' && r.state !== 'aborted');
      expect(mine.length, `round ${round}: churn rollouts`).toBe(1);
      // Aborted before any tick: its machines stay due for the next round.
      await ra.abort(mine[0]!.id, 'test');
    }
  });

  it('(e) a pack installed through engine A is usable through engine B once its event arrives', async () => {
    const [a, b] = [await replica(), await replica()];
    await install(a, [b]);
    const { machine } = await b.engine.createMachine({ name: 'e1' }, 'test');
    const ROUNDS = 50;
    const names: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      names.push(`p${round}`);
      const event = heard(b.store, (e) => e.topic === 'packs.update.rr');
      await a.content.installPack(pack(`1.0.${round + 1}`, names), 'test', { use: true });
      await event;
      // Right after the event: B assigns the new pipeline and its claim runs the pipeline's task.
      await b.engine.updateMachine(machine.id, { pipeline: `p${round}` }, 'test');
      const r = await b.engine.claim(machine.id, 0, undefined, null);
      expect(r.job?.task, `round ${round}: ${r.machine.reason}`).toBe('t1');
      expect((await b.store.getJob(r.job!.id))?.pack).toBe(`rr@1.0.${round + 1}`);
      await b.engine.complete(r.job!.id, machine.id, ok());
    }
    expect(isContentTopic('packs.update.rr') && isContentTopic('pipelines.create.x') && !isContentTopic('machines.update.x')).toBe(true);
  });

  it('(f) metrics of two replicas sum to the true count', async () => {
    const [a, b] = [await replica(), await replica()];
    const ma = new Metrics(a.store);
    const mb = new Metrics(b.store);
    cleanups.push(() => {
      ma.close();
      mb.close();
    });
    await install(a, [b]);
    const ROUNDS = 50;
    for (let round = 0; round < ROUNDS; round++) {
      const [x, y] = round % 3 ? [a.engine, b.engine] : [b.engine, a.engine];
      const { machine } = await x.createMachine({ name: `f${round}`, pipeline: 'two' }, 'test');
      const r = await y.claim(machine.id, 0, undefined, null);
      const r2 = await x.complete(r.job!.id, machine.id, ok(true));
      await y.complete(r2.next!.job!.id, machine.id, ok());
    }
    // Every event either store heard is in: both stores publish before their writes resolve; the other
    // replica's arrive through the follower, but the counters only count their own.
    const events = await allEvents(a.store);
    const jobs = await a.store.listJobs({ limit: 10_000 });
    const value = async (m: Metrics, name: string) =>
      ((await m.registry.getSingleMetric(name)?.get())?.values ?? []).filter((v) => !('le' in v.labels)).reduce((s, v) => s + v.value, 0);
    expect((await value(ma, 'takt_events_published_total')) + (await value(mb, 'takt_events_published_total'))).toBe(events.length);
    expect((await value(ma, 'takt_jobs_started_total')) + (await value(mb, 'takt_jobs_started_total'))).toBe(jobs.length);
    expect((await value(ma, 'takt_jobs_finished_total')) + (await value(mb, 'takt_jobs_finished_total'))).toBe(jobs.filter((j) => j.state === 'succeeded').length);
    expect(jobs.length).toBe(2 * ROUNDS);
    // Each counted some: the split is real.
    expect(await value(ma, 'takt_jobs_started_total')).toBeGreaterThan(0);
    expect(await value(mb, 'takt_jobs_started_total')).toBeGreaterThan(0);
  });

  it("an agent's completion with its log's end and the next claim: one round trip for the lock and its reads, one for the job's writes and log, then the group's", async () => {
    const [a] = [await replica()];
    await install(a, []);
    const { machine } = await a.engine.createMachine({ name: 'trips', pipeline: 'two' }, 'test');
    const first = (await a.engine.claim(machine.id, 0, undefined, null)).job!;
    const before = new Map(a.store.roundTrips());
    const done = await a.engine.complete(first.id, machine.id, { ...ok(true), log: [{ seq: 1, stream: 'stdout', data: 'the end\n' }] });
    const after = new Map(a.store.roundTrips());
    const grew = Object.fromEntries([...after].map(([k, n]) => [k, n - (before.get(k) ?? 0)]).filter(([, n]) => n !== 0));
    expect(done.next?.job?.task).toBe('t2');
    // takt_lock_machine (lock, then hold, work orders and job); the log's end with the job's end, the
    // next job and the machine; the group's begin, events insert and notify with commit.
    expect(grew).toEqual({
      'begin+lock shared': 1,
      lockMachine: 1,
      'writes:appendLog+finishJobReport+insertJob+updateMachine': 1,
      insertEventsDrawLock3: 1,
      'notify+commit': 1,
    });
    expect((await a.store.getLogs(first.id, 0, 10)).map((c) => c.data)).toEqual(['the end\n']);
    expect((await a.store.getJob(first.id))?.state).toBe('succeeded');
  });

  it('liveness of many machines heard at once: one read and one write for the batch, one event each', async () => {
    const [a] = [await replica()];
    const ids: string[] = [];
    for (let i = 0; i < 30; i++) ids.push((await a.engine.createMachine({ name: `l${i}` }, 'test')).machine.id);
    const before = new Map(a.store.roundTrips());
    for (const [i, id] of ids.entries()) a.engine.heard(id, { via: 'agent', version: '1.0', address: `10.0.0.${i}` });
    await a.engine.liveness.flush();
    const after = new Map(a.store.roundTrips());
    const grew = Object.fromEntries([...after].map(([k, n]) => [k, n - (before.get(k) ?? 0)]).filter(([, n]) => n !== 0));
    // One store-scoped transaction: begin with the lock, the machines read, the batch written, the events, commit.
    expect(grew).toEqual({ 'begin+lock': 1, 'select * from': 1, setAgentLivenessBatch: 1, insertEvents30: 1, 'notify+commit': 1 });
    for (const [i, id] of ids.entries()) expect((await a.store.getMachine(id))?.agent).toMatchObject({ connected: true, version: '1.0', address: `10.0.0.${i}`, via: 'agent' });
    const events = await allEvents(a.store);
    for (const id of ids) expect(events.filter((e) => e.topic === `machines.update.${id}`).length, id).toBe(1);
  });

  it('liveness: a replica that did not hear the agent never marks it gone while another did; both sweeping record one disconnect', async () => {
    let now = Date.parse('2026-01-01T00:00:00Z');
    const clock = () => now;
    const W = 10_000;
    const [a, b] = [await replica({ livenessClock: clock, goneAfterMs: W, seenThrottleMs: 1000 }), await replica({ livenessClock: clock, goneAfterMs: W, seenThrottleMs: 1000 })];
    const ids: string[] = [];
    for (let i = 0; i < 50; i++) ids.push((await a.engine.createMachine({ name: `v${i}` }, 'test')).machine.id);
    for (const id of ids) {
      a.engine.heard(id, { via: 'agent' });
      b.engine.heard(id, { via: 'agent' });
    }
    await Promise.all([a.engine.liveness.flush(), b.engine.liveness.flush()]);
    // The agents talk to A only from now on.
    now += 6000;
    for (const id of ids) a.engine.heard(id, { via: 'agent' });
    await a.engine.liveness.flush();
    now += 6000;
    // B's window has passed, A's has not: B's sweep must not disconnect them.
    expect(b.engine.liveness.sweep()).toBe(ids.length);
    await b.engine.liveness.flush();
    for (const id of ids) expect((await a.store.getMachine(id))?.agent.connected, `machine ${id}`).toBe(true);
    // Now every agent is quiet for a whole window: both replicas sweep, at once.
    now += 2 * W;
    a.engine.liveness.sweep();
    b.engine.liveness.sweep();
    await Promise.all([a.engine.liveness.flush(), b.engine.liveness.flush()]);
    const events = await allEvents(a.store);
    for (const id of ids) {
      expect((await a.store.getMachine(id))?.agent.connected).toBe(false);
      const flips = events.filter((e) => e.topic === `machines.update.${id}` && (e.data as { agent?: { connected: boolean } }).agent?.connected === false);
      expect(flips.length, `machine ${id}: disconnects recorded`).toBe(1);
    }
  });
});
