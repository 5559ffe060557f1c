/**
 * Fanout: S subscribers (default 100) on the event stream (`GET /api/v1/events`, no topic filter, so
 * each gets every event) while a fleet run (see fleet.ts) generates events. Reports events/s delivered
 * across all subscribers, each delivery's lag (receive time − the event's `at`, which the endpoint
 * stamps inside the transaction that emits it), the slowest subscriber's lag, and how long after the
 * fleet finished the slowest subscriber had caught up.
 */
import { Worker } from 'node:worker_threads';
import type { Flags } from './lib/args.js';
import { withEndpoint, type Endpoint } from './lib/endpoint.js';
import { prepareFleet, runFleet, type FleetOptions } from './lib/fleetrun.js';
import { mib } from './lib/proc.js';
import { log } from './lib/progress.js';
import type { BenchReport } from './lib/report.js';
import { round } from './lib/stats.js';
import type { SubscriberJob, SubscriberStats } from './lib/subscribers.js';

type FromWorker =
  | { type: 'ready' }
  | { type: 'progress'; received: number; lastIds: number[] }
  | { type: 'result'; stats: SubscriberStats }
  | { type: 'error'; message: string };

export async function fanoutBench(flags: Flags, profileDir?: string): Promise<BenchReport> {
  const subscribers = flags.int('subscribers', 100);
  const o: FleetOptions = { machines: flags.int('machines', 1000), tasks: flags.int('tasks', 10), inflight: flags.int('inflight', 64), maxSeconds: flags.int('max-seconds', 240) };
  flags.done();
  return withEndpoint({ profileDir }, (ep) => fanout(ep, subscribers, o));
}

async function fanout(ep: Endpoint, subscribers: number, o: FleetOptions): Promise<BenchReport> {
  const { machines } = await prepareFleet(ep, o);
  log(`connecting ${subscribers} subscribers…`);
  const pool = new SubscriberPool({ endpoint: ep.url, token: ep.token, subscribers, topics: '' });
  try {
    await pool.ready;
    log(`fleet run: ${o.machines} machines × ${o.tasks} tasks with ${subscribers} subscribers…`);
    const t0 = performance.now();
    const r = await runFleet(ep, machines, o, 'fanout');
    const fleetMs = performance.now() - t0;
    const drainMs = await pool.caughtUp();
    const stats = await pool.stop();

    const per = stats.perSubscriber;
    const received = per.reduce((a, s) => a + s.received, 0);
    const totalMs = fleetMs + drainMs;
    const emitted = Math.max(...per.map((s) => s.received));
    const slowest = per.reduce((a, s) => (s.p99 > a.p99 ? s : a));
    const overall = histPercentiles(stats.histogram);
    const gaps = per.reduce((a, s) => a + s.gaps, 0);
    const short = per.filter((s) => s.received !== emitted).length;
    return {
      rows: [
        { metric: 'subscribers × events each', value: `${subscribers} × ${emitted}` },
        { metric: 'events/s delivered (all subscribers)', value: round(received / (totalMs / 1000), 0) },
        { metric: 'events/s emitted', value: round(emitted / (totalMs / 1000), 0) },
        { metric: 'lag, all deliveries p50 / p99 / max', value: `${overall.p50} / ${overall.p99} / ${overall.max} ms` },
        { metric: 'slowest subscriber lag p50 / p99 / max', value: `${slowest.p50} / ${slowest.p99} / ${slowest.max} ms` },
        { metric: 'slowest subscriber caught up after the fleet ended', value: `${round(drainMs, 0)} ms` },
        { metric: 'missed events (id gaps) / subscribers short', value: `${gaps} / ${short}` },
        { metric: 'reconnects after being cut off (more than 8 MiB behind)', value: `${per.reduce((a, s) => a + s.reconnects, 0)} by ${per.filter((s) => s.reconnects > 0).length} subscribers` },
        { metric: 'fleet job completions/s (with subscribers)', value: round(r.completionsPerSec, 0) },
        { metric: 'server peak RSS', value: `${mib(r.serverPeakRss)} MiB` },
      ],
      data: {
        subscribers,
        ...o,
        fleetMs,
        drainMs,
        received,
        emitted,
        overallLagMs: overall,
        perSubscriber: per,
        fleetCompleted: r.completed,
        fleetFinished: r.finished,
        fleetCompletionsPerSec: r.completionsPerSec,
        fleetLatencyMs: r.latencies.summaries(),
        serverPeakRssBytes: r.serverPeakRss,
        serverCpuSec: r.serverCpuSec,
      },
      notes: [
        "lag = receive time (subscriber thread) − the event's `at`; both clocks are this machine's, at millisecond resolution",
        'the subscribers run in a worker thread of the bench process, so their receive times are not delayed by the simulated agents',
      ],
    };
  } finally {
    await pool.terminate();
  }
}

