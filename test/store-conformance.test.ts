/**
 * Store conformance: the same cases against the SQLite store and the PostgreSQL store, through the Store
 * and Tx interface only (src/store/store.ts), so the engine, API and CLI can run on either without
 * knowing which. Each PostgreSQL case runs in a fresh database of its own (test/helpers/postgres.ts);
 * the PostgreSQL cases are skipped, saying why, only when no PostgreSQL is reachable and CI is not set.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import SQLite from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import type { JoinToken } from '../src/model/join.js';
import type { Lease } from '../src/model/lease.js';
import type { Job, LogChunk, Machine, TaktEvent, WorkOrder } from '../src/model/machine.js';
import type { Rollout, RolloutItem } from '../src/model/rollout.js';
import { migrationProvider } from '../src/store/migrations.js';
import { openStore } from '../src/store/open.js';
import { openPostgresStore } from '../src/store/postgres.js';
import type { SqlStore } from '../src/store/sql-store.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import type { CredentialRecord, PackRecord } from '../src/store/store.js';
import { freshDatabase, pgUnavailable, withClient } from './helpers/postgres.js';
import { machineRecord, T0 } from './helpers/records.js';

/** One database under test: the store, raw SQL beside it, another store on the same database, cleanup. */
interface Db {
  store: SqlStore;
  /** Runs SQL on the database directly (outside the store), for states the store never writes itself. */
  exec(text: string): Promise<void>;
  /** Opens the store again on the same database (a restart, or a second process). */
  open(): Promise<SqlStore>;
  cleanup(): Promise<void>;
}

interface Backend {
  name: 'sqlite' | 'postgres';
  /** Why its cases are skipped; null when they run. */
  skip: string | null;
  make(): Promise<Db>;
}

const pgWhy = await pgUnavailable();

/** A Db whose every opened store is closed by cleanup, before `drop` removes the database. */
async function tracked(openStore: () => Promise<SqlStore>, exec: (text: string) => Promise<void>, drop: () => Promise<unknown>): Promise<Db> {
  const opened: SqlStore[] = [];
  const open = async () => {
    const s = await openStore();
    opened.push(s);
    return s;
  };
  return {
    store: await open(),
    open,
    exec,
    async cleanup() {
      for (const s of opened) await s.close().catch(() => undefined);
      await drop();
    },
  };
}

const backends: Backend[] = [
  {
    name: 'sqlite',
    skip: null,
    async make() {
      const dir = await mkdtemp(join(tmpdir(), 'takt-conf-'));
      const file = join(dir, 'takt.db');
      return tracked(
        () => openSqliteStore(file),
        async (text) => {
          const db = new SQLite(file);
          try {
            db.exec(text);
          } finally {
            db.close();
          }
        },
        () => rm(dir, { recursive: true, force: true }),
      );
    },
  },
  {
    name: 'postgres',
    skip: pgWhy,
    async make() {
      const db = await freshDatabase();
      return tracked(
        () => openPostgresStore(db.url),
        async (text) => {
          await withClient(db.url, (c) => c.query(text));
        },
        () => db.drop(),
      );
    },
  },
];

const at = (s: number) => new Date(Date.parse(T0) + s * 1000).toISOString();

function machine(name: string, over: Partial<Machine> = {}): Machine {
  return machineRecord(name, { pipeline: 'demo', stage: 'build', task: 'check', passed: ['build/a'], params: { greeting: 'hello', n: 3 }, profiles: ['base'], labels: { rack: 'r1' }, ...over });
}

function job(id: string, machineId: string, over: Partial<Job> = {}): Job {
  return {
    id,
    machineId,
    kind: 'pipeline',
    workOrderId: null,
    pipeline: 'demo',
    stage: 'build',
    task: 'check',
    variant: 'default',
    state: 'running',
    exitCode: null,
    reason: null,
    script: 'echo hi',
    params: { a: { value: 1, from: 'machine' } },
    outputs: {},
    timeoutMs: 3_000_000_000, // past a 32-bit integer: SQLite's integers are 64-bit, and so must PostgreSQL's be
    leaseExpiresAt: at(60),
    createdAt: T0,
    finishedAt: null,
    pack: 'demo@1.0.0',
    taskSha256: 'a'.repeat(64),
    scriptSha256: 'b'.repeat(64),
    ...over,
  };
}

function workOrder(id: string, machineId: string, over: Partial<WorkOrder> = {}): WorkOrder {
  return { id, machineId, blueprint: 'reboot', state: 'queued', taskIndex: 0, params: {}, reason: null, createdAt: T0, finishedAt: null, ...over };
}

