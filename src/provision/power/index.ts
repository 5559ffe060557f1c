/**
 * Power drivers by name (see driver.ts for the interface): `qmp`, `manual`, `ipmi` and `redfish`.
 */
import { readFileSync } from 'node:fs';
import { TaktError } from '../../model/errors.js';
import { checkPowerShape } from '../../model/power.js';
import type { PowerDriver } from './driver.js';
import { IpmiPower } from './ipmi.js';
import { ManualPower } from './manual.js';
import { QmpPower } from './qmp.js';
import { RedfishPower } from './redfish.js';

export type { BootDevice, BootOutcome, OffOptions, PowerDriver, PowerOutcome, PowerState } from './driver.js';
export { IpmiPower } from './ipmi.js';
export { ManualPower } from './manual.js';
export { QmpPower } from './qmp.js';
export { RedfishPower } from './redfish.js';

/** A machine's power configuration: the driver's name and its settings. */
export type PowerConfig =
  | { driver: 'qmp'; socket: string; disk?: string }
  | { driver: 'manual' }
  | IpmiPowerConfig
  | RedfishPowerConfig;

/** `ipmi`: a BMC over IPMI v2.0 LAN (RMCP+) through ipmitool. */
export interface IpmiPowerConfig {
  driver: 'ipmi';
  /** The BMC's address or host name. */
  host: string;
  /** RMCP+ UDP port (default 623). */
  port?: number;
  /** BMC user (at most 16 bytes). */
  user: string;
  /** The secure param holding the BMC password (read when a call needs it). */
  passwordParam: string;
  /** IPMI cipher suite (default 3; 17 for BMCs that offer only SHA-256). */
  cipherSuite?: number;
}

/** `redfish`: a BMC over Redfish (DSP0266) on HTTPS. */
export interface RedfishPowerConfig {
  driver: 'redfish';
  /** `https://host[:port]` of the BMC. */
  url: string;
  /** BMC user. */
  user: string;
  /** The secure param holding the BMC password (read when a request needs it). */
  passwordParam: string;
  /** The ComputerSystem's path or id (default: the only member of /redfish/v1/Systems). */
  system?: string;
  /** SHA-256 fingerprint of the BMC's (self-signed) certificate to pin instead of checking its chain. */
  caFingerprint?: string;
  /** Path of a PEM file with the CA the BMC's certificate must chain to (instead of the system's CAs). */
  caFile?: string;
}

/** What the factory needs besides the configuration. */
export interface PowerDriverOptions {
  /**
   * The clear value of a (secure) param of the machine, or undefined when it has none. Asked only when a
   * driver needs the password, so a missing one fails the power action that needs it, not the setup.
   */
  secret?: (param: string) => Promise<string | undefined>;
}

/** The password getter for `param` of machine `name`: asks `secret`, and says how to set it when it is missing. */
function passwordFrom(name: string, param: string, driver: string, opts: PowerDriverOptions): () => Promise<string> {
  return async () => {
    const value = opts.secret ? await opts.secret(param) : undefined;
    if (typeof value === 'string' && value !== '') return value;
    throw new TaktError(
      'conflict',
      `the ${driver} power driver of ${name} needs the BMC password in param '${param}', which ${name} does not have: declare '${param}' with secure: true in a pack's params/ and set it with \`takt machines update ${name} --param ${param}=PASSWORD\``,
      { path: '/powerConfig/passwordParam' },
    );
  };
}

/** The drivers `checkPowerConfig` and `powerDriver` know, by name. */
export const POWER_DRIVERS = ['qmp', 'manual', 'ipmi', 'redfish'] as const;

/**
 * The driver for `config`, for machine `name` (used in manual instructions and messages). `opts.secret`
 * gives the BMC passwords of ipmi and redfish, asked only when a call needs one.
 * @throws TaktError invalid for an unknown driver or a missing or wrong setting, with the field path.
 */
