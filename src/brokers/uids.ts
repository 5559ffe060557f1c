/**
 * One unprivileged uid (and a gid of the same number) per local/netns machine, so a machine's scripts
 * cannot read the endpoint's secrets, another machine's sandbox, or their own agent's token.
 *
 * Two records keep a uid stable and unshared:
 *
 *   <data>/sandbox-uids.json            this endpoint's record: machine id → uid, and the allocation cursor.
 *                                       Read at start, so a machine keeps its uid across restarts.
 *   /var/lib/takt/sandbox-uids/<uid>    the host-wide claim: a symlink to the machine's dir. Several
 *                                       endpoints (several data dirs) on one host never hand out the same
 *                                       uid. A claim whose machine dir is gone (deleted machine, removed
 *                                       data dir) or is not of the uid's group is stale and may be taken
 *                                       again.
 *
 * The cursor only moves forward (wrapping at the end of the range), so a freed uid is reused as late as
 * possible: files a deleted machine left outside its dir (in /tmp, say) are not handed to the next one.
 */
import { lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmdirSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TaktError } from '../model/errors.js';

export interface UidRange {
  first: number;
  last: number;
}

/**
 * High enough to miss real users, system users and the usual subordinate-id ranges of containers; below
 * 2^31 because Node's spawn takes a uid as an int32.
 */
export const DEFAULT_UID_RANGE: UidRange = { first: 1_600_000_000, last: 1_600_065_535 };
export const UID_REGISTRY = '/var/lib/takt/sandbox-uids';

/** Parses `FIRST-LAST` (e.g. TAKT_SANDBOX_UIDS=200000-265535). Throws a TaktError saying what is wrong. */
export function parseUidRange(text: string): UidRange {
  const m = /^\s*(\d{1,10})\s*-\s*(\d{1,10})\s*$/.exec(text);
  const first = Number(m?.[1]);
  const last = Number(m?.[2]);
  if (!m || first < 1000 || last > 2 ** 31 - 2 || first > last) {
    throw new TaktError('bad_request', `TAKT_SANDBOX_UIDS '${text}' is not FIRST-LAST with 1000 <= FIRST <= LAST <= ${2 ** 31 - 2} (e.g. ${DEFAULT_UID_RANGE.first}-${DEFAULT_UID_RANGE.last})`);
  }
  return { first, last };
}

export interface UidState {
  /** The next uid to try. */
  next: number;
  /** Machine id → its uid. */
  machines: Record<string, number>;
}

/**
 * Picks a uid for `machineId`: the one it has, else the first from the cursor on (wrapping) that no
 * machine of this record holds and that `claim` accepts (claim makes the host-wide claim, or says no).
 * Pure apart from `claim`; returns the new state without changing the old one.
 * Throws a `conflict` TaktError when the whole range is taken.
 */
export function allocateUid(state: UidState, machineId: string, range: UidRange, claim: (uid: number) => boolean): { uid: number; state: UidState } {
  const known = state.machines[machineId];
  if (known !== undefined) return { uid: known, state };
  const held = new Set(Object.values(state.machines));
  const size = range.last - range.first + 1;
  const start = state.next >= range.first && state.next <= range.last ? state.next : range.first;
  for (let i = 0; i < size; i++) {
    const uid = range.first + ((start - range.first + i) % size);
    if (held.has(uid) || !claim(uid)) continue;
    const next = uid === range.last ? range.first : uid + 1;
    return { uid, state: { next, machines: { ...state.machines, [machineId]: uid } } };
  }
  throw new TaktError('conflict', `no free sandbox uid left in ${range.first}-${range.last}; delete machines or widen TAKT_SANDBOX_UIDS`);
}

/** Ids named in /etc/passwd and /etc/group: never used for a sandbox. */
function systemIds(): Set<number> {
  const ids = new Set<number>();
  for (const file of ['/etc/passwd', '/etc/group']) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      const id = Number(line.split(':')[2]);
      if (Number.isInteger(id)) ids.add(id);
    }
  }
  return ids;
}

/**
 * The pids of every running process by real uid (Linux /proc). Zombies do not count: where pid 1 does
 * not reap orphans they stay forever, and they hold nothing.
 */
export function processUids(): Map<number, number[]> {
  const byUid = new Map<number, number[]>();
  let pids: string[] = [];
  try {
    pids = readdirSync('/proc').filter((n) => /^\d+$/.test(n));
  } catch {
    return byUid;
  }
  for (const pid of pids) {
    let status = '';
    try {
      status = readFileSync(`/proc/${pid}/status`, 'utf8');
    } catch {
      continue;
    }
    const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
    if (!Number.isInteger(uid) || /^State:\s+Z/m.test(status)) continue;
    const list = byUid.get(uid) ?? [];
    list.push(Number(pid));
    byUid.set(uid, list);
  }
  return byUid;
}

/** SIGKILLs every process whose real uid is `uid` (what a deleted machine's scripts left running). */
export function killUid(uid: number): number {
  if (uid === 0 || uid === process.getuid?.()) return 0;
  let n = 0;
  for (const pid of processUids().get(uid) ?? []) {
    try {
      process.kill(pid, 'SIGKILL');
      n++;
    } catch {
      /* already gone */
    }
  }
  return n;
}

