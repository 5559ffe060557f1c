/**
 * Agent liveness as pure decisions with an injected clock: connected or not, when the store is written
 * (and when operators hear of it), the sweep, long-polls, and the words of a lost job.
 */
import { describe, expect, it } from 'vitest';
import { agentCell, ago } from '../src/cli/liveness.js';
import { afterContact, agentVersion, isConnected, Liveness, machineStatus, peerAddress, persistDecision, type LivenessWrite, type Written } from '../src/engine/liveness.js';
import { judgeJob } from '../src/engine/transitions.js';
import type { AgentLiveness } from '../src/model/machine.js';

const W = 10_000; // window
const T = 1_000; // throttle

describe('isConnected', () => {
  it.each([
    ['heard just now', { polls: 0, activityMs: 100_000 }, 100_000, true],
    ['heard exactly one window ago', { polls: 0, activityMs: 90_000 }, 100_000, true],
    ['one ms past the window', { polls: 0, activityMs: 89_999 }, 100_000, false],
    ['long-polling, however long ago it began', { polls: 1, activityMs: 0 }, 100_000, true],
    ['two polls open', { polls: 2, activityMs: 0 }, 100_000, true],
  ])('%s', (_what, t, now, want) => {
    expect(isConnected(t, now, W)).toBe(want);
  });
});

describe('persistDecision', () => {
  const base: Written = { connected: true, seenMs: 50_000, version: '1.0.0', address: '10.0.0.5', via: 'agent' };
  it.each<[string, Written | null, Partial<Written>, number, 'emit' | 'write' | 'none']>([
    ['never written: write it, and say so', null, {}, 50_000, 'emit'],
    ['nothing new', base, {}, 50_000, 'none'],
    ['seen again within the throttle', base, { seenMs: 50_500 }, 50_500, 'none'],
    ['seen again a throttle later', base, { seenMs: 51_000 }, 51_000, 'write'],
    ['seen long after', base, { seenMs: 99_000 }, 99_000, 'write'],
    ['connected flips to disconnected', base, { connected: false }, 50_100, 'emit'],
    ['disconnected flips to connected', { ...base, connected: false }, { seenMs: 50_100 }, 50_100, 'emit'],
    ['a new version, within the throttle', base, { version: '1.1.0', seenMs: 50_100 }, 50_100, 'emit'],
    ['a new address, within the throttle', base, { address: '10.0.0.6', seenMs: 50_100 }, 50_100, 'emit'],
    ['over SSH now', base, { via: 'ssh' }, 50_000, 'emit'],
  ])('%s → %s', (_what, written, change, now, want) => {
    expect(persistDecision(written, { ...base, ...change }, now, T)).toBe(want);
  });
});

describe('afterContact', () => {
  it('connects, starts "since" on a flip only, and keeps what a contact does not say', () => {
    const first = afterContact(undefined, { version: '1.0.0', address: '10.0.0.5', via: 'agent' }, 1000);
    expect(first).toMatchObject({ connected: true, seenMs: 1000, sinceMs: 1000, version: '1.0.0', address: '10.0.0.5', polls: 0 });
    const again = afterContact({ ...first, polls: 1 }, { via: 'agent' }, 2000);
    expect(again).toMatchObject({ connected: true, seenMs: 2000, sinceMs: 1000, version: '1.0.0', address: '10.0.0.5', polls: 1 });
    const back = afterContact({ ...again, connected: false, sinceMs: 5000 }, { version: '1.1.0', via: 'agent' }, 9000);
    expect(back).toMatchObject({ sinceMs: 9000, version: '1.1.0' });
  });
});

