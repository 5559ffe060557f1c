/**
 * Direct kernel boot (qemu -kernel/-initrd, no firmware network boot) of Debian's kernel with takt's busybox
 * initramfs: /init prints its marker, takes a DHCP lease from qemu's user-mode network and fetches and runs
 * the script named by `takt.url=` from an HTTP server on this host's loopback.
 * Quiet-machine times (docs/provisioning-vm.md): marker ≈ 5 s, script ≈ 8 s; limits are ~4× that and more.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Vm } from '../src/brokers/qemu/vm.js';
import { SLEDGE_MARKER } from '../src/provision/kernel.js';
import { bootArtifacts, fileServer, HOST_FROM_GUEST, logMilestone, removeVmDirs, vmDir, type FileServer } from './helpers/provision.js';

describe('direct kernel boot of the busybox initramfs', () => {
  let http: FileServer;
  let vm: Vm | null = null;

  beforeAll(async () => {
    await bootArtifacts();
    http = await fileServer();
  }, 600_000);

  afterAll(async () => {
    await vm?.kill();
    await http?.close();
    removeVmDirs();
  });

  // Both NIC models: the initramfs carries virtio_net and e1000 (with their dependencies).
  it.each([
    ['virtio-net-pci', '52:54:00:12:34:01'],
    ['e1000', '52:54:00:12:34:05'],
  ] as const)('%s: reaches the marker, gets a lease and runs the fetched script', async (model, mac) => {
    const { kernel, initramfs } = await bootArtifacts();
    await vm?.kill();
    const before = http.requests.length;
    http.route(/^\/agent\.sh$/, () => 'echo "TAKT-AGENT: hello from $(uname -r)"\n');
    vm = await Vm.start({
      name: `direct-${model}`,
      dir: vmDir('direct'),
      firmware: 'bios',
      nic: { model, mac, net: { kind: 'user' } },
      kernel: { path: kernel.vmlinuz, initrd: initramfs.path, append: `console=ttyS0 quiet panic=-1 takt.url=http://${HOST_FROM_GUEST}:${http.port}/agent.sh` },
    });
    const marker = await vm.waitForSerial(new RegExp(SLEDGE_MARKER), 60_000);
    logMilestone(vm, 'init marker', marker.atMs);
    const lease = await vm.waitForSerial(/TAKT-SLEDGE: dhcp (on|failed)/, 60_000);
    logMilestone(vm, 'dhcp', lease.atMs);
    expect(lease.line).toMatch(new RegExp(`dhcp on eth0 10\\.0\\.2\\.\\d+/24 mac ${mac}`));
    const agent = await vm.waitForSerial(/TAKT-AGENT: hello from (\S+)/, 60_000);
    logMilestone(vm, 'agent script ran', agent.atMs);
    expect(agent.groups[0]).toBe(kernel.release);
    expect(http.requests.slice(before)).toContain('/agent.sh');
  }, 240_000);
});