for (const b of backends) {
  describe.skipIf(b.skip !== null)(b.skip === null ? `store conformance: ${b.name}` : `store conformance: ${b.name} — SKIPPED: ${b.skip}`, () => {
    let db: Db;
    let store: SqlStore;
    const setup = async () => {
      db = await b.make();
      store = db.store;
    };
    afterEach(async () => {
      await db?.cleanup();
    });

    it('migrates from empty to every known migration, again without change, and refuses a newer schema', async () => {
      await setup();
      expect(store.dialect).toBe(b.name);
      const known = Object.keys(await migrationProvider(b.name).getMigrations()).sort();
      await store.migrate(); // a second time: nothing to do
      const again = await db.open();
      expect(await again.listMachines()).toEqual([]);
      await again.close();
      // A database written by a newer takt (a migration this build has never heard of) is refused.
      await db.exec(`insert into kysely_migration (name, timestamp) values ('9999_from_the_future', '${T0}')`);
      await expect(db.open()).rejects.toMatchObject({ code: 'conflict', message: expect.stringMatching(/newer schema than this takt knows \(migrations 9999_from_the_future\).*nothing was changed/) });
      expect(known[0]).toBe('0001_initial');
    });

    it('machines: insert, read back exactly, update, liveness, facts, token, lock, delete', async () => {
      await setup();
      const full = machine('full', {
        facts: { hostname: 'h1', machineId: 'abc' } as never,
        ssh: { host: '10.0.0.5', port: 22, user: 'root', credential: 'key_1', hostKey: null } as never,
        boot: { macs: ['52:54:00:aa:bb:cc'], uuid: null, firmware: null, bootenv: 'local' } as never,
        classification: { pack: 'p', version: null, classifier: 'c', rule: 'r', reasons: ['x'], gave: { profiles: [], environment: null, pipeline: null, params: [] }, at: T0, by: 'me' },
        powerConfig: { driver: 'manual' } as never,
        outputs: { build_id: 'b-1' },
      });
      await store.transact(async (tx) => tx.insertMachine(full, 'hash-1'));
      expect(await store.getMachine(full.id)).toEqual(full);
      expect(await store.getMachineByName('full')).toEqual(full);
      expect(await store.getMachineTokenHash(full.id)).toBe('hash-1');
      expect(await store.getMachine('nope')).toBeUndefined();

      const updated = { ...full, state: 'running' as const, attempt: 2, params: { greeting: 'bye' }, currentJob: 'j1', updatedAt: at(5) };
      await store.transact(async (tx) => {
        expect(await tx.lockMachine(full.id)).toEqual(full);
        await tx.updateMachine(updated);
        // A write is seen by the reads of its own transaction.
        expect((await tx.getMachine(full.id))?.attempt).toBe(2);
      });
      expect(await store.getMachine(full.id)).toEqual(updated);

      await store.transact((tx) => tx.setAgentLiveness([{ id: full.id, agent: { connected: true, lastSeenAt: at(6), version: '1.2.3', address: '10.0.0.5', via: 'agent', since: at(6) } }]));
      // null version/address keep the ones stored
      await store.transact((tx) => tx.setAgentLiveness([{ id: full.id, agent: { connected: false, lastSeenAt: at(7), version: null, address: null, via: 'agent', since: at(7) } }]));
      expect((await store.getMachine(full.id))?.agent).toEqual({ connected: false, lastSeenAt: at(7), version: '1.2.3', address: '10.0.0.5', via: 'agent', since: at(7) });
      // updateMachine never writes liveness
      await store.transact((tx) => tx.updateMachine(updated));
      expect((await store.getMachine(full.id))?.agent.version).toBe('1.2.3');

      await store.transact((tx) => tx.setMachineFacts(full.id, { hostname: 'h2' } as never));
      expect((await store.getMachine(full.id))?.facts).toEqual({ hostname: 'h2' });
      await store.transact((tx) => tx.setMachineTokenHash(full.id, 'hash-2'));
      expect(await store.getMachineTokenHash(full.id)).toBe('hash-2');

      await store.transact((tx) => tx.putHold({ machineId: full.id, rolloutId: 'r1', since: T0 }));
      await store.transact((tx) => tx.deleteMachine(full.id));
      expect(await store.getMachine(full.id)).toBeUndefined();
      expect(await store.getHold(full.id)).toBeUndefined(); // the hold dies with its machine
    });

    it('machines: a paused machine keeps its restored place; legacy index positions are listed', async () => {
      await setup();
      const held = machine('held', { state: 'paused', restoredPlace: { state: 'idle', reason: null } });
      await store.transact((tx) => tx.insertMachine(held, 'h'));
      expect((await store.getMachine(held.id))?.restoredPlace).toEqual({ state: 'idle', reason: null });
      await db.exec(`update machines set passed = null, stage_index = 2, task_index = 1 where id = '${held.id}'`);
      expect(await store.listLegacyPositions()).toEqual([{ id: held.id, stageIndex: 2, taskIndex: 1, approvedStage: -1 }]);
    });

    it('machines: filters, byte-wise name order, paging, counts and text look-ups', async () => {
      await setup();
      const names = ['b-2', 'a_1', 'B-3', 'a%x', 'demo-1', 'demo-10', 'web-1'];
      await store.transact(async (tx) => {
        for (const [i, n] of names.entries()) {
          await tx.insertMachine(
            machine(n, {
              state: i % 2 ? 'done' : 'idle',
              pipeline: i < 3 ? 'p1' : null,
              environment: i < 4 ? 'local' : 'lab',
              broker: i === 6 ? null : 'local',
              createdAt: at(i),
              facts: i === 1 ? ({ machineId: 'MID-Abc' } as never) : null,
              ...(i === 2 ? { boot: { macs: ['52:54:00:00:00:0a'], uuid: '1111-aaaa', firmware: null, bootenv: 'local' } as never } : {}),
              ...(i === 3 ? { ssh: { host: 'h', port: 22, user: 'root', credential: 'k_1', hostKey: null } as never } : {}),
              ...(i === 4 ? { ssh: { host: 'h', port: 22, user: 'root', credential: 'kx1', hostKey: null } as never } : {}),
            }),
            'h',
          );
        }
        await tx.setAgentLiveness([{ id: 'm-web-1', agent: { connected: true, lastSeenAt: T0, version: null, address: null, via: 'agent', since: T0 } }]);
      });
      const list = async (f: Parameters<SqlStore['listMachines']>[0]) => (await store.listMachines(f)).map((m) => m.name);
      // Byte-wise (as SQLite's BINARY collation): upper case before lower, '%' before '_'.
      expect(await list({})).toEqual(['B-3', 'a%x', 'a_1', 'b-2', 'demo-1', 'demo-10', 'web-1']);
      expect(await list({ limit: 2, offset: 2 })).toEqual(['a_1', 'b-2']);
      expect(await list({ state: 'done' })).toEqual(['a%x', 'a_1', 'demo-10']);
      expect(await list({ pipeline: 'p1' })).toEqual(['B-3', 'a_1', 'b-2']);
      expect(await list({ environment: 'lab' })).toEqual(['demo-1', 'demo-10', 'web-1']);
      expect(await list({ broker: 'local', environment: 'lab' })).toEqual(['demo-1', 'demo-10']);
      expect(await list({ agentConnected: true })).toEqual(['web-1']);
      expect(await list({ agentConnected: false, environment: 'lab' })).toEqual(['demo-1', 'demo-10']);
      // Substring, literal (% and _ are not wildcards), and ASCII case does not matter (SQLite's LIKE).
      expect(await list({ name: 'demo-1' })).toEqual(['demo-1', 'demo-10']);
      expect(await list({ name: '_' })).toEqual(['a_1']);
      expect(await list({ name: '%' })).toEqual(['a%x']);
      expect(await list({ name: 'b-3' })).toEqual(['B-3']);
      expect(await list({ name: 'EB-' })).toEqual(['web-1']);
      expect(await list({ name: '' })).toHaveLength(7);
      expect(await store.countMachines()).toBe(7);
      expect(await store.countMachines({ environment: 'local', state: 'idle' })).toBe(2);
      expect(await store.countMachines({ name: 'zzz' })).toBe(0);

      expect((await store.listMachinesWithFactText('mid-abc')).map((m) => m.name)).toEqual(['a_1']);
      expect(await store.listMachinesWithFactText('MID_Abc')).toEqual([]);
      expect((await store.listMachinesWithBootText(['nothing', '52:54:00:00:00:0a'])).map((m) => m.name)).toEqual(['B-3']);
      expect(await store.listMachinesWithBootText([])).toEqual([]);
      expect(await store.credentialUsers('k_1')).toEqual(['a%x']);
      expect(await store.credentialUsers('kx1')).toEqual(['demo-1']);
      expect(await store.credentialUsers('k')).toEqual([]);
    });

    it('jobs: insert, state, update with report, finish, filters, paging, order, leases', async () => {
      await setup();
      await store.transact(async (tx) => {
        await tx.insertMachine(machine('m1'), 'h');
        await tx.insertMachine(machine('m2'), 'h');
        await tx.insertJob(job('j1', 'm-m1', { createdAt: at(1), leaseExpiresAt: at(10) }));
        await tx.insertJob(job('j2', 'm-m1', { createdAt: at(2), task: 'other', leaseExpiresAt: at(20) }));
        await tx.insertJob(job('j3', 'm-m2', { createdAt: at(2), kind: 'workorder', workOrderId: 'w1', leaseExpiresAt: at(30) }));
      });
      expect(await store.getJob('j1')).toEqual(job('j1', 'm-m1', { createdAt: at(1), leaseExpiresAt: at(10) }));
      expect(await store.getJobState('j2')).toEqual({ id: 'j2', machineId: 'm-m1', state: 'running' });
      expect(await store.getJobState('none')).toBeUndefined();
      expect(await store.getJobReport('j1')).toBeNull();

      const ids = async (f: Parameters<SqlStore['listJobs']>[0]) => (await store.listJobs(f)).map((j) => j.id);
      expect(await ids({})).toEqual(['j3', 'j2', 'j1']);
      expect(await ids({ order: 'asc' })).toEqual(['j1', 'j2', 'j3']);
      expect(await ids({ machineId: 'm-m1' })).toEqual(['j2', 'j1']);
      expect(await ids({ task: 'other' })).toEqual(['j2']);
      expect(await ids({ workOrderId: 'w1' })).toEqual(['j3']);
      expect(await ids({ since: at(2) })).toEqual(['j3', 'j2']);
      expect(await ids({ limit: 1, offset: 1 })).toEqual(['j2']);

      expect((await store.listExpiredJobs(at(25))).map((j) => j.id).sort()).toEqual(['j1', 'j2']);
      await store.transact((tx) => tx.renewLease('j1', at(100)));
      expect((await store.listExpiredJobs(at(25))).map((j) => j.id)).toEqual(['j2']);
      expect(await store.transact((tx) => tx.renewRunningLeases(at(200)))).toBe(3);

      const report = { exitCode: 0, outputs: { x: 1 } };
      await store.transact((tx) => tx.finishJob({ ...job('j1', 'm-m1'), state: 'succeeded', exitCode: 0, outputs: { x: 1 }, finishedAt: at(50), leaseExpiresAt: null }, report));
      const j1 = await store.getJob('j1');
      expect(j1).toMatchObject({ state: 'succeeded', exitCode: 0, outputs: { x: 1 }, finishedAt: at(50), leaseExpiresAt: null, createdAt: at(1) });
      expect(await store.getJobReport('j1')).toEqual(report);
      expect(await ids({ state: 'running' })).toEqual(['j3', 'j2']);
      // a finished job's lease is not renewed
      await store.transact((tx) => tx.renewLease('j1', at(300)));
      expect((await store.getJob('j1'))?.leaseExpiresAt).toBeNull();

      await store.transact((tx) => tx.updateJob({ ...job('j2', 'm-m1', { createdAt: at(2) }), state: 'failed', exitCode: -1, reason: 'boom' }, { exitCode: -1 }));
      expect(await store.getJob('j2')).toMatchObject({ state: 'failed', exitCode: -1, reason: 'boom', task: 'check' });
      expect(await store.getJobReport('j2')).toEqual({ exitCode: -1 });
    });

    it('logs: append (resends ignored), read after a seq, sizes in UTF-8 bytes, replace', async () => {
      await setup();
      const chunk = (seq: number, data: string, stream: LogChunk['stream'] = 'stdout'): LogChunk => ({ jobId: 'j1', seq, stream, data, at: at(seq) });
      expect(await store.transact((tx) => tx.appendLogs([chunk(1, 'héllo\n')]))).toBe(1);
      expect(await store.transact((tx) => tx.appendLogs([chunk(1, 'again'), chunk(2, 'two\n', 'stderr'), chunk(3, 'three\n')]))).toBe(2);
      expect(await store.transact((tx) => tx.appendLogs([]))).toBe(0);
      expect(await store.getLogs('j1')).toEqual([chunk(1, 'héllo\n'), chunk(2, 'two\n', 'stderr'), chunk(3, 'three\n')]);
      expect((await store.getLogs('j1', 1, 1)).map((c) => c.seq)).toEqual([2]);
      expect(await store.lastLogSeq('j1')).toBe(3);
      expect(await store.lastLogSeq('none')).toBe(0);
      expect(await store.transact((tx) => tx.logSize('j1'))).toEqual({ chunks: 3, bytes: 7 + 4 + 6 });
      expect(await store.transact((tx) => tx.logSize('none'))).toEqual({ chunks: 0, bytes: 0 });
      await store.transact((tx) => tx.replaceLogData('j1', 2, '********\n'));
      expect((await store.getLogs('j1', 1, 1))[0]?.data).toBe('********\n');
      // A NUL in a script's output: SQLite keeps it; PostgreSQL's text cannot, so it becomes U+FFFD.
      await store.transact((tx) => tx.appendLogs([chunk(4, 'a\u0000b')]));
      await store.transact((tx) => tx.appendLogs([chunk(5, 'c\u0000'), chunk(6, 'd')]));
      const nul = b.name === 'postgres' ? '\uFFFD' : '\u0000';
      expect((await store.getLogs('j1', 3)).map((c) => c.data)).toEqual([`a${nul}b`, `c${nul}`, 'd']);
    });

    it('work orders: insert, read back, update, filters, and the next one a machine runs', async () => {
      await setup();
      const w1 = workOrder('w1', 'm1', { createdAt: at(1) });
      const w2 = workOrder('w2', 'm1', { createdAt: at(2), command: { script: 'uptime' } as never, params: { a: 1 } });
      const w3 = workOrder('w3', 'm2', { createdAt: at(0), state: 'succeeded', passed: ['a'], finishedAt: at(3), taskIndex: 1 });
      await store.transact(async (tx) => {
        for (const w of [w1, w2, w3]) await tx.insertWorkOrder(w);
      });
      expect(await store.getWorkOrder('w2')).toEqual(w2);
      expect(await store.getWorkOrder('w3')).toEqual(w3);
      expect(await store.getWorkOrder('none')).toBeUndefined();
      expect((await store.listWorkOrders()).map((w) => w.id)).toEqual(['w3', 'w1', 'w2']);
      expect((await store.listWorkOrders({ machineId: 'm1' })).map((w) => w.id)).toEqual(['w1', 'w2']);
      expect((await store.listWorkOrders({ state: 'succeeded' })).map((w) => w.id)).toEqual(['w3']);
      expect((await store.listWorkOrders({ limit: 1, offset: 1 })).map((w) => w.id)).toEqual(['w1']);
      expect((await store.nextWorkOrder('m1'))?.id).toBe('w1'); // the oldest queued
      await store.transact((tx) => tx.updateWorkOrder({ ...w2, state: 'running', passed: ['x'] }));
      expect(await store.nextWorkOrder('m1')).toEqual({ ...w2, state: 'running', passed: ['x'] }); // the running one first
      expect(await store.nextWorkOrder('m2')).toBeUndefined();
    });

    it('changes and events: numbered from 1, written with their transaction, heard only after commit, never for a rollback', async () => {
      await setup();
      const heard: TaktEvent[][] = [];
      store.onEvents((e) => heard.push(e));
      const s1 = await store.transact(async (tx) => {
        const s = await tx.change('alice', 'machines/m1', 'create', null, { name: 'm1' });
        tx.emit('machines.create.m1', { name: 'm1' });
        tx.emit('machines.update.m1', { name: 'm1', n: 2 });
        expect(heard).toEqual([]);
        return s;
      });
      expect(s1).toBe(1);
      expect(heard).toHaveLength(1);
      expect(heard[0]!.map((e) => [e.id, e.topic])).toEqual([
        [1, 'machines.create.m1'],
        [2, 'machines.update.m1'],
      ]);
      await expect(
        store.transact(async (tx) => {
          await tx.change('bob', 'machines/m1', 'update', { name: 'm1' }, { name: 'm2' });
          tx.emit('machines.update.m1', {});
          throw new Error('refused');
        }),
      ).rejects.toThrow('refused');
      expect(heard).toHaveLength(1);
      const s2 = await store.transact((tx) => tx.change('carol', 'content/x', 'delete', { a: 1 }, undefined));
      expect(s2).toBe(2); // the rolled-back change left no gap
      expect(await store.getChange(2)).toMatchObject({ seq: 2, author: 'carol', object: 'content/x', action: 'delete', before: { a: 1 }, after: null });
      expect(await store.getChange(99)).toBeUndefined();
      expect((await store.listChanges()).map((c) => c.seq)).toEqual([2, 1]);
      expect((await store.listChanges({ object: 'machines/m1' })).map((c) => c.seq)).toEqual([1]);
      expect((await store.listChanges({ after: 1 })).map((c) => c.seq)).toEqual([2]);
      expect((await store.listChanges({ limit: 1, offset: 1 })).map((c) => c.seq)).toEqual([1]);

      const events = await store.listEvents(0);
      expect(events.map((e) => e.topic)).toEqual(['machines.create.m1', 'machines.update.m1']);
      expect(events[1]!.data).toEqual({ name: 'm1', n: 2 });
      expect((await store.listEvents(1)).map((e) => e.id)).toEqual([2]);
      // A bulk operation emits more events than one insert carries.
      await store.transact(async (tx) => {
        for (let i = 0; i < 250; i++) tx.emit(`things.create.${i}`, { i });
      });
      const all = await store.listEvents(0, 10_000);
      expect(all).toHaveLength(252);
      expect(all.slice(2).map((e) => (e.data as { i: number }).i)).toEqual([...Array(250).keys()]);
      expect(new Set(all.map((e) => e.id)).size).toBe(252);
      expect(await store.listEvents(0, 5)).toHaveLength(5);
      await store.pruneEvents(10);
      const kept = await store.listEvents(0, 10_000);
      expect(kept).toHaveLength(10);
      expect(kept.at(-1)!.id).toBe(all.at(-1)!.id);
    });

    it('concurrent writers: N parallel transactions get distinct, gap-free change numbers; failures take only themselves down', async () => {
      await setup();
      const heard: TaktEvent[] = [];
      store.onEvents((e) => heard.push(...e));
      const N = 40;
      const results = await Promise.allSettled(
        Array.from({ length: N }, (_, i) =>
          store.transact(async (tx) => {
            const seq = await tx.change('test', `things/${i}`, 'create', null, { i });
            tx.emit(`things.create.${i}`, { i, seq });
            if (i % 7 === 3) throw new Error(`thing ${i} refused`);
            if (i % 7 === 5) {
              // Refused by the database itself (a duplicate key): on PostgreSQL that aborts the transaction
              // until its savepoint is rolled back, which must not take the rest of the group with it.
              const c: CredentialRecord = { name: `dup-${i}`, kind: 'ssh-key', keyType: 'ssh-ed25519', fingerprint: 'f', publicKey: 'k', secret: { $secure: 'v1:x' }, createdAt: T0 };
              await tx.insertCredential(c);
              await tx.insertCredential(c);
            }
            return seq;
          }),
        ),
      );
      const ok = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      const failed = results.filter((r) => r.status === 'rejected').length;
      const refused = (i: number) => i % 7 === 3 || i % 7 === 5;
      expect(failed).toBe(Array.from({ length: N }, (_, i) => i).filter(refused).length);
      expect([...ok].sort((a, c) => a - c)).toEqual(Array.from({ length: N - failed }, (_, i) => i + 1));
      const changes = await store.listChanges({ limit: 1000 });
      expect(changes.map((c) => c.seq).sort((a, c) => a - c)).toEqual(Array.from({ length: N - failed }, (_, i) => i + 1));
      expect(changes.some((c) => refused((c.after as { i: number }).i))).toBe(false);
      expect(await store.listCredentials()).toEqual([]);
      // Every committed transaction's event, in id order, none of a rolled-back one.
      expect(heard).toHaveLength(N - failed);
      expect(heard.map((e) => e.id)).toEqual([...heard.map((e) => e.id)].sort((a, c) => a - c));
      expect(heard.some((e) => refused((e.data as { i: number }).i))).toBe(false);
    });

    it.skipIf(b.name !== 'postgres')('concurrent writers on two connections of one database (two processes) never share a change number', async () => {
      await setup();
      const other = await db.open();
      const N = 30;
      const write = (s: SqlStore, who: string, i: number) =>
        s.transact(async (tx) => {
          // Reads and writes inside, so the transactions really overlap on the server.
          await tx.getMachine('none');
          const seq = await tx.change(who, `things/${who}-${i}`, 'create', null, { i });
          tx.emit(`things.create.${who}-${i}`, { seq });
          return seq;
        });
      const seqs = await Promise.all(Array.from({ length: N }, (_, i) => [write(store, 'a', i), write(other, 'b', i)]).flat());
      expect([...seqs].sort((x, y) => x - y)).toEqual(Array.from({ length: 2 * N }, (_, i) => i + 1));
      // Event ids follow the commit order, which is the change order: the seq each event carries grows with its id.
      const events = await store.listEvents(0, 1000);
      expect(events).toHaveLength(2 * N);
      const order = events.map((e) => (e.data as { seq: number }).seq);
      expect(order).toEqual([...order].sort((x, y) => x - y));
      // Join-token uses taken from both at once never exceed the token's uses.
      const token: JoinToken = { id: 't1', name: null, pipeline: null, profiles: [], environment: 'local', url: 'https://e', maxUses: 3, uses: 0, expiresAt: at(1000), createdBy: 'admin', createdAt: T0, revokedAt: null, revokedBy: null, machines: [], machine: null };
      await store.transact((tx) => tx.insertJoinToken(token, 'h'));
      const taken = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? store : other).transact((tx) => tx.takeJoinTokenUse('t1', at(1)))));
      expect(taken.filter(Boolean)).toHaveLength(3);
      expect((await store.getJoinToken('t1'))?.uses).toBe(3);
    });

    it('content and packs: upserts, pins, immutable versions, deletes', async () => {
      await setup();
      await store.transact(async (tx) => {
        await tx.putContent({ kind: 'tasks', name: 'b', layer: 'demo', def: { script: 'x' }, sha256: 's1' });
        await tx.putContent({ kind: 'pipelines', name: 'z', layer: 'local', def: { stages: [] }, sha256: 's2' });
        await tx.putContent({ kind: 'tasks', name: 'a', layer: 'demo', def: {}, sha256: 's3' });
        await tx.putContent({ kind: 'tasks', name: 'b', layer: 'local', def: { script: 'y' }, sha256: 's4' });
      });
      expect((await store.listContent()).map((c) => `${c.kind}/${c.name}@${c.layer}:${c.sha256}`)).toEqual(['pipelines/z@local:s2', 'tasks/a@demo:s3', 'tasks/b@local:s4']);
      expect((await store.listContent()).find((c) => c.name === 'b')?.def).toEqual({ script: 'y' });
      await store.transact((tx) => tx.deleteContent('tasks', 'a'));
      expect(await store.listContent()).toHaveLength(2);

      const v1: PackRecord = { name: 'demo', version: '1.0.0', description: 'd', requires: { base: '^1' }, files: { 'pack.yaml': 'name: demo\n' }, sha256: 'p1', installedAt: at(1) };
      const v2: PackRecord = { ...v1, version: '2.0.0', requires: {}, files: { 'pack.yaml': 'v2' }, sha256: 'p2', installedAt: at(2) };
      await store.transact(async (tx) => {
        await tx.putPackVersion(v1);
        await tx.putPackVersion(v2);
        await tx.putPackVersion({ ...v1, sha256: 'changed', files: {} }); // versions are immutable
        await tx.putPackVersion({ ...v1, name: 'base', description: null, requires: {} });
        await tx.putPack(v1);
      });
      expect(await store.getPackVersion('demo', '1.0.0')).toEqual(v1);
      expect(await store.getPackVersion('demo', '9.9.9')).toBeUndefined();
      expect((await store.listPackVersions()).map((p) => `${p.name}@${p.version}`)).toEqual(['base@1.0.0', 'demo@1.0.0', 'demo@2.0.0']);
      expect(await store.listPackVersions('demo')).toEqual([v1, v2].map(({ files: _f, ...rest }) => rest));
      const { requires: _r, ...pin1 } = v1;
      expect(await store.getPack('demo')).toEqual(pin1);
      await store.transact((tx) => tx.putPack(v2));
      expect((await store.getPack('demo'))?.version).toBe('2.0.0');
      expect((await store.listPacks()).map((p) => p.name)).toEqual(['demo']);
      await store.transact(async (tx) => {
        await tx.deletePackVersion('demo', '1.0.0');
        await tx.deletePack('demo');
      });
      expect(await store.getPack('demo')).toBeUndefined();
      expect((await store.listPackVersions('demo')).map((p) => p.version)).toEqual(['2.0.0']);
    });

    it('in a transaction, the hold and next work order of a locked machine follow that transaction\'s writes', async () => {
      await setup();
      const w1 = workOrder('w1', 'm1', { createdAt: at(1) });
      const w2 = workOrder('w2', 'm1', { createdAt: at(2), command: { script: 'uptime' } as never, params: { a: 1 }, passed: ['p'] });
      await store.transact(async (tx) => {
        await tx.insertMachine(machine('one', { id: 'm1' }), 'hash');
        for (const w of [w1, w2]) await tx.insertWorkOrder(w);
        await tx.putHold({ machineId: 'm1', rolloutId: 'r1', since: at(1) });
      });
      // Row-scoped (PostgreSQL reads them with the lock) and store-scoped alike.
      for (const scope of ['rows', 'store'] as const) {
        const seen = await store.transact(
          async (tx) => {
            const out: unknown[] = [];
            const lock = async () => expect((await tx.lockMachine('m1'))?.id).toBe('m1');
            // Each write alone after a fresh lock, then the read it affects.
            await lock();
            out.push(await tx.getHold('m1'), await tx.nextWorkOrder('m1'));
            await tx.updateWorkOrder({ ...w2, state: 'running' });
            out.push(await tx.nextWorkOrder('m1'));
            await lock();
            await tx.deleteHold('m1');
            out.push(await tx.getHold('m1'));
            await lock();
            await tx.putHold({ machineId: 'm1', rolloutId: 'r2', since: at(5) });
            out.push(await tx.getHold('m1'));
            await lock();
            await tx.updateWorkOrder({ ...w2, state: 'succeeded' });
            out.push((await tx.nextWorkOrder('m1'))?.id);
            await lock();
            await tx.insertWorkOrder(workOrder('w0', 'm1', { createdAt: at(0) }));
            out.push((await tx.nextWorkOrder('m1'))?.id);
            expect(await tx.lockMachine('m-none')).toBeUndefined();
            throw Object.assign(new Error('roll back'), { out });
          },
          { scope },
        ).catch((e: { out: unknown[] }) => e.out);
        expect(seen, scope).toEqual([{ machineId: 'm1', rolloutId: 'r1', since: at(1) }, w1, { ...w2, state: 'running' }, undefined, { machineId: 'm1', rolloutId: 'r2', since: at(5) }, 'w1', 'w0']);
      }
      // Rolled back: as before.
      expect(await store.getHold('m1')).toEqual({ machineId: 'm1', rolloutId: 'r1', since: at(1) });
      expect((await store.nextWorkOrder('m1'))?.id).toBe('w1');
    });

    it('rollouts, items and holds', async () => {
      await setup();
      const rollout = (id: string, s: number, over: Partial<Rollout> = {}): Rollout => ({ id, spec: { target: 'demo' } as never, state: 'running', reason: null, wave: 0, waves: 3, author: 'admin', createdAt: at(s), updatedAt: at(s), ...over });
      const items: RolloutItem[] = Array.from({ length: 600 }, (_, i) => ({ rolloutId: 'r1', machineId: `m${i}`, machineName: `n${String(i).padStart(3, '0')}`, wave: 2 - (i % 3), state: 'pending', reason: null, workOrderId: null, startedAt: null, finishedAt: null }));
      await store.transact(async (tx) => {
        await tx.insertRollout(rollout('r1', 1), items);
        await tx.insertRollout(rollout('r2', 2, { state: 'completed' }), []);
      });
      expect(await store.getRollout('r1')).toEqual(rollout('r1', 1));
      expect((await store.listRollouts()).map((r) => r.id)).toEqual(['r2', 'r1']);
      expect((await store.listRollouts({ states: ['running', 'paused'] })).map((r) => r.id)).toEqual(['r1']);
      expect((await store.listRollouts({ limit: 1, offset: 1 })).map((r) => r.id)).toEqual(['r1']);
      const listed = await store.listRolloutItems('r1');
      expect(listed).toHaveLength(600);
      expect(listed.slice(0, 2).map((i) => `${i.wave}:${i.machineName}`)).toEqual(['0:n002', '0:n005']);
      await store.transact(async (tx) => {
        await tx.updateRollout(rollout('r1', 1, { wave: 1, state: 'paused', reason: 'approval', updatedAt: at(9) }));
        await tx.updateRolloutItem({ ...items[0]!, state: 'running', workOrderId: 'w1', startedAt: at(9) });
      });
      expect(await store.getRollout('r1')).toMatchObject({ wave: 1, state: 'paused', reason: 'approval', updatedAt: at(9) });
      expect((await store.listRolloutItems('r1')).find((i) => i.machineId === 'm0')).toMatchObject({ state: 'running', workOrderId: 'w1', startedAt: at(9) });

      await store.transact(async (tx) => {
        await tx.putHold({ machineId: 'm2', rolloutId: 'r1', since: at(2) });
        await tx.putHold({ machineId: 'm1', rolloutId: 'r1', since: at(1) });
        await tx.putHold({ machineId: 'm2', rolloutId: 'r2', since: at(3) }); // replaces m2's hold
      });
      expect(await store.getHold('m2')).toEqual({ machineId: 'm2', rolloutId: 'r2', since: at(3) });
      expect((await store.listHolds()).map((h) => h.machineId)).toEqual(['m1', 'm2']);
      expect(await store.transact((tx) => tx.deleteHold('m1'))).toBe(true);
      expect(await store.transact((tx) => tx.deleteHold('m1'))).toBe(false);
      expect(await store.getHold('m1')).toBeUndefined();
    });

    it('settings, join tokens, credentials, DHCP leases', async () => {
      await setup();
      await store.transact(async (tx) => {
        await tx.putSetting('policy', { a: [1, 2] });
        await tx.putSetting('policy', { a: [3] });
        await tx.putSetting('other', 'x');
        await tx.putSetting('other', null);
      });
      expect(await store.getSetting('policy')).toEqual({ a: [3] });
      expect(await store.getSetting('other')).toBeUndefined();

      const token = (id: string, s: number, over: Partial<JoinToken> = {}): JoinToken => ({ id, name: `t-${id}`, pipeline: 'demo', profiles: ['p'], environment: 'local', url: 'https://e:8443', maxUses: 2, uses: 0, expiresAt: at(100), createdBy: 'admin', createdAt: at(s), revokedAt: null, revokedBy: null, machines: [], machine: null, ...over });
      await store.transact(async (tx) => {
        await tx.insertJoinToken(token('t1', 1), 'hash1');
        await tx.insertJoinToken(token('t2', 2, { maxUses: 5 }), 'hash2');
      });
      expect(await store.getJoinToken('t1')).toEqual(token('t1', 1));
      expect(await store.getJoinTokenHash('t2')).toBe('hash2');
      // A deploy's token names the one machine it registers again (0032_join_token_machine).
      await store.transact((tx) => tx.insertJoinToken(token('t0', 0, { machine: 'm-deployed' }), 'hash0'));
      expect((await store.getJoinToken('t0'))?.machine).toBe('m-deployed');
      expect((await store.listJoinTokens()).map((t) => t.id)).toEqual(['t2', 't1', 't0']);
      expect((await store.listJoinTokens({ limit: 1, offset: 1 })).map((t) => t.id)).toEqual(['t1']);
      const take = (id: string, now: string) => store.transact((tx) => tx.takeJoinTokenUse(id, now));
      expect([await take('t1', at(5)), await take('t1', at(5)), await take('t1', at(5))]).toEqual([true, true, false]);
      expect(await take('t2', at(100))).toBe(false); // expired
      await store.transact((tx) => tx.updateJoinToken({ ...token('t2', 2, { maxUses: 5 }), revokedAt: at(6), revokedBy: 'bob', machines: ['m1'] }));
      expect(await take('t2', at(7))).toBe(false); // revoked
      expect(await store.getJoinToken('t2')).toMatchObject({ revokedAt: at(6), revokedBy: 'bob', machines: ['m1'], uses: 0 });

      const cred = (name: string): CredentialRecord => ({ name, kind: 'ssh-key', keyType: 'ssh-ed25519', fingerprint: `SHA256:${name}`, publicKey: `ssh-ed25519 AAAA takt:${name}`, secret: { $secure: 'v1:abc' }, createdAt: T0 });
      await store.transact(async (tx) => {
        await tx.insertCredential(cred('zeta'));
        await tx.insertCredential(cred('alpha'));
      });
      expect(await store.getCredential('zeta')).toEqual(cred('zeta'));
      expect((await store.listCredentials()).map((c) => c.name)).toEqual(['alpha', 'zeta']);
      await store.transact((tx) => tx.deleteCredential('zeta'));
      expect(await store.getCredential('zeta')).toBeUndefined();
      await expect(store.transact((tx) => tx.insertCredential(cred('alpha')))).rejects.toThrow();

      const far = Date.parse('2100-01-01T00:00:00Z'); // milliseconds past 2^32
      const lease = (mac: string, ip: string, over: Partial<Lease> = {}): Lease => ({ mac, ip, state: 'bound', expiresAt: far, ...over });
      await store.transact(async (tx) => {
        await tx.putLease(lease('52:54:00:00:00:02', '10.0.0.12', { clientId: 'c', hostname: 'h', uuid: 'u', arch: 7 }));
        await tx.putLease(lease('52:54:00:00:00:01', '10.0.0.11', { state: 'offered' }));
      });
      expect(await store.listLeases()).toEqual([lease('52:54:00:00:00:01', '10.0.0.11', { state: 'offered' }), lease('52:54:00:00:00:02', '10.0.0.12', { clientId: 'c', hostname: 'h', uuid: 'u', arch: 7 })]);
      // A lease on an address drops any other client's lease on it; the same MAC's lease is replaced.
      await store.transact((tx) => tx.putLease(lease('52:54:00:00:00:03', '10.0.0.11')));
      await store.transact((tx) => tx.putLease(lease('52:54:00:00:00:02', '10.0.0.13')));
      expect((await store.listLeases()).map((l) => `${l.mac}=${l.ip}`)).toEqual(['52:54:00:00:00:03=10.0.0.11', '52:54:00:00:00:02=10.0.0.13']);
      await store.transact((tx) => tx.deleteLease('52:54:00:00:00:03'));
      await store.transact((tx) => tx.deleteLease('none'));
      expect((await store.listLeases()).map((l) => l.mac)).toEqual(['52:54:00:00:00:02']);
    });

    it('a transaction that fails is rolled back whole: no row, no change, no event', async () => {
      await setup();
      await expect(
        store.transact(async (tx) => {
          await tx.insertMachine(machine('ghost'), 'h');
          await tx.insertJob(job('jg', 'm-ghost'));
          await tx.change('x', 'machines/m-ghost', 'create', null, {});
          tx.emit('machines.create.m-ghost', {});
          await tx.insertMachine(machine('ghost'), 'h'); // the name is taken: the database refuses
        }),
      ).rejects.toThrow();
      expect(await store.getMachine('m-ghost')).toBeUndefined();
      expect(await store.getJob('jg')).toBeUndefined();
      expect(await store.listChanges()).toEqual([]);
      expect(await store.listEvents(0)).toEqual([]);
      // and the store goes on
      expect(await store.transact((tx) => tx.change('x', 'o', 'create', null, {}))).toBe(1);
    });
  });
}

