/**
 * Issue #16: the event stream (GET /api/v1/events) for users. A user whose role is bound to `env=a`
 * machines sees only those machines' events and their jobs' (replayed and live), plus events about no
 * machine that their grants read; an unscoped viewer sees every event; neither gets a sealed value's
 * ciphertext (the admin does); `Last-Event-ID` resumes a filtered stream at the original ids. Real
 * endpoint process, real SQLite, machines claimed through their own tokens (no agents).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seqPack } from '../bench/lib/packs.js';
import { Endpoint } from './helpers/endpoint.js';
import { readSse, type SseEvent } from './helpers/sse.js';

const PW = 'correct horse battery';
const SECRET = '4711-very-secret';
let ep: Endpoint;
const tokens: Record<string, string> = {};

const named = (name: string) => (evs: SseEvent[]) => evs.some((e) => e.topic.startsWith('machines.create.') && (e.data as { name?: string }).name === name);
const machineNames = (evs: SseEvent[]) => evs.filter((e) => e.topic.startsWith('machines.')).map((e) => (e.data as { name: string }).name);

async function machine(name: string, env: string): Promise<{ id: string; token: string }> {
  const r = await ep.call('POST', '/machines', { name, labels: { env }, pipeline: 'ev' });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.items[0];
}

beforeAll(async () => {
  ep = await Endpoint.start();
  const files = { ...seqPack({ name: 'ev', tasks: 1, description: 'one task', script: () => 'true\n' }), 'params/pin.yaml': 'name: pin\nsecure: true\nschema: { type: string }\n' };
  expect((await ep.call('POST', '/packs', { files })).status).toBe(201);
  for (const [name, roles] of [['vera', ['viewer']], ['sam', []]] as const) {
    expect((await ep.call('POST', '/users', { name, password: PW, roles })).status).toBe(201);
  }
  expect((await ep.call('POST', '/rolebindings', { role: 'operator', subject: 'user:sam', machines: 'env=a' })).status).toBe(201);
  for (const name of ['vera', 'sam']) {
    const r = await ep.call('POST', '/login', { user: name, password: PW }, null);
    expect(r.status).toBe(201);
    tokens[name] = r.body.token;
  }
  // A profile with a secure value: its event carries the ciphertext.
  const p = await ep.call('POST', '/profiles', { name: 'sec', params: { pin: SECRET } });
  expect(p.status, JSON.stringify(p.body)).toBeLessThan(300);
  const a1 = await machine('a-1', 'a');
  const b1 = await machine('b-1', 'b');
  // Each claims its job with its own token: jobs.create and machines.update events for both.
  for (const m of [a1, b1]) expect((await ep.call('POST', `/machines/${m.id}/claim`, {}, m.token)).status).toBe(200);
  await machine('mark-1', 'a');
}, 120_000);

afterAll(async () => {
  await ep?.stop();
});

describe('the event stream for scoped users', () => {
  it('a user scoped to env=a replays only env=a machines and their jobs, plus what their grants read elsewhere', async () => {
    const s = readSse(ep.url, tokens.sam!, 'since=0', named('mark-1'));
    const events = await s.events;
    expect(named('mark-1')(events)).toBe(true);
    expect(new Set(machineNames(events))).toEqual(new Set(['a-1', 'mark-1']));
    const jobs = events.filter((e) => e.topic.startsWith('jobs.'));
    expect(jobs.length).toBeGreaterThan(0);
    const a1 = (await ep.call('GET', '/machines/a-1')).body.id;
    expect(jobs.every((e) => (e.data as { machineId: string }).machineId === a1)).toBe(true);
    // Not about a machine, read by a scoped operator (content:read), and masked.
    const profile = events.find((e) => e.topic === 'profiles.create.sec');
    expect(profile).toBeDefined();
    expect(JSON.stringify(events)).not.toContain('$secure');
    expect(JSON.stringify(profile)).toContain('********');
    // Role bindings and users: users:read/roles:read are reads, so a scoped grant counts for them too, but
    // token events are a token admin's.
    expect(events.some((e) => e.topic.startsWith('tokens.'))).toBe(false);
  }, 60_000);

  it('an unscoped viewer sees every machine, masked; the admin sees the ciphertext', async () => {
    const viewer = await readSse(ep.url, tokens.vera!, 'since=0', named('mark-1')).events;
    expect(new Set(machineNames(viewer))).toEqual(new Set(['a-1', 'b-1', 'mark-1']));
    expect(viewer.filter((e) => e.topic.startsWith('jobs.create.'))).toHaveLength(2);
    expect(JSON.stringify(viewer)).not.toContain('$secure');
    expect(JSON.stringify(viewer.find((e) => e.topic === 'profiles.create.sec'))).toContain('********');
    const admin = await readSse(ep.url, ep.token, 'since=0', named('mark-1')).events;
    expect(JSON.stringify(admin.find((e) => e.topic === 'profiles.create.sec'))).toContain('$secure');
    expect(admin.some((e) => e.topic.startsWith('tokens.'))).toBe(true);
  }, 60_000);

  it('live: a scoped user gets the new env=a machine and not the env=b one', async () => {
    const s = readSse(ep.url, tokens.sam!, 'topics=machines', named('mark-2'));
    expect(await s.open).toBe(200);
    await machine('b-2', 'b');
    await machine('a-2', 'a');
    await machine('mark-2', 'a');
    expect(machineNames(await s.events)).toEqual(['b-2', 'a-2', 'mark-2'].filter((n) => !n.startsWith('b')));
  }, 60_000);

  it('Last-Event-ID resumes a filtered stream at the original ids, skipping what the user may not see', async () => {
    const all = await readSse(ep.url, ep.token, 'since=0', named('mark-1')).events;
    const a1 = all.find((e) => e.topic.startsWith('machines.create.') && (e.data as { name: string }).name === 'a-1')!;
    const expected = all.filter((e) => e.id > a1.id && e.topic.startsWith('machines.') && (e.data as { labels: { env: string } }).labels.env === 'a').map((e) => e.id);
    const resumed = await readSse(ep.url, tokens.sam!, 'topics=machines', named('mark-1'), 30_000, { 'last-event-id': String(a1.id) }).events;
    expect(resumed.map((e) => e.id)).toEqual(expected);
    expect(machineNames(resumed)).not.toContain('b-1');
    expect(resumed.every((e) => e.id > a1.id)).toBe(true);
  }, 60_000);
});
