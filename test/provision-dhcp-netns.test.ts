/**
 * takt's DHCP and TFTP servers against real clients, in network namespaces this test creates (names
 * `tkdhcp-*`, addresses in 10.216.0.0/16) and deletes afterwards:
 *
 *   tkdhcp-<id>-s  bridge tkbr0 10.216.7.1/24: takt's server (full DHCP + TFTP, or proxyDHCP)
 *   tkdhcp-<id>-c  veth into the bridge: busybox `udhcpc`, `curl tftp://`, the PXE-like probe
 *   tkdhcp-<id>-d  veth into the bridge, 10.216.7.2/24: dnsmasq as the "existing" DHCP server (proxy test)
 *
 * Needs root, iproute2, busybox (udhcpc), curl with TFTP and dnsmasq (`.ci/run` installs them).
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { until } from './helpers/endpoint.js';

function unavailable(): string | null {
  if (process.getuid?.() !== 0) return 'not root';
  if (spawnSync('ip', ['-V']).status !== 0) return 'no iproute2';
  if (spawnSync('busybox', ['udhcpc', '--help']).error) return 'no busybox';
  if (!/tftp/.test(spawnSync('curl', ['--version'], { encoding: 'utf8' }).stdout ?? '')) return 'no curl with TFTP';
  if (!existsSync('/usr/sbin/dnsmasq')) return 'no dnsmasq';
  return null;
}
const skip = unavailable();
if (skip) console.warn(`provisioning netns test skipped: ${skip}`);

const ROOT = join(import.meta.dirname, '..');
const id = randomBytes(3).toString('hex');
const NS = { s: `tkdhcp-${id}-s`, c: `tkdhcp-${id}-c`, d: `tkdhcp-${id}-d` };
const SERVER = '10.216.7.1';
const created: string[] = [];
let dir: string;

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: 'pipe' });
const inNs = (ns: string, ...args: string[]) => ip('netns', 'exec', ns, ...args);

/** A process whose stdout is JSON lines, collected. */
interface Proc {
  child: ChildProcess;
  lines: Array<Record<string, unknown>>;
  text: () => string;
}
const procs: Proc[] = [];
function start(ns: string, cmd: string[], opts: { json?: boolean } = {}): Proc {
  const child = spawn('ip', ['netns', 'exec', ns, ...cmd], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
  let buf = '';
  let all = '';
  const p: Proc = { child, lines: [], text: () => all };
  const onData = (d: Buffer) => {
    all += d.toString();
    if (!opts.json) return;
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        p.lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not JSON (a warning): kept in text()
      }
    }
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', (d: Buffer) => (all += d.toString()));
  procs.push(p);
  return p;
}
async function stop(p: Proc): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  const exited = new Promise((res) => p.child.once('exit', res));
  p.child.kill('SIGTERM');
  await Promise.race([exited, new Promise((res) => setTimeout(res, 5000))]);
  if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
}
const tsx = (script: string, arg: unknown) => ['node', '--import', 'tsx', join(ROOT, 'test/helpers', script), JSON.stringify(arg)];

async function startServer(cfg: unknown): Promise<Proc> {
  const p = start(NS.s, tsx('provision-run.ts', cfg), { json: true });
  await until(async () => p.lines.some((l) => l.ready) || (p.child.exitCode !== null && Promise.reject(new Error(p.text()))), 60_000, 'the provisioning server to bind');
  return p;
}

