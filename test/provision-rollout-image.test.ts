/**
 * Rolling out a new image version over real VMs (issue #14; docs/provisioning.md "Rebuilding a machine"):
 * `takt serve --provision … --dhcp full --qemu-bridge tkr0` in a network namespace `tkr-…`; the discovery
 * bootenv built and installed, and the same agent OS as a disk image (`--disk-image`) imported as
 * `agent-os@1.0.0`. Two qemu broker VMs (BIOS) on content/image-deploy are deployed with v1 one after the
 * other (one VM computing at a time): discovery → image written → power-cycled into the disk → the
 * deployed OS joins as its machine and runs `image-installed` there → done.
 *
 * Then `takt rollouts create --pipeline image-deploy --param image=agent-os@2.0.0 --canary 1
 * --max-failures 0`: a bad v2 (1 GiB, as large as the VMs' disks: it does not fit with the join block).
 * The canary is rebuilt — its agent in the installed OS reboots into discovery — and its write fails
 * before a byte is written (`disk too small`); the andon stops the rollout before the second VM, which
 * still runs v1 (params, build record, boot). Then a fixed v2.1 (the v1 OS with a release note appended:
 * other bytes, other sha256): both VMs are rebuilt one after the other (canary 1, batch 1), their build
 * records say agent-os@2.1.0, `machines list --built-with image:agent-os@2.1.0` lists both, and each disk
 * equals the image (`qemu-img compare`).
 *
 * Why the bad v2 fails at the write rather than at boot: an image that does not boot, or boots an OS
 * without takt's agent, never reaches `image-installed`, and nothing bounds that wait (the boot watch does
 * not watch a disk boot): the rollout would wait for ever. See the report in docs/provisioning.md.
 * Phases are logged in seconds from the test's start with the load average. TAKT_QEMU_ACCEL=tcg.
 */
import { execFileSync } from 'node:child_process';
import { appendFileSync, copyFileSync, existsSync, readFileSync, truncateSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, Machine } from '../src/model/machine.js';
import { BootLab, until } from './helpers/boot-lab.js';
import { ROOT } from './helpers/endpoint.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
const GiB = 2 ** 30;

interface View {
  id: string;
  state: string;
  reason: string | null;
  items: Array<{ machineName: string; state: string; reason: string | null }>;
}

