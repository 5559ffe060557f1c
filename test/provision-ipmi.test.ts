/**
 * The `ipmi` power driver end to end against real pieces only: takt → Debian's ipmitool → OpenIPMI's
 * ipmi_sim (RMCP+ on 127.0.0.1, a random UDP port) → its chassis_control program
 * (test/fixtures/ipmi/chassis-qmp.mjs, its own QMP client) → a real qemu VM created powered off (-S).
 * The VM is set up as in provision-power: SeaBIOS, virtio-net with iPXE whose script prints
 * TAKT-IPXE-SCRIPT and exits, and a disk whose boot sector prints TAKT-DISK-BOOT; whether the HTTP server saw
 * /boot.ipxe tells which device booted first.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { Vm } from '../src/brokers/qemu/vm.js';
import { IpmiPower } from '../src/provision/power/ipmi.js';
import { ipmiSimAvailable, IPMI_PASSWORD, IPMI_USER, startIpmiSim, type IpmiSim } from './helpers/ipmi-sim.js';
import { bootSectorDisk, fileServer, HOST_FROM_GUEST, logMilestone, removeVmDirs, vmDir, type FileServer } from './helpers/provision.js';

const DISK = /TAKT-DISK-BOOT/;
const NO_BOOT = { failOn: /No bootable device/ };
const CHASSIS = fileURLToPath(new URL('./fixtures/ipmi/chassis-qmp.mjs', import.meta.url));

describe.skipIf(!ipmiSimAvailable())('ipmi driver → ipmitool → ipmi_sim → QMP → a real VM', () => {
  let http: FileServer;
  let vm: Vm;
  let sim: IpmiSim;
  let power: IpmiPower;
  const scripts = () => http.requests.filter((r) => r === '/boot.ipxe').length;

  beforeAll(async () => {
    http = await fileServer();
    http.route(/^\/boot\.ipxe$/, () => '#!ipxe\necho TAKT-IPXE-SCRIPT\nexit\n');
    const dir = vmDir('ipmi');
    await bootSectorDisk(dir);
    vm = await Vm.start({
      name: 'ipmi',
      dir,
      firmware: 'bios',
      diskGiB: 1,
      startOff: true,
      smbios: { uuid: '3c1d8e2a-5b4f-4e6a-9c70-1a2b3c4d5e6f' },
      nic: { model: 'virtio-net-pci', mac: '52:54:00:7a:6b:13', net: { kind: 'user', bootfile: `http://${HOST_FROM_GUEST}:${http.port}/boot.ipxe` } },
    });
    sim = await startIpmiSim({ chassis: () => `${process.execPath} ${CHASSIS} ${vm.qmpSocket}` });
    power = new IpmiPower({ host: '127.0.0.1', port: sim.port, user: IPMI_USER, password: async () => IPMI_PASSWORD, timeoutMs: 60_000 });
  }, 180_000);

  afterAll(async () => {
    await sim?.stop();
    await vm?.kill();
    await http?.close();
    removeVmDirs();
  });

  it('status, on, off, cycle and the next boot device', async () => {
    expect(await power.status()).toBe('off');

    expect(await power.on()).toEqual({ done: true });
    expect(await power.status()).toBe('on');
    const first = await vm.waitForSerial(DISK, 90_000, NO_BOOT);
    logMilestone(vm, 'disk boot after iPXE (ipmi power on)', first.atMs);
    expect(scripts()).toBe(1);
    expect(await power.on()).toMatchObject({ note: 'already on' });

    expect(await power.off()).toEqual({ done: true });
    expect(await power.status()).toBe('off');
    vm.markSerial();
    await power.on();
    await vm.waitForSerial(DISK, 90_000, { ...NO_BOOT, fromNow: true });
    expect(scripts()).toBe(2);

    vm.markSerial();
    expect(await power.cycle()).toEqual({ done: true });
    await vm.waitForSerial(DISK, 90_000, { ...NO_BOOT, fromNow: true });
    expect(scripts()).toBe(3);

    // Disk first (bootparam 5 reads back "Force Boot from default Hard-Drive"): no iPXE on the next boot.
    expect(await power.setNextBoot('disk', { persistent: true })).toEqual({ done: true, persistent: true });
    vm.markSerial();
    await power.cycle();
    const disk = await vm.waitForSerial(DISK, 90_000, { ...NO_BOOT, fromNow: true });
    logMilestone(vm, 'disk boot, disk first (ipmi bootdev disk + power reset)', disk.atMs);
    expect(scripts()).toBe(3);

    // Network first again.
    expect(await power.setNextBoot('pxe')).toMatchObject({ done: true });
    vm.markSerial();
    await power.cycle();
    await vm.waitForSerial(DISK, 90_000, { ...NO_BOOT, fromNow: true });
    expect(scripts()).toBe(4);

    // Off from a running VM; cycle of an off machine powers it on.
    await power.off();
    expect(await power.status()).toBe('off');
    vm.markSerial();
    expect(await power.cycle()).toMatchObject({ note: 'it was off: powered on' });
    await vm.waitForSerial(DISK, 90_000, { ...NO_BOOT, fromNow: true });
    expect(scripts()).toBe(5);
  }, 600_000);
});
