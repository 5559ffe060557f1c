/**
 * One transaction of the store (Tx): its writes, its events and changes as it makes them, and on
 * PostgreSQL what a row-scoped transaction answers from its locked machine or holds back to send
 * together (PgRowTx). Committed by sql-store.ts's one commit path.
 */
import { CompiledQuery, sql, type Compilable, type Selectable } from 'kysely';
import type { ContentKind } from '../model/content.js';
import type { ObservedFacts } from '../model/facts.js';
import type { Image } from '../model/image.js';
import type { JoinToken } from '../model/join.js';
import type { Lease } from '../model/lease.js';
import type { AgentLiveness, Change, Job, LogChunk, Machine, WorkOrder } from '../model/machine.js';
import type { MachineHold, Rollout, RolloutItem } from '../model/rollout.js';
import type { Dialect } from './migrations.js';
import type { ContentRecord, CredentialRecord, PackRecord, Tx } from './store.js';
import type { DhcpLeasesTable, JobsTable, MachineHoldsTable, MachinesTable, WorkOrdersTable } from './tables.js';
import type { RoleBinding } from '../model/permissions.js';
import type { Group, User, UserToken } from '../model/users.js';
import type { AuditRecord } from '../model/audit.js';
import { type Db, json, arg, QueryCache, run } from './queries.js';
import { firstOpen, machineFromRow, machineToRow, jobFromRow, jobToRow, workOrderToRow, rolloutToRow, itemToRow, holdFromRow } from './rows.js';
import { SqlReads } from './sql-reads.js';
/** A change row as `SqlTx.change` writes it (its number drawn when it is inserted). */
export type ChangeRow = { author: string; at: string; object: string; action: Change['action']; before: string | null; after: string | null };

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
export async function insertPgChange(db: Db, row: ChangeRow): Promise<number> {
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

export class SqlTx extends SqlReads implements Tx {
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
   * and completion reads both right after the lock; reading them with it saves a round trip per lock.
   * Nothing else can change them meanwhile: holds and work orders are written only by store-scoped
   * transactions (which never run beside another transaction) or under this machine's lock.
   */
  private readonly withLock = new Map<string, { hold: MachineHold | undefined; open: WorkOrdersTable[] }>();
  /**
   * PostgreSQL: a locked machine's current job, read with the lock (`lockMachine`), and answered from
   * here by `getJob` until this transaction writes that job. A completion reads its job right after the
   * lock, and so does a claim whose machine has one: one round trip less per lock. The job cannot change
   * meanwhile for the same reason: jobs are written under their machine's lock, or by store-scoped
   * transactions.
   */
  private readonly lockedJobs = new Map<string, Job>();

  /**
   * SQLite: a plain read (no row locks; its one writer is the lock). PostgreSQL: the machine's row lock
   * and, read after it, its hold, open work orders and current job, in one round trip (lockMachinesPg) —
   * or, when this transaction's group locked the machine for it beforehand (PgRowTx `prelocked`), none.
   */
  async lockMachine(id: string) {
    if (this.dialect !== 'postgres') {
      const r = await this.one<Selectable<MachinesTable>>('lockMachine', () => this.db.selectFrom('machines').selectAll().where('id', '=', arg(0)), [id]);
      return r ? machineFromRow(r) : undefined;
    }
    // The group's entry (null: the machine does not exist), else a round trip of its own.
    const pre = this.takePrelocked(id);
    const locked = pre !== undefined ? pre : ((await lockMachinesPg(this.db, this.q, [id])).get(id) ?? null);
    if (!locked) return undefined;
    this.withLock.set(id, { hold: locked.hold ? holdFromRow(locked.hold) : undefined, open: locked.open ?? [] });
    if (locked.job) this.lockedJobs.set(locked.job.id, jobFromRow(locked.job));
    return machineFromRow(locked.machine);
  }
  /** What the group locked and read for this transaction's machine `id` beforehand (PgRowTx), or undefined. */
  protected takePrelocked(_id: string): LockedMachine | null | undefined {
    return undefined;
  }
  // These three answer from memory when they can, without sending held writes (PgRowTx); a read of
  // the database sends them first.
  override async getHold(machineId: string) {
    const known = this.withLock.get(machineId);
    if (known) return known.hold;
    await this.flushWrites();
    return super.getHold(machineId);
  }
  override async nextWorkOrder(machineId: string) {
    const known = this.withLock.get(machineId);
    if (known) return firstOpen(known.open);
    await this.flushWrites();
    return super.nextWorkOrder(machineId);
  }
  override async getJob(id: string) {
    const known = this.lockedJobs.get(id);
    if (known) return { ...known };
    await this.flushWrites();
    return super.getJob(id);
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
  async setAgentLiveness(entries: ReadonlyArray<{ id: string; agent: AgentLiveness }>) {
    if (entries.length === 0) return;
    const row = (e: { id: string; agent: AgentLiveness }) => [e.id, e.agent.connected ? 1 : 0, e.agent.lastSeenAt, e.agent.version, e.agent.address, e.agent.via, e.agent.since];
    if (this.dialect === 'postgres') {
      // One statement for the batch: each column's values as an array, joined to the machines by id.
      const cols = entries.map(row);
      const p = this.q.prepareSql('setAgentLivenessBatch', () => ({ sql: SET_AGENT_LIVENESS_PG, params: 7 }));
      await run(this.db, p, Array.from({ length: 7 }, (_, k) => cols.map((c) => c[k])));
      return;
    }
    // SQLite runs statements in-process: one per machine costs no round trip.
    for (const e of entries) {
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
        row(e),
      );
    }
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
  async appendLogs(chunks: LogChunk[], opts?: { counted?: boolean }) {
    if (chunks.length === 0) return 0;
    if (chunks.length === 1) {
      const c = chunks[0]!;
      const build = () =>
        this.db
          .insertInto('job_logs')
          .values({ job_id: arg(0), seq: arg(1) as never, stream: arg(2), data: arg(3), at: arg(4) })
          .onConflict((oc) => oc.columns(['job_id', 'seq']).doNothing());
      const args = [c.jobId, c.seq, c.stream, this.logText(c.data), c.at];
      if (opts?.counted !== false) return this.exec('appendLog', build, args);
      // Nobody reads the answer: a write like the job path's (held back in a PgRowTx, sent at once elsewhere).
      await this.write('appendLog', build, args, `job_logs:${c.jobId}:${c.seq}`);
      return 0;
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

/**
 * PostgreSQL: SqlTx.setAgentLiveness for a whole batch, `$1…$7` arrays of the machines' ids, connected
 * (1/0), last seen, version, address, transport and since, one element per machine; a null version or
 * address keeps the one stored.
 */
const SET_AGENT_LIVENESS_PG =
  'update "machines" as m set "agent_connected" = v.connected, "agent_seen_at" = v.seen, ' +
  '"agent_version" = coalesce(v.version, m."agent_version"), "agent_address" = coalesce(v.address, m."agent_address"), ' +
  '"agent_via" = v.via, "agent_since" = v.since ' +
  'from unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) as v(id, connected, seen, version, address, via, since) ' +
  'where m."id" = v.id';

/** A locked machine as `takt_lock_machines` answers it (rows as JSON, bigints as numbers). */
export interface LockedMachine {
  machine: Selectable<MachinesTable>;
  hold: Selectable<MachineHoldsTable> | null;
  open: WorkOrdersTable[] | null;
  job: JobsTable | null;
}

/**
 * PostgreSQL: locks the rows of machines `ids` until the transaction ends and reads, after the locks, each
 * one's row, hold, open work orders and current job — one round trip to the function
 * `takt_lock_machines` (migration 0033_pg_lock_machines), whatever the number of machines. Not one
 * plain statement: in READ COMMITTED a `SELECT … FOR UPDATE` that waits for a lock re-reads the locked
 * row once it is free, but its other reads keep the snapshot taken before it waited — they would show
 * the work orders and job as they were before the holder (a completion) changed them
 * (test/store-replicas.test.ts "a lock that waited"). The function's second statement takes a snapshot
 * of its own, after the locks. Rows are locked in id order (no deadlock between two callers).
 * @returns by id, the machines that exist.
 */
export async function lockMachinesPg(db: Db, q: QueryCache, ids: readonly string[]): Promise<Map<string, LockedMachine>> {
  const p = q.prepareSql('lockMachine', () => ({ sql: 'select takt_lock_machines($1::text[]) as "locked"', params: 1 }));
  const r = await run<{ locked: LockedMachine[] }>(db, p, [ids]);
  return new Map((r.rows[0]?.locked ?? []).map((l) => [l.machine.id, l]));
}

/** A write held back by a PgRowTx: its statement's key and text, its parameter values, the row it writes. */
export interface HeldWrite {
  key: string;
  sql: string;
  values: unknown[];
  row: string;
}

/** Writes one batch holds at most (bounds the statement's size and the number of distinct batches). */
export const MAX_HELD_WRITES = 6;

/**
 * The statement that runs `writes` in order (each compiled for PostgreSQL, parameters `$1…$n`): each
 * one a data-modifying WITH clause, its parameters renumbered after the ones before.
 */
export function heldWritesSql(writes: readonly HeldWrite[]): { sql: string; params: number } {
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
export class PgRowTx extends SqlTx {
  /**
   * `prelocked`: machines the group locked and read before running its transactions (sql-store.ts
   * commitGroup, TransactOptions `lock`), by id, null for one that does not exist; shared by the group's
   * transactions. The first `lockMachine` of an id takes its entry (no round trip); a later one locks
   * and reads again, seeing what the transactions before it wrote.
   */
  constructor(
    db: Db,
    q: QueryCache,
    private readonly prelocked?: Map<string, LockedMachine | null>,
  ) {
    super(db, q, 'postgres', true);
    this.holdWrites = true;
  }
  protected override takePrelocked(id: string): LockedMachine | null | undefined {
    const p = this.prelocked?.get(id);
    if (p !== undefined) this.prelocked!.delete(id);
    return p;
  }
}
/** The methods that hold back (or send) writes themselves, or send them only when they read the database; every other async method sends them first. */
export const HOLDING = new Set(['constructor', 'write', 'flushWrites', 'insertJob', 'finishJob', 'updateMachine', 'getHold', 'nextWorkOrder', 'getJob']);
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
