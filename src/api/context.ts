import type { FastifyRequest } from 'fastify';
import type { ContentService } from '../engine/content.js';
import type { Engine } from '../engine/engine.js';
import type { AuditLog } from '../engine/audit.js';
import type { Churn } from '../engine/churn.js';
import type { History } from '../engine/history.js';
import type { ImageCatalog } from '../engine/images.js';
import type { Joins } from '../engine/join.js';
import type { Portable } from '../engine/portable.js';
import type { Records } from '../engine/records.js';
import type { Rollouts } from '../engine/rollouts.js';
import { TaktError } from '../model/errors.js';
import type { Store } from '../store/store.js';
import type { BootSettings } from '../model/boot.js';
import type { Machine } from '../model/machine.js';
import type { MachinePowerConfig } from '../model/power.js';
import { authorOf, type Principal } from './auth.js';
import type { Approver, RouteAccess } from '../model/permissions.js';
import type { TlsMaterial } from './tls.js';
import type { CredentialsPort } from './routes/credentials.js';
import type { Sso } from './oidc.js';
import type { LoginLimiter } from './login-limit.js';
import type { DhcpLeasesPort } from './routes/dhcp.js';

/** The VM settings of `POST /machines` for the qemu broker (`takt machines create --broker qemu`). */
export interface VmRequest {
  /** `bios` (SeaBIOS, default) or `uefi` (OVMF). */
  firmware?: 'bios' | 'uefi';
  /** Guest memory in MiB (default 512). */
  memoryMiB?: number;
  /** Size of its qcow2 disk in GiB (default 8). */
  diskGiB?: number;
  /** The boot environment it boots into (default `local`). */
  bootenv?: string;
}

/** Power control of machines that have a power configuration (provision/power/machines.ts MachinePower). */
export interface PowerPort {
  status(m: Machine): Promise<{ driver: string; state: 'on' | 'off' | 'unknown' }>;
  act(m: Machine, action: 'on' | 'off' | 'cycle'): Promise<{ driver: string; done: boolean; instruction?: string; note?: string }>;
  nextBoot(m: Machine, device: 'pxe' | 'disk', persistent: boolean): Promise<{ driver: string; done: boolean; persistent: boolean; instruction?: string; note?: string }>;
  /**
   * A network-booted machine's agent is about to reboot it into its bootenv: the boot device that bootenv
   * needs is put first through its power driver, and its network boot is waited for. Never throws;
   * `problem` says what could not be done.
   */
  /** Waits for a network-booted machine's boot after `cause` (BootWatch): from the network, or from its disk while it has work waiting. */
  expectBoot(m: Machine, cause: string): boolean;
  /** The machine's agent claimed work saying it booted `bootenv`: ends a disk boot waited for (`local`). */
  agentBooted(id: string, bootenv: string): void;
  prepareReboot(m: Machine, cause: string): Promise<{ nextBoot?: { driver: string; device: 'pxe' | 'disk'; done: boolean; instruction?: string }; problem?: string; watched: boolean }>;
}

/** Creates and destroys machines in an environment (the API only needs this much of a broker). */
export interface BrokerPort {
  readonly name: string;
  readonly environment: string;
  /** Throws (with how to fix it) when the broker cannot work on this host. */
  check(): Promise<void>;
  /**
   * Makes the machine real (local/netns: starts its agent with its token; qemu: creates and starts its VM).
   * `vm`: the request's VM settings, for brokers that make VMs.
   */
  create(machine: Machine, token: string, vm?: VmRequest): Promise<void>;
  /**
   * Brokers that make network-booted machines (qemu): the id, boot settings and power configuration a
   * new machine gets, chosen before it is recorded (its MAC, SMBIOS UUID and QMP socket), from the
   * request's `vm` settings. @throws TaktError invalid for bad settings, with the field path.
   */
  plan?(name: string, vm: VmRequest): { id: string; boot: BootSettings; powerConfig: MachinePowerConfig };
  /**
   * Brokers that power their machines themselves (qemu): machine `id`'s power configuration on this host
   * (an imported VM machine gets it instead of its export's, which names the other endpoint's paths).
   */
  powerConfigFor?(id: string): MachinePowerConfig;
  destroy(machine: { id: string; name: string }): Promise<void>;
  /**
   * True when its machines are sandboxes this host makes (a directory, a network namespace): a machine
   * restored onto this endpoint from another host arrives with a new, empty sandbox.
   */
  readonly sandboxed?: boolean;
  /**
   * True when what the broker makes lives on this endpoint's host (local and netns sandboxes, qemu VMs):
   * its machines record the replica that made them (Machine.host), and only that replica adopts and
   * destroys them (api/hosts.ts). False or absent: the machine is reachable from any replica (ssh).
   */
  readonly hostBound?: boolean;
  /** What creating a machine should warn about (e.g. its scripts are not isolated from the endpoint). */
  readonly notice?: string | undefined;
}

