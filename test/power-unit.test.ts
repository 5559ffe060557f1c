/**
 * Pure pieces of the ipmi and redfish power drivers, table-driven: ipmitool output parsers (outputs as
 * ipmitool 1.8.19 printed them against ipmi_sim, and its other selector words from lib/ipmi_chassis.c),
 * ipmitool error mapping, Redfish PowerState / error body / AllowableValues / fingerprint handling, and
 * checkPowerConfig (bad input → TaktError invalid with the field path).
 */
import { describe, expect, it } from 'vitest';
import { ipmiError, parseBootFlags, parsePowerStatus } from '../src/provision/power/ipmi.js';
import { checkPowerConfig, powerDriver } from '../src/provision/power/index.js';
import { normalizeFingerprint, onlyPath, pickAllowed, RedfishPower, redfishErrorWords, redfishPowerState } from '../src/provision/power/redfish.js';

/** `ipmitool chassis bootparam get 5` against ipmi_sim after `chassis bootdev pxe` (verbatim). */
const BOOTPARAM_PXE = `Boot parameter version: 1
Boot parameter 5 is valid/unlocked
Boot parameter data: 0004000000
 Boot Flags :
   - Boot Flag Invalid
   - Options apply to only next boot
   - BIOS PC Compatible (legacy) boot 
   - Boot Device Selector : Force PXE
   - BIOS verbosity : System Default
   - Console Redirection control : Console redirection occurs per BIOS configuration setting (default)
   - BIOS Mux Control Override : BIOS uses recommended setting of the mux at the end of POST
`;
const BOOTPARAM_DISK_PERSISTENT_EFI = BOOTPARAM_PXE.replace('0004000000', 'e008000000')
  .replace('Boot Flag Invalid', 'Boot Flag Valid')
  .replace('only next boot', 'all future boots')
  .replace('BIOS PC Compatible (legacy) boot', 'BIOS EFI boot')
  .replace('Force PXE', 'Force Boot from default Hard-Drive');

