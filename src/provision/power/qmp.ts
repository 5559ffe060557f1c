/**
 * The `qmp` power driver: a qemu VM's power through its QMP socket (src/brokers/qemu/qmp.ts), the way a
 * BMC drives a server's. The VM runs with `-no-shutdown` (and `-S` to be created powered off), so qemu
 * itself stays up while the "machine" is off and the driver can turn it back on.
 *
 *   status   query-status: `running` (and other states of a powered guest) → on;
 *            `prelaunch` (created off), `paused` (our hard off), `shutdown` (the guest powered off) → off
 *   on       `cont` from prelaunch; otherwise `system_reset` then `cont` (a fresh boot, as after a real off)
 *   off      hard: `stop` (the CPUs halt at once); graceful: `system_powerdown` (ACPI power button) and
 *            wait for the SHUTDOWN event, then `stop` anyway if none came in time
 *   cycle    `system_reset` (+ `cont` when off)
 *   boot     `qom-set /machine/peripheral/disk0 bootindex` 0 (disk first) or 2 (after the NIC's 1);
 *            qemu rebuilds the firmware's boot order at the next reset, so it takes effect at the next
 *            on or cycle, on SeaBIOS and OVMF alike. This is how a deployed UEFI machine boots its disk:
 *            OVMF does not fall through to the disk when iPXE exits (trap 5 in docs/provisioning.md).
 *
 * qemu has no one-shot boot override over QMP, so a non-persistent `setNextBoot` is applied persistently
 * and the outcome says `persistent: true`. Each call opens its own QMP connection and closes it (qemu
 * serves one client per socket at a time).
 */
import { TaktError } from '../../model/errors.js';
import { withQmp, type QmpClient } from '../../brokers/qemu/qmp.js';
import { BOOTINDEX } from '../../brokers/qemu/vm.js';
import { ALREADY_OFF, ALREADY_ON, type BootDevice, type BootOutcome, type OffOptions, type PowerDriver, type PowerOutcome, type PowerState } from './driver.js';

/** Configuration of the qmp driver. */
export interface QmpPowerOptions {
  /** Path of the VM's QMP unix socket. */
  socket: string;
  /** QOM id of the boot disk device (default `disk0`, as src/brokers/qemu/vm.ts names it). */
  disk?: string;
  /** Bound on each QMP exchange in ms (default 10 000). */
  timeoutMs?: number;
}

/** query-status answer (qemu's RunState names). */
interface StatusInfo {
  running: boolean;
  status: string;
}

/** RunStates in which the machine counts as powered off. */
const OFF_STATES = new Set(['prelaunch', 'paused', 'shutdown']);

/** Maps a qemu RunState onto a power state. */
export function powerStateOf(s: StatusInfo): PowerState {
  if (s.running) return 'on';
  return OFF_STATES.has(s.status) ? 'off' : 'on';
}

/** The qmp power driver for one VM. */
export class QmpPower implements PowerDriver {
  readonly kind = 'qmp';
  constructor(private readonly opts: QmpPowerOptions) {}

  private use<T>(fn: (q: QmpClient) => Promise<T>): Promise<T> {
    return withQmp(this.opts.socket, fn, { timeoutMs: this.opts.timeoutMs ?? 10_000 });
  }

  private query(q: QmpClient): Promise<StatusInfo> {
    return q.execute<StatusInfo>('query-status', undefined, { timeoutMs: this.opts.timeoutMs });
  }

  /** on or off from query-status. @throws TaktError unavailable when the socket does not answer. */
  async status(): Promise<PowerState> {
    return this.use(async (q) => powerStateOf(await this.query(q)));
  }

  async on(): Promise<PowerOutcome> {
    return this.use(async (q) => {
      const s = await this.query(q);
      if (powerStateOf(s) === 'on') return { done: true, note: ALREADY_ON };
      // prelaunch: never ran, nothing to reset. paused/shutdown: start afresh like a real power on.
      if (s.status !== 'prelaunch') await q.execute('system_reset');
      await q.execute('cont');
      return { done: true };
    });
  }

  async off(opts: OffOptions = {}): Promise<PowerOutcome> {
    return this.use(async (q) => {
      const s = await this.query(q);
      if (powerStateOf(s) === 'off') return { done: true, note: ALREADY_OFF };
      if (opts.graceful) {
        const timeoutMs = opts.timeoutMs ?? 60_000;
        const since = q.history.length;
        await q.execute('system_powerdown');
        const down = await q.waitForEvent('SHUTDOWN', { since, timeoutMs }).then(
          () => true,
          () => false,
        );
        if (down) return { done: true };
        await q.execute('stop');
        return { done: true, note: `the guest did not shut down within ${timeoutMs} ms of the ACPI power button; powered off hard` };
      }
      await q.execute('stop');
      return { done: true };
    });
  }

  async cycle(): Promise<PowerOutcome> {
    return this.use(async (q) => {
      const s = await this.query(q);
      await q.execute('system_reset');
      if (!s.running) await q.execute('cont');
      return { done: true };
    });
  }

  async setNextBoot(device: BootDevice, opts: { persistent?: boolean } = {}): Promise<BootOutcome> {
    const disk = this.opts.disk ?? 'disk0';
    const path = `/machine/peripheral/${disk}`;
    return this.use(async (q) => {
      const value = device === 'disk' ? BOOTINDEX.diskFirst : BOOTINDEX.diskAfterNic;
      try {
        await q.execute('qom-set', { path, property: 'bootindex', value });
      } catch (err) {
        if (err instanceof TaktError && /not found/i.test(err.message)) {
          throw new TaktError('conflict', `the VM behind ${this.opts.socket} has no boot disk '${disk}' to order against the NIC`);
        }
        throw err;
      }
      const now = await q.execute<number>('qom-get', { path, property: 'bootindex' });
      if (now !== value) throw new TaktError('internal', `qemu kept ${disk} bootindex at ${now} after setting it to ${value}`);
      return {
        done: true,
        persistent: true,
        note: opts.persistent === false ? 'qemu has no one-shot boot override: applied persistently' : undefined,
      };
    });
  }
}
