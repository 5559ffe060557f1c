/**
 * A job's log at the endpoint, from first chunk to close: every chunk is masked (secure values the job
 * could know, logmask.ts), then stored within the job's bound (logcap.ts); the completion's tail goes the
 * same way; when the job ends its masking carries are flushed and its log is closed. The engine decides
 * when a job runs and ends; this decides what of its output is kept. Every method runs inside the caller's
 * store transaction.
 */
import type { Job } from '../model/machine.js';
import type { LogRequest } from '../model/protocol.js';
import type { Tx } from '../store/store.js';
import { LogMeter, type LogLimits } from './logcap.js';
import { LogMasks, Masker, maskStream } from './logmask.js';

/** The secure values a job could know, as its log could show them (its task's secure params and outputs). */
export type JobSecrets = (tx: Tx, jobId: string) => Promise<string[]>;

export class JobLogs {
  private readonly meter: LogMeter;
  /** Per running job: the secure values its log must not show, and each stream's carry. */
  private readonly masks = new LogMasks();

  constructor(
    limits: LogLimits,
    private readonly secretsOf: JobSecrets,
  ) {
    this.meter = new LogMeter(limits);
  }

  /** A job was handed out with these secrets (known at claim time, without another render). */
  begin(jobId: string, secrets: string[]): void {
    this.masks.begin(jobId, secrets);
    this.meter.fresh(jobId);
  }

  /**
   * Masks and stores chunks of a running job, within its bound (deduplicated by seq). `cut`: the log has
   * reached its bound and nothing more of it will be stored.
   */
  async append(tx: Tx, job: Pick<Job, 'id' | 'state'>, chunks: LogRequest[], at: string): Promise<{ cut: boolean }> {
    const { cut } = await this.meter.append(tx, job.id, await this.masked(tx, job, chunks), at);
    return { cut };
  }

  /**
   * The completion's tail, masked and stored within the bound; then the bound's tally is closed. With
   * `outputSecrets` (the job's own secure outputs, known only now) what was stored before is re-masked.
   */
  async appendTail(tx: Tx, job: Pick<Job, 'id' | 'state'>, chunks: LogRequest[] | undefined, outputSecrets: string[], at: string): Promise<void> {
    // `last`: the tally is forgotten right below, so the last chunk's insert needs no answer.
    if (chunks?.length) await this.meter.append(tx, job.id, this.masks.chunks(job.id, chunks), at, true);
    this.meter.forget(job.id);
    if (outputSecrets.length) await this.remask(tx, job.id, new Masker(outputSecrets));
  }

  /** A chunk arrived for a job that is no longer running: forget its tally (its log is closed). */
  closed(jobId: string): void {
    this.meter.forget(jobId);
  }

  /**
   * The masker for a job's secrets plus `extra`. A running job keeps state (its carries); its secrets are
   * recomputed when this endpoint has none for it (after a restart). An ended job gets a one-off masker.
   */
  async masker(tx: Tx, job: Pick<Job, 'id' | 'state'>, extra: string[]): Promise<Masker> {
    if (job.state !== 'running') return new Masker([...(await this.secretsOf(tx, job.id)), ...extra]);
    if (!this.masks.has(job.id)) this.masks.begin(job.id, await this.secretsOf(tx, job.id));
    if (extra.length) this.masks.begin(job.id, extra);
    return this.masks.masker(job.id)!;
  }

  /** Ends a job's masking: what each stream held back goes after its last stored chunk. */
  async end(tx: Tx, jobId: string): Promise<void> {
    for (const f of this.masks.end(jobId)) {
      const [last] = await tx.getLogs(jobId, f.seq - 1, 1);
      if (last?.seq === f.seq) await tx.replaceLogData(jobId, f.seq, last.data + f.data);
    }
  }

  /** Chunks with every secure value the job could know masked, before they are stored. */
  private async masked(tx: Tx, job: Pick<Job, 'id' | 'state'>, chunks: LogRequest[]): Promise<LogRequest[]> {
    if (this.masks.has(job.id)) return this.masks.chunks(job.id, chunks);
    const masker = await this.masker(tx, job, []);
    return this.masks.has(job.id) ? this.masks.chunks(job.id, chunks) : chunks.map((c) => ({ ...c, data: masker.mask(c.data) }));
  }

  /** Masks `masker`'s secrets in the job's stored log (its own outputs, known only when it completes). */
  private async remask(tx: Tx, jobId: string, masker: Masker): Promise<void> {
    const streams = new Map<string, Array<{ seq: number; data: string }>>();
    for (let after = 0; ; ) {
      const page = await tx.getLogs(jobId, after, 10_000);
      for (const c of page) {
        const list = streams.get(c.stream);
        if (list) list.push(c);
        else streams.set(c.stream, [c]);
      }
      if (page.length < 10_000) break;
      after = page[page.length - 1]!.seq;
    }
    for (const chunks of streams.values()) {
      const out = maskStream(masker, chunks.map((c) => c.data));
      for (let i = 0; i < chunks.length; i++) if (out[i] !== chunks[i]!.data) await tx.replaceLogData(jobId, chunks[i]!.seq, out[i]!);
    }
  }
}
