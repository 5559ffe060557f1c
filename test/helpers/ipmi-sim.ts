/**
 * OpenIPMI's `ipmi_sim` (Debian package `openipmi`) as a real BMC for tests: a LAN channel (RMCP+) on
 * 127.0.0.1 at a random UDP port, one admin user, and a `chassis_control` program that ipmi_sim runs for
 * every power and boot request:
 *
 *   <program> <device> get power boot        → prints `power:0|1` and `boot:none|pxe|default|…`
 *   <program> <device> set power 0|1 | reset 1 | shutdown 1 | boot pxe|default|…
 *
 * (`ipmitool chassis bootdev disk` arrives as `boot default`.) Two programs are used: a shell script that
 * keeps the state in files (test/power-ipmi.test.ts), and a Node one that drives a real qemu VM through
 * QMP (test/fixtures/ipmi-chassis-qmp.mjs, test/provision-ipmi.test.ts).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const IPMI_USER = 'admin';
export const IPMI_PASSWORD = 'sim-pa55';

/** Whether ipmi_sim and ipmitool are installed (apt-get install openipmi ipmitool). */
export function ipmiSimAvailable(): boolean {
  const has = (bin: string) => spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;
  return has('ipmi_sim') && has('ipmitool');
}

export interface IpmiSim {
  port: number;
  dir: string;
  /** Everything ipmi_sim printed (for failure messages). */
  output(): string;
  stop(): Promise<void>;
}

/** A UDP port on 127.0.0.1 that was free a moment ago. */
export async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
  const { port } = s.address();
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/**
 * The state-file chassis program: power and boot device in files under `dir`, every call appended to
 * `dir/calls`. `soft` decides what an ACPI soft-off does: `off` (the OS shuts down), `ignore`, or `refuse` (an error).
 */
export function fileChassis(dir: string, soft: 'off' | 'ignore' | 'refuse' = 'off'): string {
  const path = join(dir, 'chassis.sh');
  writeFileSync(
    path,
    `#!/bin/sh
# ipmi_sim chassis_control: $1 device, $2 get|set, then names (get) or name value pairs (set).
d='${dir}'
shift
op=$1; shift
echo "$op $*" >> "$d/calls"
[ -f "$d/power" ] || echo 0 > "$d/power"
[ -f "$d/boot" ] || echo none > "$d/boot"
case $op in
get)
  for p in "$@"; do
    case $p in
      power) echo "power:$(cat "$d/power")" ;;
      boot) echo "boot:$(cat "$d/boot")" ;;
      *) echo "Invalid parameter: $p"; exit 1 ;;
    esac
  done ;;
set)
  while [ $# -ge 2 ]; do
    case $1 in
      power) echo "$2" > "$d/power" ;;
      reset) echo reset >> "$d/resets" ;;
      shutdown) ${{ off: 'echo 0 > "$d/power"', ignore: ':', refuse: 'echo "No ACPI here"; exit 1' }[soft]} ;;
      boot) echo "$2" > "$d/boot" ;;
      *) echo "Invalid parameter: $1"; exit 1 ;;
    esac
    shift 2
  done ;;
*) echo "Unknown operation: $op"; exit 1 ;;
esac
`,
  );
  chmodSync(path, 0o755);
  return path;
}

/** Reads a state file of the file chassis ('' when absent). */
export function chassisFile(dir: string, name: 'power' | 'boot' | 'calls' | 'resets'): string {
  try {
    return readFileSync(join(dir, name), 'utf8');
  } catch {
    return '';
  }
}

/**
 * Starts ipmi_sim with a LAN channel on 127.0.0.1:<random port> and `chassis` as its chassis_control
 * program (a command line: the program and its arguments before the device), and waits (bounded) until
 * ipmitool gets an answer from it.
 */
export async function startIpmiSim(opts: { dir?: string; chassis: (dir: string) => string }): Promise<IpmiSim> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'takt-ipmisim-'));
  const chassis = opts.chassis(dir);
  const port = await freeUdpPort();
  writeFileSync(
    join(dir, 'lan.conf'),
    `name "takt"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 ${port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "${chassis} 0x20"
  user 2 true "${IPMI_USER}" "${IPMI_PASSWORD}" admin 10 none md2 md5 straight
`,
  );
  writeFileSync(join(dir, 'sim.emu'), 'mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n');
  const child: ChildProcess = spawn('ipmi_sim', ['-c', join(dir, 'lan.conf'), '-f', join(dir, 'sim.emu'), '-s', join(dir, 'state'), '-n', '-p'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const sim: IpmiSim = {
    port,
    dir,
    output: () => out,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
      if (!opts.dir) rmSync(dir, { recursive: true, force: true });
    },
  };
  // Ready when an RMCP+ session works: ipmitool retries on its own (1 s apart), so few rounds are needed.
  for (let i = 0; i < 20; i++) {
    if (child.exitCode !== null) break;
    const r = spawnSync('ipmitool', ['-I', 'lanplus', '-C', '3', '-H', '127.0.0.1', '-p', String(port), '-U', IPMI_USER, '-E', '-N', '1', '-R', '2', 'power', 'status'], {
      env: { PATH: process.env.PATH, IPMI_PASSWORD },
      encoding: 'utf8',
      timeout: 30_000,
    });
    if (r.status === 0) return sim;
  }
  await sim.stop();
  throw new Error(`ipmi_sim did not answer on 127.0.0.1:${port}: ${out.slice(-2000)}`);
}
