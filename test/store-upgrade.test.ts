/**
 * Store conformance, upgrades: a store at the previous release's schema (every migration but the newest,
 * built with migrations.ts `migrateTo`), filled through plain SQL in that older shape, opens normally —
 * migrated to this build's schema — and every row reads back through the Store interface as it was, on
 * SQLite and on PostgreSQL. Beside test/store-conformance.test.ts, which migrates from empty.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import SQLite from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect } from 'kysely';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { COPY_TABLES } from '../src/store/copy.js';
import { migrateTo, migrationNames, type Dialect } from '../src/store/migrations.js';
import { openStore } from '../src/store/open.js';
import { freshDatabase, pgUnavailable, withClient } from './helpers/postgres.js';

const pgWhy = await pgUnavailable();
const T0 = '2026-01-01T00:00:00.000Z';
const T1 = '2026-01-01T00:00:05.000Z';

/**
 * Representative rows of every table, in the columns the schema had before its newest migration
 * (before 0024_job_power: the jobs row has no power column). Plain SQL both dialects take.
 */
const OLD_ROWS = `
insert into settings (key, value) values ('policy.max-ages', '{"web":"30d"}');
insert into packs (name, version, description, files, sha256, installed_at) values ('demo', '1.0.0', 'the demo', '{"pack.yaml":"name: demo\\n"}', 'aa11', '${T0}');
insert into pack_versions (name, version, description, requires, files, sha256, installed_at) values ('demo', '1.0.0', 'the demo', '{}', '{"pack.yaml":"name: demo\\n"}', 'aa11', '${T0}');
insert into content (kind, name, layer, def, sha256) values ('tasks', 'hello', 'demo', '{"name":"hello","script":"echo hi"}', 'bb22');
insert into credentials (name, kind, key_type, fingerprint, public_key, secret, created_at) values ('key_1', 'ssh-key', 'ed25519', 'SHA256:abc', 'ssh-ed25519 AAAA', '{"$secure":"v1:sealed"}', '${T0}');
insert into join_tokens (id, token_hash, name, pipeline, profiles, environment, url, max_uses, uses, expires_at, created_by, created_at, revoked_at, revoked_by, machines)
  values ('jt-1', 'hash-jt', 'web', 'demo', '["base"]', 'prod', 'https://takt.example.org:8443', 5, 1, '${T1}', 'admin', '${T0}', null, null, '["m-web-1"]');
insert into machines (id, name, environment, broker, pipeline, stage_index, task_index, attempt, state, reason, params, profiles, current_job, power, token_hash, created_at, updated_at,
    approved_stage, facts, agent_connected, agent_seen_at, agent_version, agent_address, agent_via, agent_since, ssh, labels, stage, task, passed, approved_stage_key, outputs,
    restored_place, boot, power_config, classification)
  values ('m-web-1', 'web-1', 'prod', 'local', 'demo', 0, 0, 1, 'running', null, '{"greeting":"hi","key":{"$secure":"v1:x"}}', '["base"]', 'j-1', 'on', 'hash-m', '${T0}', '${T1}',
    -1, '{"hostname":"web-1"}', 1, '${T1}', '0.9.0', '10.0.0.5', 'claim', '${T0}', null, '{"rack":"r1"}', 'build', 'hello', '["build/a"]', null, '{"build_id":"b-1"}',
    null, '{"macs":["52:54:00:aa:bb:cc"],"uuid":null,"firmware":null,"bootenv":"local"}', '{"driver":"manual"}', null);
insert into work_orders (id, machine_id, blueprint, state, task_index, params, reason, created_at, finished_at, command, passed)
  values ('wo-1', 'm-web-1', 'scan', 'running', 1, '{"depth":2}', null, '${T0}', null, null, '["scan/a"]');
insert into jobs (id, machine_id, kind, work_order_id, pipeline, stage, task, variant, state, exit_code, reason, script, params, outputs, timeout_ms, lease_expires_at, created_at, finished_at, report, pack, task_sha256, script_sha256)
  values ('j-1', 'm-web-1', 'pipeline', null, 'demo', 'build', 'hello', 'default', 'running', null, null, 'echo hi', '{"greeting":"hi"}', '{}', 600000, '${T1}', '${T0}', null, null, 'demo@1.0.0', 'cc33', 'dd44');
insert into job_logs (job_id, seq, stream, data, at) values ('j-1', 1, 'stdout', 'hi\n', '${T0}');
insert into job_logs (job_id, seq, stream, data, at) values ('j-1', 2, 'stderr', 'warn ✓\n', '${T1}');
insert into rollouts (id, spec, state, reason, wave, waves, author, created_at, updated_at) values ('r-1', '{"pipeline":"demo","select":"rack=r1"}', 'running', null, 1, 2, 'admin', '${T0}', '${T1}');
insert into rollout_items (rollout_id, machine_id, machine_name, wave, state, reason, work_order_id, started_at, finished_at) values ('r-1', 'm-web-1', 'web-1', 1, 'running', null, null, '${T0}', null);
insert into machine_holds (machine_id, rollout_id, since) values ('m-web-1', 'r-1', '${T0}');
insert into dhcp_leases (mac, ip, state, expires_at, client_id, hostname, uuid, arch) values ('52:54:00:aa:bb:cc', '10.0.0.100', 'bound', 1767225600000, null, 'web-1', null, 7);
insert into changes (author, at, object, action, before, after) values ('admin', '${T0}', 'machines/m-web-1', 'create', null, '{"name":"web-1"}');
insert into changes (author, at, object, action, before, after) values ('job:j-0', '${T1}', 'machines/m-web-1', 'update', '{"name":"web-1"}', '{"name":"web-1","params":{}}');
insert into events (topic, at, data) values ('machines.create.m-web-1', '${T0}', '{"id":"m-web-1"}');
insert into events (topic, at, data) values ('jobs.create.j-1', '${T1}', '{"id":"j-1"}');
`;

