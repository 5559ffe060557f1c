/**
 * Follows the event stream (`GET /api/v1/events`) over the one API client: server-sent events handed
 * over as they arrive, and the stream resumed after the last event received whenever the endpoint ends
 * it (it cuts off a reader that falls too far behind) or the connection drops — so a follower neither
 * misses nor repeats an event still inside the endpoint's retention window.
 */
import { backoffMs, NetworkError, sleep, type ApiClient } from './http.js';

export interface StreamEvent {
  id: number;
  topic: string;
  /** When the endpoint emitted it (ISO time). */
  at: string;
  data: unknown;
}

export interface FollowOptions {
  /** Topic filters, comma-separated (`machines.*.*,jobs.update.j-1`); empty for everything. */
  topics?: string;
  /** Replay the events after this id first. */
  since?: number | string;
  /** Stops following (the promise resolves). */
  signal?: AbortSignal;
  /** Each time a stream has opened; `first` the first time. */
  onOpen?: (first: boolean) => void;
  /** The stream ended or failed: `why`, and how long until it is resumed. */
  onBreak?: (why: string, waitMs: number) => void;
}

/** Longer than any stream lasts: the request's own timeout must not end it. */
const STREAM_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * Calls `onEvent` for every event until `signal` aborts. Rejects only on an answer that retrying cannot
 * change (a rejected token, a bad filter); network failures are waited out with backoff.
 */
export async function followEvents(client: ApiClient, onEvent: (e: StreamEvent, receivedAt: number) => void, o: FollowOptions = {}): Promise<void> {
  let since = o.since;
  let first = true;
  for (let attempt = 0; !o.signal?.aborted; ) {
    let why: string;
    let waitMs = 0;
    try {
      const res = await client.raw('GET', '/events', { query: { topics: o.topics || undefined, since }, signal: o.signal, timeoutMs: STREAM_TIMEOUT_MS });
      o.onOpen?.(first);
      first = false;
      attempt = 0;
      const reader = res.body!.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const now = Date.now();
        buf += decoder.decode(value, { stream: true });
        let end: number;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const e = parseBlock(buf.slice(0, end));
          buf = buf.slice(end + 2);
          if (!e) continue;
          since = e.id;
          onEvent(e, now);
        }
      }
      why = 'the endpoint ended the stream';
    } catch (err) {
      if (o.signal?.aborted) return;
      // fetch reports a body cut off mid-read as a TypeError ("terminated").
      if (!(err instanceof NetworkError) && !(err instanceof TypeError)) throw err;
      why = err.message;
      waitMs = backoffMs(attempt++);
    }
    if (o.signal?.aborted) return;
    o.onBreak?.(why, waitMs);
    if (waitMs > 0) await sleep(waitMs, o.signal);
  }
}

function parseBlock(block: string): StreamEvent | null {
  let data = '';
  for (const line of block.split('\n')) if (line.startsWith('data: ')) data += line.slice(6);
  // Comments (": keepalive") and the retry hint carry no event.
  return data ? (JSON.parse(data) as StreamEvent) : null;
}