describe('agentVersion and peerAddress', () => {
  it.each([
    ['takt-agent/0.1.0', '0.1.0'],
    ['takt-agent/1.2.3-rc.1+build.5 (linux; node 20)', '1.2.3-rc.1+build.5'],
    ['curl/8.5.0', null],
    ['node', null],
    [undefined, null],
    ['takt-agent/', null],
    ['takt-agent/<script>', null],
    [`takt-agent/${'9'.repeat(65)}`, null],
    ['xtakt-agent/1.0', null],
  ])('user-agent %j → %j', (ua, want) => {
    expect(agentVersion(ua)).toBe(want);
  });
  it.each([
    ['127.0.0.1', '127.0.0.1'],
    ['::ffff:10.2.3.4', '10.2.3.4'],
    ['::1', '::1'],
    ['fe80::1', 'fe80::1'],
    [undefined, null],
  ])('peer %j → %j', (ip, want) => {
    expect(peerAddress(ip)).toBe(want);
  });
});

describe('machineStatus', () => {
  const agent = (connected: boolean): AgentLiveness => ({ connected, lastSeenAt: null, version: null, address: null, via: null, since: '2026-01-01T00:00:00.000Z' });
  it.each([
    ['running, no agent', 'running', 'on', false, 'waiting-for-agent'],
    ['running, agent connected', 'running', 'on', true, 'running'],
    ['running but powered off', 'running', 'off', false, 'running'],
    ['done, no agent', 'done', 'on', false, 'done'],
    ['stopped, no agent', 'stopped', 'on', false, 'stopped'],
    ['idle, no agent', 'idle', 'on', false, 'idle'],
    ['awaiting approval, no agent', 'awaiting-approval', 'on', false, 'awaiting-approval'],
  ] as const)('%s → %s', (_what, state, power, connected, want) => {
    expect(machineStatus({ state, power, agent: agent(connected) })).toBe(want);
  });
});

/** A Liveness on a hand-driven clock, whose writes are recorded instead of stored. */
function harness(opts: { maxPerSweep?: number; skip?: (w: LivenessWrite) => boolean } = {}) {
  let now = 1_000_000;
  const writes: LivenessWrite[][] = [];
  const l = new Liveness({
    windowMs: W,
    throttleMs: T,
    maxPerSweep: opts.maxPerSweep,
    now: () => now,
    persist: async (batch) => {
      writes.push(batch);
      return batch.filter((w) => opts.skip?.(w)).map((w) => w.machineId);
    },
  });
  return {
    l,
    writes,
    tick: (ms: number) => (now += ms),
    /** Writes since the last call, flattened, as [id, connected, emit]. */
    async taken() {
      await l.flush();
      const all = writes.splice(0).flat();
      return all.map((w) => [w.machineId, w.agent.connected, w.emit] as const);
    },
  };
}

