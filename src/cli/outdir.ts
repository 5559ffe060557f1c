/**
 * Making a directory the CLI writes into (`takt export DIR`, `takt serve --data DIR`), with errors that
 * say what is wrong and where. Node's own `mkdir(…, { recursive: true })` is not used for the user's
 * path: under /proc it never returns (it spins on ENOENT, seen with `takt export /proc/x`), and its
 * ENOTDIR names a path the user did not type.
 */
import { mkdirSync, statSync, type Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { TaktError } from '../model/errors.js';

/** File systems whose directories are the kernel's, not the user's: nothing is ever made under them. */
const KERNEL_FS = ['/proc', '/sys', '/dev'];

/**
 * Makes `dir` and its missing parents (each with `mode`), or checks the one there is a directory.
 * `what` names the argument in errors (e.g. `export DIR`). Returns the absolute path.
 * @throws TaktError bad_request for an empty path, a path under /proc, /sys or /dev, or a part of it
 *   that is a file; forbidden when a part cannot be made for lack of permission.
 */
export function makeDir(dir: string, what: string, mode = 0o777): string {
  if (dir.trim() === '') throw new TaktError('bad_request', `${what}: an empty path; give a directory (it is made if missing)`);
  const abs = resolve(dir);
  const kernel = KERNEL_FS.find((k) => abs === k || abs.startsWith(`${k}/`));
  if (kernel) throw new TaktError('bad_request', `${what}: ${dir} is under ${kernel}, the kernel's; choose a directory on a disk`);
  const missing: string[] = [];
  for (let p = abs; ; p = dirname(p)) {
    const st = statOrNull(p);
    if (st) {
      if (!st.isDirectory()) throw new TaktError('bad_request', `${what}: ${p} is a file, not a directory${p === abs ? '' : ` (in ${dir})`}; choose another path`);
      break;
    }
    missing.unshift(p);
    if (dirname(p) === p) break;
  }
  for (const p of missing) {
    try {
      mkdirSync(p, { mode });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST' && statOrNull(p)?.isDirectory()) continue;
      if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') throw new TaktError('forbidden', `${what}: cannot make ${p}: ${code === 'EROFS' ? 'a read-only file system' : 'permission denied'}`);
      throw new TaktError('bad_request', `${what}: cannot make ${p}: ${(err as Error).message}`);
    }
  }
  return abs;
}

/** `p`'s stat, or null when nothing is there (ENOENT) or a part above it is a file (ENOTDIR: found on the way up). */
function statOrNull(p: string): Stats | null {
  try {
    return statSync(p);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw err;
  }
}
