/**
 * Discovery end to end (issue #13 item 3): `takt bootenv build discovery --install` makes the discovery
 * environment from Debian packages (kernel + an initramfs with the takt agent bundle); `takt serve
 * --provision … --dhcp full --listen ADDR:8443` runs in a network namespace `tkdisc-…`; a BIOS VM that no
 * machine boots as PXE-boots, gets the discovery bootenv with a discovery credential, the API URL and the
 * CA fingerprint on its kernel command line, registers over TLS (pinning the CA), and becomes machine
 * `metal-<mac>` with its inventory: the MAC and SMBIOS UUID and serial set on qemu, its NIC with driver
 * and link, its disk. A classification rule gives it a pipeline as it registers, and it runs it in
 * memory, in the discovery environment, to done.
 * Figures (TCG, never a quiet machine): /init at 19.4 s and registered at 34.7 s at load 2–4.6; the phases
 * and where the time goes are in docs/performance.md "Discovery boot" (`npm run bench -- discover`).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Vm } from '../src/brokers/qemu/vm.js';
import type { Machine } from '../src/model/machine.js';
import { DISCOVERY_MARKER } from '../src/provision/discovery-env.js';
import { BootLab, until } from './helpers/boot-lab.js';
import { writePack } from './helpers/endpoint.js';
import { bootArtifacts, logMilestone, vmDir } from './helpers/provision.js';

const MAC = '52:54:00:d1:5c:07';
const UUID = '6a1f3c2e-9b8d-4e7f-a1b2-c3d4e5f60718';
const SERIAL = 'TAKT-DISC-0007';

describe('discovery: an unknown VM boots takt\'s discovery environment, registers with its inventory and runs a pipeline', () => {
  const lab = new BootLab({ netnsPrefix: 'tkdisc-', subnet: '10.221', dirPrefix: 'takt-disc-' });
  const { netns, prefix } = lab;
  let vm: Vm | null = null;
  const cli = (args: string[], timeoutMs = 60_000) => lab.cli(args, timeoutMs);
  const machine = async (name: string): Promise<Machine | undefined> => {
    const r = await cli(['machines', 'get', name, '-o', 'json']);
    return r.code === 0 ? (JSON.parse(r.stdout) as Machine) : undefined;
  };

  beforeAll(async () => {
    await bootArtifacts(); // the Debian kernel, cached for every provisioning test
    lab.open();
    await lab.serve(['--listen', '127.0.0.1:0', '--listen', `${prefix}.1:8443`, '--lease', '10s', '--provision', `${prefix}.1/24`, '--dhcp', 'full', '--dhcp-range', `${prefix}.100-${prefix}.150`, '--boot-port', '0']);
  }, 600_000);

  afterAll(async () => {
    await vm?.kill();
    await lab.stop();
  });

  it('builds and installs the discovery bootenv from Debian packages', async () => {
    // The pack goes in the provisioning cache (TAKT_PROVISION_CACHE): built once per set of inputs.
    const r = await cli(['bootenv', 'build', 'discovery', '--install', '-o', 'json'], 540_000);
    expect(r.code, r.stderr).toBe(0);
    const env = JSON.parse(r.stdout) as { version: string; initrd: { bytes: number }; installed: { name: string; version: string } };
    expect(env.installed).toEqual(expect.objectContaining({ name: 'discovery', version: env.version }));
    expect(env.initrd.bytes).toBeGreaterThan(10 << 20); // Node is in it
    await until(() => ((lab.output.match(/boot: kept bootenv 'discovery'/g) ?? []).length >= 2 ? true : undefined), 180_000, 'the discovery artifacts to be kept', () => lab.output);
  }, 600_000);

  it('an unknown VM PXE-boots into discovery, registers as metal-<mac> with its inventory, is classified, and runs its pipeline in memory', async () => {
    writePack(join(lab.dir, 'site'), {
      'pack.yaml': 'name: site\nversion: 1.0.0\n',
      'tasks/inventory-check.yaml': [
        'name: inventory-check',
        'script: |',
        '  set -eu',
        '  grep -q takt.bootenv=discovery /proc/cmdline',
        '  echo "running in $(cat /sys/class/dmi/id/product_serial) from memory"',
        '',
      ].join('\n'),
      'stages/check.yaml': 'name: check\ntasks: [inventory-check]\n',
      'pipelines/burn-in.yaml': 'name: burn-in\nstages: [check]\nenvironments: [metal]\n',
      // Classified as it registers: this VM by its SMBIOS serial and NIC driver.
      'classifiers/site.yaml': `name: site\nrules:\n  - name: test-vms\n    match: [system.serial=${SERIAL}, "nics[].driver=virtio_net"]\n    pipeline: burn-in\n`,
    });
    const inst = await cli(['content', 'install', join(lab.dir, 'site')]);
    expect(inst.code, inst.stderr).toBe(0);

    vm = await Vm.start({
      name: 'disc',
      dir: vmDir('disc'),
      firmware: 'bios',
      memoryMiB: 1024,
      smbios: { uuid: UUID, serial: SERIAL },
      nic: { model: 'virtio-net-pci', mac: MAC, net: { kind: 'tap', netns, bridge: 'br0', tap: 'tap0' } },
    });
    const init = await vm.waitForSerial(new RegExp(`${DISCOVERY_MARKER} init started`), 300_000, { failOn: /No bootable device|Could not boot image|Kernel panic|No more network devices/ });
    logMilestone(vm, 'discovery /init', init.atMs);
    const registered = await vm.waitForSerial(new RegExp(`${DISCOVERY_MARKER} (registered with https://${prefix.replaceAll('.', '\\.')}\\.1:8443|registration failed)`), 240_000);
    logMilestone(vm, 'registered', registered.atMs);
    expect(registered.line, vm.serial()).toContain('registered with');
    expect(lab.output).toContain('boot: 52:54:00:d1:5c:07 gets bootenv discovery');

    const name = `metal-${MAC.replace(/:/g, '')}`;
    const m = await until(async () => {
      const got = await machine(name);
      return got?.facts?.system ? got : undefined;
    }, 120_000, `${name} with its facts`, () => vm!.serial());
    expect(m.environment).toBe('metal');
    expect(m.boot).toEqual(expect.objectContaining({ macs: [MAC], uuid: UUID, bootenv: 'discovery' }));
    expect(m.facts).toEqual(expect.objectContaining({ macs: [MAC], productUuid: UUID, bootenv: 'discovery' }));
    expect(m.facts!.system).toEqual(expect.objectContaining({ serial: SERIAL, vendor: 'QEMU' }));
    expect(m.facts!.nics).toEqual([expect.objectContaining({ mac: MAC, driver: 'virtio_net', link: 'up' })]);

    expect(m.classification).toEqual(expect.objectContaining({ rule: 'test-vms', pack: 'site' }));
    expect(lab.output).toMatch(/discovery: metal-525400d15c07 registered; classified by rule test-vms \(site\)/);
    const done = await cli(['machines', 'wait', name, '--until', 'done', '--timeout', '300s'], 330_000);
    expect(done.code, `${done.stdout}${done.stderr}\n${vm.serial()}`).toBe(0);
    const log = await cli(['jobs', 'list', '--machine', name, '-o', 'json']);
    const jobs = JSON.parse(log.stdout) as Array<{ id: string; task: string; state: string }>;
    expect(jobs.map((j) => [j.task, j.state])).toEqual([['inventory-check', 'succeeded']]);
    const out = await cli(['jobs', 'log', jobs[0]!.id]);
    expect(out.stdout).toContain(`running in ${SERIAL} from memory`);
  }, 900_000);
});
