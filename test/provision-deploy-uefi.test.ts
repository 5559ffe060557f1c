/**
 * An image deploy on a UEFI VM end to end (issue #14; docs/provisioning.md "UEFI machines", "Deploying an
 * image"): `takt serve --provision … --dhcp full --qemu-bridge tkru0` in a network namespace `tkru-…`; the
 * discovery bootenv built and installed, and the same agent OS as a disk image imported as
 * `agent-os@1.0.0`; content/image-deploy pushed. A qemu broker VM with OVMF (`--firmware uefi`) boots
 * discovery over the network (OVMF and the NIC's iPXE EFI driver → takt's DHCP, arch 7 → takt's script), its agent writes the image
 * to /dev/vda, and `takt-power next-boot disk --persistent` + `cycle` switch the boot order through QMP
 * (bootindex: the disk first) — on OVMF, iPXE's `exit` does not fall through to the disk, so the power
 * driver's boot order is what takes it there. OVMF boots the disk (systemd-boot, the removable-media
 * path), the deployed OS joins as the machine and runs `image-installed` (image-booted) there: done. The
 * disk then equals the image (`qemu-img compare`; the join block was zeroed once used).
 * Phases are logged in seconds from `machines create` with the load average. TAKT_QEMU_ACCEL=tcg.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, Machine } from '../src/model/machine.js';
import { BootLab, until } from './helpers/boot-lab.js';
import { ROOT } from './helpers/endpoint.js';

const QEMU = '/usr/bin/qemu-system-x86_64';

describe.skipIf(!existsSync(QEMU) || !existsSync('/usr/share/OVMF/OVMF_CODE_4M.fd'))('image-deploy on a UEFI VM: discovery over OVMF PXE → image written → boot order switched to the disk through QMP → the deployed OS finishes the pipeline', () => {
  const lab = new BootLab({ netnsPrefix: 'tkru-', subnet: '10.244', dirPrefix: 'tkru-', dataName: 'd', bridgeName: 'tkru0', cliTimeoutMs: 120_000 });
  const cli = (args: string[], timeoutMs?: number) => lab.cli(args, timeoutMs);
  const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');
  let image = '';
  let serialLog = '';
  const detail = () => `${lab.output.slice(-8000)}\n--- serial ---\n${serialLog && existsSync(serialLog) ? readFileSync(serialLog, 'utf8').slice(-4000) : '(no serial log)'}`;

  beforeAll(async () => {
    await lab.startVms();
  }, 600_000);

  afterAll(() => lab.close(), 60_000);

  it('builds discovery and the agent OS image; installs the one, imports the other; pushes content/image-deploy', async () => {
    image = join(lab.dir, 'agent-os.img');
    const r = await cli(['bootenv', 'build', 'discovery', '--install', '--disk-image', image, '-o', 'json'], 540_000);
    expect(r.code, r.stderr).toBe(0);
    await until(() => ((lab.output.match(/boot: kept bootenv 'discovery'/g) ?? []).length >= 2 ? true : undefined), 180_000, 'the discovery artifacts to be kept', () => lab.output);
    const imp = await cli(['images', 'import', 'agent-os@1.0.0', image], 300_000);
    expect(imp.code, imp.stderr).toBe(0);
    const push = await cli(['content', 'push', join(ROOT, 'content', 'image-deploy')]);
    expect(push.code, push.stderr).toBe(0);
  }, 900_000);

  it('uefi-1: OVMF PXE → discovery → written → disk first through QMP → the deployed OS runs image-installed → done; the disk equals the image', async () => {
    const t0 = Date.now();
    const at = () => `${((Date.now() - t0) / 1000).toFixed(1)} s`;
    const made = await cli(['machines', 'create', 'uefi-1', '--broker', 'qemu', '--firmware', 'uefi', '--memory', '1024', '--disk-size', '1', '--bootenv', 'discovery', '--pipeline', 'image-deploy', '--param', 'image=agent-os@1.0.0', '-o', 'json']);
    expect(made.code, made.stderr + lab.output).toBe(0);
    const vm = (JSON.parse(made.stdout) as Machine[])[0]!;
    const vmDir = join(lab.data, 'qemu', vm.id);
    serialLog = join(vmDir, 'serial.log');
    const seen = (re: RegExp, ms: number, what: string) => until(() => (existsSync(serialLog) && re.test(readFileSync(serialLog, 'utf8')) ? at() : undefined), ms, what, detail, 1000);

    // The firmware is UEFI (arch 7): the NIC's iPXE EFI driver, or OVMF's own PXE then TFTP ipxe.efi.
    const efi = await until(() => (/dhcp: offer uefi-1: .*arch 7/.test(lab.output) ? at() : undefined), 300_000, 'the UEFI firmware to ask DHCP (arch 7)', detail, 1000);
    const registered = await seen(/TAKT-DISCOVERY: registered with/, 600_000, 'uefi-1 to register from discovery');
    const fromDisk = await seen(/TAKT-DISCOVERY: agent starting \(deployed\)/, 900_000, 'uefi-1 to boot the deployed OS from its disk');
    const done = await until(async () => {
      const m = JSON.parse((await cli(['machines', 'get', 'uefi-1', '-o', 'json'])).stdout) as Machine;
      return m.state === 'done' || m.state === 'stopped' ? m : undefined;
    }, 600_000, 'uefi-1 to be done', detail, 2000);
    const doneAt = at();
    expect(done.state, `${done.reason}\n${detail()}`).toBe('done');
    console.log(`[provision] deploy-uefi uefi-1: first DHCP offer (arch 7) at ${efi}, registered at ${registered}, deployed OS's agent starting at ${fromDisk}, done at ${doneAt} after create (load ${load()})`);

    const jobs = JSON.parse((await cli(['jobs', 'list', '--machine', 'uefi-1', '-o', 'json'])).stdout) as Job[];
    // Newest first: the installed-OS check ran in the OS booted from the disk.
    expect(jobs.map((j) => `${j.task}:${j.state}`)).toEqual(['image-booted:succeeded', 'image-write:succeeded']);
    const write = jobs[1]!;
    // The boot order went through the power driver: the disk first (QMP bootindex), then a reset.
    expect(write.power).toMatch(/^next-boot disk persistent \(qmp\), cycle$/);
    expect(done.boot?.bootenv).toBe('local');
    const rec = JSON.parse((await cli(['machines', 'record', 'uefi-1', '-o', 'json'])).stdout) as { images: string[] };
    expect(rec.images).toEqual(['agent-os@1.0.0']);
    // OVMF booted the disk without going back to the network: one discovery boot (before the write), and
    // network first would have booted discovery again (the machine was still set to boot it).
    const console_ = readFileSync(serialLog, 'utf8');
    expect(console_.match(/TAKT-DISCOVERY: agent starting \((discover|deployed)\)/g)).toEqual(['TAKT-DISCOVERY: agent starting (discover)', 'TAKT-DISCOVERY: agent starting (deployed)']);

    // The disk is the image, then zeros (the join block was zeroed once used). -U: qemu has it open.
    execFileSync('qemu-img', ['compare', '-U', '-q', '-f', 'raw', '-F', 'qcow2', image, join(vmDir, 'disk.qcow2')], { timeout: 120_000 });
  }, 2_000_000);
});
