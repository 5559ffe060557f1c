/**
 * Copies a whole store into another, empty one (`takt store migrate`): SQLite to PostgreSQL, back, or
 * between two of either. Rows are copied at the SQL level, table by table and column by column, so every
 * id, change number, event id, timestamp and JSON text arrives exactly as it was (see docs/decisions.md,
 * "Moving a store": why not the export/import of engine/portable.ts).
 *
 * Both stores are opened by the caller through the ordinary open functions (store/open.ts), which brings
 * each to this build's schema first; the copy then checks both are at the same migration. The target is
 * written in one transaction: all of it or nothing. Big tables are read in pages by primary key (bounded
 * memory), inside one read transaction of the source (one consistent snapshot).
 */
import { sql, type Kysely, type RawBuilder, type Transaction } from 'kysely';
import { TaktError } from '../model/errors.js';
import type { SqlStore } from './sql-store.js';
import type { Database } from './tables.js';

/** A table of the store as the copy knows it: its name and primary key (the key pages are read by). */
interface TableSpec {
  name: keyof Database;
  key: string[];
}

/**
 * Every table of the store, in the order they are copied: what a row names (machines, work orders, jobs,
 * rollouts) before what names it (jobs, logs, rollout items, holds), though the schema declares no
 * foreign keys today. A table the schema has and this list lacks makes the copy refuse (test/store-
 * migrate.test.ts checks the list against the schema), so a new migration's table cannot be left behind.
 */
export const COPY_TABLES: readonly TableSpec[] = [
  { name: 'settings', key: ['key'] },
  { name: 'packs', key: ['name'] },
  { name: 'pack_versions', key: ['name', 'version'] },
  { name: 'content', key: ['kind', 'name'] },
  { name: 'credentials', key: ['name'] },
  { name: 'images', key: ['name', 'version'] },
  { name: 'join_tokens', key: ['id'] },
  { name: 'users', key: ['name'] },
  { name: 'user_groups', key: ['name'] },
  { name: 'role_bindings', key: ['id'] },
  { name: 'user_tokens', key: ['id'] },
  { name: 'machines', key: ['id'] },
  { name: 'work_orders', key: ['id'] },
  { name: 'jobs', key: ['id'] },
  { name: 'job_logs', key: ['job_id', 'seq'] },
  { name: 'rollouts', key: ['id'] },
  { name: 'rollout_items', key: ['rollout_id', 'machine_id'] },
  { name: 'machine_holds', key: ['machine_id'] },
  { name: 'dhcp_leases', key: ['mac'] },
  { name: 'changes', key: ['seq'] },
  { name: 'events', key: ['id'] },
  { name: 'audit', key: ['id'] },
];

/** Rows read per page (and so held in memory at once). */
const PAGE_ROWS = 500;
/** Bound parameters per INSERT at most (SQLite allows 32766, PostgreSQL 65535). */
const MAX_PARAMS = 10_000;

/** One table's part of a copy. */
export interface TableCount {
  table: string;
  /** Rows in the source (and, after a copy, in the target). */
  rows: number;
  /** PostgreSQL target only: text values whose NUL characters became U+FFFD (PostgreSQL text cannot hold NUL). */
  nulReplaced?: number;
}

/** What `copyStore` did (or, with `dryRun`, would do). */
export interface CopySummary {
  from: { kind: SqlStore['dialect']; where: string };
  to: { kind: SqlStore['dialect']; where: string };
  /** The last migration both stores are at (this build's schema). */
  schema: string;
  tables: TableCount[];
  /** Rows copied (with `dryRun`: that would be copied), all tables together. */
  rows: number;
  dryRun: boolean;
}

/**
 * Progress of a copy: called after each page with the rows of `table` copied so far out of `total`
 * (`done` false), and once when the table is complete (`done` true; also for an empty table).
 */
export type CopyProgress = (p: { table: string; copied: number; total: number; done: boolean }) => void;

