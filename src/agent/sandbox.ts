/**
 * Running scripts as a user other than the agent's (`takt agent --run-as UID:GID`, what the local and
 * netns brokers do when the endpoint is root). The agent keeps its token, its state and its process
 * (/proc/<pid>/environ) to itself; the script gets a work dir it owns and nothing else of the agent's.
 *
 * The agent is root here, so every file operation it does in a directory the script's user can write
 * is a chance for that user to redirect it (a symlink swapped in at the right moment). The rules:
 *   - the agent writes a job's files in a fresh dir it alone can write, then hands the tree over (chown);
 *   - it reads outputs back without following any link, and only files the script's user owns;
 *   - it deletes work dirs with the script's user's own rights.
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, constants, fchmodSync, fstatSync, lchownSync, lstatSync, mkdirSync, openSync, readdirSync, readSync, rmdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TaktError } from '../model/errors.js';

/** Whom scripts run as. */
export interface RunAs {
  uid: number;
  gid: number;
}

/** A script's user, with the dirs that stand in for its home and temp dir. */
export interface ScriptUser extends RunAs {
  home: string;
  tmp: string;
}

/** Parses `UID:GID` (both whole numbers below 2^31). Throws a TaktError naming the flag. */
export function parseRunAs(text: string): RunAs {
  const m = /^(\d{1,10}):(\d{1,10})$/.exec(text.trim());
  const uid = Number(m?.[1]);
  const gid = Number(m?.[2]);
  if (!m || uid > 2 ** 31 - 1 || gid > 2 ** 31 - 1) throw new TaktError('bad_request', `--run-as '${text}' is not UID:GID (e.g. 1600000000:1600000000)`, { path: 'run-as' });
  return { uid, gid };
}

const PASS_THROUGH = /^(PATH|LANG|LANGUAGE|TZ|LC_[A-Z]+)$/;

/**
 * A sandboxed script's environment: PATH, locale and time zone from the agent, HOME/USER/LOGNAME/SHELL/
 * TMPDIR of its own, and nothing else (the agent's environment is the endpoint's, which may hold
 * credentials of its own). There is no /etc/passwd entry; USER names the uid.
 */
export function sandboxEnv(base: NodeJS.ProcessEnv, user: ScriptUser): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(base)) if (v !== undefined && PASS_THROUGH.test(k)) env[k] = v;
  const name = `takt-${user.uid}`;
  return { ...env, HOME: user.home, USER: name, LOGNAME: name, SHELL: '/bin/bash', TMPDIR: user.tmp };
}

/**
 * Gives a tree the agent has just written to the script's user: children first, the dir itself last, so
 * the user cannot touch the tree while it is being handed over. Links are not followed (lchown).
 */
export function handOver(dir: string, user: RunAs): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) handOver(path, user);
    else lchownSync(path, user.uid, user.gid);
  }
  lchownSync(dir, user.uid, user.gid);
}

/**
 * Makes `dir` (if missing) and sets its owner and mode, whatever they were. Refuses a symbolic link; the
 * mode is set through an O_NOFOLLOW handle, never by a path that could lead elsewhere.
 */
export function ownedDir(dir: string, uid: number, gid: number, mode: number): void {
  mkdirSync(dir, { recursive: true, mode });
  if (lstatSync(dir).isSymbolicLink()) throw new TaktError('internal', `${dir} is a symbolic link; refusing to use it`);
  lchownSync(dir, uid, gid);
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  try {
    fchmodSync(fd, mode);
  } finally {
    closeSync(fd);
  }
}

/**
 * Removes a work dir the script's user owns, with that user's rights (`rm -rf` as the user), then the
 * empty dir itself (its parent is the agent's). Without `user`, a plain recursive delete.
 */
export function removeTreeSync(dir: string, user?: RunAs): void {
  if (!user || !ownedBy(dir, user.uid)) {
    rmSync(dir, { recursive: true, force: true });
    return;
  }
  unlock(dir);
  spawnSync('rm', ['-rf', '--', dir], { uid: user.uid, gid: user.gid, stdio: 'ignore', timeout: 60_000 });
  rmdirQuiet(dir);
}

/** removeTreeSync without blocking the event loop (used by pruning). */
export async function removeTree(dir: string, user?: RunAs): Promise<void> {
  if (!user || !ownedBy(dir, user.uid)) {
    rmSync(dir, { recursive: true, force: true });
    return;
  }
  unlock(dir);
  await new Promise<void>((resolve) => {
    const p = spawn('rm', ['-rf', '--', dir], { uid: user.uid, gid: user.gid, stdio: 'ignore' });
    p.on('error', () => resolve());
    p.on('close', () => resolve());
  });
  rmdirQuiet(dir);
}

