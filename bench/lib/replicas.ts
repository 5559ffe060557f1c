/**
 * Endpoints for a bench on one store: a single SQLite endpoint, or N `takt serve` replicas on one fresh
 * PostgreSQL database, set up as README "Running on PostgreSQL" tells an operator to: the first replica
 * makes the keys, and each further replica starts on a data dir of its own holding copies of the first
 * one's secret.key, admin.token and TLS CA (tls/ca.pem, tls/ca.key). Each replica issues its own server
 * certificate from that CA and keeps its own endpoint id.
 */
import { copyFileSync, mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { Endpoint } from '../../test/helpers/endpoint.js';
import { fileURLToPath } from 'node:url';
import { stopEndpoint, track } from './endpoint.js';
import { cpuOf } from './proc.js';

/** What one configuration of the comparison runs on. */
export interface StoreConfig {
  /** `sqlite`, or `postgres` with `replicas` endpoints on one database. */
  kind: 'sqlite' | 'postgres';
  replicas: number;
  /** For `postgres`: the server URL (any database on it); a database of the bench's own is made there. */
  url?: string;
}

export interface Replicas {
  endpoints: Endpoint[];
  /**
   * PostgreSQL: CPU seconds (utime + stime, /proc) of each server backend now connected to the bench's
   * database, by pid. The server runs on this machine (127.0.0.1); backends of other databases (other
   * work on the same server) are not counted. Absent for SQLite.
   */
  backendCpu?: () => Promise<Map<number, number>>;
  /** Stops every replica and drops the bench's database. */
  stop(): Promise<void>;
}

/** The label a results table shows for a configuration: `SQLite`, `PostgreSQL × 2`. */
export function configLabel(c: StoreConfig): string {
  return c.kind === 'sqlite' ? 'SQLite' : `PostgreSQL × ${c.replicas}`;
}

const PROFILER = fileURLToPath(new URL('./cpu-profile.js', import.meta.url));

/** The files a further replica copies from the first one's data dir (README "Running on PostgreSQL"). */
const SHARED = ['secret.key', 'admin.token', join('tls', 'ca.pem'), join('tls', 'ca.key')];

/**
 * Starts the endpoints of `c` with a 30 s lease (a bench must not lose jobs because two cores are busy).
 * `profileDir` (PostgreSQL only): every replica writes a V8 CPU profile there when it stops.
 * @throws Error when PostgreSQL cannot be reached or a replica does not start (its output attached).
 */
export async function startReplicas(c: StoreConfig, profileDir?: string): Promise<Replicas> {
  if (c.kind === 'sqlite') {
    const data = mkdtempSync(join(tmpdir(), 'takt-bench-'));
    const ep = track(await Endpoint.start({ data, lease: '30s' }));
    return { endpoints: [ep], stop: () => stopEndpoint(ep) };
  }
  if (!c.url) throw new Error('a PostgreSQL configuration needs the server URL (--store postgres://…)');
  const db = `takt_bench_${randomBytes(4).toString('hex')}`;
  await admin(c.url, (cl) => cl.query(`create database ${db}`));
  const url = new URL(c.url);
  url.pathname = `/${db}`;
  const env: Record<string, string> = { TAKT_STORE: url.toString() };
  if (profileDir) {
    // V8 CPU profiles of every replica (cpu-profile.js), written when each is stopped.
    mkdirSync(profileDir, { recursive: true });
    env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --import=${PROFILER}`.trim();
    env.TAKT_BENCH_PROFILE_DIR = profileDir;
  }
  const endpoints: Endpoint[] = [];
  const stop = async () => {
    for (const ep of endpoints) await stopEndpoint(ep, profileDir !== undefined);
    await admin(c.url!, (cl) => cl.query(`drop database if exists ${db} with (force)`));
  };
  try {
    const first = mkdtempSync(join(tmpdir(), 'takt-bench-'));
    endpoints.push(track(await Endpoint.start({ data: first, lease: '30s', env })));
    for (let i = 1; i < c.replicas; i++) {
      const data = mkdtempSync(join(tmpdir(), 'takt-bench-'));
      mkdirSync(join(data, 'tls'), { recursive: true, mode: 0o700 });
      for (const f of SHARED) copyFileSync(join(first, f), join(data, f));
      endpoints.push(track(await Endpoint.start({ data, lease: '30s', env })));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  const backendCpu = () =>
    admin(c.url!, async (cl) => {
      const r = await cl.query<{ pid: number }>('select pid from pg_stat_activity where datname = $1', [db]);
      const out = new Map<number, number>();
      for (const { pid } of r.rows) {
        const cpu = cpuOf(pid).self;
        if (Number.isFinite(cpu)) out.set(pid, cpu);
      }
      return out;
    });
  return { endpoints, stop, backendCpu };
}

/**
 * CPU seconds the backends spent between two `backendCpu` readings: each backend's growth, a backend
 * that appeared in between counted whole. A backend that exited in between is missed (the pools keep
 * their connections while the bench runs, so that is rare), which makes this a lower bound.
 */
export function backendCpuBetween(before: Map<number, number>, after: Map<number, number>): number {
  let s = 0;
  for (const [pid, cpu] of after) s += cpu - (before.get(pid) ?? 0);
  return s;
}

async function admin<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}
