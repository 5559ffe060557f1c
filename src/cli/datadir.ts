/**
 * The endpoint's data dir holds everything an attacker on the host wants: the admin token, the key that
 * seals secure values, the database and the machines' tokens. `takt serve` therefore:
 *
 *   - sets its umask to 077, so every file it (and every agent it starts) creates is its own;
 *   - refuses a data dir that another user can write or owns — the dir itself, or a directory above it
 *     through which it could be renamed and replaced (one with the sticky bit, like /tmp, is fine) — or
 *     one that holds a file of another user, and says how to fix it;
 *   - puts modes back to 0700 (dirs) and 0600 (files), whatever they were: the data dir is 0711 when the
 *     endpoint is root, so machines' own users can pass through to their sandboxes (layout.ts), never
 *     list it or read what is in it.
 */
import { chmodSync, closeSync, lstatSync, openSync, readdirSync, readFileSync, statSync, unlinkSync, writeSync, type Stats } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { isolating } from '../brokers/layout.js';
import { TaktError } from '../model/errors.js';
import { makeDir } from './outdir.js';
import type { LogFn } from './log.js';

const octal = (mode: number) => (mode & 0o7777).toString(8).padStart(4, '0');

/**
 * Makes the data dir if it is missing, checks it is safe and repairs modes (see the top of this file).
 * Also sets the process umask to 077. Returns the paths whose mode it changed (each also logged).
 * Throws a `bad_request` TaktError when another user can write or owns the dir, an entry, or a dir above.
 */
export function secureDataDir(dir: string, log: LogFn): string[] {
  process.umask(0o077);
  const data = resolve(dir);
  makeDir(data, 'data dir', 0o700);
  checkAncestors(data);
  const entries = readdirSync(data);
  for (const name of entries) {
    const path = join(data, name);
    const st = lstatSync(path);
    checkOwner(path, st, `${path} is owned by uid ${st.uid}`, `chown ${process.getuid?.()} ${path}, or remove it if you did not put it there`);
  }
  const fixed: string[] = [];
  const fix = (path: string, want: number) => {
    const st = lstatSync(path);
    if (st.isSymbolicLink() || (st.mode & 0o7777) === want) return;
    chmodSync(path, want);
    fixed.push(path);
    // A mode that let others in is worth a warning; one takt only widens to its own layout (0711) is not.
    const wasOpen = (st.mode & 0o777 & ~want) !== 0;
    log(wasOpen ? 'warn' : 'info', `data dir: ${path} was mode ${octal(st.mode)}; set to ${octal(want)}`);
  };
  const root = isolating();
  fix(data, root ? 0o711 : 0o700);
  for (const name of entries) {
    const path = join(data, name);
    const st = lstatSync(path);
    if (st.isDirectory()) {
      if (name === 'machines') fixMachines(path, root, fix);
      else fixTree(path, fix);
    } else if (st.isFile()) fix(path, 0o600);
  }
  return fixed;
}

/** Refuses when another user can write or owns the data dir or a dir above it. */
function checkAncestors(data: string): void {
  for (let dir = data; ; dir = dirname(dir)) {
    const st = statSync(dir);
    const fixHint = dir === data ? `chmod go-w ${dir} (and check nobody else put files in it)` : `chmod go-w ${dir}, or use a data dir whose parents only root or you can write`;
    checkOwner(dir, st, `${dir} is owned by uid ${st.uid}`, `use a data dir that only root or you own, e.g. /var/lib/takt`);
    const sticky = (st.mode & 0o1000) !== 0 && dir !== data;
    if ((st.mode & 0o022) !== 0 && !sticky) {
      throw new TaktError('bad_request', `refusing to use data dir ${data}: ${dir} is mode ${octal(st.mode)}, writable by ${(st.mode & 0o002) !== 0 ? 'every user' : 'its group'}, who could read or replace the endpoint's secrets; ${fixHint}`);
    }
    if (dir === dirname(dir)) return;
  }
}

/** Refuses an entry owned by a user other than the endpoint's or root. */
function checkOwner(path: string, st: Stats, what: string, fixHint: string): void {
  const me = process.getuid?.();
  if (me === undefined || st.uid === me || st.uid === 0) return;
  throw new TaktError('bad_request', `refusing to use data dir: ${what}, not by the endpoint's user (uid ${me}) or root: that user could read or replace the endpoint's secrets; ${fixHint}`);
}

