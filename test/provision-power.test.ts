/**
 * Power through QMP against a real qemu (SeaBIOS, virtio-net with iPXE, a disk whose boot sector prints
 * TAKT-DISK-BOOT on the console): the QMP client's protocol handling, then the qmp power driver's status,
 * on, off, cycle and boot order. The network boot script prints TAKT-IPXE-SCRIPT and `exit`s, so SeaBIOS
 * goes on to the disk: every boot ends at TAKT-DISK-BOOT, and whether iPXE ran first (the HTTP server saw
 * /boot.ipxe) tells which device was first.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient, withQmp } from '../src/brokers/qemu/qmp.js';
import { Vm } from '../src/brokers/qemu/vm.js';
import { QmpPower } from '../src/provision/power/qmp.js';
import { bootSectorDisk, fileServer, HOST_FROM_GUEST, logMilestone, removeVmDirs, vmDir, type FileServer } from './helpers/provision.js';

const DISK = /TAKT-DISK-BOOT/;
const NO_BOOT = { failOn: /No bootable device/ };

describe('QMP and the qmp power driver', () => {
  let http: FileServer;
  let vm: Vm;
  let power: QmpPower;
  const scripts = () => http.requests.filter((r) => r === '/boot.ipxe').length;

  beforeAll(async () => {
    http = await fileServer();
    http.route(/^\/boot\.ipxe$/, () => '#!ipxe\necho TAKT-IPXE-SCRIPT\nexit\n');
    const dir = vmDir('power');
    await bootSectorDisk(dir);
    vm = await Vm.start({
      name: 'power',
      dir,
      firmware: 'bios',
      diskGiB: 1,
      startOff: true,
      smbios: { uuid: '0f6a8e2c-3b1d-4c5e-8f70-9a1b2c3d4e5f' },
      nic: { model: 'virtio-net-pci', mac: '52:54:00:7a:6b:03', net: { kind: 'user', bootfile: `http://${HOST_FROM_GUEST}:${http.port}/boot.ipxe` } },
    });
    power = new QmpPower({ socket: vm.qmpSocket });
  }, 120_000);

  afterAll(async () => {
    await vm?.kill();
    await http?.close();
    removeVmDirs();
  });

  it('speaks QMP: greeting, commands by id, errors with their class, events', async () => {
    await withQmp(vm.qmpSocket, async (q) => {
      expect(q.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
      const [a, b] = await Promise.all([q.execute<{ status: string }>('query-status'), q.execute<{ name?: string }>('query-name')]);
      expect(a.status).toBe('prelaunch');
      expect(b.name).toBe('power');
      await expect(q.execute('no-such-command')).rejects.toThrow(/qemu refused no-such-command: .*CommandNotFound/);
      await expect(q.execute('qom-get', { path: '/machine/peripheral/nope', property: 'bootindex' })).rejects.toMatchObject({ code: 'conflict' });
      // A second client waits while the first is connected (qemu serves one at a time): a bounded, clear failure.
      await expect(QmpClient.connect(vm.qmpSocket, { timeoutMs: 1_000 })).rejects.toThrow(/no greeting within 1000 ms.*one at a time/);
      const since = q.history.length;
      await q.execute('system_reset');
      const ev = await q.waitForEvent('RESET', { since, timeoutMs: 10_000 });
      expect(ev.data?.guest).toBe(false);
    });
    await expect(QmpClient.connect(`${vm.spec.dir}/missing.sock`, { timeoutMs: 1_000 })).rejects.toThrow(/no such socket/);
  });

  it('status, on, off, cycle and the next boot device', async () => {
    expect(await power.status()).toBe('off');

    // On: network first (iPXE runs the script, exits), then the disk.
    expect(await power.on()).toMatchObject({ done: true });
    expect(await power.status()).toBe('on');
    const first = await vm.waitForSerial(DISK, 90_000, NO_BOOT);
    logMilestone(vm, 'disk boot after iPXE (power on)', first.atMs);
    expect(scripts()).toBe(1);
    expect(vm.serial()).toMatch(/TAKT-IPXE-SCRIPT[\s\S]*TAKT-DISK-BOOT/);
    expect(await power.on()).toMatchObject({ done: true, note: 'already on' });

    // Off (hard), then on again: a fresh boot.
    expect(await power.off()).toEqual({ done: true });
    expect(await power.status()).toBe('off');
    expect(await power.off()).toMatchObject({ note: 'already off' });
    vm.markSerial();
    await power.on();
    await vm.waitForSerial(DISK, 90_000, { ...NO_BOOT, fromNow: true });
    expect(scripts()).toBe(2);

    // Cycle: a reset boots again.
    vm.markSerial();
    expect(await power.cycle()).toEqual({ done: true });
    await vm.waitForSerial(DISK, 90_000, { ...NO_BOOT, fromNow: true });
    expect(scripts()).toBe(3);

    // Disk first: the disk boots without iPXE asking for its script.
    expect(await power.setNextBoot('disk', { persistent: true })).toMatchObject({ done: true, persistent: true });
    vm.markSerial();
    await power.cycle();
    const disk = await vm.waitForSerial(DISK, 90_000, { ...NO_BOOT, fromNow: true });
    logMilestone(vm, 'disk boot, disk first (cycle)', disk.atMs);
    expect(scripts()).toBe(3);

    // Network first again; qemu cannot do one-shot, and says so.
    const pxe = await power.setNextBoot('pxe', { persistent: false });
    expect(pxe).toMatchObject({ done: true, persistent: true });
    expect(pxe.note).toMatch(/one-shot/);
    vm.markSerial();
    await power.cycle();
    await vm.waitForSerial(DISK, 90_000, { ...NO_BOOT, fromNow: true });
    expect(scripts()).toBe(4);

    // A graceful off that the guest ignores (a boot sector has no ACPI) becomes a hard off, and says so.
    const off = await power.off({ graceful: true, timeoutMs: 1_500 });
    expect(off.note).toMatch(/did not shut down within 1500 ms.*powered off hard/);
    expect(await power.status()).toBe('off');
  }, 600_000);
});
