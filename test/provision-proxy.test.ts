/**
 * proxyDHCP with a real VM (issue #13, Tests): the segment's addresses come from a separate DHCP server
 * (Debian's dnsmasq, in a namespace of its own joined to the same bridge by a veth pair, with no boot
 * options of its own), and `takt serve --provision … --dhcp proxy` answers only the PXE client's boot
 * question. A BIOS VM with a virtio-net NIC: iPXE takes its address from dnsmasq and its script URL from
 * takt, boots its bootenv's kernel and initramfs from takt, and the initramfs' own DHCP client (not a PXE
 * client) is answered by dnsmasq alone — takt logs it as ignored.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Vm } from '../src/brokers/qemu/vm.js';
import { SLEDGE_MARKER } from '../src/provision/kernel.js';
import { TAKT, writePack, type CliResult } from './helpers/endpoint.js';
import { bootArtifacts, logMilestone, removeVmDirs, vmDir } from './helpers/provision.js';

const MAC = '52:54:00:7b:0c:41';
const UUID = '4c2b1a09-8d7e-4f6a-b5c4-d3e2f1a0b9c8';
const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

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

describe('proxyDHCP beside another DHCP server (netns, BIOS VM, dnsmasq for addresses)', () => {
  const tag = randomBytes(3).toString('hex');
  const netns = `tkpx-${tag}`;
  const dnsNs = `tkpxd-${tag}`;
  const prefix = `10.222.${1 + (parseInt(tag, 16) % 250)}`;
  let dir = '';
  let data = '';
  let serve: ChildProcess | null = null;
  let dnsmasq: ChildProcess | null = null;
  let output = '';
  let dnsLog = '';
  let vm: Vm | null = null;
  let endpoint = '';
  let token = '';

  const ip = (...a: string[]) => execFileSync('ip', a, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
  const cli = (args: string[]): Promise<CliResult> =>
    new Promise((resolve) => {
      execFile('ip', ['netns', 'exec', netns, process.execPath, TAKT, ...args], { env: { ...process.env, NO_COLOR: '1', TAKT_ENDPOINT: endpoint, TAKT_TOKEN: token }, timeout: 60_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
      );
    });
  const stop = async (p: ChildProcess | null) => {
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill('SIGTERM');
    await Promise.race([gone, new Promise((r) => setTimeout(r, 15_000))]);
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  };

  beforeAll(async () => {
    await bootArtifacts();
    dir = mkdtempSync(join(tmpdir(), 'takt-proxy-'));
    data = join(dir, 'data');
    ip('netns', 'add', netns);
    ip('netns', 'add', dnsNs);
    ip('-n', netns, 'link', 'set', 'lo', 'up');
    ip('-n', netns, 'link', 'add', 'br0', 'type', 'bridge');
    ip('-n', netns, 'addr', 'add', `${prefix}.1/24`, 'dev', 'br0');
    ip('-n', netns, 'link', 'set', 'br0', 'up');
    // The LAN's own DHCP server, on the same segment: a veth from its namespace into the bridge.
    ip('-n', netns, 'link', 'add', 'vd0', 'type', 'veth', 'peer', 'name', 'vd1', 'netns', dnsNs);
    ip('-n', netns, 'link', 'set', 'vd0', 'master', 'br0');
    ip('-n', netns, 'link', 'set', 'vd0', 'up');
    ip('-n', dnsNs, 'addr', 'add', `${prefix}.2/24`, 'dev', 'vd1');
    ip('-n', dnsNs, 'link', 'set', 'vd1', 'up');
    dnsmasq = spawn('ip', ['netns', 'exec', dnsNs, '/usr/sbin/dnsmasq', '--no-daemon', '--conf-file=/dev/null', '--port=0', '--interface=vd1', '--bind-interfaces',
      `--dhcp-range=${prefix}.100,${prefix}.150,255.255.255.0,10m`, '--no-ping', '--user=root', '--log-dhcp', '--log-facility=-',
      `--dhcp-leasefile=${join(dir, 'dnsmasq.leases')}`, `--pid-file=${join(dir, 'dnsmasq.pid')}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    dnsmasq.stdout!.on('data', (d: Buffer) => (dnsLog += d.toString()));
    dnsmasq.stderr!.on('data', (d: Buffer) => (dnsLog += d.toString()));
    await until(() => (/DHCP, IP range/.test(dnsLog) ? true : dnsmasq!.exitCode !== null ? false : undefined), 30_000, 'dnsmasq to start', () => dnsLog);

    const args = ['serve', '--listen', '127.0.0.1:0', '--data', data, '--lease', '5s', '--provision', `${prefix}.1/24`, '--dhcp', 'proxy', '--boot-port', '0'];
    serve = spawn('ip', ['netns', 'exec', netns, process.execPath, TAKT, ...args], { env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    serve.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    serve.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    await until(() => (existsSync(join(data, 'boot-url')) ? true : serve!.exitCode !== null ? false : undefined), 60_000, 'takt serve to start its boot services', () => output);
    expect(serve.exitCode, output).toBeNull();
    endpoint = readFileSync(join(data, 'endpoint'), 'utf8').trim();
    token = readFileSync(join(data, 'admin.token'), 'utf8').trim();
  }, 600_000);

  afterAll(async () => {
    await vm?.kill();
    await stop(serve);
    await stop(dnsmasq);
    for (const ns of [netns, dnsNs]) {
      try {
        ip('netns', 'del', ns);
      } catch {
        // not made
      }
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
    removeVmDirs();
  });

  it('the VM takes its address from dnsmasq and its boot from takt, and boots its bootenv', async () => {
    const { kernel, initramfs } = await bootArtifacts();
    const agent = join(dir, 'agent.sh');
    writeFileSync(agent, 'echo "TAKT-AGENT: booted through takt proxyDHCP"\n');
    writePack(join(dir, 'pack'), {
      'pack.yaml': 'name: metal\nversion: 1.0.0\n',
      'bootenvs/sledge.yaml': [
        'name: sledge',
        `kernel: { name: vmlinuz, path: ${kernel.vmlinuz}, sha256: ${sha256(kernel.vmlinuz)} }`,
        `initrds:\n  - { name: sledge.cpio.gz, path: ${initramfs.path}, sha256: ${sha256(initramfs.path)} }`,
        `files:\n  - { name: agent, path: ${agent}, sha256: ${sha256(agent)} }`,
        'cmdline: console=ttyS0 quiet panic=-1 takt.url={{ boot.files.agent }}',
        '',
      ].join('\n'),
    });
    const inst = await cli(['content', 'install', join(dir, 'pack')]);
    expect(inst.code, inst.stderr).toBe(0);
    const made = await cli(['machines', 'create', 'px-1', '--environment', 'metal', '--mac', MAC, '--uuid', UUID, '--bootenv', 'sledge']);
    expect(made.code, made.stderr).toBe(0);
    await until(() => ((output.match(/boot: kept bootenv 'sledge'/g) ?? []).length >= 3 ? true : undefined), 120_000, 'the bootenv artifacts to be kept', () => output);

    vm = await Vm.start({
      name: 'proxy',
      dir: vmDir('proxy'),
      firmware: 'bios',
      smbios: { uuid: UUID, serial: 'TAKT-TEST-0041' },
      nic: { model: 'virtio-net-pci', mac: MAC, net: { kind: 'tap', netns, bridge: 'br0', tap: 'tap0' } },
    });
    const marker = await vm.waitForSerial(new RegExp(SLEDGE_MARKER), 240_000, { failOn: /No bootable device|Could not boot image|Kernel panic|No more network devices/ });
    logMilestone(vm, 'init marker (iPXE via proxyDHCP)', marker.atMs);
    await vm.waitForSerial(/TAKT-AGENT: booted through takt proxyDHCP/, 120_000);
    // The initramfs' udhcpc is no PXE client: its address is dnsmasq's, from dnsmasq's range.
    const lease = await vm.waitForSerial(/TAKT-SLEDGE: dhcp on \S+ (\S+)/, 10_000);
    expect(lease.groups[0]).toMatch(new RegExp(`^${prefix.replaceAll('.', '\\.')}\\.(1[0-4]\\d|150)/24$`));
    // iPXE's address came from dnsmasq too (takt's proxy offers no address), and takt told it where to boot.
    expect(dnsLog).toMatch(new RegExp(`DHCPACK\\(vd1\\) ${prefix.replaceAll('.', '\\.')}\\.1\\d\\d ${MAC}`));
    expect(output).toContain('boot: px-1 gets bootenv sledge');
    expect(output).not.toMatch(/dhcp: ack px-1: address/);
  }, 600_000);
});