describe('store selection (store/open.ts)', () => {
  it('defaults to SQLite in the data dir; refuses what is not a store, without showing a password', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'takt-open-'));
    try {
      const o = await openStore(undefined, dir);
      expect(o).toMatchObject({ kind: 'sqlite', where: join(dir, 'takt.db') });
      await o.store.close();
      await expect(openStore('mysql://u:hunter2@h/db', dir)).rejects.toMatchObject({ code: 'bad_request', message: expect.not.stringContaining('hunter2') });
      // An unreachable PostgreSQL is said with its URL, password replaced.
      await expect(openStore('postgres://u:hunter2@127.0.0.1:1/db', dir)).rejects.toMatchObject({ code: 'unavailable', message: expect.stringContaining('postgres://u:****@127.0.0.1:1/db') });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it.skipIf(pgWhy !== null)('postgres: the endpoint lock — shared by takt serve replicas, exclusive for a copy, released when its store closes', async () => {
    const pgdb = await freshDatabase();
    try {
      const url = pgdb.url;
      const first = await openStore(url, '/nonexistent', { exclusive: true });
      expect(first.kind).toBe('postgres');
      expect(first.holders).toBe(1);
      await expect(openStore(url, '/nonexistent', { exclusive: true })).rejects.toMatchObject({ code: 'conflict', message: expect.stringMatching(/another takt serve uses/) });
      // A copy holds it: no replica starts under it.
      await expect(openStore(url, '/nonexistent', { endpointLock: 'shared' })).rejects.toMatchObject({ code: 'conflict', message: expect.stringMatching(/takt store migrate is copying into or out of postgres:\/\//) });
      await first.store.close();
      // Replicas: any number share it, and each is told how many hold it.
      const a = await openStore(url, '/nonexistent', { endpointLock: 'shared' });
      const b = await openStore(url, '/nonexistent', { endpointLock: 'shared' });
      expect([a.holders, b.holders]).toEqual([1, 2]);
      // A copy is refused while any replica runs, and says how many do.
      await expect(openStore(url, '/nonexistent', { endpointLock: 'exclusive' })).rejects.toMatchObject({ code: 'conflict', message: expect.stringContaining('(2 replicas running)') });
      await a.store.close();
      await b.store.close();
      const second = await openStore(url, '/nonexistent', { exclusive: true });
      await second.store.close();
    } finally {
      await pgdb.drop();
    }
  });
});
