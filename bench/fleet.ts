/**
 * `--profile` with `--store`: V8 CPU profiles of the PostgreSQL replicas, one directory per replica count.
 * Fleet: N machines (default 10,000) on SQLite (with `--store postgres://… --replicas 1,2,3`: 1,000 on
 * SQLite and then on PostgreSQL with each number of replicas, side by side), each driven through a pipeline of T trivial tasks by a
 * simulated agent that speaks the real protocol over HTTP. Reports job completions/s, client-side API
 * latency per request type, the server's peak RSS and the time to finish.
 *
 * Why a cap on requests in flight (--inflight): the simulated agents have no script to run, so without a
 * cap all N of them would have a request queued at the endpoint at every moment, and by Little's law
 * every request would wait N / throughput — seconds at N = 10,000 — whatever the endpoint's speed. Real
 * agents spend most of their time running scripts. The cap models that: at most `inflight` agents are
 * talking to the endpoint at once; the others are "running their job". Latency is measured around the
 * HTTP call only, not the wait for the cap. Throughput is measured with the endpoint saturated.
 */
import { loadavg } from 'node:os';
import { join } from 'node:path';
import type { Flags } from './lib/args.js';
import { ApiClient } from '../src/client/http.js';
import { adminApi, withEndpoint, type Endpoint } from './lib/endpoint.js';
import { prepareFleet, probeLatency, runFleet, type FleetOptions } from './lib/fleetrun.js';
import { mib } from './lib/proc.js';
import { backendCpuBetween, configLabel, startReplicas, type StoreConfig } from './lib/replicas.js';
import { log } from './lib/progress.js';
import type { BenchReport, Row } from './lib/report.js';
import { round } from './lib/stats.js';

const GOAL_RATE = 2000;
const GOAL_P99_MS = 50;
const GOAL_RSS = 2 ** 30;

