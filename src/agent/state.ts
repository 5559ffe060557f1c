/**
 * Exactly-once results. The agent keeps two small files under `state/`:
 *
 *   current.json  written before a script starts: "job X is running here".
 *   pending.json  written (tmp + rename) when it ends: the report for the endpoint, kept until the
 *                 endpoint has answered it, so a result survives network loss, endpoint restarts and
 *                 agent restarts. The endpoint treats the same report twice as one.
 *
 * Neither is fsynced. The rename makes each write atomic for any reader, and a crashed agent process
 * loses nothing the kernel already has. What fsync would add is survival of a power cut or kernel
 * crash in the few milliseconds between a job's end and its delivery; without it such a job comes back
 * as lost (its lease expires, the line stops on it with that reason) — visible, never run twice — and
 * the agent skips two disk flushes per job, which were a tenth of the time between two jobs.
 *
 * A current.json found at start means the agent died while a job ran: nobody knows how that job ended,
 * so it is reported as such rather than run again (running a task twice is not safe in general).
 */
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { CompleteRequest } from '../model/protocol.js';
import type { AgentLog } from './log.js';

export interface CurrentJob {
  jobId: string;
  task?: string;
  startedAt: string;
}

export interface PendingReport {
  jobId: string;
  /** Sent as is, every time: the endpoint recognises a resend by its content. */
  report: CompleteRequest;
  endedAt: string;
}

export const RESTARTED_ERROR = 'the agent restarted while this job was running; its result is unknown';

/** The report for a job whose agent died under it. */
export function interruptedReport(current: CurrentJob, now = new Date()): PendingReport {
  return { jobId: current.jobId, report: { exitCode: null, outputs: {}, error: RESTARTED_ERROR }, endedAt: now.toISOString() };
}

export class AgentState {
  readonly currentFile: string;
  readonly pendingFile: string;

  constructor(
    readonly dir: string,
    private readonly log: AgentLog = () => {},
  ) {
    this.currentFile = join(dir, 'current.json');
    this.pendingFile = join(dir, 'pending.json');
  }

  /** Creates the directory and removes temporary files a crash may have left half-written. */
  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    for (const name of await readdir(this.dir)) {
      if (name.endsWith('.tmp')) await rm(join(this.dir, name), { force: true });
    }
  }

  readCurrent(): Promise<CurrentJob | null> {
    return this.read(this.currentFile, isCurrentJob);
  }

  writeCurrent(c: CurrentJob): Promise<void> {
    return writeAtomic(this.currentFile, c);
  }

  async clearCurrent(): Promise<void> {
    rmSync(this.currentFile, { force: true });
  }

  readPending(): Promise<PendingReport | null> {
    return this.read(this.pendingFile, isPendingReport);
  }

  writePending(p: PendingReport): Promise<void> {
    return writeAtomic(this.pendingFile, p);
  }

  async clearPending(): Promise<void> {
    rmSync(this.pendingFile, { force: true });
  }

  /**
   * What the last run of the agent left behind: a report still to deliver, and/or a job it was running
   * when it died. A current.json for the job whose report is already pending is stale (the agent died
   * between the two writes) and is removed here.
   */
  async recover(): Promise<{ pending: PendingReport | null; interrupted: CurrentJob | null }> {
    const pending = await this.readPending();
    let interrupted = await this.readCurrent();
    if (interrupted && pending && interrupted.jobId === pending.jobId) {
      await this.clearCurrent();
      interrupted = null;
    }
    return { pending, interrupted };
  }

  /** Reads a state file; one that cannot be understood is moved aside (and logged), never fatal. */
  private async read<T>(file: string, valid: (v: unknown) => v is T): Promise<T | null> {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    try {
      const value: unknown = JSON.parse(text);
      if (valid(value)) return value;
    } catch {
      /* fall through */
    }
    const aside = `${file}.corrupt-${Date.now()}`;
    await rename(file, aside).catch(() => rm(file, { force: true }));
    this.log('error', 'state file unreadable; moved aside', { file, movedTo: aside });
    return null;
  }
}

/**
 * Replaces `file` with `value` as JSON so that a reader sees the old or the new content, never a mix.
 * Not fsynced: see the top of this file for why that is enough here.
 */
export async function writeAtomic(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  // Synchronous on purpose: a few hundred bytes on the path between two jobs, where a trip through
  // libuv's thread pool per call costs more than the write itself.
  writeFileSync(tmp, `${JSON.stringify(value)}\n`, { mode: 0o600 });
  renameSync(tmp, file);
}

function isCurrentJob(v: unknown): v is CurrentJob {
  const o = v as Partial<CurrentJob> | null;
  return typeof o === 'object' && o !== null && typeof o.jobId === 'string' && typeof o.startedAt === 'string';
}

function isPendingReport(v: unknown): v is PendingReport {
  const o = v as Partial<PendingReport> | null;
  const r = o?.report as Partial<CompleteRequest> | undefined;
  return (
    typeof o === 'object' && o !== null && typeof o.jobId === 'string' && typeof r === 'object' && r !== null &&
    (r.exitCode === null || typeof r.exitCode === 'number') && typeof r.outputs === 'object' && r.outputs !== null
  );
}
