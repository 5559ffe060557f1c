/**
 * proxyDHCP with a real VM (issue #13, Tests): the segment's addresses come from a separate DHCP server
 * (Debian's dnsmasq, in a namespace of its own joined to the same bridge by a veth pair, with no boot
 * options of its own), and `takt serve --provision … --dhcp proxy` answers only the PXE client's boot
 * question. A BIOS VM with a virtio-net NIC: iPXE takes its address from dnsmasq and its script URL from
 * takt, boots its bootenv's kernel and initramfs from takt, and the initramfs' own DHCP client (not a PXE
 * client) is answered by dnsmasq alone — takt logs it as ignored.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Vm } from '../src/brokers/qemu/vm.js';
import { SLEDGE_MARKER } from '../src/provision/kernel.js';
import { BootLab, stopProcess, until } from './helpers/boot-lab.js';
import { writePack } from './helpers/endpoint.js';
import { bootArtifacts, logMilestone, vmDir } from './helpers/provision.js';

const MAC = '52:54:00:7b:0c:41';
const UUID = '4c2b1a09-8d7e-4f6a-b5c4-d3e2f1a0b9c8';
const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

describe('proxyDHCP beside another DHCP server (netns, BIOS VM, dnsmasq for addresses)', () => {
  const lab = new BootLab({ netnsPrefix: 'tkpx-', subnet: '10.222', dirPrefix: 'takt-proxy-' });
  const { netns, prefix } = lab;
  const dnsNs = `tkpxd-${lab.tag}`;
  let dnsmasq: ChildProcess | null = null;
  let dnsLog = '';
  let vm: Vm | null = null;
  const cli = (args: string[]) => lab.cli(args);

  beforeAll(async () => {
    await bootArtifacts();
    lab.open();
    // The LAN's own DHCP server, on the same segment: a veth from its namespace into the bridge.
    lab.addNetns(dnsNs);
    lab.ip('-n', netns, 'link', 'add', 'vd0', 'type', 'veth', 'peer', 'name', 'vd1', 'netns', dnsNs);
    lab.ip('-n', netns, 'link', 'set', 'vd0', 'master', 'br0');
    lab.ip('-n', netns, 'link', 'set', 'vd0', 'up');
    lab.ip('-n', dnsNs, 'addr', 'add', `${prefix}.2/24`, 'dev', 'vd1');
    lab.ip('-n', dnsNs, 'link', 'set', 'vd1', 'up');
    dnsmasq = spawn('ip', ['netns', 'exec', dnsNs, '/usr/sbin/dnsmasq', '--no-daemon', '--conf-file=/dev/null', '--port=0', '--interface=vd1', '--bind-interfaces',
      `--dhcp-range=${prefix}.100,${prefix}.150,255.255.255.0,10m`, '--no-ping', '--user=root', '--log-dhcp', '--log-facility=-',
      `--dhcp-leasefile=${join(lab.dir, 'dnsmasq.leases')}`, `--pid-file=${join(lab.dir, 'dnsmasq.pid')}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    dnsmasq.stdout!.on('data', (d: Buffer) => (dnsLog += d.toString()));
    dnsmasq.stderr!.on('data', (d: Buffer) => (dnsLog += d.toString()));
    await until(() => (/DHCP, IP range/.test(dnsLog) ? true : dnsmasq!.exitCode !== null ? false : undefined), 30_000, 'dnsmasq to start', () => dnsLog);
    await lab.serve(['--listen', '127.0.0.1:0', '--lease', '5s', '--provision', `${prefix}.1/24`, '--dhcp', 'proxy', '--boot-port', '0']);
  }, 600_000);

  afterAll(async () => {
    await vm?.kill();
    await stopProcess(dnsmasq);
    await lab.stop();
  });

  it('the VM takes its address from dnsmasq and its boot from takt, and boots its bootenv', async () => {
    const { kernel, initramfs } = await bootArtifacts();
    const agent = join(lab.dir, 'agent.sh');
    writeFileSync(agent, 'echo "TAKT-AGENT: booted through takt proxyDHCP"\n');
    writePack(join(lab.dir, 'pack'), {
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
    const inst = await cli(['content', 'install', join(lab.dir, 'pack')]);
    expect(inst.code, inst.stderr).toBe(0);
    const made = await cli(['machines', 'create', 'px-1', '--environment', 'metal', '--mac', MAC, '--uuid', UUID, '--bootenv', 'sledge']);
    expect(made.code, made.stderr).toBe(0);
    await until(() => ((lab.output.match(/boot: kept bootenv 'sledge'/g) ?? []).length >= 3 ? true : undefined), 120_000, 'the bootenv artifacts to be kept', () => lab.output);

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
    expect(lab.output).toContain('boot: px-1 gets bootenv sledge');
    expect(lab.output).not.toMatch(/dhcp: ack px-1: address/);
  }, 600_000);
});
