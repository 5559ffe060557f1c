/**
 * Liveness against a real endpoint and real agent processes: connected with version and address while an
 * agent runs, disconnected once it is killed (a short --agent-gone-after via TAKT_AGENT_GONE_AFTER, waited
 * for on the event stream), one event per flip, the CLI's AGENT column and `machines get`, a machine with
 * work and no agent shown waiting, and a lost job that says when and from where its agent was last heard.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Endpoint, ROOT, TAKT } from './helpers/endpoint.js';
import { AgentProcess, livenessEndpoint, type EventRecorder, type MachineData } from './helpers/liveness.js';

const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

let ep: Endpoint;
let events: EventRecorder;
const agents: AgentProcess[] = [];

async function makeMachine(name: string, extra: Record<string, unknown> = {}): Promise<{ id: string; token: string }> {
  const r = await ep.call('POST', '/machines', { name, ...extra });
  expect(r.status).toBe(201);
  return r.body.items[0];
}

function agentFor(m: { token: string }): AgentProcess {
  const a = new AgentProcess(ep.url, m.token).start();
  agents.push(a);
  return a;
}

/** Every event committed before this resolves has been recorded (a create of our own, waited for). */
let barriers = 0;
async function barrier(): Promise<void> {
  const b = await makeMachine(`barrier-${++barriers}`);
  await events.waitFor('the barrier', (e) => e.topic === `machines.create.${b.id}`);
}

/** How many times `connected` flipped over a machine's recorded updates (the first one counts from "never"). */
function flips(updates: MachineData[]): number {
  let prev = false;
  let n = 0;
  for (const u of updates) {
    if (u.agent.connected !== prev) n++;
    prev = u.agent.connected;
  }
  return n;
}

beforeAll(async () => {
  ({ ep, events } = await livenessEndpoint());
});

afterAll(async () => {
  for (const a of agents) await a.dispose();
  await events?.stop();
  await ep?.stop();
});

