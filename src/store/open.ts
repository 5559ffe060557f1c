/**
 * Which store an endpoint runs on: the embedded SQLite file in its data dir (the default), or a PostgreSQL
 * database named by URL (`takt serve --store postgres://…`, or TAKT_STORE). The engine, API and CLI get a
 * Store either way and never learn which.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { TaktError } from '../model/errors.js';
import { openPostgresStore } from './postgres.js';
import { isPostgresUrl, redactUrl } from './store-url.js';
import type { SqlStore } from './sql-store.js';
import { openSqliteStore } from './sqlite.js';

/** An open store and how to name it in logs (a file path, or the URL without its password). */
export interface OpenedStore {
  store: SqlStore;
  /** `sqlite` or `postgres`. */
  kind: SqlStore['dialect'];
  /** What logs show: the SQLite file, or the PostgreSQL URL with its password replaced by `****`. */
  where: string;
  /** PostgreSQL with the endpoint lock held: how many sessions hold it, this one included (live replicas for `shared`). */
  holders?: number;
}

/** The store a spec names: SQLite at `file` (null: `takt.db` in the data dir), or PostgreSQL at `url`. */
export type StoreSpec = { kind: 'sqlite'; file: string | null } | { kind: 'postgres'; url: string };

/**
 * Which store `spec` names, checked without opening, creating or writing anything, so a caller can refuse
 * a bad one before it touches its data dir (`takt serve`). Accepts what {@link openStore} does.
 * @throws TaktError bad_request for a spec that is neither form, a PostgreSQL URL that does not parse, or
 *   an SQLite file that is a directory. (A missing directory on the way to the file is no error: opening
 *   makes it, as it always has.)
 */
export function parseStoreSpec(spec: string | undefined): StoreSpec {
  const s = spec?.trim() ?? '';
  if (s === '' || s === 'sqlite:') return { kind: 'sqlite', file: null };
  if (s.startsWith('sqlite:')) {
    const file = s.slice('sqlite:'.length);
    if (statSync(file, { throwIfNoEntry: false })?.isDirectory()) throw new TaktError('bad_request', `--store sqlite:${file} is a directory; name the database file in it (e.g. sqlite:${join(file, 'takt.db')})`);
    return { kind: 'sqlite', file };
  }
  if (isPostgresUrl(s)) {
    try {
      new URL(s);
    } catch {
      throw new TaktError('bad_request', `--store '${redactUrl(s)}' is not a URL: use postgres://USER@HOST:PORT/DATABASE`);
    }
    return { kind: 'postgres', url: s };
  }
  throw new TaktError('bad_request', `--store '${redactUrl(s)}' is not a store: use postgres://USER@HOST:PORT/DATABASE, or sqlite:FILE (default: takt.db in the data dir)`);
}

/**
 * Opens and migrates the store `spec` names.
 * @param spec undefined or empty: SQLite at `DATA/takt.db`; `sqlite:FILE` (or `sqlite:` for the default
 *   file); `postgres://…` / `postgresql://…`: that PostgreSQL database.
 * @param dataDir the endpoint's data dir (the default SQLite file lives there).
 * @param opts.endpointLock PostgreSQL: hold the endpoint lock, `shared` (`takt serve`: any number of replicas)
 *   or `exclusive` (`takt store migrate`: no serve on the database); `exclusive: true` is the latter.
 * @param opts.replicaId PostgreSQL, shared: this replica's endpoint id, which no other live replica may have.
 * @throws TaktError `bad_request` for a spec that is neither ({@link parseStoreSpec}); whatever opening
 *   that store throws (postgres.ts `openPostgresStore`: unreachable, endpoint lock not to be had, schema too new).
 */
export async function openStore(spec: string | undefined, dataDir: string, opts: { exclusive?: boolean; endpointLock?: 'shared' | 'exclusive'; replicaId?: string } = {}): Promise<OpenedStore> {
  const p = parseStoreSpec(spec);
  if (p.kind === 'sqlite') {
    const file = p.file ?? join(dataDir, 'takt.db');
    return { store: await openSqliteStore(file), kind: 'sqlite', where: file };
  }
  let holders: number | undefined;
  const endpointLock = opts.endpointLock ?? (opts.exclusive ? 'exclusive' : undefined);
  const store = await openPostgresStore(p.url, { ...(endpointLock ? { endpointLock } : {}), ...(opts.replicaId !== undefined ? { replicaId: opts.replicaId } : {}), onLocked: (n) => (holders = n) });
  return { store, kind: 'postgres', where: redactUrl(p.url), ...(holders !== undefined ? { holders } : {}) };
}
