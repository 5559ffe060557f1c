/**
 * The fleet run shared by the fleet and fanout benches: N machines created without a broker (their
 * tokens come back in the answer), a pipeline of T trivial tasks, and one simulated agent per machine.
 */
import type { Endpoint } from './endpoint.js';
import { adminApi, serverPid } from './endpoint.js';
import { Latencies } from './latency.js';
import { createMachines, type CreatedMachine } from './machines.js';
import { installPack, seqPack } from './packs.js';
import { currentRss, mib, peakRss } from './proc.js';
import { profileWindow } from './profile.js';
import { log, progress } from './progress.js';
import { Semaphore } from './semaphore.js';
import type { ApiClient } from '../../src/client/http.js';
import { runSimAgent } from './simagent.js';
import { readFileSync } from 'node:fs';

export const FLEET_PIPELINE = 'fleet';
/** Fleet machines are named fleet<batch>-<n>; the probe machines probe0-<n>. */
const FLEET_PREFIX = 'fleet';

export interface FleetOptions {
  machines: number;
  tasks: number;
  inflight: number;
  /** Time budget for the run; agents stop at the next job boundary once it is spent. */
  maxSeconds: number;
  /** Labels every fleet machine gets (the scoped-token comparison labels them env=bench). */
  labels?: Record<string, string>;
}

/**
 * An operator watching the fleet while it runs, with a token of its own (the admin's, or a label-scoped
 * service token): after each job of every `every`-th machine completes, it reads that machine
 * (`GET /machines/:id`), the job (`GET /jobs/:id`) and the machine's last 10 jobs (`GET /jobs?machine=`),
 * through the same in-flight cap as the agents, timed as `operator`. Each read is a permission check
 * on a route about one machine (or a list filtered by machine), so a scoped token's check is on the hot path.
 */
export interface FleetOperator {
  api: ApiClient;
  every: number;
}

export interface FleetResult {
  machines: number;
  tasks: number;
  jobs: number;
  /** Jobs completed (less than `jobs` when the time budget ran out). */
  completed: number;
  finished: boolean;
  createMs: number;
  runMs: number;
  completionsPerSec: number;
  latencies: Latencies;
  /** Server peak RSS (VmHWM) over its whole life, bytes. */
  serverPeakRss: number | null;
  /** CPU seconds over the run: the server's, and this process's (the simulated agents'). */
  serverCpuSec: number;
  clientCpuSec: number;
}

/** Machines walked one request at a time before the run, for latency without queueing. */
export const PROBE_MACHINES = 10;

/** Installs the pipeline and creates the machines (untimed), and the probe machines. */
export async function prepareFleet(ep: Endpoint, o: FleetOptions): Promise<{ machines: CreatedMachine[]; probes: CreatedMachine[]; createMs: number }> {
  const api = adminApi(ep);
  await installPack(api, seqPack({ name: FLEET_PIPELINE, tasks: o.tasks, description: `${o.tasks} simulated tasks`, script: () => 'true\n' }));
  log(`creating ${o.machines} machines…`);
  const t0 = performance.now();
  const machines = await createMachines(api, {
    prefix: FLEET_PREFIX,
    count: o.machines,
    pipeline: FLEET_PIPELINE,
    ...(o.labels ? { labels: o.labels } : {}),
    onBatch: (n) => log(`  ${n}/${o.machines} created (${((performance.now() - t0) / 1000).toFixed(1)} s)`),
  });
  const createMs = performance.now() - t0;
  const probes = await createMachines(api, { prefix: 'probe', count: PROBE_MACHINES, pipeline: FLEET_PIPELINE });
  return { machines, probes, createMs };
}

/**
 * Latency with nothing else going on: the probe machines' agents one after another, one request on the
 * wire at a time. This is the endpoint's service time per request (plus the client's own cost).
 */