export interface CopyOptions {
  /** Count the source's rows and check the target, but write nothing. */
  dryRun?: boolean;
  onProgress?: CopyProgress;
  /** Rows per page (default 500); tests make it small to cross page boundaries. */
  pageRows?: number;
}

type Row = Record<string, unknown>;
type Db = Kysely<Database> | Transaction<Database>;

/** The migrations a store has run, by name (sorted). */
async function appliedMigrations(db: Db): Promise<string[]> {
  const r = await sql<{ name: string }>`select name from kysely_migration order by name`.execute(db);
  return r.rows.map((x) => x.name);
}

/** The store's tables (without Kysely's own) and their columns, as the database says. */
async function schemaOf(db: Kysely<Database>): Promise<Map<string, Array<{ name: string; serial: boolean }>>> {
  const tables = await db.introspection.getTables();
  return new Map(tables.map((t) => [t.name, t.columns.map((c) => ({ name: c.name, serial: c.isAutoIncrementing }))]));
}

async function countOf(db: Db, table: string): Promise<number> {
  const r = await sql<{ n: number | string }>`select count(*) as n from ${sql.table(table)}`.execute(db);
  return Number(r.rows[0]?.n ?? 0);
}

/** One page of `table` in primary-key order, after the key `after` (a row value comparison, as both dialects have). */
async function page(db: Db, spec: TableSpec, after: unknown[] | null, limit: number): Promise<Row[]> {
  const key = sql.join(spec.key.map((k) => sql.ref(k)));
  const where: RawBuilder<unknown> = after ? sql`where (${key}) > (${sql.join(after)})` : sql``;
  const r = await sql<Row>`select * from ${sql.table(spec.name)} ${where} order by ${key} limit ${limit}`.execute(db);
  return r.rows;
}

/**
 * Checks that `target` can take `source`'s rows: both at the same migration, both with exactly the tables
 * this copy knows, and the target empty.
 * @returns the schema's last migration and each table's columns.
 * @throws TaktError `conflict` when the schemas differ or the target has rows (naming the first such table);
 *   `internal` when the schema has a table this copy does not know.
 */
async function check(source: SqlStore, target: SqlStore): Promise<{ schema: string; columns: Map<string, Array<{ name: string; serial: boolean }>>; targetColumns: Map<string, Array<{ name: string; serial: boolean }>> }> {
  const [from, to] = [await appliedMigrations(source.maintenanceDb), await appliedMigrations(target.maintenanceDb)];
  if (from.join() !== to.join()) {
    throw new TaktError('conflict', `${source.where} (schema ${from.at(-1) ?? 'none'}) and ${target.where} (schema ${to.at(-1) ?? 'none'}) are not at the same schema after opening; run the same takt on both`);
  }
  const columns = await schemaOf(source.maintenanceDb);
  const targetColumns = await schemaOf(target.maintenanceDb);
  const known = new Set<string>(COPY_TABLES.map((t) => t.name));
  for (const [where, cols] of [[source.where, columns], [target.where, targetColumns]] as const) {
    const unknown = [...cols.keys()].filter((t) => !known.has(t));
    if (unknown.length > 0) throw new TaktError('internal', `${where} has tables this takt does not know how to copy (${unknown.join(', ')}); nothing was copied`);
  }
  for (const t of COPY_TABLES) {
    const a = (columns.get(t.name) ?? []).map((c) => c.name).sort().join();
    const b = (targetColumns.get(t.name) ?? []).map((c) => c.name).sort().join();
    if (a !== b) throw new TaktError('conflict', `table ${t.name} has different columns in ${source.where} and ${target.where}; nothing was copied`);
    const n = await countOf(target.maintenanceDb, t.name);
    if (n > 0) {
      throw new TaktError('conflict', `${target.where} is not empty: table ${t.name} has ${n} row${n === 1 ? '' : 's'}; copy into a fresh database (createdb NAME) or a new SQLite file, nothing was copied`);
    }
  }
  return { schema: from.at(-1) ?? 'none', columns, targetColumns };
}