describe('agent liveness', () => {
  it('shows a running agent connected with its version and address, and disconnected once it is killed; one event per flip', async () => {
    const m = await makeMachine('live-1');
    const before = await ep.call('GET', `/machines/${m.id}`);
    expect(before.body.agent).toMatchObject({ connected: false, lastSeenAt: null, version: null, address: null, via: null });
    expect((await ep.cli(['machines', 'list', '--name', 'live-1'])).stdout).toMatch(/live-1 .* idle +never +/);

    const agent = agentFor(m);
    const up = await events.machine(m.id, 'the agent connects', (d) => d.agent.connected);
    expect(up.agent).toMatchObject({ connected: true, version: VERSION, address: '127.0.0.1', via: 'agent' });
    expect(Date.parse(up.agent.lastSeenAt!)).toBeGreaterThanOrEqual(Date.parse(up.agent.since) - 1);

    const got = await ep.call('GET', `/machines/${m.id}`);
    expect(got.body.agent).toMatchObject({ connected: true, version: VERSION, address: '127.0.0.1' });
    expect(got.body.status).toBe('idle');
    const list = await ep.cli(['machines', 'list', '--name', 'live-1']);
    expect(list.stdout).toMatch(/ STATE +AGENT +REASON\n/);
    expect(list.stdout).toMatch(/live-1 .* idle +connected +/);
    const json = JSON.parse((await ep.cli(['machines', 'list', '--name', 'live-1', '-o', 'json'])).stdout) as MachineData[];
    expect(json[0]!.agent).toMatchObject({ connected: true, version: VERSION, address: '127.0.0.1', via: 'agent' });
    const shown = (await ep.cli(['machines', 'get', 'live-1'])).stdout;
    expect(shown).toMatch(/^live-1 idle/);
    expect(shown).toMatch(new RegExp(`agent: connected since \\S+ · last seen \\S+ \\(\\d+s ago\\) · from 127\\.0\\.0\\.1 · version ${VERSION.replace(/\./g, '\\.')}`));

    // More requests with the machine's token — as its agent and as another client — are heard, not announced.
    for (let i = 0; i < 10; i++) {
      await fetch(`${ep.url}/api/v1/machines/${m.id}`, { headers: { authorization: `Bearer ${m.token}`, 'user-agent': `takt-agent/${VERSION}` } });
      await ep.call('GET', `/machines/${m.id}`, undefined, m.token);
    }
    await barrier();
    expect(events.machineUpdates(m.id)).toHaveLength(1);
    expect((await ep.call('GET', `/machines/${m.id}`)).body.agent.version).toBe(VERSION);

    const mark = events.mark();
    await agent.kill();
    const down = await events.machine(m.id, 'the agent is gone', (d) => !d.agent.connected, mark);
    expect(down.agent).toMatchObject({ connected: false, version: VERSION, address: '127.0.0.1', via: 'agent' });
    expect(down.agent.since > down.agent.lastSeenAt!).toBe(true);
    await barrier();
    const updates = events.machineUpdates(m.id);
    expect(updates).toHaveLength(2);
    expect(flips(updates)).toBe(2);
    expect((await ep.cli(['machines', 'list', '--name', 'live-1'])).stdout).toMatch(/live-1 .* idle +gone \d+s +/);
    expect((await ep.cli(['machines', 'get', 'live-1'])).stdout).toMatch(/agent: disconnected since \S+ · last seen \S+ \(\d+s ago\) · from 127\.0\.0\.1/);

    // Work and no agent: the machine says it waits for one, in the API, the list and `machines get`.
    const assigned = await ep.call('PATCH', `/machines/${m.id}`, { pipeline: 'hold' });
    expect(assigned.body).toMatchObject({ state: 'running', status: 'waiting-for-agent' });
    expect((await ep.call('GET', `/machines/${m.id}`)).body.status).toBe('waiting-for-agent');
    expect((await ep.cli(['machines', 'list', '--name', 'live-1'])).stdout).toMatch(/live-1 .* waiting-for-agent +gone \d+s +/);
    expect((await ep.cli(['machines', 'get', 'live-1'])).stdout).toMatch(/^live-1 waiting for an agent since \d\d:\d\d/);

    // An agent comes back: connected again (one more flip), and the pipeline runs on.
    const back = events.mark();
    agentFor(m);
    await events.machine(m.id, 'the agent is back', (d) => d.agent.connected, back);
    const done = await ep.cli(['machines', 'wait', 'live-1', '--until', 'done', '--timeout', '60s']);
    expect(done.code).toBe(0);
    await barrier();
    expect(flips(events.machineUpdates(m.id))).toBe(3);
    expect((await ep.call('GET', `/machines/${m.id}`)).body).toMatchObject({ state: 'done', status: 'done', agent: { connected: true } });
  });

  it('a job lost with its agent says when and from where the agent was last heard', async () => {
    const m = await makeMachine('live-2', { pipeline: 'hold', params: { secs: 30 } });
    const from = events.mark();
    const agent = agentFor(m);
    const job = await events.waitFor('the hold job', (e) => e.topic.startsWith('jobs.create.') && (e.data as { machineId: string; task: string }).machineId === m.id, 60_000, from);
    await events.machine(m.id, 'connected', (d) => d.agent.connected, from);
    const heard = events.mark();
    await agent.kill();
    const lost = await events.waitFor('the job lost', (e) => e.topic === `jobs.update.${job.data && (job.data as { id: string }).id}` && (e.data as { state: string }).state === 'lost', 60_000, heard);
    const down = await events.machine(m.id, 'the agent is gone', (d) => !d.agent.connected, heard);
    const reason = (lost.data as { reason: string }).reason;
    expect(reason).toMatch(/^task 'hold' lost: no word from the agent for 3s; it was last heard at (\S+) from 127\.0\.0\.1 and nothing since \(the network or the host, not the script\)/);
    // The time it names is the agent's last contact, as the machine shows it.
    const at = /last heard at (\S+) from/.exec(reason)![1]!;
    expect(Math.abs(Date.parse(at) - Date.parse(down.agent.lastSeenAt!))).toBeLessThan(1000);
    const stopped = await ep.call('GET', `/machines/${m.id}`);
    expect(stopped.body).toMatchObject({ state: 'stopped', agent: { connected: false } });
    expect(stopped.body.reason).toBe(reason);

    // The operator brings the agent back and resumes: the pipeline runs on to done.
    const back = events.mark();
    agentFor(m);
    await events.machine(m.id, 'the agent is back', (d) => d.agent.connected, back);
    expect((await ep.cli(['machines', 'update', 'live-2', '--param', 'secs=0'])).code).toBe(0);
    expect((await ep.cli(['machines', 'resume', 'live-2'])).code).toBe(0);
    const done = await ep.cli(['machines', 'wait', 'live-2', '--until', 'done', '--timeout', '60s']);
    expect(done.code).toBe(0);
  });

  it('takt events watch shows each flip with the agent in its summary line', async () => {
    const m = (await ep.call('GET', '/machines/live-1')).body as MachineData;
    // Replays live-1's updates (test 1: connected, gone, connected again, then its pipeline's) and follows.
    const p = spawn(process.execPath, [TAKT, 'events', 'watch', '--topics', `machines.update.${m.id}`, '--since', '0'], {
      env: { ...process.env, TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token, NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`events watch printed: ${out}`)), 30_000);
        p.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          if (/agent=connected[\s\S]*agent=disconnected[\s\S]*state=done agent=connected/.test(out)) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
    } finally {
      p.kill('SIGKILL');
    }
    expect(out.split('\n')[0]).toMatch(new RegExp(`machines\\.update\\.${m.id} name=live-1 state=idle agent=connected$`));
  });
});
