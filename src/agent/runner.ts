/**
 * Runs one job's script: `bash -e task.sh` in the job's work dir, in a process group of its own so that a
 * timeout or a stop kills everything the script started, not just bash. Knows nothing about HTTP: output
 * goes to `onChunk`, the result comes back as a value.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ClaimedJob, ImageWritten, TaskPowerRequest } from '../model/protocol.js';
import { errorMessage } from './log.js';
import { MAX_OUTPUT_BYTES, OUTPUT_NAME, readOutputs, writeParams } from './outputs.js';
import type { JobPaths } from './paths.js';
import { IMAGE_CONTROL_FILE, MAX_IMAGE_REQUEST_BYTES, readImageRequest, type ImageRequest, type ReadImageRequest } from './image.js';
import { CONTROL_FILE, MAX_CONTROL_BYTES, readPowerRequest, type ReadPower } from './power.js';
import { handOver, removeTreeSync, sandboxEnv, snapshotFiles, type ScriptUser } from './sandbox.js';

export type ChunkStream = 'stdout' | 'stderr' | 'system';
export type OnChunk = (stream: ChunkStream, data: string) => void;

export interface RunSetup {
  paths: JobPaths;
  /** Holds takt-get / takt-set / takt-power; put first on the script's PATH. */
  binDir: string;
  machineId: string;
  /** Exported as TAKT_ROOT: the machine's root ('/'), or a sandbox dir for local machines. */
  root: string;
  /** The environment the script inherits (default: the agent's own). */
  baseEnv?: NodeJS.ProcessEnv;
  /** The machine token, so that no variable carrying it reaches the script. */
  token?: string;
  /** Between SIGTERM and SIGKILL when the agent kills a process group. */
  killGraceMs?: number;
  /** The shell to run (default `bash`, found on PATH). */
  shell?: string;
  /**
   * Run the script as this user (the agent must be root), with a clean environment; `scratch` is a dir
   * only the agent can write, where outputs are copied before they are read.
   */
  user?: ScriptUser & { scratch: string };
}

export interface RunResult {
  /** bash's exit code; null when it was killed (timeout, stop, signal) or never started. */
  exitCode: number | null;
  timedOut: boolean;
  /** What went wrong outside the script (spawn failure, unreadable outputs…). */
  error?: string;
  outputs: Record<string, string>;
  /** The agent killed the script because `signal` aborted (a stop, or the server gave up on the job). */
  aborted: boolean;
  /** What the script asked of its machine's power with `takt-power`, if anything. */
  power?: TaskPowerRequest;
  /** The image the script asked to have written with `takt-image` (the agent does it: image.ts), if any. */
  image?: ImageRequest;
  /** The image the agent wrote and verified for that request (set by the agent after the script: agent.ts). */
  written?: ImageWritten;
}

export type RunnableJob = Pick<ClaimedJob, 'id' | 'script' | 'params' | 'timeoutMs' | 'outputs'>;

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** After bash ends, how long to wait for its output pipes to drain when something else still holds them. */
const DRAIN_MS = 500;

/**
 * The script's environment: the agent's (or, for a script run as another user, only PATH, locale and its
 * own HOME/USER/TMPDIR), minus anything carrying the token, plus the job's TAKT_* vars.
 */
export function scriptEnv(job: RunnableJob, setup: RunSetup): NodeJS.ProcessEnv {
  const base = setup.user ? sandboxEnv(setup.baseEnv ?? process.env, setup.user) : (setup.baseEnv ?? process.env);
  const secrets = setup.token ? [setup.token, setup.token.split('.').pop() ?? ''].filter((s) => s.length >= 8) : [];
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(base)) {
    if (v === undefined || k === 'TAKT_TOKEN' || secrets.some((s) => v.includes(s))) continue;
    env[k] = v;
  }
  const { paths } = setup;
  return {
    ...env,
    PATH: `${setup.binDir}:${env.PATH ?? DEFAULT_PATH}`,
    TAKT_JOB_ID: job.id,
    TAKT_MACHINE_ID: setup.machineId,
    TAKT_ROOT: setup.root,
    TAKT_WORK_DIR: paths.workDir,
    TAKT_PARAMS_DIR: paths.paramsDir,
    TAKT_OUTPUTS_DIR: paths.outputsDir,
    TAKT_CONTROL_DIR: paths.controlDir,
    // What takt-set accepts (space-separated); unset when the endpoint did not say.
    ...(job.outputs ? { TAKT_OUTPUT_NAMES: job.outputs.join(' ') } : {}),
  };
}

/**
 * Writes the fresh work dir: the script, the params, an empty outputs dir. Synchronous on purpose: a
 * handful of small files on the path between two jobs, where a trip through libuv's thread pool per
 * call costs more than the calls themselves.
 */