describe.skipIf(skip !== null)('DHCP/TFTP in network namespaces', () => {
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'takt-prov-'));
    for (const ns of Object.values(NS)) {
      ip('netns', 'add', ns);
      created.push(ns);
      inNs(ns, 'ip', 'link', 'set', 'lo', 'up');
    }
    inNs(NS.s, 'ip', 'link', 'add', 'tkbr0', 'type', 'bridge');
    inNs(NS.s, 'ip', 'addr', 'add', `${SERVER}/24`, 'dev', 'tkbr0');
    inNs(NS.s, 'ip', 'link', 'set', 'tkbr0', 'up');
    for (const [n, ns] of [['c', NS.c], ['d', NS.d]] as const) {
      // Created inside the server's namespace, so no interface ever appears in the host's.
      inNs(NS.s, 'ip', 'link', 'add', `tkp${n}`, 'type', 'veth', 'peer', 'name', `v${n}0`, 'netns', ns);
      inNs(NS.s, 'ip', 'link', 'set', `tkp${n}`, 'master', 'tkbr0', 'up');
      inNs(ns, 'ip', 'link', 'set', `v${n}0`, 'up');
    }
    inNs(NS.d, 'ip', 'addr', 'add', '10.216.7.2/24', 'dev', 'vd0');
    // The TFTP root: a boot file and a bigger file with an odd size.
    mkdirp(join(dir, 'tftp'));
    writeFileSync(join(dir, 'tftp', 'undionly.kpxe'), randomBytes(70_001));
    writeFileSync(join(dir, 'tftp', 'kernel'), randomBytes(1_500_000));
  });

  // A failed test must not leave its servers running into the next one.
  afterEach(async () => {
    for (const p of procs) await stop(p);
    for (const ns of [NS.c]) spawnSync('ip', ['netns', 'exec', ns, 'ip', 'addr', 'flush', 'dev', 'vc0']);
  });

  afterAll(async () => {
    for (const p of procs) await stop(p);
    for (const ns of created) spawnSync('ip', ['netns', 'delete', ns]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('busybox udhcpc gets a lease from the full server; curl downloads boot files over TFTP byte-identical', async () => {
    const server = await startServer({
      dhcp: {
        mode: 'full',
        serverIp: SERVER,
        boot: { bios: 'undionly.kpxe', efiX64: 'ipxe.efi', scriptUrl: `http://${SERVER}:8080/boot/{mac}.ipxe` },
        subnet: { subnet: '10.216.7.0/24', rangeStart: '10.216.7.50', rangeEnd: '10.216.7.60', leaseSeconds: 600, routers: [SERVER], dns: [SERVER], domain: 'boot.test' },
      },
      tftp: { root: join(dir, 'tftp'), address: SERVER },
    });
    const out = join(dir, 'udhcpc.out');
    const script = join(dir, 'udhcpc.sh');
    writeFileSync(
      script,
      `#!/bin/sh\necho "$1 ip=$ip mask=$mask router=$router dns=$dns domain=$domain lease=$lease serverid=$serverid" >> ${out}\n` +
        `[ "$1" = bound ] && ip addr add "$ip/$mask" dev "$interface"\nexit 0\n`,
    );
    chmodSync(script, 0o755);
    const mac = '52:54:00:16:00:01';
    inNs(NS.c, 'ip', 'link', 'set', 'vc0', 'address', mac);
    // -n: exit if no lease; -q: exit once bound; -t/-T: 5 tries, 3 s apart (bounded).
    const r = spawnSync('ip', ['netns', 'exec', NS.c, 'busybox', 'udhcpc', '-i', 'vc0', '-n', '-q', '-f', '-t', '5', '-T', '3', '-s', script], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, `${r.stdout}\n${r.stderr}\n${server.text()}`).toBe(0);
    const bound = readFileSync(out, 'utf8').split('\n').find((l) => l.startsWith('bound'));
    expect(bound).toBe('bound ip=10.216.7.50 mask=24 router=10.216.7.1 dns=10.216.7.1 domain=boot.test lease=600 serverid=10.216.7.1');
    await until(async () => server.lines.some((l) => l.leases), 10_000, 'the lease list');
    const leases = server.lines.filter((l) => l.leases).at(-1)?.leases as Array<Record<string, unknown>>;
    expect(leases).toEqual([expect.objectContaining({ mac, ip: '10.216.7.50', state: 'bound' })]);

    for (const [file, blksize] of [['undionly.kpxe', '512'], ['kernel', '1024'], ['kernel', '8192']] as const) {
      const dest = join(dir, `got-${file}-${blksize}`);
      const c = spawnSync('ip', ['netns', 'exec', NS.c, 'curl', '-sS', '--max-time', '60', '--tftp-blksize', blksize, '-o', dest, `tftp://${SERVER}/${file}`], { encoding: 'utf8', timeout: 90_000 });
      expect(c.status, c.stderr).toBe(0);
      expect(readFileSync(dest).equals(readFileSync(join(dir, 'tftp', file)))).toBe(true);
    }
    const refused = spawnSync('ip', ['netns', 'exec', NS.c, 'curl', '-sS', '--max-time', '30', '-o', '/dev/null', `tftp://${SERVER}/../../etc/passwd`], { encoding: 'utf8', timeout: 60_000 });
    expect(refused.status).not.toBe(0);
    await stop(server);
    inNs(NS.c, 'ip', 'addr', 'flush', 'dev', 'vc0');
  });

  it('garbage on the wire: the servers answer none of it, log no internal error, and still serve', async () => {
    const server = await startServer({
      dhcp: {
        mode: 'full',
        serverIp: SERVER,
        boot: { bios: 'undionly.kpxe', efiX64: 'ipxe.efi', scriptUrl: `http://${SERVER}:8080/boot/{mac}.ipxe` },
        // Mutated DISCOVERs with new MACs may take every dynamic address (a DHCP flood does that to any
        // server); the spray's end marker has a reservation, so its OFFER comes regardless.
        subnet: { subnet: '10.216.7.0/24', rangeStart: '10.216.7.50', rangeEnd: '10.216.7.99', reservations: [{ mac: '52:54:00:16:0f:02', ip: '10.216.7.250' }] },
      },
      tftp: { root: join(dir, 'tftp'), address: SERVER },
    });
    inNs(NS.c, 'ip', 'addr', 'add', '10.216.7.201/24', 'dev', 'vc0');
    inNs(NS.c, 'ip', 'route', 'replace', 'default', 'dev', 'vc0');
    const spray = start(NS.c, tsx('udp-spray.ts', { server: SERVER, count: 2000 }), { json: true });
    const code = await new Promise<number | null>((res) => spray.child.once('exit', res));
    expect(code, spray.text()).toBe(0);
    expect(spray.lines.at(-1)).toMatchObject({ sent: 2000, answers: 0, marker: true });
    expect(server.child.exitCode).toBeNull();
    expect(server.lines.filter((l) => (l.dhcp as Record<string, unknown> | undefined)?.event === 'error')).toEqual([]);
    const dest = join(dir, 'after-spray');
    const c = spawnSync('ip', ['netns', 'exec', NS.c, 'curl', '-sS', '--max-time', '60', '-o', dest, `tftp://${SERVER}/undionly.kpxe`], { encoding: 'utf8', timeout: 90_000 });
    expect(c.status, c.stderr).toBe(0);
    expect(readFileSync(dest).equals(readFileSync(join(dir, 'tftp', 'undionly.kpxe')))).toBe(true);
    await stop(server);
    inNs(NS.c, 'ip', 'addr', 'flush', 'dev', 'vc0');
  });

  it('proxyDHCP beside dnsmasq: the PXE client gets its address from dnsmasq and its boot file from takt; a plain client is ignored', async () => {
    const dm = start(NS.d, [
      '/usr/sbin/dnsmasq', '--no-daemon', '--conf-file=/dev/null', '--port=0', '--interface=vd0', '--bind-interfaces',
      '--dhcp-range=10.216.7.100,10.216.7.150,255.255.255.0,10m', '--no-ping', '--user=root', '--log-dhcp', '--log-facility=-',
      `--dhcp-leasefile=${join(dir, 'dnsmasq.leases')}`, `--pid-file=${join(dir, 'dnsmasq.pid')}`,
    ]);
    const proxy = await startServer({
      dhcp: { mode: 'proxy', serverIp: SERVER, boot: { bios: 'undionly.kpxe', efiX64: 'ipxe.efi', scriptUrl: `http://${SERVER}:8080/boot/{mac}.ipxe` } },
    });
    await until(async () => /DHCP, IP range/.test(dm.text()) || (dm.child.exitCode !== null && Promise.reject(new Error(dm.text()))), 30_000, 'dnsmasq to start');
    // The probe sends from a static address outside both ranges (a DHCP client needs none; its sockets do).
    inNs(NS.c, 'ip', 'addr', 'add', '10.216.7.200/24', 'dev', 'vc0');
    inNs(NS.c, 'ip', 'route', 'replace', 'default', 'dev', 'vc0');
    const probe = start(NS.c, tsx('pxe-probe.ts', { mac: '52:54:00:16:00:02', plainMac: '52:54:00:16:00:03', proxy: SERVER, deadlineMs: 45_000 }), { json: true });
    const code = await new Promise<number | null>((res) => probe.child.once('exit', res));
    const replies = probe.lines.filter((l) => l.xid !== undefined);
    expect(code, `${probe.text()}\n--- proxy\n${proxy.text()}\n--- dnsmasq\n${dm.text()}`).toBe(0);
    const XA = 0x0a0a0a0a;
    const XB = 0x0b0b0b0b;
    // The PXE client: address from dnsmasq, boot file from takt's proxy (offer on 67, ACK on 4011).
    const dmOffer = replies.find((l) => l.xid === XB && l.type === 2 && l.serverId === '10.216.7.2');
    expect(dmOffer?.yiaddr).toMatch(/^10\.216\.7\.1\d\d$/);
    const proxyOffer = replies.find((l) => l.xid === XB && l.type === 2 && l.serverId === SERVER);
    expect(proxyOffer).toMatchObject({ yiaddr: '0.0.0.0', siaddr: SERVER, file: 'undionly.kpxe', vendorClass: 'PXEClient' });
    expect(replies.find((l) => l.xid === XB && l.type === 5 && l.serverId === SERVER)).toMatchObject({ file: 'undionly.kpxe', from: `${SERVER}:4011` });
    // The plain client: dnsmasq answered it, the proxy logged it as ignored and sent nothing (its reply would
    // have arrived before the one to the PXE client, which was sent after it on the same socket).
    expect(replies.some((l) => l.xid === XA && l.serverId === '10.216.7.2')).toBe(true);
    expect(replies.some((l) => l.xid === XA && l.serverId === SERVER)).toBe(false);
    const ignored = proxy.lines.map((l) => l.dhcp as Record<string, unknown> | undefined).filter((e) => e?.xid === XA);
    expect(ignored).toEqual([expect.objectContaining({ event: 'ignored', reason: expect.stringContaining('not a PXE client') })]);
    // The REQUEST to dnsmasq (port 67) is dnsmasq's business: the proxy ignored it too.
    expect(proxy.lines.some((l) => (l.dhcp as Record<string, unknown> | undefined)?.event === 'ignored' && String((l.dhcp as Record<string, unknown>).reason).includes('not REQUEST'))).toBe(true);
    await stop(proxy);
    await stop(dm);
  });
});

function mkdirp(p: string): void {
  execFileSync('mkdir', ['-p', p]);
}