export async function fleetBench(flags: Flags, profileDir?: string): Promise<BenchReport> {
  const store = flags.string('store');
  const replicas = flags.string('replicas');
  const tokens = flags.string('token');
  const o: FleetOptions = { machines: flags.int('machines', store || tokens ? 2000 : 10_000), tasks: flags.int('tasks', 10), inflight: flags.int('inflight', 64), maxSeconds: flags.int('max-seconds', 240) };
  const every = flags.int('operator-every', 4);
  const rounds = flags.int('rounds', 1);
  // --control / --no-control: a second admin run each round, the noise floor (default with two rounds or more).
  const control = flags.bool('no-control') ? false : flags.bool('control') || rounds > 1;
  flags.done();
  if (tokens !== undefined) {
    if (store !== undefined || replicas !== undefined) throw new Error('--token compares tokens on one SQLite endpoint: leave out --store and --replicas');
    return compareTokens(o, parseTokens(tokens), every, rounds, control, profileDir);
  }
  if (store === undefined || store === 'sqlite') {
    if (replicas !== undefined) throw new Error('--replicas is for PostgreSQL: give --store postgres://USER@HOST:PORT/DB');
    return withEndpoint({ profileDir }, (ep) => fleet(ep, o));
  }
  if (!/^postgres(ql)?:\/\//.test(store)) throw new Error(`--store must be sqlite or a PostgreSQL URL (postgres://USER@HOST:PORT/DB), got '${store}'`);
  return compareStores(o, store, parseReplicas(replicas ?? '1,2,3'), profileDir);
}

type TokenKind = 'admin' | 'scoped';

/** `admin,scoped` → ['admin', 'scoped'] (each once, in the order given). */
function parseTokens(v: string): TokenKind[] {
  const ks = v.split(',').map((x) => x.trim());
  if (ks.length === 0 || ks.some((k) => k !== 'admin' && k !== 'scoped') || new Set(ks).size !== ks.length) throw new Error(`--token takes admin, scoped or both (admin,scoped), got '${v}'`);
  return ks as TokenKind[];
}

/** The label every fleet machine gets in the token comparison, and the scoped binding's selector. */
const BENCH_LABELS = { env: 'bench' };
const SCOPED_SELECTOR = 'env=bench';

/**
 * Issue #16's benchmark: the same fleet with the operator's reads made with the admin token and with a
 * label-scoped service token (a user bound to `operator` on `env=bench` only; every fleet machine is
 * labelled env=bench), in one run, each configuration on a fresh endpoint set up alike (the scoped user
 * and token exist in all of them; only the token the operator reads with differs). The agents use their
 * machine tokens either way; the operator (FleetOperator) reads a machine, its job and its jobs after each
 * job of every `every`-th machine, so each scoped read is a label-scoped permission check.
 *
 * Paired rounds: each round runs every configuration back to back (the order rotating from round to
 * round), and each is compared with *that round's* admin run, so load from elsewhere that drifts during
 * the run falls on both sides of a pair; the verdict is on the median over rounds of the paired
 * differences. With `control` (default with two rounds or more) each round also runs the admin token a
 * second time: its paired difference from the first admin run is the noise floor — how far two identical
 * configurations differ on this machine now — printed beside the verdict, so a reader sees whether a
 * 5 % answer is above the noise.
 */
async function compareTokens(o: FleetOptions, kinds: TokenKind[], every: number, rounds: number, control: boolean, profileDir?: string): Promise<BenchReport> {
  const configs: Config[] = [...kinds, ...(control && kinds.includes('admin') ? (['control'] as const) : [])];
  const rows: Row[] = [{ metric: 'machines × tasks (each configuration)', value: `${o.machines} × ${o.tasks} = ${o.machines * o.tasks} jobs; operator reads after each job of every ${every}th machine; ${rounds} round(s) of ${configs.join(', ')}` }];
  const data: Record<string, unknown> = { ...o, operatorEvery: every, rounds, configurations: [] as unknown[], loadAverageStart: loadavg() };
  // Indexed by round; a configuration that failed in a round leaves a hole there (and that round out of the verdict).
  const per: Record<Config, Array<Sample | undefined>> = { admin: [], scoped: [], control: [] };
  const failures: string[] = [];
  for (let round_ = 0; round_ < rounds; round_++) {
    // Rotated each round, so no configuration always runs first (on a cold machine) or last.
    const order = configs.map((_, i) => configs[(i + round_) % configs.length]!);
    for (const kind of order) {
      const label = `${kind === 'control' ? 'admin token again (control)' : `${kind} token`}${rounds > 1 ? ` (round ${round_ + 1})` : ''}`;
      log(`${label}: starting an endpoint…`);
      // A lease of 5 minutes: on a machine shared with other work (or profiled) a simulated agent can wait
      // more than the default 30 s for its turn, and a lost job ends the run without measuring anything.
      const prof = { lease: '5m', ...(profileDir ? { profileDir: join(profileDir, `${kind}-r${round_ + 1}`), profileAgents: 0 } : {}) };
      // A configuration that fails (on a machine this busy a render can overrun its budget and stop a
      // machine) is reported and its round left out; the other rounds still answer.
      await withEndpoint(prof, async (ep) => {
        const { machines } = await prepareFleet(ep, { ...o, labels: BENCH_LABELS });
        // Every configuration makes the scoped user and token (an argon2 hash, three rows): the endpoints
        // differ only in the token the operator reads with.
        const scoped = await scopedApi(ep);
        const api = kind === 'scoped' ? scoped : adminApi(ep);
        log(`${label}: ${machines.length} machines created; running…`);
        const run = await runFleet(ep, machines, o, label, { api, every });
        const lat = run.latencies.summaries();
        // The endpoint's CPU per 1,000 requests: its cost per request, less at the mercy of other load than wall time.
        const cpuPerK = (run.serverCpuSec * 1000) / run.latencies.count();
        per[kind][round_] = { rate: run.completionsPerSec, p99: lat.all!.p99, cpuPerK };
        rows.push(
          { metric: `${label}: job completions/s`, value: round(run.completionsPerSec, 0) },
          { metric: `${label}: latency all p50 / p99`, value: `${round(lat.all!.p50)} / ${round(lat.all!.p99)} ms` },
          { metric: `${label}: operator reads p50 / p99 (${lat.operator?.n ?? 0} reads)`, value: lat.operator ? `${round(lat.operator.p50)} / ${round(lat.operator.p99)} ms` : 'none' },
          { metric: `${label}: CPU endpoint / agents`, value: `${run.serverCpuSec.toFixed(1)} s / ${run.clientCpuSec.toFixed(1)} s (endpoint ${round(cpuPerK)} CPU-s per 1,000 requests)` },
        );
        if (!run.finished) rows.push({ metric: `${label}: finished`, value: `no: ${run.completed} of ${run.jobs} jobs in ${o.maxSeconds} s` });
        (data.configurations as unknown[]).push({ label, kind, round: round_ + 1, runMs: run.runMs, completed: run.completed, completionsPerSec: run.completionsPerSec, latencyMs: lat, serverPeakRssBytes: run.serverPeakRss, serverCpuSec: run.serverCpuSec, clientCpuSec: run.clientCpuSec, loadAverage: loadavg() });
      }).catch((err: unknown) => {
        const message = err instanceof Error ? err.message : String(err);
        log(`${label}: failed (${message}); round ${round_ + 1} is left out of the comparison`);
        rows.push({ metric: `${label}: failed`, value: message.slice(0, 200) });
        failures.push(`${label}: ${message}`);
      });
    }
  }
  data.loadAverageEnd = loadavg();
  data.failures = failures;
  const complete = [...Array(rounds).keys()].filter((r) => per.admin[r] && per.scoped[r] && (!configs.includes('control') || per.control[r]));
  if (complete.length > 0) {
    const pick = (c: Config) => complete.map((r) => per[c][r]!);
    const verdict = pairedVerdict({ admin: pick('admin'), scoped: pick('scoped'), control: configs.includes('control') ? pick('control') : [] }, complete.length);
    rows.push(...verdict.rows);
    data.verdict = verdict.data;
  }
  const [l1, l5, l15] = data.loadAverageStart as number[];
  return {
    rows,
    data,
    notes: [
      `one run, ${rounds} round(s); in each, every configuration back to back on a fresh SQLite endpoint (order rotating), compared with that round's admin run; the verdict is on the median over rounds of those paired differences`,
      `load average at the start ${l1!.toFixed(2)} / ${l5!.toFixed(2)} / ${l15!.toFixed(2)} (1 / 5 / 15 min), at the end ${(data.loadAverageEnd as number[]).map((x) => x.toFixed(2)).join(' / ')}: the machine's other work falls on both sides of each pair`,
      'agents use their machine tokens, the operator the token named; every configuration is set up alike (the scoped user and token exist on each endpoint)',
      `at most ${o.inflight} requests in flight in all (--inflight), operator reads included`,
      'scoped: a service token of a user whose only role binding is operator on machines env=bench (all fleet machines match): each operator read is a label-scoped check, answered from the in-memory index (api/scope-index.ts)',
    ],
  };
}

type Config = TokenKind | 'control';

/** One configuration's numbers in one round. */
interface Sample {
  rate: number;
  p99: number;
  cpuPerK: number;
}

/** Signed percentage text: +3.1 %, -0.4 %. */
const pct = (x: number) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)} %`;

/**
 * The goal's verdict from paired rounds: for each metric, each round's (scoped − admin) / admin, their
 * median over rounds against 5 %, the spread of those differences, and the control's (admin − admin)
 * median difference as the noise floor. A metric passes when its median paired difference is within 5 %;
 * the row says too when the noise floor is itself above 5 % (then a pass or a fail says little).
 */
function pairedVerdict(per: Record<Config, Sample[]>, rounds: number): { rows: Row[]; data: Record<string, unknown> } {
  const LIMIT = 0.05;
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  const metrics = [
    { key: 'rate', name: 'completions/s', goal: true },
    { key: 'p99', name: 'p99, all requests', goal: true },
    { key: 'cpuPerK', name: 'endpoint CPU per 1,000 requests', goal: false },
  ] as const;
  const n = Math.min(per.admin.length, per.scoped.length);
  for (const m of metrics) {
    const diffs = Array.from({ length: n }, (_, i) => per.scoped[i]![m.key] / per.admin[i]![m.key] - 1);
    const noise = Array.from({ length: Math.min(n, per.control.length) }, (_, i) => per.control[i]![m.key] / per.admin[i]![m.key] - 1);
    const d = median(diffs);
    const floor = noise.length > 0 ? median(noise.map(Math.abs)) : undefined;
    const spread = n > 1 ? ` (rounds ${pct(Math.min(...diffs))} … ${pct(Math.max(...diffs))})` : '';
    const floorText = floor === undefined ? '' : `; noise floor (admin vs admin) ${(floor * 100).toFixed(1)} %${floor > LIMIT ? ', above 5 %: not conclusive' : ''}`;
    const of = rounds > 1 ? 'median of paired rounds' : 'one pair';
    rows.push({
      metric: `scoped vs admin: ${m.name} (${of})`,
      value: `${pct(d)}${spread}; medians ${round(median(per.scoped.map((x) => x[m.key])), m.key === 'rate' ? 0 : 2)} vs ${round(median(per.admin.map((x) => x[m.key])), m.key === 'rate' ? 0 : 2)}${floorText}`,
      ...(m.goal ? { goal: 'within 5 %', met: Math.abs(d) <= LIMIT } : {}),
    });
    data[m.key] = { pairedDiffs: diffs, medianDiff: d, controlDiffs: noise, noiseFloor: floor ?? null, ...(m.goal ? { pass: Math.abs(d) <= LIMIT } : {}) };
  }
  return { rows, data };
}

/** The median of a few numbers: the middle one, or the mean of the two middle ones. */
function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** A service token of a user bound to `operator` on `env=bench` machines only, as an API client. */
async function scopedApi(ep: Endpoint): Promise<ApiClient> {
  const admin = adminApi(ep);
  await admin.post('/users', { name: 'bench-op', password: 'bench password 1234', roles: [] });
  await admin.post('/rolebindings', { role: 'operator', subject: 'user:bench-op', machines: SCOPED_SELECTOR });
  const t = await admin.post<{ token: string }>('/tokens', { name: 'fleet-bench', owner: 'bench-op', kind: 'service', ttl: '1d' });
  return new ApiClient({ endpoint: ep.url, token: t.token, timeoutMs: 180_000 });
}

/** `1,2,3` → [1, 2, 3]; each a whole number 1–8. */
function parseReplicas(v: string): number[] {
  const ns = v.split(',').map((x) => Number(x.trim()));
  if (ns.length === 0 || ns.some((n) => !Number.isInteger(n) || n < 1 || n > 8)) throw new Error(`--replicas takes a list of whole numbers 1-8 such as 1,2,3 (got '${v}')`);
  return ns;
}

/**
 * The same fleet on SQLite and on PostgreSQL with each replica count, one after another in one run, so
 * the rows compare like with like (same machine, same load, same build). Machines spread over the
 * replicas round robin; RSS is the largest replica's, CPU the replicas' sum.
 */
async function compareStores(o: FleetOptions, url: string, replicas: number[], profileDir?: string): Promise<BenchReport> {
  const configs: StoreConfig[] = [{ kind: 'sqlite', replicas: 1 }, ...replicas.map((n): StoreConfig => ({ kind: 'postgres', replicas: n, url }))];
  const rows: Row[] = [{ metric: 'machines × tasks (each configuration)', value: `${o.machines} × ${o.tasks} = ${o.machines * o.tasks} jobs` }];
  const data: Record<string, unknown> = { ...o, configurations: [] as unknown[] };
  let sqliteRate = 0;
  for (const c of configs) {
    const label = configLabel(c);
    log(`${label}: starting…`);
    // --profile: the PostgreSQL replicas' profiles, one directory per configuration (SQLite is not profiled here).
    const r = await startReplicas(c, profileDir && c.kind === 'postgres' ? join(profileDir, `pg${c.replicas}`) : undefined);
    try {
      const { machines } = await prepareFleet(r.endpoints[0]!, o);
      log(`${label}: ${machines.length} machines created; running…`);
      const db0 = await r.backendCpu?.();
      const trips0 = c.kind === 'postgres' ? await roundTrips(r.endpoints) : undefined;
      const run = await runFleet(r.endpoints, machines, o, label);
      const dbCpuSec = db0 && r.backendCpu ? backendCpuBetween(db0, await r.backendCpu()) : 0;
      const trips = trips0 ? tripsBetween(trips0, await roundTrips(r.endpoints)) : undefined;
      const perJob = (sec: number) => `${((sec * 1000) / Math.max(1, run.completed)).toFixed(2)}`;
      const lat = run.latencies.summaries();
      if (c.kind === 'sqlite') sqliteRate = run.completionsPerSec;
      const goal = c.kind === 'postgres' && c.replicas === 2 ? { goal: `≥ SQLite (${round(sqliteRate, 0)})`, met: run.completionsPerSec >= sqliteRate } : {};
      rows.push(
        { metric: `${label}: job completions/s`, value: round(run.completionsPerSec, 0), ...goal },
        { metric: `${label}: latency p50 / p99`, value: `${round(lat.all!.p50)} / ${round(lat.all!.p99)} ms` },
        { metric: `${label}: peak RSS (largest replica)`, value: `${mib(run.serverPeakRss)} MiB` },
        { metric: `${label}: CPU endpoints / PostgreSQL / agents`, value: `${run.serverCpuSec.toFixed(1)} s / ${dbCpuSec.toFixed(1)} s / ${run.clientCpuSec.toFixed(1)} s` },
        { metric: `${label}: CPU per job endpoints / PostgreSQL / agents`, value: `${perJob(run.serverCpuSec)} / ${perJob(dbCpuSec)} / ${perJob(run.clientCpuSec)} ms` },
      );
      if (trips) {
        const jobs = Math.max(1, run.completed);
        const total = [...trips.values()].reduce((a, b) => a + b, 0);
        const top = [...trips].sort((a, b) => b[1] - a[1]).filter(([, n]) => n / jobs >= 0.05);
        rows.push({ metric: `${label}: round trips per job (all replicas)`, value: `${(total / jobs).toFixed(2)}: ${top.map(([k, n]) => `${k} ${(n / jobs).toFixed(2)}`).join(', ')}` });
      }
      if (!run.finished) rows.push({ metric: `${label}: finished`, value: `no: ${run.completed} of ${run.jobs} jobs in ${o.maxSeconds} s` });
      (data.configurations as unknown[]).push({ label, ...c, url: undefined, roundTrips: trips ? Object.fromEntries(trips) : undefined, runMs: run.runMs, completed: run.completed, completionsPerSec: run.completionsPerSec, latencyMs: lat, serverPeakRssBytes: run.serverPeakRss, serverCpuSec: run.serverCpuSec, dbCpuSec, clientCpuSec: run.clientCpuSec });
    } finally {
      await r.stop();
    }
  }
  return {
    rows,
    data,
    notes: [
      'one run, configurations one after another on the same machine; PostgreSQL is the local server (127.0.0.1), sharing the 2 cores with the endpoints and the simulated agents',
      "CPU PostgreSQL: the server backends connected to the configuration's own database over the run (/proc; other databases on the server not counted); per job: divided by the jobs completed",
      `at most ${o.inflight} requests in flight in all (--inflight), machine i talking to replica i mod N`,
      'PostgreSQL: claims and completions are row-scoped (TransactOptions): they run concurrently across replicas and on several connections per replica, kept apart by machine row locks; change numbers and event ids are drawn at commit under a short lock (sql-store.ts PG_DRAW_LOCK); every other write still runs alone (PG_WRITE_LOCK)',
    ],
  };
}

/**
 * The replicas' round trips to PostgreSQL so far, summed by statement label, from each one's
 * `takt_store_round_trips_total` (GET /metrics with the admin token; Store.roundTrips).
 */
async function roundTrips(endpoints: Endpoint[]): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const ep of endpoints) {
    const res = await fetch(`${ep.url}/metrics`, { headers: { authorization: `Bearer ${ep.token}` } });
    if (!res.ok) throw new Error(`GET ${ep.url}/metrics answered ${res.status}`);
    for (const m of (await res.text()).matchAll(/^takt_store_round_trips_total\{statement="((?:[^"\\]|\\.)*)"\} (\d+)/gm)) {
      out.set(m[1]!, (out.get(m[1]!) ?? 0) + Number(m[2]));
    }
  }
  return out;
}

/** Each label's growth between two `roundTrips` readings. */
function tripsBetween(before: Map<string, number>, after: Map<string, number>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [k, n] of after) if (n - (before.get(k) ?? 0) > 0) out.set(k, n - (before.get(k) ?? 0));
  return out;
}

async function fleet(ep: Endpoint, o: FleetOptions): Promise<BenchReport> {
  const { machines, probes, createMs } = await prepareFleet(ep, o);
  log(`${machines.length} machines created in ${(createMs / 1000).toFixed(1)} s; probing latency one request at a time…`);
  const idle = (await probeLatency(ep, probes, o.tasks)).summaries();
  log(`running ${o.tasks} jobs on each machine, ${o.inflight} requests in flight at most, for at most ${o.maxSeconds} s…`);
  const r = await runFleet(ep, machines, o);

  const lat = r.latencies.summaries();
  const idleRows: Row[] = ['claim', 'complete'].map((k) => ({
    metric: `unloaded latency ${k} p50 / p99`,
    value: `${round(idle[k]!.p50)} / ${round(idle[k]!.p99)} ms`,
  }));
  const toFinish = r.finished ? `${(r.runMs / 1000).toFixed(1)} s` : `not within the ${o.maxSeconds} s budget: ${r.completed} of ${r.jobs} jobs; at this rate ≈ ${Math.round(r.jobs / r.completionsPerSec)} s`;
  const latRows: Row[] = ['claim', 'complete', 'all'].map((k) => ({
    metric: `latency ${k} p50 / p99 / max`,
    value: `${round(lat[k]!.p50)} / ${round(lat[k]!.p99)} / ${round(lat[k]!.max)} ms`,
    ...(k === 'all' ? { goal: `p99 < ${GOAL_P99_MS} ms`, met: lat.all!.p99 < GOAL_P99_MS } : {}),
  }));
  return {
    rows: [
      { metric: 'machines × tasks', value: `${r.machines} × ${r.tasks} = ${r.jobs} jobs` },
      { metric: 'job completions/s', value: round(r.completionsPerSec, 0), goal: `≥ ${GOAL_RATE}`, met: r.completionsPerSec >= GOAL_RATE },
      { metric: 'API requests/s', value: round(r.latencies.count() / (r.runMs / 1000), 0) },
      ...latRows,
      ...idleRows,
      { metric: 'server peak RSS (VmHWM)', value: `${mib(r.serverPeakRss)} MiB`, goal: '< 1024 MiB', met: r.serverPeakRss !== null && r.serverPeakRss < GOAL_RSS },
      { metric: 'time to complete', value: toFinish },
      { metric: 'time to create the machines (untimed)', value: `${(createMs / 1000).toFixed(1)} s` },
      { metric: 'CPU: server / simulated agents', value: `${r.serverCpuSec.toFixed(1)} s / ${r.clientCpuSec.toFixed(1)} s` },
    ],
    data: { ...o, createMs, runMs: r.runMs, jobs: r.jobs, completed: r.completed, finished: r.finished, unloadedLatencyMs: idle, completionsPerSec: r.completionsPerSec, latencyMs: lat, serverPeakRssBytes: r.serverPeakRss, serverCpuSec: r.serverCpuSec, clientCpuSec: r.clientCpuSec },
    notes: [
      `at most ${o.inflight} requests in flight (--inflight); latency is the HTTP call as the client sees it, on a machine whose 2 cores the simulated agents share with the endpoint`,
      "each job is one request, as with the real agent: a completion carrying the job's log that answers with the next job (a claim starts each machine)",
      'unloaded latency: 10 probe machines walked one request at a time before the run (service time, no queueing)',
    ],
  };
}