interface Old {
  /** The store spec `openStore` takes. */
  spec: string;
  /** Kysely on the database, for `migrateTo`. */
  kysely: () => Kysely<unknown>;
  /** Runs plain SQL (several statements). */
  exec(text: string): Promise<void>;
  cleanup(): Promise<void>;
}

const backends: Array<{ name: Dialect; skip: string | null; make(): Promise<Old> }> = [
  {
    name: 'sqlite',
    skip: null,
    async make() {
      const dir = await mkdtemp(join(tmpdir(), 'takt-upgrade-'));
      const file = join(dir, 'takt.db');
      return {
        spec: `sqlite:${file}`,
        kysely: () => new Kysely({ dialect: new SqliteDialect({ database: new SQLite(file) }) }),
        async exec(text) {
          const db = new SQLite(file);
          try {
            db.exec(text);
          } finally {
            db.close();
          }
        },
        cleanup: () => rm(dir, { recursive: true, force: true }),
      };
    },
  },
  {
    name: 'postgres',
    skip: pgWhy,
    async make() {
      const db = await freshDatabase();
      return {
        spec: db.url,
        kysely: () => new Kysely({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: db.url, max: 1 }) }) }),
        async exec(text) {
          await withClient(db.url, (c) => c.query(text));
        },
        cleanup: () => db.drop(),
      };
    },
  },
];

