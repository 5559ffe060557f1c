/**
 * Issue 4 (part): 20 machines under chaos — injected failures, network latency, connections dropped
 * mid-job (some longer than the lease), agents killed mid-job — and the invariants that must hold anyway.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseChaos } from '../src/agent/chaos.js';
import type { Job, Machine } from '../src/model/machine.js';
import { Endpoint, packFiles } from './helpers/endpoint.js';

const MACHINES = 20;
const TASKS = ['c1', 'c2', 'c3', 'c4'];
// drop-for is longer than the 5 s lease: a dropped job whose agent stays away that long must end lost.
const CHAOS = 'fail=0.1,latency=40ms,drop=0.1,drop-for=6s,die=0.06,seed=42';

let ep: Endpoint;
const machines = async () => (await ep.api.get<{ items: Machine[] }>('/machines', { limit: 1000 })).items;
const jobs = async () => (await ep.api.get<{ items: Job[] }>('/jobs', { limit: 1000 })).items;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until no machine is running (each is done, stopped or idle with nothing to do). */
async function settle(timeoutMs = 150_000): Promise<Machine[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ms = await machines();
    if (ms.every((m) => m.state === 'done' || m.state === 'stopped')) return ms;
    if (Date.now() > deadline) throw new Error(`machines still busy: ${ms.filter((m) => m.state !== 'done' && m.state !== 'stopped').map((m) => `${m.name}=${m.state}`).join(', ')}`);
    await sleep(500);
  }
}

interface AgentLine {
  msg: string;
  jobId?: string;
  state?: string;
  exitCode?: number | null;
}
const agentLog = (m: Machine): AgentLine[] => {
  const file = join(ep.data, 'machines', m.id, 'agent.log');
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as AgentLine);
};

/** The invariants, checked whenever the fleet is at rest. */
async function checkInvariants() {
  const ms = await machines();
  const all = await jobs();
  for (const m of ms) {
    // Every stopped machine says why.
    if (m.state === 'stopped') expect(m.reason, `${m.name} stopped without a reason`).toBeTruthy();
    // No task ran twice at once on a machine.
    const overlaps = join(ep.data, 'machines', m.id, 'root', 'overlaps');
    expect(existsSync(overlaps) ? readFileSync(overlaps, 'utf8') : '', `${m.name}: two runs at once`).toBe('');
  }
  // Every job has ended (nothing is running while every machine is at rest); a failed or lost one says why.
  for (const j of all) {
    expect(['succeeded', 'failed', 'lost', 'cancelled'], `${j.id} is ${j.state}`).toContain(j.state);
    if (j.state !== 'succeeded') expect(j.reason, `${j.id} ${j.state} without a reason`).toBeTruthy();
  }
  // No reported result is lost: every report the endpoint accepted is what the job shows, and no job
  // succeeded that its agent did not see exit 0.
  const byId = new Map(all.map((j) => [j.id, j]));
  for (const m of ms) {
    const lines = agentLog(m);
    for (const l of lines.filter((x) => x.msg === 'job report delivered')) {
      expect(byId.get(l.jobId!)?.state, `report for ${l.jobId} on ${m.name}`).toBe(l.state);
    }
    const endedOk = new Set(lines.filter((x) => x.msg === 'job ended' && x.exitCode === 0).map((x) => x.jobId));
    for (const j of all.filter((x) => x.machineId === m.id && x.state === 'succeeded')) expect(endedOk.has(j.id), `${j.id} succeeded unseen`).toBe(true);
  }
  return { ms, all };
}

beforeAll(async () => {
  ep = await Endpoint.start({ env: { TAKT_AGENT_CHAOS: CHAOS } });
  await ep.api.post('/packs', { files: await packFiles('chaos') });
  const r = await ep.cli(['machines', 'create', 'chaos', '--broker', 'local', '--count', String(MACHINES), '--pipeline', 'chaos']);
  expect(r.code, r.stderr).toBe(0);
}, 120_000);
afterAll(async () => ep?.stop());

describe('chaos', () => {
  it('parses the fault spec and explains a bad one', () => {
    expect(parseChaos(CHAOS)).toEqual({ fail: 0.1, latencyMs: 40, drop: 0.1, dropMs: 6000, die: 0.06, seed: 42 });
    expect(() => parseChaos('fail=2')).toThrow(/a fraction from 0 to 1/);
    expect(() => parseChaos('explode=1')).toThrow(/unknown key 'explode'/);
  });

  it('20 machines under chaos: the invariants hold at every rest, and resuming gets every machine done', async () => {
    let { ms } = { ms: await settle() };
    const first = await checkInvariants();
    // Chaos did happen: some machines stopped on injected faults, each with its reason.
    const stopped = first.ms.filter((m) => m.state === 'stopped');
    expect(stopped.length).toBeGreaterThan(0);
    const reasons = first.all.filter((j) => j.state !== 'succeeded').map((j) => j.reason ?? '');
    expect(reasons.some((r) => r.includes('chaos: injected failure'))).toBe(true);

    // An operator resumes what stopped (chaos keeps going) until the whole fleet is done.
    for (let round = 0; round < 12 && ms.some((m) => m.state === 'stopped'); round++) {
      for (const m of ms.filter((x) => x.state === 'stopped')) await ep.api.post(`/machines/${m.id}/resume`, {});
      ms = await settle();
      await checkInvariants();
    }
    expect(ms.filter((m) => m.state !== 'done').map((m) => `${m.name}: ${m.reason}`)).toEqual([]);

    const all = await jobs();
    const count = (f: (j: Job) => boolean) => all.filter(f).length;
    const injected = ms.flatMap((m) => agentLog(m)).filter((l) => l.msg.startsWith('chaos:'));
    console.log(
      `chaos: ${all.length} jobs, ${count((j) => j.state === 'failed')} failed, ${count((j) => j.state === 'lost')} lost; ` +
        `${injected.filter((l) => l.msg === 'chaos: connection dropped').length} drops, ${injected.filter((l) => l.msg.includes('dies')).length} agent deaths`,
    );

    // Every task ran to its end on every machine at least once.
    for (const m of ms) {
      const runs = readFileSync(join(ep.data, 'machines', m.id, 'root', 'runs'), 'utf8');
      for (const t of TASKS) expect(runs, `${m.name} never finished ${t}`).toMatch(new RegExp(`^end ${t} `, 'm'));
    }
  }, 600_000);
});
