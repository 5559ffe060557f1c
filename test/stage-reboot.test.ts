/**
 * A stage that needs another bootenv reboots a real agent into it (issue #13's stage switch, found broken
 * by the image deploy of issue #14): the reboot answer reached neither a long-polling claim (the claim
 * loop looked again instead of answering it, and the second look counted the agent's unchanged bootenv as
 * a failed reboot, then stopped the machine) nor an agent whose completion handed it over (the agent
 * dropped a handed answer without a job). Here a network-booted machine (boot settings, no broker) runs a
 * real `takt agent` whose root's /proc/cmdline says `takt.bootenv=discovery`: after the first stage's job
 * the agent must exit 64 (reboot) with the machine switched to the next stage's bootenv and not stopped;
 * a claim on its own (no completion) must answer the reboot at once, not after its long-poll.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../src/client/http.js';
import type { Machine } from '../src/model/machine.js';
import { AGENT_EXIT_REBOOT, type ClaimResponse } from '../src/model/protocol.js';
import { Endpoint, until } from './helpers/endpoint.js';
import { AgentProcess } from './helpers/liveness.js';

const PACK: Record<string, string> = {
  'pack.yaml': 'name: reboots\nversion: 1.0.0\n',
  'bootenvs/discovery.yaml': 'name: discovery\nipxe: "#!ipxe\\nexit"\n',
  'bootenvs/installed.yaml': 'name: installed\nipxe: "#!ipxe\\nexit"\n',
  'tasks/first.yaml': 'name: first\nscript: echo first\n',
  'tasks/second.yaml': 'name: second\nscript: echo second\n',
  'stages/inmem.yaml': 'name: inmem\nbootenv: discovery\ntasks: [first]\n',
  'stages/ondisk.yaml': 'name: ondisk\nbootenv: installed\ntasks: [second]\n',
  'pipelines/two-boots.yaml': 'name: two-boots\nstages: [inmem, ondisk]\nenvironments: [metal]\n',
  'pipelines/one-boot.yaml': 'name: one-boot\nstages: [ondisk]\nenvironments: [metal]\n',
  'stages/plain.yaml': 'name: plain\ntasks: [second]\n',
  'pipelines/plain.yaml': 'name: plain\nstages: [plain]\nenvironments: [metal, local]\n',
};

describe('a stage that needs another bootenv reboots the agent into it', () => {
  let ep: Endpoint;
  const agents: AgentProcess[] = [];
  const machine = async (name: string, mac: string, pipeline: string, bootenv = 'discovery') => {
    const r = await ep.call('POST', '/machines', { name, pipeline, environment: 'metal', boot: { macs: [mac], bootenv } });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return r.body.items[0] as Machine & { token: string };
  };

  beforeAll(async () => {
    ep = await Endpoint.start();
    const r = await ep.call('POST', '/packs', { files: PACK });
    expect(r.status, JSON.stringify(r.body)).toBeLessThan(300);
  });
  afterAll(async () => {
    for (const a of agents) await a.dispose();
    await ep?.stop();
  });

  it('after a completion: the agent exits 64, the machine is switched and still running', async () => {
    const m = await machine('rb-1', '52:54:00:00:0b:01', 'two-boots');
    const agent = new AgentProcess(ep.url, m.token);
    agents.push(agent);
    mkdirSync(join(agent.dir, 'root', 'proc'), { recursive: true });
    writeFileSync(join(agent.dir, 'root', 'proc', 'cmdline'), 'console=ttyS0 takt.bootenv=discovery\n');
    agent.start();
    const code = await until(async () => (agent.proc!.exitCode !== null ? agent.proc!.exitCode : undefined), 60_000, 'the agent to exit');
    expect(code, agent.output).toBe(AGENT_EXIT_REBOOT);
    expect(agent.output).toContain('the machine is to reboot');
    const after = (await ep.call('GET', '/machines/rb-1')).body as Machine;
    expect(after.state, after.reason ?? '').toBe('running');
    expect(after.boot?.bootenv).toBe('installed');
    expect(after.stage).toBe('ondisk');
  }, 90_000);

  it('a long-polling claim answers the reboot at once, and the agent back in the right bootenv gets the job', async () => {
    const m = await machine('rb-2', '52:54:00:00:0b:02', 'one-boot');
    const client = new ApiClient({ endpoint: ep.url, token: m.token });
    // A 60 s long-poll. Without the fix the loop looks again instead of answering, and the answer it gives at
    // the deadline carries no reboot (the machine stopped): the content decides, not how long it took.
    const first = await client.post<ClaimResponse>(`/machines/${m.id}/claim?wait=60`, { bootenv: 'discovery' }, { timeoutMs: 120_000 });
    expect(first).toMatchObject({ job: null, action: 'reboot' });
    expect(((await ep.call('GET', '/machines/rb-2')).body as Machine).state).toBe('running');
    // Back from the reboot in the stage's bootenv: the stage's task.
    const second = await client.post<ClaimResponse>(`/machines/${m.id}/claim?wait=0`, { bootenv: 'installed' });
    expect(second.job?.task).toBe('second');
  }, 180_000);

  it('takt machines rebuild: the machine boots discovery again, its pipeline starts over, and its agent in the installed OS is told to reboot', async () => {
    const m = await machine('rb-3', '52:54:00:00:0b:03', 'plain', 'installed');
    const agent = new AgentProcess(ep.url, m.token);
    agents.push(agent);
    mkdirSync(join(agent.dir, 'root', 'proc'), { recursive: true });
    writeFileSync(join(agent.dir, 'root', 'proc', 'cmdline'), 'console=ttyS0 takt.bootenv=installed\n');
    agent.start();
    await until(async () => ((await ep.call('GET', '/machines/rb-3')).body as Machine).state === 'done', 60_000, 'rb-3 to finish in its installed OS');

    const r = await ep.cli(['machines', 'rebuild', 'rb-3', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ name: 'rb-3', state: 'running', stage: null, boot: { bootenv: 'discovery' } });
    const code = await until(async () => (agent.proc!.exitCode !== null ? agent.proc!.exitCode : undefined), 60_000, 'the agent to exit');
    expect(code, agent.output).toBe(AGENT_EXIT_REBOOT);
    // Nothing ran in the installed OS after the rebuild: its one job is the first run's.
    expect(((await ep.call('GET', '/jobs?machine=rb-3')).body.items as unknown[]).length).toBe(1);
    // History says who rebuilt it, with the boot change.
    const hist = JSON.parse((await ep.cli(['history', '--object', 'machines/rb-3', '--limit', '1', '-o', 'json'])).stdout) as Array<{ author: string; after: { boot?: { bootenv: string } } }>;
    expect(hist[0]).toMatchObject({ author: 'admin', after: { boot: { bootenv: 'discovery' } } });
  }, 120_000);

  it('refuses to rebuild a machine that does not boot from the network, or has no pipeline', async () => {
    await ep.call('POST', '/machines', { name: 'plain-1', pipeline: 'plain', environment: 'local' });
    const a = await ep.cli(['machines', 'rebuild', 'plain-1']);
    expect(a.code).not.toBe(0);
    expect(a.stderr).toMatch(/plain-1 does not boot from the network .* takt machines restart plain-1/);
    await machine('rb-4', '52:54:00:00:0b:04', 'plain', 'installed');
    await ep.call('PATCH', '/machines/rb-4', { pipeline: null });
    const b = await ep.cli(['machines', 'rebuild', 'rb-4']);
    expect(b.code).not.toBe(0);
    expect(b.stderr).toMatch(/rb-4 has no pipeline to re-run/);
  }, 60_000);
});
