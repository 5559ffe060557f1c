/**
 * Boots the endpoint is waiting for. When takt powers on, cycles or reboots a network-booted machine
 * into a bootenv served from the network, the machine's firmware must show up on the boot services within
 * a bound: a DHCP DISCOVER/REQUEST from one of its MACs, or an iPXE script request for it. A machine that
 * does not (PXE disabled in its firmware, disk first in the boot order, a cable on the wrong switch, a BMC
 * that said "on" but did nothing) is reported with a reason that says what was expected and what to
 * check, instead of standing "running" with nothing running until someone wonders. When it boots its disk
 * with work waiting there (an image deploy's cycle, a stage that needs `local`), the OS's takt agent must
 * claim work within the same bound: a deployed image that does not boot is reported the same way.
 *
 * The watch is kept in memory: an endpoint that restarts forgets the boots it was waiting for (the
 * machine's next power action arms it again). Peers: MAAS marks a machine "Failed commissioning/deploy"
 * after its boot timeout; Digital Rebar has no such watch (a machine that never PXE-boots waits forever).
 */

import { LOCAL_BOOTENV } from '../model/bootenv-names.js';

/** A machine as the watch needs it. */
export interface WatchedMachine {
  id: string;
  name: string;
  /** The MACs its firmware may boot from (MachineBoot.macs), lower-case. */
  macs: readonly string[];
}

/**
 * Where the awaited boot shows: `network` — its firmware on the boot services (DHCP, a script request);
 * `disk` — the OS on its disk, whose takt agent claims work saying it booted bootenv `local` (an image
 * deploy's power cycle, a stage that needs `local`). The endpoint sees nothing of a disk boot before the
 * agent, so the bound covers POST, the OS's start and its agent's join.
 */
export type BootVia = 'network' | 'disk';

/** A boot that was expected and did not happen, as handed to `onMissed`. */
export interface MissedBoot {
  machine: WatchedMachine;
  /** Where the boot was to show. */
  via: BootVia;
  /** What was done to the machine that should have made it boot, e.g. `power cycle by ipmi`. */
  cause: string;
  /** When it was done (ms since the epoch). */
  since: number;
  /** The bound it had, in ms. */
  boundMs: number;
  /** The operator's message: what did not happen, since when, and what to check. */
  reason: string;
}

/** Timers, injectable so unit tests drive time themselves. */
export interface WatchTimers {
  set(fn: () => void, ms: number): unknown;
  clear(handle: unknown): void;
  now(): number;
}

const REAL_TIMERS: WatchTimers = {
  set: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clear: (h) => clearTimeout(h as NodeJS.Timeout),
  now: () => Date.now(),
};

export interface BootWatchOptions {
  /** How long after the power action the firmware must show up, in ms (`takt serve --boot-timeout`). */
  boundMs: number;
  /** Called once per missed boot; errors are the caller's to log (the watch carries on). */
  onMissed: (missed: MissedBoot) => void | Promise<void>;
  timers?: WatchTimers;
}

interface Pending {
  machine: WatchedMachine;
  via: BootVia;
  cause: string;
  since: number;
  timer: unknown;
}

/**
 * The boots being waited for, by machine. One pending boot per machine: a second power action re-arms it
 * from then (the later action is the one that counts).
 */
export class BootWatch {
  private readonly pending = new Map<string, Pending>();
  private readonly byMac = new Map<string, string>();
  private readonly timers: WatchTimers;

  constructor(private readonly opts: BootWatchOptions) {
    if (!Number.isFinite(opts.boundMs) || opts.boundMs <= 0) throw new RangeError(`boot watch bound must be a positive number of ms (got ${opts.boundMs})`);
    this.timers = opts.timers ?? REAL_TIMERS;
  }

  /** The bound in ms. */
  get boundMs(): number {
    return this.opts.boundMs;
  }

  /**
   * Waits for `machine` to boot after `cause` (e.g. `power on by qmp`): from the network (default; a
   * machine with no MAC cannot be recognised on the wire and is not watched), or from its disk, which
   * `agentBooted(id, 'local')` ends.
   */
  expect(machine: WatchedMachine, cause: string, via: BootVia = 'network'): void {
    if (via === 'network' && machine.macs.length === 0) return;
    this.cancel(machine.id);
    const p: Pending = { machine: { id: machine.id, name: machine.name, macs: [...machine.macs] }, via, cause, since: this.timers.now(), timer: null };
    p.timer = this.timers.set(() => this.fire(machine.id, p), this.opts.boundMs);
    this.pending.set(machine.id, p);
    if (via === 'network') for (const mac of p.machine.macs) this.byMac.set(mac.toLowerCase(), machine.id);
  }

