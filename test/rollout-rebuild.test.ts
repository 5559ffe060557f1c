/**
 * Rebuilds by rollout and by churn (issue #14), without a VM: a real endpoint with content/image-deploy
 * as shipped, a stand-in `discovery` bootenv, and images in the catalog; two network-booted machines
 * (boot settings, the `manual` power driver) whose real agents (their own --root) boot the bootenv their
 * `/proc/cmdline` names. This file plays the firmware and the person at the rack (`Rack`): an agent that
 * exits 64 is "rebooted" from the network into the bootenv takt serves the machine (its `boot.bootenv`);
 * a machine paused for the manual driver's power cycle (asked by image-write: next boot disk) is booted
 * from its "disk" (`takt.bootenv=local`) and resumed.
 *
 * A rollout of image-deploy with `--param image=…` over machines deployed with v1 must rebuild them
 * (boot discovery again, the write in discovery, never in the installed OS), not restart them in place:
 * a bad v2 stops the line at the canary with the second machine untouched (still v1 by its params,
 * record and boot); a fixed v2.1 rebuilds both, and `--built-with image:tiny@2.1.0` lists them. The churn
 * policy's rollout rebuilds the same way.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, Machine } from '../src/model/machine.js';
import { AGENT_EXIT_REBOOT } from '../src/model/protocol.js';
import { Endpoint, ROOT, until } from './helpers/endpoint.js';
import { AgentProcess } from './helpers/liveness.js';

const DISCOVERY: Record<string, string> = {
  'pack.yaml': 'name: fake-discovery\nversion: 1.0.0\n',
  'bootenvs/discovery.yaml': 'name: discovery\nipxe: "#!ipxe\\nexit"\n',
};

interface View {
  id: string;
  state: string;
  reason: string | null;
  spec: { params?: Record<string, unknown> };
  counts: Record<string, number>;
  items: Array<{ machineName: string; state: string; reason: string | null }>;
}

let ep: Endpoint;
let files: string;
const racks: Rack[] = [];
const machine = async (name: string) => (await ep.call('GET', `/machines/${name}`)).body as Machine;
const jobsOf = async (name: string) => (await ep.call('GET', `/jobs?machine=${name}&order=asc&limit=1000`)).body.items as Job[];

/** One machine's "hardware": its agent, booted into the bootenv its firmware would reach. */
class Rack {
  readonly agent: AgentProcess;
  /** Every boot, in order: the bootenv the agent's kernel command line named. */
  readonly boots: string[] = [];
  constructor(
    readonly name: string,
    token: string,
  ) {
    this.agent = new AgentProcess(ep.url, token);
    mkdirSync(join(this.agent.dir, 'root', 'proc'), { recursive: true });
    writeFileSync(this.disk, '');
  }
  get disk() {
    return join(this.agent.dir, 'root', 'disk.img');
  }
  async boot(bootenv: string): Promise<void> {
    await this.agent.kill();
    writeFileSync(join(this.agent.dir, 'root', 'proc', 'cmdline'), `console=ttyS0 quiet takt.bootenv=${bootenv}\n`);
    this.boots.push(bootenv);
    this.agent.start();
  }
  /**
   * One look, acting as the firmware and the person: a reboot (exit 64) boots the network, i.e. the
   * bootenv takt serves the machine; a pause for the manual driver's power cycle (after the image write,
   * next boot disk) boots the disk, then resumes the machine. Answers the machine as it was seen.
   */
  async tend(): Promise<Machine> {
    const m = await machine(this.name);
    if (this.agent.proc?.exitCode === AGENT_EXIT_REBOOT) await this.boot(m.boot!.bootenv);
    else if (m.state === 'paused' && /manual power driver leaves to you/.test(m.reason ?? '')) {
      await this.boot('local');
      const r = await ep.cli(['machines', 'resume', this.name]);
      expect(r.code, r.stderr).toBe(0);
    }
    return m;
  }
}

/** Tends every rack until `ok` holds (bounded), answering its value. */
const tendUntil = <T>(what: string, ok: () => Promise<T | null | undefined | false>, ms = 120_000) =>
  until(async () => {
    for (const r of racks) await r.tend();
    return ok();
  }, ms, what);

const rolloutOf = async (id: string) => (await ep.call('GET', `/rollouts/${id}`)).body as View;

beforeAll(async () => {
  process.env.TAKT_CHURN_CHECK = '500ms';
  ep = await Endpoint.start();
  files = mkdtempSync(join(tmpdir(), 'takt-rollout-rebuild-'));
  expect((await ep.call('POST', '/packs', { files: DISCOVERY })).status).toBeLessThan(300);
  const push = await ep.cli(['content', 'push', join(ROOT, 'content', 'image-deploy')]);
  expect(push.code, push.stderr).toBe(0);
  for (const v of ['1.0.0', '2.1.0']) {
    writeFileSync(join(files, `tiny-${v}.img`), randomBytes(256 * 1024));
    const imp = await ep.cli(['images', 'import', `tiny@${v}`, join(files, `tiny-${v}.img`)]);
    expect(imp.code, imp.stderr).toBe(0);
  }
}, 120_000);

