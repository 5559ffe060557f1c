/**
 * One qemu virtual machine: its files in a directory of its own, the qemu process, its serial console
 * and its QMP socket. The building block of the qemu broker and of the provisioning tests.
 *
 *   <dir>/disk.qcow2     the disk (qemu-img create -f qcow2), kept across starts
 *   <dir>/OVMF_VARS.fd   UEFI variable store, copied per VM from Debian's ovmf package (firmware 'uefi')
 *   <dir>/serial.log     everything the guest writes to its first serial port (ttyS0)
 *   <dir>/qmp.sock       QMP (see qmp.ts)
 *   <dir>/qemu.pid       the qemu process id (qemu's own -pidfile)
 *   <dir>/qemu.log       qemu's own stdout/stderr
 *
 * Acceleration is KVM when /dev/kvm is usable, else TCG (software emulation: a guest then wants one full
 * host core while it runs, and boots 3–5× slower under load; see docs/provisioning.md). TAKT_QEMU_ACCEL
 * (`kvm`, `tcg`, `auto`) overrides that: some hosts (nested virtualisation) offer a /dev/kvm under which
 * firmware crawls — measured on this project's CI machine kind, 2026-11-30: SeaBIOS's iPXE ROM did not reach
 * its DHCP in 300 s and a direct kernel boot did not reach /init in 60 s under KVM, against 25 s with TCG.
 * Network: qemu's user-mode network (its own DHCP/TFTP, for tests) or a tap on a bridge inside a network
 * namespace, where qemu itself runs under `ip netns exec`.
 */