function prepare(job: RunnableJob, paths: JobPaths, user?: ScriptUser): string[] {
  // A fresh dir, even if this id ran here before (then the script's user owns what is there).
  if (existsSync(paths.workDir)) removeTreeSync(paths.workDir, user);
  mkdirSync(paths.workDir, { recursive: true, mode: 0o700 });
  writeFileSync(paths.script, job.script, { mode: 0o600 }); // it holds secrets; bash reads it, no exec bit
  const skipped = writeParams(paths.paramsDir, job.params);
  mkdirSync(paths.outputsDir, { recursive: true, mode: 0o700 });
  mkdirSync(paths.controlDir, { recursive: true, mode: 0o700 });
  // Written while only the agent could write here; now the script's user gets the whole tree.
  if (user) handOver(paths.workDir, user);
  return skipped;
}

/**
 * Where to read outputs from. A script run as another user owns its outputs dir and could put links
 * there (to the agent's token, say): its files are first copied out without following any link.
 */
function outputsToRead(setup: RunSetup, onChunk: OnChunk): string {
  const { user, paths } = setup;
  if (!user) return paths.outputsDir;
  const rel = paths.outputsDir.slice(paths.workDir.length + 1).split('/');
  const notes = snapshotFiles(paths.workDir, rel, user.scratch, user.uid, { names: OUTPUT_NAME, maxBytes: MAX_OUTPUT_BYTES, maxFiles: 1000 });
  for (const note of notes) onChunk('system', `takt-agent: output ${note}\n`);
  return user.scratch;
}

/**
 * What the script asked with `takt-power`. A script run as another user owns its control dir: its files
 * are copied out first without following links (as outputs are), read, and the copies removed.
 */
async function powerToRead(setup: RunSetup, onChunk: OnChunk): Promise<ReadPower> {
  const { user, paths } = setup;
  if (!user) return readPowerRequest(paths.controlDir);
  const rel = paths.controlDir.slice(paths.workDir.length + 1).split('/');
  const notes = snapshotFiles(paths.workDir, rel, user.scratch, user.uid, { names: CONTROL_FILE, maxBytes: MAX_CONTROL_BYTES, maxFiles: 2 });
  for (const note of notes) onChunk('system', `takt-agent: takt-power request ${note}\n`);
  try {
    return await readPowerRequest(user.scratch);
  } finally {
    clearDir(user.scratch);
  }
}

/** What the script asked with `takt-image`; copied out first for a script run as another user, as takt-power's request is. */
async function imageToRead(setup: RunSetup, onChunk: OnChunk): Promise<ReadImageRequest> {
  const { user, paths } = setup;
  if (!user) return readImageRequest(paths.controlDir);
  const rel = paths.controlDir.slice(paths.workDir.length + 1).split('/');
  const notes = snapshotFiles(paths.workDir, rel, user.scratch, user.uid, { names: new RegExp(`^${IMAGE_CONTROL_FILE}$`), maxBytes: MAX_IMAGE_REQUEST_BYTES, maxFiles: 1 });
  for (const note of notes) onChunk('system', `takt-agent: takt-image request ${note}\n`);
  try {
    return await readImageRequest(user.scratch);
  } finally {
    clearDir(user.scratch);
  }
}

/**
 * Removes what a job was given in the clear — its rendered script and params (secure values included) and
 * its outputs — once it has run: the rest of its work dir stays for a while, and a later job on this
 * machine runs as the same user and could read it. Best effort: pruning removes the whole dir later.
 */
function scrubJob(setup: RunSetup): void {
  try {
    removeTreeSync(join(setup.paths.workDir, '.takt'), setup.user);
    removeTreeSync(setup.paths.script, setup.user);
  } catch {
    /* the dir is pruned later in any case */
  }
}

/** Empties a dir the agent owns (its entries only; the dir stays with its mode). */
function clearDir(dir: string): void {
  try {
    for (const name of readdirSync(dir)) rmSync(join(dir, name), { recursive: true, force: true });
  } catch {
    /* nothing to clear */
  }
}

export async function runScript(job: RunnableJob, setup: RunSetup, onChunk: OnChunk, signal?: AbortSignal): Promise<RunResult> {
  const failed = (error: string): RunResult => ({ exitCode: null, timedOut: false, error, outputs: {}, aborted: false });
  try {
    const skipped = prepare(job, setup.paths, setup.user);
    if (skipped.length) onChunk('system', `takt-agent: params not usable as file names, not available to takt-get: ${skipped.join(', ')}\n`);
  } catch (err) {
    return failed(`cannot prepare the job's work dir: ${errorMessage(err)}`);
  }
  if (signal?.aborted) return { ...failed('the agent stopped before the script started'), aborted: true };

  const ended = await execute(job, setup, onChunk, signal);
  let power: ReadPower;
  try {
    power = await powerToRead(setup, onChunk);
  } catch (err) {
    power = { problem: `cannot read the takt-power request: ${errorMessage(err)}` };
  }
  let image: ReadImageRequest;
  try {
    image = await imageToRead(setup, onChunk);
  } catch (err) {
    image = { problem: `cannot read the takt-image request: ${errorMessage(err)}` };
  }
  let read: Awaited<ReturnType<typeof readOutputs>>;
  try {
    read = await readOutputs(outputsToRead(setup, onChunk), job.outputs);
  } catch (err) {
    read = { outputs: {}, problem: `cannot read the outputs: ${errorMessage(err)}` };
  }
  // The copies were only for reading: clear values (secure outputs) do not stay in the agent's dir.
  if (setup.user) clearDir(setup.user.scratch);
  scrubJob(setup);
  const errors = [ended.error, read.problem, power.problem, image.problem].filter((e): e is string => !!e);
  return {
    exitCode: ended.timedOut || ended.aborted ? null : ended.exitCode,
    timedOut: ended.timedOut,
    ...(errors.length ? { error: errors.join('; ') } : {}),
    outputs: read.outputs,
    aborted: ended.aborted,
    ...(power.power ? { power: power.power } : {}),
    ...(image.request ? { image: image.request } : {}),
  };
}

