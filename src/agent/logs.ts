/**
 * Streams a job's output to the endpoint as numbered chunks. Output is batched (a chunk goes out every
 * `flushMs` or when it reaches `maxChunkBytes`), sent in order by a single sender that retries through
 * network loss, and bounded in memory: when the endpoint cannot keep up, the middle of the backlog is
 * dropped and replaced by a `system` chunk that says how much is missing — the start and the latest
 * output are what an operator needs. Sequence numbers are given when a chunk is first sent, so they run
 * 1, 2, 3… without gaps even when chunks are dropped before sending; a resend keeps its number, which
 * lets the server deduplicate.
 */
import { backoffMs } from '../client/http.js';
import { MAX_LOG_SEQ, encodedBytes, type LogRequest, type LogResponse } from '../model/protocol.js';
import { errorMessage, type AgentLog } from './log.js';
import { AUTH_RETRY_MS, classify, sleep } from './retry.js';

export type LogStream = LogRequest['stream'];
/** Sends one chunk; resolves to the endpoint's answer (a LogResponse, or nothing); throws (NetworkError, TaktError) when it was not accepted. */
export type PostLog = (chunk: LogRequest, signal: AbortSignal) => Promise<unknown>;

export interface LogBatcherOptions {
  post: PostLog;
  log?: AgentLog;
  /** For the agent's own log lines. */
  jobId?: string;
  flushMs?: number;
  maxChunkBytes?: number;
  maxQueuedBytes?: number;
  backoff?: (attempt: number) => number;
}

export interface LogStats {
  chunksSent: number;
  bytesSent: number;
  /** Output bytes that never reached the endpoint (backlog overflow, give-up, close timeout). */
  bytesDropped: number;
  /** The endpoint answered 404/409: it no longer takes this job's log. */
  gone: boolean;
  /** The endpoint cut this job's log at its bound: the rest was not sent (it would not be stored). */
  cut: boolean;
}

interface Chunk {
  stream: LogStream;
  data: string;
  bytes: number;
  seq?: number;
  /** A placeholder for dropped output, still open for more while unsent. */
  dropped?: number;
}

export const FLUSH_MS = 200;
export const MAX_CHUNK_BYTES = 32 * 1024;
export const MAX_QUEUED_BYTES = 8 * 1024 * 1024;

export class LogBatcher {
  private readonly post: PostLog;
  private readonly log: AgentLog;
  private readonly jobId: string | undefined;
  private readonly flushMs: number;
  private readonly maxChunk: number;
  private readonly maxQueued: number;
  private readonly backoff: (attempt: number) => number;

  private open: { stream: LogStream; parts: string[]; bytes: number } | null = null;
  private readonly queue: Chunk[] = [];
  private queued = 0;
  private nextSeq = 1;
  private timer: NodeJS.Timeout | undefined;
  private sender: Promise<void> | null = null;
  private closed = false;
  /** The sender stops after the chunk on the wire (closeWithTail takes the rest). */
  private holding = false;
  private readonly halt = new AbortController();
  private readonly stats: LogStats = { chunksSent: 0, bytesSent: 0, bytesDropped: 0, gone: false, cut: false };

  constructor(opts: LogBatcherOptions) {
    this.post = opts.post;
    this.log = opts.log ?? (() => {});
    this.jobId = opts.jobId;
    this.flushMs = opts.flushMs ?? FLUSH_MS;
    this.maxChunk = Math.max(16, opts.maxChunkBytes ?? MAX_CHUNK_BYTES);
    this.maxQueued = Math.max(4 * this.maxChunk, opts.maxQueuedBytes ?? MAX_QUEUED_BYTES);
    this.backoff = opts.backoff ?? ((a) => backoffMs(a));
  }

  /** Output bytes held in memory, sent or not yet. */
  get queuedBytes(): number {
    return this.queued;
  }

  get result(): LogStats {
    return { ...this.stats };
  }

