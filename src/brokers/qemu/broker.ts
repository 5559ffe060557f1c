/**
 * The `qemu` broker: each machine is a qemu VM on this host that boots from the network like bare metal
 * (environment `metal`), so the whole provisioning path — DHCP, iPXE, bootenvs, power — can be exercised
 * without hardware. It makes the VM's hardware only: what runs in it comes from the network boot.
 *
 *   plan     before the machine is recorded: its id, a MAC (52:54:00 + 3 random bytes), an SMBIOS UUID,
 *            the firmware, and its power configuration `{driver: qmp, socket: <dir>/qmp.sock}`; the
 *            machine's boot settings and power configuration are desired state like an operator's
 *   create   `<data>/qemu/<id>/`: vm.json (memory, disk size), the agent token (0600, for a bootenv that
 *            hands it over later), disk.qcow2, and qemu started (see vm.ts), powered on unless the
 *            machine's desired power is off (qemu -S: the power driver's `on` starts it)
 *   power    by the qmp power driver (provision/power), through the machine's power configuration; qemu
 *            runs with -no-shutdown, so the process outlives a powered-off guest
 *   destroy  qemu ended (QMP quit, then signals), its tap removed, its directory removed
 *   adopt    a restarted endpoint finds each VM's qemu by its pid file (checked against /proc) and keeps
 *            it; a VM whose qemu is gone (host reboot, crash) is started again, powered as desired
 *
 * The NIC: with a bridge (`takt serve --qemu-bridge BR`) a tap `tq-<id>` on that bridge in the endpoint's
 * network namespace, where `takt serve --provision` answers DHCP and serves boot files; without one, qemu's
 * private user-mode network, where the VM can be powered but takt's boot services do not reach it (said
 * with every machine created).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BootSettings } from '../../model/boot.js';
import { TaktError } from '../../model/errors.js';
import type { Machine } from '../../model/machine.js';
import type { MachinePowerConfig } from '../../model/power.js';
import { Vm, type Firmware, type VmSpec } from './vm.js';

/** The VM settings of a create request (api/context.ts VmRequest). */
export interface QemuVmSettings {
  firmware?: Firmware;
  memoryMiB?: number;
  diskGiB?: number;
  bootenv?: string;
}

/** What vm.json keeps: what the VM is made of beyond the machine's own record. */
interface VmFile {
  memoryMiB: number;
  diskGiB: number;
}

export interface QemuBrokerOptions {
  /** The endpoint's data dir: VMs live in `<dataDir>/qemu/<machine id>/`. */
  dataDir: string;
  /** A bridge in the endpoint's network namespace that VM taps join (`--qemu-bridge`); none: user-mode network. */
  bridge?: string;
  log: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
  /** How often to check that VMs' qemu processes live (default 5 s). */
  superviseMs?: number;
  /** qemu program (default qemu-system-x86_64; tests only). */
  qemu?: string;
}

/** Default guest memory (MiB) and disk size (GiB). */
export const QEMU_DEFAULTS = { memoryMiB: 512, diskGiB: 8 } as const;

/** Longest unix socket path Linux takes (sun_path is 108 bytes with the NUL). */
const MAX_SOCKET_PATH = 107;

interface Tracked {
  machine: Pick<Machine, 'id' | 'name' | 'power' | 'boot'>;
  vm: Vm | null;
  /** Starts within the last minute (crash-loop guard). */
  starts: number[];
  starting: boolean;
}

