/**
 * The `netns` placement: each machine is a Linux network namespace with its own address on a bridge, and
 * its agent runs inside it, reaching the endpoint over that network — a real network boundary on one host.
 *
 *   host: bridge tkb-<E> 10.N.M.1/24 ── veth tv<hash> ── namespace takt-<E>-<machine id>: eth0 10.N.M.<k>/24
 *
 * Host resources belong to one endpoint and are named so: <E> is the endpoint's id (endpointId: kept in
 * its data dir), so a second endpoint on the host — one that imported the same machines, with the same
 * ids — makes namespaces, veths and a bridge of its own, and deletes only what it made (the names it made
 * are kept in netns.json; a machine it never placed is not its to delete). Machines placed by a takt from
 * before endpoint ids keep the names they were given (`takt-<machine id>`, `tkb-<hash of the data dir>`).
 *
 * Agents reach the endpoint as any remote agent does: over TLS, on a listener the endpoint opens on the
 * bridge address (through `NetnsOptions.listen`), trusting only the endpoint's own CA. The bridge address
 * is on no other network, so nothing outside this host reaches that listener.
 * Needs root and iproute2's `ip`; `check()` says so plainly when either is missing.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { TaktError } from '../model/errors.js';
import type { LocalMachine, Placement } from './process.js';

const run = promisify(execFile);

export interface NetnsOptions {
  dataDir: string;
  /**
   * Opens the endpoint's TLS listener on the bridge address (port 0: any free port), with a certificate
   * naming that address. Throws Node's listen error (EADDRINUSE…).
   */
  listen: (host: string, port: number) => Promise<{ port: number; close: () => Promise<void> }>;
  log: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
  /**
   * The /16 the bridge's /24 is chosen from, as `A.B.0.0/16` (TAKT_NETNS_SUBNET); default: the first free
   * /24 in 10.200.0.0–10.249.255.0.
   */
  subnet?: string;
}

/** The file in the data dir that holds the endpoint's id. */
export const ENDPOINT_ID_FILE = 'endpoint-id';

/**
 * This endpoint's id: 8 hex digits, made once and kept in `<data>/endpoint-id`, so that the host
 * resources it creates (network namespaces, bridges, veths) carry it in their names. A copy of the
 * desired state (export/import) does not carry it: another endpoint gets its own.
 */
export function endpointId(dataDir: string): string {
  const id = readEndpointId(dataDir);
  if (id.kept) return id.id;
  saveEndpointId(dataDir, id.id);
  return id.id;
}

/**
 * The endpoint id `<data>/endpoint-id` holds (`kept`), or a new one, not yet written (`takt serve`
 * writes it with {@link saveEndpointId} once its store has opened, so a refused start leaves none).
 * @throws TaktError bad_request when the file holds something else.
 */
export function readEndpointId(dataDir: string): { id: string; kept: boolean } {
  const file = join(dataDir, ENDPOINT_ID_FILE);
  if (existsSync(file)) {
    const id = readFileSync(file, 'utf8').trim();
    if (/^[0-9a-f]{8}$/.test(id)) return { id, kept: true };
    throw new TaktError('bad_request', `${file} does not hold an endpoint id (8 hex digits); restore it, or remove it only if no netns machine of this endpoint is left on the host`);
  }
  return { id: randomBytes(4).toString('hex'), kept: false };
}

/** Writes `<data>/endpoint-id` (mode 0600); refuses to replace one (`wx`). */
export function saveEndpointId(dataDir: string, id: string): void {
  mkdirSync(dataDir, { recursive: true });
  writeFileSync(join(dataDir, ENDPOINT_ID_FILE), id + '\n', { mode: 0o600, flag: 'wx' });
}

/** `A.B` from `A.B.0.0/16`. @throws TaktError bad_request for anything else. */
export function parseSubnet16(text: string): string {
  const m = /^(\d{1,3})\.(\d{1,3})\.0\.0\/16$/.exec(text.trim());
  if (!m || Number(m[1]) > 255 || Number(m[2]) > 255) throw new TaktError('bad_request', `TAKT_NETNS_SUBNET '${text}' is not a /16 such as 10.213.0.0/16`);
  return `${Number(m[1])}.${Number(m[2])}`;
}

interface NetState {
  /** The bridge's /24 as `10.a.b`, chosen once so it does not overlap a network the host already routes. */
  prefix?: string;
  /** The TLS listener's port on the bridge address; kept so agents keep their URL across endpoint restarts. */
  port: number;
  /** Host part of each machine's address, by machine id. */
  hosts: Record<string, number>;
  /** The bridge this endpoint made (absent in a state written before endpoint ids: the data dir's hash). */
  bridge?: string;
  /** The namespace this endpoint made for each machine, by machine id (absent before endpoint ids: takt-<id>). */
  namespaces?: Record<string, string>;
}

