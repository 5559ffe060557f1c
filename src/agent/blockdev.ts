/**
 * Block devices without ioctls (Node has no BLKGETSIZE64): device numbers from `st_rdev` and the size from
 * sysfs. One place for the image writer (image.ts) and the join block (deployed.ts).
 */

/**
 * Linux block device numbers from `st_rdev` (glibc's gnu_dev_major/minor, sysmacros.h): the major is
 * bits 8–19 and 32–43, the minor bits 0–7 and 20–31.
 */
export function devNumbers(rdev: number): { major: number; minor: number } {
  const hi = Math.floor(rdev / 2 ** 32);
  const lo = rdev >>> 0;
  return { major: ((lo >>> 8) & 0xfff) | ((hi & 0xfffff000) >>> 0), minor: (lo & 0xff) | ((lo >>> 12) & 0xfffff00) };
}

/**
 * Where a block device's size is: `/sys/dev/block/MAJ:MIN/size`, in 512-byte sectors whatever the
 * device's logical block size (the kernel's Documentation/ABI/stable/sysfs-block).
 */
export function sizeFileOf(rdev: number, sys = '/sys'): string {
  const { major, minor } = devNumbers(rdev);
  return `${sys}/dev/block/${major}:${minor}/size`;
}
