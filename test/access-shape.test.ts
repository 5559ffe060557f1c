/**
 * Issue #16: a user's answer is masked after serialisation (AccessControl.redactText): an answer whose
 * text has no sealed value is returned as it is (one substring search, no walk), one with sealed values
 * has each replaced by the mask unless the user holds RESOURCE:secrets; the admin's and machines' answers
 * are never touched. And a scoped list keeps only the covered machines' items, deciding once per machine.
 */
import { describe, expect, it } from 'vitest';
import { AccessControl } from '../src/api/access.js';
import type { Principal } from '../src/api/auth.js';
import { grantOf, type Grant } from '../src/model/permissions.js';
import { MASK } from '../src/model/secure.js';

const machines = new Map([
  ['m-own', { id: 'm-own', name: 'own', labels: { env: 'own' }, pipeline: null }],
  ['m-other', { id: 'm-other', name: 'other', labels: { env: 'other' }, pipeline: null }],
]);
let reads = 0;
const store = {
  onEvents: () => () => undefined,
  getMachine: async (id: string) => {
    reads += 1;
    return machines.get(id);
  },
  getMachineByName: async () => undefined,
  getJobState: async () => undefined,
  getWorkOrder: async () => undefined,
} as unknown as ConstructorParameters<typeof AccessControl>[0];

const user = (grants: Grant[]): Principal => ({ kind: 'user', name: 'u', tokenId: 't', grants });
const viewer = user([grantOf({ role: 'viewer' })]);
const admin = user([grantOf({ role: 'admin' })]);
const scoped = user([grantOf({ role: 'operator', machines: 'env=own' })]);
const cfg = { permission: 'machines:read' } as never;

describe('masking after serialisation', () => {
  const sealed = { $secure: 'v1:abc' };
  const cases: Array<{ name: string; p: Principal | null; body: unknown; want: unknown; same?: boolean }> = [
    { name: 'no sealed value: the same text', p: viewer, body: { params: { a: 1, b: 'x' } }, want: { params: { a: 1, b: 'x' } }, same: true },
    { name: 'a string that mentions $secure is not a sealed value', p: viewer, body: { script: 'echo "\\"$secure\\""' }, want: { script: 'echo "\\"$secure\\""' }, same: true },
    { name: 'nested sealed values are masked', p: viewer, body: { params: { pin: sealed, list: [1, sealed, { deep: sealed }] } }, want: { params: { pin: MASK, list: [1, MASK, { deep: MASK }] } } },
    { name: 'an object with more keys than $secure is not sealed', p: viewer, body: { x: { $secure: 'a', other: 1 } }, want: { x: { $secure: 'a', other: 1 } } },
    { name: 'a holder of machines:secrets sees the ciphertext', p: admin, body: { pin: sealed }, want: { pin: sealed }, same: true },
    { name: 'the admin token: untouched', p: { kind: 'admin', name: 'admin' }, body: { pin: sealed }, want: { pin: sealed }, same: true },
    { name: 'a machine token: untouched', p: { kind: 'machine', machineId: 'm-own' }, body: { pin: sealed }, want: { pin: sealed }, same: true },
  ];
  const ac = new AccessControl(store);
  for (const c of cases) {
    it(c.name, () => {
      const text = JSON.stringify(c.body);
      const out = ac.redactText(c.p, cfg, text);
      expect(JSON.parse(out)).toEqual(c.want);
      if (c.same) expect(out).toBe(text);
    });
  }
});

describe('a scoped list', () => {
  it('keeps the covered machines\' items, reading each machine once', async () => {
    const ac = new AccessControl(store);
    reads = 0;
    const items = [...Array(10).keys()].map((i) => ({ id: `j-${i}`, machineId: i % 2 ? 'm-own' : 'm-other' }));
    const out = (await ac.shape(scoped, { permission: 'jobs:read', scope: 'list' } as never, { items, total: 10 })) as { items: Array<{ id: string }>; total: number };
    expect(out.items.map((j) => j.id)).toEqual(['j-1', 'j-3', 'j-5', 'j-7', 'j-9']);
    expect(out.total).toBe(5);
    expect(reads).toBe(2);
    // All covered: the answer object itself, not a copy.
    const own = { items: items.filter((j) => j.machineId === 'm-own') };
    expect(await ac.shape(scoped, { permission: 'jobs:read', scope: 'list' } as never, own)).toBe(own);
  });
});
