/**
 * UEFI network boot through takt alone, the path of a real server's vendor PXE ROM (issue #13): a UEFI
 * (OVMF) VM whose virtio NIC has no iPXE ROM (qemu `romfile=`), so EDK2's own PXE client boots →
 * takt's DHCP (`--dhcp full`) sees arch 7 and answers TFTP `ipxe.efi` (Debian's `ipxe` package) → takt's
 * TFTP → `ipxe.efi` asks DHCP again as iPXE → takt's /boot/ipxe with the VM's MAC and SMBIOS UUID and
 * platform `efi` → the bootenv's kernel and initrd from takt's /boot/files → the initramfs' marker on serial.
 * Namespace `tkd-<id>` (bridge br0 at 10.219.N.1/24). Quiet-machine figures (provisioning facts §1): OVMF's
 * PXE DISCOVER ≈ 3 s, iPXE configured ≈ 13 s (ipxe.efi ≈ 4 s to start under TCG), marker ≈ 19 s; the
 * limits are more than 4x that.
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Vm } from '../src/brokers/qemu/vm.js';
import { SLEDGE_MARKER } from '../src/provision/kernel.js';
import { BootLab, until } from './helpers/boot-lab.js';
import { writePack } from './helpers/endpoint.js';
import { bootArtifacts, logMilestone, vmDir } from './helpers/provision.js';

const MAC = '52:54:00:7a:6d:31';
const UUID = '6b1d3e52-8a0c-4f5e-9b27-1c2d3e4f5a6b';

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

describe('UEFI network boot: OVMF PXE → takt DHCP (arch 7) → TFTP ipxe.efi → iPXE → takt (netns, virtio-net, no NIC ROM)', () => {
  const lab = new BootLab({ netnsPrefix: 'tkd-u', subnet: '10.219', dirPrefix: 'takt-uefi-' });
  const { netns, prefix } = lab;
  let vm: Vm | null = null;
  /** A takt CLI command inside the namespace (the API listens on its loopback). */
  const cli = (args: string[]) => lab.cli(args);

  beforeAll(async () => {
    await bootArtifacts();
    lab.open();
    await lab.serve(['--listen', '127.0.0.1:0', '--lease', '5s', '--provision', `${prefix}.1/24`, '--dhcp', 'full', '--dhcp-range', `${prefix}.100-${prefix}.150`, '--boot-port', '0']);
  }, 600_000);

  afterAll(async () => {
    await vm?.kill();
    await lab.stop();
  });

  it('PXE-boots a UEFI machine: arch 7 gets ipxe.efi over TFTP, iPXE fetches its script, the kernel boots', async () => {
    const { kernel, initramfs } = await bootArtifacts();
    const agent = join(lab.dir, 'agent.sh');
    writeFileSync(agent, 'echo "TAKT-AGENT: booted through takt on UEFI"\n');
    writePack(join(lab.dir, 'pack'), {
      'pack.yaml': 'name: metal\nversion: 1.0.0\n',
      'bootenvs/sledge.yaml': [
        'name: sledge',
        'firmware: [uefi]',
        `kernel: { name: vmlinuz, path: ${kernel.vmlinuz}, sha256: ${sha256(kernel.vmlinuz)} }`,
        `initrds:\n  - { name: sledge.cpio.gz, path: ${initramfs.path}, sha256: ${sha256(initramfs.path)} }`,
        `files:\n  - { name: agent, path: ${agent}, sha256: ${sha256(agent)} }`,
        // initrd=NAME: iPXE hands the kernel's EFI stub the initrd by this name.
        'cmdline: initrd=sledge.cpio.gz console=ttyS0 quiet panic=-1 takt.url={{ boot.files.agent }}',
        '',
      ].join('\n'),
    });
    const inst = await cli(['content', 'install', join(lab.dir, 'pack')]);
    expect(inst.code, inst.stderr).toBe(0);
    const made = await cli(['machines', 'create', 'uefi-1', '--environment', 'metal', '--mac', MAC, '--uuid', UUID, '--firmware', 'uefi', '--bootenv', 'sledge']);
    expect(made.code, made.stderr).toBe(0);
    await until(() => ((lab.output.match(/boot: kept bootenv 'sledge'/g) ?? []).length >= 3 ? true : undefined), 120_000, 'the bootenv artifacts to be kept', () => lab.output);

    vm = await Vm.start({
      name: 'uefi-pxe',
      dir: vmDir('uefi-pxe'),
      firmware: 'uefi',
      smbios: { uuid: UUID, serial: 'TAKT-TEST-0022' },
      nic: { model: 'virtio-net-pci', mac: MAC, rom: 'none', net: { kind: 'tap', netns, bridge: 'br0', tap: 'tap0' } },
    });
    // The endpoint's DHCP, TFTP and boot lines go with a failure: they say which step of the chain broke.
    const trail = () => lab.output.split('\n').filter((l) => /dhcp:|tftp:|boot:/.test(l)).slice(-40).join('\n');
    const configured = vm.waitForSerial(/Configuring \(net0[^)]*\)[. ]*ok/, 480_000);
    configured.catch(() => undefined);
    const marker = await vm.waitForSerial(new RegExp(SLEDGE_MARKER), 480_000, { failOn: /Kernel panic|Shell>|PXE-E\d+/ }).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}\n--- takt serve ---\n${trail()}`);
    });
    logMilestone(vm, `ipxe.efi configured (router advertisements ${process.env.TAKT_ROUTER_ADVERTS ?? 'on'})`, (await configured).atMs);
    logMilestone(vm, 'init marker (OVMF PXE → ipxe.efi → takt)', marker.atMs);
    const ran = await vm.waitForSerial(/TAKT-AGENT: booted through takt on UEFI/, 120_000);
    logMilestone(vm, 'agent script (a takt boot file) ran', ran.atMs);

    // OVMF's PXE (arch 7, a plain PXE ROM) was offered ipxe.efi over TFTP, and TFTP sent it.
    expect(lab.output).toMatch(/dhcp: offer uefi-1: address 10\.219\.\d+\.\d+, arch 7, boot tftp:ipxe\.efi/);
    expect(lab.output).toMatch(/dhcp: ack uefi-1: address 10\.219\.\d+\.\d+, arch 7, boot tftp:ipxe\.efi/);
    expect(lab.output).toMatch(/tftp: done ipxe\.efi/);
    // ipxe.efi then asked as iPXE (arch 7 still) and was sent to its script.
    expect(lab.output).toMatch(/dhcp: ack uefi-1: address [0-9.]+, arch 7, boot http:\/\/[^ ]*\/boot\/ipxe\?mac=\$\{net0\/mac\}/);
    // The script request carried the VM's MAC, SMBIOS UUID and platform efi.
    const served = lab.output.split('\n').find((l) => l.includes('boot: uefi-1 gets bootenv sledge')) ?? '';
    expect(served, lab.output).toContain(`mac=${MAC}`);
    expect(served).toContain(`uuid=${UUID}`);
    expect(served).toContain('platform=efi');

    // The lease shows the firmware's architecture (kept when the initramfs' udhcpc, which sends none, renewed it).
    const leases = (await lab.get(`${lab.endpoint}/api/v1/dhcp/leases`, { authorization: `Bearer ${lab.token}` })).body;
    const items = (JSON.parse(leases) as { items: Array<{ mac: string; state: string; arch?: number; machine?: string }> }).items;
    expect(items).toContainEqual(expect.objectContaining({ mac: MAC, state: 'bound', arch: 7, machine: 'uefi-1' }));
  }, 900_000);
});
