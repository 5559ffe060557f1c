/**
 * Power drivers by name (see driver.ts for the interface). `ipmi` and `redfish` join here when they exist.
 */
import { TaktError } from '../../model/errors.js';
import { checkPowerShape } from '../../model/power.js';
import type { PowerDriver } from './driver.js';
import { ManualPower } from './manual.js';
import { QmpPower } from './qmp.js';

export type { BootDevice, BootOutcome, OffOptions, PowerDriver, PowerOutcome, PowerState } from './driver.js';
export { ManualPower } from './manual.js';
export { QmpPower } from './qmp.js';

/** A machine's power configuration: the driver's name and its settings. */
export type PowerConfig =
  | { driver: 'qmp'; socket: string; disk?: string }
  | { driver: 'manual' };

/** The drivers `checkPowerConfig` and `powerDriver` know, by name. */
export const POWER_DRIVERS = ['qmp', 'manual'] as const;

/** Options of `powerDriver`. */
export interface PowerDriverOptions {
  /**
   * Resolves a (secure) param of the machine by name to its clear value, for drivers that log in
   * (`passwordParam`); undefined when the machine has no such param.
   */
  secret?: (param: string) => Promise<string | undefined>;
}

/**
 * A power configuration as given (API body, CLI `--power-opt` strings, an import), checked and
 * normalised: the shape every driver shares (model/power.ts), a known driver, its required settings, no
 * setting it does not know. Field paths are JSON pointers under `/powerConfig`.
 * @throws TaktError invalid naming the field and what to give.
 */
export function checkPowerConfig(input: unknown): PowerConfig {
  const c = checkPowerShape(input);
  const only = (allowed: string[]) => {
    for (const k of Object.keys(c)) {
      if (k !== 'driver' && !allowed.includes(k)) {
        throw new TaktError('invalid', `powerConfig.${k}: the ${c.driver} driver has no setting '${k}'${allowed.length ? ` (it has: ${allowed.join(', ')})` : ' (it has none)'}`, { path: `/powerConfig/${k}` });
      }
    }
  };
  switch (c.driver) {
    case 'qmp': {
      only(['socket', 'disk']);
      if (typeof c.socket !== 'string' || !c.socket.startsWith('/')) throw new TaktError('invalid', "powerConfig.socket: the qmp driver needs the VM's QMP unix socket as an absolute path (--power-opt socket=/path/qmp.sock)", { path: '/powerConfig/socket' });
      if (c.disk !== undefined && (typeof c.disk !== 'string' || !/^[A-Za-z][A-Za-z0-9_.-]{0,63}$/.test(c.disk))) throw new TaktError('invalid', "powerConfig.disk: the QOM id of the VM's boot disk device, like disk0", { path: '/powerConfig/disk' });
      return { driver: 'qmp', socket: c.socket, ...(c.disk !== undefined ? { disk: c.disk as string } : {}) };
    }
    case 'manual':
      only([]);
      return { driver: 'manual' };
    default:
      throw new TaktError('invalid', `powerConfig.driver: unknown power driver '${c.driver}': known are ${POWER_DRIVERS.join(', ')}`, { path: '/powerConfig/driver' });
  }
}

/**
 * The driver for `config`, for machine `name` (used in manual instructions).
 * @throws TaktError invalid for an unknown driver or a missing setting, with the field path.
 */
export function powerDriver(name: string, config: PowerConfig, _opts: PowerDriverOptions = {}): PowerDriver {
  const c = checkPowerConfig(config);
  switch (c.driver) {
    case 'qmp':
      return new QmpPower({ socket: c.socket, disk: c.disk });
    case 'manual':
      return new ManualPower(name);
  }
}
