/**
 * `takt serve`: one endpoint — the embedded SQLite store, or one of any number of replicas on a PostgreSQL
 * database (cli/replicas.ts) — with the API and UI, and the local, netns, qemu and ssh brokers.
 * Loopback listeners speak plain HTTP (the local CLI); every other listener speaks HTTPS with the
 * endpoint's own CA (tls.ts) or the operator's certificate. Plain HTTP beyond loopback is never served.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, renameSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hostname, networkInterfaces } from 'node:os';
import { isLoopbackHost, isValidHost, loopbackBindAddress } from '../model/host.js';
import { Listeners, type ListenSpec } from '../api/listeners.js';
import { AuditLog } from '../engine/audit.js';
import { AUDIT_KEEP_DAYS } from '../model/audit.js';
import { answerClientError, buildServer, DEFAULT_LIMITS, requestHandlerOf, type ServerLimits } from '../api/server.js';
import { checkSanName, checkTlsFlags, TlsManager } from '../api/tls.js';
import { NetnsPlacement, readEndpointId, saveEndpointId } from '../brokers/netns.js';
import { ProcessBroker } from '../brokers/process.js';
import { QemuBroker } from '../brokers/qemu/broker.js';
import { checkPowerConfig } from '../provision/power/index.js';
import { MachinePower } from '../provision/power/machines.js';
import { BootWatch } from '../provision/boot-watch.js';
import { DEFAULT_SSH_MAX_SESSIONS, SshBroker } from '../brokers/ssh/broker.js';
import { ImageCatalog } from '../engine/images.js';
import { Credentials } from '../brokers/ssh/credentials.js';
import { readPackDir } from '../content/files.js';
import { ContentService } from '../engine/content.js';
import { Engine, publicMachine } from '../engine/engine.js';
import { Churn } from '../engine/churn.js';
import { History } from '../engine/history.js';
import { Joins } from '../engine/join.js';
import { AgentBundle } from '../join/bundle.js';
import { Portable } from '../engine/portable.js';
import { Records } from '../engine/records.js';
import { Rollouts } from '../engine/rollouts.js';
import { DURATION_RANGES, parseDuration } from '../model/duration.js';
import { parseByteSize } from '../model/size.js';
import { TaktError } from '../model/errors.js';
import { defaultAccel } from '../brokers/qemu/vm.js';
import type { Job, Machine } from '../model/machine.js';
import { Sealer } from '../model/secure.js';
import type { MachinePowerConfig } from '../model/power.js';
import { discoveryToken as mintDiscoveryToken } from '../model/discovery.js';
import { openStore, parseStoreSpec } from '../store/open.js';
import type { SqlStore } from '../store/sql-store.js';
import { parseProvisionNet, planDhcp, startProvisioning, type Provisioning } from '../provision/service.js';
import { hostedHere } from '../api/hosts.js';
import { LOGIN_MAX_FAILURES, LOGIN_WINDOW_MS, LoginLimiter } from '../api/login-limit.js';
import { CALLBACK_PATH, oidcSettings, Sso } from '../api/oidc.js';
import { lockDataDir, secureDataDir } from './datadir.js';
import { checkShared, refuseMissingShared } from './replicas.js';
import { createLog, type LogFn } from './log.js';
import { usage } from './usage.js';
import { VERSION } from './version.js';

export { VERSION };
const DEMO_PACK = fileURLToPath(new URL('../../content/demo', import.meta.url));

export interface ServeOptions {
  /** `HOST:PORT`, one or several: loopback ones serve HTTP, the others HTTPS. */
  listen: string | string[];
  /** Operator certificate chain and key (PEM files) for the HTTPS listeners; default: the endpoint's own CA issues one. */
  tlsCert?: string;
  tlsKey?: string;
  /** Extra names and addresses for the issued certificate (besides the host name and listen addresses). */
  tlsSan?: string[];
  /** The https URL remote machines use (what `machines join` prints); default: the first HTTPS listener. */
  advertiseUrl?: string;
  data: string;
  demo: boolean;
  /** Where state is kept: `postgres://…`, `sqlite:FILE`; default SQLite `takt.db` in the data dir (store/open.ts). */
  store?: string;
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
  /** Duration text: a machine quiet this long (no request, no long-poll open) shows its agent disconnected. */
  agentGoneAfter?: string;
  /** Decimal text: how many SSH (agentless) machines run jobs at once. */
  sshMaxSessions?: string;
  /** `ADDR[/PREFIX]`: run the boot services on this provisioning address (off when absent). */
  provision?: string;
  /** Decimal text: the boot HTTP service's port (with `provision`). */
  bootPort?: string;
  /** With `provision`: unknown machines boot the discovery bootenv (default true; `--no-discovery`). */
  discovery?: boolean;
  /** With `provision`: `full`, `proxy` or `off` (default). */
  dhcp?: string;
  /** With `dhcp` full: `FIRST-LAST`. */
  dhcpRange?: string;
  /** With `dhcp`: the TFTP root (default /usr/lib/ipxe). */
  tftpRoot?: string;
  /** The bridge (in the endpoint's network namespace) the qemu broker's VMs are plugged into; none: qemu's user-mode network. */
  qemuBridge?: string;
  /** With `provision`: IPv6 router advertisements (radvd) on the boot segment; default on with `dhcp` full. */
  routerAdverts?: boolean;
  /** With `provision`: duration text, how long a machine takt powered on or rebooted may take to show up on the boot services. */
  bootTimeout?: string;
  /** Single sign-on: the OpenID Connect provider's issuer URL (api/oidc.ts); off when absent. */
  oidcIssuer?: string;
  /** With `oidcIssuer`: this endpoint's client id there. */
  oidcClientId?: string;
  /** With `oidcIssuer`: a file holding the client secret (a confidential client); absent: a public client. */
  oidcClientSecretFile?: string;
  /** With `oidcIssuer`: the claim listing the user's groups (default `groups`). */
  oidcGroupsClaim?: string;
  /** Decimal text: days the audit log keeps its entries (default 90). */
  auditKeepDays?: string;
  /** Decimal text: failed logins allowed per name+address within `loginWindow` (default 10; api/login-limit.ts). */
  loginMaxFailures?: string;
  /** Duration text: the login limits' window (default 5m). */
  loginWindow?: string;
}

