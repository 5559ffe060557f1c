/**
 * The test image deploys are proved with (src/provision/disk-image.ts markerImage) boots from its own disk
 * under SeaBIOS (SYSLINUX from the MBR's active partition) and under OVMF (systemd-boot as the removable
 * media path EFI/BOOT/BOOTX64.EFI) — one image for both, built without mounts. Real qemu, one VM at a time,
 * no network: the disk is the image converted to qcow2 (what a deploy's `qemu-img compare` checks against).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Vm, type Firmware } from '../src/brokers/qemu/vm.js';
import { IMAGE_MARKER, markerImage, type DiskImage } from '../src/provision/disk-image.js';
import { debianKernel } from '../src/provision/kernel.js';

const QEMU = '/usr/bin/qemu-system-x86_64';

describe.skipIf(!existsSync(QEMU))('a deployable image boots from disk (BIOS and UEFI)', () => {
  let dir: string;
  let img: DiskImage;
  let marker: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'takt-pdisk-'));
    marker = `m-${process.pid}-${Date.now().toString(36)}`;
    img = await markerImage({ kernel: await debianKernel(), out: join(dir, 'marker.img'), marker });
  }, 600_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it.each<Firmware>(['bios', 'uefi'])('%s: the firmware boots the image and its OS prints the marker', async (firmware) => {
    const vmDir = join(dir, firmware);
    mkdirSync(vmDir);
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', img.path, join(vmDir, 'disk.qcow2')]);
    const vm = await Vm.start({ name: `pdisk-${firmware}`, dir: vmDir, firmware, memoryMiB: 256, diskGiB: 1, boot: 'disk' });
    try {
      const seen = await vm.waitForSerial(new RegExp(`${IMAGE_MARKER} (\\S+)`), 300_000, { failOn: /No bootable device|Kernel panic|Boot Failed/ });
      expect(seen.groups[0]).toBe(marker);
    } finally {
      await vm.kill();
    }
    // Booting did not write to the disk: it still equals the image.
    execFileSync('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'qcow2', img.path, join(vmDir, 'disk.qcow2')]);
  }, 420_000);
});