export interface ApiContext {
  store: Store;
  engine: Engine;
  content: ContentService;
  records: Records;
  history: History;
  portable: Portable;
  rollouts: Rollouts;
  churn: Churn;
  brokers: Map<string, BrokerPort>;
  /**
   * This replica's endpoint id (brokers/netns.ts endpointId): recorded as the host of the machines its
   * host-bound brokers make (api/hosts.ts). Absent (unit tests): machines record no host.
   */
  hostId?: string;
  /** Credentials the endpoint uses to reach machines (SSH keys); absent: the routes answer 404. */
  credentials?: CredentialsPort;
  version: string;
  /**
   * The TLS material remote machines trust: the CA they pin and the server key pin (read it when needed:
   * it is re-read after a renewal). Null or absent when the app runs without listeners (unit tests).
   */
  readonly tls?: TlsMaterial | null;
  /** The https URL remote machines use (`--advertise-url` or the first HTTPS listener); null: loopback only. */
  readonly publicUrl?: string | null;
  /** Join tokens, registration, facts and token rotation. */
  joins: Joins;
  /** Builds (once) and serves the agent bundle joining hosts install. */
  agentBundle: AgentBundlePort;
  /**
   * The keyed digest discovery credentials are signed with (Sealer.keyed('discovery')); absent: no
   * discovery credential is accepted (model/discovery.ts).
   */
  discoveryDigest?: (text: string) => string;
  /** The endpoint's log, for what routes report beside their answer (a discovered machine's classification). */
  log?: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
  /** The DHCP server's leases (`--dhcp`); absent or answering null: the route answers 404. */
  dhcpLeases?: DhcpLeasesPort;
  /** Power drivers for machines with a power configuration; absent: such machines cannot be switched (409). */
  power?: PowerPort;
  /** The image catalog (engine/images.ts); absent: the image routes answer 404. */
  images?: ImageCatalog;
  /** The audit log's writer (engine/audit.ts); absent: buildServer makes one with the defaults (no pruning). */
  audit?: AuditLog;
  /** Single sign-on with the OpenID Connect provider of `--oidc-issuer` (api/oidc.ts); absent: the SSO routes say it is off. */
  sso?: Sso | null;
  /** Login rate limits (api/login-limit.ts, `--login-max-failures`, `--login-window`); absent: the defaults. */
  loginLimiter?: LoginLimiter;
}

/** The agent bundle as the join routes need it (src/join/bundle.ts builds it). */
export interface AgentBundlePort {
  /** The bundle's file (built on first use, then cached), its size in bytes and its SHA-256 (hex). */
  get(): Promise<{ path: string; bytes: number; sha256: string }>;
  /** The same, opened for reading (a download keeps its file even if another endpoint prunes the cache). */
  open(): Promise<{ bundle: { path: string; bytes: number; sha256: string }; file: import('node:fs/promises').FileHandle }>;
}

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal;
  }
  interface FastifyContextConfig {
    /**
     * What a user needs to call this route (`resource:verb`, model/permissions.ts), or `public`: no
     * authentication at all (health, the UI page). Every route declares one; the server refuses to start
     * otherwise (deny by default). The admin token has every permission.
     */
    permission?: RouteAccess;
    /**
     * What the route's `:id` names, so a role bound to some machines only (a label selector, pipelines)
     * is checked against that machine: `machine` (an id or a name), `job`, `workorder`. `list`: the answer's
     * `items` (machines, or things with a `machineId`) are filtered to the machines the caller's grants cover.
     */
    scope?: 'machine' | 'job' | 'workorder' | 'list';
    /** Machine tokens may call this route (the handler still checks the machine is their own). */
    machine?: boolean;
    /**
     * Join tokens may call this route (and only these: the install script, the agent bundle and
     * registration). `'path'`: the token may also come as the route's `:token` path parameter, for
     * `curl … /join/TOKEN | sh` which sends no header.
     */
    join?: boolean | 'path';
    /** Discovery credentials may call this route (registration only: a booted machine in discovery). */
    discovery?: boolean;
    /** Errors are answered as a shell script that prints the message and exits 1 (the install script's route). */
    shellErrors?: boolean;
  }
}

/** The author recorded for a change; a route without a principal is a bug in its declaration, never anonymous. */
export function author(req: FastifyRequest): string {
  const p = req.principal;
  if (!p) throw new TaktError('unauthorized', 'this action needs a token');
  return authorOf(p);
}

/**
 * Who decides an approval made by this request: the bootstrap admin token holds every role; a user their
 * token's grants; anyone else (no route lets them approve) none.
 */
export function approver(req: FastifyRequest): Approver {
  const p = req.principal;
  return { author: author(req), grants: p.kind === 'admin' ? 'all' : p.kind === 'user' ? p.grants : [] };
}

/**
 * Reads a whole-number query or path parameter with a clear error. The default upper bound is the largest
 * integer a JSON number holds exactly: event and change ids of a long-lived endpoint grow past any small cap.
 * @throws TaktError bad_request naming the parameter.
 */
export function intQuery(value: unknown, name: string, fallback: number | undefined, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (typeof value !== 'string' || !/^\d{1,16}$/.test(value) || !Number.isSafeInteger(n) || n > max) throw new TaktError('bad_request', `query parameter '${name}' must be a whole number from 0 to ${max}`, { path: name });
  return n;
}

/**
 * An abort signal for a long-poll: it aborts when the caller's connection closes before the answer is
 * written. (Not the request's own 'close': Node emits that as soon as the body has been read, which would
 * end every long-poll at once.) Call `done()` when the answer is ready.
 */
export function whenGone(res: import('node:http').ServerResponse): { signal: AbortSignal; done(): void } {
  const aborted = new AbortController();
  const onClose = () => {
    if (!res.writableFinished) aborted.abort();
  };
  res.once('close', onClose);
  if (res.destroyed || res.socket?.destroyed) aborted.abort();
  return { signal: aborted.signal, done: () => res.off('close', onClose) };
}