interface Ended {
  exitCode: number | null;
  timedOut: boolean;
  aborted: boolean;
  error?: string;
}

function execute(job: RunnableJob, setup: RunSetup, onChunk: OnChunk, signal?: AbortSignal): Promise<Ended> {
  const grace = setup.killGraceMs ?? 2000;
  return new Promise<Ended>((resolve) => {
    let timedOut = false;
    let aborted = false;
    let killTimer: NodeJS.Timeout | undefined;
    let settled = false;

    const child = spawn(setup.shell ?? 'bash', ['-e', 'task.sh'], {
      cwd: setup.paths.workDir,
      env: scriptEnv(job, setup),
      detached: true, // its own process group (and session): we kill the group, never just bash
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(setup.user ? { uid: setup.user.uid, gid: setup.user.gid } : {}),
    });
    const pid = child.pid;

    const finish = (e: Ended) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(killTimer);
      signal?.removeEventListener('abort', onAbort);
      child.stdout?.destroy();
      child.stderr?.destroy();
      resolve(e);
    };

    // SIGTERM now, SIGKILL after the grace period for whatever ignored it.
    const terminate = () => {
      if (pid === undefined || killTimer) return;
      killGroup(pid, 'SIGTERM');
      killTimer = setTimeout(() => killGroup(pid, 'SIGKILL'), grace);
    };

    const timer = setTimeout(() => {
      timedOut = true;
      onChunk('system', `takt-agent: the task timed out after ${formatMs(job.timeoutMs)}; killing its process group\n`);
      terminate();
    }, job.timeoutMs);
    const onAbort = () => {
      aborted = true;
      terminate();
    };
    signal?.addEventListener('abort', onAbort, { once: true });

    child.stdout.setEncoding('utf8').on('data', (d: string) => onChunk('stdout', d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => onChunk('stderr', d));

    child.on('error', (err) => {
      // Only spawn failures reach here with no pid; later errors do not end the run (the exit does).
      if (pid !== undefined) return;
      onChunk('system', `takt-agent: cannot start the script: ${err.message}\n`);
      finish({ exitCode: null, timedOut: false, aborted: false, error: `cannot start the script: ${err.message}` });
    });

    let closed = false;
    child.once('close', () => (closed = true));

    child.once('exit', (code) => {
      // bash has ended: its result stands, whatever happens while we clean up after it.
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      void (async () => {
        // The script is over; anything it left running in its group goes too (start services through
        // systemd or `setsid` instead), so one job cannot leak into the next.
        if (pid !== undefined) await reapGroup(pid, grace);
        if (!closed) await new Promise<void>((r) => {
          const t = setTimeout(r, DRAIN_MS);
          child.once('close', () => { clearTimeout(t); r(); });
        });
        finish({ exitCode: code, timedOut, aborted });
      })();
    });
  });
}

/** Signals a whole process group; a group that is already gone is fine. */
export function killGroup(pgid: number, sig: NodeJS.Signals | 0): boolean {
  try {
    process.kill(-pgid, sig);
    return true;
  } catch {
    return false; // ESRCH: nothing left in the group
  }
}

/** SIGTERM what is left of a group, wait up to `graceMs` for it to go, then SIGKILL the rest. */
export async function reapGroup(pgid: number, graceMs: number): Promise<void> {
  if (!killGroup(pgid, 'SIGTERM')) return;
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 25));
    if (!(await groupAlive(pgid))) return;
  }
  killGroup(pgid, 'SIGKILL');
}

/**
 * Whether any process of the group is still running. Zombies do not count: in a container whose init
 * does not reap orphans they stay forever, and they hold nothing.
 */
async function groupAlive(pgid: number): Promise<boolean> {
  if (!killGroup(pgid, 0)) return false;
  let pids: string[];
  try {
    pids = (await readdir('/proc')).filter((n) => /^\d+$/.test(n));
  } catch {
    return true; // no /proc: trust kill(0)
  }
  for (const pid of pids) {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    // Fields after the parenthesised command name: state ppid pgrp …
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[2] === String(pgid) && fields[0] !== 'Z') return true;
  }
  return false;
}

function formatMs(ms: number): string {
  return ms < 1000 ? `${ms} ms` : ms < 120_000 ? `${+(ms / 1000).toFixed(1)} s` : `${+(ms / 60_000).toFixed(1)} min`;
}
