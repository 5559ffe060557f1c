/**
 * The per-job bound on stored log output. A machine token may send any amount of output; the endpoint
 * stores at most `maxBytes` of it (and at most `maxChunks` chunks) per job. The chunk that would pass
 * the bound is stored as one `system` line that says so, in its place and under its sequence number;
 * every later chunk of that job is accepted and dropped. The job is not failed for it: its script ran
 * as it ran, only its log is cut, and the cut is visible where it happened.
 *
 * The tally lives in memory (one entry per job with a log in flight), seeded from the store the first
 * time this process sees the job, so a restart does not grant a job a second allowance. With several
 * endpoints sharing one store each keeps its own tally: the bound then holds per endpoint.
 */
import type { Tx } from '../store/store.js';

export interface LogLimits {
  /** Output bytes (UTF-8) stored per job. */
  maxBytes: number;
  /** Chunks stored per job (each row costs more than its bytes; this bounds rows of tiny chunks). */
  maxChunks: number;
}

export const DEFAULT_MAX_LOG_BYTES = 64 * 1024 * 1024;
export const DEFAULT_MAX_LOG_CHUNKS = 1_000_000;

/** What the store holds for a job's log so far. */
export interface LogTally {
  bytes: number;
  chunks: number;
  /** The marker is stored: nothing more of this job's output is. */
  truncated: boolean;
}

export type ChunkVerdict =
  | { kind: 'store' }
  /** Store `marker` (a system chunk) under the chunk's seq instead of its data. */
  | { kind: 'truncate'; marker: string }
  | { kind: 'drop' };

/** The first words of the truncation marker; how a restarted endpoint recognises a cut log. */
export const TRUNCATED_PREFIX = "takt: this job's log reached its limit";

export function truncationMarker(limits: LogLimits, by: 'bytes' | 'chunks'): string {
  const limit = by === 'bytes' ? `${limits.maxBytes} bytes (takt serve --max-log-bytes)` : `${limits.maxChunks} chunks`;
  return `${TRUNCATED_PREFIX} of ${limit}; the rest of its output was not stored\n`;
}

/** Decides what happens to a new chunk of `bytes` bytes given what is stored. Pure. */
export function judgeChunk(tally: LogTally, bytes: number, limits: LogLimits): ChunkVerdict {
  if (tally.truncated) return { kind: 'drop' };
  // The marker takes the last chunk's place, so the rows stay within maxChunks.
  if (tally.chunks + 1 >= limits.maxChunks) return { kind: 'truncate', marker: truncationMarker(limits, 'chunks') };
  if (tally.bytes + bytes > limits.maxBytes) return { kind: 'truncate', marker: truncationMarker(limits, 'bytes') };
  return { kind: 'store' };
}

/** The tally after a verdict was carried out; `inserted`: the store took the row (not a resend). Pure. */
export function afterChunk(tally: LogTally, verdict: ChunkVerdict, bytes: number, inserted: boolean): LogTally {
  // A resend of a stored seq inserts nothing, whatever it was judged: the chunk already counted.
  if (verdict.kind === 'drop' || !inserted) return tally;
  if (verdict.kind === 'truncate') return { bytes: tally.bytes + Buffer.byteLength(verdict.marker), chunks: tally.chunks + 1, truncated: true };
  return { ...tally, bytes: tally.bytes + bytes, chunks: tally.chunks + 1 };
}

/** Tallies kept at most; past this the map is cleared (each is re-read from the store when needed). */
const MAX_TRACKED = 10_000;

export interface ChunkIn {
  seq: number;
  stream: 'stdout' | 'stderr' | 'system';
  data: string;
}

/**
 * Stores chunks of running jobs within the bound. One instance per engine; every call runs inside the
 * caller's store transaction.
 */
export class LogMeter {
  private readonly tallies = new Map<string, LogTally>();

  constructor(readonly limits: LogLimits) {}

  /**
   * Stores `chunks` of job `jobId` (deduplicated by seq, as the store does), cutting the log at the
   * bound. Returns how many chunks were stored, and whether the log is now cut. `last`: the caller
   * forgets the tally right after (a completion's tail), so whether the last chunk was a resend changes
   * nothing: its insert is sent uncounted (Tx.appendLogs `counted: false`; PostgreSQL then sends it with
   * the completion's other writes) and taken as stored.
   */
  async append(tx: Tx, jobId: string, chunks: readonly ChunkIn[], at: string, last = false): Promise<{ stored: number; cut: boolean }> {
    let tally = await this.tally(tx, jobId);
    let stored = 0;
    for (const [i, c] of chunks.entries()) {
      const bytes = Buffer.byteLength(c.data, 'utf8');
      const verdict = judgeChunk(tally, bytes, this.limits);
      if (verdict.kind === 'drop') continue;
      const row = verdict.kind === 'truncate' ? { stream: 'takt' as const, data: verdict.marker } : { stream: c.stream, data: c.data };
      const blind = last && i === chunks.length - 1;
      const inserted = blind ? (await tx.appendLogs([{ jobId, seq: c.seq, ...row, at }], { counted: false }), true) : (await tx.appendLogs([{ jobId, seq: c.seq, ...row, at }])) > 0;
      tally = afterChunk(tally, verdict, bytes, inserted);
      if (inserted) stored++;
    }
    this.remember(jobId, tally);
    return { stored, cut: tally.truncated };
  }

  /** A job just handed out: its log is empty, so its first chunk needs no look at the store. */
  fresh(jobId: string): void {
    this.remember(jobId, { chunks: 0, bytes: 0, truncated: false });
  }

  /** The job's log is closed (it ended): its tally is no longer needed. */
  forget(jobId: string): void {
    this.tallies.delete(jobId);
  }

  private async tally(tx: Tx, jobId: string): Promise<LogTally> {
    const known = this.tallies.get(jobId);
    if (known) return known;
    const size = await tx.logSize(jobId);
    let truncated = false;
    if (size.chunks > 0) {
      // Once cut, nothing is stored after the marker: it is the last chunk.
      const last = await tx.getLogs(jobId, (await tx.lastLogSeq(jobId)) - 1, 1);
      truncated = last[0]?.stream === 'takt' && last[0].data.startsWith(TRUNCATED_PREFIX);
    }
    return { ...size, truncated };
  }

  private remember(jobId: string, tally: LogTally): void {
    if (this.tallies.size >= MAX_TRACKED && !this.tallies.has(jobId)) this.tallies.clear();
    this.tallies.set(jobId, tally);
  }
}
