/**
 * A writer for the cpio "newc" format (SVR4 without CRC, magic `070701`), the format the Linux kernel
 * unpacks an initramfs from (Documentation/driver-api/early-userspace/buffer-format.rst). Written here
 * rather than spawning `cpio` so device nodes (/dev/console) can go in without root and mknod, and so the
 * archive is byte-for-byte reproducible (fixed mtimes, uid/gid 0, sorted by the caller).
 */

/** One archive member. Directories must come before what they hold. */
export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Buffer; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  /** A character device node, e.g. /dev/console = major 5, minor 1. */
  | { type: 'char'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

const hex8 = (n: number): string => {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`cpio field ${n} does not fit 8 hex digits`);
  return n.toString(16).padStart(8, '0');
};

const pad4 = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4);

/**
 * The archive for `entries` in order, ending with the `TRAILER!!!` record. Paths are stored without a
 * leading slash. Files larger than 4 GiB are refused (newc sizes are 32-bit).
 * @throws RangeError for a path that is empty or has `..`, or a field that does not fit.
 */
export function writeNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const header = (name: string, mode: number, size: number, rdev: { major: number; minor: number } = { major: 0, minor: 0 }, nlink = 1) => {
    const nameBuf = Buffer.from(name + '\0', 'utf8');
    const fields = [
      '070701',
      hex8(ino++), hex8(mode), hex8(0), hex8(0), hex8(nlink), hex8(0), hex8(size),
      hex8(0), hex8(0), hex8(rdev.major), hex8(rdev.minor), hex8(nameBuf.length), hex8(0),
    ].join('');
    const h = Buffer.concat([Buffer.from(fields, 'ascii'), nameBuf]);
    parts.push(h, pad4(h.length));
  };
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, '');
    if (!name || name.split('/').includes('..')) throw new RangeError(`cpio path '${e.path}' is empty or climbs out with '..'`);
    switch (e.type) {
      case 'dir':
        header(name, S_IFDIR | (e.mode ?? 0o755), 0, undefined, 2);
        break;
      case 'file':
        header(name, S_IFREG | (e.mode ?? 0o644), e.data.length);
        parts.push(e.data, pad4(e.data.length));
        break;
      case 'symlink': {
        const t = Buffer.from(e.target, 'utf8');
        header(name, S_IFLNK | 0o777, t.length);
        parts.push(t, pad4(t.length));
        break;
      }
      case 'char':
        header(name, S_IFCHR | (e.mode ?? 0o600), 0, { major: e.major, minor: e.minor });
        break;
    }
  }
  ino = 0;
  header('TRAILER!!!', 0, 0, undefined, 1);
  return Buffer.concat(parts);
}
