/**
 * Power of takt's machines through the CLI and API against a real qemu, and the qemu broker (issue #13
 * items 5 and 6): `machines create --broker qemu` makes a VM (its qemu runs, its boot settings and qmp
 * power configuration are recorded), `machines power` switches it through the qmp driver (status, off,
 * on, cycle, next boot), a restarted endpoint adopts the VM, and deleting the machine ends qemu and
 * removes its files. Also the refusals: a machine without a power configuration (409), a controller that
 * does not answer (503 with the driver's words), and the manual driver's instruction to the operator.
 * One VM, on qemu's user-mode network (no boot needed: power is QMP's business, not the guest's).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuPidOf } from '../src/brokers/qemu/vm.js';
import { Endpoint, until } from './helpers/endpoint.js';

interface MachineView {
  id: string;
  name: string;
  environment: string;
  broker: string | null;
  power: 'on' | 'off';
  boot?: { macs: string[]; uuid: string | null; firmware: string | null; bootenv: string };
  powerConfig?: Record<string, unknown>;
}

describe('machines power and the qemu broker (real qemu)', () => {
  let ep: Endpoint;
  let vm: MachineView;
  let vmDir = '';

  const status = async (name: string) => (await ep.call('GET', `/machines/${name}/power`)).body as { state: string; driver: string; desired: string };

  beforeAll(async () => {
    ep = await Endpoint.start();
  }, 120_000);

  afterAll(async () => {
    // A VM left by a failed test is ended by its pid (qemu outlives the endpoint on purpose).
    const pid = vmDir ? qemuPidOf(vmDir) : null;
    if (pid) process.kill(pid, 'SIGKILL');
    await ep?.stop();
  }, 60_000);

  it('machines create --broker qemu makes a VM with boot settings and a qmp power configuration', async () => {
    const r = await ep.cli(['machines', 'create', 'vm-1', '--broker', 'qemu', '--memory', '128', '--disk-size', '1', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    // Without --qemu-bridge the VM cannot be network-booted by takt, and the CLI says so.
    expect(r.stderr).toMatch(/no --qemu-bridge/);
    vm = (JSON.parse(r.stdout) as MachineView[])[0]!;
    expect(vm).toMatchObject({ name: 'vm-1', environment: 'metal', broker: 'qemu', power: 'on' });
    expect(vm.boot!.macs[0]).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
    expect(vm.boot!.firmware).toBe('bios');
    vmDir = join(ep.data, 'qemu', vm.id);
    expect(vm.powerConfig).toEqual({ driver: 'qmp', socket: join(vmDir, 'qmp.sock') });
    expect(existsSync(join(vmDir, 'disk.qcow2'))).toBe(true);
    const pid = qemuPidOf(vmDir);
    expect(pid).not.toBeNull();
    // The VM is the machine: its MAC and SMBIOS UUID are on qemu's command line.
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    expect(cmdline).toContain(`mac=${vm.boot!.macs[0]}`);
    expect(cmdline).toContain(`uuid=${vm.boot!.uuid}`);
  }, 180_000);

  it('power status, off, on, cycle and next boot go through the qmp driver', async () => {
    expect(await status('vm-1')).toEqual({ machine: 'vm-1', desired: 'on', driver: 'qmp', state: 'on' });
    let r = await ep.cli(['machines', 'power', 'vm-1', 'off']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/power: done by qmp/);
    expect(await status('vm-1')).toMatchObject({ desired: 'off', state: 'off' });
    r = await ep.cli(['machines', 'power', 'vm-1', 'status']);
    expect(r.stdout).toMatch(/vm-1: off \(driver qmp; desired off\)/);
    // cycle powers an off machine on, from the boot device set first.
    r = await ep.cli(['machines', 'power', 'vm-1', 'cycle', '--next-boot', 'disk', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const body = JSON.parse(r.stdout) as MachineView & { result: { nextBoot: { done: boolean; persistent: boolean }; power: { done: boolean } } };
    expect(body.power).toBe('on');
    expect(body.result.nextBoot).toMatchObject({ driver: 'qmp', done: true, persistent: true });
    expect(body.result.power).toMatchObject({ driver: 'qmp', done: true });
    expect(await status('vm-1')).toMatchObject({ desired: 'on', state: 'on' });
    r = await ep.cli(['machines', 'power', 'vm-1', '--next-boot', 'pxe']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/next boot: done by qmp/);
    r = await ep.cli(['machines', 'power', 'vm-1', 'off']);
    expect(r.code, r.stderr).toBe(0);
    r = await ep.cli(['machines', 'power', 'vm-1', 'on']);
    expect(r.code, r.stderr).toBe(0);
    expect(await status('vm-1')).toMatchObject({ desired: 'on', state: 'on' });
  }, 180_000);

  it('a restarted endpoint adopts the running VM and still powers it', async () => {
    const pid = qemuPidOf(vmDir);
    // kill -9, as a crash: a graceful stop would leave the VM running too, but the test helper's stop
    // removes the data dir.
    await ep.crash();
    await ep.boot();
    expect(qemuPidOf(vmDir)).toBe(pid);
    expect(ep.output).toMatch(/vm-1's VM still runs .*adopted/);
    expect(await status('vm-1')).toMatchObject({ state: 'on' });
  }, 180_000);

  it('exported and imported onto another endpoint, the VM machine gets a VM there and its power controls there', async () => {
    const out = mkdtempSync(join(tmpdir(), 'takt-vm-export-'));
    const other = await Endpoint.start();
    try {
      const e = await ep.cli(['export', out]);
      expect(e.code, e.stderr).toBe(0);
      // The export names this endpoint's QMP socket; the import must not point at it.
      expect(readFileSync(join(out, 'machines', 'vm-1.yaml'), 'utf8')).toContain(join(ep.data, 'qemu'));
      const i = await other.cli(['import', out]);
      expect(i.code, i.stderr).toBe(0);
      const moved = (await other.call('GET', '/machines/vm-1')).body as MachineView;
      expect(moved.powerConfig).toEqual({ driver: 'qmp', socket: join(other.data, 'qemu', moved.id, 'qmp.sock') });
      const st = (await other.call('GET', '/machines/vm-1/power')).body as { state: string; driver: string };
      expect(st).toMatchObject({ driver: 'qmp', state: 'on' });
      const otherDir = join(other.data, 'qemu', moved.id);
      const otherPid = qemuPidOf(otherDir);
      expect(otherPid).not.toBeNull();
      expect(otherPid).not.toBe(qemuPidOf(vmDir));
      expect((await other.cli(['machines', 'delete', 'vm-1'])).code).toBe(0);
      await until(async () => !existsSync(`/proc/${otherPid}`) || /\) Z /.test(readFileSync(`/proc/${otherPid}/stat`, 'utf8')), 30_000, 'the imported VM to exit');
    } finally {
      await other.stop();
      rmSync(out, { recursive: true, force: true });
    }
  }, 240_000);

  it('refuses what cannot be done, with the reason', async () => {
    // No power configuration: on/off stay the broker's (unchanged); cycle and next boot are refused.
    const local = await ep.call('POST', '/machines', { name: 'plain-1' });
    expect(local.status).toBe(201);
    let a = await ep.call('POST', '/machines/plain-1/power', { power: 'cycle' });
    expect(a.status).toBe(409);
    expect(a.body.error.message).toMatch(/no power configuration.*--power-driver/);
    a = await ep.call('POST', '/machines/plain-1/power', { power: 'off' });
    expect(a.status).toBe(200);
    expect(a.body.power).toBe('off');
    // A controller that does not answer: 503 with the driver's words; nothing recorded.
    a = await ep.call('PATCH', '/machines/plain-1', { powerConfig: { driver: 'qmp', socket: join(ep.data, 'gone.sock') } });
    expect(a.status).toBe(200);
    a = await ep.call('POST', '/machines/plain-1/power', { power: 'on' });
    expect(a.status).toBe(503);
    expect(a.body.error.message).toMatch(/gone\.sock/);
    expect((await ep.call('GET', '/machines/plain-1')).body.power).toBe('off');
    // A bad configuration is refused with its field path.
    a = await ep.call('PATCH', '/machines/plain-1', { powerConfig: { driver: 'qmp', socket: 'relative.sock' } });
    expect(a.status).toBe(422);
    expect(a.body.error.path).toBe('/powerConfig/socket');
    // The manual driver: the operator is told what to do.
    const r = await ep.cli(['machines', 'update', 'plain-1', '--power-driver', 'manual']);
    expect(r.code, r.stderr).toBe(0);
    const on = await ep.cli(['machines', 'power', 'plain-1', 'on']);
    expect(on.code, on.stderr).toBe(0);
    expect(on.stdout).toMatch(/do this yourself \(driver manual\): Power on plain-1: press its power button/);
    expect((await ep.call('GET', '/machines/plain-1/power')).body).toMatchObject({ driver: 'manual', state: 'unknown', desired: 'on' });
    // A machine token acts on its own machine only.
    const own = await ep.call('POST', '/machines', { name: 'plain-2' });
    a = await ep.call('GET', '/machines/plain-1/power', undefined, own.body.items[0].token);
    expect(a.status).toBe(403);
  }, 120_000);

  it('deleting the VM machine ends qemu and removes its files', async () => {
    const pid = qemuPidOf(vmDir);
    expect(pid).not.toBeNull();
    const r = await ep.cli(['machines', 'delete', 'vm-1']);
    expect(r.code, r.stderr).toBe(0);
    expect(existsSync(vmDir)).toBe(false);
    await until(async () => !existsSync(`/proc/${pid}`) || /\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8')), 30_000, 'qemu to exit');
  }, 120_000);
});