/**
 * `--login-max-failures` (1–1,000,000) and `--login-window` (1 s to 1 day) as limiter options.
 * @throws TaktError bad_request naming the flag.
 */
export function loginLimits(maxFailures: string | undefined, window: string | undefined): { maxFailures: number; windowMs: number } {
  const n = maxFailures === undefined ? LOGIN_MAX_FAILURES : /^\d{1,7}$/.test(maxFailures.trim()) ? Number(maxFailures.trim()) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > 1_000_000) throw new TaktError('bad_request', `--login-max-failures must be a whole number from 1 to 1000000; got '${maxFailures}'`);
  const windowMs = window === undefined ? LOGIN_WINDOW_MS : parseDuration(window, '--login-window', { min: 1000, max: 86_400_000 });
  return { maxFailures: n, windowMs };
}

/** `--audit-keep-days`: whole days within AUDIT_KEEP_DAYS. @throws TaktError bad_request naming the flag. */
export function auditKeepDays(text: string | undefined): number {
  if (text === undefined) return AUDIT_KEEP_DAYS.default;
  const n = /^\d{1,5}$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!Number.isInteger(n) || n < AUDIT_KEEP_DAYS.min || n > AUDIT_KEEP_DAYS.max) {
    throw new TaktError('bad_request', `--audit-keep-days must be a whole number of days from ${AUDIT_KEEP_DAYS.min} to ${AUDIT_KEEP_DAYS.max}; got '${text}'`);
  }
  return n;
}

/** `--boot-timeout` default: real servers take minutes to POST (memory training, RAID and NIC option ROMs). */
export const DEFAULT_BOOT_TIMEOUT = '5m';

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(listen);
  if (!m || Number(m[2]) > 65535) throw new TaktError('bad_request', `--listen '${listen}' is not HOST:PORT (e.g. 127.0.0.1:8092)`);
  // `localhost` binds 127.0.0.1 itself: a hosts file must not turn a plain-HTTP listener into a public one.
  return { host: loopbackBindAddress(m[1]!.replace(/^\[|\]$/g, '')), port: Number(m[2]) };
}

const WILDCARD = new Set(['0.0.0.0', '::']);

/** The addresses a wildcard listener is reached at: every non-internal interface address. */
function interfaceAddresses(): string[] {
  return Object.values(networkInterfaces())
    .flat()
    .filter((i) => i !== undefined && !i.internal && !i.address.startsWith('fe80:'))
    .map((i) => i!.address);
}