/**
 * The uids of one data dir, shared by its brokers (local and netns draw from one pool). `dirOf` names
 * the machine dir a host-wide claim points at; that dir's group is the uid's gid while the machine lives.
 */
export class UidPool {
  private static readonly pools = new Map<string, UidPool>();
  private readonly file: string;
  private state: UidState;

  private constructor(
    dataDir: string,
    private readonly range: UidRange,
    private readonly registry: string,
  ) {
    this.file = join(dataDir, 'sandbox-uids.json');
    this.state = this.load();
  }

  /** The pool of a data dir (one per dir in a process). Throws when TAKT_SANDBOX_UIDS is malformed. */
  static forDataDir(dataDir: string, opts: { range?: UidRange; registry?: string } = {}): UidPool {
    let pool = UidPool.pools.get(dataDir);
    if (!pool) {
      const env = process.env.TAKT_SANDBOX_UIDS;
      pool = new UidPool(dataDir, opts.range ?? (env ? parseUidRange(env) : DEFAULT_UID_RANGE), opts.registry ?? process.env.TAKT_SANDBOX_UID_REGISTRY ?? UID_REGISTRY);
      UidPool.pools.set(dataDir, pool);
    }
    return pool;
  }

  /** The machine's uid: the recorded one (re-claimed host-wide if needed), else a new one. */
  uidFor(machineId: string, machineDir: string): number {
    const known = this.state.machines[machineId];
    if (known !== undefined) {
      if (this.claim(known, machineDir)) return known;
      // Someone else holds our uid on this host (the registry was wiped meanwhile): take a new one.
      const { [machineId]: _lost, ...rest } = this.state.machines;
      this.state = { ...this.state, machines: rest };
    }
    mkdirSync(this.registry, { recursive: true, mode: 0o700 });
    const taken = systemIds();
    const live = processUids();
    const { uid, state } = allocateUid(this.state, machineId, this.range, (u) => !taken.has(u) && !live.has(u) && this.claim(u, machineDir));
    this.state = state;
    this.save();
    return uid;
  }

  /** The machine's recorded uid, if it has one. */
  uidOf(machineId: string): number | undefined {
    return this.state.machines[machineId];
  }

  /** Forgets the machine's uid and drops its host-wide claim. Returns the uid it had. */
  release(machineId: string, machineDir: string): number | undefined {
    const uid = this.state.machines[machineId];
    if (uid === undefined) return undefined;
    const { [machineId]: _gone, ...rest } = this.state.machines;
    this.state = { ...this.state, machines: rest };
    this.save();
    const link = join(this.registry, String(uid));
    try {
      if (readlinkSync(link) === machineDir) unlinkSync(link);
    } catch {
      /* no claim */
    }
    return uid;
  }

  /**
   * Claims `uid` for `machineDir` host-wide: true when the claim is ours (new or already there). A stale
   * claim (its dir gone, or no longer of that gid) is replaced under a lock dir, so two endpoints
   * reclaiming the same stale uid at once cannot both win.
   */
  private claim(uid: number, machineDir: string): boolean {
    const link = join(this.registry, String(uid));
    mkdirSync(this.registry, { recursive: true, mode: 0o700 });
    if (tryLink(machineDir, link)) return true;
    const holder = readLink(link);
    if (holder === machineDir) return true;
    if (holder !== null && !stale(link, holder, uid)) return false;
    const lock = `${link}.lock`;
    try {
      mkdirSync(lock);
    } catch {
      return false; // someone else is reclaiming it: try another uid
    }
    try {
      const again = readLink(link);
      if (again !== null && again !== machineDir && !stale(link, again, uid)) return false;
      if (again !== null) unlinkSync(link);
      return tryLink(machineDir, link);
    } finally {
      rmdirSync(lock);
    }
  }

  private load(): UidState {
    try {
      const s = JSON.parse(readFileSync(this.file, 'utf8')) as UidState;
      if (typeof s.next === 'number' && s.machines && typeof s.machines === 'object') return s;
    } catch {
      /* first start */
    }
    return { next: this.range.first, machines: {} };
  }

  private save(): void {
    const tmp = `${this.file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.state, null, 2) + '\n', { mode: 0o600 });
    renameSync(tmp, this.file);
  }
}

function tryLink(target: string, link: string): boolean {
  try {
    symlinkSync(target, link);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
}

function readLink(link: string): string | null {
  try {
    return readlinkSync(link);
  } catch {
    return null;
  }
}

/** A fresh claim's dir is chowned to the uid's group within moments; until then it is not stale. */
const CLAIM_GRACE_MS = 60_000;

/**
 * A claim is stale when the machine dir it names is gone, or has not belonged to the uid's group for
 * longer than a fresh claim needs to chown it.
 */
function stale(link: string, dir: string, uid: number): boolean {
  try {
    if (lstatSync(dir).gid === uid) return false;
  } catch {
    return true;
  }
  try {
    return Date.now() - lstatSync(link).mtimeMs > CLAIM_GRACE_MS;
  } catch {
    return true;
  }
}
