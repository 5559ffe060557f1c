/**
 * The qemu broker on a provisioning network: `takt serve --provision … --dhcp full --qemu-bridge br0` runs
 * inside a network namespace `tkb-…` (bridge br0 at 10.218.N.1/24); `machines create vm-1 --broker qemu`
 * plugs the VM's tap into br0, and the VM's iPXE ROM gets its address from takt's DHCP and its script
 * from takt's boot service — found by the MAC and SMBIOS UUID the broker chose and recorded. Then
 * `machines power vm-1 off` through the qmp driver, and delete removes the tap, qemu and the VM's files.
 * No OS is booted: the `local` bootenv's script exits to the (empty) disk.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tapName } from '../src/brokers/qemu/broker.js';
import { qemuPidOf } from '../src/brokers/qemu/vm.js';
import { TAKT, type CliResult } from './helpers/endpoint.js';

/** Polls `f` until it returns a value, at most `ms` (an observable condition, not a sleep). */
async function until<T>(f: () => T | undefined, ms: number, what: string, detail: () => string = () => ''): Promise<T> {
  const deadline = Date.now() + ms;
  for (let i = 0; ; i++) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}\n${detail()}`);
    await new Promise((r) => setTimeout(r, Math.min(20 * 2 ** i, 500)));
  }
}

describe('qemu broker VM on takt serve --qemu-bridge (netns, DHCP full)', () => {
  const tag = randomBytes(3).toString('hex');
  const netns = `tkb-${tag}`;
  const prefix = `10.218.${1 + (parseInt(tag, 16) % 250)}`;
  let dir = '';
  let data = '';
  let serve: ChildProcess | null = null;
  let output = '';
  let endpoint = '';
  let token = '';

  const ip = (...a: string[]) => execFileSync('ip', a, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
  const cli = (args: string[]): Promise<CliResult> =>
    new Promise((resolve) => {
      execFile('ip', ['netns', 'exec', netns, process.execPath, TAKT, ...args], { env: { ...process.env, NO_COLOR: '1', TAKT_ENDPOINT: endpoint, TAKT_TOKEN: token }, timeout: 120_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
      );
    });
  const links = () => execFileSync('ip', ['-n', netns, '-o', 'link', 'show', 'master', 'br0'], { encoding: 'utf8', timeout: 10_000 });

  beforeAll(async () => {
    // Short: the VM's QMP socket path lives under the data dir (108-byte limit).
    dir = mkdtempSync(join(tmpdir(), 'tkb-'));
    data = join(dir, 'd');
    ip('netns', 'add', netns);
    ip('-n', netns, 'link', 'set', 'lo', 'up');
    ip('-n', netns, 'link', 'add', 'br0', 'type', 'bridge');
    ip('-n', netns, 'addr', 'add', `${prefix}.1/24`, 'dev', 'br0');
    ip('-n', netns, 'link', 'set', 'br0', 'up');
    const args = ['serve', '--listen', '127.0.0.1:0', '--data', data, '--lease', '5s', '--provision', `${prefix}.1/24`, '--dhcp', 'full', '--dhcp-range', `${prefix}.100-${prefix}.150`, '--boot-port', '0', '--qemu-bridge', 'br0'];
    // TCG, as on the project's CI machine kind (no /dev/kvm): on a host whose /dev/kvm is nested, iPXE was
    // seen to stop at "starting execution" under KVM (qemu warning: CPUID.01H:ECX.pni not supported).
    serve = spawn('ip', ['netns', 'exec', netns, process.execPath, TAKT, ...args], { env: { ...process.env, NO_COLOR: '1', TAKT_QEMU_ACCEL: 'tcg' }, stdio: ['ignore', 'pipe', 'pipe'] });
    serve.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    serve.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    await until(() => (existsSync(join(data, 'boot-url')) ? true : serve!.exitCode !== null ? false : undefined), 120_000, 'takt serve to start its boot services', () => output);
    expect(serve.exitCode, output).toBeNull();
    endpoint = readFileSync(join(data, 'endpoint'), 'utf8').trim();
    token = readFileSync(join(data, 'admin.token'), 'utf8').trim();
  }, 300_000);

  afterAll(async () => {
    // qemu outlives its endpoint on purpose: a VM a failed test left is ended by its pid.
    const vms = join(data, 'qemu');
    if (existsSync(vms)) {
      for (const id of execFileSync('ls', [vms], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
        const pid = qemuPidOf(join(vms, id));
        if (pid) process.kill(pid, 'SIGKILL');
      }
    }
    if (serve && serve.exitCode === null && serve.signalCode === null) {
      const gone = new Promise<void>((r) => serve!.once('exit', () => r()));
      serve.kill('SIGTERM');
      await Promise.race([gone, new Promise((r) => setTimeout(r, 15_000))]);
      if (serve.exitCode === null && serve.signalCode === null) serve.kill('SIGKILL');
    }
    try {
      ip('netns', 'del', netns);
    } catch {
      // not made
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('the VM joins br0, gets its address from takt and its script by the MAC the broker chose; power off; delete cleans up', async () => {
    const made = await cli(['machines', 'create', 'vm-1', '--broker', 'qemu', '--memory', '128', '--disk-size', '1', '-o', 'json']);
    expect(made.code, made.stderr + output).toBe(0);
    expect(made.stderr).not.toMatch(/no --qemu-bridge/);
    const vm = (JSON.parse(made.stdout) as Array<{ id: string; boot: { macs: string[] } }>)[0]!;
    const tap = tapName(vm.id);
    expect(links()).toContain(tap);
    // takt's DHCP offers the VM an address, naming the machine by its MAC; iPXE then asks for its script.
    await until(() => (/dhcp: offer vm-1/.test(output) ? true : undefined), 240_000, "takt's DHCP offer to vm-1", () => output);
    await until(() => (/boot: vm-1 gets bootenv local/.test(output) ? true : undefined), 240_000, 'vm-1 to fetch its iPXE script', () => output);

    const off = await cli(['machines', 'power', 'vm-1', 'off']);
    expect(off.code, off.stderr).toBe(0);
    const st = await cli(['machines', 'power', 'vm-1', 'status', '-o', 'json']);
    expect(JSON.parse(st.stdout)).toMatchObject({ state: 'off', driver: 'qmp' });

    const vmDir = join(data, 'qemu', vm.id);
    const pid = qemuPidOf(vmDir);
    const del = await cli(['machines', 'delete', 'vm-1']);
    expect(del.code, del.stderr).toBe(0);
    expect(existsSync(vmDir)).toBe(false);
    expect(links()).not.toContain(tap);
    expect(pid === null || !existsSync(`/proc/${pid}`) || /\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))).toBe(true);
  }, 600_000);
});
