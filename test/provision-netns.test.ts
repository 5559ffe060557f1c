/**
 * A VM on a tap in a private network namespace (the topology the provisioning network uses): qemu runs in
 * namespace tkvm-…, its tap on the namespace's bridge; dnsmasq there hands out the lease and a small HTTP
 * server there serves the agent script. Direct kernel boot of the busybox initramfs, virtio-net.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Vm } from '../src/brokers/qemu/vm.js';
import { bootArtifacts, bootSegment, logMilestone, removeVmDirs, vmDir, type BootSegment } from './helpers/provision.js';

const MAC = '52:54:00:7a:6b:04';

describe('a VM on a tap in a network namespace', () => {
  let seg: BootSegment;
  let vm: Vm | null = null;

  beforeAll(async () => {
    await bootArtifacts();
    seg = await bootSegment();
    const p = seg.prefix;
    seg.spawnIn(['dnsmasq', '--keep-in-foreground', '--port=0', '--interface=br0', '--bind-interfaces', '--no-ping', '--leasefile-ro',
      '--conf-file=/dev/null', `--dhcp-range=${p}.50,${p}.99,255.255.255.0,1h`, `--dhcp-host=${MAC},${p}.60`, '--log-dhcp']);
    const server = `require('node:http').createServer((q,s)=>s.end('echo "TAKT-AGENT: on the segment as "$(cat /tmp/lease)\\n')).listen(8080,'${p}.1',()=>console.log('listening'))`;
    const http = seg.spawnIn([process.execPath, '-e', server]);
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('the segment HTTP server did not start within 20 s')), 20_000);
      http.stdout!.once('data', () => { clearTimeout(t); resolve(); });
    });
  }, 600_000);

  afterAll(async () => {
    await vm?.kill();
    await seg?.close();
    removeVmDirs();
  });

  it('gets its reserved lease from the segment and fetches its script there', async () => {
    const { kernel, initramfs } = await bootArtifacts();
    vm = await Vm.start({
      name: 'netns',
      dir: vmDir('netns'),
      firmware: 'bios',
      nic: { model: 'virtio-net-pci', mac: MAC, net: { kind: 'tap', netns: seg.netns, bridge: seg.bridge, tap: 'tap0' } },
      kernel: { path: kernel.vmlinuz, initrd: initramfs.path, append: `console=ttyS0 quiet panic=-1 takt.url=http://${seg.prefix}.1:8080/agent` },
    });
    const lease = await vm.waitForSerial(/TAKT-SLEDGE: dhcp (on|failed)/, 90_000);
    logMilestone(vm, 'dhcp on the segment', lease.atMs);
    expect(lease.line).toContain(`dhcp on eth0 ${seg.prefix}.60/24 mac ${MAC}`);
    const agent = await vm.waitForSerial(/TAKT-AGENT: on the segment as (\S+)/, 60_000);
    expect(agent.groups[0]).toBe(`${seg.prefix}.60/24`);
    // A restarted endpoint finds the running qemu by its pid file and can end it.
    const adopted = Vm.adopt(vm.spec);
    expect(adopted?.pid).toBe(vm.pid);
    expect(adopted?.alive).toBe(true);
    await adopted!.kill();
    expect(await vm.waitExit(10_000)).toBe(true);
    expect(Vm.adopt(vm.spec)).toBeNull();
    await vm.kill();
    // The tap went with the VM.
    const { execFileSync } = await import('node:child_process');
    expect(execFileSync('ip', ['-n', seg.netns, '-o', 'link', 'show'], { encoding: 'utf8' })).not.toContain('tap0');
  }, 300_000);
});
