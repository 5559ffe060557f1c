/**
 * Store on Kysely: the same queries for SQLite and PostgreSQL.
 */
import semverCompare from 'semver/functions/compare.js';
import { CompiledQuery, Kysely, Migrator, sql, type Compilable, type Selectable, type Transaction } from 'kysely';
import type { ContentKind } from '../model/content.js';
import { TaktError } from '../model/errors.js';
import type { ObservedFacts } from '../model/facts.js';
import type { Image, ImageFormat, ImageProvenance, PartitionTable } from '../model/image.js';
import type { JoinToken } from '../model/join.js';
import type { Lease } from '../model/lease.js';
import type { AgentLiveness, Change, Job, JobState, LogChunk, Machine, MachineState, TaktEvent, WorkOrder, WorkOrderState } from '../model/machine.js';
import type { MachineHold, Rollout, RolloutItem } from '../model/rollout.js';
import { migrationProvider, type Dialect } from './migrations.js';
import type {
  Page,
  ChangeFilter,
  ContentRecord,
  CredentialRecord,
  EventListener,
  JobFilter,
  MachineFilter,
  PackRecord,
  Reads,
  Store,
  TransactOptions,
  Tx,
  WorkOrderFilter,
} from './store.js';
import type { AuditTable, ChangesTable, CredentialsTable, Database, DhcpLeasesTable, ImagesTable, JobsTable, JoinTokensTable, MachineHoldsTable, MachinesTable, RoleBindingsTable, RolloutItemsTable, RolloutsTable, UserTokensTable, WorkOrdersTable } from './tables.js';
import type { RoleBinding } from '../model/permissions.js';
import type { Group, User, UserToken } from '../model/users.js';
import type { AuditEntry, AuditFilter, AuditOutcome, AuditRecord } from '../model/audit.js';

type Db = Kysely<Database> | Transaction<Database>;

const json = (v: unknown): string => JSON.stringify(v ?? null);
const parse = <T>(s: string | null): T => (s === null ? (null as T) : (JSON.parse(s) as T));
const MAX_PAGE = 1000;
/** Events inserted by one statement (a transaction emits a handful; a bulk operation may emit thousands). */
const EVENT_BATCH = 100;
const limitOf = (l?: number) => Math.min(Math.max(1, l ?? 100), MAX_PAGE);

/**
 * Hot-path queries, compiled once. Building and compiling a Kysely query costs more than SQLite takes to
 * run a point read, so the queries every claim, log and completion runs are built once per store with
 * placeholders (`arg(i)`) and then executed with their arguments. They stay ordinary Kysely queries,
 * compiled by the store's own dialect, so the PostgreSQL store gets them unchanged.
 */
const ARG = '\u0000takt-arg:';
const arg = (i: number): string => `${ARG}${i}`;

interface Prepared {
  sql: string;
  /** Per compiled parameter: the index of the argument it takes, or the constant it was built with. */
  params: Array<{ arg: number } | { value: unknown }>;
}

export class QueryCache {
  private readonly compiled = new Map<string, Prepared>();
  /** The SQL text of every compiled query → a statement name unique in this cache (`takt_1`, `takt_2`, …). */
  private readonly names = new Map<string, string>();
  /** The SQL text of every compiled query → the key it was first compiled under (labels `roundTrips`). */
  private readonly keys = new Map<string, string>();
  /** Round trips to the database by label (`countRoundTrip`), since the store opened. */
  private readonly trips = new Map<string, number>();

  prepare(key: string, build: () => Compilable<unknown>): Prepared {
    let p = this.compiled.get(key);
    if (!p) {
      const q = build().compile();
      p = {
        sql: q.sql,
        params: q.parameters.map((v) => (typeof v === 'string' && v.startsWith(ARG) ? { arg: Number(v.slice(ARG.length)) } : { value: v })),
      };
      this.compiled.set(key, p);
      if (!this.names.has(q.sql)) this.names.set(q.sql, `takt_${this.names.size + 1}`);
      if (!this.keys.has(q.sql)) this.keys.set(q.sql, key);
    }
    return p;
  }

  /**
   * A query written as SQL text rather than built (PostgreSQL only: text the builder cannot express),
   * cached under `key`; its parameters `$1…$n` take the call's arguments 0…n-1 in order.
   */
  prepareSql(key: string, text: () => { sql: string; params: number }): Prepared {
    let p = this.compiled.get(key);
    if (!p) {
      const t = text();
      p = { sql: t.sql, params: Array.from({ length: t.params }, (_, i) => ({ arg: i })) };
      this.compiled.set(key, p);
      if (!this.names.has(t.sql)) this.names.set(t.sql, `takt_${this.names.size + 1}`);
      if (!this.keys.has(t.sql)) this.keys.set(t.sql, key);
    }
    return p;
  }

  /**
   * The statement name of `sql` if it is one of this cache's compiled queries (postgres.ts prepares them
   * by name on each connection, so the server parses and plans each once per connection, not per call).
   * The set of names is bounded: one per cache key, and keys are fixed strings in this file.
   */
  nameOf(sql: string): string | undefined {
    return this.names.get(sql);
  }

  /**
   * Counts one round trip to the database carrying `sql` (postgres.ts calls it for every query its
   * pooled connections send). Labelled by the compiled query's key (`lockMachine`, `insertJob`), or for
   * other text by what it does (`begin+lock`, `notify+commit`, `commit`) or its first three words — a
   * bounded set, since the store's SQL is fixed text in this file and Kysely's builders.
   */
  countRoundTrip(sql: string): void {
    const label = this.keys.get(sql) ?? roundTripLabel(sql);
    this.trips.set(label, (this.trips.get(label) ?? 0) + 1);
  }

  /** Round trips counted so far by label (`countRoundTrip`); empty on SQLite (no wire). */
  roundTrips(): ReadonlyMap<string, number> {
    return this.trips;
  }
}