/** A work dir its script made unreadable (chmod 000) is opened up again, so its user can empty it. */
function unlock(dir: string): void {
  try {
    const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    try {
      fchmodSync(fd, 0o700);
    } finally {
      closeSync(fd);
    }
  } catch {
    /* gone, or not a dir: rm and rmdir say what is wrong */
  }
}

/**
 * Whether the user owns `dir`. A work dir the user does not own was never handed over (written before
 * scripts ran as another user, or a preparation that failed half-way): the agent deletes it itself.
 */
function ownedBy(dir: string, uid: number): boolean {
  try {
    return lstatSync(dir).uid === uid;
  } catch {
    return false;
  }
}

function rmdirQuiet(dir: string): void {
  try {
    rmdirSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') throw new TaktError('internal', `cannot remove ${dir}: ${code ?? String(err)} (the script's user left something it cannot delete)`);
  }
}

/**
 * The dirs of the scripts' side, as `takt agent --run-as` needs them: jobs/ the agent's, enterable by the
 * user's group (so no work dir can be swapped for a link); bin/ the agent's, readable by all; home/ and
 * tmp/ the user's own; the scratch dir the agent's alone.
 */
export function prepareSandboxDirs(paths: { jobsDir: string; binDir: string; scriptHome: string; scriptTmp: string; scratchDir: string }, user: RunAs): void {
  const me = process.getuid?.() ?? 0;
  const myGid = process.getgid?.() ?? 0;
  ownedDir(paths.jobsDir, me, user.gid, 0o750);
  ownedDir(paths.binDir, me, myGid, 0o755);
  ownedDir(paths.scriptHome, user.uid, user.gid, 0o700);
  ownedDir(paths.scriptTmp, user.uid, user.gid, 0o700);
  ownedDir(paths.scratchDir, me, myGid, 0o700);
}

export interface SnapshotLimits {
  /** Only names that match are copied (the others are not outputs). */
  names: RegExp;
  /** Bytes copied per file; a larger file is copied as a sparse file of its size (so the size check sees it). */
  maxBytes: number;
  maxFiles: number;
}

/**
 * Copies `base/<rel…>/<name>` files into `into` (a fresh dir only the agent can write) without following
 * any link on the way — each dir is opened with O_NOFOLLOW relative to the one before, through
 * /proc/self/fd, so swapping a dir for a link meanwhile changes nothing — and only regular files owned by
 * `owner` (a hard link to someone else's file is refused). `base` must be a dir the user cannot replace.
 * Returns a note for each file left out; a missing dir means nothing was set.
 */
export function snapshotFiles(base: string, rel: string[], into: string, owner: number, limits: SnapshotLimits): string[] {
  rmSync(into, { recursive: true, force: true });
  mkdirSync(into, { recursive: true, mode: 0o700 });
  const flags = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
  const fds: number[] = [];
  const notes: string[] = [];
  try {
    let dirFd = openSync(base, constants.O_RDONLY | constants.O_DIRECTORY);
    fds.push(dirFd);
    for (const part of rel) {
      try {
        dirFd = openSync(`/proc/self/fd/${dirFd}/${part}`, flags);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return notes;
        return [`${rel.join('/')} is not a plain directory (${code}); no outputs read`];
      }
      fds.push(dirFd);
    }
    const names = readdirSync(`/proc/self/fd/${dirFd}`).filter((n) => limits.names.test(n)).sort();
    if (names.length > limits.maxFiles) notes.push(`${names.length} output files; only the first ${limits.maxFiles} were read`);
    for (const name of names.slice(0, limits.maxFiles)) {
      const note = copyOne(`/proc/self/fd/${dirFd}/${name}`, join(into, name), owner, limits.maxBytes);
      if (note) notes.push(`${name}: ${note}`);
    }
    return notes;
  } finally {
    for (const fd of fds) closeSync(fd);
  }
}

function copyOne(from: string, to: string, owner: number, maxBytes: number): string | null {
  let fd: number;
  try {
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    fd = openSync(from, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ELOOP' ? 'a symbolic link, not read' : `not readable (${code})`;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return 'not a regular file, not read';
    if (st.uid !== owner) return "not owned by the script's user, not read";
    const buf = Buffer.alloc(Math.min(st.size, maxBytes + 1));
    let got = 0;
    while (got < buf.length) {
      const n = readSync(fd, buf, got, buf.length - got, got);
      if (n === 0) break;
      got += n;
    }
    writeFileSync(to, buf.subarray(0, got), { mode: 0o600 });
    if (got > maxBytes) {
      try {
        truncateSync(to, st.size);
      } catch {
        /* a size the file system cannot hold sparsely: maxBytes + 1 still says "too large" */
      }
    }
    return null;
  } finally {
    closeSync(fd);
  }
}
