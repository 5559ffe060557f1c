/**
 * `takt serve`: one endpoint with the embedded SQLite store, the API and UI, and the local and netns brokers.
 * Binding beyond loopback is refused until TLS and credentials are configured (not yet supported).
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, renameSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hostname } from 'node:os';
import { buildServer, type ServerLimits } from '../api/server.js';
import { NetnsPlacement } from '../brokers/netns.js';
import { ProcessBroker } from '../brokers/process.js';
import { DEFAULT_SSH_MAX_SESSIONS, SshBroker } from '../brokers/ssh/broker.js';
import { Credentials } from '../brokers/ssh/credentials.js';
import { readPackDir } from '../content/files.js';
import { ContentService } from '../engine/content.js';
import { Engine, publicMachine } from '../engine/engine.js';
import { Churn } from '../engine/churn.js';
import { History } from '../engine/history.js';
import { Portable } from '../engine/portable.js';
import { Records } from '../engine/records.js';
import { Rollouts } from '../engine/rollouts.js';
import { DURATION_RANGES, parseDuration } from '../model/duration.js';
import { parseByteSize } from '../model/size.js';
import { TaktError } from '../model/errors.js';
import type { Job, Machine } from '../model/machine.js';
import { Sealer } from '../model/secure.js';
import { openSqliteStore } from '../store/sqlite.js';
import { secureDataDir } from './datadir.js';
import { createLog, type LogFn } from './log.js';

export const VERSION = (JSON.parse(readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8')) as { version: string }).version;
const DEMO_PACK = fileURLToPath(new URL('../../content/demo', import.meta.url));

export interface ServeOptions {
  listen: string;
  data: string;
  demo: boolean;
  lease: string;
  churnCheck: string;
  /** Log output stored per job (`64MiB`, bytes…); default 64 MiB. */
  maxLogBytes?: string;
  logFormat: 'text' | 'json';
  /** DNS names besides IP literals, localhost and this host's name that clients use (DNS-rebinding check). */
  hostName?: string[];
  /** Duration text: how long a request may take to arrive whole (slow senders are cut off). */
  requestTimeout?: string;
  /** Decimal text: the cap on open connections. */
  maxConnections?: string;
  /** Decimal text: how many SSH (agentless) machines run jobs at once. */
  sshMaxSessions?: string;
}

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(listen);
  if (!m || Number(m[2]) > 65535) throw new TaktError('bad_request', `--listen '${listen}' is not HOST:PORT (e.g. 127.0.0.1:8092)`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

const isLoopback = (host: string) => host === 'localhost' || host === '::1' || /^127\./.test(host);

/** The connection and request bounds from the serve options; each refused with the flag's name when malformed. */
function serverLimits(opts: ServeOptions): Partial<ServerLimits> {
  const limits: Partial<ServerLimits> = {};
  if (opts.requestTimeout !== undefined) {
    limits.requestTimeoutMs = parseDuration(opts.requestTimeout, '--request-timeout', DURATION_RANGES.requestTimeout);
  }
  if (opts.maxConnections !== undefined) {
    const n = Number(opts.maxConnections);
    if (!/^\d+$/.test(opts.maxConnections) || n < 16 || n > 1_000_000) throw new TaktError('bad_request', `--max-connections must be a whole number from 16 to 1000000 (got '${opts.maxConnections}')`);
    limits.maxConnections = n;
  }
  return limits;
}

/** `--ssh-max-sessions`, refused with the flag's name when malformed. */
function sshMaxSessions(opts: ServeOptions): number {
  if (opts.sshMaxSessions === undefined) return DEFAULT_SSH_MAX_SESSIONS;
  const n = Number(opts.sshMaxSessions);
  if (!/^\d+$/.test(opts.sshMaxSessions) || n < 1 || n > 100_000) throw new TaktError('bad_request', `--ssh-max-sessions must be a whole number from 1 to 100000 (got '${opts.sshMaxSessions}')`);
  return n;
}

/** Reads a secret file from the data dir, creating it (0600) on first start. */
function secretFile(path: string, make: () => string): { value: string; created: boolean } {
  if (existsSync(path)) return { value: readFileSync(path, 'utf8').trim(), created: false };
  const value = make();
  writeFileSync(path, value + '\n', { mode: 0o600 });
  chmodSync(path, 0o600);
  return { value, created: true };
}

export async function serve(opts: ServeOptions): Promise<{ url: string; close: () => Promise<void> }> {
  const log = createLog(opts.logFormat);
  const { host, port } = parseListen(opts.listen);
  if (!isLoopback(host)) {
    throw new TaktError('bad_request', `refusing to listen on ${host}: binding beyond loopback needs TLS and credentials, which this version does not configure yet; use 127.0.0.1`);
  }
  const leaseMs = parseDuration(opts.lease, '--lease', DURATION_RANGES.lease);
  const data = resolve(opts.data);
  secureDataDir(data, log); // makes it; umask 077; refuses a dir others can write; modes back to 0700/0600
  const admin = secretFile(join(data, 'admin.token'), () => `tka.${randomBytes(24).toString('base64url')}`);
  const key = secretFile(join(data, 'secret.key'), () => randomBytes(32).toString('base64'));

  const store = await openSqliteStore(join(data, 'takt.db'));
  const sealer = new Sealer(Buffer.from(key.value, 'base64'));
  const content = new ContentService(store, sealer);
  await content.load();
  const maxLogBytes = opts.maxLogBytes === undefined ? undefined : parseByteSize(opts.maxLogBytes, '--max-log-bytes');
  const engine = new Engine(store, content, sealer, { leaseMs, log, maxLogBytes });
  let url = '';
  const broker = new ProcessBroker({ name: 'local', environment: 'local', dataDir: data, endpoint: () => url, log });
  const netns = new ProcessBroker({
    name: 'netns',
    environment: 'netns',
    dataDir: data,
    endpoint: () => url,
    placement: new NetnsPlacement({ dataDir: data, endpoint: () => url, log }),
    log,
  });
  const credentials = new Credentials(store, sealer);
  const ssh = new SshBroker({ engine, store, credentials, dataDir: data, leaseMs, maxSessions: sshMaxSessions(opts), log });
  const brokers = new Map<string, ProcessBroker | SshBroker>([
    [broker.name, broker],
    [netns.name, netns],
    [ssh.name, ssh],
  ]);
  const records = new Records(store, content, sealer);
  const rollouts = new Rollouts(store, engine, records, { log });
  const churn = new Churn(store, records, rollouts, { log, checkMs: parseDuration(opts.churnCheck, '--churn-check', DURATION_RANGES.churnCheck) });
  const app = await buildServer({
    store,
    engine,
    content,
    records,
    rollouts,
    churn,
    history: new History(store, engine, content),
    portable: new Portable(store, engine, content),
    brokers,
    credentials,
    version: VERSION,
    adminToken: admin.value,
    log,
    hostNames: [hostname(), ...(opts.hostName ?? [])],
    limits: serverLimits(opts),
  });
  await app.listen({ host, port });
  const addr = app.server.address();
  const actualPort = typeof addr === 'object' && addr ? addr.port : port;
  url = `http://${host.includes(':') ? `[${host}]` : host}:${actualPort}`;
  // Renamed into place: the CLI and tests read it as soon as it exists, and must never see it empty.
  writeFileSync(join(data, 'endpoint.tmp'), url + '\n', { mode: 0o600 });
  renameSync(join(data, 'endpoint.tmp'), join(data, 'endpoint'));
  await engine.start();
  rollouts.start();
  churn.start();

  for (const b of brokers.values()) await b.adopt(await store.listMachines({ broker: b.name, limit: 1000 }));
  const stopReporting = reportProgress(store, log);
  store.onEvents((events) => {
    for (const e of events) {
      if (!e.topic.startsWith('machines.update.')) continue;
      const b = brokers.get((e.data as Machine).broker ?? '');
      if (b) void b.setPower(e.data as Machine);
    }
  });
  const pruner = setInterval(() => void store.pruneEvents(100_000).catch(() => undefined), 60_000);
  pruner.unref();

  log('info', `takt ${VERSION} listening on ${url}`, { data });
  if (admin.created) {
    log('info', `admin token created (shown once; also in ${join(data, 'admin.token')}, mode 0600)`);
    process.stdout.write(`\n  admin token: ${admin.value}\n  web UI:      ${url}/#token=${admin.value}\n\n`);
  } else {
    log('info', `web UI at ${url}/ (admin token in ${join(data, 'admin.token')})`);
  }
  if (opts.demo) await startDemo(content, engine, broker, store, log);

  return {
    url,
    close: async () => {
      clearInterval(pruner);
      stopReporting();
      churn.stop();
      rollouts.stop();
      engine.stop();
      for (const b of brokers.values()) await b.stopAll();
      await app.close();
      await store.close();
    },
  };
}

/** Installs the demo pack and puts three local machines on its pipeline, so the first screen shows work. */
async function startDemo(content: ContentService, engine: Engine, broker: ProcessBroker, store: Awaited<ReturnType<typeof openSqliteStore>>, log: LogFn) {
  const files = await readPackDir(DEMO_PACK);
  try {
    const r = await content.installPack(files, 'demo', { use: true });
    if (r.installed) log('info', `installed demo pack ${r.name}@${r.version}`);
  } catch (err) {
    // An older takt may have installed different content under this version; versions never change.
    if (!(err instanceof TaktError) || err.code !== 'conflict') throw err;
    log('warn', `built-in demo pack not installed: ${err.message}; the demo runs the version already installed`);
  }
  for (let i = 1; i <= 3; i++) {
    const name = `demo-${i}`;
    const existing = await store.getMachineByName(name);
    if (!existing) {
      const { machine, token } = await engine.createMachine({ name, environment: 'local', broker: 'local', pipeline: 'demo' }, 'demo');
      await broker.create(machine, token);
    } else if (existing.state === 'done') {
      await engine.restartMachine(existing.id, 'demo');
    }
  }
  log('info', 'demo: three local machines are walking the demo pipeline; try `npx takt machines list`');
}

/** Prints one line per finished job and per machine that stops or finishes. */
function reportProgress(store: Awaited<ReturnType<typeof openSqliteStore>>, log: LogFn): () => void {
  const names = new Map<string, string>();
  return store.onEvents((events) => {
    for (const e of events) {
      if (e.topic.startsWith('machines.')) {
        const m = e.data as ReturnType<typeof publicMachine>;
        const was = names.get(m.id);
        names.set(m.id, `${m.name}|${m.state}`);
        const [, prevState] = (was ?? '|').split('|');
        if (prevState !== m.state && (m.state === 'done' || m.state === 'stopped')) {
          log(m.state === 'stopped' ? 'warn' : 'info', `machine ${m.name} ${m.state}`, m.reason ? { reason: m.reason } : undefined);
        }
      } else if (e.topic.startsWith('jobs.update.')) {
        const j = e.data as Job;
        const machine = (names.get(j.machineId) ?? j.machineId).split('|')[0];
        if (j.state !== 'running') log(j.state === 'succeeded' ? 'info' : 'warn', `${machine}: ${j.task} ${j.state}`, j.reason ? { reason: j.reason } : undefined);
      }
    }
  });
}
