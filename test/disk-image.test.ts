/**
 * Bootable disk images built without mounts (src/provision/disk-image.ts): the layout as a table, the
 * refusals, and one real build whose partition table, FAT files and ext4 root are read back with the
 * tools an operator would use (sfdisk, mtools, debugfs). Booting it under SeaBIOS and OVMF is
 * test/provision-disk-image.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDiskImage, diskLayout, DISK_IMAGE_TOOLS } from '../src/provision/disk-image.js';

const MIB = 1 << 20;

describe('diskLayout', () => {
  it.each([
    // boot bytes, root MiB → boot MiB, total MiB
    [0, 16, 33, 50],
    [10 * MIB, 16, 33, 50],
    [40 * MIB, 16, 58, 75],
    [41 * MIB, 100, 60, 161],
  ])('%d bytes of boot files, %d MiB root → %d MiB boot partition, %d MiB disk', (bytes, rootMiB, bootMiB, totalMiB) => {
    const l = diskLayout(bytes, rootMiB);
    expect(l.boot).toEqual({ start: MIB, size: bootMiB * MIB });
    expect(l.root).toEqual({ start: MIB + bootMiB * MIB, size: rootMiB * MIB });
    expect(l.total).toBe(totalMiB * MIB);
  });
});

const haveTools = ['/usr/sbin/sfdisk', '/usr/bin/mcopy', '/usr/sbin/mkfs.vfat', '/usr/bin/syslinux', DISK_IMAGE_TOOLS.mbr, DISK_IMAGE_TOOLS.systemdBoot].every(existsSync);

describe.skipIf(!haveTools)('buildDiskImage', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'takt-diskimg-'));
    // Stand-ins for a kernel and an initrd: the image's structure does not depend on what they hold.
    writeFileSync(join(dir, 'vmlinuz'), Buffer.alloc(3 * MIB, 7));
    writeFileSync(join(dir, 'initrd'), Buffer.alloc(MIB, 9));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('writes an MBR disk: SYSLINUX and systemd-boot on an active FAT partition, a labelled ext4 root', async () => {
    const out = join(dir, 'disk.img');
    const img = await buildDiskImage({ out, kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd'), cmdline: 'console=ttyS0 takt.marker=m1', rootFiles: { 'etc/takt-marker': 'm1\n' } });
    expect(img.size).toBe(50 * MIB);
    expect(img.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(img.recipe.cmdline).toBe('console=ttyS0 takt.marker=m1');

    const table = JSON.parse(execFileSync('sfdisk', ['-J', out], { encoding: 'utf8' })) as { partitiontable: { label: string; partitions: Array<{ start: number; size: number; type: string; bootable?: boolean }> } };
    expect(table.partitiontable.label).toBe('dos');
    expect(table.partitiontable.partitions.map((p) => [p.start * 512, p.size * 512, p.type, p.bootable === true])).toEqual([
      [img.partitions.boot.start, img.partitions.boot.size, 'ef', true],
      [img.partitions.root.start, img.partitions.root.size, '83', false],
    ]);

    const fat = `${out}@@${img.partitions.boot.start}`;
    const env = { ...process.env, MTOOLS_SKIP_CHECK: '1' };
    const listing = execFileSync('mdir', ['-i', fat, '-a', '-b', '-/', '::/'], { encoding: 'utf8', env });
    for (const f of ['::/ldlinux.sys', '::/syslinux.cfg', '::/vmlinuz', '::/initrd.img', '::/EFI/BOOT/BOOTX64.EFI', '::/loader/entries/takt.conf']) expect(listing).toContain(f);
    expect(execFileSync('mtype', ['-i', fat, '::/syslinux.cfg'], { encoding: 'utf8', env })).toContain('APPEND initrd=/initrd.img console=ttyS0 takt.marker=m1');
    expect(execFileSync('mtype', ['-i', fat, '::/loader/entries/takt.conf'], { encoding: 'utf8', env })).toContain('options console=ttyS0 takt.marker=m1');

    // The root partition, cut out, is an ext4 file system labelled takt-root holding the file.
    const part = join(dir, 'root.ext4');
    execFileSync('dd', [`if=${out}`, `of=${part}`, 'bs=1M', `skip=${img.partitions.root.start / MIB}`, `count=${img.partitions.root.size / MIB}`, 'status=none']);
    expect(execFileSync('e2label', [part], { encoding: 'utf8' }).trim()).toBe('takt-root');
    expect(execFileSync('debugfs', ['-R', 'cat /etc/takt-marker', part], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })).toBe('m1\n');
  });

  it('refuses a multi-line command line and a root file outside the root, and leaves no file behind', async () => {
    const out = join(dir, 'bad.img');
    const base = { out, kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd') };
    await expect(buildDiskImage({ ...base, cmdline: 'a\nb' })).rejects.toThrow(/one line/);
    await expect(buildDiskImage({ ...base, cmdline: 'a', rootFiles: { '../etc/x': 'y' } })).rejects.toThrow(/without '\.\.'/);
    await expect(buildDiskImage({ ...base, cmdline: 'a', rootFiles: { '/etc/x': 'y' } })).rejects.toThrow(/relative path/);
    expect(existsSync(out)).toBe(false);
  });
});
