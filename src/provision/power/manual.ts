/**
 * The `manual` power driver: for machines with no controller takt can reach. It does nothing itself and
 * answers every action with what the operator must do at the machine, so a pipeline can wait for a person
 * (the outcome's `done` is false) instead of failing.
 */
import type { BootDevice, BootOutcome, OffOptions, PowerDriver, PowerOutcome, PowerState } from './driver.js';

/** The manual driver for machine `name` (used in the instructions). */
export class ManualPower implements PowerDriver {
  readonly kind = 'manual';
  constructor(private readonly name: string) {}

  /** Always `unknown`: nobody reports it. */
  async status(): Promise<PowerState> {
    return 'unknown';
  }

  async on(): Promise<PowerOutcome> {
    return { done: false, instruction: `Power on ${this.name}: press its power button (or turn it on at its PDU).` };
  }

  async off(opts: OffOptions = {}): Promise<PowerOutcome> {
    return {
      done: false,
      instruction: opts.graceful
        ? `Shut ${this.name} down from its operating system (or press its power button briefly and wait), then make sure it is off.`
        : `Power off ${this.name}: hold its power button until it turns off (or turn it off at its PDU).`,
    };
  }

  async cycle(): Promise<PowerOutcome> {
    return { done: false, instruction: `Power cycle ${this.name}: press its reset button, or turn it off, wait 10 seconds and turn it on.` };
  }

  async setNextBoot(device: BootDevice, opts: { persistent?: boolean } = {}): Promise<BootOutcome> {
    const what = device === 'pxe' ? 'network (PXE) boot' : 'its local disk';
    const persistent = opts.persistent ?? false;
    return {
      done: false,
      persistent,
      instruction: persistent
        ? `In ${this.name}'s firmware setup, put ${what} first in the boot order and save.`
        : `At ${this.name}'s next boot, choose ${what} in its one-time boot menu (often F11 or F12).`,
    };
  }
}
