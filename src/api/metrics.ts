/**
 * Prometheus metrics for one endpoint: jobs and their durations (from the event stream, so nothing is
 * added to the engine's hot path), machines by state (counted in the store at scrape time, so every
 * replica reports the same truth), API latency by route, and the process's own figures.
 *
 * Replicas (several `takt serve` on one PostgreSQL): every store hears every replica's events, but the
 * counters here count only the events this process committed (Store.onOwnEvents). So each counter is
 * this replica's share, and `sum without (instance)` over replicas is the fleet's true count — nothing
 * counted twice. `takt_machines` is a gauge of the shared truth: take it from one replica (max, not sum).
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { MACHINE_STATES, TERMINAL_JOB_STATES, type Job, type TaktEvent } from '../model/machine.js';
import type { Store } from '../store/store.js';

/** Seconds: from a `true` task to an hour-long install. */
const JOB_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];
/** Seconds: API calls, long-polls last up to their wait. */
const HTTP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30];

type JobEventData = Pick<Job, 'kind' | 'pipeline' | 'stage' | 'task' | 'state' | 'createdAt' | 'finishedAt'>;

export class Metrics {
  readonly registry = new Registry();
  private readonly jobsStarted: Counter<'pipeline' | 'task'>;
  private readonly jobsFinished: Counter<'pipeline' | 'stage' | 'task' | 'state'>;
  private readonly jobSeconds: Histogram<'pipeline' | 'stage' | 'task'>;
  private readonly http: Histogram<'method' | 'route' | 'status'>;
  private readonly events: Counter;
  private readonly unsubscribe: () => void;

  constructor(store: Store) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.jobsStarted = new Counter({ name: 'takt_jobs_started_total', help: 'Jobs created by this process (claimed by agents through it); sum over replicas for the fleet', labelNames: ['pipeline', 'task'], registers });
    this.jobsFinished = new Counter({
      name: 'takt_jobs_finished_total',
      help: 'Jobs this process ended in a terminal state (succeeded, failed, lost, cancelled); sum over replicas for the fleet',
      labelNames: ['pipeline', 'stage', 'task', 'state'],
      registers,
    });
    this.jobSeconds = new Histogram({
      name: 'takt_job_run_seconds',
      help: 'Run time of jobs this process ended, claim to result; sum buckets over replicas for the fleet',
      labelNames: ['pipeline', 'stage', 'task'],
      buckets: JOB_BUCKETS,
      registers,
    });
    this.http = new Histogram({
      name: 'takt_http_request_duration_seconds',
      help: 'API request latency by route (claims long-poll up to their wait)',
      labelNames: ['method', 'route', 'status'],
      buckets: HTTP_BUCKETS,
      registers,
    });
    this.events = new Counter({ name: 'takt_events_published_total', help: 'Events this process committed (not those it heard from other replicas); sum over replicas for the fleet', registers });
    new Gauge({
      name: 'takt_machines',
      help: 'Machines by state, counted in the store (the same on every replica: do not sum over replicas)',
      labelNames: ['state'],
      registers,
      async collect() {
        const counts = await Promise.all(MACHINE_STATES.map((state) => store.countMachines({ state })));
        MACHINE_STATES.forEach((state, i) => this.set({ state }, counts[i]!));
      },
    });
    new Counter({
      name: 'takt_store_round_trips_total',
      help: "Round trips this process made to the store's database, by statement (PostgreSQL only; SQLite runs statements in-process)",
      labelNames: ['statement'],
      registers,
      collect() {
        this.reset();
        for (const [statement, n] of store.roundTrips()) this.inc({ statement }, n);
      },
    });
    // Own events only: another replica counts its own, so a sum over replicas counts each event once.
    this.unsubscribe = store.onOwnEvents((events) => this.onEvents(events));
  }

  private onEvents(events: TaktEvent[]) {
    this.events.inc(events.length);
    for (const e of events) {
      if (!e.topic.startsWith('jobs.')) continue;
      const j = e.data as JobEventData;
      // A work order's jobs have no pipeline: they are labelled by kind instead.
      const pipeline = j.pipeline ?? `(${j.kind})`;
      if (e.topic.startsWith('jobs.create.')) this.jobsStarted.inc({ pipeline, task: j.task });
      else if (TERMINAL_JOB_STATES.includes(j.state)) {
        const stage = j.stage ?? '';
        this.jobsFinished.inc({ pipeline, stage, task: j.task, state: j.state });
        if (j.finishedAt) this.jobSeconds.observe({ pipeline, stage, task: j.task }, Math.max(0, Date.parse(j.finishedAt) - Date.parse(j.createdAt)) / 1000);
      }
    }
  }

  /** `route` is the route's pattern (`/api/v1/machines/:id`), never the raw URL, to keep labels few. */
  observeRequest(method: string, route: string, status: number, seconds: number) {
    this.http.observe({ method, route, status: String(status) }, seconds);
  }

  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  close() {
    this.unsubscribe();
  }
}
