/**
 * Opens the store on PostgreSQL: the same SqlStore (same queries, same migrations, same single commit
 * path) on Kysely's PostgresDialect over a `pg` pool. Reads outside transactions run on any pooled
 * connection; transactions are grouped and serialised as on SQLite (sql-store.ts `commitGroup`), with an
 * advisory lock so that writers in other processes on the same database are serialised too. Each store
 * also follows the events table (pg-follow.ts), so its listeners hear what other processes commit.
 */
import pg from 'pg';
import { Kysely, PostgresDialect } from 'kysely';
import { TaktError } from '../model/errors.js';
import { PgFollower } from './pg-follow.js';
import { QueryCache } from './queries.js';
import { PG_ENDPOINT_LOCK, PG_LOCK_SPACE, PG_REPLICA_SPACE, SqlStore } from './sql-store.js';
import type { Database } from './tables.js';
import { isPostgresUrl, redactUrl } from './store-url.js';

/** PostgreSQL's type id of `bigint` (int8). */
const INT8_OID = 20;

/**
 * Type parsers for the store's connections: `bigint` columns (every integer column on PostgreSQL, see
 * migrations.ts) become JavaScript numbers, as SQLite's integers do. Values written by takt are JavaScript
 * numbers, so none exceeds 2^53.
 */
const types = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === INT8_OID ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

/**
 * Makes `client` run the store's hot-path queries (those `cache` compiled, sql-store.ts QueryCache) as named
 * prepared statements: the first call on a connection sends Parse with the statement's name, later calls
 * only Bind and Execute, so the server parses and plans each once per connection (PostgreSQL protocol,
 * "Extended Query"; `pg` keeps which names a connection has parsed). Other queries go as before (unnamed).
 * Kysely's PostgreSQL driver calls `client.query(text, values)`; that is the call wrapped here.
 */
function prepareByName(client: pg.PoolClient, cache: QueryCache): void {
  const query = client.query.bind(client) as (a: unknown, b?: unknown) => Promise<pg.QueryResult>;
  (client as { query: unknown }).query = (text: unknown, values?: unknown) => {
    // Every call is one round trip (several statements in one simple query still are one): counted for
    // the store's metric (Store.roundTrips).
    if (typeof text === 'string') cache.countRoundTrip(text);
    const name = typeof text === 'string' && Array.isArray(values) ? cache.nameOf(text) : undefined;
    return name ? query({ name, text, values }) : query(text, values);
  };
}

export interface PostgresStoreOptions {
  /**
   * Hold the endpoint lock (a session advisory lock, PG_ENDPOINT_LOCK) while the store is open:
   * - `shared`: what `takt serve` takes. Any number of replicas share the database; each holds the lock
   *   shared, so a copy (`exclusive`) cannot start under them.
   * - `exclusive`: what `takt store migrate` takes for both of its stores, refusing a database that any
   *   `takt serve` uses (a copy reads and writes whole tables; a replica writing meanwhile would be lost).
   * Absent: no lock (tests that put several stores on one database to race their writers).
   */
  endpointLock?: 'shared' | 'exclusive';
  /** The same as `endpointLock: 'exclusive'` (kept for callers written before replicas). */
  exclusive?: boolean;
  /**
   * Called once the endpoint lock is held, with how many sessions hold it now, this one included (the
   * number of `takt serve` replicas live on the database, for `shared`).
   */
  onLocked?: (holders: number) => void;
  /**
   * With `endpointLock: 'shared'`: this replica's endpoint id (8 hex digits, brokers/netns.ts endpointId),
   * held as a lock of its own while the store is open, so that a second replica with the same id — a data
   * dir copied whole, which would adopt and destroy the first one's machines — is refused.
   */
  replicaId?: string;
  /** Pooled connections at most (default 10). */
  maxConnections?: number;
  /**
   * Milliseconds between the event follower's periodic catch-ups (default 3000): the bound on how late an
   * event committed by another process arrives when its notification was lost (pg-follow.ts).
   */
  eventCatchUpMs?: number;
  /**
   * Row-scoped transaction groups (claims, agents' completions) committed at once, each on a pooled
   * connection of its own (default 2; SqlStoreOptions.rowGroups). Keep it below `maxConnections`.
   */
  rowGroups?: number;
}

/**
 * How many sessions hold the endpoint lock now, in either mode (pg_locks: an advisory lock taken with two
 * int keys shows them as classid and objid, with objsubid 2).
 */
async function endpointLockHolders(c: pg.Client): Promise<number> {
  const r = await c.query<{ n: number }>(
    "select count(*)::int as n from pg_locks where locktype = 'advisory' and classid = $1::int::oid and objid = $2::int::oid and objsubid = 2 and granted and database = (select oid from pg_database where datname = current_database())",
    [PG_LOCK_SPACE, PG_ENDPOINT_LOCK],
  );
  return Number(r.rows[0]?.n ?? 0);
}

