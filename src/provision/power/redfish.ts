/**
 * The `redfish` power driver: a server's BMC over Redfish (DMTF DSP0266, the REST API every current BMC
 * speaks) on HTTPS with HTTP Basic authentication (DSP0266 §13.3.3).
 *
 *   system   `system` as configured, else the one member of `/redfish/v1/Systems` (more than one: an error
 *            that lists them)
 *   status   GET the ComputerSystem: `PowerState` On / PoweringOn / Paused → on; Off / PoweringOff → off
 *   on/off/cycle  POST `Actions/#ComputerSystem.Reset` {ResetType} with a type the system allows
 *            (`ResetType@Redfish.AllowableValues` on the action, or its `@Redfish.ActionInfo` resource):
 *            on: On (ForceOn, PushPowerButton); off: ForceOff; graceful: GracefulShutdown, poll, then ForceOff;
 *            cycle: ForceRestart (PowerCycle, GracefulRestart) when on, On when off
 *   boot     PATCH {Boot: {BootSourceOverrideTarget: Pxe|Hdd, BootSourceOverrideEnabled: Once|Continuous}}
 *            with `If-Match` when the system has an ETag (DSP0266 §9.5.4), read back
 *
 * Trust: TLS is verified. BMCs mostly carry self-signed certificates, so besides the system's CAs the
 * driver takes a CA file (`ca`, PEM) or a pinned certificate fingerprint (`caFingerprint`: SHA-256 of the
 * DER certificate, as `openssl x509 -noout -fingerprint -sha256` prints it). With a pin, the handshake's
 * chain is not checked, the leaf certificate's fingerprint is, and nothing — the password least of all —
 * is written before it matched: the driver opens the TLS connection itself, checks, and only then hands
 * the socket to the HTTP request.
 *
 * Each request has a deadline covering connect, TLS, request and answer. Errors are TaktError with the
 * BMC's own words (`error.@Message.ExtendedInfo[].Message`, DSP0266 §9.6): `unavailable` when it cannot
 * be reached, refuses the credentials or answers 5xx; `conflict` when it refuses the request.
 */
