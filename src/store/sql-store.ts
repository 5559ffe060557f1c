/**
 * Store on Kysely, the same for SQLite and PostgreSQL: the one commit path (transactions queued and
 * committed in groups; on PostgreSQL row-scoped groups beside each other, their change numbers and event
 * ids drawn at the end under a short lock, their events sent in NOTIFY payloads) and the publication of
 * committed events. The parts: queries.ts (compiled queries, round trips), rows.ts (rows ↔ records),
 * sql-reads.ts (reads), sql-tx.ts (a transaction's writes; PgRowTx), pg-follow.ts (other replicas' events).
 */
import { CompiledQuery, Kysely, Migrator } from 'kysely';
import { TaktError } from '../model/errors.js';
import type { TaktEvent } from '../model/machine.js';
import { migrationProvider, type Dialect } from './migrations.js';
import type { EventListener, Store, TransactOptions, Tx } from './store.js';
import type { Database } from './tables.js';
import { type Db, json, EVENT_BATCH, arg, QueryCache, run } from './queries.js';
import { SqlReads } from './sql-reads.js';
import { insertPgChange, lockMachinesPg, SqlTx, PgRowTx, type LockedMachine } from './sql-tx.js';

interface Queued {
  fn: (tx: Tx) => Promise<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  /** Times the transaction was rolled back for a lock conflict and queued again (row scope). */
  retries: number;
  /** The machine it locks first, when the caller said (TransactOptions `lock`). */
  lock?: string;
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
      const item: Queued = { fn: fn as (tx: Tx) => Promise<unknown>, resolve: resolve as (v: unknown) => void, reject, retries: 0, ...(opts?.lock !== undefined ? { lock: opts.lock } : {}) };
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
        // A row-scoped group locks the machines its transactions said they lock, all in one round trip
        // before running them (TransactOptions `lock`); each one's lockMachine then answers from it.
        const prelocked = deferred && pg ? await this.prelock(trx, group) : undefined;
        for (const item of group) {
          if (savepoints) await sql(pg && !released ? 'release grouped; savepoint grouped' : 'savepoint grouped');
          released = !savepoints;
          const tx = deferred && pg ? new PgRowTx(trx, this.q, prelocked) : new SqlTx(trx, this.q, this.dialect, deferred);
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
   * PostgreSQL, a row-scoped group: locks the machines its transactions name (`lock`) in one round trip
   * (lockMachinesPg: in id order, then read after the locks), by id; null for one that does not exist.
   * Undefined when none names one. Holding them from the group's start rather than from each
   * transaction's is safe: each transaction changes only rows of the machine it locks (TransactOptions
   * `rows`), so what was read for one is still so when it runs, whatever ran before it in the group.
   */
  private async prelock(trx: Db, group: Queued[]): Promise<Map<string, LockedMachine | null> | undefined> {
    const ids = [...new Set(group.flatMap((i) => (i.lock !== undefined ? [i.lock] : [])))];
    if (ids.length === 0) return undefined;
    const found = await lockMachinesPg(trx, this.q, ids);
    return new Map(ids.map((id) => [id, found.get(id) ?? null]));
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
