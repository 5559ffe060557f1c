/**
 * Bootable raw disk images built without mounting anything (no root, no loop devices): the layout the
 * provisioning facts measured (provisioning-facts.md §3 "Tiny image"), one image that boots under BIOS and
 * UEFI alike.
 *
 *   sector 0        SYSLINUX's `mbr.bin` (boots the active partition) and an MBR partition table
 *   partition 1     FAT (type 0xEF, active): SYSLINUX (`ldlinux.sys`, `syslinux.cfg`) for BIOS, and
 *                   systemd-boot as the removable-media path `EFI/BOOT/BOOTX64.EFI` with one loader entry
 *                   for UEFI (UEFI 2.10 §3.5.1.1); both load the same `vmlinuz` and `initrd.img` with the
 *                   same command line
 *   partition 2     ext4 labelled `takt-root` (`mke2fs -d`: filled from a directory), the root file system
 *
 * Tools (Debian packages): sfdisk (fdisk), mkfs.vfat (dosfstools), syslinux + mtools (syslinux,
 * syslinux-common, mtools), mke2fs (e2fsprogs), systemd-boot's EFI binary (systemd-boot-efi).
 *
 * Reproducibility: the FAT volume id and the ext4 UUID and hash seed are derived from the inputs, and
 * mke2fs gets a fixed clock (E2FSPROGS_FAKE_TIME); mtools and SYSLINUX still write the build time into
 * FAT directory entries, so two builds of the same inputs differ in a few bytes. The recipe (inputs and
 * their digests) is what is reproducible; `DiskImage.recipe` records it.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, lstatSync, mkdirSync, mkdtempSync, openSync, closeSync, ftruncateSync, writeSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { TaktError } from '../model/errors.js';
import { writeNewc, type CpioEntry } from './cpio.js';
import { busyboxEntries } from './kernel.js';

const run = promisify(execFile);

/** Where Debian installs the pieces (overridable for other distributions). */
export const DISK_IMAGE_TOOLS = {
  mbr: '/usr/lib/syslinux/mbr/mbr.bin',
  systemdBoot: '/usr/lib/systemd/boot/efi/systemd-bootx64.efi',
};

/** What `buildDiskImage` is given. */
export interface DiskImageInput {
  /** Path of the raw image to write (replaced atomically). */
  out: string;
  /** The kernel (bzImage) to boot. */
  kernel: string;
  /** The initrd to boot with it. */
  initrd: string;
  /** The kernel command line, e.g. `console=ttyS0 quiet takt.marker=abc`. */
  cmdline: string;
  /** Files of the root file system (partition 2), by path relative to its root. Default: none. */
  rootFiles?: Record<string, string | Buffer>;
  /**
   * A directory to fill the root file system from instead (`mke2fs -d DIR`: every file, link, device
   * node and FIFO with its mode, owner and times), e.g. a debootstrap tree. Not with `rootFiles`.
   */
  rootDir?: string;
  /**
   * Size of the root partition in MiB. Default 16; with `rootDir`, the tree's size (whole 4 KiB blocks)
   * plus a quarter and 64 MiB for the file system's own structures.
   */
  rootMiB?: number;
}

/** A built image. */
export interface DiskImage {
  /** Absolute path of the raw image. */
  path: string;
  /** Its size in bytes (a whole number of MiB). */
  size: number;
  /** Its SHA-256 (hex). */
  sha256: string;
  /** Partition layout in bytes from the start of the disk. */
  partitions: { boot: { start: number; size: number }; root: { start: number; size: number } };
  /** What it was built from: the inputs' digests and the command line (the reproducible part). */
  recipe: { kernel: string; initrd: string; cmdline: string; rootFiles: Record<string, string>; rootDir?: string };
}

/** What `treeDigest` reads from a directory. */
export interface TreeDigest {
  /** SHA-256 (hex) of the tree's listing: each entry's path, type, mode, owner and content or target. */
  sha256: string;
  /** Bytes it takes in 4 KiB blocks (files' contents, directories and links one block each). */
  bytes: number;
  /** Entries (files, directories, links, nodes) below the root. */
  entries: number;
}

