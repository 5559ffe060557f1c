/**
 * A real endpoint for a bench: `takt serve` as a child process on a fresh temp data dir, started the way
 * the integration tests start theirs (test/helpers/endpoint.ts), so the bench measures what ships.
 */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ApiClient } from '../../src/client/http.js';
import { Endpoint } from '../../test/helpers/endpoint.js';
import { BENCH_DIR } from './report.js';

export { Endpoint };

export interface BenchEndpointOptions {
  lease?: string;
  /**
   * Write V8 CPU profiles here (see cpu-profile.js). The profiler is preloaded through NODE_OPTIONS so
   * that the local broker's agents, which inherit the server's environment, are profiled too.
   */
  profileDir?: string;
  /** Profile at most this many agents (default: all). */
  profileAgents?: number;
}

const PROFILER = fileURLToPath(new URL('./cpu-profile.js', import.meta.url));

export async function startEndpoint(opts: BenchEndpointOptions = {}): Promise<Endpoint> {
  const data = mkdtempSync(join(tmpdir(), 'takt-bench-'));
  const saved = { options: process.env.NODE_OPTIONS, dir: process.env.TAKT_BENCH_PROFILE_DIR, agents: process.env.TAKT_BENCH_PROFILE_AGENTS };
  if (opts.profileDir) {
    mkdirSync(opts.profileDir, { recursive: true });
    process.env.NODE_OPTIONS = `${saved.options ?? ''} --import=${PROFILER}`.trim();
    process.env.TAKT_BENCH_PROFILE_DIR = opts.profileDir;
    if (opts.profileAgents !== undefined) process.env.TAKT_BENCH_PROFILE_AGENTS = String(opts.profileAgents);
  }
  try {
    // A real lease: a bench must not lose jobs because two cores are busy for a few seconds.
    return track(await Endpoint.start({ data, lease: opts.lease ?? '30s' }));
  } finally {
    // Only the endpoint (spawned at the start of boot) inherits these; nothing the bench spawns later.
    restore('NODE_OPTIONS', saved.options);
    restore('TAKT_BENCH_PROFILE_DIR', saved.dir);
    restore('TAKT_BENCH_PROFILE_AGENTS', saved.agents);
  }
}

function restore(name: string, value: string | undefined) {
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}

/**
 * The admin's client for a bench. A longer timeout than the default 30 s: under a bench's load (or with
 * the profiler on) an admin call can queue behind a lot of agent traffic, and that is not a failure.
 */
export function adminApi(ep: Endpoint): ApiClient {
  return new ApiClient({ endpoint: ep.url, token: ep.token, timeoutMs: 180_000 });
}

/** The server's pid, for /proc readings. */
export function serverPid(ep: Endpoint): number {
  const pid = ep.proc?.pid;
  if (pid === undefined) throw new Error('the endpoint is not running');
  return pid;
}

/** Endpoints to stop if the bench is interrupted (Ctrl-C), so no server or agent outlives it. */
const live = new Set<Endpoint>();

export function track(ep: Endpoint): Endpoint {
  live.add(ep);
  return ep;
}

/** The end of each stopped endpoint's output, for the error report when a bench fails. */
export const stoppedOutputs: string[] = [];

/**
 * Stops the endpoint and its agents and removes its data dir. `patient`: give it minutes to shut down
 * rather than the test helper's 15 s, because profiled processes write their profiles on the way out
 * (a SIGKILLed endpoint leaves none).
 */
export async function stopEndpoint(ep: Endpoint | undefined, patient = false): Promise<void> {
  if (!ep) return;
  live.delete(ep);
  const p = ep.proc;
  const exited = p && (p.exitCode !== null || p.signalCode !== null) ? ` (it had exited by itself: ${p.exitCode ?? p.signalCode})` : '';
  stoppedOutputs.push(`endpoint ${ep.url}${exited}, last output:\n${ep.output.slice(-4000)}`);
  if (patient && p && !exited) {
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await Promise.race([gone, new Promise((r) => setTimeout(r, 180_000))]);
  }
  await ep.stop();
}

/** Copies the agents' logs out of the data dir (which stopping removes), for a failed bench. */
function preserveLogs(ep: Endpoint): string | null {
  const machines = join(ep.data, 'machines');
  if (!existsSync(machines)) return null;
  const dir = join(BENCH_DIR, 'results', `failed-${new Date().toISOString().replace(/[:.]/g, '-')}`);
  mkdirSync(dir, { recursive: true });
  for (const id of readdirSync(machines)) {
    const log = join(machines, id, 'agent.log');
    if (existsSync(log)) copyFileSync(log, join(dir, `${id}.agent.log`));
  }
  writeFileSync(join(dir, 'endpoint.log'), ep.output);
  return dir;
}

/** Runs `fn` with a fresh endpoint, always stopping it; keeps the logs when `fn` fails. */
export async function withEndpoint<T>(opts: BenchEndpointOptions, fn: (ep: Endpoint) => Promise<T>): Promise<T> {
  const ep = await startEndpoint(opts);
  try {
    return await fn(ep);
  } catch (err) {
    const kept = preserveLogs(ep);
    if (kept) stoppedOutputs.push(`agent and endpoint logs kept in ${kept}`);
    throw err;
  } finally {
    await stopEndpoint(ep, opts.profileDir !== undefined);
  }
}

export async function stopAllEndpoints(): Promise<void> {
  await Promise.all([...live].map((ep) => stopEndpoint(ep)));
}