/**
 * Copies every row of `source` into `target` (see the top of this file).
 * @param source, target open stores (store/open.ts `openStore`): migrated to this build's schema, and held
 *   by nobody else (the caller takes the data dir lock or PostgreSQL's endpoint lock).
 * @returns row counts per table, in copy order.
 * @throws TaktError `conflict` for a target that is not empty or not at the source's schema; whatever the
 *   databases throw (the target's transaction is then rolled back: nothing is written).
 */
export async function copyStore(source: SqlStore, target: SqlStore, opts: CopyOptions = {}): Promise<CopySummary> {
  const { schema, columns, targetColumns } = await check(source, target);
  const pageRows = Math.max(1, opts.pageRows ?? PAGE_ROWS);
  const summary: CopySummary = {
    from: { kind: source.dialect, where: source.where },
    to: { kind: target.dialect, where: target.where },
    schema,
    tables: [],
    rows: 0,
    dryRun: opts.dryRun === true,
  };
  const src = source.maintenanceDb;
  // One snapshot of the source: on PostgreSQL a repeatable-read transaction; SQLite's read transaction is one.
  const reading = source.dialect === 'postgres' ? src.transaction().setIsolationLevel('repeatable read') : src.transaction();
  await reading.execute(async (read) => {
    const totals = new Map<string, number>();
    for (const t of COPY_TABLES) totals.set(t.name, await countOf(read, t.name));
    if (opts.dryRun) {
      summary.tables = COPY_TABLES.map((t) => ({ table: t.name, rows: totals.get(t.name)! }));
      return;
    }
    await target.maintenanceDb.transaction().execute(async (write) => {
      for (const t of COPY_TABLES) {
        const total = totals.get(t.name)!;
        const cols = columns.get(t.name)!.map((c) => c.name);
        const perInsert = Math.max(1, Math.floor(MAX_PARAMS / cols.length));
        let copied = 0;
        let nulReplaced = 0;
        let after: unknown[] | null = null;
        for (;;) {
          const rows = await page(read, t, after, pageRows);
          if (rows.length === 0) break;
          for (let i = 0; i < rows.length; i += perInsert) {
            const values = rows.slice(i, i + perInsert).map((r) =>
              sql`(${sql.join(
                cols.map((c) => {
                  const v = r[c];
                  // PostgreSQL text cannot hold NUL: as the store does for log text, each becomes U+FFFD.
                  if (target.dialect === 'postgres' && typeof v === 'string' && v.includes('\u0000')) {
                    nulReplaced++;
                    return v.replaceAll('\u0000', '\uFFFD');
                  }
                  return typeof v === 'bigint' ? Number(v) : v;
                }),
              )})`,
            );
            await sql`insert into ${sql.table(t.name)} (${sql.join(cols.map((c) => sql.ref(c)))}) values ${sql.join(values)}`.execute(write);
          }
          copied += rows.length;
          const last = rows[rows.length - 1]!;
          after = t.key.map((k) => last[k]);
          opts.onProgress?.({ table: t.name, copied, total, done: false });
          if (rows.length < pageRows) break;
        }
        if (copied !== total) throw new TaktError('internal', `table ${t.name}: read ${copied} rows of the ${total} counted; nothing was copied`);
        summary.tables.push({ table: t.name, rows: copied, ...(nulReplaced > 0 ? { nulReplaced } : {}) });
        opts.onProgress?.({ table: t.name, copied, total, done: true });
      }
      // The target's own numbering must go on past what was copied, or its next change or event would
      // take an id it already has. SQLite's AUTOINCREMENT keeps the largest id inserted by itself.
      if (target.dialect === 'postgres') {
        for (const t of COPY_TABLES) {
          for (const c of targetColumns.get(t.name)!.filter((x) => x.serial)) {
            await sql`select setval(pg_get_serial_sequence(${t.name}, ${c.name}), coalesce((select max(${sql.ref(c.name)}) from ${sql.table(t.name)}), 0) + 1, false)`.execute(write);
          }
        }
      }
    });
  });
  summary.rows = summary.tables.reduce((n, t) => n + t.rows, 0);
  return summary;
}