/** --advertise-url checked and reduced to its origin; throws with the flag's name. */
function advertiseOrigin(advertise: string): string {
  {
    let u: URL;
    try {
      u = new URL(advertise);
    } catch {
      throw new TaktError('bad_request', `--advertise-url '${advertise}' is not a URL (e.g. https://takt.example.org:8092)`);
    }
    if (u.protocol !== 'https:' || u.pathname !== '/' || u.search || u.username) {
      throw new TaktError('bad_request', `--advertise-url '${advertise}' must be https://HOST[:PORT] (remote machines reach the endpoint over TLS only)`);
    }
    // It goes into every join command (a shell line) and install script.
    if (!isValidHost(u.hostname)) throw new TaktError('bad_request', `--advertise-url '${advertise}': its host must be an IP address or a DNS name (letters, digits, hyphens and dots; RFC 1123)`);
    return u.origin;
  }
}

/** The https URL remote machines use: --advertise-url, else the first HTTPS listener's address. */
function publicUrlOf(advertise: string | undefined, listeners: Listeners): string | null {
  if (advertise !== undefined) return advertise;
  const l = listeners.all.find((x) => x.spec.tls);
  if (!l) return null;
  if (!WILDCARD.has(l.spec.host)) return l.url;
  const ip = interfaceAddresses().find((a) => !a.includes(':'));
  return `https://${ip ?? hostname()}:${l.port}`;
}

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
/** `--boot-port` as a number (0 picks a free port). */
function bootPortOf(text: string | undefined): number {
  if (text === undefined) return DEFAULT_BOOT_PORT;
  const n = Number(text);
  if (!/^\d{1,5}$/.test(text) || n > 65535) throw new TaktError('bad_request', `--boot-port must be a TCP port from 0 to 65535 (got '${text}')`);
  return n;
}

/** Where firmware fetches scripts and boot files unless `--boot-port` says otherwise. */
const DEFAULT_BOOT_PORT = 8093;

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

/**
 * Every serve flag (and TAKT_* variable) checked and read, touching nothing: serve runs it before it makes
 * or writes its data dir, so a typo leaves nothing behind — not even an endpoint-id tying the dir to a
 * store it never opened. Its refusals are bad usage (exit 2, usage.ts).
 * @throws TaktError bad_request naming the flag.
 */
function serveFlags(opts: ServeOptions) {
  // TAKT_STORE is read here rather than as the flag's default, which --help would show, password and all.
  const storeSpec = opts.store ?? process.env.TAKT_STORE;
  parseStoreSpec(storeSpec);
  const listen = (Array.isArray(opts.listen) ? opts.listen : [opts.listen]).map(parseListen);
  if (listen.length === 0) throw new TaktError('bad_request', '--listen: give at least one HOST:PORT');
  for (const n of opts.tlsSan ?? []) checkSanName(n);
  checkTlsFlags(opts.tlsCert, opts.tlsKey);
  const advertise = opts.advertiseUrl === undefined ? undefined : advertiseOrigin(opts.advertiseUrl);
  const leaseMs = parseDuration(opts.lease, '--lease', DURATION_RANGES.lease);
  // Checked before anything is started: a typo in a boot flag must not leave a half-started endpoint.
  const provisionNet = opts.provision === undefined ? undefined : parseProvisionNet(opts.provision);
  const bootPort = bootPortOf(opts.bootPort);
  const dhcpPlan = planDhcp({ ...(opts.dhcp !== undefined ? { dhcp: opts.dhcp } : {}), ...(opts.dhcpRange !== undefined ? { dhcpRange: opts.dhcpRange } : {}), ...(opts.tftpRoot !== undefined ? { tftpRoot: opts.tftpRoot } : {}) }, provisionNet);
  const envRa = process.env.TAKT_ROUTER_ADVERTS;
  if (envRa !== undefined && envRa !== 'on' && envRa !== 'off') throw new TaktError('bad_request', `TAKT_ROUTER_ADVERTS must be on or off (got '${envRa}')`);
  const routerAdverts = opts.routerAdverts ?? (envRa === undefined ? undefined : envRa === 'on');
  if (opts.bootTimeout !== undefined && !provisionNet) throw new TaktError('bad_request', '--boot-timeout needs --provision ADDR/PREFIX (the boot services are what a booting machine shows up on)');
  const bootTimeoutMs = parseDuration(opts.bootTimeout ?? DEFAULT_BOOT_TIMEOUT, '--boot-timeout', DURATION_RANGES.bootTimeout);
  if (routerAdverts === true && !provisionNet) throw new TaktError('bad_request', '--router-adverts needs --provision ADDR/PREFIX (they are sent on the interface that holds that address)');
  const maxLogBytes = opts.maxLogBytes === undefined ? undefined : parseByteSize(opts.maxLogBytes, '--max-log-bytes');
  const goneAfterMs = opts.agentGoneAfter === undefined ? undefined : parseDuration(opts.agentGoneAfter, '--agent-gone-after', DURATION_RANGES.agentGoneAfter);
  const churnCheckMs = parseDuration(opts.churnCheck, '--churn-check', DURATION_RANGES.churnCheck);
  const maxSessions = sshMaxSessions(opts);
  const limits = serverLimits(opts);
  const keepDays = auditKeepDays(opts.auditKeepDays);
  const loginLimiter = new LoginLimiter(loginLimits(opts.loginMaxFailures, opts.loginWindow));
  // TAKT_QEMU_ACCEL (kvm|tcg|auto) is read by vm.ts defaultAccel; a typo is refused at start, not when a VM starts.
  defaultAccel();
  const oidc = oidcSettings(opts);
  return { storeSpec, listen, advertise, leaseMs, provisionNet, bootPort, dhcpPlan, routerAdverts, bootTimeoutMs, maxLogBytes, goneAfterMs, churnCheckMs, maxSessions, limits, keepDays, loginLimiter, oidc };
}

