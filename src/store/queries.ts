/**
 * The store's compiled queries (QueryCache: built once, run as named prepared statements on PostgreSQL,
 * round trips counted) and the small helpers every part of the store shares (JSON columns, paging).
 */
import { CompiledQuery, Kysely, type Compilable, type Transaction } from 'kysely';
import type { Database } from './tables.js';
export type Db = Kysely<Database> | Transaction<Database>;

export const json = (v: unknown): string => JSON.stringify(v ?? null);
export const parse = <T>(s: string | null): T => (s === null ? (null as T) : (JSON.parse(s) as T));
export const MAX_PAGE = 1000;
/** Events inserted by one statement (a transaction emits a handful; a bulk operation may emit thousands). */
export const EVENT_BATCH = 100;
export const limitOf = (l?: number) => Math.min(Math.max(1, l ?? 100), MAX_PAGE);

/**
 * Hot-path queries, compiled once. Building and compiling a Kysely query costs more than SQLite takes to
 * run a point read, so the queries every claim, log and completion runs are built once per store with
 * placeholders (`arg(i)`) and then executed with their arguments. They stay ordinary Kysely queries,
 * compiled by the store's own dialect, so the PostgreSQL store gets them unchanged.
 */
export const ARG = '\u0000takt-arg:';
export const arg = (i: number): string => `${ARG}${i}`;

export interface Prepared {
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
export function roundTripLabel(sql: string): string {
  const t = sql.trimStart().toLowerCase();
  if (t.startsWith('begin')) return t.includes('_shared(') ? 'begin+lock shared' : 'begin+lock';
  if (t.includes('pg_notify')) return t.endsWith('commit') ? 'notify+commit' : 'notify';
  if (t === 'commit' || t === 'rollback') return t;
  if (t.startsWith('select pg_advisory_xact_lock')) return 'draw lock';
  return t.replace(/["`]/g, '').split(/\s+/).slice(0, 3).join(' ');
}

export async function run<R>(db: Db, p: Prepared, args: unknown[]): Promise<{ rows: R[]; numAffectedRows?: bigint }> {
  const parameters = p.params.map((x) => ('arg' in x ? args[x.arg] : x.value));
  return db.executeQuery<R>(CompiledQuery.raw(p.sql, parameters));
}

/** The escaped `%text%` pattern for a substring match (LIKE … ESCAPE '\\'). */
export const contains = (text: string) => `%${text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
