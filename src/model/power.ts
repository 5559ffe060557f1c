/**
 * A machine's power configuration as the model holds it: which power driver reaches it and that driver's
 * settings (desired state, in history and exports). The drivers and their own checks live in
 * src/provision/power (index.ts `checkPowerConfig`); the model only knows the shape every driver shares,
 * so that the store and engine need nothing from the layer above them. Pure; no I/O.
 *
 * Secrets are never stored here: a driver that logs in names the param that holds the password
 * (`passwordParam`, a secure param resolved when the driver is used), never the password itself.
 */
import { TaktError } from './errors.js';

/** `{driver, ...settings}`: settings are strings, numbers or booleans (flat; JSON). */
export type MachinePowerConfig = { driver: string } & Record<string, string | number | boolean>;

/** Keys that would hold a secret in the clear: refused whatever the driver. */
const SECRET_KEY = /^(password|passwd|secret|token|key)$/i;

/** Bound on one setting's text (a path, a URL, a fingerprint). */
export const MAX_POWER_VALUE_CHARS = 1024;

/**
 * The shape every power configuration has: an object with a `driver` name and flat scalar settings,
 * none of them a secret in the clear. Drivers check their own fields on top (provision/power checkPowerConfig).
 * @throws TaktError invalid with the field path under `/powerConfig`.
 */
export function checkPowerShape(input: unknown): MachinePowerConfig {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new TaktError('invalid', 'powerConfig must be an object like {"driver": "qmp", "socket": "/path/qmp.sock"}', { path: '/powerConfig' });
  }
  // A field given as undefined (a JS caller's spread) is a field not given: JSON has no undefined.
  const o = Object.fromEntries(Object.entries(input as Record<string, unknown>).filter(([, v]) => v !== undefined));
  if (typeof o.driver !== 'string' || !/^[a-z][a-z0-9-]{0,31}$/.test(o.driver)) {
    throw new TaktError('invalid', 'powerConfig.driver: give the power driver by name (qmp, ipmi, redfish, manual; --power-driver)', { path: '/powerConfig/driver' });
  }
  for (const [k, v] of Object.entries(o)) {
    if (SECRET_KEY.test(k)) {
      throw new TaktError('invalid', `powerConfig.${k}: a secret is never stored in a power configuration; put it in a secure param and name it (--power-opt password-param=NAME)`, { path: `/powerConfig/${k}` });
    }
    const scalar = typeof v === 'string' || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v));
    if (!scalar) throw new TaktError('invalid', `powerConfig.${k}: must be a string, number or boolean`, { path: `/powerConfig/${k}` });
    if (typeof v === 'string' && v.length > MAX_POWER_VALUE_CHARS) throw new TaktError('invalid', `powerConfig.${k}: at most ${MAX_POWER_VALUE_CHARS} characters`, { path: `/powerConfig/${k}` });
  }
  return o as MachinePowerConfig;
}