async function ip(...args: string[]): Promise<string> {
  try {
    return (await run('ip', args, { timeout: 10_000 })).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new TaktError('internal', `ip ${args.join(' ')}: ${(e.stderr || e.message).trim()}`);
  }
}

/** Short, stable names (interface names are at most 15 characters). */
const short = (s: string, n = 8) => createHash('sha256').update(s).digest('hex').slice(0, n);

export class NetnsPlacement implements Placement {
  private readonly bridge: string;
  /** First candidate for the bridge's /24, from the data dir so two endpoints on one host differ. */
  private readonly seed: Buffer;
  private readonly stateFile: string;
  private state: NetState;
  private listener: { port: number; close: () => Promise<void> } | null = null;
  private ready: Promise<void> | null = null;
  private moved = false;

  /** This endpoint's id, in the names of what it makes on the host. */
  private readonly id: string;

  constructor(private readonly opts: NetnsOptions) {
    const h = createHash('sha256').update(opts.dataDir).digest();
    this.seed = h;
    this.id = endpointId(opts.dataDir);
    this.stateFile = join(opts.dataDir, 'netns.json');
    this.state = existsSync(this.stateFile) ? (JSON.parse(readFileSync(this.stateFile, 'utf8')) as NetState) : { port: 0, hosts: {} };
    // A network set up by a takt from before endpoint ids keeps its bridge (named from the data dir's hash).
    this.bridge = this.state.bridge ?? (this.state.prefix ? `tkb-${h.toString('hex').slice(0, 8)}` : `tkb-${this.id}`);
    if (opts.subnet !== undefined) parseSubnet16(opts.subnet);
  }

  private get prefix(): string {
    if (!this.state.prefix) throw new TaktError('internal', 'netns network used before it was set up');
    return this.state.prefix;
  }

  get hostAddress(): string {
    return `${this.prefix}.1`;
  }

  /**
   * The machine's namespace: the one this endpoint made for it, else (placed before endpoint ids) the old
   * `takt-<machine id>`, else the name it will get, `takt-<endpoint id>-<machine id>`.
   */
  namespace(m: LocalMachine): string {
    return this.state.namespaces?.[m.id] ?? (this.state.hosts[m.id] !== undefined ? `takt-${m.id}` : `takt-${this.id}-${m.id}`);
  }

  /** Whether this endpoint placed the machine (and so owns its namespace). */
  private placed(m: LocalMachine): boolean {
    return this.state.namespaces?.[m.id] !== undefined || this.state.hosts[m.id] !== undefined;
  }

  address(m: LocalMachine): string | undefined {
    const host = this.state.hosts[m.id];
    return host === undefined ? undefined : `${this.prefix}.${host}`;
  }

  async check(): Promise<void> {
    if (process.platform !== 'linux') throw new TaktError('bad_request', 'the netns broker needs Linux network namespaces; use --broker local here');
    if (process.getuid?.() !== 0) {
      throw new TaktError('bad_request', `the netns broker needs root to create network namespaces (the endpoint runs as uid ${process.getuid?.()}); run takt serve as root, or use --broker local`);
    }
    try {
      await run('ip', ['-V'], { timeout: 5000 });
    } catch {
      throw new TaktError('bad_request', "the netns broker needs iproute2's `ip` command on the endpoint's PATH (Debian: apt-get install iproute2)");
    }
    await this.ensureNetwork();
  }

  /** The bridge, its address and the TLS listener: once per endpoint process, again if something broke. */
  private ensureNetwork(): Promise<void> {
    this.ready ??= this.setUpNetwork().catch((err: unknown) => {
      this.ready = null;
      throw err instanceof TaktError ? new TaktError('bad_request', `the netns broker cannot set up its network: ${err.message}`) : err;
    });
    return this.ready;
  }

  private async setUpNetwork(): Promise<void> {
    const links = await ip('-o', 'link', 'show');
    if (!links.includes(` ${this.bridge}:`)) {
      this.state.prefix ??= await this.freePrefix();
      this.state.bridge = this.bridge;
      this.save();
      await ip('link', 'add', this.bridge, 'type', 'bridge');
    }
    const addrs = await ip('-o', 'addr', 'show', 'dev', this.bridge);
    if (!addrs.includes(` ${this.hostAddress}/24`)) await ip('addr', 'add', `${this.hostAddress}/24`, 'dev', this.bridge);
    await ip('link', 'set', this.bridge, 'up');
    if (!this.listener) await this.startListener();
  }

