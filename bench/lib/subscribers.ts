/**
 * Event-stream subscribers in a worker thread: a thread of their own so that receive times are taken on
 * an event loop that is not also busy driving the simulated agents (which would inflate the lag).
 *
 * Messages in: {type:'stop'}. Messages out: {type:'ready'}, {type:'progress', received, lastIds},
 * {type:'result', ...SubscriberStats}.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ApiClient } from '../../src/client/http.js';
import { followEvents } from '../../src/client/events.js';

export interface SubscriberJob {
  endpoint: string;
  token: string;
  subscribers: number;
  topics: string;
}

export interface SubscriberStats {
  /** Per subscriber: events received, the largest id seen, lag p50/p99/max (ms). */
  perSubscriber: Array<{ received: number; lastId: number; gaps: number; reconnects: number; p50: number; p99: number; max: number }>;
  /** Lag histogram over every delivery, 1 ms buckets (the last bucket holds everything beyond). */
  histogram: number[];
}

const BUCKETS = 60_000;

class Hist {
  readonly counts = new Uint32Array(BUCKETS + 1);
  n = 0;
  max = 0;
  add(ms: number) {
    const b = Math.min(BUCKETS, Math.max(0, Math.floor(ms)));
    this.counts[b]!++;
    this.n++;
    if (ms > this.max) this.max = ms;
  }
  percentile(p: number): number {
    const rank = Math.ceil((p / 100) * this.n);
    let seen = 0;
    for (let i = 0; i <= BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= rank && rank > 0) return i;
    }
    return NaN;
  }
}

async function main() {
  const job = workerData as SubscriberJob;
  const ac = new AbortController();
  const all = new Hist();
  const subs = Array.from({ length: job.subscribers }, () => ({ hist: new Hist(), received: 0, lastId: 0, gaps: 0, reconnects: 0 }));
  let ready = 0;
  const running = subs.map((s) =>
    followEvents(
      new ApiClient({ endpoint: job.endpoint, token: job.token }),
      (e, receivedAt) => {
        const lag = receivedAt - Date.parse(e.at);
        s.hist.add(lag);
        all.add(lag);
        s.received++;
        // Ids are shared by all topics; with no topic filter each subscriber must see every one of them.
        if (!job.topics && s.lastId && e.id !== s.lastId + 1) s.gaps++;
        s.lastId = e.id;
      },
      {
        topics: job.topics,
        signal: ac.signal,
        onOpen: (first) => {
          if (!first) s.reconnects++;
          else if (++ready === subs.length) parentPort!.postMessage({ type: 'ready' });
        },
      },
    ),
  );
  const ticker = setInterval(() => parentPort!.postMessage({ type: 'progress', received: subs.reduce((a, s) => a + s.received, 0), lastIds: subs.map((s) => s.lastId) }), 250);
  parentPort!.on('message', (m: { type: string }) => {
    if (m.type !== 'stop') return;
    clearInterval(ticker);
    ac.abort();
    void Promise.allSettled(running).then(() => {
      const stats: SubscriberStats = {
        perSubscriber: subs.map((s) => ({ received: s.received, lastId: s.lastId, gaps: s.gaps, reconnects: s.reconnects, p50: s.hist.percentile(50), p99: s.hist.percentile(99), max: Math.round(s.hist.max) })),
        histogram: Array.from(all.counts),
      };
      parentPort!.postMessage({ type: 'result', stats });
    });
  });
  await Promise.all(running);
}

main().catch((err: unknown) => {
  parentPort!.postMessage({ type: 'error', message: err instanceof Error ? err.message : String(err) });
});
