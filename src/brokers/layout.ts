/**
 * The on-disk shape of a local or netns machine, and who owns what. With the endpoint running as root
 * each machine gets a uid U and gid G of its own (uids.ts); the agent stays root and runs scripts as U:
 *
 *   <data>/                      root 0711   others may pass through to their sandbox, never list or read
 *   <data>/machines/             root 0711
 *   <data>/machines/<id>/        root:G 0750 the machine's group may enter; other machines may not
 *     agent.pid, agent.log       root 0600
 *     private/                   root 0700   agent.token, state/ (pending reports), outputs/ (scratch)
 *     root/                      U:G 0700    $TAKT_ROOT
 *     home/, tmp/                U:G 0700    $HOME, $TMPDIR
 *     jobs/                      root:G 0750 each jobs/<jobId>/ is U:G 0700 once handed over
 *     bin/                       root 0755   takt-get, takt-set
 *
 * The agent process holds the token (in its environment and in private/agent.token): neither is
 * readable by U, and U cannot signal or trace a root process. When the endpoint is not root, the same
 * layout is kept with every entry the endpoint user's own (0700/0600), and scripts run as that user:
 * they are not isolated from the endpoint (the broker says so at machine creation).
 */
import { chmodSync, existsSync, lchownSync, lstatSync, mkdirSync, readdirSync, renameSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ownedDir, type RunAs } from '../agent/sandbox.js';
import { TaktError } from '../model/errors.js';
import { killUid } from './uids.js';

/** True when scripts of local machines run as users of their own (the endpoint is root). */
export const isolating = (): boolean => process.getuid?.() === 0;

export interface MachinePaths {
  dir: string;
  privateDir: string;
  token: string;
  /** Where the token was before private/ existed. */
  oldToken: string;
  root: string;
  pid: string;
  log: string;
}

export function machinePaths(machinesDir: string, id: string): MachinePaths {
  const dir = join(machinesDir, id);
  const privateDir = join(dir, 'private');
  return { dir, privateDir, token: join(privateDir, 'agent.token'), oldToken: join(dir, 'agent.token'), root: join(dir, 'root'), pid: join(dir, 'agent.pid'), log: join(dir, 'agent.log') };
}

/**
 * Makes (or repairs) a machine's layout for scripts run as `user` (null: as the endpoint's own user),
 * moving a token and state left by an older takt into private/. Idempotent; called before every agent
 * start, so a mode or an owner changed by hand is put back.
 */
export function prepareMachineDir(machinesDir: string, p: MachinePaths, user: RunAs | null): void {
  const me = process.getuid?.() ?? 0;
  const myGid = process.getgid?.() ?? 0;
  ownedDir(machinesDir, me, myGid, user ? 0o711 : 0o700);
  ownedDir(p.dir, me, user ? user.gid : myGid, user ? 0o750 : 0o700);
  ownedDir(p.privateDir, me, myGid, 0o700);
  // An older takt kept the token and the agent's state beside the sandbox: move them out of its reach.
  if (existsSync(p.oldToken) && !existsSync(p.token)) renameSync(p.oldToken, p.token);
  const oldState = join(p.dir, 'state');
  if (existsSync(oldState) && !existsSync(join(p.privateDir, 'state'))) renameSync(oldState, join(p.privateDir, 'state'));
  for (const f of [p.token, p.pid, p.log]) if (existsSync(f)) chmodSync(f, 0o600);
  mkdirSync(p.root, { recursive: true, mode: 0o700 });
  if (user) giveRoot(p.root, user);
  else ownedDir(p.root, me, myGid, 0o700);
}

/**
 * Gives $TAKT_ROOT to the machine's user. A tree another uid owns (written by scripts that ran as root
 * before, or under a uid the machine had before) is handed over whole, after that uid's processes are
 * gone, so nothing can swap a link in while it is walked.
 */
function giveRoot(root: string, user: RunAs): void {
  const owner = lstatSync(root).uid;
  if (owner !== user.uid) {
    if (owner !== 0) killUid(owner);
    chownTree(root, user);
  }
  ownedDir(root, user.uid, user.gid, 0o700);
}

function chownTree(dir: string, user: RunAs): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, e.name);
    if (e.isDirectory()) chownTree(path, user);
    else lchownSync(path, user.uid, user.gid);
  }
  lchownSync(dir, user.uid, user.gid);
}

/**
 * With scripts run as their own users, every directory above the machines dir must let others pass
 * (o+x), or no script can reach its sandbox. Throws a `bad_request` TaktError naming the directory and
 * the fix.
 */
export function checkReachable(machinesDir: string): void {
  for (let dir = dirname(machinesDir); ; dir = dirname(dir)) {
    let mode: number;
    try {
      mode = lstatSync(dir).mode;
    } catch {
      mode = 0o711; // not made yet: takt serve makes the data dir 0711
    }
    if ((mode & 0o001) === 0) {
      throw new TaktError(
        'bad_request',
        `machine sandboxes under ${machinesDir} cannot be reached by their users: ${dir} is mode ${(mode & 0o777).toString(8).padStart(4, '0')} (others may not pass through); ` +
          `run chmod o+x ${dir}, or put the data dir somewhere others may pass through (e.g. /var/lib/takt)`,
      );
    }
    if (dir === dirname(dir)) return;
  }
}

/** What machine creation says when scripts are not isolated from the endpoint. */
export function notIsolatedNotice(broker: string): string | undefined {
  if (isolating()) return undefined;
  return (
    `${broker} machines are not isolated from the endpoint: it runs as uid ${process.getuid?.() ?? '?'}, not root, so their scripts run as that user ` +
    `and can read everything it can (its data dir, admin token and encryption key included). Run only trusted content on them, or run takt serve as root ` +
    `to give each machine a user of its own`
  );
}
