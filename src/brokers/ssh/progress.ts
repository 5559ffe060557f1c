/**
 * How far a followed job's log has been stored, so a restarted endpoint reattaches at exactly the byte it
 * stopped at (no line twice, none missing). One small file per machine under `<data>/ssh/`, written
 * ahead: before a chunk goes to the store its sequence number and size are recorded as pending; after the
 * store has it, they are folded in. On restart a pending chunk counts if the store holds its sequence
 * number (the store decides, not the file). Written with tmp + rename; not fsynced (a power cut costs at
 * most a repeated chunk, as the agent's state files argue in src/agent/state.ts).
 */
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface Offsets {
  stdout: number;
  stderr: number;
}

interface Saved {
  jobId: string;
  /** Bytes of each remote log file stored. */
  sent: Offsets;
  /** The last log sequence number stored for those bytes. */
  seq: number;
  pending?: { seq: number; stream: keyof Offsets | 'system'; bytes: number };
}

export class LogProgress {
  private saved: Saved;
  private readonly file: string;

  private constructor(dir: string, machineId: string, saved: Saved) {
    this.file = join(dir, `${machineId}.json`);
    this.saved = saved;
  }

  /**
   * The progress of `jobId` on `machineId`: from the file when it is about that job, else from nothing.
   * `storedSeq`: the highest log sequence number the store holds for the job.
   */
  static load(dir: string, machineId: string, jobId: string, storedSeq: number): LogProgress {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    let saved: Saved | null = null;
    try {
      const v = JSON.parse(readFileSync(join(dir, `${machineId}.json`), 'utf8')) as Saved;
      if (v.jobId === jobId && typeof v.sent?.stdout === 'number' && typeof v.sent?.stderr === 'number' && typeof v.seq === 'number') saved = v;
    } catch {
      /* none, or unreadable: start from nothing */
    }
    saved ??= { jobId, sent: { stdout: 0, stderr: 0 }, seq: storedSeq };
    if (saved.pending && storedSeq >= saved.pending.seq && saved.pending.stream !== 'system') saved.sent[saved.pending.stream] += saved.pending.bytes;
    delete saved.pending;
    // Chunks stored past what the file knows (only the endpoint's own notes can be) keep their numbers.
    saved.seq = Math.max(saved.seq, storedSeq);
    const p = new LogProgress(dir, machineId, saved);
    p.write();
    return p;
  }

  /** Bytes of each log stored so far. */
  get sent(): Offsets {
    return { ...this.saved.sent };
  }

  /** The sequence number the next chunk's numbers are counted from. */
  get seqBase(): number {
    return this.saved.seq;
  }

  /** Before a chunk goes to the store. */
  pending(seq: number, stream: keyof Offsets | 'system', bytes: number): void {
    this.saved.pending = { seq, stream, bytes };
    this.write();
  }

  /** After the store has taken the chunk `pending` announced. */
  stored(seq: number): void {
    const p = this.saved.pending;
    if (p && p.seq === seq) {
      if (p.stream !== 'system') this.saved.sent[p.stream] += p.bytes;
      delete this.saved.pending;
    }
    this.saved.seq = Math.max(this.saved.seq, seq);
    this.write();
  }

  /** The job is reported: nothing to reattach to. */
  clear(): void {
    rmSync(this.file, { force: true });
  }

  private write(): void {
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.saved), { mode: 0o600 });
    renameSync(tmp, this.file);
  }
}