export async function probeLatency(ep: Endpoint, probes: CreatedMachine[], tasks: number): Promise<Latencies> {
  const latencies = new Latencies();
  const gate = new Semaphore(1);
  for (const m of probes) {
    await runSimAgent({ endpoint: ep.url, machineId: m.id, token: m.token!, jobs: tasks, latencies, gate, onComplete: () => undefined });
  }
  return latencies;
}

/**
 * Runs every machine's simulated agent to the end of the pipeline; the clock covers only this.
 * `ep`: one endpoint, or the replicas of one store, machine i talking to replica i mod N (as agents spread
 * over replicas by a load balancer would); then the RSS is the largest replica's and the CPU their sum.
 */
export async function runFleet(ep: Endpoint | Endpoint[], machines: CreatedMachine[], o: FleetOptions, label = 'fleet', operator?: FleetOperator): Promise<Omit<FleetResult, 'createMs'>> {
  const eps = Array.isArray(ep) ? ep : [ep];
  const pids = eps.map(serverPid);
  const pid = pids[0]!;
  const latencies = new Latencies();
  const gate = new Semaphore(o.inflight);
  const budget = AbortSignal.timeout(o.maxSeconds * 1000);
  const total = machines.length * o.tasks;
  let completed = 0;
  const stop = progress(label, () => ({ done: completed, total, extra: `server RSS ${pids.map((p) => mib(currentRss(p))).join(' + ')} MiB` }));
  const cpu0 = sum(pids.map(serverCpu));
  const client0 = process.cpuUsage();
  const t0 = performance.now();
  const timed = profileWindow();
  try {
    await Promise.all(
      machines.map((m, i) =>
        runSimAgent({
          endpoint: eps[i % eps.length]!.url,
          machineId: m.id,
          token: m.token!,
          jobs: o.tasks,
          latencies,
          gate,
          onComplete: () => completed++,
          signal: budget,
          ...(operator && i % operator.every === 0 ? { afterComplete: (jobId: string) => operatorReads(operator.api, m.id, jobId, latencies, gate) } : {}),
        }),
      ),
    );
  } finally {
    timed();
    stop();
  }
  const runMs = performance.now() - t0;
  const client = process.cpuUsage(client0);
  const finished = completed === total;
  if (!finished) log(`time budget of ${o.maxSeconds} s spent: ${completed} of ${total} jobs completed`);
  // The machines really are done, by the endpoint's own account.
  const done = await adminApi(eps[0]!).get<{ total: number }>('/machines', { state: 'done', pipeline: FLEET_PIPELINE, name: FLEET_PREFIX, limit: 1 });
  if (finished && done.total !== machines.length) throw new Error(`${done.total} of ${machines.length} machines are done`);
  return {
    machines: machines.length,
    tasks: o.tasks,
    jobs: total,
    completed,
    finished,
    runMs,
    completionsPerSec: completed / (runMs / 1000),
    latencies,
    serverPeakRss: eps.length === 1 ? peakRss(pid) : Math.max(...pids.map((p) => peakRss(p) ?? 0)),
    serverCpuSec: sum(pids.map(serverCpu)) - cpu0,
    clientCpuSec: (client.user + client.system) / 1e6,
  };
}

/** The operator's reads after one of a machine's jobs (FleetOperator). @throws when a read is refused: the bench's token must reach every fleet machine. */
async function operatorReads(api: ApiClient, machineId: string, jobId: string, latencies: Latencies, gate: Semaphore): Promise<void> {
  const read = <T>(path: string, query?: Record<string, string | number>) => gate.run(() => latencies.time('operator', () => api.get<T>(path, query)));
  await read(`/machines/${encodeURIComponent(machineId)}`);
  await read(`/jobs/${encodeURIComponent(jobId)}`);
  const jobs = await read<{ items: unknown[] }>('/jobs', { machine: machineId, limit: 10 });
  if (jobs.items.length === 0) throw new Error(`the operator's token sees no jobs of machine ${machineId}: its scope does not cover the fleet`);
}

function sum(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}

/** utime + stime of a process, in seconds (from /proc/<pid>/stat, in clock ticks of 1/100 s). */
function serverCpu(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}