  push(stream: LogStream, data: string): void {
    if (this.closed || this.stats.gone || data === '') return;
    let buf = Buffer.from(data, 'utf8');
    while (buf.length > 0) {
      if (this.open && this.open.stream !== stream) this.seal();
      const room = this.maxChunk - (this.open?.bytes ?? 0);
      let cut = Math.min(room, buf.length);
      // Never split a UTF-8 sequence across chunks: each chunk must decode on its own.
      if (cut < buf.length) while (cut > 0 && (buf[cut]! & 0xc0) === 0x80) cut--;
      if (cut === 0) {
        this.seal();
        continue;
      }
      const open = (this.open ??= { stream, parts: [], bytes: 0 });
      open.parts.push(buf.subarray(0, cut).toString('utf8'));
      open.bytes += cut;
      this.queued += cut;
      buf = buf.subarray(cut);
      if (open.bytes >= this.maxChunk || buf.length > 0) this.seal();
    }
    if (this.open && !this.timer) this.timer = setTimeout(() => this.seal(), this.flushMs);
    this.enforceCap();
  }

  /**
   * Sends what is left, waiting at most `timeoutMs` (through retries); then gives up on the rest so that
   * reporting the job's result never waits on its log forever.
   */
  async close(timeoutMs: number): Promise<LogStats> {
    this.closed = true;
    this.seal();
    if (this.sender) {
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        this.sender.then(() => false),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(true), timeoutMs))),
      ]);
      clearTimeout(timer);
      if (timedOut) {
        this.log('warn', 'gave up sending the rest of the job log', { jobId: this.jobId, bytes: this.queued });
        this.discard();
      }
    }
    return this.result;
  }

  /**
   * Ends the log like close(), but hands back up to `maxTailBytes` (as sent, in JSON) of unsent output as numbered chunks
   * instead of posting them, for the job's completion to carry (one request instead of two). A backlog
   * larger than that, or a send already under way, is sent as usual first.
   */
  async closeWithTail(timeoutMs: number, maxTailBytes: number): Promise<{ stats: LogStats; tail: LogRequest[] }> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    const open = this.open;
    this.open = null;
    if (open && open.bytes > 0) this.queue.push({ stream: open.stream, data: open.parts.join(''), bytes: open.bytes });
    if (this.sender) {
      // Let the chunk on the wire finish, and keep the rest for the tail.
      this.holding = true;
      const sender = this.sender;
      let timer: NodeJS.Timeout | undefined;
      const finished = await Promise.race([sender.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), timeoutMs)))]);
      clearTimeout(timer);
      this.holding = false;
      if (!finished) {
        this.log('warn', 'gave up sending the rest of the job log', { jobId: this.jobId, bytes: this.queued });
        this.discard();
        return { stats: this.result, tail: [] };
      }
    }
    // Measured as sent: 64 KiB of control bytes are 384 KiB of JSON. (Raw bytes never exceed that.)
    const fits = this.queued <= maxTailBytes && encodedBytes(this.queue.map((c) => ({ seq: c.seq ?? MAX_LOG_SEQ, stream: c.stream, data: c.data }))) <= maxTailBytes;
    if (!fits) return { stats: await this.close(timeoutMs), tail: [] };
    if (this.stats.gone || this.halt.signal.aborted) return { stats: this.result, tail: [] };
    const tail = this.queue.map((c) => ({ seq: (c.seq ??= this.nextSeq++), stream: c.stream, data: c.data }));
    // Counted as sent: the completion that carries them is delivered or, if never, neither is the job.
    this.stats.chunksSent += tail.length;
    this.stats.bytesSent += this.queued;
    this.queue.length = 0;
    this.queued = 0;
    return { stats: this.result, tail };
  }

  /** Drops everything now (the job is over for the server, or the agent is stopping). */
  discard(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.stats.bytesDropped += this.open?.bytes ?? 0;
    this.open = null;
    for (const c of this.queue) if (c.dropped === undefined) this.stats.bytesDropped += c.bytes;
    this.queue.length = 0;
    this.queued = 0;
    this.halt.abort();
  }

  private seal(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const open = this.open;
    this.open = null;
    if (open && open.bytes > 0) this.queue.push({ stream: open.stream, data: open.parts.join(''), bytes: open.bytes });
    if (this.queue.length) this.kick();
  }

  private kick(): void {
    if (this.sender || this.stats.gone || this.halt.signal.aborted) return;
    this.sender = this.send().finally(() => (this.sender = null));
  }

  private async send(): Promise<void> {
    let attempt = 0;
    const signal = this.halt.signal;
    while (this.queue.length > 0 && !signal.aborted && !this.holding) {
      const head = this.queue[0]!;
      head.seq ??= this.nextSeq++;
      try {
        const answer = await this.post({ seq: head.seq, stream: head.stream, data: head.data }, signal);
        if (signal.aborted) return;
        this.queue.shift();
        this.queued -= head.bytes;
        this.stats.chunksSent++;
        this.stats.bytesSent += head.bytes;
        attempt = 0;
        if ((answer as Partial<LogResponse> | undefined)?.logCut === true) {
          this.log('info', "the endpoint has cut this job's log at its bound; not sending the rest", { jobId: this.jobId });
          this.stats.cut = true;
          this.discard();
          return;
        }
      } catch (err) {
        if (signal.aborted) return;
        const kind = classify(err);
        if (kind === 'gone') {
          this.log('info', 'the endpoint no longer takes this job log; dropping the rest', { jobId: this.jobId, error: errorMessage(err) });
          this.stats.gone = true;
          this.discard();
          return;
        }
        if (kind === 'rejected') {
          this.log('warn', 'the endpoint refused a log chunk; skipping it', { jobId: this.jobId, seq: head.seq, error: errorMessage(err) });
          this.queue.shift();
          this.queued -= head.bytes;
          if (head.dropped === undefined) this.stats.bytesDropped += head.bytes;
          continue;
        }
        if (attempt === 0) this.log('warn', 'cannot send job log; retrying', { jobId: this.jobId, error: errorMessage(err) });
        await sleep(kind === 'auth' ? AUTH_RETRY_MS : this.backoff(attempt++), signal);
      }
    }
  }

  /** Over the memory bound: keep the oldest quarter and the newest output, drop the middle. */
  private enforceCap(): void {
    if (this.queued <= this.maxQueued) return;
    const target = this.maxQueued / 2;
    // Reuse an unsent placeholder if there is one, so repeated overflows add up into one notice.
    let at = this.queue.findIndex((c) => c.dropped !== undefined && c.seq === undefined);
    if (at < 0) {
      at = 0;
      let kept = 0;
      while (at < this.queue.length - 1 && (this.queue[at]!.seq !== undefined || kept < this.maxQueued / 4)) kept += this.queue[at++]!.bytes;
      this.queue.splice(at, 0, { stream: 'system', data: '', bytes: 0, dropped: 0 });
    }
    const marker = this.queue[at]!;
    let dropped = 0;
    while (this.queued > target && at + 1 < this.queue.length) {
      const [gone] = this.queue.splice(at + 1, 1);
      this.queued -= gone!.bytes;
      dropped += gone!.bytes;
    }
    if (marker.dropped! + dropped === 0) {
      this.queue.splice(at, 1);
      return;
    }
    marker.dropped! += dropped;
    this.stats.bytesDropped += dropped;
    this.queued -= marker.bytes;
    marker.data = `takt-agent: ${marker.dropped} bytes of output were dropped here: the endpoint could not keep up\n`;
    marker.bytes = Buffer.byteLength(marker.data);
    this.queued += marker.bytes;
    if (dropped > 0) this.log('warn', 'job log backlog over its bound; dropped output', { jobId: this.jobId, bytes: dropped });
  }
}