export async function serve(opts: ServeOptions): Promise<{ url: string; close: () => Promise<void> }> {
  const log = createLog(opts.logFormat);
  const { storeSpec, listen, advertise, leaseMs, provisionNet, bootPort, dhcpPlan, routerAdverts, bootTimeoutMs, maxLogBytes, goneAfterMs, churnCheckMs, maxSessions, limits, keepDays, loginLimiter, oidc } = usage(() => serveFlags(opts));
  // Single sign-on: the provider's discovery document is fetched and checked before anything is started.
  const sso = oidc ? await Sso.discover(oidc) : null;
  const data = resolve(opts.data);
  secureDataDir(data, log); // makes it; umask 077; refuses a dir others can write; modes back to 0700/0600
  // One endpoint per data dir: a second would adopt the first one's machines and break their agents.
  const unlock = lockDataDir(data);
  process.once('exit', unlock);
  // This replica's id: the host of the machines its host-bound brokers make (api/hosts.ts), and the name
  // its netns resources carry (netns.ts). Never shared: each replica's data dir has its own. A new one is
  // written once the store has opened.
  const endpoint = readEndpointId(data);
  const hostId = endpoint.id;

  // SQLite in the data dir unless --store / TAKT_STORE names a PostgreSQL database. On PostgreSQL the
  // endpoint lock is taken shared: any number of replicas, but no `takt store migrate` under them.
  // Opened before the keys are read or made: a replica must not invent keys the others do not have.
  const opened = await openStore(storeSpec, data, { endpointLock: 'shared', replicaId: hostId });
  const store = opened.store;
  let admin: { value: string; created: boolean };
  let key: { value: string; created: boolean };
  let tls: TlsManager;
  let sealer: Sealer;
  try {
    if (!endpoint.kept) saveEndpointId(data, hostId);
    if (opened.kind === 'postgres') await refuseMissingShared(store, data, opened.where);
    admin = secretFile(join(data, 'admin.token'), () => `tka.${randomBytes(24).toString('base64url')}`);
    key = secretFile(join(data, 'secret.key'), () => randomBytes(32).toString('base64'));
    // The names the certificate carries: what clients type. Wildcard listeners add every interface address.
    const names = [hostname(), 'localhost', '127.0.0.1', '::1', ...(opts.tlsSan ?? [])];
    for (const l of listen) names.push(...(WILDCARD.has(l.host) ? interfaceAddresses() : [l.host]));
    tls = new TlsManager({ dataDir: data, names, log, ...(opts.tlsCert !== undefined ? { certFile: opts.tlsCert } : {}), ...(opts.tlsKey !== undefined ? { keyFile: opts.tlsKey } : {}) });
    await tls.ensure();
    sealer = new Sealer(Buffer.from(key.value, 'base64'));
    // Every replica seals with the same key and issues from the same CA (cli/replicas.ts).
    if (opened.kind === 'postgres') await checkShared(store, sealer, tls.internal.caFingerprint, data, opened.where);
  } catch (err) {
    await store.close();
    throw err;
  }
  const caFile = join(data, 'tls', 'ca.pem');
  log('info', `store: ${opened.kind} ${opened.where}`);
  if (opened.holders !== undefined) {
    log('info', `replica ${hostId} (this data dir's endpoint id): ${opened.holders} takt serve replica${opened.holders === 1 ? '' : 's'} live on this database, this one included; machines its local, netns and qemu brokers make stay with it`);
  }
  const discoveryDigest = sealer.keyed('discovery');
  const content = new ContentService(store, sealer);
  await content.load();
  // The drivers' typed configurations are flat scalar records (model/power.ts MachinePowerConfig) by construction.
  // Power drivers, for operators (the API's power routes) and for tasks (takt-power, through the engine).
  // MachinePower reads BMC passwords through the engine, so the engine reaches it through a late binding.
  let power: MachinePower | null = null;
  const taskPower = {
    nextBoot: (m: Machine, device: 'pxe' | 'disk', persistent: boolean) => power!.nextBoot(m, device, persistent),
    act: (m: Machine, action: 'cycle' | 'off') => power!.act(m, action),
  };
  const engine = new Engine(store, content, sealer, { leaseMs, log, maxLogBytes, goneAfterMs, checkPowerConfig: (c) => checkPowerConfig(c) as unknown as MachinePowerConfig, power: taskPower });
  // Boots takt waits for after a power on, cycle or reboot of a network-booted machine (boot-watch.ts).
  const bootWatch = provisionNet
    ? new BootWatch({
        boundMs: bootTimeoutMs,
        onMissed: async (missed) => {
          try {
            await engine.bootMissed(missed.machine.id, missed.reason, { runningOnly: missed.via === 'disk' });
          } catch (err) {
            log('error', `${missed.machine.name}: ${missed.reason} (not recorded: ${(err as Error).message})`);
          }
        },
      })
    : null;
  const machinePower = new MachinePower(engine, bootWatch);
  power = machinePower;
  let url = '';
  // Set once the app exists; the netns broker opens its listener only when its first machine is made.
  let listeners: Listeners | null = null;
  const broker = new ProcessBroker({ name: 'local', environment: 'local', dataDir: data, endpoint: () => url, ca: caFile, log });
  const netns = new ProcessBroker({
    name: 'netns',
    environment: 'netns',
    dataDir: data,
    endpoint: () => url,
    ca: caFile,
    placement: new NetnsPlacement({
      dataDir: data,
      log,
      // Which /16 the netns bridge's /24 comes from (tests keep to theirs); default 10.200–10.249.
      ...(process.env.TAKT_NETNS_SUBNET ? { subnet: process.env.TAKT_NETNS_SUBNET } : {}),
      listen: async (host, port) => {
        if (!listeners) throw new TaktError('internal', 'netns listener requested before the endpoint listens');
        // The bridge address joins the certificate's names (re-issued with the same key when new).
        await tls.ensure([host]);
        const l = await listeners.listen({ host, port, tls: () => tls.internal });
        const all = listeners;
        return { port: l.port, close: () => all.close(l) };
      },
    }),
    log,
  });
  const credentials = new Credentials(store, sealer);
  // Image bytes under the data dir, by digest (replicas need this directory on shared storage).
  // A version a machine's build record names is not removed (records.ts machinesUsingImage, in the removal's transaction).
  const images = new ImageCatalog(store, join(data, 'images'), (reads, name, version) => new Records(reads, content, sealer).machinesUsingImage(name, version));
  const ssh = new SshBroker({ engine, store, credentials, dataDir: data, leaseMs, maxSessions, log });
  // VMs that boot from the network like bare metal (environment metal); their taps join --qemu-bridge.
  const qemu = new QemuBroker({ dataDir: data, log, ...(opts.qemuBridge ? { bridge: opts.qemuBridge } : {}) });
  const brokers = new Map<string, ProcessBroker | SshBroker | QemuBroker>([
    [broker.name, broker],
    [netns.name, netns],
    [ssh.name, ssh],
    [qemu.name, qemu],
  ]);
  const records = new Records(store, content, sealer);
  const portable = new Portable(store, engine, content, records);
  const rollouts = new Rollouts(store, engine, records, { log });
  const churn = new Churn(store, records, rollouts, { log, checkMs: churnCheckMs });
  const audit = new AuditLog(store, { keepDays, log });
  let publicUrl: string | null = null;
  // Declared before the app: its leases route reads it (null until the boot services have started).
  let provisioning: Provisioning | null = null;
  const app = await buildServer({
    store,
    engine,
    content,
    records,
    rollouts,
    churn,
    history: new History(store, engine, content, portable),
    portable,
    brokers,
    hostId,
    joins: new Joins(store, engine),
    discoveryDigest,
    // Where the agent bundle joining hosts download is built (TAKT_BUNDLE_CACHE: shared by test endpoints).
    agentBundle: new AgentBundle({ cacheDir: process.env.TAKT_BUNDLE_CACHE ?? join(data, 'bundles'), version: VERSION, log }),
    credentials,
    images,
    audit,
    power: machinePower,
    // Provisioning starts after the app is built: read when asked.
    dhcpLeases: () =>
      provisioning?.dhcp?.leases().map((l) => ({ mac: l.mac, ip: l.ip, state: l.state, expiresAt: new Date(l.expiresAt).toISOString(), ...(l.hostname ? { hostname: l.hostname } : {}), ...(l.uuid ? { uuid: l.uuid } : {}), ...(l.arch !== undefined ? { arch: l.arch } : {}) })) ?? null,
    version: VERSION,
    adminToken: admin.value,
    sso,
    loginLimiter,
    log,
    hostNames: [hostname(), ...(opts.hostName ?? []), ...(opts.tlsSan ?? [])],
    // Getters: the material changes on renewal, and the public URL is known once the listeners are bound.
    get tls() {
      return tls.material;
    },
    get publicUrl() {
      return publicUrl;
    },
  });
  await app.ready();
  const all = new Listeners(requestHandlerOf(app), { ...DEFAULT_LIMITS, ...limits }, answerClientError);
  listeners = all;
  tls.onChange(() => all.refresh());
  const stopTlsWatch = tls.watch();
  for (const l of listen) {
    const spec: ListenSpec = { ...l, tls: isLoopbackHost(l.host) ? null : () => tls.material };
    try {
      await all.listen(spec);
    } catch (err) {
      await all.closeAll();
      await app.close();
      await store.close();
      throw new TaktError('bad_request', `cannot listen on ${l.host}:${l.port}: ${(err as Error).message}`);
    }
  }
  // The local CLI uses the first loopback listener when there is one (plain HTTP, no CA needed).
  url = (all.all.find((l) => !l.spec.tls) ?? all.all[0]!).url;
  publicUrl = publicUrlOf(advertise, all);
  // Renamed into place: the CLI and tests read it as soon as it exists, and must never see it empty.
  writeFileSync(join(data, 'endpoint.tmp'), url + '\n', { mode: 0o600 });
  renameSync(join(data, 'endpoint.tmp'), join(data, 'endpoint'));
  await engine.start();
  rollouts.start();
  churn.start();

  // A replica adopts only the machines its own brokers made: another replica's sandboxes and VMs are on
  // another host. A machine made before replicas (no host recorded) is adopted by the endpoint whose data
  // dir holds its sandbox or VM — the one that made it — which records itself as its host from now on.
  let adopted = 0;
  for (const b of brokers.values()) {
    const mine: Machine[] = [];
    for (const m of await store.listMachines({ broker: b.name, limit: 1000 })) {
      if (!b.hostBound || m.host === hostId) mine.push(m);
      else if (!m.host && b.holds(m.id)) {
        await store.transact((tx) => tx.setMachineHost(m.id, hostId));
        mine.push({ ...m, host: hostId });
      }
    }
    await b.adopt(mine);
    if (b.hostBound) adopted += mine.length;
  }
  log('info', `adopted ${adopted} machine${adopted === 1 ? '' : 's'} whose sandbox or VM this host holds`);
  const stopReporting = reportProgress(store, log);
  // Power changes and deletes may arrive at any replica: the record changes there, and the replica that
  // holds the machine's sandbox or VM acts when it hears the event (its own included; destroy is idempotent).
  store.onEvents((events) => {
    for (const e of events) {
      const update = e.topic.startsWith('machines.update.');
      if (!update && !e.topic.startsWith('machines.delete.')) continue;
      const m = e.data as Machine;
      const b = brokers.get(m.broker ?? '');
      if (!b || (b.hostBound && !hostedHere(m, hostId))) continue;
      if (update) void b.setPower(m);
      else if (b.hostBound) {
        void b.destroy(m).catch((err: Error) => log('error', `could not remove deleted machine ${m.name}'s ${b.name} sandbox: ${err.message}`, { machine: m.name }));
      }
    }
  });
  const pruner = setInterval(() => void store.pruneEvents(100_000).catch(() => undefined), 60_000);
  pruner.unref();
  audit.startPruning();

  log('info', `takt ${VERSION} listening on ${all.all.map((l) => l.url).join(', ')}`, { data });
  log('info', `TLS: CA fingerprint ${tls.material.caFingerprint} (sha256); server key pin ${tls.material.spkiPin}`, { ca: caFile, expires: tls.material.notAfter });
  if (publicUrl) log('info', `remote machines reach this endpoint at ${publicUrl}`);
  if (sso) {
    const i = sso.info();
    log('info', `single sign-on: ${i.issuer} as ${oidc!.clientSecret ? 'confidential' : 'public'} client ${oidc!.clientId}; redirect URI <this endpoint's URL>${CALLBACK_PATH}; device flow (takt login --sso) ${i.device ? 'available' : 'not offered by the provider'}`);
  }
  if (admin.created) {
    log('info', `admin token created (shown once; also in ${join(data, 'admin.token')}, mode 0600)`);
    process.stdout.write(`\n  admin token: ${admin.value}\n  web UI:      ${url}/#token=${admin.value}\n\n`);
  } else {
    log('info', `web UI at ${url}/ (admin token in ${join(data, 'admin.token')})`);
  }
  if (opts.demo) await startDemo(content, engine, broker, store, log, opts.data, hostId);
  if (provisionNet) {
    try {
      // Agents in the boot environments reach the API over TLS on the provisioning address when the endpoint
      // listens there, else at its public URL; they pin the CA whose fingerprint the kernel command line carries.
      const onNet = all.all.find((l) => l.spec.tls && l.spec.host === provisionNet.address)?.url ?? null;
      const agentAccess = () => {
        const api = onNet ?? publicUrl;
        return api ? { api, ca: tls.material.caFingerprint } : null;
      };
      if (!agentAccess()) log('warn', `provisioning: no HTTPS listener machines can reach, so booted environments have no API to register with; add --listen ${provisionNet.address}:8443`);
      const discoveryToken = (mac: string) => mintDiscoveryToken(discoveryDigest, mac, Date.now());
      provisioning = await startProvisioning({ net: provisionNet, httpPort: bootPort, data, store, content, discovery: opts.discovery !== false, dhcp: dhcpPlan, ...(routerAdverts !== undefined ? { routerAdverts } : {}), log, agentAccess, discoveryToken, ...(bootWatch ? { seen: (mac: string) => bootWatch.seen(mac) } : {}) });
    } catch (err) {
      await closeAll();
      throw err;
    }
    // For the CLI and tests, as `endpoint` is for the API: where firmware fetches scripts and files.
    writeFileSync(join(data, 'boot-url.tmp'), provisioning.bootUrl + '\n', { mode: 0o600 });
    renameSync(join(data, 'boot-url.tmp'), join(data, 'boot-url'));
  }

  async function closeAll(): Promise<void> {
    bootWatch?.close();
    await provisioning?.close();
    clearInterval(pruner);
    stopReporting();
    churn.stop();
    rollouts.stop();
    engine.stop();
    for (const b of brokers.values()) await b.stopAll();
    stopTlsWatch();
    await all.closeAll();
    await app.close();
    await audit.close(); // the last audit entries, before the store closes
    await engine.liveness.flush(); // the last contacts, before the store closes
    await store.close();
    // The CLI must not find a stopped endpoint's address; the file is left if a later start wrote its own.
    const endpointFile = join(data, 'endpoint');
    if (existsSync(endpointFile) && readFileSync(endpointFile, 'utf8').trim() === url) rmSync(endpointFile, { force: true });
    if (provisioning) rmSync(join(data, 'boot-url'), { force: true });
    unlock();
  }

  return {
    url,
    close: closeAll,
  };
}

