/**
 * Power control of takt's machines by their stored power configuration (Machine.powerConfig): the piece
 * between the API's power routes and the drivers. It builds the machine's driver each time it is used
 * (drivers are stateless, so a restarted endpoint drives the machines it powered before), with a secret
 * resolver that reads the machine's secure params the way its jobs would see them (Engine.secretParam).
 */
import type { Engine } from '../../engine/engine.js';
import { TaktError } from '../../model/errors.js';
import type { Machine } from '../../model/machine.js';
import type { BootDevice, BootOutcome, PowerDriver, PowerOutcome, PowerState } from './driver.js';
import { checkPowerConfig, powerDriver } from './index.js';

/** A power action an operator (or the engine) asks for. */
export type PowerAction = 'on' | 'off' | 'cycle';

/** What a power action answered, with the driver that did it. */
export interface PowerResult extends PowerOutcome {
  /** The driver's name (`qmp`, `ipmi`, `redfish`, `manual`). */
  driver: string;
}

/** What the drivers of the machines are asked; the API's power routes use this port (api/context.ts). */
export class MachinePower {
  constructor(private readonly engine: Engine) {}

  /**
   * The driver of machine `m`.
   * @throws TaktError conflict when it has no power configuration (with how to give one).
   */
  driverOf(m: Machine): PowerDriver {
    if (!m.powerConfig) {
      throw new TaktError('conflict', `${m.name} has no power configuration: give it one with takt machines update ${m.name} --power-driver qmp|ipmi|redfish|manual --power-opt KEY=VALUE`, { path: '/powerConfig' });
    }
    return powerDriver(m.name, checkPowerConfig(m.powerConfig), { secret: async (param) => this.engine.secretParam(m, param) });
  }

  /** The machine's power state as its driver reports it. @throws TaktError unavailable when its controller does not answer. */
  async status(m: Machine): Promise<{ driver: string; state: PowerState }> {
    const d = this.driverOf(m);
    return { driver: d.kind, state: await d.status() };
  }

  /** Switches the machine's power. @throws TaktError unavailable (controller unreachable) or conflict (refused). */
  async act(m: Machine, action: PowerAction): Promise<PowerResult> {
    const d = this.driverOf(m);
    const out = action === 'on' ? await d.on() : action === 'off' ? await d.off() : await d.cycle();
    return { driver: d.kind, ...out };
  }

  /** Puts `device` first for the next boot (or every boot, `persistent`). */
  async nextBoot(m: Machine, device: BootDevice, persistent: boolean): Promise<BootOutcome & { driver: string }> {
    const d = this.driverOf(m);
    return { driver: d.kind, ...(await d.setNextBoot(device, { persistent })) };
  }
}