/**
 * A digest of a directory tree as `mke2fs -d` copies it: entries sorted by path, each as
 * `path, type, mode, uid, gid` and the file's SHA-256, the link's target or the device number.
 * Times are left out (debootstrap's differ on every run), so equal trees give equal digests.
 * @throws TaktError bad_request when `dir` is not a directory.
 */
export function treeDigest(dir: string): TreeDigest {
  const st0 = lstatSync(dir, { throwIfNoEntry: false });
  if (!st0?.isDirectory()) throw new TaktError('bad_request', `root directory ${dir}: not a directory`);
  const h = createHash('sha256');
  const BLOCK = 4096;
  let bytes = BLOCK;
  let entries = 0;
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(join(dir, r));
      entries++;
      const type = st.isDirectory() ? 'd' : st.isFile() ? 'f' : st.isSymbolicLink() ? 'l' : st.isCharacterDevice() ? 'c' : st.isBlockDevice() ? 'b' : st.isFIFO() ? 'p' : 's';
      let what = '';
      if (type === 'f') {
        what = createHash('sha256').update(readFileSync(join(dir, r))).digest('hex');
        bytes += Math.ceil(st.size / BLOCK) * BLOCK;
      } else if (type === 'l') {
        what = readlinkSync(join(dir, r));
        bytes += BLOCK;
      } else if (type === 'c' || type === 'b') {
        what = String(st.rdev);
      } else if (type === 'd') {
        bytes += BLOCK;
      }
      h.update(`${r}\0${type}\0${(st.mode & 0o7777).toString(8)}\0${st.uid}\0${st.gid}\0${what}\n`);
      if (type === 'd') walk(r);
    }
  };
  walk('');
  return { sha256: h.digest('hex'), bytes, entries };
}

const MIB = 1 << 20;
const SECTOR = 512;

async function tool(cmd: string, args: string[], pkg: string, env?: NodeJS.ProcessEnv): Promise<string> {
  try {
    return (await run(cmd, args, { timeout: 600_000, maxBuffer: 8 << 20, ...(env ? { env: { ...process.env, ...env } } : {}) })).stdout;
  } catch (err) {
    const e = err as { code?: string; stderr?: string; message: string };
    if (e.code === 'ENOENT') throw new TaktError('unavailable', `building a disk image needs '${cmd}' (Debian: apt-get install ${pkg})`);
    throw new TaktError('unavailable', `building a disk image: ${cmd} ${args.join(' ')}: ${(e.stderr || e.message).trim().split('\n').slice(-3).join(' ')}`);
  }
}

function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path, { highWaterMark: MIB })
      .on('data', (c) => h.update(c))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

/**
 * The partition layout for a boot partition holding `bootBytes` of files and a root of `rootMiB`: both
 * aligned to 1 MiB (the first starts at sector 2048, as fdisk does), the boot partition with 25 % and at
 * least 8 MiB of room for the file system's own structures, and at least 33 MiB so mkfs.vfat can make
 * FAT32 of it (UEFI firmware reads FAT12/16/32; SYSLINUX boots all three).
 */
export function diskLayout(bootBytes: number, rootMiB: number): DiskImage['partitions'] & { total: number } {
  const bootMiB = Math.max(33, Math.ceil((bootBytes * 1.25) / MIB) + 8);
  const boot = { start: MIB, size: bootMiB * MIB };
  const root = { start: boot.start + boot.size, size: rootMiB * MIB };
  return { boot, root, total: root.start + root.size };
}

/** The kernel command line as SYSLINUX and systemd-boot take it (one line; no newline or NUL). */
function checkCmdline(cmdline: string): string {
  if (/[\n\r\0]/.test(cmdline)) throw new TaktError('bad_request', 'the kernel command line of a disk image must be one line');
  return cmdline.trim();
}

