/**
 * A BIOS deploy under real qemu (issue #14, docs/provisioning.md "Deploying an image"): `takt serve
 * --provision … --dhcp full --qemu-bridge tkdp0` in a network namespace `tkdp-…` (bridge tkdp0 at
 * 10.241.N.1/24); the discovery bootenv is built and installed; the marker test image
 * (src/provision/disk-image.ts markerImage) is imported into the catalog and content/image-deploy pushed.
 * `machines create vm-1 --broker qemu --firmware bios --bootenv discovery --pipeline image-deploy --param
 * image=marker@1.0.0` → the VM boots discovery over the network and registers as vm-1 → its agent runs
 * `image-write`: downloads the image over HTTPS, writes /dev/vda, verifies its sha256, leaves the join block
 * at the disk's end → `takt-power next-boot disk --persistent` and `cycle` through QMP → SeaBIOS boots the
 * disk, and the image's own OS prints its marker on the serial console. Then the VM is stopped and its
 * disk compared with the image: the join block is at the end (decoded: for vm-1), and with it zeroed,
 * `qemu-img compare` says the disk equals the image. The marker OS has no agent, so the pipeline waits at
 * `image-installed` (no agent): that stage is what the join tests and a real OS image cover.
 * One VM; TAKT_QEMU_ACCEL=tcg; bounds about 4× what a loaded machine took.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, openSync, readFileSync, closeSync, readSync, statSync, writeSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuPidOf } from '../src/brokers/qemu/vm.js';
import { IMAGE_JOB_OUTPUT } from '../src/model/image.js';
import { decodeJoinBlock, JOIN_BLOCK_SIZE } from '../src/model/joinblock.js';
import type { Job, Machine } from '../src/model/machine.js';
import { IMAGE_MARKER, markerImage, type DiskImage } from '../src/provision/disk-image.js';
import { debianKernel } from '../src/provision/kernel.js';
import { BootLab, until } from './helpers/boot-lab.js';
import { ROOT } from './helpers/endpoint.js';
import { bootArtifacts } from './helpers/provision.js';

const QEMU = '/usr/bin/qemu-system-x86_64';

describe.skipIf(!existsSync(QEMU))('image-deploy on a BIOS VM: discovery → image written and verified → boots its disk → the disk equals the image', () => {
  // Short names: the VM's QMP socket path lives under the data dir (108-byte limit).
  const lab = new BootLab({ netnsPrefix: 'tkdp-', subnet: '10.241', dirPrefix: 'tkdp-', dataName: 'd', bridgeName: 'tkdp0', cliTimeoutMs: 120_000 });
  const cli = (args: string[], timeoutMs?: number) => lab.cli(args, timeoutMs);
  const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');
  let img: DiskImage;
  let marker: string;
  let serialLog = '';
  const console_ = () => (serialLog && existsSync(serialLog) ? readFileSync(serialLog, 'utf8').slice(-4000) : '(no serial log)');

  beforeAll(async () => {
    await bootArtifacts();
    lab.open();
    marker = `dp-${process.pid}-${Date.now().toString(36)}`;
    img = await markerImage({ kernel: await debianKernel(), out: join(lab.dir, 'marker.img'), marker });
    await lab.serveVms();
  }, 900_000);

  afterAll(() => lab.close(), 60_000);

  it('builds and installs the discovery bootenv; imports the image; pushes content/image-deploy', async () => {
    const r = await cli(['bootenv', 'build', 'discovery', '--install', '-o', 'json'], 540_000);
    expect(r.code, r.stderr).toBe(0);
    await until(() => ((lab.output.match(/boot: kept bootenv 'discovery'/g) ?? []).length >= 2 ? true : undefined), 180_000, 'the discovery artifacts to be kept', () => lab.output);
    const imp = await cli(['images', 'import', 'marker@1.0.0', img.path]);
    expect(imp.code, imp.stderr).toBe(0);
    const push = await cli(['content', 'push', join(ROOT, 'content', 'image-deploy')]);
    expect(push.code, push.stderr).toBe(0);
  }, 900_000);

  it('deploys: written, verified, join block left, power-cycled into the disk, the marker boots; the disk equals the image', async () => {
    const t0 = Date.now();
    const made = await cli(['machines', 'create', 'vm-1', '--broker', 'qemu', '--firmware', 'bios', '--memory', '1024', '--disk-size', '1', '--bootenv', 'discovery', '--pipeline', 'image-deploy', '--param', 'image=marker@1.0.0', '-o', 'json']);
    expect(made.code, made.stderr + lab.output).toBe(0);
    const vm = (JSON.parse(made.stdout) as Machine[])[0]!;
    const vmDir = join(lab.data, 'qemu', vm.id);
    serialLog = join(vmDir, 'serial.log');
    const detail = () => `${lab.output}\n--- serial ---\n${console_()}`;
    const at = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

    const registered = await until(() => (/discovery: vm-1 registered/.test(lab.output) ? Date.now() - t0 : undefined), 300_000, 'vm-1 to register from discovery', detail);
    // The write job ends (succeeded, or failed naming why).
    const job = await until(async () => {
      const r = await cli(['jobs', 'list', '--machine', 'vm-1', '-o', 'json']);
      const j = (JSON.parse(r.stdout || '[]') as Job[]).find((x) => x.task === 'image-write' && x.state !== 'running');
      return j ?? undefined;
    }, 300_000, 'the image-write job to end', detail);
    const writtenAt = Date.now() - t0;
    expect(job.state, `${job.reason}\n${detail()}`).toBe('succeeded');
    expect(job.outputs[IMAGE_JOB_OUTPUT]).toEqual({ name: 'marker', version: '1.0.0', sha256: img.sha256, size: img.size, target: '/dev/vda' });
    const log = (await cli(['jobs', 'log', job.id])).stdout;
    expect(log).toMatch(/takt-image: marker@1\.0\.0 written to \/dev\/vda and verified/);
    expect(log).toMatch(/takt-image: join block written at the end of \/dev\/vda/);

    // Power-cycled through QMP into its disk: the image's OS prints its marker.
    const booted = await until(() => (existsSync(serialLog) && readFileSync(serialLog, 'utf8').includes(`${IMAGE_MARKER} ${marker}`) ? Date.now() - t0 : undefined), 300_000, 'the deployed OS to print its marker', detail);
    const after = JSON.parse((await cli(['jobs', 'get', job.id, '-o', 'json'])).stdout) as Job;
    expect(after.power).toMatch(/^next-boot disk persistent \(qmp\), cycle$/);
    console.log(`[provision] image-deploy vm-1 (BIOS, ${(img.size / 2 ** 20).toFixed(0)} MiB image): registered at ${at(registered)}, written+verified by ${at(writtenAt)}, marker from disk at ${at(booted)} after create (load ${load()})`);

    // The machine went on to the installed-OS stage (whose agent the marker OS does not have).
    const m = JSON.parse((await cli(['machines', 'get', 'vm-1', '-o', 'json'])).stdout) as Machine;
    expect(m.stage).toBe('image-installed');
    const rec = JSON.parse((await cli(['machines', 'record', 'vm-1', '-o', 'json'])).stdout) as { images: string[] };
    expect(rec.images).toEqual(['marker@1.0.0']);

    // The disk: stop the VM (the endpoint first, or its supervisor starts it again), then compare.
    await lab.stopServe();
    const killed = lab.killBrokerVms();
    await until(() => (qemuPidOf(vmDir) === null ? true : undefined), 30_000, `qemu to exit (killed ${killed.join(', ') || 'none'})`, detail);
    const raw = join(lab.dir, 'vm-1-disk.raw');
    // -U (force share): a killed qemu's image lock may outlive it for a moment; nothing writes the disk now.
    execFileSync('qemu-img', ['convert', '-q', '-U', '-f', 'qcow2', '-O', 'raw', join(vmDir, 'disk.qcow2'), raw], { timeout: 120_000 });
    const size = statSync(raw).size;
    const fd = openSync(raw, 'r+');
    try {
      const block = Buffer.alloc(JOIN_BLOCK_SIZE);
      readSync(fd, block, 0, JOIN_BLOCK_SIZE, size - JOIN_BLOCK_SIZE);
      const decoded = decodeJoinBlock(block);
      expect(decoded).toMatchObject({ machine: vm.id, api: expect.stringMatching(/^https:\/\//) });
      // Zeroed, as the deployed OS does once it has joined: the rest of the disk must be the image.
      writeSync(fd, Buffer.alloc(JOIN_BLOCK_SIZE), 0, JOIN_BLOCK_SIZE, size - JOIN_BLOCK_SIZE);
    } finally {
      closeSync(fd);
    }
    execFileSync('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', img.path, raw], { timeout: 120_000 });
  }, 1_200_000);
});