  /**
   * The machine's agent claimed work saying it booted `bootenv`: a disk boot is over when that is `local`
   * (the agent of the OS it left, still reporting its in-memory bootenv, is not the one awaited).
   */
  agentBooted(id: string, bootenv: string): void {
    const p = this.pending.get(id);
    if (p?.via === 'disk' && bootenv === LOCAL_BOOTENV) this.cancel(id);
  }

  /**
   * The firmware of the machine with this MAC showed up on the boot services (a DHCP packet, a script
   * request): its boot is no longer waited for. Unknown MACs are ignored.
   */
  seen(mac: string): void {
    const id = this.byMac.get(mac.toLowerCase());
    if (id !== undefined) this.cancel(id);
  }

  /** Stops waiting for a machine's boot (it was deleted, powered off, or switched to boot from disk). */
  cancel(id: string): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.timers.clear(p.timer);
    this.pending.delete(id);
    for (const mac of p.machine.macs) if (this.byMac.get(mac.toLowerCase()) === id) this.byMac.delete(mac.toLowerCase());
  }

  /** The machines whose boot is waited for, with where, what caused it and since when (ms since the epoch). */
  waiting(): Array<{ id: string; name: string; via: BootVia; cause: string; since: number }> {
    return [...this.pending.values()].map((p) => ({ id: p.machine.id, name: p.machine.name, via: p.via, cause: p.cause, since: p.since }));
  }

  /** Stops every timer (endpoint shutdown). */
  close(): void {
    for (const id of [...this.pending.keys()]) this.cancel(id);
  }

  private fire(id: string, p: Pending): void {
    // A re-armed watch has a newer entry: this timer's was cancelled, but a timer may already be queued.
    if (this.pending.get(id) !== p) return;
    this.cancel(id);
    const reason = p.via === 'disk' ? missedDiskReason(p.machine, p.cause, p.since, this.opts.boundMs) : missedReason(p.machine, p.cause, p.since, this.opts.boundMs);
    const missed: MissedBoot = { machine: p.machine, via: p.via, cause: p.cause, since: p.since, boundMs: this.opts.boundMs, reason };
    void Promise.resolve()
      .then(() => this.opts.onMissed(missed))
      .catch(() => undefined);
  }
}

/**
 * The operator's message for a missed boot: what was done, what was not seen, and the usual causes in the
 * order a person at the machine would check them.
 */
export function missedReason(machine: WatchedMachine, cause: string, since: number, boundMs: number): string {
  const macs = machine.macs.join(', ');
  return (
    `did not boot from the network within ${formatBound(boundMs)} of ${cause} at ${new Date(since).toISOString()}: ` +
    `no DHCP request and no boot script request from ${macs}. Check that the machine is on (takt machines power ${machine.name} status), ` +
    `that network boot (PXE) is enabled and first in its boot order (takt machines power ${machine.name} cycle --next-boot pxe), ` +
    `and that this NIC is on the provisioning network`
  );
}

/**
 * The operator's message for a disk boot that did not come back: nothing of the OS was heard, and the usual
 * causes — an image that does not boot (or has no takt agent), the disk not first, a join that failed.
 */
export function missedDiskReason(machine: WatchedMachine, cause: string, since: number, boundMs: number): string {
  return (
    `did not come back from its disk within ${formatBound(boundMs)} of ${cause} at ${new Date(since).toISOString()}: no takt agent of ${machine.name} claimed work from the booted disk (bootenv local). ` +
    `Check its console: the image may not boot or may run no takt agent, the disk may not be first in its boot order (takt machines power ${machine.name} cycle --next-boot disk), ` +
    `or its agent could not join (takt audit --principal machine:${machine.name}); takt machines rebuild ${machine.name} deploys again`
  );
}

function formatBound(ms: number): string {
  if (ms % 60_000 === 0) return `${ms / 60_000} min`;
  if (ms % 1000 === 0) return `${ms / 1000} s`;
  return `${ms} ms`;
}
