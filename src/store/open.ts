/**
 * Which store an endpoint runs on: the embedded SQLite file in its data dir (the default), or a PostgreSQL
 * database named by URL (`takt serve --store postgres://…`, or TAKT_STORE). The engine, API and CLI get a
 * Store either way and never learn which.
 */
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

/**
 * Opens and migrates the store `spec` names.
 * @param spec undefined or empty: SQLite at `DATA/takt.db`; `sqlite:FILE` (or `sqlite:` for the default
 *   file); `postgres://…` / `postgresql://…`: that PostgreSQL database.
 * @param dataDir the endpoint's data dir (the default SQLite file lives there).
 * @param opts.endpointLock PostgreSQL: hold the endpoint lock, `shared` (`takt serve`: any number of replicas)
 *   or `exclusive` (`takt store migrate`: no serve on the database); `exclusive: true` is the latter.
 * @param opts.replicaId PostgreSQL, shared: this replica's endpoint id, which no other live replica may have.
 * @throws TaktError `bad_request` for a spec that is neither; whatever opening that store throws
 *   (postgres.ts `openPostgresStore`: unreachable, endpoint lock not to be had, schema too new).
 */
export async function openStore(spec: string | undefined, dataDir: string, opts: { exclusive?: boolean; endpointLock?: 'shared' | 'exclusive'; replicaId?: string } = {}): Promise<OpenedStore> {
  const s = spec?.trim() ?? '';
  if (s === '' || s.startsWith('sqlite:')) {
    const file = s.startsWith('sqlite:') && s.length > 'sqlite:'.length ? s.slice('sqlite:'.length) : join(dataDir, 'takt.db');
    return { store: await openSqliteStore(file), kind: 'sqlite', where: file };
  }
  if (isPostgresUrl(s)) {
    let holders: number | undefined;
    const endpointLock = opts.endpointLock ?? (opts.exclusive ? 'exclusive' : undefined);
    const store = await openPostgresStore(s, { ...(endpointLock ? { endpointLock } : {}), ...(opts.replicaId !== undefined ? { replicaId: opts.replicaId } : {}), onLocked: (n) => (holders = n) });
    return { store, kind: 'postgres', where: redactUrl(s), ...(holders !== undefined ? { holders } : {}) };
  }
  throw new TaktError('bad_request', `--store '${redactUrl(s)}' is not a store: use postgres://USER@HOST:PORT/DATABASE, or sqlite:FILE (default: takt.db in the data dir)`);
}