for (const b of backends) {
  describe.skipIf(b.skip !== null)(b.skip === null ? `store upgrade (${b.name})` : `store upgrade (${b.name}) — SKIPPED: ${b.skip}`, () => {
    it("a store at the previous release's schema, filled in its shape, opens migrated and reads back through the Store", async () => {
      const old = await b.make();
      try {
        const names = await migrationNames(b.name);
        // OLD_ROWS are in the shape before 0024_job_power (no jobs.power); later migrations only add tables
        // (0026_users, 0027_images, 0028_audit), which the store opens empty, or nullable columns (0025_machine_host,
        // 0029_oidc's users.kind/oidc_issuer/oidc_subject, 0032_join_token_machine), or a function
        // (0033_pg_lock_machines, PostgreSQL only; the lock below goes through it).
        const previous = '0023_classification';
        expect(names.slice(names.indexOf(previous) + 1)).toEqual(names.filter((n) => n > previous));
        expect(names).toContain('0024_job_power');
        expect(names).toContain('0025_machine_host');
        expect(names).toContain('0028_audit');
        expect(names).toContain('0029_oidc');
        expect(names).toContain('0032_join_token_machine');
        expect(names.at(-1)).toBe('0033_pg_lock_machines');
        const k = old.kysely();
        try {
          await migrateTo(k, b.name, previous);
          await expect(migrateTo(k, b.name, '0000_nonesuch')).rejects.toMatchObject({ code: 'bad_request' });
        } finally {
          await k.destroy();
        }
        await old.exec(OLD_ROWS);
        // jobs.power is not there yet: the previous release's shape, not this one's
        await expect(old.exec(`update jobs set power = 'x'`)).rejects.toThrow(/power/);

        const { store } = await openStore(old.spec, '');
        try {
          const applied = await store.maintenanceDb.selectFrom('kysely_migration' as never).select('name' as never).execute();
          expect(applied.map((r) => (r as { name: string }).name).sort()).toEqual(names);
          // `takt store migrate` copies every table of the schema (store/copy.ts COPY_TABLES): a new one must be listed there
          const tables = (await store.maintenanceDb.introspection.getTables()).map((t) => t.name).sort();
          expect(tables).toEqual(COPY_TABLES.map((t) => t.name).sort());

          expect(await store.getMachine('m-web-1')).toEqual({
            id: 'm-web-1',
            name: 'web-1',
            environment: 'prod',
            broker: 'local',
            pipeline: 'demo',
            stage: 'build',
            task: 'hello',
            passed: ['build/a'],
            attempt: 1,
            approvedStage: null,
            state: 'running',
            reason: null,
            params: { greeting: 'hi', key: { $secure: 'v1:x' } },
            outputs: { build_id: 'b-1' },
            profiles: ['base'],
            labels: { rack: 'r1' },
            currentJob: 'j-1',
            power: 'on',
            facts: { hostname: 'web-1' },
            boot: { macs: ['52:54:00:aa:bb:cc'], uuid: null, firmware: null, bootenv: 'local' },
            powerConfig: { driver: 'manual' },
            createdAt: T0,
            updatedAt: T1,
            agent: { connected: true, lastSeenAt: T1, version: '0.9.0', address: '10.0.0.5', via: 'claim', since: T0 },
          });
          expect(await store.getMachineTokenHash('m-web-1')).toBe('hash-m');
          const job = await store.getJob('j-1');
          expect(job).toMatchObject({ id: 'j-1', machineId: 'm-web-1', kind: 'pipeline', state: 'running', timeoutMs: 600000, leaseExpiresAt: T1, pack: 'demo@1.0.0', taskSha256: 'cc33', scriptSha256: 'dd44', params: { greeting: 'hi' } });
          expect(job).not.toHaveProperty('power'); // the new column is null on an old row
          expect(await store.getLogs('j-1')).toEqual([
            { jobId: 'j-1', seq: 1, stream: 'stdout', data: 'hi\n', at: T0 },
            { jobId: 'j-1', seq: 2, stream: 'stderr', data: 'warn ✓\n', at: T1 },
          ]);
          expect(await store.getWorkOrder('wo-1')).toEqual({ id: 'wo-1', machineId: 'm-web-1', blueprint: 'scan', state: 'running', taskIndex: 1, passed: ['scan/a'], params: { depth: 2 }, reason: null, createdAt: T0, finishedAt: null });
          // newest first
          expect((await store.listChanges()).map((c) => [c.seq, c.author, c.action, c.after])).toEqual([
            [2, 'job:j-0', 'update', { name: 'web-1', params: {} }],
            [1, 'admin', 'create', { name: 'web-1' }],
          ]);
          expect(await store.listEvents(0)).toEqual([
            { id: 1, topic: 'machines.create.m-web-1', at: T0, data: { id: 'm-web-1' } },
            { id: 2, topic: 'jobs.create.j-1', at: T1, data: { id: 'j-1' } },
          ]);
          expect(await store.getRollout('r-1')).toEqual({ id: 'r-1', spec: { pipeline: 'demo', select: 'rack=r1' }, state: 'running', reason: null, wave: 1, waves: 2, author: 'admin', createdAt: T0, updatedAt: T1 });
          expect(await store.listRolloutItems('r-1')).toMatchObject([{ rolloutId: 'r-1', machineId: 'm-web-1', machineName: 'web-1', wave: 1, state: 'running' }]);
          expect(await store.getHold('m-web-1')).toEqual({ machineId: 'm-web-1', rolloutId: 'r-1', since: T0 });
          expect(await store.getSetting('policy.max-ages')).toEqual({ web: '30d' });
          expect(await store.getJoinToken('jt-1')).toMatchObject({ id: 'jt-1', maxUses: 5, uses: 1, machines: ['m-web-1'], profiles: ['base'] });
          expect(await store.getCredential('key_1')).toMatchObject({ name: 'key_1', keyType: 'ed25519', secret: { $secure: 'v1:sealed' } });
          expect(await store.listLeases()).toEqual([{ mac: '52:54:00:aa:bb:cc', ip: '10.0.0.100', state: 'bound', expiresAt: 1767225600000, hostname: 'web-1', arch: 7 }]);
          expect(await store.getPack('demo')).toMatchObject({ name: 'demo', version: '1.0.0', files: { 'pack.yaml': 'name: demo\n' } });
          expect(await store.listPackVersions('demo')).toMatchObject([{ name: 'demo', version: '1.0.0' }]);
          expect((await store.listContent()).map((c) => c.name)).toEqual(['hello']);

          // and the upgraded store goes on: its next change and event follow the old ones
          const seq = await store.transact(async (tx) => {
            expect((await tx.lockMachine('m-web-1'))?.id).toBe('m-web-1');
            tx.emit('machines.update.m-web-1', { id: 'm-web-1' });
            return tx.change('admin', 'machines/m-web-1', 'update', null, { name: 'web-1' });
          });
          expect(seq).toBe(3);
          expect((await store.listEvents(2)).map((e) => e.id)).toEqual([3]);
        } finally {
          await store.close();
        }
      } finally {
        await old.cleanup();
      }
    }, 60_000);
  });
}
