/**
 * A machine driven over SSH instead of an agent ("agentless"): where it is, which credential logs in,
 * and the host key pinned on first contact. Pure parsing and validation; no I/O.
 *
 * Target syntax (as `ssh` and `scp` write it): `USER@HOST[:PORT]`, an IPv6 address in brackets
 * (`root@[2001:db8::5]:22`). The port defaults to 22.
 */
import { isIP } from 'node:net';
import { NAME_PATTERN } from './content-names.js';
import { TaktError } from './errors.js';

/** A host's public key as pinned: its algorithm and its SHA-256 fingerprint as `ssh-keygen -lf` prints it. */
export interface HostKey {
  /** Key type from the key blob, e.g. `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`. */
  type: string;
  /** `SHA256:` + unpadded base64 of the SHA-256 of the key blob (RFC 4253 § 6.6 encoding). */
  fingerprint: string;
}

export interface SshTarget {
  user: string;
  /** A DNS name, an IPv4 address or an IPv6 address (without brackets). */
  host: string;
  /** 1…65535. */
  port: number;
}

/** How the endpoint reaches an agentless machine (stored on the machine as `ssh`). */
export interface MachineSsh extends SshTarget {
  /** Name of the `ssh-key` credential that logs in (`takt credentials add NAME --ssh-key FILE`). */
  credential: string;
  /** What scripts see as TAKT_ROOT on the host; absent: `/`. */
  root?: string;
  /** The remote takt dir (helpers, job dirs); absent: `/var/lib/takt-ssh` for root, else `~/.takt`. */
  dir?: string;
  /** Pinned on first contact; null until then. A host that offers another key is not used. */
  hostKey: HostKey | null;
  /** A different key the host offered, kept for an operator to accept (`machines update --ssh-accept-new-key`). */
  offeredHostKey?: HostKey | null;
}

/** What an operator sets: the target, the credential and the optional dirs. */
export type SshSettings = Pick<MachineSsh, 'user' | 'host' | 'port' | 'credential' | 'root' | 'dir'>;

export const DEFAULT_SSH_PORT = 22;

// Spelled out: `[a-z]` follows the locale's collation in some engines.
const USER = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
const LABEL = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
const CREDENTIAL = new RegExp(NAME_PATTERN);
const MAX_PATH = 1024;

/** True for a DNS name (RFC 1123 labels, at most 253 characters) or an IP literal (IPv6 without brackets). */
export function isHost(host: string): boolean {
  if (isIP(host) !== 0) return true;
  if (host.length === 0 || host.length > 253) return false;
  return host.replace(/\.$/, '').split('.').every((l) => LABEL.test(l));
}

/**
 * Parses `USER@HOST[:PORT]`.
 * @throws TaktError bad_request naming `where` (the flag or field) and what is wrong.
 */
export function parseSshTarget(text: string, where = '--ssh'): SshTarget {
  const bad = (why: string) => new TaktError('bad_request', `${where} '${text}': ${why} (expected USER@HOST[:PORT], e.g. root@10.0.0.5:22 or admin@[2001:db8::5])`, { path: where });
  const at = text.lastIndexOf('@');
  if (at < 0) throw bad('missing the user');
  const user = text.slice(0, at);
  const rest = text.slice(at + 1);
  if (!USER.test(user)) throw bad(`'${user}' is not a user name (letters, digits, _ . -, not starting with - or .)`);
  let host: string;
  let portText: string | undefined;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close < 0) throw bad('an opening [ without its ]');
    host = rest.slice(1, close);
    const after = rest.slice(close + 1);
    if (after !== '' && !after.startsWith(':')) throw bad(`unexpected '${after}' after the address`);
    if (after) portText = after.slice(1);
    if (isIP(host) !== 6) throw bad(`'${host}' in brackets is not an IPv6 address`);
  } else {
    const colons = rest.split(':').length - 1;
    if (colons > 1) throw bad('put an IPv6 address in brackets');
    [host, portText] = colons === 1 ? (rest.split(':') as [string, string]) : [rest, undefined];
    if (!isHost(host)) throw bad(`'${host}' is not a host name or IP address`);
  }
  let port = DEFAULT_SSH_PORT;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) throw bad(`port '${portText}' is not a number from 1 to 65535`);
    port = Number(portText);
  }
  return { user, host, port };
}

/** `user@host:port`, an IPv6 host in brackets: the form messages and reasons use. */
export function sshTargetText(t: SshTarget): string {
  return `${t.user}@${t.host.includes(':') ? `[${t.host}]` : t.host}:${t.port}`;
}

