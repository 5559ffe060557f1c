/**
 * Inventory: the parsers for /etc/os-release, /proc/cpuinfo, /proc/meminfo, machine-id, SMBIOS UUID and
 * MACs on sample text (table-driven), and a whole host read from a sample /proc, /sys and /etc tree.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { addressesOf, bootenvOf, collectFacts, linkOf, parseCpuInfo, parseMac, parseMachineId, parseMemTotal, parseOsRelease, parseProductUuid, type InventorySources } from '../src/agent/inventory.js';
import { FactsSchema } from '../src/model/facts.js';
import { validateValue } from '../src/model/validate.js';

describe('os-release', () => {
  it.each([
    [
      'Debian 12',
      'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nVERSION="12 (bookworm)"\nID=debian\nHOME_URL="https://www.debian.org/"\n',
      { id: 'debian', versionId: '12', prettyName: 'Debian GNU/Linux 12 (bookworm)', idLike: [] },
    ],
    [
      'Ubuntu with ID_LIKE',
      'NAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\nID_LIKE=debian\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\n',
      { id: 'ubuntu', versionId: '22.04', prettyName: 'Ubuntu 22.04.4 LTS', idLike: ['debian'] },
    ],
    [
      'Rocky: several ID_LIKE, quoted',
      'NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"\nPRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\n',
      { id: 'rocky', versionId: '9.3', prettyName: 'Rocky Linux 9.3 (Blue Onyx)', idLike: ['rhel', 'centos', 'fedora'] },
    ],
    ['single quotes, escapes, comments', "# comment\nID='alpine'\nPRETTY_NAME=\"say \\\"hi\\\" \\$x\"\n\n", { id: 'alpine', versionId: null, prettyName: 'say "hi" $x', idLike: [] }],
    ['empty', '', { id: null, versionId: null, prettyName: null, idLike: [] }],
    ['garbage', 'not=an os-release\n=x\nID', { id: null, versionId: null, prettyName: null, idLike: [] }],
  ])('%s', (_what, text, os) => {
    expect(parseOsRelease(text)).toEqual(os);
  });
});

describe('/proc and /etc files', () => {
  const cpuinfo = (n: number) =>
    Array.from({ length: n }, (_, i) => `processor\t: ${i}\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\ncpu MHz\t\t: 2445.404\n`).join('\n');
  it.each([
    ['two CPUs', cpuinfo(2), { model: 'AMD EPYC 7763 64-Core Processor', count: 2 }],
    ['one CPU', cpuinfo(1), { model: 'AMD EPYC 7763 64-Core Processor', count: 1 }],
    ['ARM (no model name)', 'processor\t: 0\nBogoMIPS\t: 50.00\n\nprocessor\t: 1\nBogoMIPS\t: 50.00\n', { model: null, count: 2 }],
    ['empty', '', { model: null, count: 0 }],
  ])('cpuinfo: %s', (_what, text, cpu) => {
    expect(parseCpuInfo(text)).toEqual(cpu);
  });

  it.each([
    ['MemTotal:       24576000 kB\nMemFree:         1000 kB\n', 24576000 * 1024],
    ['MemFree: 1 kB\n', null],
    ['', null],
  ])('meminfo %j → %s bytes', (text, bytes) => {
    expect(parseMemTotal(text)).toBe(bytes);
  });

  it.each([
    ['3d1219c7c4c5404aaa1f6d2a48adfda4\n', '3d1219c7c4c5404aaa1f6d2a48adfda4'],
    ['3D1219C7C4C5404AAA1F6D2A48ADFDA4', '3d1219c7c4c5404aaa1f6d2a48adfda4'],
    ['uninitialized\n', null],
    ['00000000000000000000000000000000', null],
    ['3d1219c7-c4c5-404a-aa1f-6d2a48adfda4', null],
    ['', null],
  ])('machine-id %j → %s', (text, id) => {
    expect(parseMachineId(text)).toBe(id);
  });

  it.each([
    ['4C4C4544-0042-3510-8052-B4C04F4E4E32\n', '4c4c4544-0042-3510-8052-b4c04f4e4e32'],
    ['00000000-0000-0000-0000-000000000000', null],
    ['FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF', null],
    ['Not Settable', null],
  ])('product_uuid %j → %s', (text, id) => {
    expect(parseProductUuid(text)).toBe(id);
  });

  it.each([
    ['52:54:00:AB:cd:01\n', '52:54:00:ab:cd:01'],
    ['00:00:00:00:00:00', null],
    ['52:54:00:ab:cd', null],
    ['', null],
  ])('MAC %j → %s', (text, mac) => {
    expect(parseMac(text)).toBe(mac);
  });

  it('addresses skip loopback and carry the prefix length', () => {
    expect(
      addressesOf({
        lo: [{ address: '127.0.0.1', netmask: '255.0.0.0', family: 'IPv4', mac: '00:00:00:00:00:00', internal: true, cidr: '127.0.0.1/8' }],
        eth0: [
          { address: '10.250.1.2', netmask: '255.255.255.0', family: 'IPv4', mac: '52:54:00:00:00:01', internal: false, cidr: '10.250.1.2/24' },
          { address: 'fe80::1', netmask: 'ffff:ffff:ffff:ffff::', family: 'IPv6', mac: '52:54:00:00:00:01', internal: false, cidr: 'fe80::1/64', scopeid: 2 },
        ],
      }),
    ).toEqual([
      { interface: 'eth0', address: '10.250.1.2', family: 'IPv4', prefix: 24 },
      { interface: 'eth0', address: 'fe80::1', family: 'IPv6', prefix: 64 },
    ]);
  });
});

describe('a whole host from a sample tree', () => {
  const root = mkdtempSync(join(tmpdir(), 'takt-inventory-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const file = (path: string, text: string) => {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  };
  const sources = (over: Partial<InventorySources> = {}): InventorySources => ({
    root,
    hostname: () => 'web-1',
    release: () => '6.1.0-18-amd64',
    machine: () => 'x86_64',
    cpus: () => [{ model: 'fallback model' }],
    totalmem: () => 123,
    networkInterfaces: () => ({ eth0: [{ address: '10.250.1.2', netmask: '255.255.255.0', family: 'IPv4', mac: '52:54:00:00:00:01', internal: false, cidr: '10.250.1.2/24' }] }),
    ...over,
  });

  it('reads identity, OS, CPU, memory, hardware MACs and real disks', async () => {
    file('etc/os-release', 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n');
    file('etc/machine-id', '0123456789abcdef0123456789abcdef\n');
    file('sys/class/dmi/id/product_uuid', '12345678-1234-1234-1234-123456789ABC\n');
    file('proc/cpuinfo', 'processor\t: 0\nmodel name\t: Intel Xeon\n\nprocessor\t: 1\nmodel name\t: Intel Xeon\n');
    file('proc/meminfo', 'MemTotal:        2048 kB\n');
    // eth0 is a device; br0 and veth1 are not (no device link), lo never counts.
    file('sys/class/net/eth0/address', '52:54:00:00:00:01\n');
    mkdirSync(join(root, 'sys/devices/pci0000:00/virtio0'), { recursive: true });
    symlinkSync(join(root, 'sys/devices/pci0000:00/virtio0'), join(root, 'sys/class/net/eth0/device'));
    file('sys/class/net/br0/address', '52:54:00:00:00:99\n');
    file('sys/class/net/lo/address', '00:00:00:00:00:00\n');
    file('sys/block/vda/size', '20971520\n');
    file('sys/block/vda/queue/rotational', '0\n');
    file('sys/block/sda/size', '1953525168\n');
    file('sys/block/sda/device/model', 'ST1000DM010-2EP1\n');
    file('sys/block/sda/queue/rotational', '1\n');
    file('sys/block/loop0/size', '100\n');
    file('sys/block/dm-0/size', '100\n');
    file('sys/class/dmi/id/sys_vendor', 'QEMU\n');
    file('sys/class/dmi/id/product_name', 'Standard PC (i440FX + PIIX, 1996)\n');
    file('sys/class/dmi/id/product_serial', 'TAKT-0001\n');
    file('sys/class/net/eth0/operstate', 'up\n');
    file('sys/class/net/eth0/speed', '-1\n');
    mkdirSync(join(root, 'sys/bus/virtio/drivers/virtio_net'), { recursive: true });
    symlinkSync(join(root, 'sys/bus/virtio/drivers/virtio_net'), join(root, 'sys/devices/pci0000:00/virtio0/driver'));
    file('proc/cmdline', 'console=ttyS0 quiet takt.bootenv=discovery takt.api=https://10.0.0.1:8443\n');
    const facts = await collectFacts(sources(), '9.9.9');
    expect(facts).toEqual({
      hostname: 'web-1',
      machineId: '0123456789abcdef0123456789abcdef',
      productUuid: '12345678-1234-1234-1234-123456789abc',
      macs: ['52:54:00:00:00:01'],
      addresses: [{ interface: 'eth0', address: '10.250.1.2', family: 'IPv4', prefix: 24 }],
      os: { id: 'debian', versionId: '12', prettyName: 'Debian GNU/Linux 12 (bookworm)', idLike: [] },
      kernel: '6.1.0-18-amd64',
      arch: 'x86_64',
      cpu: { model: 'Intel Xeon', count: 2 },
      memoryBytes: 2048 * 1024,
      disks: [
        { name: 'sda', sizeBytes: 1953525168 * 512, model: 'ST1000DM010-2EP1', rotational: true },
        { name: 'vda', sizeBytes: 20971520 * 512, model: null, rotational: false },
      ],
      agentVersion: '9.9.9',
      system: { vendor: 'QEMU', product: 'Standard PC (i440FX + PIIX, 1996)', serial: 'TAKT-0001' },
      nics: [{ name: 'eth0', mac: '52:54:00:00:00:01', driver: 'virtio_net', link: 'up', speedMbps: null }],
      bootenv: 'discovery',
    });
    expect(validateValue(FactsSchema, facts)).toEqual([]);
  });

  it.each([
    ['up', 'up'],
    ['down', 'down'],
    ['lowerlayerdown', 'down'],
    ['dormant', 'unknown'],
    [null, 'unknown'],
  ] as const)('operstate %s is link %s', (operstate, want) => {
    expect(linkOf(operstate)).toBe(want);
  });

  it.each([
    ['console=ttyS0 takt.bootenv=discovery', 'discovery'],
    ['takt.bootenv=Bad!', null],
    ['BOOT_IMAGE=/vmlinuz root=/dev/sda1', null],
    ['', null],
  ])('the bootenv of command line %j is %j', (cmdline, want) => {
    expect(bootenvOf(cmdline)).toBe(want);
  });

  it('falls back to os and /etc/hostname when /proc, /sys or the kernel name say nothing, and stays within the schema', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'takt-inventory-empty-'));
    try {
      writeFileSync(join(empty, 'hostname'), 'x');
      mkdirSync(join(empty, 'etc'));
      writeFileSync(join(empty, 'etc/hostname'), 'from-file\n');
      const facts = await collectFacts(sources({ root: empty, hostname: () => '', cpus: () => [{ model: ' Fallback CPU ' }, { model: 'x' }], release: () => 'r'.repeat(1000) }));
      expect(facts).toMatchObject({ hostname: 'from-file', machineId: null, productUuid: null, macs: [], disks: [], cpu: { model: 'Fallback CPU', count: 2 }, memoryBytes: 123 });
      expect(facts.kernel).toHaveLength(256);
      expect(validateValue(FactsSchema, facts)).toEqual([]);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('this host, read for real, fits the schema', async () => {
    const facts = await collectFacts();
    expect(validateValue(FactsSchema, facts)).toEqual([]);
    expect(facts.cpu.count).toBeGreaterThan(0);
    expect(facts.memoryBytes).toBeGreaterThan(0);
  });
});