export class QemuBroker {
  readonly name = 'qemu';
  readonly environment = 'metal';
  /** A VM made here is new: its disk is empty (import: see BrokerPort.sandboxed). */
  readonly sandboxed = true;
  /** Its VMs run on this host: they stay with the replica that made them (api/hosts.ts). */
  readonly hostBound = true;
  /** Destroys under way, by machine id: a second call for the same machine waits for the first. */
  private readonly destroying = new Map<string, Promise<void>>();
  private readonly tracked = new Map<string, Tracked>();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: QemuBrokerOptions) {}

  private get vmsDir(): string {
    return join(this.opts.dataDir, 'qemu');
  }

  /** The directory of machine `id`'s VM. */
  vmDir(id: string): string {
    return join(this.vmsDir, id);
  }

  /** Whether machine `id`'s VM is in this data dir (made here, or by this endpoint before replicas). */
  holds(id: string): boolean {
    return existsSync(this.vmDir(id));
  }

  /** Said with every VM created when takt's boot services cannot reach it. */
  get notice(): string | undefined {
    return this.opts.bridge ? undefined : "no --qemu-bridge: the VM's NIC is on qemu's private user-mode network, where takt's boot services do not answer (it can be powered, not network-booted by takt; see docs/provisioning.md \"The qemu broker\")";
  }

  /**
   * Throws (with how to fix it) when this host cannot run VMs: qemu or qemu-img missing, the bridge
   * missing, or a data dir so deep the QMP socket path would not fit.
   */
  async check(): Promise<void> {
    for (const [prog, pkg] of [[this.opts.qemu ?? 'qemu-system-x86_64', 'qemu-system-x86'], ['qemu-img', 'qemu-utils']] as const) {
      try {
        execFileSync(prog, ['--version'], { stdio: 'ignore', timeout: 10_000 });
      } catch {
        throw new TaktError('unavailable', `the qemu broker needs ${prog} (Debian: apt-get install ${pkg})`);
      }
    }
    if (this.opts.bridge && !existsSync(`/sys/class/net/${this.opts.bridge}/bridge`)) {
      throw new TaktError('unavailable', `--qemu-bridge ${this.opts.bridge}: no such bridge in the endpoint's network namespace (make it: ip link add ${this.opts.bridge} type bridge; ip link set ${this.opts.bridge} up)`);
    }
    const sock = join(this.vmDir('m-0123456789'), 'qmp.sock');
    if (sock.length > MAX_SOCKET_PATH) throw new TaktError('unavailable', `the data dir is too deep for VM QMP sockets (${sock.length} > ${MAX_SOCKET_PATH} characters): use a shorter --data path`);
  }

  /**
   * A new VM machine's id, boot settings and power configuration (before it is recorded).
   * @throws TaktError invalid for a bad firmware.
   */
  plan(_name: string, vm: QemuVmSettings): { id: string; boot: BootSettings; powerConfig: MachinePowerConfig } {
    const firmware = vm.firmware ?? 'bios';
    if (firmware !== 'bios' && firmware !== 'uefi') throw new TaktError('invalid', `vm.firmware: bios or uefi, not ${JSON.stringify(firmware)}`, { path: '/vm/firmware' });
    const id = `m-${randomBytes(5).toString('hex')}`;
    const mac = `52:54:00:${[...randomBytes(3)].map((b) => b.toString(16).padStart(2, '0')).join(':')}`;
    return {
      id,
      boot: { macs: [mac], uuid: randomUUID(), firmware, ...(vm.bootenv ? { bootenv: vm.bootenv } : {}) },
      powerConfig: this.powerConfigFor(id),
    };
  }

  /**
   * The power configuration of machine `id`'s VM on this host: its QMP socket in this endpoint's data dir.
   * A VM machine imported from another endpoint gets this one, not the path its export carries.
   */
  powerConfigFor(id: string): MachinePowerConfig {
    return { driver: 'qmp', socket: join(this.vmDir(id), 'qmp.sock') };
  }

  /**
   * Makes the machine's VM and starts qemu (powered on unless the machine's desired power is off).
   * Works from the machine's record (boot settings), so an import that restores a VM machine makes it too.
   * @throws TaktError invalid when the machine has no boot settings; unavailable when qemu cannot start.
   */
  async create(machine: Machine, token: string, vm: QemuVmSettings = {}): Promise<void> {
    if (!machine.boot) throw new TaktError('invalid', `machine ${machine.name} has no boot settings (MAC, UUID): the qemu broker makes the VMs it planned`, { path: '/boot' });
    const dir = this.vmDir(machine.id);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeFileSync(join(dir, 'token'), token, { mode: 0o600 });
    const file: VmFile = { memoryMiB: vm.memoryMiB ?? QEMU_DEFAULTS.memoryMiB, diskGiB: vm.diskGiB ?? QEMU_DEFAULTS.diskGiB };
    writeFileSync(join(dir, 'vm.json'), JSON.stringify(file) + '\n', { mode: 0o600 });
    const t = this.track(machine);
    try {
      await this.start(t);
    } catch (err) {
      // No half-made VM: the route deletes the machine record; its files go with it.
      this.tracked.delete(machine.id);
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    this.startSupervision();
  }

  /**
   * Ends the machine's qemu and removes its tap and its files (disk included). Idempotent, and a call while one is under way
   * waits for that one (the API route and the machines.delete event may both ask).
   */
  async destroy(machine: Pick<Machine, 'id' | 'name'>): Promise<void> {
    const running = this.destroying.get(machine.id);
    if (running) return running;
    const p = this.destroyNow(machine).finally(() => this.destroying.delete(machine.id));
    this.destroying.set(machine.id, p);
    return p;
  }

  private async destroyNow(machine: Pick<Machine, 'id' | 'name'>): Promise<void> {
    const t = this.tracked.get(machine.id);
    this.tracked.delete(machine.id);
    const vm = t?.vm ?? this.adoptOne(machine.id, machine.name);
    await vm?.kill();
    if (this.opts.bridge) {
      try {
        execFileSync('ip', ['link', 'del', tapName(machine.id)], { stdio: 'ignore', timeout: 10_000 });
      } catch {
        // not there
      }
    }
    rmSync(this.vmDir(machine.id), { recursive: true, force: true });
  }

  /** At endpoint start: keep each VM whose qemu still runs; start the others, powered as desired. */
  async adopt(machines: Machine[]): Promise<void> {
    for (const m of machines) {
      const t = this.track(m);
      t.vm = this.adoptOne(m.id, m.name);
      if (t.vm) this.opts.log('info', `qemu: ${m.name}'s VM still runs (pid ${t.vm.pid}): adopted`, { machine: m.name });
      else await this.start(t).catch((err: Error) => this.opts.log('error', `qemu: cannot start ${m.name}'s VM: ${err.message}`, { machine: m.name }));
    }
    if (machines.length) this.startSupervision();
  }

  /**
   * Power goes through the machine's power driver (qmp), not the broker; the broker only keeps the
   * desired power, with which it starts a VM again whose qemu died.
   */
  async setPower(machine: Machine): Promise<void> {
    const t = this.tracked.get(machine.id);
    if (t) t.machine = machine;
  }

  /**
   * Graceful endpoint shutdown: the VMs keep running (they are machines, not the endpoint's helpers; a
   * restarted endpoint adopts them). Supervision stops.
   */
  async stopAll(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private track(machine: Tracked['machine']): Tracked {
    let t = this.tracked.get(machine.id);
    if (!t) {
      t = { machine, vm: null, starts: [], starting: false };
      this.tracked.set(machine.id, t);
    }
    t.machine = machine;
    return t;
  }

  /** The running qemu of machine `id`, found by its pid file; null when none runs. */
  private adoptOne(id: string, name: string): Vm | null {
    const spec = this.specOf({ id, name, power: 'on' });
    return spec ? Vm.adopt(spec) : null;
  }

  /** The VM's spec from its machine and vm.json; null when its directory or vm.json is gone. */
  private specOf(m: Pick<Machine, 'id' | 'name' | 'power' | 'boot'>): VmSpec | null {
    const dir = this.vmDir(m.id);
    let file: VmFile;
    try {
      file = JSON.parse(readFileSync(join(dir, 'vm.json'), 'utf8')) as VmFile;
    } catch {
      return null;
    }
    const mac = m.boot?.macs[0];
    return {
      // qemu's process name: the id is safe where a machine name may not be (names allow more characters).
      name: m.id,
      dir,
      firmware: m.boot?.firmware === 'uefi' ? 'uefi' : 'bios',
      memoryMiB: file.memoryMiB,
      diskGiB: file.diskGiB,
      ...(mac ? { nic: { model: 'virtio-net-pci' as const, mac, net: this.opts.bridge ? { kind: 'tap' as const, bridge: this.opts.bridge, tap: tapName(m.id) } : { kind: 'user' as const } } } : {}),
      ...(m.boot?.uuid ? { smbios: { uuid: m.boot.uuid, serial: m.id } } : {}),
      boot: 'pxe',
      startOff: m.power === 'off',
    };
  }

  private async start(t: Tracked): Promise<void> {
    const spec = this.specOf(t.machine);
    if (!spec) throw new TaktError('unavailable', `the VM of ${t.machine.name} has no ${join(this.vmDir(t.machine.id), 'vm.json')}: delete the machine and create it again`);
    t.starting = true;
    try {
      t.starts.push(Date.now());
      t.vm = await Vm.start(spec, { timeoutMs: 120_000, ...(this.opts.qemu ? { qemu: this.opts.qemu } : {}) });
      this.opts.log('info', `qemu: ${t.machine.name}'s VM started (pid ${t.vm.pid}, ${t.vm.accel}${spec.startOff ? ', powered off' : ''})`, { machine: t.machine.name });
    } finally {
      t.starting = false;
    }
  }

  /** Restarts a VM whose qemu died (not one powered off: qemu stays up then), at most 3 times a minute. */
  private startSupervision(): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      for (const t of this.tracked.values()) {
        if (t.starting || (t.vm && t.vm.alive)) continue;
        const now = Date.now();
        t.starts = t.starts.filter((at) => now - at < 60_000);
        if (t.starts.length >= 3) continue;
        this.opts.log('warn', `qemu: ${t.machine.name}'s VM is gone; starting it again`, { machine: t.machine.name });
        void this.start(t).catch((err: Error) => this.opts.log('error', `qemu: cannot start ${t.machine.name}'s VM: ${err.message}`, { machine: t.machine.name }));
      }
    }, this.opts.superviseMs ?? 5000);
    this.timer.unref();
  }
}

/** The VM's tap: `tq-` and the id's hex (Linux interface names have at most 15 characters). */
export function tapName(id: string): string {
  return `tq-${id.replace(/^m-/, '').slice(0, 12)}`;
}
