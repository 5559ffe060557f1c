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
import { stopEndpoint, track } from './endpoint.js';

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
  /** Stops every replica and drops the bench's database. */
  stop(): Promise<void>;
}

/** The label a results table shows for a configuration: `SQLite`, `PostgreSQL × 2`. */
export function configLabel(c: StoreConfig): string {
  return c.kind === 'sqlite' ? 'SQLite' : `PostgreSQL × ${c.replicas}`;
}

/** The files a further replica copies from the first one's data dir (README "Running on PostgreSQL"). */
const SHARED = ['secret.key', 'admin.token', join('tls', 'ca.pem'), join('tls', 'ca.key')];

/**
 * Starts the endpoints of `c` with a 30 s lease (a bench must not lose jobs because two cores are busy).
 * @throws Error when PostgreSQL cannot be reached or a replica does not start (its output attached).
 */
export async function startReplicas(c: StoreConfig): Promise<Replicas> {
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
  const env = { TAKT_STORE: url.toString() };
  const endpoints: Endpoint[] = [];
  const stop = async () => {
    for (const ep of endpoints) await stopEndpoint(ep);
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
  return { endpoints, stop };
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
