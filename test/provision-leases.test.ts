/**
 * DHCP leases kept in the store and reservations from machines' boot settings, over the wire (issue #13):
 * `takt serve --provision … --dhcp full` inside a namespace `tkd-l<id>` (veth pair, one end at
 * 10.219.N.1/24; the client is `test/helpers/lease-probe.ts` in the same namespace, speaking DHCP by
 * broadcast as firmware does). Proves: a machine with `--ip` gets that address and nobody else does; the
 * leases show in `takt dhcp leases` with machine names; after a restart of the endpoint a new client does
 * not get an address that was bound before, and the old client gets its address again.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, TAKT, type CliResult } from './helpers/endpoint.js';

const tag = randomBytes(3).toString('hex');
const netns = `tkd-l${tag}`;
const prefix = `10.219.${1 + (parseInt(tag, 16) % 250)}`;
const M = (n: number) => `52:54:00:d1:00:${n.toString(16).padStart(2, '0')}`;

/** Polls `f` until it returns a value, at most `ms` (an observable condition, not a sleep). */
async function until<T>(f: () => Promise<T | undefined> | T | undefined, ms: number, what: string, detail: () => string = () => ''): Promise<T> {
  const deadline = Date.now() + ms;
  for (let i = 0; ; i++) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}\n${detail()}`);
    await new Promise((r) => setTimeout(r, Math.min(20 * 2 ** i, 500)));
  }
}

describe('DHCP leases in the store, reservations from machines (netns)', () => {
  let dir = '';
  let data = '';
  let serve: ChildProcess | null = null;
  let output = '';
  let endpoint = '';
  let token = '';
  const ip = (...a: string[]) => execFileSync('ip', a, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
  const cli = (args: string[]): Promise<CliResult> =>
    new Promise((resolve) => {
      execFile('ip', ['netns', 'exec', netns, process.execPath, TAKT, ...args], { env: { ...process.env, NO_COLOR: '1', TAKT_ENDPOINT: endpoint, TAKT_TOKEN: token }, timeout: 60_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
      );
    });
  /** DISCOVER → OFFER → REQUEST → ACK for each MAC in turn; the addresses they got. */
  const lease = (macs: string[]): Promise<Record<string, string>> =>
    new Promise((resolve, reject) => {
      execFile('ip', ['netns', 'exec', netns, process.execPath, '--import', 'tsx', join(ROOT, 'test/helpers/lease-probe.ts'), JSON.stringify({ macs, deadlineMs: 60_000 })], { cwd: ROOT, timeout: 90_000 }, (err, stdout, stderr) => {
        if (err) return reject(new Error(`lease probe: ${err.message}\n${stdout}\n${stderr}\n${output}`));
        const got: Record<string, string> = {};
        for (const line of stdout.split('\n').filter(Boolean)) {
          const o = JSON.parse(line) as { mac?: string; ip?: string; error?: string };
          if (o.mac) got[o.mac] = o.ip ?? o.error ?? '?';
        }
        resolve(got);
      });
    });
  const start = async () => {
    rmSync(join(data, 'endpoint'), { force: true });
    rmSync(join(data, 'boot-url'), { force: true });
    const args = ['serve', '--listen', '127.0.0.1:0', '--data', data, '--provision', `${prefix}.1/24`, '--dhcp', 'full', '--dhcp-range', `${prefix}.100-${prefix}.150`, '--boot-port', '0'];
    serve = spawn('ip', ['netns', 'exec', netns, process.execPath, TAKT, ...args], { env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    serve.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    serve.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    await until(() => (existsSync(join(data, 'boot-url')) ? true : serve!.exitCode !== null ? false : undefined), 60_000, 'takt serve to start', () => output);
    expect(serve.exitCode, output).toBeNull();
    endpoint = readFileSync(join(data, 'endpoint'), 'utf8').trim();
    token = readFileSync(join(data, 'admin.token'), 'utf8').trim();
  };
  const stop = async () => {
    if (!serve || serve.exitCode !== null || serve.signalCode !== null) return;
    const gone = new Promise<void>((r) => serve!.once('exit', () => r()));
    serve.kill('SIGTERM');
    await Promise.race([gone, new Promise((r) => setTimeout(r, 30_000))]);
    if (serve.exitCode === null && serve.signalCode === null) serve.kill('SIGKILL');
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'takt-leases-'));
    data = join(dir, 'data');
    ip('netns', 'add', netns);
    ip('-n', netns, 'link', 'set', 'lo', 'up');
    // A veth pair with both ends here: an Ethernet segment with carrier that no other namespace sees.
    ip('-n', netns, 'link', 'add', 'd0', 'type', 'veth', 'peer', 'name', 'd1');
    ip('-n', netns, 'addr', 'add', `${prefix}.1/24`, 'dev', 'd0');
    ip('-n', netns, 'link', 'set', 'd0', 'up');
    ip('-n', netns, 'link', 'set', 'd1', 'up');
    // The client's limited broadcast (255.255.255.255) needs a route out of an interface, as on a host.
    ip('-n', netns, 'route', 'add', 'default', 'dev', 'd0');
    await start();
  }, 120_000);

  afterAll(async () => {
    await stop();
    try {
      ip('netns', 'del', netns);
    } catch {
      // not made
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('reserves addresses for machines: checked, unique, handed out to their MACs only', async () => {
    const bad = await cli(['machines', 'create', 'bad-ip', '--environment', 'metal', '--mac', M(9), '--ip', '10.0.0.300']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('boot.ip: "10.0.0.300" is not an IPv4 address');
    const made = await cli(['machines', 'create', 'res-1', '--environment', 'metal', '--mac', M(1), '--ip', `${prefix}.20`]);
    expect(made.code, made.stderr).toBe(0);
    const twice = await cli(['machines', 'create', 'res-2', '--environment', 'metal', '--mac', M(2), '--ip', `${prefix}.20`]);
    expect(twice.code).not.toBe(0);
    expect(twice.stderr).toContain(`address ${prefix}.20 is already reserved for machine 'res-1'`);
    // Outside the subnet: stored (the machine may move networks), but serve says it is not handed out.
    const outside = await cli(['machines', 'create', 'res-3', '--environment', 'metal', '--mac', M(3), '--ip', '192.0.2.7']);
    expect(outside.code, outside.stderr).toBe(0);
    await until(() => (/reservations outside .* res-3 \(192\.0\.2\.7\)/.test(output) ? true : undefined), 30_000, 'the warning about res-3', () => output);
    await until(() => (output.includes(`dhcp: reserved res-1=${prefix}.20`) ? true : undefined), 30_000, 'the reservation to be loaded', () => output);

    // A stranger asking for the reserved address gets another one; res-1 gets its reservation.
    const got = await lease([M(10), M(1)]);
    expect(got[M(1)]).toBe(`${prefix}.20`);
    expect(got[M(10)]).toBe(`${prefix}.100`);

    const list = await cli(['dhcp', 'leases', '-o', 'json']);
    expect(list.code, list.stderr).toBe(0);
    const items = JSON.parse(list.stdout) as Array<{ mac: string; ip: string; state: string; machine?: string; reserved?: boolean }>;
    expect(items).toContainEqual(expect.objectContaining({ mac: M(1), ip: `${prefix}.20`, state: 'bound', machine: 'res-1', reserved: true }));
    expect(items).toContainEqual(expect.objectContaining({ mac: M(10), ip: `${prefix}.100`, state: 'bound' }));
    const table = await cli(['dhcp', 'leases']);
    expect(table.stdout).toMatch(new RegExp(`res-1\\s+${M(1)}\\s+${prefix.replaceAll('.', '\\.')}\\.20 \\(reserved\\)\\s+bound\\s+bios`));
  }, 300_000);

  it('keeps leases across a restart: a new client does not get a bound address, the old client gets its own', async () => {
    await stop();
    expect(output).not.toMatch(/cannot save leases/);
    await start();
    expect(output).toMatch(/dhcp: 2 leases kept from before/);
    const got = await lease([M(11), M(10)]);
    expect(got[M(11)]).toBe(`${prefix}.101`);
    expect(got[M(10)]).toBe(`${prefix}.100`);
    const list = JSON.parse((await cli(['dhcp', 'leases', '-o', 'json'])).stdout) as Array<{ mac: string; ip: string }>;
    expect(list.map((l) => `${l.mac}=${l.ip}`).sort()).toEqual([`${M(1)}=${prefix}.20`, `${M(10)}=${prefix}.100`, `${M(11)}=${prefix}.101`]);
  }, 300_000);

  it('frees a reservation with --ip \'\'', async () => {
    const r = await cli(['machines', 'update', 'res-1', '--ip', '']);
    expect(r.code, r.stderr).toBe(0);
    const again = await cli(['machines', 'update', 'res-3', '--ip', `${prefix}.20`]);
    expect(again.code, again.stderr).toBe(0);
  }, 120_000);
});
