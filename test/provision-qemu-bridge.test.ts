/**
 * The qemu broker on a provisioning network: `takt serve --provision … --dhcp full --qemu-bridge br0` runs
 * inside a network namespace `tkb-…` (bridge br0 at 10.218.N.1/24); `machines create vm-1 --broker qemu`
 * plugs the VM's tap into br0, and the VM's iPXE ROM gets its address from takt's DHCP and its script
 * from takt's boot service — found by the MAC and SMBIOS UUID the broker chose and recorded. Then
 * `machines power vm-1 off` through the qmp driver, and delete removes the tap, qemu and the VM's files.
 * No OS is booted: the `local` bootenv's script exits to the (empty) disk.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tapName } from '../src/brokers/qemu/broker.js';
import { qemuPidOf } from '../src/brokers/qemu/vm.js';
import { BootLab, until } from './helpers/boot-lab.js';

describe('qemu broker VM on takt serve --qemu-bridge (netns, DHCP full)', () => {
  // Short names: the VM's QMP socket path lives under the data dir (108-byte limit).
  const lab = new BootLab({ netnsPrefix: 'tkb-', subnet: '10.218', dirPrefix: 'tkb-', dataName: 'd', cliTimeoutMs: 120_000 });
  const { netns, prefix } = lab;
  const cli = (args: string[]) => lab.cli(args);
  const links = () => execFileSync('ip', ['-n', netns, '-o', 'link', 'show', 'master', 'br0'], { encoding: 'utf8', timeout: 10_000 });

  beforeAll(async () => {
    lab.open();
    // TCG, as on the project's CI machine kind (no /dev/kvm): on a host whose /dev/kvm is nested, iPXE was
    // seen to stop at "starting execution" under KVM (qemu warning: CPUID.01H:ECX.pni not supported).
    await lab.serve(['--listen', '127.0.0.1:0', '--lease', '5s', '--provision', `${prefix}.1/24`, '--dhcp', 'full', '--dhcp-range', `${prefix}.100-${prefix}.150`, '--boot-port', '0', '--qemu-bridge', 'br0'], { env: { TAKT_QEMU_ACCEL: 'tcg' }, startMs: 120_000 });
  }, 300_000);

  afterAll(async () => {
    // qemu outlives its endpoint on purpose: a VM a failed test left is ended by its pid — after the
    // endpoint is stopped, whose supervisor would start it again.
    await lab.stopServe();
    const vms = join(lab.data, 'qemu');
    if (lab.data && existsSync(vms)) {
      for (const id of execFileSync('ls', [vms], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
        const pid = qemuPidOf(join(vms, id));
        if (pid) process.kill(pid, 'SIGKILL');
      }
    }
    await lab.stop();
  }, 60_000);

  it('the VM joins br0, gets its address from takt and its script by the MAC the broker chose; power off; delete cleans up', async () => {
    const made = await cli(['machines', 'create', 'vm-1', '--broker', 'qemu', '--memory', '128', '--disk-size', '1', '-o', 'json']);
    expect(made.code, made.stderr + lab.output).toBe(0);
    expect(made.stderr).not.toMatch(/no --qemu-bridge/);
    const vm = (JSON.parse(made.stdout) as Array<{ id: string; boot: { macs: string[] } }>)[0]!;
    const tap = tapName(vm.id);
    expect(links()).toContain(tap);
    // takt's DHCP offers the VM an address, naming the machine by its MAC; iPXE then asks for its script.
    await until(() => (/dhcp: offer vm-1/.test(lab.output) ? true : undefined), 240_000, "takt's DHCP offer to vm-1", () => lab.output);
    await until(() => (/boot: vm-1 gets bootenv local/.test(lab.output) ? true : undefined), 240_000, 'vm-1 to fetch its iPXE script', () => lab.output);

    const off = await cli(['machines', 'power', 'vm-1', 'off']);
    expect(off.code, off.stderr).toBe(0);
    const st = await cli(['machines', 'power', 'vm-1', 'status', '-o', 'json']);
    expect(JSON.parse(st.stdout)).toMatchObject({ state: 'off', driver: 'qmp' });

    const vmDir = join(lab.data, 'qemu', vm.id);
    const pid = qemuPidOf(vmDir);
    const del = await cli(['machines', 'delete', 'vm-1']);
    expect(del.code, del.stderr).toBe(0);
    expect(existsSync(vmDir)).toBe(false);
    expect(links()).not.toContain(tap);
    expect(pid === null || !existsSync(`/proc/${pid}`) || /\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))).toBe(true);
  }, 600_000);
});
