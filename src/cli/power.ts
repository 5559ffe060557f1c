/**
 * The power flags of `takt machines create|update`: `--power-driver NAME --power-opt KEY=VALUE …`, turned
 * into the `powerConfig` body the endpoint checks (provision/power checkPowerConfig). Keys are written
 * in kebab case on the command line (`password-param`) and sent in camel case (`passwordParam`); values
 * go as typed text (the endpoint's driver check turns `port=623` into a number). A password is never a
 * flag: name the secure param that holds it.
 */
import { UsageError } from './usage.js';

/** The power flags as commander parses them. */
export interface PowerFlags {
  powerDriver?: string;
  powerOpt?: string[];
}

/** `password-param` → `passwordParam`. */
export function camelKey(k: string): string {
  return k.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/**
 * `KEY=VALUE` pairs → settings.
 * @throws UsageError for a pair without `=`, an empty or repeated key.
 */
export function parsePowerOpts(pairs: string[] = []): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const at = p.indexOf('=');
    if (at <= 0) throw new UsageError(`--power-opt ${JSON.stringify(p)}: write KEY=VALUE, e.g. --power-opt host=10.0.0.9`, { path: '--power-opt' });
    const key = camelKey(p.slice(0, at).trim());
    if (key in out) throw new UsageError(`--power-opt ${p.slice(0, at)} is given twice`, { path: '--power-opt' });
    out[key] = p.slice(at + 1);
  }
  return out;
}

/**
 * The `powerConfig` body from the flags: undefined when none was given; null for `--power-driver none`
 * (update: remove it). `current`: the machine's configuration, which `--power-opt` alone changes on update.
 * @throws UsageError for `--power-opt` without a driver to apply it to.
 */
export function powerConfigBody(o: PowerFlags, current?: Record<string, unknown> | null): Record<string, unknown> | null | undefined {
  const opts = parsePowerOpts(o.powerOpt);
  if (o.powerDriver === undefined) {
    if (!o.powerOpt?.length) return undefined;
    if (!current) throw new UsageError('--power-opt needs --power-driver (qmp, ipmi, redfish, manual) on a machine that has no power configuration', { path: '--power-driver' });
    return { ...current, ...opts };
  }
  if (o.powerDriver === 'none' || o.powerDriver === '') {
    if (o.powerOpt?.length) throw new UsageError('--power-driver none removes the power configuration: give no --power-opt with it', { path: '--power-opt' });
    return null;
  }
  return { driver: o.powerDriver, ...opts };
}
