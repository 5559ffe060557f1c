/**
 * The `redfish` power driver against a Redfish responder in the test harness (test/helpers/redfish.ts): a
 * stand-in for a BMC, since no Redfish emulator installs here. Real HTTPS on 127.0.0.1 with a certificate
 * from takt's CA code; trust by pinned fingerprint, by CA file, and refused without either; the BMC's error
 * words; AllowableValues (on the action and through ActionInfo); ETag/If-Match; one-shot vs continuous boot
 * overrides; the secure-param password through the factory.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { powerDriver } from '../src/provision/power/index.js';
import { RedfishPower, type RedfishPowerOptions } from '../src/provision/power/redfish.js';
import { startRedfish, type RedfishResponder, type RedfishResponderOptions } from './helpers/redfish.js';

let bmc: RedfishResponder | undefined;
afterEach(async () => {
  await bmc?.close();
  bmc = undefined;
});

async function start(o: RedfishResponderOptions = {}): Promise<RedfishResponder> {
  bmc = await startRedfish(o);
  return bmc;
}

function driver(b: RedfishResponder, o: Partial<RedfishPowerOptions> = {}): RedfishPower {
  return new RedfishPower({ url: b.url, user: 'admin', password: async () => 'pa55word', caFingerprint: b.fingerprint, timeoutMs: 20_000, ...o });
}

describe('redfish power driver', () => {
  it('status, on, off, cycle and the next boot device, with the certificate pinned', async () => {
    const b = await start();
    const p = driver(b);
    expect(await p.status()).toBe('off');
    expect(await p.on()).toEqual({ done: true });
    expect(await p.status()).toBe('on');
    expect(await p.on()).toMatchObject({ done: true, note: 'already on' });
    expect(await p.cycle()).toEqual({ done: true });
    expect(await p.off()).toEqual({ done: true });
    expect(await p.off()).toMatchObject({ note: 'already off' });
    expect(await p.cycle()).toMatchObject({ done: true, note: 'it was off: powered on' });
    expect(b.resets).toEqual(['On', 'ForceRestart', 'ForceOff', 'On']);

    expect(await p.setNextBoot('pxe')).toMatchObject({ done: true, persistent: false });
    expect(b.state).toMatchObject({ target: 'Pxe', enabled: 'Once' });
    expect(await p.setNextBoot('disk', { persistent: true })).toMatchObject({ done: true, persistent: true });
    expect(b.state).toMatchObject({ target: 'Hdd', enabled: 'Continuous' });

    expect(await p.off({ graceful: true, timeoutMs: 5_000 })).toEqual({ done: true });
    expect(b.resets.at(-1)).toBe('GracefulShutdown');
    // Every request but none carried the credentials; the system was found through the collection once.
    expect(b.requests.every((r) => r.auth)).toBe(true);
    expect(b.requests.filter((r) => r.path === '/redfish/v1/Systems')).toHaveLength(1);
  });

  it('trusts a CA file; refuses an unknown certificate and a wrong pin before sending anything', async () => {
    const b = await start();
    expect(await driver(b, { caFingerprint: undefined, ca: b.caPem }).status()).toBe('off');
    const seen = b.requests.length;
    await expect(driver(b, { caFingerprint: undefined }).status()).rejects.toMatchObject({ code: 'unavailable', message: expect.stringMatching(/not trusted.*caFingerprint/) });
    const wrong = 'AA:'.repeat(31) + 'AA';
    await expect(driver(b, { caFingerprint: wrong.toLowerCase().replace(/:/g, '') }).status()).rejects.toMatchObject({
      code: 'conflict',
      message: expect.stringContaining(`fingerprint is ${b.fingerprint}, not the pinned ${wrong}: nothing was sent`),
    });
    expect(b.requests.length).toBe(seen);
    // The pin in openssl's form (`sha256 Fingerprint=` is stripped by the operator; a `sha256:` prefix is accepted).
    expect(await driver(b, { caFingerprint: `sha256:${b.fingerprint.toLowerCase()}` }).status()).toBe('off');
  });

  it("a wrong password is the BMC's own words; an unreachable BMC says so", async () => {
    const b = await start();
    await expect(driver(b, { password: async () => 'nope' }).status()).rejects.toMatchObject({
      code: 'unavailable',
      message: expect.stringMatching(/GET \/redfish\/v1\/Systems answered 401: There is no valid session established with the implementation\. Establish a session.*check the BMC user and the password/),
    });
    const closed = await freePort();
    await expect(new RedfishPower({ url: `https://127.0.0.1:${closed}`, user: 'admin', password: async () => 'x', timeoutMs: 20_000 }).status()).rejects.toMatchObject({
      code: 'unavailable',
      message: expect.stringMatching(new RegExp(`127\\.0\\.0\\.1:${closed}: cannot connect: .*ECONNREFUSED`)),
    });
  });

  it('picks what the system allows (on the action or through ActionInfo) and says what it used', async () => {
    const b = await start({ resetTypes: ['PushPowerButton', 'ForceOff', 'PowerCycle'] });
    const p = driver(b);
    expect(await p.on()).toMatchObject({ done: true, note: expect.stringContaining('ResetType PushPowerButton') });
    expect(await p.cycle()).toMatchObject({ done: true, note: expect.stringContaining('ResetType PowerCycle') });
    expect(await p.off({ graceful: true })).toMatchObject({ done: true, note: expect.stringContaining('no GracefulShutdown; powered off hard') });
    expect(b.resets).toEqual(['PushPowerButton', 'PowerCycle', 'ForceOff']);
    await b.close();

    const c = await start({ resetTypes: ['ForceOff', 'On'], actionInfo: true });
    const q = driver(c);
    await q.on();
    await expect(q.cycle()).rejects.toMatchObject({ code: 'conflict', message: expect.stringMatching(/allows ResetType ForceOff, On; takt needs one of ForceRestart, PowerCycle, GracefulRestart/) });
    expect(c.requests.some((r) => r.path.endsWith('/ResetActionInfo'))).toBe(true);
  });

  it("sends the BMC's ETag with PATCH, and applies a one-shot boot persistently when Once is not offered", async () => {
    const b = await start({ requireIfMatch: true, overrideEnabled: ['Continuous', 'Disabled'] });
    const out = await driver(b).setNextBoot('pxe', { persistent: false });
    expect(out).toMatchObject({ done: true, persistent: true, note: expect.stringContaining('no one-shot') });
    expect(b.state).toMatchObject({ target: 'Pxe', enabled: 'Continuous' });
  });

  it('with several systems: refuses to guess, and drives the configured one', async () => {
    const b = await start({ systems: ['1', '2'] });
    await expect(driver(b).status()).rejects.toMatchObject({ code: 'conflict', message: expect.stringContaining('lists 2 systems (/redfish/v1/Systems/1, /redfish/v1/Systems/2): set power.system') });
    expect(await driver(b, { system: '2' }).on()).toEqual({ done: true });
    expect(await driver(b, { system: '/redfish/v1/Systems/3' }).status().catch((e: Error) => e.message)).toMatch(/answered 404: The resource at the URI \/redfish\/v1\/Systems\/3 was not found/);
  });

  it('a graceful off the OS ignores becomes a hard off, and says so', async () => {
    const b = await start({ ignoreGraceful: true });
    const p = driver(b, { pollMs: 50 });
    await p.on();
    const out = await p.off({ graceful: true, timeoutMs: 300 });
    expect(out.note).toMatch(/did not shut down within 300 ms of GracefulShutdown; powered off hard/);
    expect(b.resets).toEqual(['On', 'GracefulShutdown', 'ForceOff']);
    expect(await p.status()).toBe('off');
  });

  it('through the factory: the password comes from the secure param, and a missing one says how to set it', async () => {
    const b = await start();
    const dir = mkdtempSync(join(tmpdir(), 'takt-rf-ca-'));
    writeFileSync(join(dir, 'ca.pem'), b.caPem);
    const config = { driver: 'redfish' as const, url: b.url, user: 'admin', passwordParam: 'bmc_password', caFile: join(dir, 'ca.pem') };
    const asked: string[] = [];
    const p = powerDriver('rack1-u7', config, { secret: async (param) => (asked.push(param), 'pa55word') });
    expect(p.kind).toBe('redfish');
    expect(await p.on()).toEqual({ done: true });
    expect(asked[0]).toBe('bmc_password');
    const none = powerDriver('rack1-u7', config, { secret: async () => undefined });
    await expect(none.status()).rejects.toMatchObject({
      code: 'conflict',
      path: '/powerConfig/passwordParam',
      message: expect.stringContaining("param 'bmc_password', which rack1-u7 does not have: declare 'bmc_password' with secure: true in a pack's params/ and set it with `takt machines update rack1-u7 --param bmc_password=PASSWORD`"),
    });
  });
});

const redfishtool = spawnSync('sh', ['-c', 'command -v redfishtool']).status === 0;

describe.skipIf(!redfishtool)("the stand-in against an independent client (Debian's redfishtool)", () => {
  it('redfishtool reads, resets and sets the boot override on the responder; the driver sees what it did', async () => {
    const b = await start();
    // redfishtool does not check the certificate (Python requests with verify off); it is here to check the
    // responder. Asynchronous: the responder runs in this process.
    const rt = async (...args: string[]) => {
      const r = await promisify(execFile)('redfishtool', ['-r', `127.0.0.1:${b.port}`, '-u', 'admin', '-p', 'pa55word', '-S', 'Always', 'Systems', '-I', '1', ...args], { encoding: 'utf8', timeout: 60_000 });
      return r.stdout;
    };
    expect(JSON.parse(await rt('get'))).toMatchObject({ Id: '1', PowerState: 'Off' });
    await rt('reset', 'On');
    await rt('setBootOverride', 'Once', 'Pxe');
    expect(b.resets).toEqual(['On']);
    expect(await driver(b).status()).toBe('on');
    expect(b.state).toMatchObject({ target: 'Pxe', enabled: 'Once' });
    await driver(b).setNextBoot('disk', { persistent: true });
    expect(JSON.parse(await rt('get')).Boot).toMatchObject({ BootSourceOverrideTarget: 'Hdd', BootSourceOverrideEnabled: 'Continuous' });
  }, 120_000);
});

/** A loopback TCP port nobody listens on (bound, then closed). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}
