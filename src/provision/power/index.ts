/**
 * Power drivers by name (see driver.ts for the interface). `ipmi` and `redfish` join here when they exist.
 */
import { TaktError } from '../../model/errors.js';
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

/**
 * The driver for `config`, for machine `name` (used in manual instructions).
 * @throws TaktError bad_request for an unknown driver or a missing setting, with the field path.
 */
export function powerDriver(name: string, config: PowerConfig): PowerDriver {
  switch (config.driver) {
    case 'qmp':
      if (!config.socket) throw new TaktError('bad_request', `power driver qmp for ${name} needs 'socket' (the VM's QMP socket path)`, { path: 'power.socket' });
      return new QmpPower({ socket: config.socket, disk: config.disk });
    case 'manual':
      return new ManualPower(name);
    default:
      throw new TaktError('bad_request', `unknown power driver '${(config as { driver: string }).driver}' for ${name}: known are qmp, manual`, { path: 'power.driver' });
  }
}