describe.skipIf(!existsSync(QEMU))('a rollout of a new image version over two VMs: a bad v2 stops at the canary, a fixed v2.1 rebuilds both', () => {
  const lab = new BootLab({ netnsPrefix: 'tkr-', subnet: '10.243', dirPrefix: 'tkr-', dataName: 'd', bridgeName: 'tkr0', cliTimeoutMs: 120_000 });
  const cli = (args: string[], timeoutMs?: number) => lab.cli(args, timeoutMs);
  const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');
  const t0 = Date.now();
  const phase = (what: string) => console.log(`[provision] rollout-image: ${what} at ${((Date.now() - t0) / 1000).toFixed(1)} s (load ${load()})`);
  const images: Record<string, string> = {};
  const vms: Record<string, Machine> = {};
  const serial = (name: string) => {
    const f = vms[name] ? join(lab.data, 'qemu', vms[name].id, 'serial.log') : '';
    return f && existsSync(f) ? readFileSync(f, 'utf8').slice(-3000) : '(no serial log)';
  };
  const detail = () => `${lab.output.slice(-8000)}\n--- vm-1 serial ---\n${serial('vm-1')}\n--- vm-2 serial ---\n${serial('vm-2')}`;
  const json = async <T>(args: string[]): Promise<T> => {
    const r = await cli([...args, '-o', 'json']);
    if (r.code !== 0) throw new Error(`takt ${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };
  const machine = (name: string) => json<Machine>(['machines', 'get', name]);
  /** Bounded wait for a machine to be done (or stopped: then fail with its reason). */
  const settled = (name: string, ms: number) =>
    until(async () => {
      const m = await machine(name);
      return m.state === 'done' || m.state === 'stopped' ? m : undefined;
    }, ms, `${name} to be done`, detail, 2000);
  const rolloutEnd = (id: string, ms: number) =>
    until(async () => {
      const r = await json<View>(['rollouts', 'get', id]);
      return r.state === 'running' ? undefined : r;
    }, ms, `rollout ${id} to end`, detail, 2000);
  const writes = async (name: string) => (await json<Job[]>(['jobs', 'list', '--machine', name])).filter((j) => j.task === 'image-write');

  beforeAll(async () => {
    await lab.startVms();
  }, 600_000);

  afterAll(() => lab.close(), 60_000);

  it('builds discovery and the agent OS image; imports v1, a bad v2 and a fixed v2.1; pushes content/image-deploy', async () => {
    images.v1 = join(lab.dir, 'agent-os.img');
    const r = await cli(['bootenv', 'build', 'discovery', '--install', '--disk-image', images.v1, '-o', 'json'], 540_000);
    expect(r.code, r.stderr).toBe(0);
    await until(() => ((lab.output.match(/boot: kept bootenv 'discovery'/g) ?? []).length >= 2 ? true : undefined), 180_000, 'the discovery artifacts to be kept', () => lab.output);
    // v2: as large as the disks (1 GiB), so it and the 4 KiB join block do not fit: refused before a byte is written.
    images.v2 = join(lab.dir, 'agent-os-2.0.0.img');
    copyFileSync(images.v1, images.v2);
    truncateSync(images.v2, 1 * GiB);
    // v2.1: the v1 OS with a release note after it (a whole MiB): other bytes, the same boot.
    images['v2.1'] = join(lab.dir, 'agent-os-2.1.0.img');
    copyFileSync(images.v1, images['v2.1']);
    appendFileSync(images['v2.1'], Buffer.concat([Buffer.from('takt test image agent-os 2.1.0\n'), Buffer.alloc(2 ** 20 - 31)]));
    for (const [v, file] of [['1.0.0', images.v1], ['2.0.0', images.v2], ['2.1.0', images['v2.1']]] as const) {
      const imp = await cli(['images', 'import', `agent-os@${v}`, file!], 300_000);
      expect(imp.code, imp.stderr).toBe(0);
    }
    const push = await cli(['content', 'push', join(ROOT, 'content', 'image-deploy')]);
    expect(push.code, push.stderr).toBe(0);
    phase('images imported');
  }, 900_000);

  it('deploys v1 to vm-1, then vm-2 (one VM computing at a time): each done in its deployed OS', async () => {
    for (const name of ['vm-1', 'vm-2']) {
      const made = await cli(['machines', 'create', name, '--broker', 'qemu', '--firmware', 'bios', '--memory', '1024', '--disk-size', '1', '--bootenv', 'discovery', '--pipeline', 'image-deploy', '--param', 'image=agent-os@1.0.0', '-o', 'json']);
      expect(made.code, made.stderr + lab.output).toBe(0);
      vms[name] = (JSON.parse(made.stdout) as Machine[])[0]!;
      phase(`${name} created`);
      const m = await settled(name, 900_000);
      expect(m.state, `${m.reason}\n${detail()}`).toBe('done');
      phase(`${name} done with v1`);
      expect(m.boot?.bootenv).toBe('local');
      const jobs = await json<Job[]>(['jobs', 'list', '--machine', name]);
      expect(jobs.map((j) => `${j.task}:${j.state}`)).toEqual(['image-booted:succeeded', 'image-write:succeeded']);
    }
  }, 2_000_000);

  it('rollout of a bad v2 with canary 1: vm-1 is rebuilt and fails at the write; the andon stops before vm-2, which still runs v1', async () => {
    const before = (await writes('vm-1')).length;
    phase('bad v2 rollout created');
    const c = await json<View>(['rollouts', 'create', '--pipeline', 'image-deploy', '--select', 'name=vm-', '--param', 'image=agent-os@2.0.0', '--canary', '1', '--batch', '1', '--max-failures', '0', '--no-wait']);
    const r = await rolloutEnd(c.id, 900_000);
    phase(`bad v2 rollout ${r.state}`);
    expect(r.state, `${r.reason}\n${detail()}`).toBe('stopped');
    expect(r.reason).toMatch(/^andon: 1 failure\(s\) with a budget of 0; vm-1: task 'image-write' failed: image agent-os@2\.0\.0 to \/dev\/vda not written: disk too small/);
    // vm-1 was rebuilt: it went back to discovery (its new write ran there), and is stopped at the write.
    const a = await machine('vm-1');
    expect(a).toMatchObject({ state: 'stopped', stage: 'image-write', boot: expect.objectContaining({ bootenv: 'discovery' }) });
    const w = await writes('vm-1');
    expect(w).toHaveLength(before + 1);
    expect(lab.output).toMatch(/vm-1 is set to boot 'discovery' \(a rebuild\) but its agent runs in 'local': rebooting it/);
    // vm-2: untouched.
    const b = await machine('vm-2');
    expect(b).toMatchObject({ state: 'done', params: expect.objectContaining({ image: 'agent-os@1.0.0' }), boot: expect.objectContaining({ bootenv: 'local' }) });
    expect(await writes('vm-2')).toHaveLength(1);
    expect(r.items.find((i) => i.machineName === 'vm-2')?.state).toBe('pending');
    const rec = await json<{ images: string[] }>(['machines', 'record', 'vm-2']);
    expect(rec.images).toEqual(['agent-os@1.0.0']);
  }, 1_000_000);

  it('rollout of a fixed v2.1: both rebuilt one after the other; build records and --built-with show v2.1; each disk equals the image', async () => {
    phase('v2.1 rollout created');
    const c = await json<View>(['rollouts', 'create', '--pipeline', 'image-deploy', '--select', 'name=vm-', '--param', 'image=agent-os@2.1.0', '--canary', '1', '--batch', '1', '--max-failures', '0', '--no-wait']);
    const r = await rolloutEnd(c.id, 1_800_000);
    phase(`v2.1 rollout ${r.state}`);
    expect(r.state, `${r.reason}\n${detail()}`).toBe('completed');
    for (const name of ['vm-1', 'vm-2']) {
      const m = await machine(name);
      expect(m).toMatchObject({ state: 'done', boot: expect.objectContaining({ bootenv: 'local' }) });
      const rec = await json<{ images: string[] }>(['machines', 'record', name]);
      expect(rec.images).toEqual(['agent-os@2.1.0']);
    }
    const built = await json<Machine[]>(['machines', 'list', '--built-with', 'image:agent-os@2.1.0']);
    expect(built.map((m) => m.name).sort()).toEqual(['vm-1', 'vm-2']);
    // The disks: v2.1, then zeros (the join block was zeroed once used). -U: qemu has them open.
    for (const name of ['vm-1', 'vm-2']) execFileSync('qemu-img', ['compare', '-U', '-q', '-f', 'raw', '-F', 'qcow2', images['v2.1']!, join(lab.data, 'qemu', vms[name]!.id, 'disk.qcow2')], { timeout: 120_000 });
  }, 2_000_000);
});