/** The subscribers' worker thread (lib/subscribers.ts) and its messages. */
class SubscriberPool {
  readonly ready: Promise<void>;
  private readonly worker: Worker;
  private latest: { received: number; lastIds: number[] } = { received: 0, lastIds: [] };
  private failure: string | null = null;
  private result: Promise<SubscriberStats>;

  constructor(job: SubscriberJob) {
    // The worker runs TypeScript through tsx, which it registers itself (a worker does not inherit it).
    this.worker = new Worker(new URL('./lib/subscribers-worker.mjs', import.meta.url), { workerData: job });
    let onReady!: () => void;
    let onFail!: (err: Error) => void;
    this.ready = new Promise<void>((resolve, reject) => {
      onReady = resolve;
      onFail = reject;
    });
    this.result = new Promise<SubscriberStats>((resolve, reject) => {
      const fail = (message: string) => {
        this.failure = message;
        onFail(new Error(`subscribers failed: ${message}`));
        reject(new Error(`subscribers failed: ${message}`));
      };
      this.worker.on('message', (m: FromWorker) => {
        if (m.type === 'ready') onReady();
        else if (m.type === 'progress') this.latest = m;
        else if (m.type === 'result') resolve(m.stats);
        else fail(m.message);
      });
      this.worker.on('error', (err) => fail(err.message));
    });
    // Either promise may never be awaited on some paths; a failure is reported by the one that is.
    this.result.catch(() => undefined);
    this.ready.catch(() => undefined);
  }

  /**
   * Once the fleet is done every event is out; waits until all subscribers have read up to the same,
   * last id and stayed there for a second. Returns how long after the call that took.
   */
  async caughtUp(): Promise<number> {
    const start = performance.now();
    let caughtAt = start;
    let stable = 0;
    let lastMax = -1;
    while (stable < 4) {
      await new Promise((r) => setTimeout(r, 250));
      if (this.failure) throw new Error(`subscribers failed: ${this.failure}`);
      const ids = this.latest.lastIds;
      const max = Math.max(...ids);
      const all = ids.every((id) => id === max);
      if (all && max === lastMax) stable++;
      else {
        stable = 0;
        caughtAt = performance.now();
      }
      lastMax = max;
      if (performance.now() - start > 120_000) {
        const behind = ids.filter((id) => id !== max).length;
        throw new Error(`subscribers did not catch up within 2 minutes: ${behind} of ${ids.length} stopped before event ${max} (lowest ${Math.min(...ids)})`);
      }
    }
    return caughtAt - start;
  }

  async stop(): Promise<SubscriberStats> {
    this.worker.postMessage({ type: 'stop' });
    return this.result;
  }

  async terminate(): Promise<void> {
    await this.worker.terminate();
  }
}

function histPercentiles(h: number[]): { p50: number; p99: number; max: number } {
  const n = h.reduce((a, b) => a + b, 0);
  const at = (p: number) => {
    const rank = Math.ceil((p / 100) * n);
    let seen = 0;
    for (let i = 0; i < h.length; i++) {
      seen += h[i]!;
      if (seen >= rank) return i;
    }
    return NaN;
  };
  let max = 0;
  h.forEach((c, i) => {
    if (c > 0) max = i;
  });
  return { p50: at(50), p99: at(99), max };
}