import { spawn, execFile } from 'node:child_process';
import { accessSync, constants, closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, readSync, rmSync, statSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { TaktError } from '../../model/errors.js';
import { withQmp } from './qmp.js';

const run = promisify(execFile);

/** Firmware: SeaBIOS (qemu's default) or OVMF (UEFI, Debian package ovmf). */
export type Firmware = 'bios' | 'uefi';

/** NIC models whose iPXE ROMs Debian's ipxe-qemu ships. */
export type NicModel = 'virtio-net-pci' | 'e1000';

/** Where a NIC is plugged. */
export type NicNet =
  /** qemu's user-mode network (slirp: 10.0.2.0/24, host at 10.0.2.2), with its own DHCP and TFTP. */
  | { kind: 'user'; tftp?: string; bootfile?: string }
  /**
   * A tap created on `bridge` (which must exist), inside network namespace `netns` when given (qemu then
   * runs in that namespace), else in this process's own namespace.
   */
  | { kind: 'tap'; netns?: string; bridge: string; tap: string };

export interface NicSpec {
  model: NicModel;
  /** `52:54:00:xx:xx:xx` style, lower case. */
  mac: string;
  net: NicNet;
  /**
   * The NIC's option ROM: `ipxe` (default: Debian's ipxe-qemu ROM, so the NIC boots with iPXE) or `none`
   * (qemu `romfile=`: the firmware's own network stack boots — under OVMF, EDK2's PXE, the path of a
   * real server's vendor PXE ROM; SeaBIOS has none and cannot network-boot without the ROM).
   */
  rom?: 'ipxe' | 'none';
}

/** What to start. */
export interface VmSpec {
  /** For messages and the qemu process title. */
  name: string;
  /** The VM's directory (made if missing). */
  dir: string;
  firmware: Firmware;
  /** Guest memory in MiB (default 512). */
  memoryMiB?: number;
  /** Virtual CPUs (default 1; under TCG more is not faster). */
  cpus?: number;
  /** A virtio disk of this many GiB (made once as <dir>/disk.qcow2); none when absent. */
  diskGiB?: number;
  /** At most one NIC per VM for now; its QOM id is `net0`. */
  nic?: NicSpec;
  /** SMBIOS type 1 identity (what iPXE shows as `${uuid}` and `${serial}`, and dmidecode in the guest). */
  smbios?: { uuid: string; serial?: string };
  /** Boot this kernel directly (no firmware boot menu, no network boot). */
  kernel?: { path: string; initrd?: string; append?: string };
  /** First boot device: 'pxe' (NIC bootindex 1, disk 2) or 'disk' (disk 0). Default 'pxe'. */
  boot?: 'pxe' | 'disk';
  /** Start powered off (qemu -S): the power driver's `on` starts it. */
  startOff?: boolean;
  /** Accelerator; default `defaultAccel()`: TAKT_QEMU_ACCEL, else KVM when /dev/kvm is usable, else TCG. */
  accel?: 'kvm' | 'tcg';
}

/** Bootindex values: the NIC keeps 1; the disk moves between 2 (after the NIC) and 0 (before it). */
export const BOOTINDEX = { nic: 1, diskAfterNic: 2, diskFirst: 0 } as const;

/**
 * The accelerator qemu gets by default: TAKT_QEMU_ACCEL when it says `kvm` or `tcg`, else (`auto`, unset)
 * KVM when /dev/kvm is usable. @throws TaktError bad_request for another value.
 */
export function defaultAccel(env: NodeJS.ProcessEnv = process.env): 'kvm' | 'tcg' {
  const v = (env.TAKT_QEMU_ACCEL ?? 'auto').trim().toLowerCase();
  if (v === 'kvm' || v === 'tcg') return v;
  if (v !== 'auto' && v !== '') throw new TaktError('bad_request', `TAKT_QEMU_ACCEL=${env.TAKT_QEMU_ACCEL}: say kvm, tcg or auto (KVM when /dev/kvm is usable)`);
  return kvmUsable() ? 'kvm' : 'tcg';
}

/** True when /dev/kvm exists and this process may open it. */
export function kvmUsable(): boolean {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** Debian's OVMF files (package ovmf): the 4 MiB code image and its variable store template. */
export const OVMF = { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd' };

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * The qemu command line (program and arguments) for `spec`, without side effects.
 * @throws TaktError bad_request for a malformed MAC, UUID or name, naming the field.
 */
export function qemuArgs(spec: VmSpec, accel: 'kvm' | 'tcg'): string[] {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(spec.name)) throw new TaktError('bad_request', `VM name '${spec.name}' must be letters, digits, '.', '_' or '-' (at most 63)`, { path: 'name' });
  const d = spec.dir;
  const args = [
    '-name', `${spec.name},process=qemu-${spec.name}`,
    // graphics=off: SeaBIOS (and the iPXE ROM it runs) print to the serial port too (SeaBIOS sercon).
    '-machine', 'pc,graphics=off',
    '-accel', accel,
    '-m', String(spec.memoryMiB ?? 512),
    '-smp', String(spec.cpus ?? 1),
    '-display', 'none', '-vga', 'none', '-monitor', 'none',
    '-chardev', `file,id=ser0,path=${join(d, 'serial.log')}`, '-serial', 'chardev:ser0',
    '-qmp', `unix:${join(d, 'qmp.sock')},server=on,wait=off`,
    '-pidfile', join(d, 'qemu.pid'),
    // Power off and guest shutdown leave qemu running, so the power driver can turn the machine back on.
    '-no-shutdown',
  ];
  if (spec.firmware === 'uefi') {
    args.push('-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${OVMF.code}`, '-drive', `if=pflash,format=raw,unit=1,file=${join(d, 'OVMF_VARS.fd')}`);
  }
  if (spec.smbios) {
    if (!UUID.test(spec.smbios.uuid)) throw new TaktError('bad_request', `SMBIOS uuid '${spec.smbios.uuid}' is not a lower-case RFC 4122 UUID`, { path: 'smbios.uuid' });
    const serial = spec.smbios.serial;
    if (serial !== undefined && !/^[A-Za-z0-9._-]{1,64}$/.test(serial)) throw new TaktError('bad_request', `SMBIOS serial '${serial}' must be 1–64 letters, digits, '.', '_' or '-'`, { path: 'smbios.serial' });
    args.push('-smbios', `type=1,uuid=${spec.smbios.uuid}${serial ? `,serial=${serial}` : ''}`);
  }
  const diskFirst = spec.boot === 'disk';
  if (spec.diskGiB !== undefined) {
    args.push('-drive', `file=${join(d, 'disk.qcow2')},if=none,id=drive0,format=qcow2`);
    args.push('-device', `virtio-blk-pci,drive=drive0,id=disk0,bootindex=${diskFirst ? BOOTINDEX.diskFirst : BOOTINDEX.diskAfterNic}`);
  }
  if (spec.nic) {
    const { model, mac, net } = spec.nic;
    if (!MAC.test(mac)) throw new TaktError('bad_request', `MAC '${mac}' is not six lower-case hex pairs separated by ':'`, { path: 'nic.mac' });
    if (net.kind === 'user') {
      let netdev = 'user,id=n0';
      // qemu's option parser splits on ','; a comma in a value is written as ',,'.
      if (net.tftp) netdev += `,tftp=${net.tftp.replace(/,/g, ',,')}`;
      if (net.bootfile) netdev += `,bootfile=${net.bootfile.replace(/,/g, ',,')}`;
      args.push('-netdev', netdev);
    } else {
      args.push('-netdev', `tap,id=n0,ifname=${net.tap},script=no,downscript=no`);
    }
    args.push('-device', `${model},netdev=n0,id=net0,mac=${mac}${spec.nic.rom === 'none' ? ',romfile=' : ''}${spec.kernel ? '' : `,bootindex=${BOOTINDEX.nic}`}`);
  } else {
    args.push('-nic', 'none');
  }
  if (spec.kernel) {
    args.push('-kernel', spec.kernel.path);
    if (spec.kernel.initrd) args.push('-initrd', spec.kernel.initrd);
    if (spec.kernel.append) args.push('-append', spec.kernel.append);
  }
  if (spec.startOff) args.push('-S');
  return args;
}

/** What `waitForSerial` found. */
export interface SerialMatch {
  /** The whole line that matched (without the newline). */
  line: string;
  /** The regex's match groups. */
  groups: string[];
  /** Milliseconds from the VM's start until the line was seen (resolution: the poll interval, 100 ms). */
  atMs: number;
}

/** How a VM is doing, for a timeout message that tells a slow run from a hung one. */
export interface VmVitals {
  pid: number | null;
  alive: boolean;
  /** qemu's CPU time (user + system) in seconds; null when the process is gone. */
  cpuSeconds: number | null;
  /** Wall seconds since start. */
  wallSeconds: number;
  /** The host's 1, 5 and 15 minute load averages. */
  load: number[];
}

/** A running (or exited) qemu. Use `Vm.start`. */
export class Vm {
  private exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly exitWaiters: Array<() => void> = [];
  /** Byte offset in serial.log from which `waitForSerial` reads next when asked `fromNow`. */
  private serialMark = 0;

  private constructor(
    readonly spec: VmSpec,
    readonly pid: number,
    readonly startedAt: number,
    readonly accel: 'kvm' | 'tcg',
    /** True when this object found qemu already running (`adopt`) rather than starting it. */
    readonly adopted = false,
  ) {}

  /**
   * The qemu already running for `spec` (after an endpoint restart: qemu is started in its own session and
   * outlives its starter), found by `<dir>/qemu.pid` and checked against /proc (a qemu whose command line
   * names this VM's QMP socket, so a reused pid is not mistaken for it); null when none runs.
   */
  static adopt(spec: VmSpec): Vm | null {
    const pid = qemuPidOf(spec.dir);
    if (pid === null) return null;
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const accel = cmdline[cmdline.indexOf('-accel') + 1] === 'kvm' ? 'kvm' : 'tcg';
    return new Vm(spec, pid, statSync(`/proc/${pid}`).mtimeMs, accel, true);
  }

  /** Path of the serial console log. */
  get serialLog(): string {
    return join(this.spec.dir, 'serial.log');
  }
  /** Path of the QMP socket. */
  get qmpSocket(): string {
    return join(this.spec.dir, 'qmp.sock');
  }

  /**
   * Prepares the VM's directory (disk, UEFI vars, tap) and starts qemu. Resolves once qemu has written
   * its pid file and its QMP socket answers (bounded by `timeoutMs`, default 30 s).
   * @throws TaktError unavailable when qemu, qemu-img or OVMF is missing, or qemu exits at once (with its
   *   stderr); TaktError bad_request for a bad spec.
   */
  static async start(spec: VmSpec, opts: { timeoutMs?: number; qemu?: string } = {}): Promise<Vm> {
    const accel = spec.accel ?? defaultAccel();
    const args = qemuArgs(spec, accel);
    const d = spec.dir;
    mkdirSync(d, { recursive: true });
    for (const f of ['serial.log', 'qmp.sock', 'qemu.pid']) rmSync(join(d, f), { force: true });
    if (spec.diskGiB !== undefined && !existsSync(join(d, 'disk.qcow2'))) {
      try {
        await run('qemu-img', ['create', '-q', '-f', 'qcow2', join(d, 'disk.qcow2'), `${spec.diskGiB}G`], { timeout: 30_000 });
      } catch (err) {
        const e = err as { code?: string; stderr?: string; message: string };
        throw new TaktError('unavailable', e.code === 'ENOENT' ? 'qemu-img is not installed (Debian: apt-get install qemu-utils)' : `qemu-img create: ${(e.stderr || e.message).trim()}`);
      }
    }
    if (spec.firmware === 'uefi') {
      if (!existsSync(OVMF.code) || !existsSync(OVMF.vars)) throw new TaktError('unavailable', `UEFI firmware needs ${OVMF.code} and ${OVMF.vars} (Debian: apt-get install ovmf)`);
      // Each VM has its own variable store: boot entries written by one guest must not leak to another.
      if (!existsSync(join(d, 'OVMF_VARS.fd'))) copyFileSync(OVMF.vars, join(d, 'OVMF_VARS.fd'));
    }
    const net = spec.nic?.net;
    let program = opts.qemu ?? 'qemu-system-x86_64';
    let argv = args;
    if (net?.kind === 'tap') {
      const ns = net.netns ? ['-n', net.netns] : [];
      await ipCmd([...ns, 'tuntap', 'add', 'dev', net.tap, 'mode', 'tap']).catch(async (err: Error) => {
        if (!/exists|busy/i.test(err.message)) throw err;
      });
      await ipCmd([...ns, 'link', 'set', net.tap, 'master', net.bridge, 'up']);
      if (net.netns) {
        // `ip netns exec` enters the namespace and execs qemu, so the pid is qemu's own.
        argv = ['netns', 'exec', net.netns, program, ...args];
        program = 'ip';
      }
    }
    const logFd = openSync(join(d, 'qemu.log'), 'w');
    let child;
    try {
      child = spawn(program, argv, { stdio: ['ignore', logFd, logFd], detached: true });
    } finally {
      closeSync(logFd);
    }
    const startedAt = Date.now();
    const vm = await new Promise<Vm>((resolve, reject) => {
      child.once('error', (err: NodeJS.ErrnoException) =>
        reject(new TaktError('unavailable', err.code === 'ENOENT' ? `${program} is not installed (Debian: apt-get install qemu-system-x86)` : `starting qemu: ${err.message}`)),
      );
      child.once('spawn', () => resolve(new Vm(spec, child.pid!, startedAt, accel)));
    });
    child.once('exit', (code, signal) => {
      vm.exited = { code, signal };
      for (const w of vm.exitWaiters.splice(0)) w();
    });
    child.unref();
    const deadline = startedAt + (opts.timeoutMs ?? 30_000);
    for (;;) {
      if (vm.exited) throw new TaktError('unavailable', `qemu for ${spec.name} exited at once (${vm.exited.code ?? vm.exited.signal}): ${vm.qemuLog()}`);
      if (existsSync(vm.qmpSocket)) {
        try {
          await withQmp(vm.qmpSocket, async (q) => q.execute('query-status'), { timeoutMs: 5_000 });
          return vm;
        } catch {
          // not listening yet
        }
      }
      if (Date.now() > deadline) {
        await vm.kill();
        throw new TaktError('unavailable', `qemu for ${spec.name} did not open its QMP socket within ${opts.timeoutMs ?? 30_000} ms: ${vm.qemuLog()}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** The tail of qemu's own output (for error messages). */
  qemuLog(): string {
    try {
      return readFileSync(join(this.spec.dir, 'qemu.log'), 'utf8').trim().split('\n').slice(-5).join(' | ') || '(no output)';
    } catch {
      return '(no output)';
    }
  }

  /** True while the qemu process runs. */
  get alive(): boolean {
    if (this.adopted) return qemuPidOf(this.spec.dir) === this.pid;
    return this.exited === null;
  }

  /** CPU seconds, load and wall time: logged with every timeout so a slow run can be told from a hung one. */
  vitals(): VmVitals {
    let cpuSeconds: number | null = null;
    if (this.alive) {
      try {
        // /proc/PID/stat fields 14 and 15 (utime, stime) in clock ticks; the comm field may hold spaces.
        const stat = readFileSync(`/proc/${this.pid}/stat`, 'utf8');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        cpuSeconds = (Number(f[11]) + Number(f[12])) / 100;
      } catch {
        cpuSeconds = null;
      }
    }
    return { pid: this.pid, alive: this.alive, cpuSeconds, wallSeconds: (Date.now() - this.startedAt) / 1000, load: loadavg().map((l) => Math.round(l * 100) / 100) };
  }

  /** The console so far. */
  serial(): string {
    try {
      return readFileSync(this.serialLog, 'utf8');
    } catch {
      return '';
    }
  }

  /** Makes later `waitForSerial(..., { fromNow: true })` calls ignore what the console holds now. */
  markSerial(): void {
    try {
      this.serialMark = statSync(this.serialLog).size;
    } catch {
      this.serialMark = 0;
    }
  }

  /**
   * Waits until a line of the serial console matches `pattern`, polling the log every 100 ms, up to
   * `timeoutMs`. Searches from the start of the console, or from the last `markSerial()` with `fromNow`.
   * @throws TaktError unavailable on timeout or when qemu exits first; the message has the VM's vitals
   *   (qemu CPU seconds, load average) and the console's last lines.
   */
  async waitForSerial(pattern: RegExp, timeoutMs: number, opts: { fromNow?: boolean; failOn?: RegExp } = {}): Promise<SerialMatch> {
    const deadline = Date.now() + timeoutMs;
    let offset = opts.fromNow ? this.serialMark : 0;
    let partial = '';
    const chunk = Buffer.alloc(64 * 1024);
    for (;;) {
      let fd: number | null = null;
      try {
        fd = openSync(this.serialLog, 'r');
        for (let n = readSync(fd, chunk, 0, chunk.length, offset); n > 0; n = readSync(fd, chunk, 0, chunk.length, offset)) {
          offset += n;
          const lines = (partial + chunk.subarray(0, n).toString('utf8')).split(/\r?\n/);
          partial = lines.pop() ?? '';
          for (const raw of lines) {
            const line = raw.replace(/\r/g, '');
            const m = pattern.exec(line);
            if (m) return { line, groups: m.slice(1).map((g) => g ?? ''), atMs: Date.now() - this.startedAt };
            if (opts.failOn?.test(line)) throw new TaktError('unavailable', `${this.spec.name}: the console showed '${line.trim()}' before ${pattern}; ${this.describe()}`);
          }
        }
        const m = partial && pattern.exec(partial);
        if (m) return { line: partial, groups: m.slice(1).map((g) => g ?? ''), atMs: Date.now() - this.startedAt };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      } finally {
        if (fd !== null) closeSync(fd);
      }
      if (!this.alive) throw new TaktError('unavailable', `${this.spec.name}: qemu exited (${this.exited?.code ?? this.exited?.signal}) before the console showed ${pattern}; ${this.describe()}`);
      if (Date.now() > deadline) throw new TaktError('unavailable', `${this.spec.name}: the console did not show ${pattern} within ${timeoutMs} ms; ${this.describe()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Vitals and the console's last lines, for failure messages. */
  describe(): string {
    const v = this.vitals();
    const tail = this.serial().trim().split('\n').slice(-8).join(' | ');
    return `qemu ${v.alive ? 'running' : 'gone'}, ${v.cpuSeconds ?? '?'} CPU-s in ${v.wallSeconds.toFixed(1)} s wall, load ${v.load.join(' ')}, accel ${this.accel}; console tail: ${tail || '(empty)'}`;
  }

  /** Resolves when qemu has exited, or false after `timeoutMs`. */
  async waitExit(timeoutMs: number): Promise<boolean> {
    if (!this.alive) return true;
    if (this.adopted) {
      // Not our child: no exit event, so watch /proc, bounded.
      const deadline = Date.now() + timeoutMs;
      while (this.alive) {
        if (Date.now() > deadline) return false;
        await new Promise((r) => setTimeout(r, 100));
      }
      return true;
    }
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.exitWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  /**
   * Ends qemu: QMP `quit`, then SIGTERM, then SIGKILL, each with a bounded wait; removes the tap it made.
   * Safe to call twice. Leaves the disk and the logs.
   */
  async kill(): Promise<void> {
    if (this.alive) {
      await withQmp(this.qmpSocket, (q) => q.execute('quit'), { timeoutMs: 3_000 }).catch(() => undefined);
      if (!(await this.waitExit(5_000))) {
        try {
          process.kill(this.pid, 'SIGTERM');
        } catch {
          // already gone
        }
        if (!(await this.waitExit(5_000))) {
          try {
            process.kill(this.pid, 'SIGKILL');
          } catch {
            // already gone
          }
          await this.waitExit(5_000);
        }
      }
    }
    const net = this.spec.nic?.net;
    if (net?.kind === 'tap') await ipCmd([...(net.netns ? ['-n', net.netns] : []), 'link', 'del', net.tap]).catch(() => undefined);
    rmSync(this.qmpSocket, { force: true });
  }
}

/**
 * The pid of the qemu running for the VM in `dir`: `<dir>/qemu.pid` (qemu's -pidfile), when that process
 * is a qemu whose command line names `<dir>/qmp.sock`; null otherwise.
 */
export function qemuPidOf(dir: string): number | null {
  let pid: number;
  try {
    pid = Number(readFileSync(join(dir, 'qemu.pid'), 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 0) return null;
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    const state = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // A zombie (state Z) has exited; its parent has not reaped it yet.
    if (/\) Z /.test(state)) return null;
    return cmdline.includes('qemu-system') && cmdline.includes(join(dir, 'qmp.sock')) ? pid : null;
  } catch {
    return null;
  }
}

async function ipCmd(args: string[]): Promise<void> {
  try {
    await run('ip', args, { timeout: 10_000 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new TaktError('unavailable', `ip ${args.join(' ')}: ${(e.stderr || e.message).trim()}`);
  }
}
