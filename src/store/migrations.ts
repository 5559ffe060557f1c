/**
 * Schema migrations, written with Kysely's schema builder so they run unchanged on SQLite and PostgreSQL.
 * Append new migrations; never edit one that has shipped.
 */
import { Migrator, sql, type ColumnDefinitionBuilder, type Kysely, type Migration, type MigrationProvider } from 'kysely';
import { TaktError } from '../model/errors.js';

export type Dialect = 'sqlite' | 'postgres';

/** An auto-numbered primary key: `integer … autoincrement` on SQLite, `bigserial` on PostgreSQL. */
const serialType = (dialect: Dialect) => (dialect === 'postgres' ? 'bigserial' : 'integer');
const serial = (dialect: Dialect, c: ColumnDefinitionBuilder) =>
  dialect === 'postgres' ? c.primaryKey() : c.primaryKey().autoIncrement();

/**
 * Column types per dialect. SQLite keeps exactly the declarations it always had. On PostgreSQL, text
 * compares byte-wise (`collate "C"`, as SQLite's BINARY) whatever the database's locale, so names, ISO
 * times and keys sort and compare the same on both stores; and integers are `bigint`, SQLite's 64-bit
 * INTEGER (the pg driver hands int8 back as a string, which postgres.ts parses into a number).
 */
const types = (dialect: Dialect) =>
  dialect === 'postgres' ? { text: sql`text collate "C"`, int: 'bigint' as const } : { text: 'text' as const, int: 'integer' as const };