export function powerDriver(name: string, config: PowerConfig, opts: PowerDriverOptions = {}): PowerDriver {
  const c = checkPowerConfig(config);
  switch (c.driver) {
    case 'qmp':
      return new QmpPower({ socket: c.socket, disk: c.disk });
    case 'manual':
      return new ManualPower(name);
    case 'ipmi':
      return new IpmiPower({ host: c.host, port: c.port, user: c.user, cipherSuite: c.cipherSuite, password: passwordFrom(name, c.passwordParam, 'ipmi', opts) });
    case 'redfish': {
      let ca: string | undefined;
      if (c.caFile) {
        try {
          ca = readFileSync(c.caFile, 'utf8');
        } catch (err) {
          throw new TaktError('invalid', `powerConfig.caFile of ${name}: cannot read ${c.caFile}: ${(err as Error).message}`, { path: '/powerConfig/caFile' });
        }
      }
      return new RedfishPower({ url: c.url, user: c.user, system: c.system, caFingerprint: c.caFingerprint, ca, password: passwordFrom(name, c.passwordParam, 'redfish', opts) });
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// checkPowerConfig: validation of every driver's settings, for the API, the CLI and imports.
// ---------------------------------------------------------------------------------------------------------

const PARAM_NAME = /^[a-z][a-z0-9_]{0,62}$/; // PARAM_NAME_PATTERN in src/model/content.ts
const HOST_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i;

/** Fields each driver takes, with a check of each value (undefined: fine; a string: what is wrong). */
const FIELDS: Record<PowerConfig['driver'], Record<string, { required?: boolean; check: (v: unknown) => string | undefined }>> = {
  qmp: {
    socket: { required: true, check: (v) => (typeof v === 'string' && v.startsWith('/') ? undefined : "the VM's QMP unix socket, an absolute path") },
    disk: { check: (v) => (typeof v === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(v) ? undefined : 'the QOM id of the boot disk device (letters, digits, _ . -), e.g. disk0') },
  },
  manual: {},
  ipmi: {
    host: { required: true, check: (v) => (typeof v === 'string' && isHost(v) ? undefined : "the BMC's IP address or host name") },
    port: { check: (v) => (Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 65535 ? undefined : 'a UDP port, 1 to 65535 (default 623)') },
    user: { required: true, check: (v) => (nonEmpty(v) && Buffer.byteLength(v) <= 16 ? undefined : 'the BMC user name, 1 to 16 bytes') },
    passwordParam: { required: true, check: paramName },
    cipherSuite: { check: (v) => (Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 17 ? undefined : 'an IPMI cipher suite id, 0 to 17 (default 3; 17 for SHA-256-only BMCs)') },
  },
  redfish: {
    url: { required: true, check: httpsUrl },
    user: { required: true, check: (v) => (nonEmpty(v) && v.length <= 256 ? undefined : 'the BMC user name, a non-empty string') },
    passwordParam: { required: true, check: paramName },
    system: { check: (v) => (typeof v === 'string' && /^(\/redfish\/v1\/Systems\/[^/?#\s]+|[A-Za-z0-9_.:-]{1,128})$/.test(v) ? undefined : "the ComputerSystem's path (/redfish/v1/Systems/ID) or id") },
    caFingerprint: { check: (v) => (typeof v === 'string' && /^(sha-?256[:/ ]*)?([0-9a-f]{2}:?){31}[0-9a-f]{2}$/i.test(v.trim()) ? undefined : "the certificate's SHA-256 fingerprint, 64 hex digits (colons optional), as openssl x509 -noout -fingerprint -sha256 prints it") },
    caFile: { check: (v) => (typeof v === 'string' && v.startsWith('/') ? undefined : 'an absolute path to a PEM file with the CA') },
  },
};

function nonEmpty(v: unknown): v is string {
  return typeof v === 'string' && v.trim() !== '';
}

function isHost(h: string): boolean {
  if (/^[0-9a-f:.]+$/i.test(h) && h.includes(':')) return true; // an IPv6 literal; the BMC call checks it further
  return h.length <= 253 && h.split('.').every((l) => HOST_LABEL.test(l));
}

function paramName(v: unknown): string | undefined {
  return typeof v === 'string' && PARAM_NAME.test(v) ? undefined : 'the name of a secure param holding the password (a lower-case identifier, e.g. bmc_password)';
}

function httpsUrl(v: unknown): string | undefined {
  if (typeof v !== 'string') return 'https://HOST[:PORT] of the BMC';
  try {
    const u = new URL(v);
    if (u.protocol !== 'https:') return 'https://HOST[:PORT] of the BMC: Redfish needs TLS (the password goes with every request)';
    if (u.username || u.password) return 'https://HOST[:PORT] without credentials in it: the user goes in user, the password in a secure param';
    return undefined;
  } catch {
    return 'https://HOST[:PORT] of the BMC';
  }
}

/** Settings the CLI gives as text (`--power-opt port=623`) that a driver takes as numbers. */
const NUMERIC = new Set(['port', 'cipherSuite']);

/**
 * A power configuration as given (API body, CLI `--power-opt` strings, an import), checked and
 * normalised: the shape every driver shares (model/power.ts checkPowerShape: flat scalars, no secret in
 * the clear), a known driver, its required settings with valid values, no setting it does not know.
 * Numeric settings given as text (from the CLI) become numbers. Field paths are JSON pointers under
 * `/powerConfig`.
 * @throws TaktError invalid naming the field and what it must be; both caFingerprint and caFile.
 */
export function checkPowerConfig(input: unknown): PowerConfig {
  const c: Record<string, unknown> = { ...checkPowerShape(input) };
  const driver = c.driver as string;
  if (!Object.hasOwn(FIELDS, driver)) {
    throw new TaktError('invalid', `powerConfig.driver: unknown power driver '${driver}': known are ${POWER_DRIVERS.join(', ')}`, { path: '/powerConfig/driver' });
  }
  const fields = FIELDS[driver as PowerConfig['driver']];
  for (const key of Object.keys(c)) {
    if (key !== 'driver' && !Object.hasOwn(fields, key)) {
      const known = Object.keys(fields);
      throw new TaktError('invalid', `powerConfig.${key}: the ${driver} driver has no setting '${key}'${known.length ? ` (it has: ${known.join(', ')})` : ' (it has none)'}`, { path: `/powerConfig/${key}` });
    }
    if (NUMERIC.has(key) && typeof c[key] === 'string' && /^\d{1,6}$/.test(c[key] as string)) c[key] = Number(c[key]);
  }
  for (const [key, f] of Object.entries(fields)) {
    const v = c[key];
    if (v === undefined) {
      if (f.required) throw new TaktError('invalid', `powerConfig.${key}: the ${driver} driver needs ${f.check(undefined)} (--power-opt ${kebab(key)}=…)`, { path: `/powerConfig/${key}` });
      continue;
    }
    const wrong = f.check(v);
    if (wrong) throw new TaktError('invalid', `powerConfig.${key}: must be ${wrong}`, { path: `/powerConfig/${key}` });
  }
  if (c.caFingerprint !== undefined && c.caFile !== undefined) {
    throw new TaktError('invalid', 'powerConfig: give caFingerprint (pin the certificate) or caFile (check its chain), not both', { path: '/powerConfig/caFile' });
  }
  return c as unknown as PowerConfig;
}

/** `passwordParam` → `password-param`, as `--power-opt` writes it. */
function kebab(key: string): string {
  return key.replace(/[A-Z]/g, (ch) => `-${ch.toLowerCase()}`);
}
