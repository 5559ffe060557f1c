/**
 * Pure pieces of the VM and power layer, no qemu: the newc cpio writer, the qemu command line, the
 * QMP run-state mapping, the manual power driver and the driver factory.
 */
import { describe, expect, it } from 'vitest';
import { defaultAccel, kvmUsable, qemuArgs, type VmSpec } from '../src/brokers/qemu/vm.js';
import { writeNewc } from '../src/provision/cpio.js';
import { powerDriver } from '../src/provision/power/index.js';
import { ManualPower } from '../src/provision/power/manual.js';
import { powerStateOf } from '../src/provision/power/qmp.js';

/** Reads a newc archive back: name, mode, size, rdev and data of each member (the format's own rules). */
function readNewc(buf: Buffer) {
  const out: Array<{ name: string; mode: number; data: Buffer; major: number; minor: number }> = [];
  let off = 0;
  for (let i = 0; i < 1000; i++) {
    expect(buf.toString('ascii', off, off + 6)).toBe('070701');
    const field = (n: number) => parseInt(buf.toString('ascii', off + 6 + n * 8, off + 14 + n * 8), 16);
    const [mode, size, major, minor, namesize] = [field(1), field(6), field(9), field(10), field(11)];
    const name = buf.toString('utf8', off + 110, off + 110 + namesize - 1);
    let p = off + 110 + namesize;
    p += (4 - (p % 4)) % 4;
    const data = buf.subarray(p, p + size);
    p += size;
    p += (4 - (p % 4)) % 4;
    off = p;
    if (name === 'TRAILER!!!') return { members: out, end: off };
    out.push({ name, mode, data, major, minor });
  }
  throw new Error('no trailer');
}

describe('newc cpio writer', () => {
  it('writes dirs, files, symlinks and device nodes the way the kernel reads them', () => {
    const buf = writeNewc([
      { type: 'dir', path: '/dev' },
      { type: 'char', path: 'dev/console', major: 5, minor: 1 },
      { type: 'file', path: 'init', data: Buffer.from('#!/bin/sh\n'), mode: 0o755 },
      { type: 'symlink', path: 'bin/sh', target: 'busybox' },
    ]);
    const { members, end } = readNewc(buf);
    expect(end).toBe(buf.length);
    expect(members.map((m) => [m.name, m.mode.toString(8)])).toEqual([
      ['dev', '40755'],
      ['dev/console', '20600'],
      ['init', '100755'],
      ['bin/sh', '120777'],
    ]);
    expect(members[1]).toMatchObject({ major: 5, minor: 1 });
    expect(members[2]!.data.toString()).toBe('#!/bin/sh\n');
    expect(members[3]!.data.toString()).toBe('busybox');
    expect(buf.length % 4).toBe(0);
  });

  it.each(['', '/', 'a/../b'])('refuses the path %j', (path) => {
    expect(() => writeNewc([{ type: 'dir', path }])).toThrow(RangeError);
  });
});