const migrations = (dialect: Dialect): Record<string, Migration> => {
  const { text, int } = types(dialect);
  return {
    '0001_initial': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('changes')
          .addColumn('seq', serialType(dialect), (c) => serial(dialect, c))
          .addColumn('author', text, (c) => c.notNull())
          .addColumn('at', text, (c) => c.notNull())
          .addColumn('object', text, (c) => c.notNull())
          .addColumn('action', text, (c) => c.notNull())
          .addColumn('before', text)
          .addColumn('after', text)
          .execute();
        await db.schema.createIndex('changes_object').on('changes').columns(['object', 'seq']).execute();
        await db.schema
          .createTable('events')
          .addColumn('id', serialType(dialect), (c) => serial(dialect, c))
          .addColumn('topic', text, (c) => c.notNull())
          .addColumn('at', text, (c) => c.notNull())
          .addColumn('data', text, (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('packs')
          .addColumn('name', text, (c) => c.primaryKey())
          .addColumn('version', text, (c) => c.notNull())
          .addColumn('description', text)
          .addColumn('files', text, (c) => c.notNull())
          .addColumn('sha256', text, (c) => c.notNull())
          .addColumn('installed_at', text, (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('content')
          .addColumn('kind', text, (c) => c.notNull())
          .addColumn('name', text, (c) => c.notNull())
          .addColumn('layer', text, (c) => c.notNull())
          .addColumn('def', text, (c) => c.notNull())
          .addColumn('sha256', text, (c) => c.notNull())
          .addPrimaryKeyConstraint('content_pk', ['kind', 'name'])
          .execute();
        await db.schema
          .createTable('machines')
          .addColumn('id', text, (c) => c.primaryKey())
          .addColumn('name', text, (c) => c.notNull().unique())
          .addColumn('environment', text, (c) => c.notNull())
          .addColumn('broker', text)
          .addColumn('pipeline', text)
          .addColumn('stage_index', int, (c) => c.notNull().defaultTo(0))
          .addColumn('task_index', int, (c) => c.notNull().defaultTo(0))
          .addColumn('attempt', int, (c) => c.notNull().defaultTo(0))
          .addColumn('state', text, (c) => c.notNull())
          .addColumn('reason', text)
          .addColumn('params', text, (c) => c.notNull())
          .addColumn('profiles', text, (c) => c.notNull())
          .addColumn('current_job', text)
          .addColumn('power', text, (c) => c.notNull())
          .addColumn('token_hash', text, (c) => c.notNull())
          .addColumn('created_at', text, (c) => c.notNull())
          .addColumn('updated_at', text, (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('jobs')
          .addColumn('id', text, (c) => c.primaryKey())
          .addColumn('machine_id', text, (c) => c.notNull())
          .addColumn('kind', text, (c) => c.notNull())
          .addColumn('work_order_id', text)
          .addColumn('pipeline', text)
          .addColumn('stage', text)
          .addColumn('task', text, (c) => c.notNull())
          .addColumn('variant', text, (c) => c.notNull())
          .addColumn('state', text, (c) => c.notNull())
          .addColumn('exit_code', int)
          .addColumn('reason', text)
          .addColumn('script', text, (c) => c.notNull())
          .addColumn('params', text, (c) => c.notNull())
          .addColumn('outputs', text, (c) => c.notNull())
          .addColumn('timeout_ms', int, (c) => c.notNull())
          .addColumn('lease_expires_at', text)
          .addColumn('created_at', text, (c) => c.notNull())
          .addColumn('finished_at', text)
          .addColumn('report', text)
          .execute();
        await db.schema.createIndex('jobs_machine').on('jobs').columns(['machine_id', 'created_at']).execute();
        await db.schema.createIndex('jobs_state').on('jobs').columns(['state', 'lease_expires_at']).execute();
        await db.schema
          .createTable('job_logs')
          .addColumn('job_id', text, (c) => c.notNull())
          .addColumn('seq', int, (c) => c.notNull())
          .addColumn('stream', text, (c) => c.notNull())
          .addColumn('data', text, (c) => c.notNull())
          .addColumn('at', text, (c) => c.notNull())
          .addPrimaryKeyConstraint('job_logs_pk', ['job_id', 'seq'])
          .execute();
        await db.schema
          .createTable('work_orders')
          .addColumn('id', text, (c) => c.primaryKey())
          .addColumn('machine_id', text, (c) => c.notNull())
          .addColumn('blueprint', text, (c) => c.notNull())
          .addColumn('state', text, (c) => c.notNull())
          .addColumn('task_index', int, (c) => c.notNull())
          .addColumn('params', text, (c) => c.notNull())
          .addColumn('reason', text)
          .addColumn('created_at', text, (c) => c.notNull())
          .addColumn('finished_at', text)
          .execute();
        await db.schema.createIndex('work_orders_machine').on('work_orders').columns(['machine_id', 'state']).execute();
      },
    },
    '0002_pack_versions_build_records': {
      async up(db: Kysely<unknown>) {
        // Every installed version is kept, immutable; `packs` holds the version each pack runs (its pin).
        await db.schema
          .createTable('pack_versions')
          .addColumn('name', text, (c) => c.notNull())
          .addColumn('version', text, (c) => c.notNull())
          .addColumn('description', text)
          .addColumn('requires', text, (c) => c.notNull().defaultTo('{}'))
          .addColumn('files', text, (c) => c.notNull())
          .addColumn('sha256', text, (c) => c.notNull())
          .addColumn('installed_at', text, (c) => c.notNull())
          .addPrimaryKeyConstraint('pack_versions_pk', ['name', 'version'])
          .execute();
        await sql`insert into pack_versions (name, version, description, files, sha256, installed_at)
                  select name, version, description, files, sha256, installed_at from packs`.execute(db);
        // Build records: what exactly produced each job.
        await db.schema.alterTable('jobs').addColumn('pack', text).execute();
        await db.schema.alterTable('jobs').addColumn('task_sha256', text).execute();
        await db.schema.alterTable('jobs').addColumn('script_sha256', text).execute();
      },
    },
    '0003_rollouts': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('rollouts')
          .addColumn('id', text, (c) => c.primaryKey())
          .addColumn('spec', text, (c) => c.notNull())
          .addColumn('state', text, (c) => c.notNull())
          .addColumn('reason', text)
          .addColumn('wave', int, (c) => c.notNull())
          .addColumn('waves', int, (c) => c.notNull())
          .addColumn('author', text, (c) => c.notNull())
          .addColumn('created_at', text, (c) => c.notNull())
          .addColumn('updated_at', text, (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('rollout_items')
          .addColumn('rollout_id', text, (c) => c.notNull())
          .addColumn('machine_id', text, (c) => c.notNull())
          .addColumn('machine_name', text, (c) => c.notNull())
          .addColumn('wave', int, (c) => c.notNull())
          .addColumn('state', text, (c) => c.notNull())
          .addColumn('reason', text)
          .addColumn('work_order_id', text)
          .addColumn('started_at', text)
          .addColumn('finished_at', text)
          .addPrimaryKeyConstraint('rollout_items_pk', ['rollout_id', 'machine_id'])
          .execute();
      },
    },
    '0004_settings': {
      async up(db: Kysely<unknown>) {
        // Endpoint-wide desired state that is not content or machines (policies), one JSON value per key.
        await db.schema
          .createTable('settings')
          .addColumn('key', text, (c) => c.primaryKey())
          .addColumn('value', text, (c) => c.notNull())
          .execute();
      },
    },
    '0005_stage_approvals': {
      async up(db: Kysely<unknown>) {
        // The stage (by index) an approver let the machine enter; -1 when none is approved.
        await db.schema.alterTable('machines').addColumn('approved_stage', int, (c) => c.notNull().defaultTo(-1)).execute();
      },
    },
    '0006_join_tokens_facts': {
      async up(db: Kysely<unknown>) {
        // Observed facts (inventory) of each machine, as JSON; never part of the desired-state history.
        await db.schema.alterTable('machines').addColumn('facts', text).execute();
        // Join tokens: only the SHA-256 of the secret is kept; revoked tokens stay listed for the record.
        await db.schema
          .createTable('join_tokens')
          .addColumn('id', text, (c) => c.primaryKey())
          .addColumn('token_hash', text, (c) => c.notNull())
          .addColumn('name', text)
          .addColumn('pipeline', text)
          .addColumn('profiles', text, (c) => c.notNull())
          .addColumn('environment', text, (c) => c.notNull())
          .addColumn('url', text, (c) => c.notNull())
          .addColumn('max_uses', int, (c) => c.notNull())
          .addColumn('uses', int, (c) => c.notNull().defaultTo(0))
          .addColumn('expires_at', text, (c) => c.notNull())
          .addColumn('created_by', text, (c) => c.notNull())
          .addColumn('created_at', text, (c) => c.notNull())
          .addColumn('revoked_at', text)
          .addColumn('revoked_by', text)
          .addColumn('machines', text, (c) => c.notNull())
          .execute();
      },
    },
    '0007_agent_liveness': {
      async up(db: Kysely<unknown>) {
        // Observed agent liveness (src/engine/liveness.ts): never part of the desired state or its history.
        await db.schema.alterTable('machines').addColumn('agent_connected', int, (c) => c.notNull().defaultTo(0)).execute();
        for (const col of ['agent_seen_at', 'agent_version', 'agent_address', 'agent_via', 'agent_since']) {
          await db.schema.alterTable('machines').addColumn(col, text).execute();
        }
      },
    },
    '0008_ssh_credentials': {
      async up(db: Kysely<unknown>) {
        // Agentless machines: how the endpoint reaches the host over SSH (JSON, null for agent machines).
        await db.schema.alterTable('machines').addColumn('ssh', text).execute();
        // Credentials the endpoint uses itself (SSH keys); `secret` is sealed JSON, never the clear key.
        await db.schema
          .createTable('credentials')
          .addColumn('name', text, (c) => c.primaryKey())
          .addColumn('kind', text, (c) => c.notNull())
          .addColumn('key_type', text, (c) => c.notNull())
          .addColumn('fingerprint', text, (c) => c.notNull())
          .addColumn('public_key', text, (c) => c.notNull())
          .addColumn('secret', text, (c) => c.notNull())
          .addColumn('created_at', text, (c) => c.notNull())
          .execute();
      },
    },
    '0009_labels': {
      async up(db: Kysely<unknown>) {
        // Machine labels (desired state): the operator's key=value tags, JSON with sorted keys.
        await db.schema.alterTable('machines').addColumn('labels', text, (c) => c.notNull().defaultTo('{}')).execute();
      },
    },
    '0011_resume': {
      async up(db: Kysely<unknown>) {
        // A machine's pipeline position by identity (stage and task names) and the tasks that succeeded in
        // this pass, instead of indices that a content change shifts. `passed` stays null on machines stored
        // before: the engine upgrades them from their indices once, against the content in use, at start.
        for (const col of ['stage', 'task', 'passed', 'approved_stage_key']) {
          await db.schema.alterTable('machines').addColumn(col, text).execute();
        }
      },
    },
    '0012_observed': {
      async up(db: Kysely<unknown>) {
        // Observed outputs of a machine's jobs, kept apart from the params an operator sets (desired state).
        await db.schema.alterTable('machines').addColumn('outputs', text).execute();
        // Outputs used to be merged into params, each with a history entry authored `job:<id>`. A param whose
        // last change came from a job is an output: it moves, so rewind and import no longer roll it back.
        const machines = await sql<{ id: string; params: string }>`select id, params from machines`.execute(db);
        for (const m of machines.rows) {
          const params = JSON.parse(m.params) as Record<string, unknown>;
          if (Object.keys(params).length === 0) continue;
          const changes = await sql<{ author: string; before: string | null; after: string | null }>`select author, before, after from changes where object = ${`machines/${m.id}`} order by seq desc`.execute(db);
          const outputs: Record<string, unknown> = {};
          const decided = new Set<string>();
          for (const c of changes.rows) {
            const paramsOf = (text: string | null) => (text ? (JSON.parse(text) as { params?: Record<string, unknown> } | null)?.params : undefined) ?? {};
            const before = paramsOf(c.before);
            const after = paramsOf(c.after);
            for (const k of Object.keys(params)) {
              if (decided.has(k) || JSON.stringify(before[k]) === JSON.stringify(after[k])) continue;
              decided.add(k);
              if (c.author.startsWith('job:')) outputs[k] = params[k];
            }
            if (decided.size === Object.keys(params).length) break;
          }
          if (Object.keys(outputs).length === 0) continue;
          for (const k of Object.keys(outputs)) delete params[k];
          await sql`update machines set params = ${JSON.stringify(params)}, outputs = ${JSON.stringify(outputs)} where id = ${m.id}`.execute(db);
        }
      },
    },
    '0013_rollouts': {
      async up(db: Kysely<unknown>) {
        // Ad-hoc commands (`takt run`) are work orders with a command instead of a blueprint's tasks.
        await db.schema.alterTable('work_orders').addColumn('command', text).execute();
      },
    },
    '0014_workorder_passed': {
      async up(db: Kysely<unknown>) {
        // A work order's position by identity (the blueprint steps that succeeded), as a machine's `passed`.
        // Null on older rows: their first task_index steps count as passed (engine/complete.ts woPassed).
        await db.schema.alterTable('work_orders').addColumn('passed', text).execute();
      },
    },
    '0015_rollout_hold': {
      async up(db: Kysely<unknown>) {
        // A rollout's hold on a busy machine (--busy wait): no new job starts until the rollout reassigns it.
        // Kept in memory before, a restart lost it and the machine ran its old pipeline's next task.
        await db.schema
          .createTable('machine_holds')
          .addColumn('machine_id', text, (c) => c.primaryKey())
          .addColumn('rollout_id', text, (c) => c.notNull())
          .addColumn('since', text, (c) => c.notNull())
          .execute();
      },
    },
    '0018_restore': {
      async up(db: Kysely<unknown>) {
        // The place an export gave a machine restored onto a new host, kept while it is held there so that an
        // export of it is the same bytes as the export it came from (engine/portable.ts). Null otherwise.
        await db.schema.alterTable('machines').addColumn('restored_place', text).execute();
      },
    },
    '0020_boot': {
      async up(db: Kysely<unknown>) {
        // Network-booted machines (bare metal, VMs): the MACs and SMBIOS UUID the boot service knows them
        // by, their firmware and the bootenv they boot into next, as JSON (model/boot.ts MachineBoot).
        await db.schema.alterTable('machines').addColumn('boot', text).execute();
      },
    },
    '0021_power': {
      async up(db: Kysely<unknown>) {
        // Machines whose power a driver switches (qmp, ipmi, redfish, manual): the driver and its settings
        // as JSON (model/power.ts MachinePowerConfig); secrets only by secure param name.
        await db.schema.alterTable('machines').addColumn('power_config', text).execute();
      },
    },
    '0022_leases': {
      async up(db: Kysely<unknown>) {
        // DHCP leases of `takt serve --dhcp full` (model/lease.ts), so that a restarted endpoint gives a client
        // the address it had and never hands a bound address to another. Keyed by MAC (`declined:<ip>` for a
        // declined address); expires_at is milliseconds since the epoch.
        await db.schema
          .createTable('dhcp_leases')
          .addColumn('mac', text, (c) => c.primaryKey())
          .addColumn('ip', text, (c) => c.notNull())
          .addColumn('state', text, (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .addColumn('client_id', text)
          .addColumn('hostname', text)
          .addColumn('uuid', text)
          .addColumn('arch', int)
          .execute();
      },
    },
    '0023_classification': {
      async up(db: Kysely<unknown>) {
        // Which classification rule last gave a machine its profiles, environment and pipeline, and why
        // (model/machine.ts MachineClassification) as JSON; null: never classified.
        await db.schema.alterTable('machines').addColumn('classification', text).execute();
      },
    },
    '0024_job_power': {
      async up(db: Kysely<unknown>) {
        // What a task asked of its machine's power with takt-power and what came of it, in words
        // (model/machine.ts Job.power); null: nothing asked.
        await db.schema.alterTable('jobs').addColumn('power', text).execute();
      },
    },
    '0025_machine_host': {
      async up(db: Kysely<unknown>) {
        // Which endpoint (replica) made a machine's host resources (model/machine.ts Machine.host: its
        // endpoint id, brokers/netns.ts endpointId): only that one adopts, powers and destroys them. Null
        // for machines without a host-bound broker and for machines made before replicas.
        await db.schema.alterTable('machines').addColumn('host', text).execute();
      },
    },
    '0032_join_token_machine': {
      async up(db: Kysely<unknown>) {
        // A join token may re-register exactly one existing machine (a deployed OS joining as the machine
        // it was deployed to, model/joinblock.ts); null for every token made before.
        await db.schema.alterTable('join_tokens').addColumn('machine_id', text).execute();
      },
    },
    '0027_images': {
      async up(db: Kysely<unknown>) {
        // The image catalog (model/image.ts): one row per immutable version; the bytes are kept by the
        // endpoint under their sha256 (engine/images.ts), provenance is JSON.
        await db.schema
          .createTable('images')
          .addColumn('name', text, (c) => c.notNull())
          .addColumn('version', text, (c) => c.notNull())
          .addColumn('sha256', text, (c) => c.notNull())
          .addColumn('size', int, (c) => c.notNull())
          .addColumn('format', text, (c) => c.notNull())
          .addColumn('partition_table', text)
          .addColumn('description', text)
          .addColumn('provenance', text, (c) => c.notNull())
          .addColumn('created_at', text, (c) => c.notNull())
          .addPrimaryKeyConstraint('images_pk', ['name', 'version'])
          .execute();
        await db.schema.createIndex('images_sha256').on('images').column('sha256').execute();
      },
    },
    '0026_users': {
      async up(db: Kysely<unknown>) {
        // Users, groups, role bindings and user tokens (model/users.ts, model/permissions.ts; issue #16).
        // password_hash: argon2id in PHC form; token_hash: SHA-256 (hex) of the token text, never the text.
        // Lists (members, roles, pipelines) are JSON; times are ISO text, as everywhere else.
        await db.schema
          .createTable('users')
          .addColumn('name', text, (c) => c.primaryKey())
          .addColumn('password_hash', text, (c) => c.notNull())
          .addColumn('created_at', text, (c) => c.notNull())
          .addColumn('created_by', text, (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('user_groups')
          .addColumn('name', text, (c) => c.primaryKey())
          .addColumn('members', text, (c) => c.notNull())
          .addColumn('created_at', text, (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('role_bindings')
          .addColumn('id', text, (c) => c.primaryKey())
          .addColumn('role', text, (c) => c.notNull())
          .addColumn('subject', text, (c) => c.notNull())
          .addColumn('machines', text)
          .addColumn('pipelines', text)
          .addColumn('created_at', text, (c) => c.notNull())
          .addColumn('created_by', text, (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('user_tokens')
          .addColumn('id', text, (c) => c.primaryKey())
          .addColumn('token_hash', text, (c) => c.notNull())
          .addColumn('name', text, (c) => c.notNull())
          .addColumn('kind', text, (c) => c.notNull())
          .addColumn('owner', text, (c) => c.notNull())
          .addColumn('roles', text)
          .addColumn('expires_at', text, (c) => c.notNull())
          .addColumn('created_at', text, (c) => c.notNull())
          .addColumn('last_used_at', text)
          .addColumn('rotated_at', text)
          .addColumn('revoked_at', text)
          .addColumn('revoked_by', text)
          .execute();
        await db.schema.createIndex('user_tokens_owner').on('user_tokens').columns(['owner', 'created_at']).execute();
      },
    },
    '0028_audit': {
      async up(db: Kysely<unknown>) {
        // The audit log (model/audit.ts; issue #16): one row per audited request, numbered in insertion
        // order (the number pages it), apart from the desired-state `changes`. Times are ISO text.
        await db.schema
          .createTable('audit')
          .addColumn('id', serialType(dialect), (c) => serial(dialect, c))
          .addColumn('at', text, (c) => c.notNull())
          .addColumn('principal', text, (c) => c.notNull())
          .addColumn('token', text)
          .addColumn('source', text, (c) => c.notNull())
          .addColumn('method', text, (c) => c.notNull())
          .addColumn('route', text, (c) => c.notNull())
          .addColumn('resource', text)
          .addColumn('status', int, (c) => c.notNull())
          .addColumn('outcome', text, (c) => c.notNull())
          .addColumn('detail', text)
          .addColumn('request_id', text, (c) => c.notNull())
          .execute();
        // Pruning deletes by time; `takt audit --principal` reads one principal's newest first.
        await db.schema.createIndex('audit_at').on('audit').column('at').execute();
        await db.schema.createIndex('audit_principal').on('audit').columns(['principal', 'id']).execute();
      },
    },
    '0029_oidc': {
      async up(db: Kysely<unknown>) {
        // Users who sign in through an OpenID Connect provider (issue #16, api/oidc.ts): kind 'oidc' (null:
        // a password user, as before), the issuer and subject that identify them there. They have no
        // password: password_hash is '' for them, which no argon2 verification accepts. One takt user per
        // (issuer, subject); password users have nulls, which a unique index does not compare.
        await db.schema.alterTable('users').addColumn('kind', text).execute();
        await db.schema.alterTable('users').addColumn('oidc_issuer', text).execute();
        await db.schema.alterTable('users').addColumn('oidc_subject', text).execute();
        await db.schema.createIndex('users_oidc').on('users').columns(['oidc_issuer', 'oidc_subject']).unique().execute();
      },
    },
    '0033_pg_lock_machines': {
      async up(db: Kysely<unknown>) {
        // PostgreSQL only (SQLite has no row locks; nothing to do there): machines' row locks and what is
        // read right after them, in one round trip (sql-tx.ts lockMachinesPg; issue #15 part 6). A VOLATILE
        // function runs each of its statements on a snapshot of its own (PostgreSQL, "Function Volatility
        // Categories"), so the reads after the locks see what the locks' previous holders committed — as
        // two statements sent one after the other do, and unlike subqueries beside the lock in one
        // statement, which keep the snapshot taken before a lock wait (test/store-replicas.test.ts "a lock
        // that waited"). The rows are locked in id order, so that two callers locking overlapping sets
        // wait for each other instead of deadlocking. Answers a JSON array, one element per machine that
        // exists: {machine, hold, open, job} — the machine's row, its hold's row or null, its open work
        // orders' rows (running or queued) or null, its current job's row without the report or null.
        if (dialect !== 'postgres') return;
        await sql`create or replace function takt_lock_machines(ids text[]) returns jsonb language plpgsql volatile as $fn$
declare
  locked text[];
  answer jsonb;
begin
  select coalesce(array_agg(x.id), '{}') into locked from (select id from machines where id = any(ids) order by id for update) x;
  select coalesce(jsonb_agg(jsonb_build_object(
    'machine', to_jsonb(m),
    'hold', (select to_jsonb(h) from machine_holds h where h.machine_id = m.id),
    'open', (select jsonb_agg(w) from work_orders w where w.machine_id = m.id and w.state in ('running', 'queued')),
    'job', (select to_jsonb(j) - 'report' from jobs j where j.id = m.current_job)
  )), '[]') into answer from machines m where m.id = any(locked);
  return answer;
end
$fn$`.execute(db);
      },
    },
  };
};

export const migrationProvider = (dialect: Dialect): MigrationProvider => ({
  getMigrations: async () => migrations(dialect),
});

/** The migrations' names in the order they run (ascending, as Kysely's migrator sorts them). */
export async function migrationNames(dialect: Dialect): Promise<string[]> {
  return Object.keys(await migrationProvider(dialect).getMigrations()).sort();
}

/**
 * Brings the schema of `db` up to and including the migration `name`, and no further: a store as an older
 * release left it (test/store-upgrade.test.ts builds "the previous release's schema" with it). Stores open
 * through `SqlStore.migrate`, which always goes to the latest; this is for tests and tools only.
 * @throws TaktError `bad_request` for a name that is not a migration; `internal` when a migration fails.
 */
export async function migrateTo(db: Kysely<unknown>, dialect: Dialect, name: string): Promise<void> {
  const names = await migrationNames(dialect);
  if (!names.includes(name)) throw new TaktError('bad_request', `no migration named '${name}' (known: ${names.join(', ')})`);
  const { error, results } = await new Migrator({ db, provider: migrationProvider(dialect) }).migrateTo(name);
  if (error) {
    const failed = results?.find((r) => r.status === 'Error');
    throw new TaktError('internal', `database migration ${failed?.migrationName ?? ''} failed: ${(error as Error).message ?? String(error)}`);
  }
}