describe('ipmitool output', () => {
  it.each([
    ['Chassis Power is on\n', 'on'],
    ['Chassis Power is off\n', 'off'],
    ['Chassis Power is On', 'on'],
    ['Loading IANA PEN Registry...\nChassis Power is off\n', 'off'],
    ['Chassis Power Control: Up/On\n', undefined],
    ['', undefined],
    ['Chassis Power is onwards', undefined],
  ])('power status %j → %s', (out, want) => {
    expect(parsePowerStatus(out)).toBe(want);
  });

  it.each([
    [BOOTPARAM_PXE, { device: 'pxe', persistent: false, valid: false, efi: false }],
    [BOOTPARAM_DISK_PERSISTENT_EFI, { device: 'disk', persistent: true, valid: true, efi: true }],
    [BOOTPARAM_PXE.replace('Force PXE', 'No override'), { device: 'none', persistent: false, valid: false, efi: false }],
    [BOOTPARAM_PXE.replace('Force PXE', 'Force Boot from CD/DVD'), { device: 'Force Boot from CD/DVD', persistent: false, valid: false, efi: false }],
    [BOOTPARAM_PXE.replace('Force PXE', 'Force Boot from default Hard-Drive, request Safe-Mode'), { device: 'disk', persistent: false, valid: false, efi: false }],
    ['   - Boot Device Selector : Force PXE\r\n', { device: 'pxe' }],
    ['Boot parameter version: 1\nBoot parameter 5 is invalid/locked\n', undefined],
    ['', undefined],
  ])('bootparam get 5 #%# → %j', (out, want) => {
    expect(parseBootFlags(out as string)).toEqual(want);
  });

  it.each([
    ['Error: Unable to establish IPMI v2 / RMCP+ session\n', 'unavailable', /^bmc:623: Error: Unable to establish IPMI v2 \/ RMCP\+ session \(check/],
    ['Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n', 'unavailable', /^bmc:623: > RAKP 2 HMAC is invalid; Error: Unable/],
    ['Error in open session response message : invalid authentication algorithm\n\nError: Unable to establish IPMI v2 / RMCP+ session\n', 'unavailable', /invalid authentication algorithm/],
    ['Set Chassis Power Control to Soft failed: Unspecified error\n', 'conflict', /^bmc:623: Set Chassis Power Control to Soft failed: Unspecified error$/],
    ['Invalid argument: floppyx\n', 'conflict', /Invalid argument: floppyx/],
    ['', 'conflict', /ipmitool exited 1 and said nothing/],
  ])('error %j → %s', (out, code, message) => {
    const e = ipmiError('bmc:623', out, 1);
    expect(e.code).toBe(code);
    expect(e.message).toMatch(message);
  });
});

describe('redfish pieces', () => {
  it.each([
    ['On', 'on'],
    ['PoweringOn', 'on'],
    ['Paused', 'on'],
    ['Off', 'off'],
    ['PoweringOff', 'off'],
    [undefined, 'unknown'],
    ['on', 'unknown'],
    [42, 'unknown'],
  ])('PowerState %j → %s', (s, want) => {
    expect(redfishPowerState(s)).toBe(want);
  });

  it.each([
    [{ error: { code: 'Base.1.8.GeneralError', message: 'See ExtendedInfo', '@Message.ExtendedInfo': [{ Message: 'The value X is bad.', Resolution: 'Fix it.' }, { Message: 'Second.' }] } }, 'The value X is bad. Fix it.; Second.'],
    [{ error: { code: 'x', message: 'Only the message.' } }, 'Only the message.'],
    [{ error: { '@Message.ExtendedInfo': 'not a list', message: 'fallback' } }, 'fallback'],
    [{ error: 'text' }, undefined],
    [{}, undefined],
    [undefined, undefined],
    ['<html>', undefined],
  ])('error body #%# → %j', (body, want) => {
    expect(redfishErrorWords(body)).toBe(want);
  });

  it.each([
    [['On', 'ForceOn'], undefined, 'On'],
    [['On', 'ForceOn'], ['ForceOn', 'ForceOff'], 'ForceOn'],
    [['ForceRestart', 'PowerCycle'], ['ForceOff'], undefined],
    [['Once', 'Continuous'], [], undefined],
  ])('pickAllowed(%j, %j) → %j', (wanted, allowed, want) => {
    expect(pickAllowed(wanted, allowed)).toBe(want);
  });

  const FP = 'AB:'.repeat(31) + 'CD';
  it.each([
    [FP, FP],
    [FP.toLowerCase(), FP],
    [FP.replace(/:/g, ''), FP],
    [`sha256:${FP}`, FP],
    [`SHA256 ${FP.toLowerCase()}`, FP],
    [' ' + FP + ' ', FP],
    ['AB:CD', undefined],
    [FP.replace('CD', 'ZZ'), undefined],
    ['', undefined],
  ])('fingerprint %j → %j', (pin, want) => {
    expect(normalizeFingerprint(pin)).toBe(want);
  });
});

describe('redfish driver settings', () => {
  it.each([
    ['/redfish/v1/Systems/1', '/redfish/v1/Systems/1'],
    ['https://other.example:8443/redfish/v1/Systems/1/Actions/ComputerSystem.Reset', '/redfish/v1/Systems/1/Actions/ComputerSystem.Reset'],
    ['redfish/v1/Systems', '/redfish/v1/Systems'],
    ['/redfish/v1/Systems?$expand=.', '/redfish/v1/Systems?$expand=.'],
  ])('a path from the BMC %j is used as %j (never another host)', (ref, want) => {
    expect(onlyPath(ref)).toBe(want);
  });

  it.each([
    [{ url: 'http://bmc.example' }, /must be https:\/\//],
    [{ url: 'not a url' }, /is not a URL/],
    [{ caFingerprint: 'abc' }, /64 hex digits/],
  ])('the constructor refuses %j', (o, message) => {
    expect(() => new RedfishPower({ url: 'https://bmc.example', user: 'u', password: async () => 'p', ...o })).toThrow(message);
  });
});

describe('checkPowerConfig', () => {
  const ipmi = { driver: 'ipmi', host: '10.0.0.5', user: 'admin', passwordParam: 'bmc_password' };
  const redfish = { driver: 'redfish', url: 'https://bmc.example:8443', user: 'root', passwordParam: 'bmc_password' };
  it.each([
    [{ driver: 'manual' }],
    [{ driver: 'qmp', socket: '/run/vm/qmp.sock' }],
    [{ driver: 'qmp', socket: '/run/vm/qmp.sock', disk: 'disk0' }],
    [ipmi],
    [{ ...ipmi, host: 'bmc-7.rack1.example', port: 6230, cipherSuite: 17 }],
    [{ ...ipmi, host: 'fd00::5' }],
    [redfish],
    [{ ...redfish, system: '/redfish/v1/Systems/System.Embedded.1', caFingerprint: 'ab'.repeat(32) }],
    [{ ...redfish, system: '1', caFile: '/etc/takt/bmc-ca.pem' }],
  ])('accepts %j', (c) => {
    expect(checkPowerConfig(c)).toEqual(c);
  });

  it.each([
    [null, '/powerConfig', /must be an object/],
    [[], '/powerConfig', /must be an object/],
    [{}, '/powerConfig/driver', /give the power driver by name \(qmp, ipmi, redfish, manual/],
    [{ driver: 'wol' }, '/powerConfig/driver', /unknown power driver 'wol': known are qmp, manual, ipmi, redfish/],
    [{ driver: 'manual', host: 'x' }, '/powerConfig/host', /the manual driver has no setting 'host' \(it has none\)$/],
    [{ driver: 'qmp' }, '/powerConfig/socket', /the qmp driver needs the VM's QMP unix socket, an absolute path \(--power-opt socket=…\)/],
    [{ driver: 'qmp', socket: '/s', disk: 'a b' }, '/powerConfig/disk', /QOM id/],
    [{ ...ipmi, host: undefined }, '/powerConfig/host', /the ipmi driver needs the BMC's IP address or host name \(--power-opt host=…\)/],
    [{ ...ipmi, host: '$(reboot)' }, '/powerConfig/host', /IP address or host name/],
    [{ ...ipmi, port: 0 }, '/powerConfig/port', /1 to 65535/],
    [{ ...ipmi, port: '62x' }, '/powerConfig/port', /1 to 65535/],
    [{ ...ipmi, user: '' }, '/powerConfig/user', /1 to 16 bytes/],
    [{ ...ipmi, user: 'a-very-long-user-name' }, '/powerConfig/user', /1 to 16 bytes/],
    [{ ...ipmi, passwordParam: 'Bad-Name' }, '/powerConfig/passwordParam', /secure param/],
    [{ ...ipmi, password: 'hunter2' }, '/powerConfig/password', /a secret is never stored in a power configuration/],
    [{ ...ipmi, cipherSuite: 18 }, '/powerConfig/cipherSuite', /0 to 17/],
    [{ ...redfish, url: 'http://bmc.example' }, '/powerConfig/url', /needs TLS/],
    [{ ...redfish, url: 'https://root:pw@bmc.example' }, '/powerConfig/url', /without credentials/],
    [{ ...redfish, url: 'bmc.example' }, '/powerConfig/url', /https:\/\/HOST/],
    [{ ...redfish, caFingerprint: 'abcd' }, '/powerConfig/caFingerprint', /64 hex digits/],
    [{ ...redfish, caFile: 'relative.pem' }, '/powerConfig/caFile', /absolute path/],
    [{ ...redfish, caFile: '/ca.pem', caFingerprint: 'ab'.repeat(32) }, '/powerConfig/caFile', /not both/],
    [{ ...redfish, system: '../../x' }, '/powerConfig/system', /ComputerSystem/],
  ])('refuses %j at %s', (c, path, message) => {
    let err: unknown;
    try {
      checkPowerConfig(c);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'invalid', path });
    expect((err as Error).message).toMatch(message);
  });

  it('the factory checks ipmi and redfish settings the same way', () => {
    expect(() => powerDriver('m', { ...ipmi, port: 70000 } as never)).toThrow(expect.objectContaining({ code: 'invalid', path: '/powerConfig/port' }));
    expect(() => powerDriver('m', { ...redfish, caFile: '/nonexistent/ca.pem' } as never)).toThrow(expect.objectContaining({ code: 'invalid', path: '/powerConfig/caFile' }));
    // From the CLI every setting is text: numeric ones become numbers.
    expect(checkPowerConfig({ ...ipmi, port: '623', cipherSuite: '17' })).toEqual({ ...ipmi, port: 623, cipherSuite: 17 });
    expect(powerDriver('m', ipmi as never).kind).toBe('ipmi');
    expect(powerDriver('m', redfish as never).kind).toBe('redfish');
  });
});