/**
 * Builds a raw disk image that boots `kernel` + `initrd` with `cmdline` under SeaBIOS (SYSLINUX) and OVMF
 * (systemd-boot), with a root partition filled from `rootFiles` or the directory `rootDir`. Nothing is mounted. The image is written
 * beside `out` and renamed into place, so `out` is either the old file or the whole new one.
 * @throws TaktError unavailable naming the Debian package when a tool is missing, or the tool's error;
 *   TaktError bad_request for a multi-line command line, a root file path that climbs out (`..`), both
 *   `rootFiles` and `rootDir`, a `rootDir` that is not a directory or a `rootMiB` too small for it.
 */
export async function buildDiskImage(input: DiskImageInput): Promise<DiskImage> {
  for (const f of [DISK_IMAGE_TOOLS.mbr]) if (!existsSync(f)) throw new TaktError('unavailable', `building a disk image needs ${f} (Debian: apt-get install syslinux-common)`);
  if (!existsSync(DISK_IMAGE_TOOLS.systemdBoot)) throw new TaktError('unavailable', `building a disk image needs ${DISK_IMAGE_TOOLS.systemdBoot} (Debian: apt-get install systemd-boot-efi)`);
  const cmdline = checkCmdline(input.cmdline);
  const kernelSize = statSync(input.kernel).size;
  const initrdSize = statSync(input.initrd).size;
  const efi = readFileSync(DISK_IMAGE_TOOLS.systemdBoot);
  const rootFiles = input.rootFiles ?? {};
  for (const p of Object.keys(rootFiles)) {
    if (p.startsWith('/') || p.split('/').includes('..') || p === '') throw new TaktError('bad_request', `root file '${p}': give a relative path without '..'`);
  }
  if (input.rootDir !== undefined && Object.keys(rootFiles).length > 0) throw new TaktError('bad_request', 'give the root file system as rootFiles or as rootDir, not both');
  const tree = input.rootDir !== undefined ? treeDigest(input.rootDir) : null;
  const rootMiB = input.rootMiB ?? (tree ? Math.ceil((tree.bytes * 1.25) / MIB) + 64 : 16);
  if (!Number.isInteger(rootMiB) || rootMiB < 1) throw new TaktError('bad_request', `root partition size ${rootMiB} MiB: give a whole number of MiB, at least 1`);
  if (tree && rootMiB * MIB < tree.bytes) throw new TaktError('bad_request', `root partition of ${rootMiB} MiB cannot hold ${input.rootDir} (${Math.ceil(tree.bytes / MIB)} MiB in 4 KiB blocks)`);
  const layout = diskLayout(kernelSize + initrdSize + efi.length, rootMiB);

  const recipe: DiskImage['recipe'] = {
    kernel: await sha256File(input.kernel),
    initrd: await sha256File(input.initrd),
    cmdline,
    rootFiles: Object.fromEntries(Object.entries(rootFiles).sort(([a], [b]) => a.localeCompare(b)).map(([p, d]) => [p, createHash('sha256').update(d).digest('hex')])),
    ...(tree ? { rootDir: tree.sha256 } : {}),
  };
  const seed = createHash('sha256').update(JSON.stringify(recipe)).digest('hex');
  // FAT volume id: 8 hex digits; ext4 UUID and directory hash seed: RFC 4122 shaped, from the recipe.
  const volid = seed.slice(0, 8);
  const uuid = `${seed.slice(8, 16)}-${seed.slice(16, 20)}-4${seed.slice(21, 24)}-8${seed.slice(25, 28)}-${seed.slice(28, 40)}`;
  const hashSeed = `${seed.slice(40, 48)}-${seed.slice(48, 52)}-4${seed.slice(53, 56)}-8${seed.slice(57, 60)}-${seed.slice(0, 12)}`;

  mkdirSync(dirname(input.out), { recursive: true });
  const tmp = `${input.out}.tmp-${process.pid}`;
  const work = mkdtempSync(join(tmpdir(), 'takt-disk-'));
  try {
    // A sparse file of the whole size; the partition table; SYSLINUX's MBR code in the first 440 bytes
    // (the table at 446 is left as sfdisk wrote it).
    const fd = openSync(tmp, 'w');
    try {
      ftruncateSync(fd, layout.total);
    } finally {
      closeSync(fd);
    }
    const table = [
      'label: dos',
      `label-id: 0x${volid}`,
      `start=${layout.boot.start / SECTOR}, size=${layout.boot.size / SECTOR}, type=ef, bootable`,
      `start=${layout.root.start / SECTOR}, size=${layout.root.size / SECTOR}, type=83`,
    ].join('\n');
    writeFileSync(join(work, 'table'), `${table}\n`);
    await sfdisk(tmp, join(work, 'table'));
    const mbr = readFileSync(DISK_IMAGE_TOOLS.mbr).subarray(0, 440);
    const wfd = openSync(tmp, 'r+');
    try {
      writeSync(wfd, mbr, 0, mbr.length, 0);
    } finally {
      closeSync(wfd);
    }

    // Partition 1: FAT32, SYSLINUX, systemd-boot, kernel and initrd (mtools addresses it as IMAGE@@OFFSET).
    // One 512-byte sector per cluster: FAT32 needs at least 65,525 clusters (Microsoft's FAT spec,
    // "FAT type determination"), which ≥ 33 MiB then always has. mkfs.vfat's own choice for a ~62 MiB
    // partition in an image of a few hundred MiB gives fewer, and SYSLINUX refuses the result as FAT12/16
    // without a FAT size ("zero FAT sectors"): a Debian kernel and initrd with a debootstrap root did.
    await tool('mkfs.vfat', ['-F', '32', '-s', '1', '-n', 'TAKTBOOT', '-i', volid, '--offset', String(layout.boot.start / SECTOR), tmp, String(layout.boot.size / 1024)], 'dosfstools');
    const fat = `${tmp}@@${layout.boot.start}`;
    await tool('syslinux', ['--offset', String(layout.boot.start), '--install', tmp], 'syslinux');
    const syslinuxCfg = ['SERIAL 0 115200', 'PROMPT 0', 'TIMEOUT 0', 'DEFAULT takt', 'LABEL takt', '  KERNEL /vmlinuz', `  APPEND initrd=/initrd.img ${cmdline}`, ''].join('\n');
    writeFileSync(join(work, 'syslinux.cfg'), syslinuxCfg);
    writeFileSync(join(work, 'loader.conf'), 'default takt.conf\ntimeout 0\n');
    writeFileSync(join(work, 'takt.conf'), `title takt\nlinux /vmlinuz\ninitrd /initrd.img\noptions ${cmdline}\n`);
    const mtools = { MTOOLS_SKIP_CHECK: '1' };
    await tool('mmd', ['-i', fat, '::/EFI', '::/EFI/BOOT', '::/loader', '::/loader/entries'], 'mtools', mtools);
    const copies: Array<[string, string]> = [
      [join(work, 'syslinux.cfg'), '::/syslinux.cfg'],
      [DISK_IMAGE_TOOLS.systemdBoot, '::/EFI/BOOT/BOOTX64.EFI'],
      [join(work, 'loader.conf'), '::/loader/loader.conf'],
      [join(work, 'takt.conf'), '::/loader/entries/takt.conf'],
      [input.kernel, '::/vmlinuz'],
      [input.initrd, '::/initrd.img'],
    ];
    for (const [from, to] of copies) await tool('mcopy', ['-i', fat, from, to], 'mtools', mtools);

    // Partition 2: ext4 from a directory, with a fixed UUID, hash seed and clock.
    let root = join(work, 'root');
    if (input.rootDir !== undefined) {
      root = input.rootDir;
    } else {
      mkdirSync(root);
      for (const [p, data] of Object.entries(rootFiles)) {
        mkdirSync(dirname(join(root, p)), { recursive: true });
        writeFileSync(join(root, p), data);
      }
    }
    // Enough inodes for the tree whatever mke2fs's size-based default (one per 16 KiB) gives.
    const inodes = tree ? ['-N', String(Math.max(Math.ceil(tree.entries * 1.25) + 4096, Math.floor(layout.root.size / 16384)))] : [];
    await tool(
      'mke2fs',
      ['-q', '-F', '-t', 'ext4', '-L', 'takt-root', '-U', uuid, ...inodes, '-E', `offset=${layout.root.start},hash_seed=${hashSeed}`, '-d', root, tmp, `${layout.root.size / 1024}k`],
      'e2fsprogs',
      { E2FSPROGS_FAKE_TIME: '1700000000' },
    );
    // mke2fs may round the file up; the image is exactly the layout's size.
    if (statSync(tmp).size !== layout.total) throw new TaktError('internal', `building a disk image: ${tmp} is ${statSync(tmp).size} bytes, expected ${layout.total}`);
    renameSync(tmp, input.out);
  } finally {
    rmSync(work, { recursive: true, force: true });
    rmSync(tmp, { force: true });
  }
  return { path: input.out, size: layout.total, sha256: await sha256File(input.out), partitions: { boot: layout.boot, root: layout.root }, recipe };
}

