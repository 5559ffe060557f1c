/**
 * Prometheus metrics for one endpoint: jobs and their durations (from the event stream, so nothing is
 * added to the engine's hot path), machines by state (counted in the store at scrape time, so every
 * replica reports the same truth), API latency by route, and the process's own figures.
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
    this.jobsStarted = new Counter({ name: 'takt_jobs_started_total', help: 'Jobs claimed by agents', labelNames: ['pipeline', 'task'], registers });
    this.jobsFinished = new Counter({
      name: 'takt_jobs_finished_total',
      help: 'Jobs that reached a terminal state (succeeded, failed, lost, cancelled)',
      labelNames: ['pipeline', 'stage', 'task', 'state'],
      registers,
    });
    this.jobSeconds = new Histogram({
      name: 'takt_job_run_seconds',
      help: 'Run time of finished jobs, claim to result',
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
    this.events = new Counter({ name: 'takt_events_published_total', help: 'Events published after commit', registers });
    new Gauge({
      name: 'takt_machines',
      help: 'Machines by state',
      labelNames: ['state'],
      registers,
      async collect() {
        const counts = await Promise.all(MACHINE_STATES.map((state) => store.countMachines({ state })));
        MACHINE_STATES.forEach((state, i) => this.set({ state }, counts[i]!));
      },
    });
    this.unsubscribe = store.onEvents((events) => this.onEvents(events));
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