describe('Liveness', () => {
  it('writes a contact at once with an event, then lastSeenAt at most once per throttle, silently', async () => {
    const h = harness();
    h.l.heard('m1', { version: '1.0.0', address: '127.0.0.1', via: 'agent' });
    expect(await h.taken()).toEqual([['m1', true, true]]);
    for (let i = 0; i < 9; i++) {
      h.tick(100);
      h.l.heard('m1', { version: '1.0.0', address: '127.0.0.1', via: 'agent' });
    }
    expect(await h.taken()).toEqual([]);
    h.tick(100); // a throttle after the first write
    h.l.heard('m1', { version: '1.0.0', address: '127.0.0.1', via: 'agent' });
    expect(await h.taken()).toEqual([['m1', true, false]]);
    // an agent upgraded in place: at once, with an event
    h.tick(10);
    h.l.heard('m1', { version: '1.1.0', address: '127.0.0.1', via: 'agent' });
    expect(await h.taken()).toEqual([['m1', true, true]]);
  });

  it('batches many machines into one write', async () => {
    const h = harness();
    for (let i = 0; i < 700; i++) h.l.heard(`m${i}`, { via: 'agent' });
    await h.l.flush();
    expect(h.writes.map((b) => b.length)).toEqual([500, 200]);
  });

  it('disconnects a quiet machine once the window passes, once, and connects it again on contact', async () => {
    const h = harness();
    h.l.heard('m1', { via: 'agent' });
    await h.taken();
    h.tick(W);
    expect(h.l.sweep()).toBe(0);
    h.tick(1);
    expect(h.l.sweep()).toBe(1);
    expect(h.l.sweep()).toBe(0);
    const [gone] = (await h.l.flush(), h.writes.splice(0).flat());
    expect(gone).toMatchObject({ machineId: 'm1', emit: true, sweptAt: expect.any(Number), agent: { connected: false, lastSeenAt: new Date(1_000_000).toISOString() } });
    expect(gone!.agent.since).toBe(new Date(1_000_000 + W + 1).toISOString());
    h.tick(5);
    h.l.heard('m1', { via: 'agent' });
    expect(await h.taken()).toEqual([['m1', true, true]]);
  });

  it('keeps a machine connected while its long-poll is open, and counts the window from its end', async () => {
    const h = harness();
    h.l.heard('m1', { via: 'agent' });
    const close = h.l.pollOpened('m1');
    h.tick(5 * W);
    expect(h.l.sweep()).toBe(0);
    close();
    close(); // twice is once
    h.tick(W);
    expect(h.l.sweep()).toBe(0);
    h.tick(1);
    expect(h.l.sweep()).toBe(1);
  });

  it('looks at no more than maxPerSweep machines per sweep, oldest first', async () => {
    const h = harness({ maxPerSweep: 3 });
    for (let i = 0; i < 10; i++) {
      h.l.heard(`m${i}`, { via: 'agent' });
      h.tick(1);
    }
    h.tick(W + 100);
    expect([h.l.sweep(), h.l.sweep(), h.l.sweep(), h.l.sweep(), h.l.sweep()]).toEqual([3, 3, 3, 1, 0]);
    await h.l.flush();
    const gone = h.writes.flat().filter((w) => !w.agent.connected).map((w) => w.machineId);
    expect(gone).toEqual(['m0', 'm1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'm8', 'm9']);
  });

  it('a machine heard again after going quiet moves to the back of the sweep', async () => {
    const h = harness();
    h.l.heard('a', { via: 'agent' });
    h.l.heard('b', { via: 'agent' });
    h.tick(W / 2);
    h.l.heard('a', { via: 'agent' });
    h.tick(W / 2 + 1);
    expect(h.l.sweep()).toBe(1); // b only
    expect(h.l.view({ id: 'a', agent: never() }).connected).toBe(true);
    expect(h.l.view({ id: 'b', agent: never() }).connected).toBe(false);
  });

  it('gone() disconnects at once (the SSH broker)', async () => {
    const h = harness();
    h.l.heard('m1', { via: 'ssh', address: '10.0.0.5' });
    await h.taken();
    h.l.gone('m1');
    h.l.gone('m1');
    expect(await h.taken()).toEqual([['m1', false, true]]);
  });

  it('a swept machine the store shows heard by another replica is connected again', async () => {
    const h = harness({ skip: (w) => w.sweptAt !== null });
    h.l.heard('m1', { via: 'agent' });
    h.tick(W + 1);
    h.l.sweep();
    await h.l.flush();
    expect(h.l.view({ id: 'm1', agent: never() }).connected).toBe(true);
  });

  it('seeds machines the store shows connected with one window from start', async () => {
    const h = harness();
    const before = new Date(500_000).toISOString(); // before the endpoint started
    const stored: AgentLiveness = { connected: true, lastSeenAt: before, version: '0.9.0', address: '10.0.0.9', via: 'agent', since: before };
    h.l.seed([{ id: 'm1', agent: stored }, { id: 'm2', agent: { ...stored, connected: false } }]);
    h.tick(W);
    expect(h.l.sweep()).toBe(0);
    h.l.heard('m1', { via: 'agent' }); // back in time: no flip, no event
    expect(await h.taken()).toEqual([['m1', true, false]]);
    expect(h.l.view({ id: 'm1', agent: stored })).toMatchObject({ connected: true, version: '0.9.0', since: before });
  });

  it('view prefers a later contact from the store and fills what memory lacks', () => {
    const h = harness();
    h.l.heard('m1', { via: 'agent' });
    const later = new Date(1_000_000 + 5000).toISOString();
    const v = h.l.view({ id: 'm1', agent: { connected: true, lastSeenAt: later, version: '2.0.0', address: '10.1.1.1', via: 'agent', since: later } });
    expect(v).toMatchObject({ connected: true, lastSeenAt: later, version: '2.0.0', address: '10.1.1.1' });
  });

  it('forgets deleted machines', async () => {
    const h = harness();
    h.l.heard('m1', { via: 'agent' });
    h.l.forget('m1');
    await h.l.flush();
    h.tick(W + 1);
    expect(h.l.sweep()).toBe(0);
  });

  it('a failed write is retried with the next change, which then emits', async () => {
    let fail = true;
    let now = 0;
    const seen: LivenessWrite[] = [];
    const l = new Liveness({
      windowMs: W,
      throttleMs: T,
      now: () => now,
      persist: async (b) => {
        if (fail) throw new Error('disk full');
        seen.push(...b);
        return [];
      },
    });
    l.heard('m1', { via: 'agent' });
    await l.flush();
    fail = false;
    now += 10;
    l.heard('m1', { via: 'agent' });
    await l.flush();
    expect(seen.map((w) => w.emit)).toEqual([true]);
  });
});

function never(): AgentLiveness {
  return { connected: false, lastSeenAt: null, version: null, address: null, via: null, since: '2020-01-01T00:00:00.000Z' };
}

describe('a lost job says whether the whole agent went quiet', () => {
  it.each([
    ['no agent context (older callers)', undefined, /no word from the agent for 30s \(agent gone or machine down\)/],
    ['never heard', { lastSeenAt: null, address: null, silent: true }, /no agent has been heard from on this machine/],
    ['silent agent', { lastSeenAt: '2026-11-30T10:42:03.000Z', address: '10.0.0.5', silent: true }, /last heard at 2026-11-30T10:42:03.000Z from 10\.0\.0\.5 and nothing since \(the network or the host, not the script\)/],
    ['agent still talking', { lastSeenAt: '2026-11-30T10:42:31.000Z', address: '10.0.0.5', silent: false }, /though the agent was heard at 2026-11-30T10:42:31.000Z from 10\.0\.0\.5 \(it lost track of the job\)/],
  ])('%s', (_what, agent, want) => {
    const v = judgeJob('install', { kind: 'lost', leaseMs: 30_000, ...(agent ? { agent } : {}) });
    expect(v.state).toBe('lost');
    expect(v.reason).toMatch(want);
    expect(v.reason).toMatch(/^task 'install' lost: no word from the agent/);
  });
});

describe('the AGENT column', () => {
  const now = Date.parse('2026-11-30T10:45:00.000Z');
  const m = (agent: Partial<AgentLiveness>) => ({ agent: { ...never(), ...agent } }) as never;
  it.each([
    ['connected', { connected: true, lastSeenAt: '2026-11-30T10:44:59.000Z' }, 'connected'],
    ['over ssh', { connected: true, lastSeenAt: '2026-11-30T10:44:59.000Z', via: 'ssh' as const }, 'connected (ssh)'],
    ['gone 3m', { connected: false, lastSeenAt: '2026-11-30T10:42:00.000Z' }, 'gone 3m'],
    ['never', {}, 'never'],
  ])('%s', (_what, agent, want) => {
    expect(agentCell(m(agent), now)).toBe(want);
  });
  it.each([
    [0, '0s'],
    [59_999, '59s'],
    [60_000, '1m'],
    [3_599_999, '59m'],
    [3_600_000, '1h'],
    [47 * 3_600_000, '47h'],
    [48 * 3_600_000, '2d'],
  ])('ago(%i) = %s', (ms, want) => {
    expect(ago(ms)).toBe(want);
  });
});