/** The label of a round trip whose SQL is not a compiled query (QueryCache.countRoundTrip). */
function roundTripLabel(sql: string): string {
  const t = sql.trimStart().toLowerCase();
  if (t.startsWith('begin')) return t.includes('_shared(') ? 'begin+lock shared' : 'begin+lock';
  if (t.includes('pg_notify')) return t.endsWith('commit') ? 'notify+commit' : 'notify';
  if (t === 'commit' || t === 'rollback') return t;
  if (t.startsWith('select pg_advisory_xact_lock')) return 'draw lock';
  return t.replace(/["`]/g, '').split(/\s+/).slice(0, 3).join(' ');
}

async function run<R>(db: Db, p: Prepared, args: unknown[]): Promise<{ rows: R[]; numAffectedRows?: bigint }> {
  const parameters = p.params.map((x) => ('arg' in x ? args[x.arg] : x.value));
  return db.executeQuery<R>(CompiledQuery.raw(p.sql, parameters));
}

/** A machine's open work orders in the order they run: the running one, then the queued by age. */
function rank(w: WorkOrdersTable): string {
  return `${w.state === 'running' ? 0 : 1}|${w.created_at}|${w.id}`;
}

/** The open work order that runs first (by `rank`), if any. */
function firstOpen(rows: WorkOrdersTable[]): WorkOrder | undefined {
  let r: WorkOrdersTable | undefined;
  for (const row of rows) {
    if (!r || rank(row) < rank(r)) r = row;
  }
  return r ? workOrderFromRow(r) : undefined;
}

function leaseFromRow(r: Selectable<DhcpLeasesTable>): Lease {
  const l: Lease = { mac: r.mac, ip: r.ip, state: r.state as Lease['state'], expiresAt: Number(r.expires_at) };
  if (r.client_id !== null) l.clientId = r.client_id;
  if (r.hostname !== null) l.hostname = r.hostname;
  if (r.uuid !== null) l.uuid = r.uuid;
  if (r.arch !== null) l.arch = Number(r.arch);
  return l;
}

function machineFromRow(r: Selectable<MachinesTable>): Machine {
  return {
    id: r.id,
    name: r.name,
    environment: r.environment,
    broker: r.broker,
    pipeline: r.pipeline,
    stage: r.stage,
    task: r.task,
    passed: r.passed === null ? [] : parse<string[]>(r.passed),
    attempt: Number(r.attempt),
    approvedStage: r.approved_stage_key,
    state: r.state as MachineState,
    reason: r.reason,
    params: parse(r.params),
    outputs: r.outputs ? parse(r.outputs) : {},
    ...(r.restored_place ? { restoredPlace: parse<NonNullable<Machine['restoredPlace']>>(r.restored_place) } : {}),
    profiles: parse(r.profiles),
    labels: parse(r.labels) ?? {},
    currentJob: r.current_job,
    power: r.power as Machine['power'],
    facts: parse(r.facts),
    ...(r.ssh ? { ssh: parse<NonNullable<Machine['ssh']>>(r.ssh) } : {}),
    ...(r.boot ? { boot: parse<NonNullable<Machine['boot']>>(r.boot) } : {}),
    ...(r.classification ? { classification: parse<NonNullable<Machine['classification']>>(r.classification) } : {}),
    ...(r.power_config ? { powerConfig: parse<NonNullable<Machine['powerConfig']>>(r.power_config) } : {}),
    ...(r.host ? { host: r.host } : {}),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    agent: {
      connected: Number(r.agent_connected) === 1,
      lastSeenAt: r.agent_seen_at,
      version: r.agent_version,
      address: r.agent_address,
      via: r.agent_via as AgentLiveness['via'],
      since: r.agent_since ?? r.created_at,
    },
  };
}

/** The liveness columns, written only by `setAgentLiveness` (a machine's other writes leave them be). */
type AgentColumns = 'agent_connected' | 'agent_seen_at' | 'agent_version' | 'agent_address' | 'agent_via' | 'agent_since';
/** The index position of a machine stored before 0011_resume: read once to upgrade it, never written. */
type LegacyColumns = 'stage_index' | 'task_index' | 'approved_stage';

/**
 * The row a machine's ordinary writes carry. Facts are left out: they change only when the agent reports
 * them (`setMachineFacts`), so claims and completions do not rewrite them with every job.
 */
function machineToRow(m: Machine): Omit<MachinesTable, 'token_hash' | 'facts' | AgentColumns | LegacyColumns> {
  return {
    id: m.id,
    name: m.name,
    environment: m.environment,
    broker: m.broker,
    pipeline: m.pipeline,
    stage: m.stage,
    task: m.task,
    passed: json(m.passed),
    attempt: m.attempt,
    approved_stage_key: m.approvedStage,
    state: m.state,
    reason: m.reason,
    params: json(m.params),
    outputs: Object.keys(m.outputs ?? {}).length ? json(m.outputs) : null,
    // Kept only while the machine is held; the first write after it moves on (a restart) drops it.
    restored_place: m.restoredPlace && m.state === 'paused' ? json(m.restoredPlace) : null,
    profiles: json(m.profiles),
    labels: json(m.labels ?? {}),
    current_job: m.currentJob,
    power: m.power,
    ssh: m.ssh ? json(m.ssh) : null,
    boot: m.boot ? json(m.boot) : null,
    classification: m.classification ? json(m.classification) : null,
    power_config: m.powerConfig ? json(m.powerConfig) : null,
    host: m.host ?? null,
    created_at: m.createdAt,
    updated_at: m.updatedAt,
  };
}

function jobFromRow(r: JobsTable): Job {
  return {
    id: r.id,
    machineId: r.machine_id,
    kind: r.kind as Job['kind'],
    workOrderId: r.work_order_id,
    pipeline: r.pipeline,
    stage: r.stage,
    task: r.task,
    variant: r.variant,
    state: r.state as JobState,
    exitCode: r.exit_code === null ? null : Number(r.exit_code),
    reason: r.reason,
    script: r.script,
    params: parse(r.params),
    outputs: parse(r.outputs),
    timeoutMs: Number(r.timeout_ms),
    leaseExpiresAt: r.lease_expires_at,
    createdAt: r.created_at,
    finishedAt: r.finished_at,
    pack: r.pack,
    taskSha256: r.task_sha256,
    scriptSha256: r.script_sha256,
    ...(r.power ? { power: r.power } : {}),
  };
}

function jobToRow(j: Job): Omit<JobsTable, 'report'> {
  return {
    id: j.id,
    machine_id: j.machineId,
    kind: j.kind,
    work_order_id: j.workOrderId,
    pipeline: j.pipeline,
    stage: j.stage,
    task: j.task,
    variant: j.variant,
    state: j.state,
    exit_code: j.exitCode,
    reason: j.reason,
    script: j.script,
    params: json(j.params),
    outputs: json(j.outputs),
    timeout_ms: j.timeoutMs,
    lease_expires_at: j.leaseExpiresAt,
    created_at: j.createdAt,
    finished_at: j.finishedAt,
    pack: j.pack,
    task_sha256: j.taskSha256,
    script_sha256: j.scriptSha256,
    power: j.power ?? null,
  };
}

function workOrderFromRow(r: WorkOrdersTable): WorkOrder {
  return {
    id: r.id,
    machineId: r.machine_id,
    blueprint: r.blueprint,
    ...(r.command ? { command: parse(r.command) } : {}),
    state: r.state as WorkOrderState,
    taskIndex: Number(r.task_index),
    ...(r.passed !== null && r.passed !== undefined ? { passed: parse<string[]>(r.passed) } : {}),
    params: parse(r.params),
    reason: r.reason,
    createdAt: r.created_at,
    finishedAt: r.finished_at,
  };
}

function workOrderToRow(w: WorkOrder): WorkOrdersTable {
  return {
    id: w.id,
    machine_id: w.machineId,
    blueprint: w.blueprint,
    command: w.command ? json(w.command) : null,
    state: w.state,
    task_index: w.taskIndex,
    passed: w.passed ? json(w.passed) : null,
    params: json(w.params),
    reason: w.reason,
    created_at: w.createdAt,
    finished_at: w.finishedAt,
  };
}

function changeFromRow(r: Selectable<ChangesTable>): Change {
  return {
    seq: Number(r.seq),
    author: r.author,
    at: r.at,
    object: r.object,
    action: r.action as Change['action'],
    before: parse(r.before),
    after: parse(r.after),
  };
}

/** The escaped `%text%` pattern for a substring match (LIKE … ESCAPE '\\'). */
const contains = (text: string) => `%${text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;

class SqlReads implements Reads {
  constructor(
    protected readonly db: Db,
    protected readonly q: QueryCache,
    /** Which database this is: the few statements that differ between them are chosen by it. */
    readonly dialect: Dialect,
  ) {}

  /**
   * A substring match on a text column, the same on both stores: SQLite's LIKE ignores the case of ASCII
   * letters, PostgreSQL's does not, so PostgreSQL uses ILIKE (callers that need an exact match compare after).
   */
  protected like(column: 'name' | 'ssh' | 'boot' | 'facts' | 'route', pattern: string) {
    return this.dialect === 'postgres' ? sql<boolean>`${sql.ref(column)} ilike ${pattern} escape '\\'` : sql<boolean>`${sql.ref(column)} like ${pattern} escape '\\'`;
  }

  protected async one<R>(key: string, build: () => Compilable<unknown>, args: unknown[]): Promise<R | undefined> {
    return (await this.all<R>(key, build, args))[0];
  }

  protected async all<R>(key: string, build: () => Compilable<unknown>, args: unknown[]): Promise<R[]> {
    return (await run<R>(this.db, this.q.prepare(key, build), args)).rows;
  }

  protected async exec(key: string, build: () => Compilable<unknown>, args: unknown[]): Promise<number> {
    return Number((await run(this.db, this.q.prepare(key, build), args)).numAffectedRows ?? 0);
  }

  async getMachine(id: string) {
    const r = await this.one<Selectable<MachinesTable>>('getMachine', () => this.db.selectFrom('machines').selectAll().where('id', '=', arg(0)), [id]);
    return r ? machineFromRow(r) : undefined;
  }
  async listLegacyPositions() {
    const rows = await this.db.selectFrom('machines').select(['id', 'stage_index', 'task_index', 'approved_stage']).where('passed', 'is', null).orderBy('id').execute();
    return rows.map((r) => ({ id: r.id, stageIndex: Number(r.stage_index), taskIndex: Number(r.task_index), approvedStage: Number(r.approved_stage) }));
  }
  async getMachineByName(name: string) {
    const r = await this.db.selectFrom('machines').selectAll().where('name', '=', name).executeTakeFirst();
    return r ? machineFromRow(r) : undefined;
  }
  async getMachineTokenHash(id: string) {
    const r = await this.one<{ token_hash: string }>('getMachineTokenHash', () => this.db.selectFrom('machines').select('token_hash').where('id', '=', arg(0)), [id]);
    return r?.token_hash;
  }
  private machineQuery(f: MachineFilter) {
    let q = this.db.selectFrom('machines');
    // A filter given is a filter applied, literally: an empty or wildcard-looking value matches only
    // itself, never every machine.
    if (f.state !== undefined) q = q.where('state', '=', f.state);
    if (f.pipeline !== undefined) q = q.where('pipeline', '=', f.pipeline);
    if (f.environment !== undefined) q = q.where('environment', '=', f.environment);
    if (f.broker !== undefined) q = q.where('broker', '=', f.broker);
    if (f.agentConnected !== undefined) q = q.where('agent_connected', '=', f.agentConnected ? 1 : 0);
    if (f.name !== undefined) q = q.where(this.like('name', contains(f.name)));
    return q;
  }
  async listMachines(f: MachineFilter = {}) {
    const rows = await this.machineQuery(f)
      .selectAll()
      .orderBy('name')
      .limit(limitOf(f.limit))
      .offset(f.offset ?? 0)
      .execute();
    return rows.map(machineFromRow);
  }
  async countMachines(f: MachineFilter = {}) {
    const r = await this.machineQuery(f).select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow();
    return Number(r.n);
  }
  async getJob(id: string) {
    const r = await this.one<JobsTable>('getJob', () => this.db.selectFrom('jobs').selectAll().where('id', '=', arg(0)), [id]);
    return r ? jobFromRow(r) : undefined;
  }
  async getJobState(id: string) {
    const r = await this.one<{ machine_id: string; state: string }>('getJobState', () => this.db.selectFrom('jobs').select(['machine_id', 'state']).where('id', '=', arg(0)), [id]);
    return r ? { id, machineId: r.machine_id, state: r.state as JobState } : undefined;
  }
  async getJobReport(id: string) {
    const r = await this.db.selectFrom('jobs').select('report').where('id', '=', id).executeTakeFirst();
    return r ? parse(r.report) : undefined;
  }
  async listJobs(f: JobFilter = {}) {
    let q = this.db.selectFrom('jobs').selectAll();
    if (f.machineId !== undefined) q = q.where('machine_id', '=', f.machineId);
    if (f.state !== undefined) q = q.where('state', '=', f.state);
    if (f.task !== undefined) q = q.where('task', '=', f.task);
    if (f.workOrderId !== undefined) q = q.where('work_order_id', '=', f.workOrderId);
    if (f.since !== undefined) q = q.where('created_at', '>=', f.since);
    const dir = f.order ?? 'desc';
    const rows = await q.orderBy('created_at', dir).orderBy('id', dir).limit(limitOf(f.limit)).offset(f.offset ?? 0).execute();
    return rows.map(jobFromRow);
  }
  async listExpiredJobs(now: string) {
    const rows = await this.db
      .selectFrom('jobs')
      .selectAll()
      .where('state', '=', 'running')
      .where('lease_expires_at', '<', now)
      .execute();
    return rows.map(jobFromRow);
  }
  async getLogs(jobId: string, afterSeq = 0, limit = 1000) {
    const rows = await this.db
      .selectFrom('job_logs')
      .selectAll()
      .where('job_id', '=', jobId)
      .where('seq', '>', afterSeq)
      .orderBy('seq')
      .limit(Math.min(limit, 10_000))
      .execute();
    return rows.map((r) => ({ jobId: r.job_id, seq: Number(r.seq), stream: r.stream as LogChunk['stream'], data: r.data, at: r.at }));
  }
  async nextWorkOrder(machineId: string) {
    // The running one first (at most one runs per machine), else the oldest queued. Picked here rather
    // than with ORDER BY: SQLite sets up a sorter for that even when no row matches, which made this
    // lookup — run on every claim, nearly always for nothing — one of the costliest statements per job.
    const rows = await this.all<WorkOrdersTable>(
      'openWorkOrders',
      () => this.db.selectFrom('work_orders').selectAll().where('machine_id', '=', arg(0)).where('state', 'in', ['running', 'queued']),
      [machineId],
    );
    return firstOpen(rows);
  }
  async lastLogSeq(jobId: string) {
    const r = await this.db
      .selectFrom('job_logs')
      .select((eb) => eb.fn.max('seq').as('m'))
      .where('job_id', '=', jobId)
      .executeTakeFirst();
    return r?.m == null ? 0 : Number(r.m);
  }
  async getWorkOrder(id: string) {
    const r = await this.db.selectFrom('work_orders').selectAll().where('id', '=', id).executeTakeFirst();
    return r ? workOrderFromRow(r) : undefined;
  }
  async listWorkOrders(f: WorkOrderFilter = {}) {
    let q = this.db.selectFrom('work_orders').selectAll();
    if (f.machineId !== undefined) q = q.where('machine_id', '=', f.machineId);
    if (f.state !== undefined) q = q.where('state', '=', f.state);
    const rows = await q.orderBy('created_at').orderBy('id').limit(limitOf(f.limit)).offset(f.offset ?? 0).execute();
    return rows.map(workOrderFromRow);
  }
  async listContent() {
    const rows = await this.db.selectFrom('content').selectAll().orderBy('kind').orderBy('name').execute();
    return rows.map((r) => ({ kind: r.kind as ContentKind, name: r.name, layer: r.layer, def: parse(r.def), sha256: r.sha256 }));
  }
  async listPacks() {
    const rows = await this.db.selectFrom('packs').selectAll().orderBy('name').execute();
    return rows.map(packFromRow);
  }
  async getPack(name: string) {
    const r = await this.db.selectFrom('packs').selectAll().where('name', '=', name).executeTakeFirst();
    return r ? packFromRow(r) : undefined;
  }
  async getPackVersion(name: string, version: string) {
    const r = await this.db.selectFrom('pack_versions').selectAll().where('name', '=', name).where('version', '=', version).executeTakeFirst();
    return r ? { ...packFromRow(r), requires: parse<Record<string, string>>(r.requires) } : undefined;
  }
  async listPackVersions(name?: string) {
    let q = this.db.selectFrom('pack_versions').select(['name', 'version', 'description', 'requires', 'sha256', 'installed_at']);
    if (name) q = q.where('name', '=', name);
    const rows = await q.orderBy('name').orderBy('installed_at').execute();
    return rows.map((r) => ({
      name: r.name,
      version: r.version,
      description: r.description,
      requires: parse<Record<string, string>>(r.requires),
      sha256: r.sha256,
      installedAt: r.installed_at,
    }));
  }
  async listChanges(f: ChangeFilter = {}) {
    let q = this.db.selectFrom('changes').selectAll();
    if (f.object !== undefined) q = q.where('object', '=', f.object);
    if (f.after !== undefined) q = q.where('seq', '>', f.after);
    const rows = await q.orderBy('seq', 'desc').limit(limitOf(f.limit)).offset(f.offset ?? 0).execute();
    return rows.map((r) => changeFromRow(r));
  }
  async getChange(seq: number) {
    const r = await this.db.selectFrom('changes').selectAll().where('seq', '=', seq).executeTakeFirst();
    return r ? changeFromRow(r) : undefined;
  }
  async getRollout(id: string) {
    const r = await this.db.selectFrom('rollouts').selectAll().where('id', '=', id).executeTakeFirst();
    return r ? rolloutFromRow(r) : undefined;
  }
  async listRollouts(f: Page & { states?: Rollout['state'][] } = {}) {
    let q = this.db.selectFrom('rollouts').selectAll();
    if (f.states) q = q.where('state', 'in', f.states);
    const rows = await q.orderBy('created_at', 'desc').orderBy('id', 'desc').limit(limitOf(f.limit)).offset(f.offset ?? 0).execute();
    return rows.map(rolloutFromRow);
  }
  async listRolloutItems(rolloutId: string) {
    const rows = await this.db.selectFrom('rollout_items').selectAll().where('rollout_id', '=', rolloutId).orderBy('wave').orderBy('machine_name').execute();
    return rows.map((r) => ({
      rolloutId: r.rollout_id,
      machineId: r.machine_id,
      machineName: r.machine_name,
      wave: Number(r.wave),
      state: r.state as RolloutItem['state'],
      reason: r.reason,
      workOrderId: r.work_order_id,
      startedAt: r.started_at,
      finishedAt: r.finished_at,
    }));
  }
  async getHold(machineId: string) {
    // On every claim: a prepared statement, as the claim's other reads.
    const r = await this.one<Selectable<MachineHoldsTable>>('getHold', () => this.db.selectFrom('machine_holds').selectAll().where('machine_id', '=', arg(0)), [machineId]);
    return r ? holdFromRow(r) : undefined;
  }
  async listHolds() {
    const rows = await this.db.selectFrom('machine_holds').selectAll().orderBy('since').orderBy('machine_id').execute();
    return rows.map(holdFromRow);
  }
  async getSetting<T>(key: string) {
    const r = await this.db.selectFrom('settings').select('value').where('key', '=', key).executeTakeFirst();
    return r ? parse<T>(r.value) : undefined;
  }
  async getCredential(name: string) {
    const r = await this.db.selectFrom('credentials').selectAll().where('name', '=', name).executeTakeFirst();
    return r ? credentialFromRow(r) : undefined;
  }
  async getImage(name: string, version: string) {
    const r = await this.db.selectFrom('images').selectAll().where('name', '=', name).where('version', '=', version).executeTakeFirst();
    return r ? imageFromRow(r) : undefined;
  }
  async listImages(name?: string) {
    let q = this.db.selectFrom('images').selectAll();
    if (name !== undefined) q = q.where('name', '=', name);
    return (await q.execute()).map(imageFromRow).sort(byNameThenNewest);
  }
  async imagesWithSha256(sha256: string) {
    return (await this.db.selectFrom('images').selectAll().where('sha256', '=', sha256).execute()).map(imageFromRow).sort(byNameThenNewest);
  }
  async listCredentials() {
    return (await this.db.selectFrom('credentials').selectAll().orderBy('name').execute()).map(credentialFromRow);
  }
  async credentialUsers(name: string) {
    // The JSON is written by machineToRow, so the credential appears exactly as `"credential":"<name>"`
    // (names are [a-z0-9._-]: nothing to escape, and `_` is matched literally through the escape).
    const pattern = `%"credential":${JSON.stringify(name).replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    const rows = await this.db
      .selectFrom('machines')
      .select('name')
      .where(this.like('ssh', pattern))
      .orderBy('name')
      .execute();
    return rows.map((r) => r.name);
  }
  async listEvents(afterId: number, limit = 1000) {
    const rows = await this.db.selectFrom('events').selectAll().where('id', '>', afterId).orderBy('id').limit(limit).execute();
    return rows.map((r) => ({ id: Number(r.id), topic: r.topic, at: r.at, data: parse(r.data) }));
  }
  async getJoinToken(id: string) {
    const r = await this.db.selectFrom('join_tokens').selectAll().where('id', '=', id).executeTakeFirst();
    return r ? joinTokenFromRow(r) : undefined;
  }
  async getJoinTokenHash(id: string) {
    const r = await this.db.selectFrom('join_tokens').select('token_hash').where('id', '=', id).executeTakeFirst();
    return r?.token_hash;
  }
  async listJoinTokens(p: Page = {}) {
    const rows = await this.db.selectFrom('join_tokens').selectAll().orderBy('created_at', 'desc').orderBy('id', 'desc').limit(limitOf(p.limit)).offset(p.offset ?? 0).execute();
    return rows.map(joinTokenFromRow);
  }
  async listLeases() {
    const rows = await this.db.selectFrom('dhcp_leases').selectAll().orderBy('ip').execute();
    return rows.map(leaseFromRow);
  }
  async listMachinesWithBootText(texts: string[]) {
    if (texts.length === 0) return [];
    const rows = await this.db
      .selectFrom('machines')
      .selectAll()
      .where((eb) => eb.or(texts.map((t) => this.like('boot', contains(t)))))
      .where('boot', 'is not', null)
      .orderBy('created_at')
      .limit(MAX_PAGE)
      .execute();
    return rows.map(machineFromRow);
  }
  async getUser(name: string) {
    const r = await this.db.selectFrom('users').select(USER_COLUMNS).where('name', '=', name).executeTakeFirst();
    return r ? userFromRow(r) : undefined;
  }
  async getUserByOidc(issuer: string, subject: string) {
    const r = await this.db.selectFrom('users').select(USER_COLUMNS).where('oidc_issuer', '=', issuer).where('oidc_subject', '=', subject).executeTakeFirst();
    return r ? userFromRow(r) : undefined;
  }
  async getUserPasswordHash(name: string) {
    return (await this.db.selectFrom('users').select('password_hash').where('name', '=', name).executeTakeFirst())?.password_hash;
  }
  async listUsers() {
    const rows = await this.db.selectFrom('users').select(USER_COLUMNS).orderBy('name').execute();
    return rows.map(userFromRow);
  }
  async getGroup(name: string) {
    const r = await this.db.selectFrom('user_groups').selectAll().where('name', '=', name).executeTakeFirst();
    return r ? { name: r.name, members: parse<string[]>(r.members), createdAt: r.created_at } : undefined;
  }
  async listGroups() {
    const rows = await this.db.selectFrom('user_groups').selectAll().orderBy('name').execute();
    return rows.map((r) => ({ name: r.name, members: parse<string[]>(r.members), createdAt: r.created_at }));
  }
  async listRoleBindings() {
    const rows = await this.db.selectFrom('role_bindings').selectAll().orderBy('created_at').orderBy('id').execute();
    return rows.map(bindingFromRow);
  }
  async getUserToken(id: string) {
    const r = await this.db.selectFrom('user_tokens').selectAll().where('id', '=', id).executeTakeFirst();
    return r ? userTokenFromRow(r) : undefined;
  }
  async getUserTokenHash(id: string) {
    return (await this.db.selectFrom('user_tokens').select('token_hash').where('id', '=', id).executeTakeFirst())?.token_hash;
  }
  async listUserTokens(owner?: string) {
    let q = this.db.selectFrom('user_tokens').selectAll();
    if (owner !== undefined) q = q.where('owner', '=', owner);
    return (await q.orderBy('created_at', 'desc').orderBy('id', 'desc').limit(MAX_PAGE).execute()).map(userTokenFromRow);
  }
  async listAudit(f: AuditFilter) {
    let q = this.db.selectFrom('audit').selectAll();
    if (f.principals !== undefined) q = q.where('principal', 'in', f.principals.length ? f.principals : ['']);
    if (f.since !== undefined) q = q.where('at', '>=', f.since);
    if (f.until !== undefined) q = q.where('at', '<', f.until);
    if (f.route !== undefined) q = q.where(this.like('route', contains(f.route)));
    if (f.resources !== undefined) q = q.where('resource', 'in', f.resources.length ? f.resources : ['']);
    if (f.outcome !== undefined) q = q.where('outcome', '=', f.outcome);
    if (f.before !== undefined) q = q.where('id', '<', f.before);
    const rows = await q.orderBy('id', 'desc').limit(Math.min(Math.max(1, f.limit), MAX_PAGE)).execute();
    return rows.map(auditFromRow);
  }
  async listMachinesWithFactText(text: string) {
    const rows = await this.db.selectFrom('machines').selectAll().where(this.like('facts', contains(text))).orderBy('created_at').limit(MAX_PAGE).execute();
    return rows.map(machineFromRow);
  }
}

function joinTokenFromRow(r: JoinTokensTable): JoinToken {
  return {
    id: r.id,
    name: r.name,
    pipeline: r.pipeline,
    profiles: parse(r.profiles),
    environment: r.environment,
    url: r.url,
    maxUses: Number(r.max_uses),
    uses: Number(r.uses),
    expiresAt: r.expires_at,
    createdBy: r.created_by,
    createdAt: r.created_at,
    revokedAt: r.revoked_at,
    revokedBy: r.revoked_by,
    machines: parse(r.machines),
    machine: r.machine_id ?? null,
  };
}

function imageFromRow(r: ImagesTable): Image {
  return {
    name: r.name,
    version: r.version,
    sha256: r.sha256,
    size: Number(r.size),
    format: r.format as ImageFormat,
    partitionTable: r.partition_table as PartitionTable,
    description: r.description,
    provenance: JSON.parse(r.provenance) as ImageProvenance,
    createdAt: r.created_at,
  };
}

/** Newest version first: by semantic version precedence would need semver in SQL; the caller sorts. */
function byNameThenNewest(a: Image, b: Image): number {
  if (a.name !== b.name) return a.name < b.name ? -1 : 1;
  return semverCompare(b.version, a.version);
}

function bindingFromRow(r: RoleBindingsTable): RoleBinding {
  const b: RoleBinding = { id: r.id, role: r.role, subject: r.subject, createdAt: r.created_at, createdBy: r.created_by };
  if (r.machines !== null) b.machines = r.machines;
  if (r.pipelines !== null) b.pipelines = parse<string[]>(r.pipelines);
  return b;
}

function auditFromRow(r: Selectable<AuditTable>): AuditEntry {
  return {
    id: Number(r.id),
    at: r.at,
    principal: r.principal,
    token: r.token,
    source: r.source,
    method: r.method,
    route: r.route,
    resource: r.resource,
    status: Number(r.status),
    outcome: r.outcome as AuditOutcome,
    detail: r.detail,
    requestId: r.request_id,
  };
}

function userTokenFromRow(r: UserTokensTable): UserToken {
  const t: UserToken = {
    id: r.id,
    name: r.name,
    kind: r.kind as UserToken['kind'],
    owner: r.owner,
    expiresAt: r.expires_at,
    createdAt: r.created_at,
    lastUsedAt: r.last_used_at,
    rotatedAt: r.rotated_at,
    revokedAt: r.revoked_at,
    revokedBy: r.revoked_by,
  };
  if (r.roles !== null) t.roles = parse<string[]>(r.roles);
  return t;
}

function credentialFromRow(r: CredentialsTable): CredentialRecord {
  return {
    name: r.name,
    kind: r.kind as CredentialRecord['kind'],
    keyType: r.key_type,
    fingerprint: r.fingerprint,
    publicKey: r.public_key,
    secret: parse(r.secret),
    createdAt: r.created_at,
  };
}

function rolloutFromRow(r: RolloutsTable): Rollout {
  return {
    id: r.id,
    spec: parse(r.spec),
    state: r.state as Rollout['state'],
    reason: r.reason,
    wave: Number(r.wave),
    waves: Number(r.waves),
    author: r.author,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

function rolloutToRow(r: Rollout): RolloutsTable {
  return {
    id: r.id,
    spec: json(r.spec),
    state: r.state,
    reason: r.reason,
    wave: r.wave,
    waves: r.waves,
    author: r.author,
    created_at: r.createdAt,
    updated_at: r.updatedAt,
  };
}

function itemToRow(i: RolloutItem): RolloutItemsTable {
  return {
    rollout_id: i.rolloutId,
    machine_id: i.machineId,
    machine_name: i.machineName,
    wave: i.wave,
    state: i.state,
    reason: i.reason,
    work_order_id: i.workOrderId,
    started_at: i.startedAt,
    finished_at: i.finishedAt,
  };
}

function holdFromRow(r: Selectable<MachineHoldsTable>): MachineHold {
  return { machineId: r.machine_id, rolloutId: r.rollout_id, since: r.since };
}

function packFromRow(r: Omit<Database['packs'], never>): PackRecord {
  return {
    name: r.name,
    version: r.version,
    description: r.description,
    files: parse(r.files),
    sha256: r.sha256,
    installedAt: r.installed_at,
  };
}

/** A change row as `SqlTx.change` writes it (its number drawn when it is inserted). */
type ChangeRow = { author: string; at: string; object: string; action: Change['action']; before: string | null; after: string | null };

/**
 * Inserts a change numbered max + 1 on PostgreSQL, returning its number. Rather than from the column's
 * sequence: a sequence hands out numbers outside transactions, so a rolled-back transaction (or savepoint
 * of a group) would leave a gap, and writers on other connections could commit numbers out of order. The
 * caller holds a lock that every other drawer of change numbers takes too, until its COMMIT (PG_WRITE_LOCK
 * exclusively for a store-scoped transaction, PG_DRAW_LOCK for a row-scoped group's draw: see
 * SqlStore.commitGroup), and under READ COMMITTED this statement's snapshot is taken after that lock was
 * granted, so it sees every earlier committed change: numbers are distinct, gap-free and in commit order,
 * as SQLite's single writer gives them.
 */
async function insertPgChange(db: Db, row: ChangeRow): Promise<number> {
  const r = await db
    .insertInto('changes')
    .columns(['seq', 'author', 'at', 'object', 'action', 'before', 'after'])
    .expression((eb) =>
      eb
        .selectFrom('changes')
        .select([
          sql<number>`coalesce(max(seq), 0) + 1`.as('seq'),
          sql.val(row.author).as('author'),
          sql.val(row.at).as('at'),
          sql.val(row.object).as('object'),
          sql.val(row.action).as('action'),
          sql.val(row.before).as('before'),
          sql.val(row.after).as('after'),
        ]),
    )
    .returning('seq')
    .executeTakeFirstOrThrow();
  return Number(r.seq);
}

class SqlTx extends SqlReads implements Tx {
  readonly pending: Array<{ topic: string; data: unknown; at: string }> = [];
  /** Changes of a row-scoped PostgreSQL transaction, numbered at its group's commit (`deferChanges`). */
  readonly pendingChanges: ChangeRow[] = [];

  /**
   * `db`: the connection of an open transaction (a Kysely Transaction, or on PostgreSQL the connection
   * commitGroup drives by hand). `deferChanges`: change numbers are drawn at commit (a row-scoped
   * PostgreSQL transaction, which runs without the store-wide lock until then), so `change` answers 0.
   */
  constructor(
    db: Db,
    q: QueryCache,
    dialect: Dialect,
    private readonly deferChanges = false,
  ) {
    super(db, q, dialect);
  }

  /** Writes held back to go together (PgRowTx): none in a plain SqlTx, which sends each at once. */
  protected readonly heldWrites: HeldWrite[] = [];
  /** Whether writes are held back (PgRowTx). */
  protected holdWrites = false;

  /**
   * A write whose answer nobody waits for (a row inserted or updated whole): sent at once, or on
   * PostgreSQL row-scoped transactions (PgRowTx) held back and sent with the next statement of the
   * transaction or at its end (`flushWrites`), several in one round trip. `row` names the row it writes
   * (`jobs:<id>`): a second write of a held row sends the held ones first, so that each statement of a
   * batch writes a row no other one does (PostgreSQL runs a batch's statements on one snapshot).
   */
  protected async write(key: string, build: () => Compilable<unknown>, args: unknown[], row: string): Promise<void> {
    if (!this.holdWrites) {
      await this.exec(key, build, args);
      return;
    }
    if (this.heldWrites.length >= MAX_HELD_WRITES || this.heldWrites.some((w) => w.row === row)) await this.flushWrites();
    const p = this.q.prepare(key, build);
    this.heldWrites.push({ key, sql: p.sql, values: p.params.map((x) => ('arg' in x ? args[x.arg] : x.value)), row });
  }

  /**
   * Sends the writes held back (`write`), in the order made: one alone as it is; several as one
   * statement whose data-modifying WITH clauses run each of them once, to completion
   * (PostgreSQL, "Data-Modifying Statements in WITH"), a named statement per sequence of keys.
   * @throws what the database answers (a failed write fails its transaction, as at once).
   */
  async flushWrites(): Promise<void> {
    if (this.heldWrites.length === 0) return;
    const ws = this.heldWrites.splice(0);
    if (ws.length === 1) {
      await this.db.executeQuery(CompiledQuery.raw(ws[0]!.sql, ws[0]!.values));
      return;
    }
    const p = this.q.prepareSql(`writes:${ws.map((w) => w.key).join('+')}`, () => heldWritesSql(ws));
    await this.db.executeQuery(CompiledQuery.raw(p.sql, ws.flatMap((w) => w.values)));
  }

  /**
   * PostgreSQL: a locked machine's hold and open work orders, read right after the lock (`lockMachine`)
   * and answered from here by `getHold` and `nextWorkOrder` until this transaction writes them. Every claim
   * and completion reads both right after the lock; one statement instead of two saves a round trip per
   * lock. Nothing else can change them meanwhile: holds and work orders are written only by store-scoped
   * transactions (which never run beside another transaction) or under this machine's lock.
   *
   * They are read by a statement of their own, after the one that takes the lock: in READ COMMITTED, a
   * `SELECT … FOR UPDATE` that waits for the lock re-reads the locked row once it is free, but its other
   * reads keep the snapshot taken before it waited — they would show the work orders as they were before
   * the holder (a completion) changed them (test/store-replicas.test.ts "a lock that waited").
   */
  private readonly withLock = new Map<string, { hold: MachineHold | undefined; open: WorkOrdersTable[] }>();
  /**
   * PostgreSQL: a locked machine's current job, read by the same statement as its hold and work orders
   * (`lockMachine`), and answered from here by `getJob` until this transaction writes that job. A
   * completion reads its job right after the lock, and so does a claim whose machine has one: one round
   * trip less per lock. The job cannot change meanwhile for the same reason: jobs are written under
   * their machine's lock, or by store-scoped transactions.
   */
  private readonly lockedJobs = new Map<string, Job>();

  async lockMachine(id: string) {
    // SQLite has no row locks (its one writer is the lock): a plain read.
    const r = await this.one<Selectable<MachinesTable>>('lockMachine', () => {
      const q = this.db.selectFrom('machines').selectAll().where('id', '=', arg(0));
      return this.dialect === 'postgres' ? q.forUpdate() : q;
    }, [id]);
    if (!r) return undefined;
    if (this.dialect === 'postgres') {
      const side = await this.one<{ hold_row: Selectable<MachineHoldsTable> | null; open_rows: WorkOrdersTable[] | null; job_row: JobsTable | null }>(
        'lockedMachineSide',
        () =>
          this.db
            .selectNoFrom([
              sql<unknown>`(select row_to_json(h) from machine_holds h where h.machine_id = ${arg(0)})`.as('hold_row'),
              sql<unknown>`(select json_agg(w) from work_orders w where w.machine_id = ${arg(0)} and w.state in ('running', 'queued'))`.as('open_rows'),
              // The machine's current job as getJob reads it (the report is read apart: getJobReport).
              sql<unknown>`(select to_jsonb(j) - 'report' from jobs j where j.id = ${arg(1)})`.as('job_row'),
            ]) as never,
        [id, r.current_job],
      );
      this.withLock.set(id, { hold: side?.hold_row ? holdFromRow(side.hold_row) : undefined, open: side?.open_rows ?? [] });
      if (side?.job_row) this.lockedJobs.set(side.job_row.id, jobFromRow(side.job_row));
    }
    return machineFromRow(r);
  }
  override async getHold(machineId: string) {
    const known = this.withLock.get(machineId);
    return known ? known.hold : super.getHold(machineId);
  }
  override async nextWorkOrder(machineId: string) {
    const known = this.withLock.get(machineId);
    return known ? firstOpen(known.open) : super.nextWorkOrder(machineId);
  }
  override async getJob(id: string) {
    const known = this.lockedJobs.get(id);
    return known ? { ...known } : super.getJob(id);
  }
  async insertMachine(m: Machine, tokenHash: string) {
    await this.db.insertInto('machines').values({ ...machineToRow(m), facts: m.facts === null ? null : json(m.facts), token_hash: tokenHash }).execute();
  }
  async updateMachine(m: Machine) {
    const { id, ...rest } = machineToRow(m);
    const cols = Object.keys(rest) as Array<keyof typeof rest>;
    await this.write(
      'updateMachine',
      () => this.db.updateTable('machines').set(Object.fromEntries(cols.map((c, i) => [c, arg(i + 1)]))).where('id', '=', arg(0)),
      [id, ...cols.map((c) => rest[c])],
      `machines:${id}`,
    );
  }
  async setAgentLiveness(id: string, a: AgentLiveness) {
    await this.exec(
      'setAgentLiveness',
      () =>
        this.db
          .updateTable('machines')
          // A version or address not given (null) keeps the one stored: only an agent that says tells it.
          .set({
            agent_connected: arg(1) as never,
            agent_seen_at: arg(2),
            agent_version: sql<string>`coalesce(${arg(3)}, agent_version)`,
            agent_address: sql<string>`coalesce(${arg(4)}, agent_address)`,
            agent_via: arg(5),
            agent_since: arg(6),
          })
          .where('id', '=', arg(0)),
      [id, a.connected ? 1 : 0, a.lastSeenAt, a.version, a.address, a.via, a.since],
    );
  }
  async deleteMachine(id: string) {
    this.withLock.clear();
    this.lockedJobs.clear();
    await this.db.deleteFrom('machines').where('id', '=', id).execute();
    // A rollout's hold dies with its machine (a rollout skips a deleted machine).
    await this.db.deleteFrom('machine_holds').where('machine_id', '=', id).execute();
  }
  async insertJob(j: Job) {
    const row = jobToRow(j);
    const cols = Object.keys(row) as Array<keyof typeof row>;
    await this.write('insertJob', () => this.db.insertInto('jobs').values({ ...Object.fromEntries(cols.map((c, i) => [c, arg(i)])), report: null } as never), cols.map((c) => row[c]), `jobs:${j.id}`);
  }
  async renewLease(jobId: string, until: string) {
    this.lockedJobs.delete(jobId);
    await this.exec(
      'renewLease',
      () => this.db.updateTable('jobs').set({ lease_expires_at: arg(1) }).where('id', '=', arg(0)).where('state', '=', 'running'),
      [jobId, until],
    );
  }
  async renewRunningLeases(until: string) {
    this.lockedJobs.clear();
    const r = await this.db.updateTable('jobs').set({ lease_expires_at: until }).where('state', '=', 'running').executeTakeFirst();
    return Number(r.numUpdatedRows);
  }
  async updateJob(j: Job, report?: unknown) {
    this.lockedJobs.delete(j.id);
    const { id, ...rest } = jobToRow(j);
    await this.db
      .updateTable('jobs')
      .set(report === undefined ? rest : { ...rest, report: json(report) })
      .where('id', '=', id)
      .execute();
  }
  async finishJob(j: Job, report?: unknown) {
    this.lockedJobs.delete(j.id);
    const args = [j.id, j.state, j.reason, j.exitCode, json(j.outputs), j.finishedAt, j.leaseExpiresAt, j.power ?? null];
    const set = { state: arg(1), reason: arg(2), exit_code: arg(3) as never, outputs: arg(4), finished_at: arg(5), lease_expires_at: arg(6), power: arg(7) };
    if (report === undefined) await this.write('finishJob', () => this.db.updateTable('jobs').set(set).where('id', '=', arg(0)), args, `jobs:${j.id}`);
    else await this.write('finishJobReport', () => this.db.updateTable('jobs').set({ ...set, report: arg(8) }).where('id', '=', arg(0)), [...args, json(report)], `jobs:${j.id}`);
  }
  /**
   * Log text as the store can keep it: PostgreSQL's text cannot hold NUL, which a script's output may
   * contain, so there each NUL becomes U+FFFD (the replacement character); SQLite keeps it.
   */
  private logText(data: string): string {
    return this.dialect === 'postgres' && data.includes('\u0000') ? data.replaceAll('\u0000', '\uFFFD') : data;
  }
  async appendLogs(chunks: LogChunk[]) {
    if (chunks.length === 0) return 0;
    if (chunks.length === 1) {
      const c = chunks[0]!;
      return this.exec(
        'appendLog',
        () =>
          this.db
            .insertInto('job_logs')
            .values({ job_id: arg(0), seq: arg(1) as never, stream: arg(2), data: arg(3), at: arg(4) })
            .onConflict((oc) => oc.columns(['job_id', 'seq']).doNothing()),
        [c.jobId, c.seq, c.stream, this.logText(c.data), c.at],
      );
    }
    const res = await this.db
      .insertInto('job_logs')
      .values(chunks.map((c) => ({ job_id: c.jobId, seq: c.seq, stream: c.stream, data: this.logText(c.data), at: c.at })))
      .onConflict((oc) => oc.columns(['job_id', 'seq']).doNothing())
      .executeTakeFirst();
    return Number(res.numInsertedOrUpdatedRows ?? 0);
  }
  async logSize(jobId: string) {
    // Bytes, not characters: SQLite's length() of text counts characters, of a blob bytes.
    const bytes = this.dialect === 'postgres' ? sql<number>`octet_length(data)` : sql<number>`length(cast(data as blob))`;
    const r = await this.db
      .selectFrom('job_logs')
      .select((eb) => [eb.fn.countAll<number>().as('chunks'), eb.fn.sum<number>(bytes).as('bytes')])
      .where('job_id', '=', jobId)
      .executeTakeFirst();
    return { chunks: Number(r?.chunks ?? 0), bytes: Number(r?.bytes ?? 0) };
  }
  async replaceLogData(jobId: string, seq: number, data: string) {
    await this.db.updateTable('job_logs').set({ data: this.logText(data) }).where('job_id', '=', jobId).where('seq', '=', seq).execute();
  }
  async insertWorkOrder(w: WorkOrder) {
    this.withLock.clear();
    await this.db.insertInto('work_orders').values(workOrderToRow(w)).execute();
  }
  async updateWorkOrder(w: WorkOrder) {
    this.withLock.clear();
    const { id, ...rest } = workOrderToRow(w);
    await this.db.updateTable('work_orders').set(rest).where('id', '=', id).execute();
  }
  async putContent(rec: ContentRecord) {
    const row = { kind: rec.kind, name: rec.name, layer: rec.layer, def: json(rec.def), sha256: rec.sha256 };
    await this.db
      .insertInto('content')
      .values(row)
      .onConflict((oc) => oc.columns(['kind', 'name']).doUpdateSet({ layer: row.layer, def: row.def, sha256: row.sha256 }))
      .execute();
  }
  async deleteContent(kind: ContentKind, name: string) {
    await this.db.deleteFrom('content').where('kind', '=', kind).where('name', '=', name).execute();
  }
  async putPack(p: PackRecord) {
    const row = {
      name: p.name,
      version: p.version,
      description: p.description,
      files: json(p.files),
      sha256: p.sha256,
      installed_at: p.installedAt,
    };
    await this.db
      .insertInto('packs')
      .values(row)
      .onConflict((oc) => oc.column('name').doUpdateSet({ ...row }))
      .execute();
  }
  async putPackVersion(p: PackRecord) {
    await this.db
      .insertInto('pack_versions')
      .values({
        name: p.name,
        version: p.version,
        description: p.description,
        requires: json(p.requires ?? {}),
        files: json(p.files),
        sha256: p.sha256,
        installed_at: p.installedAt,
      })
      .onConflict((oc) => oc.columns(['name', 'version']).doNothing())
      .execute();
  }
  async deletePack(name: string) {
    await this.db.deleteFrom('packs').where('name', '=', name).execute();
  }
  async deletePackVersion(name: string, version: string) {
    await this.db.deleteFrom('pack_versions').where('name', '=', name).where('version', '=', version).execute();
  }
  async insertRollout(r: Rollout, items: RolloutItem[]) {
    await this.db.insertInto('rollouts').values(rolloutToRow(r)).execute();
    for (let i = 0; i < items.length; i += 500) await this.db.insertInto('rollout_items').values(items.slice(i, i + 500).map(itemToRow)).execute();
  }
  async updateRollout(r: Rollout) {
    const { id, ...rest } = rolloutToRow(r);
    await this.db.updateTable('rollouts').set(rest).where('id', '=', id).execute();
  }
  async setMachineFacts(id: string, facts: ObservedFacts | null) {
    await this.db.updateTable('machines').set({ facts: facts === null ? null : json(facts) }).where('id', '=', id).execute();
  }
  async setMachineHost(id: string, host: string | null) {
    await this.db.updateTable('machines').set({ host }).where('id', '=', id).execute();
  }
  async setMachineTokenHash(id: string, tokenHash: string) {
    await this.db.updateTable('machines').set({ token_hash: tokenHash }).where('id', '=', id).execute();
  }
  async insertJoinToken(t: JoinToken, tokenHash: string) {
    await this.db
      .insertInto('join_tokens')
      .values({
        id: t.id,
        token_hash: tokenHash,
        name: t.name,
        pipeline: t.pipeline,
        profiles: json(t.profiles),
        environment: t.environment,
        url: t.url,
        max_uses: t.maxUses,
        uses: t.uses,
        expires_at: t.expiresAt,
        created_by: t.createdBy,
        created_at: t.createdAt,
        revoked_at: t.revokedAt,
        revoked_by: t.revokedBy,
        machines: json(t.machines),
        machine_id: t.machine,
      })
      .execute();
  }
  async takeJoinTokenUse(id: string, now: string) {
    const r = await this.db
      .updateTable('join_tokens')
      .set((eb) => ({ uses: eb('uses', '+', 1) }))
      .where('id', '=', id)
      .where('revoked_at', 'is', null)
      .where('expires_at', '>', now)
      .where((eb) => eb('uses', '<', eb.ref('max_uses')))
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }
  async updateJoinToken(t: JoinToken) {
    await this.db.updateTable('join_tokens').set({ revoked_at: t.revokedAt, revoked_by: t.revokedBy, machines: json(t.machines) }).where('id', '=', t.id).execute();
  }
  async putSetting(key: string, value: unknown) {
    if (value === null) {
      await this.db.deleteFrom('settings').where('key', '=', key).execute();
      return;
    }
    await this.db
      .insertInto('settings')
      .values({ key, value: json(value) })
      .onConflict((oc) => oc.column('key').doUpdateSet({ value: json(value) }))
      .execute();
  }
  async updateRolloutItem(i: RolloutItem) {
    const { rollout_id, machine_id, ...rest } = itemToRow(i);
    await this.db.updateTable('rollout_items').set(rest).where('rollout_id', '=', rollout_id).where('machine_id', '=', machine_id).execute();
  }
  async putHold(h: MachineHold) {
    this.withLock.clear();
    const row = { machine_id: h.machineId, rollout_id: h.rolloutId, since: h.since };
    await this.db
      .insertInto('machine_holds')
      .values(row)
      .onConflict((oc) => oc.column('machine_id').doUpdateSet({ rollout_id: row.rollout_id, since: row.since }))
      .execute();
  }
  async deleteHold(machineId: string) {
    this.withLock.clear();
    const r = await this.db.deleteFrom('machine_holds').where('machine_id', '=', machineId).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }
  async insertCredential(c: CredentialRecord) {
    await this.db
      .insertInto('credentials')
      .values({ name: c.name, kind: c.kind, key_type: c.keyType, fingerprint: c.fingerprint, public_key: c.publicKey, secret: json(c.secret), created_at: c.createdAt })
      .execute();
  }
  async putLease(l: Lease) {
    const row: DhcpLeasesTable = { mac: l.mac, ip: l.ip, state: l.state, expires_at: l.expiresAt, client_id: l.clientId ?? null, hostname: l.hostname ?? null, uuid: l.uuid ?? null, arch: l.arch ?? null };
    await this.db.deleteFrom('dhcp_leases').where('ip', '=', l.ip).where('mac', '!=', l.mac).execute();
    const { mac: _mac, ...rest } = row;
    await this.db.insertInto('dhcp_leases').values(row).onConflict((oc) => oc.column('mac').doUpdateSet(rest)).execute();
  }
  async deleteLease(mac: string) {
    await this.db.deleteFrom('dhcp_leases').where('mac', '=', mac).execute();
  }
  async insertImage(i: Image) {
    await this.db
      .insertInto('images')
      .values({ name: i.name, version: i.version, sha256: i.sha256, size: i.size, format: i.format, partition_table: i.partitionTable, description: i.description, provenance: json(i.provenance), created_at: i.createdAt })
      .execute();
  }
  async deleteImage(name: string, version: string) {
    await this.db.deleteFrom('images').where('name', '=', name).where('version', '=', version).execute();
  }
  async deleteCredential(name: string) {
    await this.db.deleteFrom('credentials').where('name', '=', name).execute();
  }
  async insertUser(u: User, passwordHash: string) {
    await this.db
      .insertInto('users')
      .values({ name: u.name, password_hash: passwordHash, created_at: u.createdAt, created_by: u.createdBy, kind: u.kind ?? null, oidc_issuer: u.oidc?.issuer ?? null, oidc_subject: u.oidc?.subject ?? null })
      .execute();
  }
  async setUserPasswordHash(name: string, passwordHash: string) {
    await this.db.updateTable('users').set({ password_hash: passwordHash }).where('name', '=', name).execute();
  }
  async deleteUser(name: string) {
    await this.db.deleteFrom('user_tokens').where('owner', '=', name).execute();
    await this.db.deleteFrom('role_bindings').where('subject', '=', `user:${name}`).execute();
    await this.db.deleteFrom('users').where('name', '=', name).execute();
  }
  async putGroup(g: Group) {
    const row = { name: g.name, members: json(g.members), created_at: g.createdAt };
    await this.db.insertInto('user_groups').values(row).onConflict((oc) => oc.column('name').doUpdateSet({ members: row.members })).execute();
  }
  async deleteGroup(name: string) {
    await this.db.deleteFrom('role_bindings').where('subject', '=', `group:${name}`).execute();
    await this.db.deleteFrom('user_groups').where('name', '=', name).execute();
  }
  async insertRoleBinding(b: RoleBinding) {
    await this.db
      .insertInto('role_bindings')
      .values({ id: b.id, role: b.role, subject: b.subject, machines: b.machines ?? null, pipelines: b.pipelines ? json(b.pipelines) : null, created_at: b.createdAt, created_by: b.createdBy })
      .execute();
  }
  async deleteRoleBinding(id: string) {
    await this.db.deleteFrom('role_bindings').where('id', '=', id).execute();
  }
  async insertUserToken(t: UserToken, tokenHash: string) {
    await this.db
      .insertInto('user_tokens')
      .values({
        id: t.id,
        token_hash: tokenHash,
        name: t.name,
        kind: t.kind,
        owner: t.owner,
        roles: t.roles ? json(t.roles) : null,
        expires_at: t.expiresAt,
        created_at: t.createdAt,
        last_used_at: t.lastUsedAt,
        rotated_at: t.rotatedAt,
        revoked_at: t.revokedAt,
        revoked_by: t.revokedBy,
      })
      .execute();
  }
  async updateUserToken(t: UserToken, tokenHash?: string) {
    await this.db
      .updateTable('user_tokens')
      .set({ expires_at: t.expiresAt, rotated_at: t.rotatedAt, revoked_at: t.revokedAt, revoked_by: t.revokedBy, last_used_at: t.lastUsedAt, ...(tokenHash ? { token_hash: tokenHash } : {}) })
      .where('id', '=', t.id)
      .execute();
  }
  async touchUserToken(id: string, at: string) {
    await this.db.updateTable('user_tokens').set({ last_used_at: at }).where('id', '=', id).execute();
  }
  async insertAudit(entries: readonly AuditRecord[]) {
    // At most 12 columns × 500 rows of bound parameters per statement (both stores allow far more).
    for (let i = 0; i < entries.length; i += 500) {
      const rows = entries.slice(i, i + 500).map((e) => ({
        at: e.at,
        principal: e.principal,
        token: e.token,
        source: e.source,
        method: e.method,
        route: e.route,
        resource: e.resource,
        status: e.status,
        outcome: e.outcome,
        detail: e.detail,
        request_id: e.requestId,
      }));
      await this.db.insertInto('audit').values(rows).execute();
    }
  }
  async pruneAudit(before: string) {
    const r = await this.db.deleteFrom('audit').where('at', '<', before).executeTakeFirst();
    return Number(r.numDeletedRows ?? 0);
  }
  async takeTurn(key: string, now: string, due: string) {
    // Settings hold JSON text; an ISO time's JSON string compares in time order as text (same length, UTC).
    const inserted = await this.db.insertInto('settings').values({ key, value: json(now) }).onConflict((oc) => oc.column('key').doNothing()).executeTakeFirst();
    if (Number(inserted.numInsertedOrUpdatedRows ?? 0) > 0) return true;
    const r = await this.db.updateTable('settings').set({ value: json(now) }).where('key', '=', key).where('value', '<=', json(due)).executeTakeFirst();
    return Number(r.numUpdatedRows ?? 0) > 0;
  }
  async change(author: string, object: string, action: Change['action'], before: unknown, after: unknown) {
    const row: ChangeRow = {
      author,
      at: new Date().toISOString(),
      object,
      action,
      before: before === undefined ? null : json(before),
      after: after === undefined ? null : json(after),
    };
    if (this.deferChanges) {
      this.pendingChanges.push(row);
      return 0;
    }
    if (this.dialect === 'postgres') return insertPgChange(this.db, row);
    const r = await this.db.insertInto('changes').values(row).returning('seq').executeTakeFirstOrThrow();
    return Number(r.seq);
  }
  emit(topic: string, data: unknown) {
    this.pending.push({ topic, data, at: new Date().toISOString() });
  }
}

/** A write held back by a PgRowTx: its statement's key and text, its parameter values, the row it writes. */
interface HeldWrite {
  key: string;
  sql: string;
  values: unknown[];
  row: string;
}

/** Writes one batch holds at most (bounds the statement's size and the number of distinct batches). */
const MAX_HELD_WRITES = 6;

/**
 * The statement that runs `writes` in order (each compiled for PostgreSQL, parameters `$1…$n`): each
 * one a data-modifying WITH clause, its parameters renumbered after the ones before.
 */
function heldWritesSql(writes: readonly HeldWrite[]): { sql: string; params: number } {
  let offset = 0;
  const clauses = writes.map((w, i) => {
    const at = offset;
    offset += w.values.length;
    return `w${i} as (${w.sql.replace(/\$(\d+)/g, (_, n: string) => `$${Number(n) + at}`)})`;
  });
  return { sql: `with ${clauses.join(', ')} select 1`, params: offset };
}

/**
 * A row-scoped transaction on PostgreSQL, where every statement is a round trip: the writes of a job's
 * path whose answers nobody reads (insertJob, finishJob, updateMachine; SqlTx.write) are held back and
 * sent together — with the next statement of any other kind (every other async method of the
 * transaction sends them first, so the order of its statements is kept) or at the transaction's end
 * (commitGroup calls `flushWrites`). A completion with its next claim sends its job's end, the next
 * job and the machine in one round trip instead of three.
 */
class PgRowTx extends SqlTx {
  constructor(db: Db, q: QueryCache) {
    super(db, q, 'postgres', true);
    this.holdWrites = true;
  }
}
/** The methods that hold back (or send) writes themselves; every other async method sends them first. */
const HOLDING = new Set(['constructor', 'write', 'flushWrites', 'insertJob', 'finishJob', 'updateMachine']);
for (const proto of [SqlTx.prototype, SqlReads.prototype]) {
  for (const name of Object.getOwnPropertyNames(proto)) {
    const fn = (proto as unknown as Record<string, unknown>)[name];
    // Only async methods: the sync ones (emit, query builders) send nothing.
    if (HOLDING.has(name) || Object.hasOwn(PgRowTx.prototype, name) || typeof fn !== 'function' || fn.constructor.name !== 'AsyncFunction') continue;
    Object.defineProperty(PgRowTx.prototype, name, {
      value: async function (this: PgRowTx, ...args: unknown[]) {
        await this.flushWrites();
        return (fn as (...a: unknown[]) => Promise<unknown>).apply(this, args);
      },
      writable: true,
      configurable: true,
    });
  }
}

interface Queued {
  fn: (tx: Tx) => Promise<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  /** Times the transaction was rolled back for a lock conflict and queued again (row scope). */
  retries: number;
}

/** Transactions committed together at most (bounds how long the last of a group waits for its answer). */
const MAX_GROUP = 64;
/**
 * Times a row-scoped transaction that lost a deadlock (PostgreSQL picked it to end the cycle) is run again
 * before its caller hears the error. A deadlock needs two groups each holding a machine the other wants:
 * rare (one machine's requests rarely arrive twice at once), and the retry runs in a later group.
 */
const MAX_LOCK_RETRIES = 5;
/**
 * Row-scoped groups a PostgreSQL store commits at once by default, each on a pooled connection of its own.
 * 2, not 3 (issue #15 part 4): fewer, larger groups cost less CPU per job (a group's BEGIN, events insert,
 * NOTIFY and COMMIT are shared by more jobs); 1 left a lone replica waiting on its round trips.
 */
const ROW_GROUPS = 2;

/**
 * PostgreSQL advisory lock keys (the two-int form; 0x74616b74 is "takt"). WRITE_LOCK is taken by every
 * store transaction from its start to COMMIT: exclusively by a store-scoped one (`pg_advisory_xact_lock`),
 * so it runs alone as on SQLite, across connections and processes; shared by a row-scoped group
 * (`pg_advisory_xact_lock_shared`), so those run concurrently with each other but never with a
 * store-scoped one. DRAW_LOCK is taken exclusively by a row-scoped group at its end, just before it draws
 * its change numbers and event ids, and held to its COMMIT: so numbers and ids are drawn by one transaction
 * at a time, in commit order (a store-scoped transaction draws them under WRITE_LOCK, which excludes every
 * row-scoped group). ENDPOINT_LOCK is held by a running `takt serve` for as long as its store is open
 * (postgres.ts): shared by replicas, exclusive by `takt store migrate`.
 */
export const PG_LOCK_SPACE = 0x74616b74;
export const PG_WRITE_LOCK = 1;
export const PG_ENDPOINT_LOCK = 2;
export const PG_DRAW_LOCK = 3;
/**
 * Key space of the replica locks: a `takt serve` replica holds (PG_REPLICA_SPACE, its endpoint id as a
 * 32-bit integer) while it runs, so two replicas with one endpoint id (a data dir copied whole) are refused.
 */
export const PG_REPLICA_SPACE = 0x74616b75;
/** The channel every store on a PostgreSQL database notifies (committed events) and listens on (pg-follow.ts). */
export const PG_EVENTS_CHANNEL = 'takt_events';

/**
 * PostgreSQL: `n` events inserted once PG_DRAW_LOCK is held, in one statement: the rows come from a join
 * with the lock's call and are sorted by their place in the list, so every id is drawn (from the column's
 * default) after the lock is granted, in list order. Parameters: topic, at, data of each event in turn.
 */
function insertEventsDrawLockSql(n: number): { sql: string; params: number } {
  const rows = Array.from({ length: n }, (_, k) => `($${3 * k + 1}, $${3 * k + 2}, $${3 * k + 3}, ${k})`).join(', ');
  return {
    sql:
      `insert into "events" ("topic", "at", "data") select v.topic, v.at, v.data ` +
      `from (select pg_advisory_xact_lock(${PG_LOCK_SPACE}, ${PG_DRAW_LOCK})) as l, (values ${rows}) as v(topic, at, data, n) order by v.n returning "id"`,
    params: 3 * n,
  };
}

/** Bytes of a notification's payload at most: PostgreSQL refuses 8000 or more; the rest is margin. */
const NOTIFY_PAYLOAD_BYTES = 7500;
/** The dollar-quote tag of the payloads (a payload that contains it is not carried). */
const NOTIFY_QUOTE = '$takt$';

/**
 * The NOTIFY statements for a committed group's events (pg-follow.ts), null when it has none: one
 * `select pg_notify('takt_events', '<newest id>:[[id, topic, at, data], …]')` per part of the events that
 * fits a payload, in id order (notifications of one transaction arrive in the order sent). An event that
 * does not fit a payload alone (or contains the quote tag) ends the carrying: the last notification is
 * then the newest id alone, and the followers read what was not carried. `dataTexts`: each event's data as
 * inserted (JSON text, by id), so that it is not serialised twice. Dollar quoting: the payload goes in the
 * SQL text as is, whatever the server's standard_conforming_strings.
 */
function notifySql(events: TaktEvent[], dataTexts: Map<number, string>): string | null {
  if (events.length === 0) return null;
  const newest = events[events.length - 1]!.id;
  const head = `${newest}:[`;
  const statements: string[] = [];
  const notify = (payload: string) => statements.push(`select pg_notify('${PG_EVENTS_CHANNEL}', ${NOTIFY_QUOTE}${payload}${NOTIFY_QUOTE})`);
  let part: string[] = [];
  let bytes = head.length + 1;
  let all = true;
  for (const e of events) {
    const entry = `[${e.id},${JSON.stringify(e.topic)},${JSON.stringify(e.at)},${dataTexts.get(e.id) ?? json(e.data)}]`;
    const size = Buffer.byteLength(entry) + 1;
    if (head.length + 1 + size > NOTIFY_PAYLOAD_BYTES || entry.includes(NOTIFY_QUOTE)) {
      all = false;
      break;
    }
    if (bytes + size > NOTIFY_PAYLOAD_BYTES) {
      notify(`${head}${part.join(',')}]`);
      part = [];
      bytes = head.length + 1;
    }
    part.push(entry);
    bytes += size;
  }
  if (part.length > 0) notify(`${head}${part.join(',')}]`);
  if (!all) notify(String(newest));
  return statements.join('; ');
}

/** Thrown inside a row-scoped group when one of its transactions fails: the group rolls back whole (commitGroup). */
class GroupAborted extends Error {
  constructor() {
    super('a transaction of the group failed; the group is rolled back and its other transactions run again');
  }
}

/** PostgreSQL's SQLSTATE for "deadlock detected": the transaction was chosen to end a lock cycle. */
const PG_DEADLOCK = '40P01';
const isDeadlock = (error: unknown): boolean => (error as { code?: unknown } | null)?.code === PG_DEADLOCK;

/**
 * Who publishes a store's committed events when other processes write the same database (PostgreSQL:
 * pg-follow.ts). Without one (SQLite: one process per data dir), a group's events go to the listeners
 * straight after its COMMIT.
 */
export interface EventFeed {
  /** The open group drew event ids up to `id` (called before its COMMIT). */
  drawn(id: number): void;
  /**
   * The group committed with these events (one array per transaction, ids ascending): publish them, in id
   * order with every other event, exactly once. Returns a promise when that needs a read first; the
   * group's callers hear of their results only after it settles.
   */
  own(batches: TaktEvent[][]): Promise<void> | undefined;
  /** The open group did not commit. */
  failed(): void;
  /** Stops following; resolves when no read is under way. */
  close(): Promise<void>;
}

/** Options of a SqlStore. */
export interface SqlStoreOptions {
  /** Where the database is, as messages say it (a file path, or a URL without its password). */
  where?: string;
  /** Run after the database is closed (PostgreSQL: ends the endpoint lock's connection). */
  onClose?: () => Promise<void>;
  /** The cache of compiled hot-path queries (default: a new one); postgres.ts shares it with its pool. */
  queryCache?: QueryCache;
  /**
   * PostgreSQL: row-scoped groups committed at once, each on a connection of its own (default 2; at
   * least 1). More lets one replica's claims and completions overlap their round trips; each takes a
   * pooled connection while it runs.
   */
  rowGroups?: number;
}

/** One transaction of a group, as it ended: its value and its Tx (for its events), or its error. */
type Outcome = { ok: true; value: unknown; tx: SqlTx; events: TaktEvent[] } | { ok: false; error: unknown } | { ok: false; retry: true };

export class SqlStore extends SqlReads implements Store {
  private readonly listeners = new Set<EventListener>();
  /** Listeners of this store's own committed events only (onOwnEvents). */
  private readonly ownListeners = new Set<EventListener>();
  private readonly queue: Queued[] = [];
  private draining = false;
  /** Row-scoped transactions waiting for a group (PostgreSQL), and the groups under way. */
  private readonly rowQueue: Queued[] = [];
  private rowsScheduled = false;
  private rowsInFlight = 0;
  /**
   * The publication of the last group that drew event ids (PostgreSQL): each group publishes after the one
   * before it, so in id order, although row-scoped groups commit on several connections at once.
   */
  private published: Promise<void> = Promise.resolve();
  /** Publishes committed events when other processes share the database (PostgreSQL); see `follow`. */
  private feed: EventFeed | undefined;

  constructor(
    private readonly kysely: Kysely<Database>,
    dialect: Dialect,
    private readonly options: SqlStoreOptions = {},
  ) {
    super(kysely, options.queryCache ?? new QueryCache(), dialect);
  }

  /**
   * The database itself, for whole-store maintenance outside the commit path only (store/copy.ts, behind
   * `takt store migrate`); everything else reads and writes through the Store interface.
   */
  get maintenanceDb(): Kysely<Database> {
    return this.kysely;
  }

  /** Where the database is, for messages (never a password). */
  get where(): string {
    return this.options.where ?? `the ${this.dialect} database`;
  }

  /**
   * Brings the schema up to date (from empty, or from any earlier release). On PostgreSQL Kysely's migrator
   * takes an advisory lock and runs all pending migrations in one transaction, so two endpoints starting
   * on one database migrate it once.
   * @throws TaktError `conflict` when the database has migrations this build does not know (it was
   *   written by a newer takt): running on it could corrupt it, so nothing is changed.
   * @throws TaktError `internal` when a migration fails (it is rolled back where the dialect allows).
   */
  async migrate() {
    const known = new Set(Object.keys(await migrationProvider(this.dialect).getMigrations()));
    const tables = await this.kysely.introspection.getTables({ withInternalKyselyTables: true });
    if (tables.some((t) => t.name === 'kysely_migration')) {
      const applied = await this.kysely.selectFrom('kysely_migration' as never).select('name' as never).execute();
      const unknown = applied.map((r) => (r as { name: string }).name).filter((n) => !known.has(n));
      if (unknown.length > 0) {
        throw new TaktError(
          'conflict',
          `${this.where} has a newer schema than this takt knows (migrations ${unknown.sort().join(', ')}): it was written by a newer takt. ` +
            'Run that version (or a later one) on it, or point this one at another database; nothing was changed.',
        );
      }
    }
    const migrator = new Migrator({ db: this.kysely, provider: migrationProvider(this.dialect) });
    const { error, results } = await migrator.migrateToLatest();
    if (error) {
      const failed = results?.find((r) => r.status === 'Error');
      throw new TaktError('internal', `database migration ${failed?.migrationName ?? ''} of ${this.where} failed: ${(error as Error).message ?? error}`);
    }
  }

  /**
   * The one commit path. Transactions are queued and committed in groups: while one group runs, the
   * transactions that arrive wait and then go together, each inside a savepoint of one database
   * transaction. A transaction that throws is rolled back to its savepoint alone; the others commit.
   * Nobody hears of a result (or its events) before the group's COMMIT has succeeded. Under load this
   * shares one COMMIT — the costliest statement on SQLite, where writes are serial anyway — among many
   * callers; alone, a transaction commits at once as before.
   *
   * `opts.scope` `rows` (PostgreSQL; see TransactOptions): the transaction goes into a row-scoped group;
   * up to `rowGroups` of those commit at once, on connections of their own, concurrently with other
   * replicas' (their row locks keep them apart). A row-scoped group has no savepoints: when one of its
   * transactions throws, the group is rolled back whole, that transaction's caller hears its error, and
   * the others run again in a later group; one that PostgreSQL ends to break a deadlock runs again too
   * (at most MAX_LOCK_RETRIES times). So a row-scoped `fn` may run more than once, and only its last run's
   * writes commit.
   */
  transact<T>(fn: (tx: Tx) => Promise<T>, opts?: TransactOptions): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const item: Queued = { fn: fn as (tx: Tx) => Promise<unknown>, resolve: resolve as (v: unknown) => void, reject, retries: 0 };
      if (opts?.scope === 'rows' && this.dialect === 'postgres') {
        this.rowQueue.push(item);
        this.scheduleRows();
        return;
      }
      this.queue.push(item);
      if (!this.draining) {
        this.draining = true;
        // SQLite statements run synchronously, so transactions never overlap by themselves: the group
        // forms from what arrives in one turn of the event loop (every request read in one poll).
        setImmediate(() => void this.drain());
      }
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) await this.commitGroup(this.queue.splice(0, MAX_GROUP), 'store');
    } finally {
      this.draining = false;
    }
  }

  /** Starts row-scoped groups on the next turn of the event loop (what arrives in this one joins them). */
  private scheduleRows(): void {
    if (this.rowsScheduled) return;
    this.rowsScheduled = true;
    setImmediate(() => {
      this.rowsScheduled = false;
      this.pumpRows();
    });
  }

  /** Starts row-scoped groups while connections for them are free, sharing out what waits among them. */
  private pumpRows(): void {
    const most = Math.max(1, this.options.rowGroups ?? ROW_GROUPS);
    while (this.rowQueue.length > 0 && this.rowsInFlight < most) {
      const size = Math.min(MAX_GROUP, Math.ceil(this.rowQueue.length / (most - this.rowsInFlight)));
      const group = this.rowQueue.splice(0, size);
      this.rowsInFlight += 1;
      void this.commitGroup(group, 'rows').finally(() => {
        this.rowsInFlight -= 1;
        this.pumpRows();
      });
    }
  }

  /**
   * Hands the publication of this store's events to `feed` (postgres.ts: a follower of the events table,
   * pg-follow.ts), which then also publishes the events other processes commit. Call once, after
   * `migrate`, before the store is used; `feed.start` runs first, and what it throws is thrown.
   * @param create given the store's publish function (to listeners, in order; never throws).
   */
  async follow<F extends EventFeed & { start(): Promise<void> }>(create: (publish: (events: TaktEvent[]) => void) => F): Promise<F> {
    const feed = create((events) => this.publish(events));
    await feed.start();
    this.feed = feed;
    return feed;
  }

  /** The feed `follow` set (tests look at its connection), if any. */
  get eventFeed(): EventFeed | undefined {
    return this.feed;
  }

  /** Takes the next place in the order of publication: resolves when the group before has published; call the returned `done` after publishing (or failing). */
  private takeTurn(): { before: Promise<void>; done: () => void } {
    const before = this.published;
    let done!: () => void;
    this.published = new Promise<void>((r) => (done = r));
    return { before, done };
  }

  /**
   * Runs `body` in one database transaction and commits it; `body` answers a statement to run just before
   * COMMIT, or null. On PostgreSQL the transaction is driven by hand so that BEGIN goes with the write
   * lock and that last statement with COMMIT, one round trip each (simple query protocol: several
   * statements without parameters in one message); writers on other connections (other processes on the
   * same database) wait at the lock as TransactOptions says, and READ COMMITTED then gives each of their
   * statements a snapshot that includes what committed before they got it. This is what keeps change
   * numbers distinct and gap-free (insertPgChange); SERIALIZABLE would instead fail one of two racing
   * writers and need retries of arbitrary engine code.
   * @throws what `body` or the commit throws, after rolling back.
   */
  private async inTransaction(scope: 'store' | 'rows', body: (trx: Db, sql: (text: string) => Promise<unknown>) => Promise<string | null>): Promise<void> {
    if (this.dialect !== 'postgres') {
      await this.kysely.transaction().execute(async (trx) => {
        const last = await body(trx, (text) => trx.executeQuery(CompiledQuery.raw(text)));
        if (last) await trx.executeQuery(CompiledQuery.raw(last));
      });
      return;
    }
    await this.kysely.connection().execute(async (conn) => {
      const sql = (text: string) => conn.executeQuery(CompiledQuery.raw(text));
      await sql(`begin; select pg_advisory_xact_lock${scope === 'rows' ? '_shared' : ''}(${PG_LOCK_SPACE}, ${PG_WRITE_LOCK})`);
      let last: string | null;
      try {
        last = await body(conn, sql);
      } catch (error) {
        await sql('rollback').catch(() => undefined);
        throw error;
      }
      try {
        await sql(last ? `${last}; commit` : 'commit');
      } catch (error) {
        // A failed COMMIT has ended the transaction already; a failed statement before it has not.
        await sql('rollback').catch(() => undefined);
        throw error;
      }
    });
  }

  /**
   * Commits `group` in one database transaction (see `transact`). `store`: each transaction's change
   * numbers and event ids are drawn as it runs (it holds the write lock exclusively). `rows` (PostgreSQL
   * only): they are drawn for the whole group at its end, under DRAW_LOCK (drawDeferred: usually one
   * statement that takes the lock and inserts every event) — then the NOTIFYs with COMMIT (notifySql).
   */
  private async commitGroup(group: Queued[], scope: 'store' | 'rows'): Promise<void> {
    const outcomes: Outcome[] = [];
    const feed = this.feed;
    const pg = this.dialect === 'postgres';
    const deferred = scope === 'rows';
    let turn: { before: Promise<void>; done: () => void } | undefined;
    /** The JSON text of each inserted event's data, by id (the notification carries it: notifySql). */
    const dataTexts = new Map<number, string>();
    try {
      // A lone transaction needs no savepoint: if it throws, the whole database transaction rolls back.
      // Neither does a row-scoped group (PostgreSQL): it runs its transactions without savepoints (one
      // round trip less per transaction), and when one throws, the whole group is rolled back and the
      // others run again in a later group (they may be run again anyway: see MAX_LOCK_RETRIES).
      const grouped = group.length > 1;
      const savepoints = grouped && !deferred;
      await this.inTransaction(scope, async (trx, sql) => {
        // A store-scoped group holds the write lock exclusively from here: every group that drew ids
        // before it has committed, so it publishes after them.
        if (pg && !deferred) turn = this.takeTurn();
        // PostgreSQL: every statement is a round trip, so statements without parameters that follow each
        // other go as one simple query (`release; savepoint`): that protocol runs several statements in one
        // message. SQLite runs one statement per call.
        let released = true;
        for (const item of group) {
          if (savepoints) await sql(pg && !released ? 'release grouped; savepoint grouped' : 'savepoint grouped');
          released = !savepoints;
          const tx = deferred && pg ? new PgRowTx(trx, this.q) : new SqlTx(trx, this.q, this.dialect, deferred);
          try {
            const value = await item.fn(tx);
            await tx.flushWrites();
            const events = deferred ? [] : await this.insertEvents(trx, tx.pending, false, dataTexts);
            if (events.length > 0) feed?.drawn(events[events.length - 1]!.id);
            if (grouped && !pg) {
              await sql('release grouped');
              released = true;
            }
            outcomes.push({ ok: true, value, tx, events });
          } catch (error) {
            if (!grouped) throw error;
            if (!savepoints) {
              outcomes.push(isDeadlock(error) && item.retries < MAX_LOCK_RETRIES ? { ok: false, retry: true } : { ok: false, error });
              throw new GroupAborted();
            }
            await sql(pg ? 'rollback to grouped; release grouped' : 'rollback to grouped');
            if (!pg) await sql('release grouped');
            released = true;
            outcomes.push(deferred && isDeadlock(error) && item.retries < MAX_LOCK_RETRIES ? { ok: false, retry: true } : { ok: false, error });
          }
        }
        if (deferred) await this.drawDeferred(trx, sql, outcomes, (t) => (turn = t), dataTexts);
        // Other processes on the database read the events after the commit (pg-follow.ts). NOTIFY is
        // transactional: delivered only if, and once, the group commits. The last savepoint is not
        // released: COMMIT ends it with the transaction.
        return feed ? notifySql(outcomes.flatMap((o) => (o.ok ? o.events : [])), dataTexts) : null;
      });
    } catch (error) {
      feed?.failed();
      turn?.done();
      // Nothing of the group was committed: each caller hears its own error, or the commit's; a lone
      // row-scoped transaction that lost a deadlock runs again. A row-scoped group that one of its
      // transactions aborted (GroupAborted): that one fails (or runs again after a deadlock), the others
      // run again, not counted as retries (each abort ends or counts one transaction, so this is bounded).
      const aborted = error instanceof GroupAborted;
      const again: Queued[] = [];
      const rerun: Queued[] = [];
      group.forEach((item, i) => {
        const o = outcomes[i];
        if (deferred && group.length === 1 && isDeadlock(error) && item.retries < MAX_LOCK_RETRIES) again.push(item);
        else if (o && !o.ok && 'retry' in o) again.push(item);
        else if (aborted && (!o || o.ok)) rerun.push(item);
        else item.reject(o && !o.ok && 'error' in o ? o.error : error);
      });
      this.retry(again, rerun);
      return;
    }
    try {
      if (turn) await turn.before;
      const batches = outcomes.flatMap((o) => (o.ok && o.events.length > 0 ? [o.events] : []));
      if (feed) {
        // In id order with other processes' events; usually at once, as below.
        const publishing = feed.own(batches);
        if (publishing) await publishing;
      } else {
        for (const b of batches) this.publish(b);
      }
      // Own events, whatever else the feed published meanwhile: groups publish one after another, in id order.
      if (this.ownListeners.size > 0) for (const b of batches) this.publish(b, this.ownListeners);
    } finally {
      turn?.done();
    }
    const again: Queued[] = [];
    group.forEach((item, i) => {
      const o = outcomes[i]!;
      if (o.ok) item.resolve(o.value);
      else if ('retry' in o) again.push(item);
      else item.reject(o.error);
    });
    this.retry(again);
  }

  /**
   * Queues row-scoped transactions that lost a deadlock again (`items`, each counted as a retry) and those
   * a group's abort took down with it (`rerun`, not counted), ahead of what waits.
   */
  private retry(items: Queued[], rerun: Queued[] = []): void {
    if (items.length === 0 && rerun.length === 0) return;
    for (const item of items) item.retries += 1;
    this.rowQueue.unshift(...rerun, ...items);
    this.scheduleRows();
  }

  /**
   * The end of a row-scoped group (PostgreSQL): takes DRAW_LOCK, numbers the group's changes and inserts
   * its events (ids from the sequence, in the order the transactions ran), and fills each outcome's
   * `events`. Nothing to draw, no lock: the group commits without it. `onTurn` gets the group's place in
   * the order of publication, taken as the lock is granted (groups get it in the order they draw ids).
   */
  private async drawDeferred(
    trx: Db,
    sql: (text: string) => Promise<unknown>,
    outcomes: Outcome[],
    onTurn: (t: { before: Promise<void>; done: () => void }) => void,
    dataTexts: Map<number, string>,
  ): Promise<void> {
    const done = outcomes.filter((o): o is Extract<Outcome, { ok: true }> => o.ok);
    if (!done.some((o) => o.tx.pending.length > 0 || o.tx.pendingChanges.length > 0)) return;
    const pending = done.flatMap((o) => o.tx.pending);
    let events: TaktEvent[];
    if (pending.length <= EVENT_BATCH && !done.some((o) => o.tx.pendingChanges.length > 0)) {
      // The usual case (claims and completions write no changes): the lock is taken by the events insert
      // itself, one round trip instead of two. Its ids are drawn only once the lock is held (the insert's
      // rows come from a join with the lock's call); groups still get their turn in the order they got
      // the lock, since the next group's insert cannot answer before this group has committed.
      events = await this.insertEvents(trx, pending, true, dataTexts);
      onTurn(this.takeTurn());
    } else {
      // Change numbers need a snapshot taken after the lock (insertPgChange): the lock goes first.
      await sql(`select pg_advisory_xact_lock(${PG_LOCK_SPACE}, ${PG_DRAW_LOCK})`);
      onTurn(this.takeTurn());
      for (const o of done) for (const c of o.tx.pendingChanges) await insertPgChange(trx, c);
      events = await this.insertEvents(trx, pending, false, dataTexts);
    }
    let k = 0;
    for (const o of done) {
      o.events = events.slice(k, k + o.tx.pending.length);
      k += o.tx.pending.length;
    }
    if (events.length > 0) this.feed?.drawn(events[events.length - 1]!.id);
  }

  /** A listener that throws must not keep the other listeners, or the rest of the group, from hearing. */
  private publish(events: TaktEvent[], to: Set<EventListener> = this.listeners): void {
    for (const l of to) {
      try {
        l(events);
      } catch (err) {
        process.emitWarning(`an event listener failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }

  /**
   * Events are rows of the same transaction: they exist exactly when the write they describe does.
   * One insert for all of them; ids grow in the order the rows are listed, whatever order RETURNING uses.
   */
  private async insertEvents(trx: Db, pending: SqlTx['pending'], drawLock = false, dataTexts?: Map<number, string>): Promise<TaktEvent[]> {
    const committed: TaktEvent[] = [];
    for (let i = 0; i < pending.length; i += EVENT_BATCH) {
      const batch = pending.slice(i, i + EVENT_BATCH);
      const p =
        drawLock && i === 0
          ? this.q.prepareSql(`insertEventsDrawLock${batch.length}`, () => insertEventsDrawLockSql(batch.length))
          : this.q.prepare(`insertEvents${batch.length}`, () =>
              trx.insertInto('events').values(batch.map((_, k) => ({ topic: arg(3 * k), at: arg(3 * k + 1), data: arg(3 * k + 2) }))).returning('id'),
            );
      const texts = batch.map((e) => json(e.data));
      const r = await run<{ id: number }>(trx, p, batch.flatMap((e, k) => [e.topic, e.at, texts[k]]));
      const ids = r.rows.map((row) => Number(row.id)).sort((a, b) => a - b);
      batch.forEach((e, k) => {
        committed.push({ id: ids[k]!, topic: e.topic, at: e.at, data: e.data });
        dataTexts?.set(ids[k]!, texts[k]!);
      });
    }
    return committed;
  }

  onEvents(listener: EventListener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  onOwnEvents(listener: EventListener) {
    this.ownListeners.add(listener);
    return () => this.ownListeners.delete(listener);
  }

  roundTrips(): ReadonlyMap<string, number> {
    return this.q.roundTrips();
  }

  async pruneEvents(keep: number) {
    const newest = await this.kysely.selectFrom('events').select((eb) => eb.fn.max('id').as('m')).executeTakeFirst();
    const max = newest?.m == null ? 0 : Number(newest.m);
    if (max > keep) await this.kysely.deleteFrom('events').where('id', '<=', max - keep).execute();
  }

  async close() {
    try {
      await this.feed?.close();
      await this.kysely.destroy();
    } finally {
      await this.options.onClose?.();
    }
  }
}

/** The columns a User is read from (never the password hash). */
const USER_COLUMNS = ['name', 'created_at', 'created_by', 'kind', 'oidc_issuer', 'oidc_subject'] as const;

function userFromRow(r: { name: string; created_at: string; created_by: string; kind: string | null; oidc_issuer: string | null; oidc_subject: string | null }): User {
  const u: User = { name: r.name, createdAt: r.created_at, createdBy: r.created_by };
  if (r.kind === 'oidc' && r.oidc_issuer !== null && r.oidc_subject !== null) {
    u.kind = 'oidc';
    u.oidc = { issuer: r.oidc_issuer, subject: r.oidc_subject };
  }
  return u;
}
