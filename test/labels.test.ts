/**
 * Machine labels and `-l` selectors: the syntax (table-driven), and the life of a label through the CLI
 * against a real endpoint — set, select, remove, history, rewind and export.
 */
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyLabelPatch, formatLabelSelector, matchesLabels, parseLabelPairs, parseLabelSelector, validateLabels } from '../src/model/labels.js';
import type { Change, Machine } from '../src/model/machine.js';
import { Endpoint } from './helpers/endpoint.js';

describe('label selectors', () => {
  const labels = { role: 'web', env: 'prod', gpu: '' };
  it.each([
    ['', true],
    ['role=web', true],
    ['role==web', true],
    ['role=db', false],
    ['role!=db', true],
    ['role!=web', false],
    ['zone!=a', true], // absent key: != holds, as in Kubernetes
    ['gpu', true],
    ['!gpu', false],
    ['zone', false],
    ['!zone', true],
    ['role=web,env=prod', true],
    ['role=web,env=dev', false],
    [' role = web , !zone ', true],
    ['example.com/team=x', false],
  ])('%j matches %j', (sel, want) => {
    expect(matchesLabels(labels, parseLabelSelector(sel))).toBe(want);
  });

  it.each([
    ['role=web,', /empty term/],
    ['=web', /label key ''|must be 1-63/],
    ['role=we b', /label value 'we b'/],
    ['-role', /label key '-role'/],
    ['Bad_Prefix/x=1', /prefix/],
    ['a'.repeat(64), /1-63/],
  ])('%j is refused, naming the term', (sel, why) => {
    expect(() => parseLabelSelector(sel)).toThrow(why);
    expect(() => parseLabelSelector(sel)).toThrow(/key=value, key!=value, key or !key/);
  });

  it('formats back to the syntax it reads', () => {
    const text = 'role=web,env!=prod,gpu,!legacy';
    expect(formatLabelSelector(parseLabelSelector(text))).toBe(text);
  });

  it.each([
    [['role=web'], { role: 'web' }],
    [['role=web', 'role=db'], { role: 'db' }],
    [['empty='], { empty: '' }],
    [['legacy-'], { legacy: null }],
    [['a.b/c=d'], { 'a.b/c': 'd' }],
  ])('--label %j', (pairs, want) => expect(parseLabelPairs(pairs)).toEqual(want));

  it.each([['role'], ['=x'], ['role=a=b'], ['bad key=x']])('--label %j is refused', (pair) => {
    expect(() => parseLabelPairs([pair])).toThrow();
  });

  it('a patch sets and removes, and keeps keys sorted', () => {
    expect(Object.keys(applyLabelPatch({ z: '1', a: '2' }, { m: '3', z: null }))).toEqual(['a', 'm']);
  });

  it('a whole map is validated with a JSON-pointer path', () => {
    expect(() => validateLabels({ ok: 'x', 'no good': 'y' })).toThrow(/label key 'no good'/);
    expect(() => validateLabels(Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])))).toThrow(/at most 64 labels/);
  });
});

describe('labels through the CLI', () => {
  let ep: Endpoint;
  beforeAll(async () => {
    ep = await Endpoint.start();
    for (const [name, role] of [['web-1', 'web'], ['web-2', 'web'], ['db-1', 'db']] as const) {
      const r = await ep.cli(['machines', 'create', name, '--label', `role=${role}`, '--label', 'env=prod']);
      expect(r.code, r.stderr).toBe(0);
    }
  });
  afterAll(async () => ep?.stop());

  const names = async (args: string[]) => {
    const r = await ep.cli(['machines', 'list', ...args, '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    return (JSON.parse(r.stdout) as Machine[]).map((m) => m.name).sort();
  };

  it('-l selects by labels', async () => {
    expect(await names(['-l', 'role=web'])).toEqual(['web-1', 'web-2']);
    expect(await names(['--selector', 'role!=web'])).toEqual(['db-1']);
    expect(await names(['-l', 'env=prod,role=db'])).toEqual(['db-1']);
    expect(await names(['-l', '!env'])).toEqual([]);
  });

  it('a bad selector is a 400 that names the term', async () => {
    const r = await ep.cli(['machines', 'list', '-l', 'role=web,,x']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/empty term/);
    const api = await ep.call('GET', '/machines?selector=' + encodeURIComponent('role=a b'));
    expect(api.status).toBe(400);
  });

  it('update sets and removes labels; history records them and rewind restores them', async () => {
    const before = (await ep.api.get<{ items: Change[] }>('/changes', { limit: 1 })).items[0]!.seq;
    let r = await ep.cli(['machines', 'update', 'web-2', '--label', 'role=canary', '--label', 'env-']);
    expect(r.code, r.stderr).toBe(0);
    const m = await ep.api.get<Machine>('/machines/web-2');
    expect(m.labels).toEqual({ role: 'canary' });
    expect(await names(['-l', 'role=web'])).toEqual(['web-1']);
    const change = (await ep.api.get<{ items: Change[] }>('/changes', { limit: 1 })).items[0]!;
    expect(change.after).toMatchObject({ labels: { role: 'canary' } });
    r = await ep.cli(['history', 'rewind', '--to', String(before)]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect((await ep.api.get<Machine>('/machines/web-2')).labels).toEqual({ env: 'prod', role: 'web' });
  });

  it('a bad label is refused with the field', async () => {
    const r = await ep.call('POST', '/machines', { name: 'x1', labels: { 'no good': 'v' } });
    expect(r.status).toBe(422);
    expect(JSON.stringify(r.body)).toMatch(/label key 'no good'/);
    const c = await ep.cli(['machines', 'create', 'x2', '--label', 'role']);
    expect(c.code).not.toBe(0);
    expect(c.stderr).toMatch(/KEY=VALUE/);
  });

  it('export carries the labels', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'takt-labels-export-'));
    const r = await ep.cli(['export', dir]);
    expect(r.code, r.stderr).toBe(0);
    const files = readdirSync(join(dir, 'machines'));
    const web1 = files.map((f) => readFileSync(join(dir, 'machines', f), 'utf8')).find((t) => t.includes('name: web-1'));
    expect(web1).toMatch(/labels:\n\s+env: prod\n\s+role: web/);
  });
});