/** Dirs 0700 and files 0600 all the way down (trees only the endpoint's user owns). */
function fixTree(dir: string, fix: (path: string, mode: number) => void): void {
  fix(dir, 0o700);
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, e.name);
    if (e.isDirectory()) fixTree(path, fix);
    else if (e.isFile()) fix(path, 0o600);
  }
}

/**
 * The machines dir: its own entries the endpoint's (token, pid, log, private/), the sandbox parts its
 * machines' users' (left to the broker, which sets them before each agent start; never walked here, as
 * they are not the endpoint's to walk).
 */
function fixMachines(dir: string, root: boolean, fix: (path: string, mode: number) => void): void {
  fix(dir, root ? 0o711 : 0o700);
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (!e.isDirectory()) continue;
    const m = join(dir, e.name);
    const st = lstatSync(m);
    fix(m, root ? st.mode & 0o750 : 0o700);
    for (const f of ['agent.token', 'agent.pid', 'agent.log']) {
      const path = join(m, f);
      if (lstatSync(path, { throwIfNoEntry: false })?.isFile()) fix(path, 0o600);
    }
    const priv = join(m, 'private');
    if (lstatSync(priv, { throwIfNoEntry: false })?.isDirectory()) fixTree(priv, fix);
  }
}

// ---- one endpoint per data dir ------------------------------------------------------------------------

/** The lock file `takt serve` holds in its data dir while it runs. */
export const LOCK_FILE = 'serve.lock';

/** What the lock file says: who holds the data dir, since when. */
interface LockInfo {
  pid: number;
  /** ISO-8601 UTC. */
  startedAt: string;
  /** The process's start time in clock ticks since boot (/proc/PID/stat field 22; null off Linux): tells a reused PID apart. */
  procStart: string | null;
}

/** A process's start time as /proc says it (field 22 of /proc/PID/stat), or null when there is no such process or no /proc. */
function procStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count fields after its closing one.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** Whether the process that wrote `info` still runs (and is the same process, where /proc can tell). */
function alive(info: LockInfo): boolean {
  try {
    process.kill(info.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const now = procStart(info.pid);
  return info.procStart === null || now === null || now === info.procStart;
}

function readLock(path: string): { text: string; info: LockInfo | null } | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return null;
  }
  try {
    const info = JSON.parse(text) as LockInfo;
    return { text, info: Number.isInteger(info.pid) && info.pid > 0 ? info : null };
  } catch {
    return { text, info: null };
  }
}

/**
 * Takes the data dir for this process: creates `serve.lock` with O_EXCL holding its PID and start time.
 * A lock left by a process that is gone (killed, host rebooted, PID reused by another program) is stale
 * and taken over; a lock that cannot be read (a start cut off between create and write) too.
 * Returns `release`, which removes the lock if it is still this process's (call it when serve stops).
 * @throws TaktError conflict naming the PID and start time of the `takt serve` that holds the dir.
 */
export function lockDataDir(data: string, now = new Date()): () => void {
  const path = join(data, LOCK_FILE);
  const mine: LockInfo = { pid: process.pid, startedAt: now.toISOString(), procStart: procStart(process.pid) };
  const text = JSON.stringify(mine) + '\n';
  for (let attempt = 0; attempt < 5; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, 'wx', 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const held = readLock(path);
      if (held?.info && alive(held.info)) {
        throw new TaktError('conflict', `data dir ${data} is in use by takt serve PID ${held.info.pid} (started ${held.info.startedAt}); stop it or use another --data dir`);
      }
      // Empty or torn: a serve starting this very moment (between create and write), or one cut off there long ago.
      if (!held?.info && Date.now() - (statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? 0) < 10_000) {
        throw new TaktError('conflict', `data dir ${data} is being taken by another takt serve starting now (${path}); stop it or use another --data dir`);
      }
      // Stale: removed only if it is still the stale one we read (another starting serve may have won meanwhile).
      if (held && readLock(path)?.text === held.text) unlinkSync(path);
      continue;
    }
    try {
      writeSync(fd, text);
    } finally {
      closeSync(fd);
    }
    return () => {
      if (readLock(path)?.text === text) unlinkSync(path);
    };
  }
  throw new TaktError('conflict', `data dir ${data}: could not take ${path}: another takt serve keeps starting on it`);
}
