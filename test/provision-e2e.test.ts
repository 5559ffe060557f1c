/**
 * The whole network boot through takt alone (issue #13): `takt serve --provision … --dhcp full` runs inside
 * a network namespace `tkwire-…` (bridge br0 at 10.218.N.1/24); a BIOS VM with a virtio-net NIC on a tap
 * there, and no kernel given to qemu, PXE-boots: qemu's iPXE ROM → takt's DHCP (an address and the script
 * URL) → takt's /boot/ipxe (the machine's bootenv, found by its MAC and SMBIOS UUID) → Debian's kernel and
 * the busybox initramfs from takt's /boot/files → /init's marker → a lease from takt's DHCP again → the
 * agent script, itself a boot file of the bootenv. Nothing is served from outside the endpoint.
 * Quiet-machine times (docs/provisioning-vm.md): iPXE script ≈ 2.5 s, marker ≈ 9 s (plus iPXE's IPv6
 * wait on a segment without a router); limits here are generous.
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Vm } from '../src/brokers/qemu/vm.js';
import { SLEDGE_MARKER } from '../src/provision/kernel.js';
import { BootLab, until } from './helpers/boot-lab.js';
import { writePack } from './helpers/endpoint.js';
import { bootArtifacts, logMilestone, vmDir } from './helpers/provision.js';

const MAC = '52:54:00:7a:6b:21';
const UUID = '3f0e2a41-7c9b-4d2e-8a16-5b4c3d2e1f0a';

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

describe('network boot through takt serve --dhcp full (netns, BIOS, virtio-net)', () => {
  const lab = new BootLab({ netnsPrefix: 'tkwire-', subnet: '10.218', dirPrefix: 'takt-e2e-' });
  const { netns, prefix } = lab;
  let vm: Vm | null = null;
  /** A takt CLI command inside the namespace (the API listens on its loopback). */
  const cli = (args: string[]) => lab.cli(args);

  beforeAll(async () => {
    await bootArtifacts();
    lab.open();
    await lab.serve(['--listen', '127.0.0.1:0', '--lease', '5s', '--provision', `${prefix}.1/24`, '--dhcp', 'full', '--dhcp-range', `${prefix}.100-${prefix}.150`, '--boot-port', '0']);
  }, 600_000);

  afterAll(async () => {
    await vm?.kill();
    await lab.stop();
  });

  it('an unknown MAC is told to boot from its disk', async () => {
    const r = await lab.get(`${lab.bootUrl}/boot/ipxe?mac=52:54:00:7a:6b:99&platform=pcbios`);
    expect(r.status).toBe(200);
    expect(r.body).toContain('booting from disk');
    expect(r.body).toContain('exit');
  }, 60_000);

  it('PXE-boots a known machine into its bootenv: DHCP, script, kernel and initrd all from takt', async () => {
    const { kernel, initramfs } = await bootArtifacts();
    const agent = join(lab.dir, 'agent.sh');
    writeFileSync(agent, 'echo "TAKT-AGENT: booted through takt"\n');
    writePack(join(lab.dir, 'pack'), {
      'pack.yaml': 'name: metal\nversion: 1.0.0\n',
      'bootenvs/sledge.yaml': [
        'name: sledge',
        'firmware: [bios]',
        `kernel: { name: vmlinuz, path: ${kernel.vmlinuz}, sha256: ${sha256(kernel.vmlinuz)} }`,
        `initrds:\n  - { name: sledge.cpio.gz, path: ${initramfs.path}, sha256: ${sha256(initramfs.path)} }`,
        `files:\n  - { name: agent, path: ${agent}, sha256: ${sha256(agent)} }`,
        'cmdline: console=ttyS0 quiet panic=-1 takt.url={{ boot.files.agent }}',
        '',
      ].join('\n'),
    });
    const inst = await cli(['content', 'install', join(lab.dir, 'pack')]);
    expect(inst.code, inst.stderr).toBe(0);
    const made = await cli(['machines', 'create', 'vm-1', '--environment', 'metal', '--mac', MAC, '--uuid', UUID, '--bootenv', 'sledge']);
    expect(made.code, made.stderr).toBe(0);
    // The artifacts are fetched when the pack is installed: all three kept before the machine powers on.
    await until(() => ((lab.output.match(/boot: kept bootenv 'sledge'/g) ?? []).length >= 3 ? true : undefined), 120_000, 'the bootenv artifacts to be kept', () => lab.output);

    vm = await Vm.start({
      name: 'e2e',
      dir: vmDir('e2e'),
      firmware: 'bios',
      smbios: { uuid: UUID, serial: 'TAKT-TEST-0021' },
      nic: { model: 'virtio-net-pci', mac: MAC, net: { kind: 'tap', netns, bridge: 'br0', tap: 'tap0' } },
    });
    // iPXE's "Configuring (net0 …)… ok": DHCP done, and IPv6 router discovery answered (takt's router
    // advertisements) or given up (TAKT_ROUTER_ADVERTS=off: 13-16 s later on a quiet machine).
    const configured = vm.waitForSerial(/Configuring \(net0[^)]*\)[. ]*ok/, 240_000);
    configured.catch(() => undefined);
    const marker = await vm.waitForSerial(new RegExp(SLEDGE_MARKER), 240_000, { failOn: /No bootable device|Could not boot image|Kernel panic|No more network devices/ });
    logMilestone(vm, `iPXE configured (router advertisements ${process.env.TAKT_ROUTER_ADVERTS ?? 'on'})`, (await configured).atMs);
    logMilestone(vm, 'init marker (PXE through takt)', marker.atMs);
    const ran = await vm.waitForSerial(/TAKT-AGENT: booted through takt/, 120_000);
    logMilestone(vm, 'agent script (a takt boot file) ran', ran.atMs);
    const lease = await vm.waitForSerial(/TAKT-SLEDGE: dhcp on \S+ (\S+)/, 10_000);
    expect(lease.groups[0]).toMatch(new RegExp(`^${prefix.replaceAll('.', '\\.')}\\.(1[0-4]\\d|150)/24$`));

    // takt's DHCP answered the VM by name (both iPXE and the initramfs' udhcpc), and its boot service
    // served vm-1 its bootenv.
    expect(lab.output).toMatch(/dhcp: offer vm-1: address 10\.218\.\d+\.\d+, arch 0, boot http:\/\/[^ ]*\/boot\/ipxe\?mac=\$\{net0\/mac\}/);
    expect(lab.output).toMatch(/dhcp: ack vm-1: address 10\.218\./);
    expect(lab.output).toContain('boot: vm-1 gets bootenv sledge');

    // The lease is listed by the API.
    const leases = (await lab.get(`${lab.endpoint}/api/v1/dhcp/leases`, { authorization: `Bearer ${lab.token}` })).body;
    const items = (JSON.parse(leases) as { items: Array<{ mac: string; ip: string; state: string }> }).items;
    expect(items).toContainEqual(expect.objectContaining({ mac: MAC, ip: lease.groups[0]!.replace(/\/24$/, ''), state: 'bound' }));
  }, 600_000);
});
