/**
 * The store's one commit path on a real SQLite file: transactions that arrive together commit as a
 * group, each in its own savepoint — one that fails leaves no trace and takes nobody else down, and no
 * caller or listener hears of anything before COMMIT.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { TaktEvent } from '../src/model/machine.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import type { SqlStore } from '../src/store/sql-store.js';

let dir: string;
let store: SqlStore;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'takt-store-'));
  store = await openSqliteStore(join(dir, 'takt.db'));
});
afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

it('transactions that arrive together commit together; a failing one is rolled back alone', async () => {
  const heard: TaktEvent[][] = [];
  store.onEvents((events) => heard.push(events));
  const write = (n: number, fail = false) =>
    store.transact(async (tx) => {
      const seq = await tx.change('test', `things/${n}`, 'create', null, { n });
      tx.emit(`things.create.${n}`, { n });
      if (fail) throw new Error(`thing ${n} refused`);
      // Nothing is published while the group is still open.
      expect(heard).toEqual([]);
      return seq;
    });

  const results = await Promise.allSettled([write(1), write(2, true), write(3), write(4)]);
  expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
  expect((results[1] as PromiseRejectedResult).reason).toMatchObject({ message: 'thing 2 refused' });

  const changes = await store.listChanges({ limit: 100 });
  expect(changes.map((c) => c.object).sort()).toEqual(['things/1', 'things/3', 'things/4']);
  // Each committed transaction's events reach listeners once, in commit order; the refused one's never.
  expect(heard.map((batch) => batch.map((e) => e.topic))).toEqual([['things.create.1'], ['things.create.3'], ['things.create.4']]);
  const ids = heard.flat().map((e) => e.id);
  expect([...ids].sort((a, b) => a - b)).toEqual(ids);
});

it('a lone transaction commits at once, and a later one still runs after a failure', async () => {
  await expect(store.transact(async () => Promise.reject(new Error('nope')))).rejects.toThrow('nope');
  const seq = await store.transact((tx) => tx.change('test', 'things/9', 'create', null, { n: 9 }));
  expect(seq).toBeGreaterThan(0);
  expect((await store.listChanges({ limit: 10 })).map((c) => c.object)).toEqual(['things/9']);
});

it('a listener that throws does not keep the others, or the callers, from hearing', async () => {
  const heard: string[] = [];
  store.onEvents(() => {
    throw new Error('bad listener');
  });
  store.onEvents((events) => heard.push(...events.map((e) => e.topic)));
  const warned = new Promise<string>((resolve) => process.once('warning', (w) => resolve(w.message)));
  const both = await Promise.all([
    store.transact(async (tx) => tx.emit('a.b.1', {})),
    store.transact(async (tx) => tx.emit('a.b.2', {})),
  ]);
  expect(both).toHaveLength(2);
  expect(heard).toEqual(['a.b.1', 'a.b.2']);
  expect(await warned).toMatch(/an event listener failed: bad listener/);
});