/**
 * Opens (and migrates) the store in the PostgreSQL database at `url`.
 * @param url `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=…]` (libpq's URL form, as `pg` reads it).
 * @throws TaktError `bad_request` for a URL that is not a PostgreSQL URL; `unavailable` when the database
 *   cannot be reached or refuses the login; `conflict` when the endpoint lock cannot be had (`exclusive`: a
 *   `takt serve` or a copy holds it; `shared`: a copy holds it) or its schema is newer than this build knows. Messages carry the URL without its password.
 */
export async function openPostgresStore(url: string, opts: PostgresStoreOptions = {}): Promise<SqlStore> {
  if (!isPostgresUrl(url)) throw new TaktError('bad_request', `'${redactUrl(url)}' is not a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE)`);
  const where = redactUrl(url);
  const unreachable = (err: unknown) =>
    new TaktError('unavailable', `cannot use PostgreSQL at ${where}: ${(err as Error).message || String(err)}; check that it runs and the URL (--store or TAKT_STORE) names a database the user may use`);

  let lock: pg.Client | undefined;
  const mode = opts.endpointLock ?? (opts.exclusive ? 'exclusive' : undefined);
  if (mode) {
    // A session lock on a connection of its own, kept until the store closes (or the process dies).
    lock = new pg.Client({ connectionString: url, types });
    lock.on('error', (err) => process.emitWarning(`PostgreSQL endpoint lock connection: ${err.message}`));
    try {
      await lock.connect();
      const fn = mode === 'shared' ? 'pg_try_advisory_lock_shared' : 'pg_try_advisory_lock';
      const r = await lock.query<{ ok: boolean }>(`select ${fn}($1, $2) as ok`, [PG_LOCK_SPACE, PG_ENDPOINT_LOCK]);
      if (!r.rows[0]?.ok) {
        if (mode === 'shared') {
          throw new TaktError('conflict', `takt store migrate is copying into or out of ${where}; start takt serve once it has finished`);
        }
        const n = await endpointLockHolders(lock);
        throw new TaktError('conflict', `another takt serve uses ${where}${n > 0 ? ` (${n} replica${n === 1 ? '' : 's'} running)` : ''}, or another copy does; stop every takt serve on that database first`);
      }
      if (mode === 'shared' && opts.replicaId !== undefined) {
        const key = Number.parseInt(opts.replicaId, 16) | 0;
        const mine = await lock.query<{ ok: boolean }>('select pg_try_advisory_lock($1, $2) as ok', [PG_REPLICA_SPACE, key]);
        if (!mine.rows[0]?.ok) {
          throw new TaktError('conflict', `another takt serve replica on ${where} runs with endpoint id ${opts.replicaId} (the endpoint-id file of its data dir): each replica needs a data dir of its own — was this one copied whole? Start this replica on a new data dir holding only copies of secret.key, admin.token and tls/`);
        }
      }
      opts.onLocked?.(await endpointLockHolders(lock));
    } catch (err) {
      await lock.end().catch(() => undefined);
      throw err instanceof TaktError ? err : unreachable(err);
    }
  }

  const pool = new pg.Pool({ connectionString: url, types, max: opts.maxConnections ?? 10 });
  // An idle pooled connection that breaks (database restart) must not take the endpoint down.
  pool.on('error', (err) => process.emitWarning(`PostgreSQL pooled connection: ${err.message}`));
  const endLock = async () => {
    await lock?.end().catch(() => undefined);
  };
  // Before the first connection (the probe below, which the pool keeps): every pooled connection runs the
  // compiled queries by name and counts its round trips.
  const queryCache = new QueryCache();
  pool.on('connect', (client) => prepareByName(client, queryCache));
  try {
    const probe = await pool.connect();
    probe.release();
  } catch (err) {
    await pool.end().catch(() => undefined);
    await endLock();
    throw unreachable(err);
  }
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  const store = new SqlStore(db, 'postgres', { where, onClose: endLock, queryCache, ...(opts.rowGroups !== undefined ? { rowGroups: opts.rowGroups } : {}) });
  try {
    await store.migrate();
  } catch (err) {
    await store.close();
    throw err;
  }
  try {
    // Events committed by every process on the database reach this store's listeners (pg-follow.ts).
    await store.follow(
      (publish) =>
        new PgFollower({
          url,
          types,
          read: (afterId, limit) => store.listEvents(afterId, limit),
          newest: async () => Number((await db.selectFrom('events').select((eb) => eb.fn.max('id').as('m')).executeTakeFirst())?.m ?? 0),
          publish,
          ...(opts.eventCatchUpMs !== undefined ? { catchUpMs: opts.eventCatchUpMs } : {}),
          warn: (m) => process.emitWarning(`${m} (${where})`),
        }),
    );
  } catch (err) {
    await store.close();
    throw err instanceof TaktError ? err : unreachable(err);
  }
  return store;
}
