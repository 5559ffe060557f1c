/**
 * Power control of takt's machines by their stored power configuration (Machine.powerConfig): the piece
 * between the API's power routes and the drivers. It builds the machine's driver each time it is used
 * (drivers are stateless, so a restarted endpoint drives the machines it powered before), with a secret
 * resolver that reads the machine's secure params the way its jobs would see them (Engine.secretParam).
 */
import type { Engine } from '../../engine/engine.js';
import { TaktError } from '../../model/errors.js';
import { LOCAL_BOOTENV } from '../../model/boot.js';
import type { Machine } from '../../model/machine.js';
import type { BootWatch } from '../boot-watch.js';
import { ALREADY_ON, type BootDevice, type BootOutcome, type PowerDriver, type PowerOutcome, type PowerState } from './driver.js';
import { checkPowerConfig, powerDriver } from './index.js';

/** A power action an operator (or the engine) asks for. */
export type PowerAction = 'on' | 'off' | 'cycle';

/** What a power action answered, with the driver that did it. */
export interface PowerResult extends PowerOutcome {
  /** The driver's name (`qmp`, `ipmi`, `redfish`, `manual`). */
  driver: string;
}

/** What `prepareReboot` did, for the endpoint's log. */
export interface RebootPreparation {
  /** The boot device put first, with the driver's outcome; absent when none was set. */
  nextBoot?: BootOutcome & { driver: string; device: BootDevice };
  /** Why the boot device could not be set (the driver's words); the reboot goes ahead regardless. */
  problem?: string;
  /** Whether the machine's network boot is now waited for (BootWatch). */
  watched: boolean;
}

/**
 * What the drivers of the machines are asked; the API's power routes use this port (api/context.ts).
 * With a BootWatch (`takt serve --provision`), a power on or cycle of a machine that should boot from the
 * network arms the watch, so a machine that never shows up on the boot services is reported.
 */
export class MachinePower {
  /**
   * The boot device last put first per machine id, as far as this endpoint knows: a machine told to boot
   * from its disk is not expected on the network.
   */
  private readonly firstBoot = new Map<string, { device: BootDevice; persistent: boolean }>();

  constructor(
    private readonly engine: Engine,
    private readonly watch: BootWatch | null = null,
  ) {}

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
    if (action === 'off') this.watch?.cancel(m.id);
    // A person who must press the button (manual) has not done it yet: the wait starts when they do.
    else if (out.done && !(action === 'on' && out.note === ALREADY_ON)) this.expectBoot(m, `power ${action} by ${d.kind}`);
    return { driver: d.kind, ...out };
  }

  /** Puts `device` first for the next boot (or every boot, `persistent`). */
  async nextBoot(m: Machine, device: BootDevice, persistent: boolean): Promise<BootOutcome & { driver: string }> {
    const d = this.driverOf(m);
    const out = await d.setNextBoot(device, { persistent });
    if (out.done) this.firstBoot.set(m.id, { device, persistent: out.persistent });
    return { driver: d.kind, ...out };
  }

  /**
   * The boot device a machine's bootenv needs first, or null when its firmware's own order will do:
   * a bootenv served from the network needs the NIC (`pxe`: a machine last deployed to disk may have its
   * disk first); `local` on UEFI needs the disk, because iPXE's `exit` there does not fall through to the
   * next boot entry on every firmware (issue #13; provisioning-facts.md "UEFI exit"). `local` on BIOS
   * keeps the network first, so the endpoint stays in control of the next boot.
   */
  static deviceFor(m: Pick<Machine, 'boot'>): BootDevice | null {
    if (!m.boot) return null;
    if (m.boot.bootenv !== LOCAL_BOOTENV) return 'pxe';
    return m.boot.firmware === 'uefi' ? 'disk' : null;
  }

  /**
   * Makes a network-booted machine ready for the reboot its agent is about to do into its (new) bootenv
   * (engine: a stage that needs another bootenv; a task's exit 64): with a power configuration, the boot
   * device its bootenv needs is put first, persistently (`deviceFor`); then, when it boots from the
   * network, its boot is waited for (`cause` says why, for the message when it does not show up).
   * Never throws: a driver that fails is reported in `problem` (the reboot goes ahead; the firmware's own
   * order may still be right, and the watch reports it when not). The manual driver is not asked.
   */
  async prepareReboot(m: Machine, cause: string): Promise<RebootPreparation> {
    if (!m.boot) return { watched: false };
    const device = MachinePower.deviceFor(m);
    const out: RebootPreparation = { watched: false };
    if (device && m.powerConfig && m.powerConfig.driver !== 'manual') {
      try {
        out.nextBoot = { device, ...(await this.nextBoot(m, device, true)) };
      } catch (err) {
        out.problem = `could not put ${device === 'pxe' ? 'network boot' : 'the disk'} first through its power driver: ${(err as Error).message}`;
      }
    }
    out.watched = this.expectBoot(m, cause);
    return out;
  }

  /**
   * Arms the boot watch for `m`: from the network when it should now boot a bootenv served by takt (and
   * no disk boot was set through takt); from its disk when it boots `local` (or its disk was put first)
   * while its pipeline has work waiting (state `running`): the OS's agent must then claim work (a
   * machine that is done or stopped may boot an OS without an agent, and nobody waits for it). True when armed.
   */
  expectBoot(m: Machine, cause: string): boolean {
    if (!this.watch || !m.boot) return false;
    const first = this.firstBoot.get(m.id);
    // A one-shot disk boot is used up by this boot; the one after it is the network's again.
    if (first?.device === 'disk' && !first.persistent) this.firstBoot.delete(m.id);
    if (m.boot.bootenv === LOCAL_BOOTENV || first?.device === 'disk') {
      if (m.state !== 'running') return false;
      this.watch.expect({ id: m.id, name: m.name, macs: m.boot.macs }, cause, 'disk');
      return true;
    }
    this.watch.expect({ id: m.id, name: m.name, macs: m.boot.macs }, cause);
    return true;
  }

  /** The machine's agent claimed work saying it booted `bootenv` (ClaimRequest.bootenv): a disk boot waited for is over when that is `local`. */
  agentBooted(id: string, bootenv: string): void {
    this.watch?.agentBooted(id, bootenv);
  }
}