describe('qemu command line', () => {
  const base: VmSpec = { name: 'vm-1', dir: '/tmp/vm-1', firmware: 'bios' };

  it('puts identity, NIC, disk and boot order where qemu wants them', () => {
    const args = qemuArgs({
      ...base,
      firmware: 'uefi',
      diskGiB: 2,
      smbios: { uuid: '0f6a8e2c-3b1d-4c5e-8f70-9a1b2c3d4e5f', serial: 'S-1' },
      nic: { model: 'e1000', mac: '52:54:00:00:00:01', net: { kind: 'user', bootfile: 'http://10.0.2.2:1/a,b' } },
      startOff: true,
    }, 'tcg').join(' ');
    expect(args).toContain('-accel tcg');
    expect(args).toContain('-smbios type=1,uuid=0f6a8e2c-3b1d-4c5e-8f70-9a1b2c3d4e5f,serial=S-1');
    expect(args).toContain('-device virtio-blk-pci,drive=drive0,id=disk0,bootindex=2');
    expect(args).toContain('-device e1000,netdev=n0,id=net0,mac=52:54:00:00:00:01,bootindex=1');
    expect(args).toContain('bootfile=http://10.0.2.2:1/a,,b');
    expect(args).toContain('if=pflash,format=raw,unit=1,file=/tmp/vm-1/OVMF_VARS.fd');
    expect(args).toContain('-no-shutdown');
    expect(args.endsWith('-S')).toBe(true);
  });

  it('puts the disk first when asked, and boots a kernel directly without a NIC bootindex', () => {
    expect(qemuArgs({ ...base, diskGiB: 1, boot: 'disk' }, 'kvm').join(' ')).toContain('id=disk0,bootindex=0');
    const direct = qemuArgs({ ...base, nic: { model: 'virtio-net-pci', mac: '52:54:00:00:00:02', net: { kind: 'tap', netns: 'tkvm-x', bridge: 'br0', tap: 'tap0' } }, kernel: { path: '/k', initrd: '/i', append: 'console=ttyS0' } }, 'tcg').join(' ');
    expect(direct).toContain('-netdev tap,id=n0,ifname=tap0,script=no,downscript=no');
    expect(direct).toContain('mac=52:54:00:00:00:02 ');
    expect(direct).toContain('-kernel /k -initrd /i -append console=ttyS0');
  });

  it.each([
    [{ name: 'bad name' }, 'name'],
    [{ smbios: { uuid: 'not-a-uuid' } }, 'smbios.uuid'],
    [{ smbios: { uuid: '0f6a8e2c-3b1d-4c5e-8f70-9a1b2c3d4e5f', serial: 'a,b' } }, 'smbios.serial'],
    [{ nic: { model: 'e1000', mac: '52-54-00-00-00-01', net: { kind: 'user' } } }, 'nic.mac'],
  ] as Array<[Partial<VmSpec>, string]>)('refuses %j at %s', (bad, path) => {
    expect(() => qemuArgs({ ...base, ...bad }, 'tcg')).toThrow(expect.objectContaining({ code: 'bad_request', path }));
  });
});

describe('power', () => {
  it.each([
    [{ running: true, status: 'running' }, 'on'],
    [{ running: false, status: 'prelaunch' }, 'off'],
    [{ running: false, status: 'paused' }, 'off'],
    [{ running: false, status: 'shutdown' }, 'off'],
    [{ running: false, status: 'guest-panicked' }, 'on'],
  ])('qemu run state %j is %s', (s, want) => {
    expect(powerStateOf(s)).toBe(want);
  });

  it('the manual driver does nothing and tells the operator what to do', async () => {
    const m = new ManualPower('rack3-node7');
    expect(await m.status()).toBe('unknown');
    for (const o of [await m.on(), await m.off(), await m.off({ graceful: true }), await m.cycle()]) {
      expect(o.done).toBe(false);
      expect(o.instruction).toMatch(/rack3-node7/);
    }
    expect(await m.setNextBoot('pxe')).toMatchObject({ done: false, persistent: false, instruction: expect.stringMatching(/one-time boot menu/) });
    expect(await m.setNextBoot('disk', { persistent: true })).toMatchObject({ persistent: true, instruction: expect.stringMatching(/local disk first/) });
  });

  it('makes drivers by name and refuses unknown ones with the field', () => {
    expect(powerDriver('m', { driver: 'manual' }).kind).toBe('manual');
    expect(powerDriver('m', { driver: 'qmp', socket: '/x.sock' }).kind).toBe('qmp');
    expect(() => powerDriver('m', { driver: 'qmp', socket: '' })).toThrow(expect.objectContaining({ path: '/powerConfig/socket' }));
    expect(() => powerDriver('m', { driver: 'nope' } as never)).toThrow(expect.objectContaining({ code: 'invalid', path: '/powerConfig/driver' }));
  });
});

describe('the accelerator', () => {
  it.each([
    [{ TAKT_QEMU_ACCEL: 'tcg' }, 'tcg'],
    [{ TAKT_QEMU_ACCEL: 'KVM' }, 'kvm'],
    [{ TAKT_QEMU_ACCEL: 'auto' }, kvmUsable() ? 'kvm' : 'tcg'],
    [{}, kvmUsable() ? 'kvm' : 'tcg'],
  ])('%j gives %s', (env, want) => {
    expect(defaultAccel(env)).toBe(want);
  });
  it('refuses anything else, saying what it takes', () => {
    expect(() => defaultAccel({ TAKT_QEMU_ACCEL: 'hvf' })).toThrow('TAKT_QEMU_ACCEL=hvf: say kvm, tcg or auto');
  });
});
