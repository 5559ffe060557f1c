/**
 * Power configurations, pure: the shape every driver shares (model/power.ts), the drivers' own checks
 * (provision/power checkPowerConfig), the CLI's --power-driver/--power-opt parsing, and the qemu broker's
 * plan (MAC, UUID, qmp socket) and tap names. Bad inputs answer with the field path.
 */
import { describe, expect, it } from 'vitest';
import { QemuBroker, tapName } from '../src/brokers/qemu/broker.js';
import { camelKey, parsePowerOpts, powerConfigBody } from '../src/cli/power.js';
import { checkPowerShape } from '../src/model/power.js';
import { checkPowerConfig } from '../src/provision/power/index.js';

describe('checkPowerConfig', () => {
  const good: Array<[string, unknown, unknown]> = [
    ['qmp', { driver: 'qmp', socket: '/var/lib/takt/qemu/m-1/qmp.sock' }, { driver: 'qmp', socket: '/var/lib/takt/qemu/m-1/qmp.sock' }],
    ['qmp with disk', { driver: 'qmp', socket: '/q.sock', disk: 'disk1' }, { driver: 'qmp', socket: '/q.sock', disk: 'disk1' }],
    ['manual', { driver: 'manual' }, { driver: 'manual' }],
  ];
  it.each(good)('accepts %s', (_what, input, want) => {
    expect(checkPowerConfig(input)).toEqual(want);
  });

  const bad: Array<[string, unknown, string, RegExp]> = [
    ['not an object', 'qmp', '/powerConfig', /must be an object/],
    ['an array', [], '/powerConfig', /must be an object/],
    ['null', null, '/powerConfig', /must be an object/],
    ['no driver', { socket: '/q.sock' }, '/powerConfig/driver', /give the power driver/],
    ['driver not a name', { driver: 'Q M P' }, '/powerConfig/driver', /give the power driver/],
    ['unknown driver', { driver: 'wol' }, '/powerConfig/driver', /unknown power driver 'wol': known are qmp, manual/],
    ['a password in the clear', { driver: 'qmp', socket: '/q.sock', password: 'hunter2' }, '/powerConfig/password', /secure param.*password-param/],
    ['a secret in the clear', { driver: 'manual', Secret: 'x' }, '/powerConfig/Secret', /never stored/],
    ['a nested value', { driver: 'qmp', socket: { path: '/q' } }, '/powerConfig/socket', /string, number or boolean/],
    ['a huge value', { driver: 'qmp', socket: '/' + 'a'.repeat(2000) }, '/powerConfig/socket', /at most 1024/],
    ['qmp without socket', { driver: 'qmp' }, '/powerConfig/socket', /QMP unix socket, an absolute path/],
    ['qmp relative socket', { driver: 'qmp', socket: 'q.sock' }, '/powerConfig/socket', /absolute path/],
    ['qmp bad disk id', { driver: 'qmp', socket: '/q.sock', disk: '0 disk' }, '/powerConfig/disk', /QOM id/],
    ['qmp unknown setting', { driver: 'qmp', socket: '/q.sock', host: 'x' }, '/powerConfig/host', /has no setting 'host' \(it has: socket, disk\)/],
    ['manual with a setting', { driver: 'manual', host: 'x' }, '/powerConfig/host', /it has none/],
  ];
  it.each(bad)('refuses %s', (_what, input, path, message) => {
    let err: unknown;
    try {
      checkPowerConfig(input);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'invalid', path });
    expect((err as Error).message).toMatch(message);
  });

  it('the shape check alone lets any driver name through (the engine default without drivers)', () => {
    expect(checkPowerShape({ driver: 'ipmi', host: '10.0.0.9', port: 623, insecure: false })).toEqual({ driver: 'ipmi', host: '10.0.0.9', port: 623, insecure: false });
  });
});