import { request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import { isIP } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { TaktError } from '../../model/errors.js';
import { ALREADY_OFF, ALREADY_ON, type BootDevice, type BootOutcome, type OffOptions, type PowerDriver, type PowerOutcome, type PowerState } from './driver.js';

/** Configuration of the redfish driver. */
export interface RedfishPowerOptions {
  /** The BMC's base URL, `https://host[:port]` (a path, if any, is ignored: Redfish lives at /redfish/v1). */
  url: string;
  /** The BMC user. */
  user: string;
  /** Gives the password when a request needs it (from a secure param); may throw a TaktError saying how to set it. */
  password: () => Promise<string>;
  /** The ComputerSystem: its path (`/redfish/v1/Systems/1`) or its id (`1`); default: the only member of Systems. */
  system?: string;
  /** PEM: the CA the BMC's certificate must chain to (instead of the system's CAs). */
  ca?: string;
  /** SHA-256 fingerprint of the BMC's certificate (hex, colons optional, any case, `sha256:` prefix optional). */
  caFingerprint?: string;
  /** Bound on each request in ms (default 30 000). */
  timeoutMs?: number;
  /** How often a graceful off polls the power state, in ms (default 2 000). */
  pollMs?: number;
}

/** A Redfish answer: status, parsed JSON body (undefined when empty) and the ETag header. */
interface RedfishAnswer {
  status: number;
  body: unknown;
  etag?: string;
}

/** The parts of a ComputerSystem resource (DSP2046 ComputerSystem schema) the driver reads. */
interface ComputerSystem {
  '@odata.etag'?: string;
  PowerState?: string;
  Boot?: {
    BootSourceOverrideTarget?: string;
    BootSourceOverrideEnabled?: string;
    'BootSourceOverrideTarget@Redfish.AllowableValues'?: string[];
    'BootSourceOverrideEnabled@Redfish.AllowableValues'?: string[];
  };
  Actions?: {
    '#ComputerSystem.Reset'?: { target?: string; 'ResetType@Redfish.AllowableValues'?: string[]; '@Redfish.ActionInfo'?: string };
  };
}

/** Largest answer read from a BMC; a ComputerSystem is a few KiB. */
const MAX_BODY_BYTES = 1024 * 1024;

/**
 * A certificate fingerprint in the form Node's `fingerprint256` has (upper-case hex pairs joined by colons),
 * or undefined when `pin` is not 32 bytes of hex.
 */
export function normalizeFingerprint(pin: string): string | undefined {
  const hex = pin.trim().replace(/^sha-?256[:/ ]*/i, '').replace(/[:\s]/g, '');
  if (!/^[0-9a-f]{64}$/i.test(hex)) return undefined;
  return hex.toUpperCase().match(/../g)!.join(':');
}

/** on/off/unknown from a Redfish `PowerState` (DSP2046 Resource.PowerState). */
export function redfishPowerState(s: unknown): PowerState {
  if (s === 'On' || s === 'PoweringOn' || s === 'Paused') return 'on';
  if (s === 'Off' || s === 'PoweringOff') return 'off';
  return 'unknown';
}

/** The BMC's own words from a Redfish error body (DSP0266 §9.6), or undefined when it has none. */
export function redfishErrorWords(body: unknown): string | undefined {
  const err = (body as { error?: { message?: unknown; '@Message.ExtendedInfo'?: unknown } } | undefined)?.error;
  if (!err || typeof err !== 'object') return undefined;
  const info = Array.isArray(err['@Message.ExtendedInfo']) ? (err['@Message.ExtendedInfo'] as Array<{ Message?: unknown; Resolution?: unknown }>) : [];
  const words = info
    .map((i) => [i.Message, i.Resolution].filter((x): x is string => typeof x === 'string' && x !== '').join(' '))
    .filter(Boolean);
  if (words.length) return words.join('; ');
  return typeof err.message === 'string' && err.message ? err.message : undefined;
}

/** The first of `wanted` that `allowed` lists (all of them when the BMC does not say), or undefined. */
export function pickAllowed(wanted: readonly string[], allowed: readonly string[] | undefined): string | undefined {
  if (!allowed) return wanted[0];
  return wanted.find((w) => allowed.includes(w));
}

/** The path and query of `ref` (a path, or an absolute URL whose host is dropped), always starting with `/`. */
export function onlyPath(ref: string): string {
  const u = new URL(ref, 'https://bmc.invalid');
  return u.pathname + u.search;
}

/** The redfish power driver for one ComputerSystem. */
export class RedfishPower implements PowerDriver {
  readonly kind = 'redfish';
  private readonly base: URL;
  private readonly pin: string | undefined;
  private systemPath: string | undefined;

  /** @throws TaktError bad_request for a URL that is not https or a fingerprint that is not SHA-256 hex. */
  constructor(private readonly opts: RedfishPowerOptions) {
    let u: URL;
    try {
      u = new URL(opts.url);
    } catch {
      throw new TaktError('bad_request', `redfish url '${opts.url}' is not a URL: give https://HOST[:PORT]`, { path: '/power/url' });
    }
    if (u.protocol !== 'https:') throw new TaktError('bad_request', `redfish url '${opts.url}' must be https:// (Redfish requires TLS, DSP0266 §7.1; the password goes with every request)`, { path: '/power/url' });
    this.base = u;
    if (opts.caFingerprint !== undefined) {
      this.pin = normalizeFingerprint(opts.caFingerprint);
      if (!this.pin) throw new TaktError('bad_request', `caFingerprint must be the certificate's SHA-256 fingerprint (64 hex digits, e.g. from openssl x509 -noout -fingerprint -sha256)`, { path: '/power/caFingerprint' });
    }
    if (opts.system) this.systemPath = opts.system.startsWith('/') ? opts.system : `/redfish/v1/Systems/${encodeURIComponent(opts.system)}`;
  }

  /** `host:port` as messages name the BMC. */
  get target(): string {
    return this.base.host;
  }

  /** Opens the TLS connection and checks its certificate: the pin, or the chain (and name) against `ca` or the system's CAs. */
  private secureSocket(deadline: AbortSignal): Promise<TLSSocket> {
    const host = this.base.hostname.replace(/^\[(.*)\]$/, '$1');
    const port = Number(this.base.port || 443);
    return new Promise<TLSSocket>((resolve, reject) => {
      const socket = tlsConnect({
        host,
        port,
        ...(isIP(host) ? {} : { servername: host }),
        rejectUnauthorized: !this.pin,
        ...(this.opts.ca && !this.pin ? { ca: this.opts.ca } : {}),
      });
      const fail = (err: TaktError) => {
        deadline.removeEventListener('abort', onAbort);
        socket.destroy();
        reject(err);
      };
      const onAbort = () => fail(new TaktError('unavailable', `${this.target}: no TLS connection within the deadline`));
      deadline.addEventListener('abort', onAbort, { once: true });
      socket.once('error', (e: NodeJS.ErrnoException) => {
        const tlsTrust = /certificate|self.signed|CERT_|unable to verify|Hostname\/IP/i.test(`${e.code ?? ''} ${e.message}`);
        fail(
          new TaktError(
            'unavailable',
            tlsTrust
              ? `${this.target}: its TLS certificate is not trusted (${e.message}): give the BMC's CA (ca file) or pin its certificate (caFingerprint, from openssl s_client -connect ${this.target} </dev/null | openssl x509 -noout -fingerprint -sha256)`
              : `${this.target}: cannot connect: ${e.message}`,
          ),
        );
      });
      socket.once('secureConnect', () => {
        if (this.pin) {
          const got = socket.getPeerCertificate().fingerprint256;
          if (got !== this.pin) {
            fail(new TaktError('conflict', `${this.target}: its certificate's SHA-256 fingerprint is ${got}, not the pinned ${this.pin}: nothing was sent. If the BMC's certificate was replaced, check the new one and update caFingerprint`));
            return;
          }
        }
        deadline.removeEventListener('abort', onAbort);
        socket.removeAllListeners('error');
        resolve(socket);
      });
    });
  }

  /**
   * One request on a fresh, checked TLS connection. Answers outside 2xx become TaktError with the BMC's words.
   */
  async request(method: string, path: string, body?: unknown, extra: Record<string, string> = {}): Promise<RedfishAnswer> {
    // Paths come from the BMC too (@odata.id, action targets); some give absolute URLs. Only the path is
    // used: the credentials go to the configured host and nowhere else.
    path = onlyPath(path);
    const password = await this.opts.password();
    const timeoutMs = this.opts.timeoutMs ?? 30_000;
    const deadline = AbortSignal.timeout(timeoutMs);
    const socket = await this.secureSocket(deadline);
    const text = body !== undefined ? JSON.stringify(body) : undefined;
    const headers: OutgoingHttpHeaders = {
      host: this.base.host,
      accept: 'application/json',
      'odata-version': '4.0',
      authorization: `Basic ${Buffer.from(`${this.opts.user}:${password}`).toString('base64')}`,
      ...extra,
      ...(text !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) } : {}),
    };
    const what = `${method} ${path}`;
    const answer = await new Promise<RedfishAnswer>((resolve, reject) => {
      let settled = false;
      const finish = (err: TaktError | undefined, a?: RedfishAnswer) => {
        if (settled) return;
        settled = true;
        deadline.removeEventListener('abort', onAbort);
        socket.destroy();
        if (err) reject(err);
        else resolve(a!);
      };
      const onAbort = () => finish(new TaktError('unavailable', `${this.target}: ${what} had no answer within ${timeoutMs} ms`));
      deadline.addEventListener('abort', onAbort, { once: true });
      // No agent: with `createConnection` and no agent, node:http uses the socket given (already checked) as is.
      const req = httpRequest({ method, path, headers, createConnection: () => socket });
      req.on('error', (e) => finish(new TaktError('unavailable', `${this.target}: ${what} failed: ${e.message}`)));
      req.on('response', (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_BODY_BYTES) finish(new TaktError('unavailable', `${this.target}: ${what} answered more than ${MAX_BODY_BYTES >> 20} MiB`));
          else chunks.push(c);
        });
        res.on('error', (e) => finish(new TaktError('unavailable', `${this.target}: ${what} broke off: ${e.message}`)));
        res.on('end', () => {
          const raw = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown;
          if (raw.trim()) {
            try {
              parsed = JSON.parse(raw);
            } catch {
              parsed = undefined;
            }
          }
          const etag = typeof res.headers.etag === 'string' ? res.headers.etag : undefined;
          finish(undefined, { status: res.statusCode ?? 0, body: parsed ?? (raw.trim() ? raw.slice(0, 200) : undefined), etag });
        });
      });
      req.end(text);
    });
    if (answer.status >= 200 && answer.status < 300) return answer;
    throw this.answerError(what, answer);
  }

  private answerError(what: string, a: RedfishAnswer): TaktError {
    const words = redfishErrorWords(a.body) ?? (typeof a.body === 'string' ? a.body : '');
    const said = `${this.target}: ${what} answered ${a.status}${words ? `: ${words}` : ''}`;
    if (a.status === 401 || a.status === 403) return new TaktError('unavailable', `${said} (check the BMC user and the password in its secure param)`);
    if (a.status >= 500 || a.status === 0) return new TaktError('unavailable', said);
    return new TaktError('conflict', said);
  }

  private async get<T>(path: string): Promise<{ body: T; etag?: string }> {
    const a = await this.request('GET', path);
    if (!a.body || typeof a.body !== 'object') throw new TaktError('unavailable', `${this.target}: GET ${path} answered ${a.status} without a JSON object`);
    return { body: a.body as T, etag: a.etag ?? (a.body as { '@odata.etag'?: string })['@odata.etag'] };
  }

  /** The ComputerSystem's path: as configured, else the one member of the Systems collection. */
  async system(): Promise<string> {
    if (this.systemPath) return this.systemPath;
    const { body } = await this.get<{ Members?: Array<{ '@odata.id'?: string }> }>('/redfish/v1/Systems');
    const ids = (body.Members ?? []).map((m) => m['@odata.id']).filter((x): x is string => typeof x === 'string');
    if (ids.length !== 1) {
      throw new TaktError('conflict', ids.length === 0 ? `${this.target}: /redfish/v1/Systems lists no system` : `${this.target}: /redfish/v1/Systems lists ${ids.length} systems (${ids.join(', ')}): set power.system to the one to drive`);
    }
    return (this.systemPath = ids[0]!);
  }

  private async computerSystem(): Promise<{ path: string; sys: ComputerSystem; etag?: string }> {
    const path = await this.system();
    const { body, etag } = await this.get<ComputerSystem>(path);
    return { path, sys: body, etag };
  }

  /** on/off from PowerState (`unknown` when the BMC does not say). */
  async status(): Promise<PowerState> {
    return redfishPowerState((await this.computerSystem()).sys.PowerState);
  }

  /** The reset types the system allows, or undefined when it does not say (then all are tried as asked). */
  private async allowedResets(sys: ComputerSystem): Promise<string[] | undefined> {
    const action = sys.Actions?.['#ComputerSystem.Reset'];
    if (action?.['ResetType@Redfish.AllowableValues']) return action['ResetType@Redfish.AllowableValues'];
    if (action?.['@Redfish.ActionInfo']) {
      const { body } = await this.get<{ Parameters?: Array<{ Name?: string; AllowableValues?: string[] }> }>(action['@Redfish.ActionInfo']);
      return body.Parameters?.find((p) => p.Name === 'ResetType')?.AllowableValues;
    }
    return undefined;
  }

  /** POSTs the first of `wanted` the system allows; returns the type used. @throws TaktError conflict when none is allowed. */
  private async reset(path: string, sys: ComputerSystem, wanted: readonly string[]): Promise<string> {
    const allowed = await this.allowedResets(sys);
    const type = pickAllowed(wanted, allowed);
    if (!type) throw new TaktError('conflict', `${this.target}: ${path} allows ResetType ${allowed!.join(', ')}; takt needs one of ${wanted.join(', ')}`);
    const target = sys.Actions?.['#ComputerSystem.Reset']?.target ?? `${path}/Actions/ComputerSystem.Reset`;
    await this.request('POST', target, { ResetType: type });
    return type;
  }

  async on(): Promise<PowerOutcome> {
    const { path, sys } = await this.computerSystem();
    if (redfishPowerState(sys.PowerState) === 'on') return { done: true, note: ALREADY_ON };
    const type = await this.reset(path, sys, ['On', 'ForceOn', 'PushPowerButton']);
    return type === 'On' ? { done: true } : { done: true, note: `ResetType ${type} (the BMC does not offer On)` };
  }

  async off(opts: OffOptions = {}): Promise<PowerOutcome> {
    const { path, sys } = await this.computerSystem();
    if (redfishPowerState(sys.PowerState) === 'off') return { done: true, note: ALREADY_OFF };
    if (!opts.graceful) {
      await this.reset(path, sys, ['ForceOff']);
      return { done: true };
    }
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const pollMs = this.opts.pollMs ?? 2_000;
    if (!pickAllowed(['GracefulShutdown'], await this.allowedResets(sys))) {
      await this.reset(path, sys, ['ForceOff']);
      return { done: true, note: 'the BMC offers no GracefulShutdown; powered off hard' };
    }
    await this.reset(path, sys, ['GracefulShutdown']);
    // Bounded: at most timeoutMs / pollMs polls, each itself bounded by the request deadline.
    for (let waited = 0; waited < timeoutMs; waited += pollMs) {
      if ((await this.status()) === 'off') return { done: true };
      await new Promise((r) => setTimeout(r, Math.min(pollMs, timeoutMs - waited)));
    }
    const now = await this.computerSystem();
    if (redfishPowerState(now.sys.PowerState) === 'off') return { done: true };
    await this.reset(now.path, now.sys, ['ForceOff']);
    return { done: true, note: `the operating system did not shut down within ${timeoutMs} ms of GracefulShutdown; powered off hard` };
  }

  async cycle(): Promise<PowerOutcome> {
    const { path, sys } = await this.computerSystem();
    if (redfishPowerState(sys.PowerState) === 'off') {
      await this.reset(path, sys, ['On', 'ForceOn', 'PushPowerButton']);
      return { done: true, note: 'it was off: powered on' };
    }
    const type = await this.reset(path, sys, ['ForceRestart', 'PowerCycle', 'GracefulRestart']);
    return type === 'ForceRestart' ? { done: true } : { done: true, note: `ResetType ${type} (the BMC does not offer ForceRestart)` };
  }

  /**
   * PATCHes the boot override (Pxe or Hdd; Once, or Continuous when persistent or when the BMC offers no
   * Once) and reads it back. @throws TaktError conflict when the BMC does not offer the target or kept another.
   */
  async setNextBoot(device: BootDevice, opts: { persistent?: boolean } = {}): Promise<BootOutcome> {
    const { path, sys, etag } = await this.computerSystem();
    const target = device === 'pxe' ? 'Pxe' : 'Hdd';
    const targets = sys.Boot?.['BootSourceOverrideTarget@Redfish.AllowableValues'];
    if (targets && !targets.includes(target)) throw new TaktError('conflict', `${this.target}: ${path} offers boot targets ${targets.join(', ')}, not ${target}`);
    const enabledAllowed = sys.Boot?.['BootSourceOverrideEnabled@Redfish.AllowableValues'];
    const wanted = opts.persistent ? ['Continuous'] : ['Once', 'Continuous'];
    const enabled = pickAllowed(wanted, enabledAllowed);
    if (!enabled) throw new TaktError('conflict', `${this.target}: ${path} offers BootSourceOverrideEnabled ${enabledAllowed!.join(', ')}, not ${wanted[0]}`);
    await this.request('PATCH', path, { Boot: { BootSourceOverrideTarget: target, BootSourceOverrideEnabled: enabled } }, etag ? { 'if-match': etag } : {});
    const back = (await this.computerSystem()).sys.Boot;
    if (back?.BootSourceOverrideTarget !== undefined && back.BootSourceOverrideTarget !== target) {
      throw new TaktError('conflict', `${this.target}: asked for boot target ${target}, the BMC reports ${back.BootSourceOverrideTarget}`);
    }
    const persistent = enabled === 'Continuous';
    return { done: true, persistent, note: persistent && !opts.persistent ? 'the BMC offers no one-shot (Once) override: applied persistently' : undefined };
  }
}