afterAll(async () => {
  for (const r of racks) await r.agent.dispose();
  await ep?.stop();
  if (files) rmSync(files, { recursive: true, force: true });
  delete process.env.TAKT_CHURN_CHECK;
});

describe('rebuilds of network-booted machines by rollout and by churn', () => {
  it('deploys v1 to two machines: discovery → write → disk → the installed-OS stage runs there, no extra reboot', async () => {
    for (const [i, name] of ['rb-a', 'rb-b'].entries()) {
      const r = await ep.call('POST', '/machines', { name, environment: 'metal', boot: { macs: [`52:54:00:00:0c:0${i + 1}`], bootenv: 'discovery' }, powerConfig: { driver: 'manual' } });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      const rack = new Rack(name, r.body.items[0].token as string);
      racks.push(rack);
      const u = await ep.cli(['machines', 'update', name, '--param', 'image=tiny@1.0.0', '--param', `disk=${rack.disk}`, '--pipeline', 'image-deploy']);
      expect(u.code, u.stderr).toBe(0);
      await rack.boot('discovery');
    }
    await tendUntil('both deployed', async () => (await Promise.all(racks.map((r) => machine(r.name)))).every((m) => m.state === 'done'));
    for (const rack of racks) {
      const m = await machine(rack.name);
      expect(m.boot?.bootenv).toBe('local');
      // The deployed OS's agent ran image-installed where it booted: no reboot after the disk boot.
      expect(rack.boots).toEqual(['discovery', 'local']);
      expect((await jobsOf(rack.name)).map((j) => `${j.task}:${j.state}`)).toEqual(['image-write:succeeded', 'image-booted:succeeded']);
    }
    const built = JSON.parse((await ep.cli(['machines', 'list', '--built-with', 'image:tiny@1.0.0', '-o', 'json'])).stdout) as Machine[];
    expect(built.map((m) => m.name).sort()).toEqual(['rb-a', 'rb-b']);
  }, 180_000);

  it('a dry run says the machines are rebuilt; a bad v2 fails the canary, which was rebuilt (not restarted in place), and the andon spares the second machine', async () => {
    const dry = await ep.cli(['rollouts', 'create', '--pipeline', 'image-deploy', '--select', 'name=rb-', '--param', 'image=tiny@2.0.0', '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(/pipeline image-deploy with image=tiny@2\.0\.0/);
    expect(dry.stdout).toMatch(/rebuilt: it boots discovery again/);

    // tiny@2.0.0 is not in the catalog: the write fails naming it (the bad release).
    const c = await ep.cli(['rollouts', 'create', '--pipeline', 'image-deploy', '--select', 'name=rb-', '--param', 'image=tiny@2.0.0', '--canary', '1', '--batch', '1', '--max-failures', '0', '--no-wait', '-o', 'json']);
    expect(c.code, c.stderr).toBe(0);
    const id = (JSON.parse(c.stdout) as View).id;
    const r = await tendUntil('the rollout to stop', async () => {
      const v = await rolloutOf(id);
      return v.state !== 'running' ? v : null;
    });
    expect(r.state).toBe('stopped');
    expect(r.reason).toMatch(/^andon: 1 failure\(s\) with a budget of 0; rb-a: task 'image-write' failed: image tiny@2\.0\.0 .* image unknown/);
    const canary = racks[0]!;
    // Rebuilt: its agent in the installed OS was told to reboot, and it came back in discovery.
    expect(canary.boots).toEqual(['discovery', 'local', 'discovery']);
    const a = await machine('rb-a');
    expect(a).toMatchObject({ state: 'stopped', stage: 'image-write', params: expect.objectContaining({ image: 'tiny@2.0.0' }), boot: expect.objectContaining({ bootenv: 'discovery' }) });
    // Nothing of the deploy ran in the installed OS after the rollout started it.
    expect((await jobsOf('rb-a')).map((j) => `${j.task}:${j.state}`)).toEqual(['image-write:succeeded', 'image-booted:succeeded', 'image-write:failed']);
    // History: the rollout set the param and the boot, as itself.
    const hist = JSON.parse((await ep.cli(['history', '--object', `machines/${a.id}`, '--limit', '5', '-o', 'json'])).stdout) as Array<{ author: string; after: { params?: Record<string, unknown>; boot?: { bootenv: string } } }>;
    expect(hist.filter((h) => h.author === `rollout:${id}`).map((h) => [h.after.params?.image, h.after.boot?.bootenv])).toEqual([
      ['tiny@2.0.0', 'discovery'],
      ['tiny@2.0.0', 'local'],
    ]);
    // The second machine: untouched, still v1.
    const b = await machine('rb-b');
    expect(b).toMatchObject({ state: 'done', params: expect.objectContaining({ image: 'tiny@1.0.0' }), boot: expect.objectContaining({ bootenv: 'local' }) });
    expect(racks[1]!.boots).toEqual(['discovery', 'local']);
    expect(await jobsOf('rb-b')).toHaveLength(2);
  }, 180_000);

  it('a fixed v2.1 rebuilds both; their build records show it', async () => {
    const c = await ep.cli(['rollouts', 'create', '--pipeline', 'image-deploy', '--select', 'name=rb-', '--param', 'image=tiny@2.1.0', '--canary', '1', '--batch', '1', '--max-failures', '0', '--no-wait', '-o', 'json']);
    expect(c.code, c.stderr).toBe(0);
    const id = (JSON.parse(c.stdout) as View).id;
    const r = await tendUntil('the v2.1 rollout to end', async () => {
      const v = await rolloutOf(id);
      return v.state !== 'running' ? v : null;
    });
    expect(r.state, r.reason ?? '').toBe('completed');
    expect(r.spec.params).toEqual({ image: 'tiny@2.1.0' });
    for (const rack of racks) {
      const m = await machine(rack.name);
      expect(m).toMatchObject({ state: 'done', boot: expect.objectContaining({ bootenv: 'local' }) });
      const rec = await ep.cli(['machines', 'record', rack.name]);
      expect(rec.stdout).toMatch(new RegExp(`^${rack.name} pipeline image-deploy image tiny@2\\.1\\.0$`, 'm'));
    }
    // rb-b went through discovery for its rebuild (its one restart; rb-a was already set to boot discovery).
    expect(racks[1]!.boots).toEqual(['discovery', 'local', 'discovery', 'local']);
    const built = JSON.parse((await ep.cli(['machines', 'list', '--built-with', 'image:tiny@2.1.0', '-o', 'json'])).stdout) as Machine[];
    expect(built.map((m) => m.name).sort()).toEqual(['rb-a', 'rb-b']);
    expect(JSON.parse((await ep.cli(['machines', 'list', '--built-with', 'image:tiny@<2', '-o', 'json'])).stdout)).toEqual([]);
  }, 180_000);

  it('the churn policy rebuilds them too (discovery again, the image written anew)', async () => {
    const writes = async (name: string) => (await jobsOf(name)).filter((j) => j.task === 'image-write').length;
    const before = await Promise.all(racks.map((r) => writes(r.name)));
    const boots = racks.map((r) => r.boots.length);
    const set = await ep.cli(['policy', 'set', 'max-age', '1s', '--budget', '1']);
    expect(set.code, set.stderr).toBe(0);
    const churned = await tendUntil('the churn rollout', async () => {
      const all = (await ep.call('GET', '/rollouts')).body.items as Array<View & { author: string }>;
      return all.find((x) => x.author === 'policy:churn');
    });
    // One round is enough: no second rollout once this one ends.
    expect((await ep.cli(['policy', 'clear', 'max-age'])).code).toBe(0);
    const r = await tendUntil('the churn rollout to end', async () => {
      const v = await rolloutOf(churned.id);
      return v.state !== 'running' ? v : null;
    });
    expect(r.state, r.reason ?? '').toBe('completed');
    for (const [i, rack] of racks.entries()) {
      expect(await writes(rack.name)).toBe(before[i]! + 1);
      expect(rack.boots.slice(boots[i])).toEqual(['discovery', 'local']);
      expect(await machine(rack.name)).toMatchObject({ state: 'done', params: expect.objectContaining({ image: 'tiny@2.1.0' }) });
    }
  }, 180_000);

  it('refuses rollout params a machine update would refuse, before any machine starts', async () => {
    const bad = await ep.cli(['rollouts', 'create', '--pipeline', 'image-deploy', '--select', 'name=rb-', '--param', 'image=tiny']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/image.*must match pattern/);
    const unknown = await ep.cli(['rollouts', 'create', '--pipeline', 'image-deploy', '--select', 'name=rb-', '--param', 'imgae=tiny@2.1.0']);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/imgae/);
    const unset = await ep.call('POST', '/rollouts', { pipeline: 'image-deploy', select: { name: 'rb-' }, params: { image: null } });
    expect(unset.status, JSON.stringify(unset.body)).toBe(422);
    expect(unset.body.error.path).toBe('/params/image');
    expect(((await ep.call('GET', '/rollouts')).body.items as View[]).filter((r) => r.state === 'running')).toEqual([]);
  });
});
