/**
 * Issue 3: history — every desired-state change is numbered, shown as a diff, revertible as a new change,
 * and the whole desired state can be rewound to any change.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles } from './helpers/endpoint.js';
import type { Change, Machine } from '../src/model/machine.js';

let ep: Endpoint;
const latest = async () => (await ep.api.get<{ items: Change[] }>('/changes', { limit: 1 })).items[0]!.seq;
const machine = (name: string) => ep.api.get<Machine>(`/machines/${name}`);

beforeAll(async () => {
  ep = await Endpoint.start();
  const files = await packFiles('basic');
  await ep.api.post('/packs', { files });
  await ep.api.post('/packs', { files: { ...files, 'pack.yaml': files['pack.yaml']!.replace('1.0.0', '1.1.0') } });
  await ep.api.post('/profiles', { name: 'web', params: { msg: 'from web' } });
  await ep.api.post('/profiles', { name: 'db', params: { msg: 'from db' } });
  await ep.api.post('/machines', { name: 'h1', params: { msg: 'one', code: 1, api_key: 'k-1' }, profiles: ['web'] });
});
afterAll(async () => ep?.stop());

describe('history', () => {
  it('lists numbered changes with who and what, and shows one as a field diff', async () => {
    await ep.api.patch('/machines/h1', { params: { msg: 'two' } });
    const seq = await latest();
    const r = await ep.cli(['history', 'show', String(seq)]);
    expect(r.code, r.stderr).toBe(0);
    // the machine by name, its id beside it
    expect(r.stdout).toMatch(new RegExp(`#${seq} update machines/h1 \\(machines/m-\\w+\\) by admin`));
    expect(r.stdout).toContain('/params/msg:\n    - "one"\n    + "two"');
    const list = await ep.cli(['history', '--limit', '3']);
    expect(list.stdout).toContain('machines/');
    // secure values are history's too, but only sealed
    expect(JSON.stringify(await ep.api.get('/changes', { limit: 1000 }))).not.toContain('k-1');
  });

  it('revert undoes one change as a new change', async () => {
    await ep.api.patch('/machines/h1', { params: { code: 7 } });
    const seq = await latest();
    await ep.api.patch('/machines/h1', { profiles: ['db'] });
    const r = await ep.cli(['history', 'revert', String(seq)]);
    expect(r.code, r.stderr).toBe(0);
    const m = await machine('h1');
    expect(m.params.code).toBe(1);
    expect(m.profiles).toEqual(['db']); // the later change stays
    const newest = await ep.api.get<Change>(`/changes/${await latest()}`);
    expect(newest.author).toBe(`admin (revert #${seq})`);
  });

  it('a revert that would overwrite a later change is refused and changes nothing', async () => {
    await ep.api.patch('/machines/h1', { params: { msg: 'three' } });
    const first = await latest();
    await ep.api.patch('/machines/h1', { params: { msg: 'four' } });
    const before = await latest();
    const r = await ep.cli(['history', 'revert', String(first)]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/params\.msg changed again since/);
    expect(await latest()).toBe(before);
    expect((await machine('h1')).params.msg).toBe('four');
  });

  it('revert undoes a label change', async () => {
    await ep.api.patch('/machines/h1', { labels: { tier: 'web' } });
    const seq = await latest();
    const r = await ep.cli(['history', 'revert', String(seq)]);
    expect(r.code, r.stderr).toBe(0);
    expect((await machine('h1')).labels).toEqual({});
  });

  it('reverts local content and pack pins', async () => {
    await ep.api.put('/profiles/web', { name: 'web', params: { msg: 'changed' } });
    const profileChange = await latest();
    await ep.cli(['content', 'use', 'basic@1.1.0']);
    const packChange = await latest();
    expect((await ep.cli(['history', 'revert', String(profileChange)])).code).toBe(0);
    expect(await ep.api.get('/profiles/web')).toMatchObject({ params: { msg: 'from web' } });
    expect((await ep.cli(['history', 'revert', String(packChange)])).code).toBe(0);
    expect((await ep.api.get<{ version: string }>('/packs/basic')).version).toBe('1.0.0');
  });

  it('rewind restores params, profiles, assignments, local content and pins exactly', async () => {
    await ep.api.post('/machines', { name: 'h2', params: { msg: 'h2' }, profiles: ['web'] });
    const to = await latest();
    const snapshot = {
      h1: await machine('h1'),
      h2: await machine('h2'),
      web: await ep.api.get('/profiles/web'),
      pack: (await ep.api.get<{ version: string }>('/packs/basic')).version,
    };
    // a burst of changes of every kind
    await ep.api.patch('/machines/h1', { params: { msg: 'x', code: 200, api_key: 'k-2', count: 4 }, profiles: ['web', 'db'], pipeline: 'basic' });
    await ep.api.patch('/machines/h2', { params: { msg: null }, profiles: [], pipeline: 'steps' });
    await ep.api.put('/profiles/web', { name: 'web', params: { msg: 'rewritten' } });
    await ep.api.post('/profiles', { name: 'cache', params: { code: 3 } });
    await ep.api.patch('/machines/h2', { profiles: ['cache'] });
    await ep.api.post('/packs/basic/use', { version: '1.1.0' });
    await ep.api.post('/machines', { name: 'h3' });

    const r = await ep.cli(['history', 'rewind', '--to', String(to), '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as { skipped: Array<{ object: string; reason: string }> };
    expect(result.skipped).toEqual([{ object: expect.stringMatching(/^machines\/m-/), name: 'machines/h3', reason: `created after #${to}; delete it if it should go` }]);

    const pick = (m: Machine) => ({ params: m.params, profiles: m.profiles, pipeline: m.pipeline, name: m.name });
    expect(pick(await machine('h1'))).toEqual(pick(snapshot.h1));
    expect(pick(await machine('h2'))).toEqual(pick(snapshot.h2));
    expect(await ep.api.get('/profiles/web')).toEqual(snapshot.web);
    await expect(ep.api.get('/profiles/cache')).rejects.toThrow(/not found/);
    expect((await ep.api.get<{ version: string }>('/packs/basic')).version).toBe(snapshot.pack);
    // the secure value came back sealed, and still opens to the original
    const claim = await ep.api.get<{ steps: Array<{ params: Array<{ name: string; value: unknown }> }> }>('/machines/h1/plan');
    expect(JSON.stringify(claim)).not.toContain('k-1');
  });

  it('unknown changes and bad input are clear errors', async () => {
    expect((await ep.cli(['history', 'revert', '99999'])).stderr).toMatch(/change #99999 not found/);
    expect((await ep.cli(['history', 'rewind', '--to', 'yesterday'])).stderr).toMatch(/--to must be a change number/);
  });
});

/** Issue 12: desired state is not observed state; rewind is all or nothing; history reads by name. */
describe('desired and observed state in history', () => {
  const json = async <T>(args: string[]): Promise<T> => {
    const r = await ep.cli([...args, '-o', 'json']);
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    return JSON.parse(r.stdout) as T;
  };

  it('rewind restores params but not the outputs jobs wrote, and --stale reports no change that never happened', async () => {
    await ep.api.post('/machines', { name: 'o1', broker: 'local', pipeline: 'basic', params: { msg: 'one' } });
    const to = await latest();
    expect((await ep.cli(['machines', 'wait', 'o1', '--until', 'done', '--timeout', '60s'])).code).toBe(0);
    // the job's output is observed state: on the machine, not in history
    expect(await machine('o1')).toMatchObject({ outputs: { count: 3 }, params: { msg: 'one' } });
    expect(await latest()).toBe(to);
    await ep.api.patch('/machines/o1', { params: { msg: 'two' } });
    expect((await json<{ stale: string[] }>(['machines', 'record', 'o1'])).stale).toEqual(['hello: param msg changed ("one" → "two")']);

    const r = await ep.cli(['history', 'rewind', '--to', String(to)]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('  update machines/o1: params.msg');
    expect(r.stdout).toMatch(/observed state, left as it is:\n {2}o1: done, agent (not )?connected, outputs count=3/);
    expect(await machine('o1')).toMatchObject({ outputs: { count: 3 }, params: { msg: 'one' }, state: 'done' });
    expect((await json<{ stale: string[] }>(['machines', 'record', 'o1'])).stale).toEqual([]);
  });

  it('history show prints a removed param as a removal, and the machine by name with what it observed', async () => {
    await ep.api.patch('/machines/o1', { params: { msg: null } });
    const r = await ep.cli(['history', 'show', String(await latest())]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^#\d+ update machines\/o1 \(machines\/m-\w+\) by admin/);
    expect(r.stdout).toContain('  /params/msg: (removed)\n    - "one"\n');
    expect(r.stdout).not.toContain('undefined');
    expect(r.stdout).toMatch(/observed now .*\n {2}o1: done, .*outputs count=3/);
    const list = await ep.cli(['history', '--object', 'machines/o1']);
    expect(list.stdout).toContain('machines/o1');
    expect(list.stdout).not.toMatch(/machines\/m-/);
    // a work order's change names its machine
    const wo = await ep.api.post<{ id: string }>('/workorders', { machine: 'o1', blueprint: 'scan' });
    const items = JSON.parse((await ep.cli(['history', '--limit', '1', '-o', 'json'])).stdout) as Array<{ object: string; name: string }>;
    expect(items[0]).toMatchObject({ object: `workorders/${wo.id}`, name: `workorders/${wo.id} (o1)` });
  });

  it('rewind --dry-run lists the changes and makes none', async () => {
    const to = await latest();
    await ep.api.patch('/machines/o1', { params: { msg: 'dry' } });
    await ep.api.post('/profiles', { name: 'dry', params: { msg: 'p' } });
    const before = await latest();
    const r = await ep.cli(['history', 'rewind', '--to', String(to), '--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^dry run: rewinding to #\d+ would make 2 change\(s\):\n {2}delete profiles\/dry\n {2}update machines\/o1: params\.msg\n/);
    expect(await latest()).toBe(before);
    expect((await machine('o1')).params.msg).toBe('dry');
    await ep.api.delete('/profiles/dry');
  });

  it('a rewind that cannot restore one object restores none, and names the problem', async () => {
    const to = await latest();
    await ep.api.patch('/machines/o1', { params: { msg: 'kept' } });
    await ep.api.post('/profiles', { name: 'later', params: { msg: 'l' } });
    // made after the target, so the rewind leaves it — but it uses a profile the rewind would delete
    await ep.api.post('/machines', { name: 'uses-later', profiles: ['later'] });
    const before = await latest();
    const r = await ep.cli(['history', 'rewind', '--to', String(to)]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/machines\/uses-later \/profiles\/0: profile 'later' does not exist once this is applied; change or delete the machine first \(nothing was rewound\)/);
    expect(await latest()).toBe(before);
    expect((await machine('o1')).params.msg).toBe('kept');
    await ep.api.delete('/machines/uses-later');
  });

  it("rewind's report does not list machines created and deleted since the target", async () => {
    const to = await latest();
    await ep.api.post('/machines', { name: 'gone' });
    await ep.api.delete('/machines/gone');
    await ep.api.post('/machines', { name: 'stays' });
    const r = await json<{ skipped: Array<{ name: string; reason: string }> }>(['history', 'rewind', '--to', String(to)]);
    expect(r.skipped.map((s) => s.name)).toEqual(['machines/stays']);
    await ep.api.delete('/machines/stays');
  });
});

describe('--stale compares task content, not pack versions', () => {
  it('an unchanged task after a version bump is not stale; a machine built with a newer version after a roll back is', async () => {
    const v1 = await packFiles('seed');
    const v2 = { ...v1, 'pack.yaml': v1['pack.yaml']!.replace('1.0.0', '1.0.1'), 'tasks/configure.yaml': v1['tasks/configure.yaml']!.replace('perms 0777', 'perms 0640') };
    const v3 = { ...v2, 'pack.yaml': v1['pack.yaml']!.replace('1.0.0', '1.0.2') };
    await ep.api.post('/packs', { files: v1 });
    await ep.api.post('/packs', { files: v2 });
    await ep.api.post('/packs/seed/use', { version: '1.0.1' });
    await ep.api.post('/machines', { name: 's1', broker: 'local', pipeline: 'seed' });
    expect((await ep.cli(['machines', 'wait', 's1', '--until', 'done', '--timeout', '60s'])).code).toBe(0);
    const stale = async () => JSON.parse((await ep.cli(['machines', 'list', '--stale', '--pipeline', 'seed', '-o', 'json'])).stdout) as Array<{ name: string; stale: string[] }>;
    expect(await stale()).toEqual([]);
    // 1.0.2 changes no task: nothing to rebuild
    await ep.api.post('/packs', { files: v3 });
    await ep.api.post('/packs/seed/use', { version: '1.0.2' });
    expect(await stale()).toEqual([]);
    // rolled back to 1.0.0, whose configure differs: the machine built with 1.0.1 is stale, check is not
    await ep.api.post('/packs/seed/use', { version: '1.0.0' });
    const s = await stale();
    expect(s.map((m) => [m.name, m.stale])).toEqual([['s1', ['configure: built with seed@1.0.1, seed@1.0.0 is in use']]]);
  });
});

/** History is desired state only: a machine running, finishing, restarting or pausing is run state (events). */
describe('run state stays out of history', () => {
  it('a machine going running → done and a restart write no change; power (desired) does, without the run state', async () => {
    await ep.api.post('/machines', { name: 'rs1', broker: 'local', pipeline: 'basic', params: { msg: 'x' } });
    const created = await latest();
    const wait = async () => expect((await ep.cli(['machines', 'wait', 'rs1', '--until', 'done', '--timeout', '60s'])).code).toBe(0);
    await wait();
    expect(await latest()).toBe(created); // running → done: no change
    await ep.api.post('/machines/rs1/restart', {});
    await wait();
    expect(await latest()).toBe(created); // done → running → done again: no change either
    await ep.api.post('/machines/rs1/power', { power: 'off' });
    const id = (await machine('rs1')).id;
    const changes = (await ep.api.get<{ items: Change[] }>('/changes', { object: `machines/${id}`, limit: 100 })).items;
    expect(changes.map((c) => c.action)).toEqual(['update', 'create']);
    expect(changes[0]).toMatchObject({ before: { power: 'on' }, after: { power: 'off' } });
    for (const c of changes) for (const side of [c.before, c.after]) expect(side ?? {}).not.toHaveProperty('state');
    const list = await ep.cli(['history', '--object', 'machines/rs1', '-o', 'json']);
    expect((JSON.parse(list.stdout) as Change[]).map((c) => c.seq)).toEqual(changes.map((c) => c.seq));
  });
});
