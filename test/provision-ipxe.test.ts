/**
 * Network boot through qemu's iPXE ROM (SeaBIOS, and OVMF for UEFI; virtio-net): qemu's user-mode DHCP hands iPXE an HTTP
 * boot file; that script chains a per-machine script keyed by `${net0/mac}` and `${uuid}` (the SMBIOS
 * UUID set on qemu), which loads Debian's kernel and the busybox initramfs over HTTP; /init then reaches
 * its marker and fetches its agent script. All HTTP is served from this host's loopback.
 * Quiet-machine times (docs/provisioning-vm.md): script fetched ≈ 2.5 s, marker ≈ 9 s; limits are ~4×+.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Vm } from '../src/brokers/qemu/vm.js';
import { SLEDGE_MARKER } from '../src/provision/kernel.js';
import { bootArtifacts, fileServer, HOST_FROM_GUEST, logMilestone, removeVmDirs, vmDir, type FileServer } from './helpers/provision.js';

const MAC = '52:54:00:7a:6b:02';
const UUID = '6c1e3a52-8d0b-4f5e-9a57-1c2d3e4f5a6b';

describe('iPXE network boot (virtio-net, user-mode network)', () => {
  let http: FileServer;
  let vm: Vm | null = null;

  beforeAll(async () => {
    const { kernel, initramfs } = await bootArtifacts();
    http = await fileServer();
    const base = `http://${HOST_FROM_GUEST}:${http.port}`;
    http.route(/^\/boot\.ipxe$/, () => `#!ipxe\nchain ${base}/machine/\${net0/mac}/\${uuid}/\${platform}\n`);
    // iPXE percent-encodes the MAC's colons in the URL.
    http.route(/^\/machine\/([0-9a-fA-F%:]+)\/([0-9a-f-]+)\/(pcbios|efi)$/, (m) =>
      [
        '#!ipxe',
        // initrd=NAME: under UEFI, iPXE hands the kernel's EFI stub the initrd by this name (BIOS ignores it).
        `kernel ${base}/vmlinuz initrd=sledge.cpio.gz console=ttyS0 quiet panic=-1 takt.url=${base}/agent/${decodeURIComponent(m[1]!)}`,
        `initrd ${base}/sledge.cpio.gz`,
        'boot',
        '',
      ].join('\n'),
    );
    http.route(/^\/vmlinuz$/, { file: kernel.vmlinuz });
    http.route(/^\/sledge\.cpio\.gz$/, { file: initramfs.path });
    http.route(/^\/agent\/([0-9a-f:]+)$/, (m) => `echo "TAKT-AGENT: booted as ${m[1]}"\n`);
  }, 600_000);

  afterAll(async () => {
    await vm?.kill();
    await http?.close();
    removeVmDirs();
  });

  // UEFI: OVMF runs the iPXE EFI driver from the same NIC ROM; ≈3 s slower on a quiet machine.
  it.each([
    ['bios', 'pcbios'],
    ['uefi', 'efi'],
  ] as const)('%s: chains the per-machine script by MAC and SMBIOS UUID, boots the kernel and reaches the marker', async (firmware, platform) => {
    await vm?.kill();
    const start = http.requests.length;
    vm = await Vm.start({
      name: `ipxe-${firmware}`,
      dir: vmDir('ipxe'),
      firmware,
      smbios: { uuid: UUID, serial: 'TAKT-TEST-0002' },
      nic: { model: 'virtio-net-pci', mac: MAC, net: { kind: 'user', bootfile: `http://${HOST_FROM_GUEST}:${http.port}/boot.ipxe` } },
    });
    const marker = await vm.waitForSerial(new RegExp(SLEDGE_MARKER), 90_000, { failOn: /No bootable device|Could not boot image|Kernel panic/ });
    logMilestone(vm, 'init marker (via iPXE)', marker.atMs);
    const agent = await vm.waitForSerial(/TAKT-AGENT: booted as (\S+)/, 60_000);
    logMilestone(vm, 'agent script ran', agent.atMs);
    expect(agent.groups[0]).toBe(MAC);
    expect(http.requests.slice(start, start + 4).map(decodeURIComponent)).toEqual(['/boot.ipxe', `/machine/${MAC}/${UUID}/${platform}`, '/vmlinuz', '/sledge.cpio.gz']);
  }, 300_000);
});