/**
 * Installs the demo pack and puts three local machines on its pipeline, so the first screen shows work.
 * On a data dir that already has them it changes nothing the operator set: the built-in version is
 * installed if missing but pinned only when no demo version is in use (a restart must not roll back a
 * `content use`), and existing demo machines are left where they are (never restarted). It logs what it did.
 */
async function startDemo(content: ContentService, engine: Engine, broker: ProcessBroker, store: SqlStore, log: LogFn, dataArg: string, hostId: string) {
  const files = await readPackDir(DEMO_PACK);
  const pinned = content.pinned.get('demo')?.version;
  try {
    const r = await content.installPack(files, 'demo', { use: pinned === undefined });
    if (r.installed) log('info', `demo: installed the built-in demo pack ${r.name}@${r.version}`);
    if (pinned === undefined) log('info', `demo: put demo@${r.version} in use`);
    else if (pinned !== r.version) log('info', `demo: left demo@${pinned} in use (built-in is ${r.version}; \`takt content use demo@${r.version}\` switches)`);
  } catch (err) {
    // An older takt may have installed different content under this version; versions never change.
    if (!(err instanceof TaktError) || err.code !== 'conflict') throw err;
    log('warn', `built-in demo pack not installed: ${err.message}; the demo runs the version already installed`);
  }
  // The checks `takt machines create --broker local` makes (e.g. a data dir under a 0700 home when the
  // sandboxes run as their own users): without them every demo machine would stop at its first task with
  // only "Permission denied" in its log.
  try {
    await broker.check();
  } catch (err) {
    if (!(err instanceof TaktError)) throw err;
    log('error', `demo: no demo machines made: ${err.message}`);
    return;
  }
  const created: string[] = [];
  const kept: string[] = [];
  for (let i = 1; i <= 3; i++) {
    const name = `demo-${i}`;
    const existing = await store.getMachineByName(name);
    if (!existing) {
      const { machine, token } = await engine.createMachine({ name, environment: 'local', broker: 'local', pipeline: 'demo', host: hostId }, 'demo');
      await broker.create(machine, token);
      created.push(name);
    } else kept.push(`${name} (${existing.state})`);
  }
  // The CLI finds this endpoint through its data dir: ./data from here, else TAKT_DATA must name it.
  const env = resolve(dataArg) === resolve('data') ? '' : `TAKT_DATA=${dataArg} `;
  if (created.length) log('info', `demo: created ${created.join(', ')} on the demo pipeline; try \`${env}npx takt machines list\``);
  if (kept.length) log('info', `demo: left existing ${kept.join(', ')} as they are; \`${env}npx takt machines restart demo-1\` walks one again`);
}