  /** A 10.x.y.0/24 no route on this host covers yet (x in 200–249, or in the configured /16), starting from the data dir's hash. */
  private async freePrefix(): Promise<string> {
    const routes = await ip('-4', 'route', 'show');
    if (this.opts.subnet !== undefined) {
      const base = parseSubnet16(this.opts.subnet);
      for (let i = 0; i < 256; i++) {
        const prefix = `${base}.${(this.seed[1]! + i) % 256}`;
        if (!routes.includes(`${prefix}.`)) return prefix;
      }
      throw new TaktError('conflict', `no free /24 in ${this.opts.subnet} for the netns bridge`);
    }
    const start = (this.seed[0]! % 50) * 256 + this.seed[1]!;
    for (let i = 0; i < 50 * 256; i++) {
      const n = (start + i) % (50 * 256);
      const prefix = `10.${200 + Math.floor(n / 256)}.${n % 256}`;
      if (!routes.includes(`${prefix}.`)) return prefix;
    }
    throw new TaktError('conflict', 'no free 10.200.0.0/13 subnet for the netns bridge');
  }

  private async startListener(): Promise<void> {
    try {
      this.listener = await this.opts.listen(this.hostAddress, this.state.port);
    } catch (err) {
      // The port we had is taken now: agents will be restarted with the new URL (see endpointMoved).
      if (this.state.port === 0) throw err;
      this.opts.log('warn', 'netns: the bridge port the agents know is taken; using a new one and restarting them', { port: this.state.port });
      this.listener = await this.opts.listen(this.hostAddress, 0);
      this.moved = true;
    }
    this.state.port = this.listener.port;
    this.save();
    this.opts.log('info', `netns: machines reach the endpoint at ${this.endpoint()} on bridge ${this.bridge}`);
  }

  async prepare(m: LocalMachine): Promise<void> {
    await this.ensureNetwork();
    const ns = this.namespace(m);
    this.own(m, ns);
    const host = this.allocate(m);
    const present = (await ip('netns', 'list')).split('\n').some((l) => l.split(' ')[0] === ns);
    if (present) return;
    const outside = `tv${short(ns)}`;
    const inside = `tp${short(ns)}`;
    await ip('netns', 'add', ns);
    try {
      await ip('link', 'add', outside, 'type', 'veth', 'peer', 'name', inside);
      await ip('link', 'set', inside, 'netns', ns);
      await ip('link', 'set', outside, 'master', this.bridge);
      await ip('link', 'set', outside, 'up');
      await ip('-n', ns, 'link', 'set', inside, 'name', 'eth0');
      await ip('-n', ns, 'addr', 'add', `${this.prefix}.${host}/24`, 'dev', 'eth0');
      await ip('-n', ns, 'link', 'set', 'eth0', 'up');
      await ip('-n', ns, 'link', 'set', 'lo', 'up');
      await ip('-n', ns, 'route', 'add', 'default', 'via', this.hostAddress);
    } catch (err) {
      await ip('netns', 'del', ns).catch(() => undefined);
      await ip('link', 'del', outside).catch(() => undefined);
      throw err;
    }
  }

  /** Records the namespace as this endpoint's (before it is made, so a failed start still cleans it up). */
  private own(m: LocalMachine, ns: string): void {
    if (this.state.namespaces?.[m.id] === ns) return;
    this.state.namespaces = { ...this.state.namespaces, [m.id]: ns };
    this.save();
  }

  private allocate(m: LocalMachine): number {
    const known = this.state.hosts[m.id];
    if (known !== undefined) return known;
    const used = new Set(Object.values(this.state.hosts));
    for (let host = 2; host < 255; host++) {
      if (!used.has(host)) {
        this.state.hosts[m.id] = host;
        this.save();
        return host;
      }
    }
    throw new TaktError('conflict', `the netns broker's network ${this.prefix}.0/24 is full (253 machines); delete some first`);
  }

  endpointMoved(): boolean {
    return this.moved;
  }

  wrap(m: LocalMachine): string[] {
    return ['ip', 'netns', 'exec', this.namespace(m)];
  }

  endpoint(): string {
    return `https://${this.hostAddress}:${this.state.port}`;
  }

  async remove(m: LocalMachine): Promise<void> {
    // Only what this endpoint made: a namespace of the same machine id may be another endpoint's.
    if (!this.placed(m)) return;
    // Deleting the namespace deletes the veth pair with it.
    const ns = this.namespace(m);
    await ip('netns', 'del', ns).catch((err: Error) => this.opts.log('warn', 'netns: could not delete namespace', { ns, err: err.message }));
    delete this.state.hosts[m.id];
    if (this.state.namespaces) delete this.state.namespaces[m.id];
    this.save();
  }

  async close(): Promise<void> {
    const listener = this.listener;
    this.listener = null;
    this.ready = null;
    if (!listener) return;
    await listener.close();
    // With no machines left the bridge has no use; machines that remain keep it for the next start.
    if (Object.keys(this.state.hosts).length === 0) {
      await ip('link', 'del', this.bridge).catch((err: Error) => this.opts.log('warn', 'netns: could not delete the bridge', { bridge: this.bridge, err: err.message }));
    }
  }

  private save() {
    mkdirSync(this.opts.dataDir, { recursive: true });
    writeFileSync(this.stateFile, JSON.stringify(this.state, null, 2) + '\n', { mode: 0o600 });
  }
}