describe('--power-driver and --power-opt', () => {
  it.each([
    ['password-param', 'passwordParam'],
    ['ca-fingerprint', 'caFingerprint'],
    ['host', 'host'],
    ['cipher-suite', 'cipherSuite'],
  ])('%s is sent as %s', (flag, key) => expect(camelKey(flag)).toBe(key));

  it('keeps values as typed, = included', () => {
    expect(parsePowerOpts(['url=https://bmc/redfish/v1?a=b', 'port=623'])).toEqual({ url: 'https://bmc/redfish/v1?a=b', port: '623' });
  });

  it.each([
    [['host'], /KEY=VALUE/],
    [['=x'], /KEY=VALUE/],
    [['host=a', 'host=b'], /given twice/],
  ])('refuses %j', (pairs, message) => expect(() => parsePowerOpts(pairs)).toThrow(message));

  const bodies: Array<[string, Parameters<typeof powerConfigBody>[0], Record<string, unknown> | null | undefined, unknown]> = [
    ['no flags', {}, undefined, undefined],
    ['a driver and its options', { powerDriver: 'ipmi', powerOpt: ['host=10.0.0.9', 'password-param=bmc'] }, undefined, { driver: 'ipmi', host: '10.0.0.9', passwordParam: 'bmc' }],
    ['a new driver replaces the old settings', { powerDriver: 'manual' }, { driver: 'qmp', socket: '/q' }, { driver: 'manual' }],
    ['options alone change the current config', { powerOpt: ['disk=disk1'] }, { driver: 'qmp', socket: '/q' }, { driver: 'qmp', socket: '/q', disk: 'disk1' }],
    ['none removes it', { powerDriver: 'none' }, { driver: 'qmp', socket: '/q' }, null],
  ];
  it.each(bodies)('%s', (_what, flags, current, want) => expect(powerConfigBody(flags, current)).toEqual(want));

  it('refuses options without a driver to apply them to, and options with none', () => {
    expect(() => powerConfigBody({ powerOpt: ['host=x'] }, null)).toThrow(/needs --power-driver/);
    expect(() => powerConfigBody({ powerDriver: 'none', powerOpt: ['host=x'] }, null)).toThrow(/give no --power-opt/);
  });
});

describe('qemu broker plan', () => {
  const broker = new QemuBroker({ dataDir: '/var/lib/takt', log: () => undefined });

  it('plans a MAC, an SMBIOS UUID, the firmware and a qmp power configuration in the VM dir', () => {
    const p = broker.plan('vm-1', { firmware: 'uefi', bootenv: 'sledge' });
    expect(p.id).toMatch(/^m-[0-9a-f]{10}$/);
    expect(p.boot.macs![0]).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
    expect(p.boot.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(p.boot).toMatchObject({ firmware: 'uefi', bootenv: 'sledge' });
    expect(p.powerConfig).toEqual({ driver: 'qmp', socket: `/var/lib/takt/qemu/${p.id}/qmp.sock` });
    expect(checkPowerConfig(p.powerConfig)).toEqual(p.powerConfig);
  });

  it('defaults to bios and refuses another firmware with its path', () => {
    expect(broker.plan('vm-2', {}).boot.firmware).toBe('bios');
    expect(() => broker.plan('vm-3', { firmware: 'coreboot' as never })).toThrow(expect.objectContaining({ path: '/vm/firmware' }));
  });

  it('gives every VM its own MAC and id', () => {
    const plans = Array.from({ length: 20 }, () => broker.plan('vm', {}));
    expect(new Set(plans.map((p) => p.id)).size).toBe(20);
    expect(new Set(plans.map((p) => p.boot.macs![0])).size).toBe(20);
  });

  it.each([
    ['m-0123456789', 'tq-0123456789'],
    ['m-abcdefabcdef99', 'tq-abcdefabcdef'],
  ])('tap of %s is %s (at most 15 characters)', (id, tap) => {
    expect(tapName(id)).toBe(tap);
    expect(tapName(id).length).toBeLessThanOrEqual(15);
  });
});
