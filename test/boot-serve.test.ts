/**
 * `takt serve --provision`: the boot HTTP service on the provisioning address, with the artifacts of
 * installed bootenvs fetched and checked when the pack is installed, and each booting machine's script
 * rendered from its own bootenv (issue #13). The provisioning address here is loopback: what crosses a
 * real network (DHCP, iPXE in a VM) is in the provision-* tests.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Endpoint, runCli, writePack } from './helpers/endpoint.js';

let ep: Endpoint;
let dir: string;
const kernel = randomBytes(300_000);
const sha = createHash('sha256').update(kernel).digest('hex');

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'takt-bootserve-'));
  writeFileSync(join(dir, 'vmlinuz'), kernel);
  ep = await Endpoint.start({ args: ['--provision', '127.0.0.1/8', '--boot-port', '0'] });
});
afterAll(async () => {
  await ep?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Polls `f` until it returns a value, at most `ms` (an observable condition, not a sleep). */
async function until<T>(f: () => Promise<T | undefined>, ms: number, what: string): Promise<T> {
  const deadline = Date.now() + ms;
  for (let i = 0; ; i++) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, Math.min(20 * 2 ** i, 500)));
  }
}

it('fetches a bootenv kernel on install, and boots a known machine into it and an unknown one from disk', async () => {
  const boot = await ep.bootUrl();
  expect(boot).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);

  writePack(join(dir, 'p'), {
    'pack.yaml': 'name: metal\nversion: 1.0.0\n',
    'bootenvs/sledge.yaml': `name: sledge\nkernel: { name: vmlinuz, path: ${join(dir, 'vmlinuz')}, sha256: ${sha} }\ncmdline: takt.name={{ machine.name }}\n`,
  });
  const inst = await ep.cli(['content', 'install', join(dir, 'p')]);
  expect(inst.code, inst.stderr).toBe(0);
  const fileUrl = `${boot}/boot/files/${sha}/vmlinuz`;
  // Installing the pack fetches the kernel: it is served, whole and by range, byte for byte.
  await until(async () => ((await fetch(fileUrl, { method: 'HEAD' })).status === 200 ? true : undefined), 30_000, 'the kernel to be kept');
  const part = await fetch(fileUrl, { headers: { range: 'bytes=100-199' } });
  expect(part.status).toBe(206);
  expect(Buffer.from(await part.arrayBuffer()).equals(kernel.subarray(100, 200))).toBe(true);

  const c = await ep.cli(['machines', 'create', 'rack-1', '--environment', 'metal', '--mac', '52:54:00:aa:00:01', '--bootenv', 'sledge']);
  expect(c.code, c.stderr).toBe(0);
  const script = await (await fetch(`${boot}/boot/ipxe?mac=52:54:00:AA:00:01&uuid=&platform=pcbios`)).text();
  expect(script).toBe(`#!ipxe\nkernel ${fileUrl} takt.name=rack-1\nboot\n`);

  const unknown = await (await fetch(`${boot}/boot/ipxe?mac=52:54:00:aa:00:99&platform=efi`)).text();
  expect(unknown).toBe('#!ipxe\necho takt: unknown machine 52:54:00:aa:00:99: no machine boots as it and no pack defines the discovery bootenv; booting from disk\nexit\n');

  // The API stays where it was: the boot service serves boot files and scripts only.
  expect((await fetch(`${boot}/api/v1/machines`)).status).toBe(404);
  expect(existsSync(join(ep.data, 'boot', 'files', sha))).toBe(true);
  // No --dhcp: no leases to list, said plainly.
  const leases = await ep.call('GET', '/dhcp/leases');
  expect(leases.status).toBe(404);
  expect(leases.body.error.message).toContain('this endpoint runs no DHCP server');
});

it('refuses a bad --provision, --boot-port or DHCP/TFTP flag combination before starting anything', async () => {
  for (const [args, want] of [
    [['--provision', '10.0.0.1/33'], "--provision '10.0.0.1/33' is not an IPv4 address with an optional prefix, e.g. 10.0.0.1/24"],
    [['--provision', 'fd00::1/64'], "--provision 'fd00::1/64' is not an IPv4 address"],
    [['--provision', '127.0.0.1', '--boot-port', '70000'], "--boot-port must be a TCP port from 0 to 65535 (got '70000')"],
    [['--dhcp', 'proxy'], '--dhcp proxy needs --provision ADDR/PREFIX'],
    [['--provision', '10.0.0.1/24', '--dhcp', 'yes'], "--dhcp must be full, proxy or off (got 'yes')"],
    [['--provision', '10.0.0.1/24', '--dhcp', 'full'], '--dhcp full needs --dhcp-range FIRST-LAST'],
    [['--provision', '10.0.0.1', '--dhcp', 'full', '--dhcp-range', '10.0.0.100-10.0.0.200'], '--dhcp full needs the prefix in --provision (e.g. 10.0.0.1/24)'],
    [['--provision', '10.0.0.1/24', '--dhcp', 'full', '--dhcp-range', '10.0.1.100-10.0.1.200'], 'rangeStart 10.0.1.100 is not a host address of 10.0.0.0/24'],
    [['--provision', '10.0.0.1/24', '--dhcp', 'full', '--dhcp-range', '10.0.0.200-10.0.0.100'], 'rangeEnd 10.0.0.100 is before rangeStart 10.0.0.200'],
    [['--provision', '10.0.0.1/24', '--dhcp', 'full', '--dhcp-range', '10.0.0.100'], "--dhcp-range '10.0.0.100' is not FIRST-LAST"],
    [['--provision', '10.0.0.1/24', '--dhcp', 'proxy', '--dhcp-range', '10.0.0.100-10.0.0.200'], '--dhcp-range is only for --dhcp full (got --dhcp proxy)'],
    [['--provision', '10.0.0.1/24', '--tftp-root', '/tmp'], '--tftp-root is only for --dhcp full or proxy'],
    [['--provision', '10.0.0.1/24', '--dhcp', 'proxy', '--tftp-root', '/nonexistent/ipxe'], '--tftp-root /nonexistent/ipxe is not a directory'],
  ] as const) {
    const data = mkdtempSync(join(tmpdir(), 'takt-bootbad-'));
    const r = await runCli(['serve', '--listen', '127.0.0.1:0', '--data', data, ...args]);
    rmSync(data, { recursive: true, force: true });
    expect(r.code, r.stdout).toBe(2); // bad usage
    expect(r.stderr).toContain(want);
  }
}, 300_000); // one `takt serve` start per case: ~1 s quiet, 5–6 s each with two suites on 2 cores
