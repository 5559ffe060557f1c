/**
 * Reads an endpoint's server-sent event stream (GET /api/v1/events) in a test: the events as parsed, until
 * `stop` says so or `ms` pass (then it answers what arrived). `open` resolves once the stream is
 * answered (the subscriber is registered), so a test can make a change only after it listens.
 */
export interface SseEvent {
  id: number;
  topic: string;
  data: unknown;
}

export function readSse(url: string, token: string, query: string, stop: (events: SseEvent[]) => boolean, ms = 30_000, headers: Record<string, string> = {}): { open: Promise<number>; events: Promise<SseEvent[]> } {
  const ac = new AbortController();
  let opened!: (status: number) => void;
  const open = new Promise<number>((r) => (opened = r));
  const events = (async () => {
    const timer = setTimeout(() => ac.abort(), ms);
    const out: SseEvent[] = [];
    try {
      const res = await fetch(`${url}/api/v1/events?${query}`, { headers: { authorization: `Bearer ${token}`, ...headers }, signal: ac.signal });
      opened(res.status);
      if (res.status !== 200 || !res.body) return out;
      const decoder = new TextDecoder();
      let buf = '';
      for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(part, { stream: true });
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const line = buf.slice(0, i).split('\n').find((l) => l.startsWith('data: '));
          buf = buf.slice(i + 2);
          if (line) out.push(JSON.parse(line.slice(6)) as SseEvent);
        }
        if (stop(out)) break;
      }
    } catch {
      /* aborted: answer what arrived */
    } finally {
      clearTimeout(timer);
      opened(0);
      ac.abort();
    }
    return out;
  })();
  return { open, events };
}
