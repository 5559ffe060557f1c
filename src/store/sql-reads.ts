/**
 * Reads on Kysely: the same queries for SQLite and PostgreSQL, outside or inside a transaction.
 */
import { sql, type Compilable, type Selectable } from 'kysely';
import type { ContentKind } from '../model/content.js';
import type { JobState, LogChunk } from '../model/machine.js';
import type { Rollout, RolloutItem } from '../model/rollout.js';
import type { Dialect } from './migrations.js';
import type { Page, ChangeFilter, JobFilter, MachineFilter, Reads, WorkOrderFilter } from './store.js';
import type { JobsTable, MachineHoldsTable, MachinesTable, WorkOrdersTable } from './tables.js';
import type { AuditFilter } from '../model/audit.js';
import { type Db, parse, MAX_PAGE, limitOf, arg, QueryCache, run, contains } from './queries.js';
import { firstOpen, leaseFromRow, machineFromRow, jobFromRow, workOrderFromRow, changeFromRow, joinTokenFromRow, imageFromRow, byNameThenNewest, bindingFromRow, auditFromRow, userTokenFromRow, credentialFromRow, rolloutFromRow, holdFromRow, packFromRow, USER_COLUMNS, userFromRow } from './rows.js';
export class SqlReads implements Reads {
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
    if (f.ids !== undefined) q = f.ids.length > 0 ? q.where('id', 'in', [...f.ids]) : q.where(sql<boolean>`1 = 0`);
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
