/**
 * Issue 12: migration 0012_observed moves the params a job wrote (outputs, history author `job:<id>`) out
 * of a machine's params into its observed outputs, and leaves the params an operator set.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import SQLite from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { Machine } from '../src/model/machine.js';
import { migrationProvider } from '../src/store/migrations.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import { machineRecord } from './helpers/records.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'takt-migrate-'));
});
afterEach(async () => rm(dir, { recursive: true, force: true }));

const machine = (params: Record<string, unknown>): Machine => machineRecord('legacy', { broker: null, params });

it('moves job-written params to outputs; operator-set params (also ones set after a job wrote them) stay', async () => {
  const file = join(dir, 'takt.db');
  const store = await openSqliteStore(file);
  const view = (params: Record<string, unknown>) => ({ name: 'legacy', params });
  // As the engine wrote it before 0012: created with msg; a job set count and build_id; the operator then set build_id.
  await store.transact(async (tx) => {
    await tx.insertMachine(machine({ msg: 'hi', count: 3, build_id: 'pinned' }), 'x');
    await tx.change('admin', 'machines/m-legacy', 'create', null, view({ msg: 'hi' }));
    await tx.change('job:j-1', 'machines/m-legacy', 'update', view({ msg: 'hi' }), view({ msg: 'hi', count: 3, build_id: 'b-1' }));
    await tx.change('admin', 'machines/m-legacy', 'update', view({ msg: 'hi', count: 3, build_id: 'b-1' }), view({ msg: 'hi', count: 3, build_id: 'pinned' }));
  });
  await store.close();

  // Run 0012 again on the legacy shape (its column dropped), as an upgrade would.
  const sqlite = new SQLite(file);
  sqlite.exec('alter table machines drop column outputs');
  const db = new Kysely<unknown>({ dialect: new SqliteDialect({ database: sqlite }) });
  await (await migrationProvider('sqlite').getMigrations())['0012_observed']!.up(db);
  await db.destroy();

  const after = await openSqliteStore(file);
  const m = await after.getMachine('m-legacy');
  await after.close();
  expect(m?.params).toEqual({ msg: 'hi', build_id: 'pinned' });
  expect(m?.outputs).toEqual({ count: 3 });
});
