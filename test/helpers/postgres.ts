/**
 * PostgreSQL for tests: each test gets a database of its own (`takt_t_<random>`), created on the server
 * TAKT_TEST_PG names (default postgres://postgres@127.0.0.1:5432/test, trust auth) and dropped after.
 * When the server cannot be reached, PostgreSQL tests are skipped with the reason, except under CI
 * (CI=true), where .ci/run starts PostgreSQL: there an unreachable server fails the run.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { TaktEvent } from '../../src/model/machine.js';
import { openPostgresStore } from '../../src/store/postgres.js';
import type { SqlStore } from '../../src/store/sql-store.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';

/** The maintenance database tests create their databases from. */
export const PG_ADMIN_URL = process.env.TAKT_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/test';

/** Why PostgreSQL tests cannot run here, or null when they can. Throws under CI=true instead of skipping. */
export async function pgUnavailable(): Promise<string | null> {
  const c = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 5000 });
  try {
    await c.connect();
    await c.query('select 1');
    return null;
  } catch (err) {
    const why = `PostgreSQL unreachable at ${PG_ADMIN_URL} (${(err as Error).message}); set TAKT_TEST_PG to a server where the user may create databases`;
    if (process.env.CI === 'true') throw new Error(`CI=true: the PostgreSQL tests must run, but ${why}`);
    return why;
  } finally {
    await c.end().catch(() => undefined);
  }
}

/** Runs `fn` on a connection of its own to the database at `url`, ended afterwards whatever `fn` does. */
export async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

const admin = <T>(fn: (c: pg.Client) => Promise<T>): Promise<T> => withClient(PG_ADMIN_URL, fn);

/** A fresh, empty database: its URL, and `drop()` (which also ends any connection still open to it). */
export async function freshDatabase(): Promise<{ name: string; url: string; drop: () => Promise<void> }> {
  const name = `takt_t_${randomBytes(6).toString('hex')}`;
  await admin((c) => c.query(`create database ${name}`));
  const url = new URL(PG_ADMIN_URL);
  url.pathname = `/${name}`;
  return {
    name,
    url: url.toString(),
    drop: () => admin(async (c) => void (await c.query(`drop database if exists ${name} with (force)`))),
  };
}

/** Every event in a store's table, in id order (read in pages of 1,000, at most a million). */
export async function allEvents(store: Pick<Store, 'listEvents'>): Promise<TaktEvent[]> {
  const out: TaktEvent[] = [];
  for (let page = 0; page < 1000; page++) {
    const got = await store.listEvents(out.at(-1)?.id ?? 0, 1000);
    out.push(...got);
    if (got.length < 1000) break;
  }
  return out;
}

/** A store backend a test runs on: SQLite always; PostgreSQL when it is reachable (else `skip` says why). */
export interface StoreBackend {
  name: 'sqlite' | 'postgres';
  skip: string | null;
  /** A fresh, empty store location: `open` opens (and migrates) a store on it; `drop` removes it. */
  make(): Promise<{ open(): Promise<SqlStore>; drop(): Promise<unknown> }>;
}

/** SQLite (a temporary directory named `dirPrefix…`) and PostgreSQL (a fresh database per `make`). */
export async function storeBackends(dirPrefix: string): Promise<StoreBackend[]> {
  const pgWhy = await pgUnavailable();
  return [
    {
      name: 'sqlite',
      skip: null,
      async make() {
        const dir = mkdtempSync(join(tmpdir(), dirPrefix));
        return { open: () => openSqliteStore(join(dir, 'takt.db')), drop: async () => rmSync(dir, { recursive: true, force: true }) };
      },
    },
    {
      name: 'postgres',
      skip: pgWhy,
      async make() {
        const db = await freshDatabase();
        return { open: () => openPostgresStore(db.url), drop: () => db.drop() };
      },
    },
  ];
}