async function sfdisk(image: string, script: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = execFile('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', image], { timeout: 60_000 }, (err, _out, stderr) => {
      if (!err) return resolve();
      const e = err as { code?: string };
      reject(e.code === 'ENOENT' ? new TaktError('unavailable', "building a disk image needs 'sfdisk' (Debian: apt-get install fdisk)") : new TaktError('unavailable', `building a disk image: sfdisk: ${stderr.trim() || err.message}`));
    });
    child.stdin!.end(readFileSync(script));
  });
}

/** What the marker image's /init prints (then the `takt.marker=` word of its command line). */
export const IMAGE_MARKER = 'TAKT-MARKER:';

/**
 * The smallest OS a deploy can be proved with: busybox as /init, which prints `TAKT-MARKER: <marker>
 * up=<s>` on the console (the `takt.marker=` word its own disk's boot entry passes) and then waits.
 */
export const MARKER_INIT = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
m=
for w in $(cat /proc/cmdline); do
  case "$w" in takt.marker=*) m="\${w#takt.marker=}" ;; esac
done
read u _ </proc/uptime
echo "${IMAGE_MARKER} \${m:-none} up=\${u}s"
while true; do sleep 3600; done
`;

/**
 * A bootable test image (`buildDiskImage`) whose OS only proves it booted from this disk: Debian's kernel,
 * a busybox initramfs running MARKER_INIT, `takt.marker=<marker>` on its command line and
 * `/etc/takt-marker` holding the marker on its root. What the deploy tests write to VMs' disks.
 * @param kernel an unpacked Debian kernel (kernel.ts debianKernel).
 */
export async function markerImage(opts: { kernel: { vmlinuz: string }; out: string; marker: string; busybox?: string }): Promise<DiskImage> {
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(opts.marker)) throw new TaktError('bad_request', `marker '${opts.marker}': letters, digits, '.', '_' and '-' only (1-64)`);
  const entries: CpioEntry[] = [];
  busyboxEntries(entries, new Set(), [], opts.busybox);
  entries.push({ type: 'file', path: 'init', data: Buffer.from(MARKER_INIT), mode: 0o755 });
  const initrd = `${opts.out}.initrd-${process.pid}`;
  writeFileSync(initrd, gzipSync(writeNewc(entries), { level: 6 }));
  try {
    return await buildDiskImage({
      out: opts.out,
      kernel: opts.kernel.vmlinuz,
      initrd,
      cmdline: `console=ttyS0,115200 quiet takt.marker=${opts.marker}`,
      rootFiles: { 'etc/takt-marker': `${opts.marker}\n` },
    });
  } finally {
    rmSync(initrd, { force: true });
  }
}
