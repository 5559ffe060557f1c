/**
 * An event-stream subscriber over the one API client: `GET /api/v1/events` read as a stream and split
 * into server-sent events. Each event is handed over with the local time it was read, for lag.
 */
import type { ApiClient } from '../../src/client/http.js';

export interface StreamEvent {
  id: number;
  topic: string;
  /** When the endpoint emitted it (ISO time). */
  at: string;
  data: unknown;
}

const DAY_MS = 24 * 3600 * 1000;

/**
 * Reads events until `signal` aborts (resolves) or the stream fails (rejects). Resolves `ready` once the
 * endpoint has answered, so a caller can start the work only when every subscriber is listening.
 */
export async function subscribe(
  api: ApiClient,
  topics: string,
  onEvent: (e: StreamEvent, receivedAt: number) => void,
  signal: AbortSignal,
  ready?: () => void,
  onReconnect?: () => void,
): Promise<void> {
  // As a real client does (the web UI's EventSource, `takt events watch`): when the endpoint ends the
  // stream — it cuts off a subscriber that falls too far behind — reconnect and replay from the last id.
  let lastId: number | undefined;
  for (let first = true; !signal.aborted; first = false) {
    let res: Response;
    try {
      res = await api.raw('GET', '/events', { query: { topics, since: lastId }, signal, timeoutMs: DAY_MS });
    } catch (err) {
      if (signal.aborted) return;
      throw err;
    }
    if (first) ready?.();
    else onReconnect?.();
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const now = Date.now();
        buf += decoder.decode(value, { stream: true });
        let end: number;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const e = parseBlock(block);
          if (e) {
            lastId = e.id;
            onEvent(e, now);
          }
        }
      }
    } catch (err) {
      if (!signal.aborted) throw err;
    }
  }
}

function parseBlock(block: string): StreamEvent | null {
  let data = '';
  for (const line of block.split('\n')) {
    if (line.startsWith('data: ')) data += line.slice(6);
  }
  // Comments (": keepalive") and the retry hint carry no event.
  return data ? (JSON.parse(data) as StreamEvent) : null;
}
