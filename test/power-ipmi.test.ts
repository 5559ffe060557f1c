/**
 * The `ipmi` power driver with Debian's real ipmitool against OpenIPMI's real ipmi_sim (RMCP+ on
 * 127.0.0.1, a random UDP port) whose chassis_control program keeps the power and boot device in files
 * (test/helpers/ipmi-sim.ts). The VM-backed version is test/provision-ipmi.test.ts. Skipped, saying why,
 * when ipmi_sim or ipmitool is missing (`apt-get install openipmi ipmitool`; .ci/run installs them).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IpmiPower, type IpmiPowerOptions } from '../src/provision/power/ipmi.js';
import { powerDriver } from '../src/provision/power/index.js';
import { chassisFile, fileChassis, freeUdpPort, ipmiSimAvailable, IPMI_PASSWORD, IPMI_USER, startIpmiSim, type IpmiSim } from './helpers/ipmi-sim.js';

const available = ipmiSimAvailable();
if (!available) console.warn('[power-ipmi] skipped: ipmi_sim or ipmitool is not installed (apt-get install openipmi ipmitool)');

describe.skipIf(!available)('ipmi power driver against ipmi_sim', () => {
  let sim: IpmiSim;
  let soft: IpmiSim;
  const ipmi = (s: IpmiSim, o: Partial<IpmiPowerOptions> = {}) =>
    new IpmiPower({ host: '127.0.0.1', port: s.port, user: IPMI_USER, password: async () => IPMI_PASSWORD, timeoutMs: 60_000, ...o });

  beforeAll(async () => {
    sim = await startIpmiSim({ chassis: (dir) => fileChassis(dir) });
    soft = await startIpmiSim({ chassis: (dir) => fileChassis(dir, 'ignore') });
  }, 180_000);
  afterAll(async () => {
    await sim?.stop();
    await soft?.stop();
  });

  it('status, on, off, cycle', async () => {
    const p = ipmi(sim);
    expect(await p.status()).toBe('off');
    expect(await p.on()).toEqual({ done: true });
    expect(chassisFile(sim.dir, 'power').trim()).toBe('1');
    expect(await p.status()).toBe('on');
    expect(await p.on()).toMatchObject({ note: 'already on' });
    expect(await p.cycle()).toEqual({ done: true });
    expect(chassisFile(sim.dir, 'resets').trim().split('\n')).toHaveLength(1);
    expect(await p.off()).toEqual({ done: true });
    expect(await p.status()).toBe('off');
    expect(await p.off()).toMatchObject({ note: 'already off' });
    expect(await p.cycle()).toMatchObject({ done: true, note: 'it was off: powered on' });
    expect(await p.status()).toBe('on');
    expect(chassisFile(sim.dir, 'resets').trim().split('\n')).toHaveLength(1);
    expect(await p.off({ graceful: true, timeoutMs: 30_000 })).toEqual({ done: true });
    expect(chassisFile(sim.dir, 'calls')).toMatch(/set shutdown 1/);
  }, 180_000);

  it('sets the next boot device and reads it back from boot parameter 5', async () => {
    const p = ipmi(sim);
    expect(await p.setNextBoot('pxe')).toEqual({ done: true, persistent: false });
    expect(chassisFile(sim.dir, 'boot').trim()).toBe('pxe');
    expect(await p.setNextBoot('disk', { persistent: true })).toEqual({ done: true, persistent: true });
    expect(chassisFile(sim.dir, 'boot').trim()).toBe('default');
    expect(await p.setNextBoot('pxe', { persistent: true })).toEqual({ done: true, persistent: true });
    expect(chassisFile(sim.dir, 'boot').trim()).toBe('pxe');
  }, 180_000);

  it('a graceful off the OS ignores becomes a hard off, and says so', async () => {
    const p = ipmi(soft, { pollMs: 100 });
    await p.on();
    const out = await p.off({ graceful: true, timeoutMs: 500 });
    expect(out.note).toMatch(/did not shut down within 500 ms of the ACPI power button; powered off hard/);
    expect(await p.status()).toBe('off');
  }, 180_000);

  it('a soft off the BMC refuses becomes a hard off at once, in its words', async () => {
    const refusing = await startIpmiSim({ chassis: (dir) => fileChassis(dir, 'refuse') });
    try {
      const p = ipmi(refusing);
      await p.on();
      const out = await p.off({ graceful: true });
      expect(out.note).toMatch(/the BMC refused the soft off \(.*Set Chassis Power Control to Soft failed: .*\); powered off hard/);
      expect(await p.status()).toBe('off');
    } finally {
      await refusing.stop();
    }
  }, 180_000);

  it("a wrong password, a silent port and a missing ipmitool are 'unavailable' in ipmitool's words", async () => {
    await expect(ipmi(sim, { password: async () => 'wrong', retries: 1, retryIntervalS: 1 }).status()).rejects.toMatchObject({
      code: 'unavailable',
      message: expect.stringMatching(new RegExp(`^127\\.0\\.0\\.1:${sim.port}: Error: Unable to establish IPMI v2 / RMCP\\+ session .*the user and its password`)),
    });
    const silent = await freeUdpPort();
    await expect(ipmi(sim, { port: silent, retries: 1, retryIntervalS: 1 }).status()).rejects.toMatchObject({ code: 'unavailable', message: expect.stringContaining(`127.0.0.1:${silent}: Error: Unable to establish`) });
    await expect(ipmi(sim, { ipmitool: '/nonexistent/ipmitool' }).status()).rejects.toMatchObject({ code: 'unavailable', message: expect.stringContaining('is not installed (apt-get install ipmitool)') });
  }, 180_000);

  it('passes the password in the environment, never on the command line', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'takt-ipmitool-'));
    const fake = join(dir, 'ipmitool');
    writeFileSync(fake, `#!/bin/sh\nprintf '%s\\n' "$@" > '${dir}/argv'\nprintf '%s' "$IPMI_PASSWORD" > '${dir}/env'\necho 'Chassis Power is on'\n`);
    chmodSync(fake, 0o755);
    expect(await ipmi(sim, { ipmitool: fake, password: async () => 'top-secret-1' }).status()).toBe('on');
    const argv = readFileSync(join(dir, 'argv'), 'utf8').trim().split('\n');
    expect(argv).toEqual(['-I', 'lanplus', '-C', '3', '-H', '127.0.0.1', '-p', String(sim.port), '-U', IPMI_USER, '-E', 'power', 'status']);
    expect(argv.join(' ')).not.toContain('top-secret-1');
    expect(readFileSync(join(dir, 'env'), 'utf8')).toBe('top-secret-1');
  });

  it('through the factory: the password from the secure param', async () => {
    const asked: string[] = [];
    const p = powerDriver('rack1-u7', { driver: 'ipmi', host: '127.0.0.1', port: sim.port, user: IPMI_USER, passwordParam: 'bmc_password' }, { secret: async (param) => (asked.push(param), IPMI_PASSWORD) });
    expect(p.kind).toBe('ipmi');
    expect(['on', 'off']).toContain(await p.status());
    expect(asked).toEqual(['bmc_password']);
    const none = powerDriver('rack1-u7', { driver: 'ipmi', host: '127.0.0.1', port: sim.port, user: IPMI_USER, passwordParam: 'bmc_password' });
    await expect(none.on()).rejects.toMatchObject({ code: 'conflict', message: expect.stringContaining('takt machines update rack1-u7 --param bmc_password=PASSWORD') });
  }, 60_000);
});