/**
 * Checks SSH settings as an API body gives them (`path` is where they sit, e.g. `/ssh`).
 * @throws TaktError invalid with the path of the first bad field.
 */
export function checkSshSettings(input: unknown, path = '/ssh'): SshSettings {
  const bad = (field: string, why: string) => new TaktError('invalid', `${path}/${field} ${why}`, { path: `${path}/${field}` });
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new TaktError('invalid', `${path} must be an object`, { path });
  const o = input as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!['user', 'host', 'port', 'credential', 'root', 'dir'].includes(k)) throw new TaktError('invalid', `unknown field '${k}'`, { path: `${path}/${k}` });
  if (typeof o.user !== 'string' || !USER.test(o.user)) throw bad('user', 'must be a user name (letters, digits, _ . -, not starting with - or .)');
  if (typeof o.host !== 'string' || !isHost(o.host)) throw bad('host', 'must be a host name or an IP address (IPv6 without brackets)');
  const port = o.port ?? DEFAULT_SSH_PORT;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) throw bad('port', 'must be a whole number from 1 to 65535');
  if (typeof o.credential !== 'string' || !CREDENTIAL.test(o.credential)) throw bad('credential', 'must be the name of a credential (lower-case letters, digits, . _ -)');
  const out: SshSettings = { user: o.user, host: o.host, port, credential: o.credential };
  for (const k of ['root', 'dir'] as const) {
    const v = o[k];
    if (v === undefined) continue;
    if (typeof v !== 'string' || !v.startsWith('/') || v.length > MAX_PATH || /[\0\n\r]/.test(v)) throw bad(k, `must be an absolute path (at most ${MAX_PATH} characters, no newlines)`);
    out[k] = v.length > 1 ? v.replace(/\/+$/, '') : v;
  }
  return out;
}

/** An operator's change to a machine's SSH settings: fields to set (null removes `root`/`dir`), or accepting the offered host key. */
export interface SshPatch {
  user?: string;
  host?: string;
  port?: number;
  credential?: string;
  root?: string | null;
  dir?: string | null;
  /** Pin the key the host offered instead of the pinned one (after the operator checked it). */
  acceptNewHostKey?: boolean;
}

/**
 * `current` with `patch` applied and checked. A new user, host or port is another identity: its pin is
 * dropped (the next contact pins again). Accepting a new key pins the one the host offered.
 * @throws TaktError invalid (bad field, with its path) or conflict (no offered key to accept).
 */
export function patchSsh(current: MachineSsh, patch: SshPatch, path = '/ssh'): MachineSsh {
  const { acceptNewHostKey, ...fields } = patch;
  const merged: Record<string, unknown> = { ...sshSettingsOf(current) };
  for (const [k, v] of Object.entries(fields)) {
    if (v === null) delete merged[k];
    else if (v !== undefined) merged[k] = v;
  }
  const settings = checkSshSettings(merged, path);
  const moved = settings.user !== current.user || settings.host !== current.host || settings.port !== current.port;
  let hostKey = moved ? null : current.hostKey;
  let offeredHostKey = moved ? null : (current.offeredHostKey ?? null);
  if (acceptNewHostKey) {
    if (moved) throw new TaktError('invalid', `${path}/acceptNewHostKey cannot go with a new user, host or port (their key is pinned on first contact)`, { path: `${path}/acceptNewHostKey` });
    if (!offeredHostKey) throw new TaktError('conflict', `no changed host key to accept: ${sshTargetText(current)} has offered no key other than the pinned one${current.hostKey ? ` (${current.hostKey.fingerprint})` : ''}`, { path: `${path}/acceptNewHostKey` });
    hostKey = offeredHostKey;
    offeredHostKey = null;
  }
  return { ...settings, hostKey, ...(offeredHostKey ? { offeredHostKey } : {}) };
}

/** The operator's part of the settings (no host keys). */
export function sshSettingsOf(s: MachineSsh): SshSettings {
  return { user: s.user, host: s.host, port: s.port, credential: s.credential, ...(s.root !== undefined ? { root: s.root } : {}), ...(s.dir !== undefined ? { dir: s.dir } : {}) };
}

/** What history records of a machine's SSH settings: the settings and the pinned fingerprint (never key material). */
export function sshDesired(s: MachineSsh): SshSettings & { hostKey: string | null } {
  return { ...sshSettingsOf(s), hostKey: s.hostKey?.fingerprint ?? null };
}
