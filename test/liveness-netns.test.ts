/**
 * The link cut: a netns machine (its own network namespace, reaching the endpoint over a veth pair) runs a
 * task that holds its job; its host-side veth goes down mid-job. The job is lost after its lease with a
 * reason that says the agent went quiet, the machine shows its agent disconnected; the link comes back
 * up, the agent reconnects, and an operator resumes the machine to done. Everything is waited for on the
 * event stream. Needs root and iproute2's `ip` (as the netns broker does).
 *
 * Only `takt machines create --broker netns` and the namespace's name (`takt-<machine id>`) are relied on:
 * the host-side veth is found from the namespace's eth0 peer index, not from how the broker names it.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Endpoint } from './helpers/endpoint.js';
import { livenessEndpoint, type EventRecorder } from './helpers/liveness.js';

const isRoot = process.getuid?.() === 0;
const haveIp = spawnSync('ip', ['-V']).status === 0;
const why = !isRoot ? 'needs root (network namespaces)' : !haveIp ? "needs iproute2's `ip`" : '';
if (why) console.warn(`skipping the link-cut test: it ${why}`);

const ip = (...args: string[]) => execFileSync('ip', args, { encoding: 'utf8', timeout: 10_000 });

/** The host-side end of the veth whose other end is eth0 in namespace `ns`. */
function hostVeth(ns: string): string {
  const inside = ip('-n', ns, '-o', 'link', 'show', 'eth0');
  const peer = /eth0@if(\d+):/.exec(inside)?.[1];
  if (!peer) throw new Error(`cannot find eth0's peer in ${ns}: ${inside}`);
  const line = ip('-o', 'link', 'show').split('\n').find((l) => l.startsWith(`${peer}: `));
  const name = line && /^\d+: ([^:@]+)/.exec(line)?.[1];
  if (!name) throw new Error(`no host link with index ${peer}`);
  return name;
}

let ep: Endpoint;
let events: EventRecorder;
let veth: string | null = null;
/** The bridge the machine's veth hangs on (made by this test's endpoint). */
let bridge: string | null = null;
let machineId: string | null = null;

describe.skipIf(why !== '')('a machine whose link is cut mid-job', () => {
  beforeAll(async () => {
    ({ ep, events } = await livenessEndpoint());
  });

  afterAll(async () => {
    // Whatever happened, the link goes back up and the machine (its namespace and veth) goes away.
    if (veth) spawnSync('ip', ['link', 'set', veth, 'up']);
    if (machineId) await ep?.call('DELETE', `/machines/${machineId}`).catch(() => undefined);
    await events?.stop();
    await ep?.stop();
    if (machineId) spawnSync('ip', ['netns', 'del', `takt-${machineId}`]);
    // The endpoint removes its bridge when it stops with no netns machine left; if it did not, we do.
    if (bridge) spawnSync('ip', ['link', 'del', bridge]);
  });

  it('loses the job after its lease, shows the agent disconnected, reconnects when the link is back, and resumes to done', async () => {
    const name = `cut-${process.pid}`;
    const created = await ep.cli(['machines', 'create', name, '--broker', 'netns', '--pipeline', 'hold', '--param', 'secs=600', '-o', 'json']);
    expect(created.code, created.stderr).toBe(0);
    const m = (JSON.parse(created.stdout) as Array<{ id: string }>)[0]!;
    machineId = m.id;

    const job = await events.waitFor('the hold job', (e) => e.topic.startsWith('jobs.create.') && (e.data as { machineId: string }).machineId === m.id, 90_000);
    const jobId = (job.data as { id: string }).id;
    await events.machine(m.id, 'its agent connects', (d) => d.agent.connected);
    veth = hostVeth(`takt-${m.id}`);
    bridge = /master (\S+)/.exec(ip('-o', 'link', 'show', veth))?.[1] ?? null;

    const cut = events.mark();
    ip('link', 'set', veth, 'down');
    const lost = await events.waitFor('the job lost', (e) => e.topic === `jobs.update.${jobId}` && (e.data as { state: string }).state === 'lost', 60_000, cut);
    const down = await events.machine(m.id, 'its agent disconnected', (d) => !d.agent.connected, cut);
    expect((lost.data as { reason: string }).reason).toMatch(/^task 'hold' lost: no word from the agent for 3s; it was last heard at \S+ from \S+ and nothing since \(the network or the host, not the script\)/);
    expect(down.agent.lastSeenAt).not.toBeNull();
    const stopped = await ep.call('GET', `/machines/${m.id}`);
    expect(stopped.body).toMatchObject({ state: 'stopped', agent: { connected: false } });
    expect((await ep.cli(['machines', 'list', '--name', name])).stdout).toMatch(new RegExp(`${name} .* stopped +gone \\d+s +`));

    const back = events.mark();
    ip('link', 'set', veth, 'up');
    const up = await events.machine(m.id, 'its agent reconnects', (d) => d.agent.connected, back, 90_000);
    expect(up.agent.since > down.agent.since).toBe(true);

    expect((await ep.cli(['machines', 'update', name, '--param', 'secs=0'])).code).toBe(0);
    expect((await ep.cli(['machines', 'resume', name])).code).toBe(0);
    const done = await ep.cli(['machines', 'wait', name, '--until', 'done', '--timeout', '90s']);
    expect(done.code, done.stdout + done.stderr).toBe(0);
    const jobs = (await ep.call('GET', `/jobs?machine=${m.id}&limit=10`)).body.items as Array<{ task: string; state: string }>;
    expect(jobs.map((j) => `${j.task}:${j.state}`).sort()).toEqual(['after:succeeded', 'hold:lost', 'hold:succeeded']);
  });
});
