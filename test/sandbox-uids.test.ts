/**
 * The per-machine sandbox uids: allocation (pure), the range setting, and the host-wide claims that keep
 * two endpoints on one host from handing out the same uid.
 */
import { mkdirSync, mkdtempSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { allocateUid, parseUidRange, UidPool, type UidState } from '../src/brokers/uids.js';
import { TaktError } from '../src/model/errors.js';

const range = { first: 100, last: 104 };
const state = (next: number, machines: Record<string, number> = {}): UidState => ({ next, machines });
const all = () => true;

describe('allocateUid', () => {
  it.each([
    ['a machine keeps the uid it has', state(103, { m: 101 }), all, 101, 103],
    ['a new machine gets the cursor', state(102), all, 102, 103],
    ['uids other machines hold are skipped', state(100, { a: 100, b: 101 }), all, 102, 103],
    ['uids the claim refuses are skipped', state(100), (u: number) => u !== 100 && u !== 101, 102, 103],
    ['the cursor wraps at the end of the range', state(104, { a: 104 }), all, 100, 101],
    ['the last uid moves the cursor back to the first', state(104), all, 104, 100],
    ['a cursor outside the range starts at the first', state(7), all, 100, 101],
  ] as const)('%s', (_what, before, claim, uid, next) => {
    const frozen = JSON.stringify(before);
    const r = allocateUid(before, 'm', range, claim);
    expect(r.uid).toBe(uid);
    expect(r.state.next).toBe(before.machines.m === undefined ? next : before.next);
    expect(r.state.machines.m).toBe(uid);
    expect(JSON.stringify(before)).toBe(frozen); // the old state is not changed
  });

  it('a full range is a conflict that says how to get out of it', () => {
    const full = state(100, { a: 100, b: 101, c: 102 });
    expect(() => allocateUid(full, 'm', range, (u) => u < 103)).toThrow(TaktError);
    expect(() => allocateUid(full, 'm', range, (u) => u < 103)).toThrow('no free sandbox uid left in 100-104; delete machines or widen TAKT_SANDBOX_UIDS');
  });

  it('tries each uid at most once', () => {
    const tried: number[] = [];
    expect(() => allocateUid(state(102), 'm', range, (u) => (tried.push(u), false))).toThrow();
    expect(tried).toEqual([102, 103, 104, 100, 101]);
  });
});

describe('parseUidRange', () => {
  it.each([
    ['200000-265535', { first: 200000, last: 265535 }],
    [' 5000 - 5000 ', { first: 5000, last: 5000 }],
  ])('%s', (text, want) => expect(parseUidRange(text)).toEqual(want));

  it.each(['', '5000', '5000-', 'a-b', '999-2000', '3000-2000', '1000-2147483647', '-5-10'])('refuses %j', (text) => {
    expect(() => parseUidRange(text)).toThrow(/TAKT_SANDBOX_UIDS .* is not FIRST-LAST/);
  });
});

describe('UidPool', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'takt-uids-'));
  const registry = join(tmp, 'registry');
  // A range no real process uses, so the live-process check does not interfere.
  const poolRange = { first: 1_999_000_000, last: 1_999_000_009 };
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  const endpoint = (name: string) => {
    const data = join(tmp, name);
    mkdirSync(join(data, 'machines'), { recursive: true });
    const pool = UidPool.forDataDir(data, { range: poolRange, registry });
    const dir = (id: string) => {
      const d = join(data, 'machines', id);
      mkdirSync(d, { recursive: true });
      return d;
    };
    return { data, pool, dir };
  };

  it('two endpoints on one host never share a uid; each claim points at its machine', () => {
    const a = endpoint('a');
    const b = endpoint('b');
    const ua = [a.pool.uidFor('m1', a.dir('m1')), a.pool.uidFor('m2', a.dir('m2'))];
    const ub = [b.pool.uidFor('m1', b.dir('m1')), b.pool.uidFor('m2', b.dir('m2'))];
    expect(new Set([...ua, ...ub]).size).toBe(4);
    expect(readlinkSync(join(registry, String(ub[0])))).toBe(join(b.data, 'machines', 'm1'));
    // Asking again is the same uid.
    expect(a.pool.uidFor('m1', a.dir('m1'))).toBe(ua[0]);
  });

  it('a released uid is not handed out again while others are free; a stale claim is taken over', () => {
    const c = endpoint('c');
    const first = c.pool.uidFor('x', c.dir('x'));
    expect(c.pool.release('x', join(c.data, 'machines', 'x'))).toBe(first);
    expect(() => readlinkSync(join(registry, String(first)))).toThrow();
    const next = c.pool.uidFor('y', c.dir('y'));
    expect(next).not.toBe(first);
    // An endpoint whose data dir was removed without deleting its machines leaves stale claims.
    const d = endpoint('d');
    const taken = d.pool.uidFor('z', d.dir('z'));
    rmSync(d.data, { recursive: true, force: true });
    const e = endpoint('e');
    // 10 uids, 5 held by live machines (a, b, c): the other 5 include the stale one.
    const got: number[] = [];
    for (let i = 0; i < 5; i++) got.push(e.pool.uidFor(`n${i}`, e.dir(`n${i}`)));
    expect(got).toContain(taken);
  });
});