/**
 * Prints one line per finished job and per machine that stops or finishes — those this process
 * committed (Store.onOwnEvents): with replicas on one PostgreSQL, each logs its own share once, instead
 * of every replica logging (and formatting) every job of the fleet.
 */
function reportProgress(store: SqlStore, log: LogFn): () => void {
  const names = new Map<string, string>();
  return store.onOwnEvents((events) => {
    for (const e of events) {
      if (e.topic.startsWith('machines.')) {
        const m = e.data as ReturnType<typeof publicMachine>;
        const was = names.get(m.id);
        names.set(m.id, `${m.name}|${m.state}`);
        const [, prevState] = (was ?? '|').split('|');
        if (prevState !== m.state && (m.state === 'done' || m.state === 'stopped' || m.state === 'paused')) {
          log(m.state === 'stopped' ? 'warn' : 'info', `machine ${m.name} ${m.state}`, m.reason ? { reason: m.reason } : undefined);
        }
      } else if (e.topic.startsWith('jobs.update.')) {
        const j = e.data as Job;
        if (j.state === 'running') continue;
        const line = (machine: string) => log(j.state === 'succeeded' ? 'info' : 'warn', `${machine}: ${j.task} ${j.state}`, j.reason ? { reason: j.reason } : undefined);
        const known = names.get(j.machineId);
        if (known) line(known.split('|')[0]!);
        else {
          // A machine not seen change since this process started (after a restart; one whose work orders
          // run without moving it, as `takt run`): its name is read once, so people read names, not ids.
          void store
            .getMachine(j.machineId)
            .then((m) => {
              if (m && !names.has(m.id)) names.set(m.id, `${m.name}|${m.state}`);
              line(m?.name ?? j.machineId);
            })
            .catch(() => line(j.machineId));
        }
      }
    }
  });
}
