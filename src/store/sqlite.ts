/** Opens the embedded SQLite store: one file, WAL journal, migrated on open. */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import SQLite from 'better-sqlite3';
import { Kysely, SqliteDialect, type SqliteDatabase, type SqliteStatement } from 'kysely';
import { SqlStore } from './sql-store.js';
import type { Database } from './tables.js';

/** Prepared statements kept per SQL text; the hot path runs a few dozen distinct statements. */
const STATEMENT_CACHE = 1000;

/**
 * Kysely's SQLite driver prepares every statement again on every execution (a parse and plan each time,
 * a fifth of the endpoint's CPU under load). better-sqlite3 statements are reusable, and SQLite
 * re-prepares one by itself if the schema changes under it, so they are cached by their SQL text.
 */
export function cachingDatabase(db: SQLite.Database, max = STATEMENT_CACHE): SqliteDatabase {
  const cache = new Map<string, SqliteStatement>();
  return {
    close: () => {
      cache.clear();
      db.close();
    },
    prepare: (sql: string) => {
      let stmt = cache.get(sql);
      if (!stmt) {
        stmt = db.prepare(sql) as unknown as SqliteStatement;
        if (cache.size >= max) cache.delete(cache.keys().next().value as string);
        cache.set(sql, stmt);
      }
      return stmt;
    },
  };
}

export async function openSqliteStore(file: string): Promise<SqlStore> {
  if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true });
  const sqlite = new SQLite(file);
  sqlite.pragma('journal_mode = WAL');
  // NORMAL is durable across process crashes in WAL mode (only an OS crash can lose the last commits).
  sqlite.pragma('synchronous = NORMAL');
  sqlite.pragma('busy_timeout = 5000');
  sqlite.pragma('foreign_keys = ON');
  // Grouped commits put each transaction in a savepoint, whose undo journal would otherwise be a file.
  sqlite.pragma('temp_store = MEMORY');
  const store = new SqlStore(new Kysely<Database>({ dialect: new SqliteDialect({ database: cachingDatabase(sqlite) }) }), 'sqlite', { where: file });
  await store.migrate();
  return store;
}
