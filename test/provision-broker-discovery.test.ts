/**
 * A qemu-broker VM booting discovery, end to end (issue #13, docs/provisioning.md "From nothing to a
 * discovered VM running a pipeline"): `takt serve --provision … --dhcp full --qemu-bridge tkbd0` runs in a
 * network namespace `tkbd-…` (bridge tkbd0 at 10.233.N.1/24); the discovery bootenv is built and installed;
 * a pack's classifier (`system.vendor=QEMU`) gives a pipeline whose task runs in the discovery environment
 * (environment metal) and sets outputs. `machines create vm-1 --broker qemu --firmware bios --bootenv
 * discovery` → the VM's iPXE ROM gets takt's DHCP and the discovery script by the MAC the broker chose →
 * the in-memory environment registers with the discovery credential → discovery claims the broker's
 * machine (vm-1, not a new metal-<mac>) with facts carrying the broker's MAC, UUID and serial → classified
 * → the task runs → `machines wait vm-1 --until done`. Then `machines delete vm-1` leaves no qemu, tap or
 * VM directory. Figures (TCG): by hand at load 2–4, create → registered ≈ 41 s, → done ≈ 59 s; this test
 * at load 7–9, registered at 56–83 s, done at 76–116 s. The bounds below are about 4× the quiet ones.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tapName } from '../src/brokers/qemu/broker.js';
import { qemuPidOf } from '../src/brokers/qemu/vm.js';
import type { Machine } from '../src/model/machine.js';
import { BootLab, until } from './helpers/boot-lab.js';
import { writePack } from './helpers/endpoint.js';

describe('a qemu broker VM boots discovery: registers as itself, is classified and runs its pipeline', () => {
  // Short names: the VM's QMP socket path lives under the data dir (108-byte limit).
  const lab = new BootLab({ netnsPrefix: 'tkbd-', subnet: '10.233', dirPrefix: 'tkbd-', dataName: 'd', bridgeName: 'tkbd0', cliTimeoutMs: 120_000 });
  const { netns, bridge } = lab;
  const cli = (args: string[], timeoutMs?: number) => lab.cli(args, timeoutMs);
  const links = () => execFileSync('ip', ['-n', netns, '-o', 'link', 'show', 'master', bridge], { encoding: 'utf8', timeout: 10_000 });
  let serialLog = '';
  const console_ = () => (serialLog && existsSync(serialLog) ? readFileSync(serialLog, 'utf8').slice(-4000) : '(no serial log)');
  const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');

  beforeAll(async () => {
    await lab.startVms();
  }, 600_000);

  afterAll(() => lab.close(), 60_000);

  it('builds and installs the discovery bootenv', async () => {
    const r = await cli(['bootenv', 'build', 'discovery', '--install', '-o', 'json'], 540_000);
    expect(r.code, r.stderr).toBe(0);
    const env = JSON.parse(r.stdout) as { version: string; installed: { name: string; version: string } };
    expect(env.installed).toEqual(expect.objectContaining({ name: 'discovery', version: env.version }));
    await until(() => ((lab.output.match(/boot: kept bootenv 'discovery'/g) ?? []).length >= 2 ? true : undefined), 180_000, 'the discovery artifacts to be kept', () => lab.output);
  }, 600_000);

  it('machines create vm-1 --broker qemu --bootenv discovery → registered as vm-1 with its facts → classified → done; delete cleans up', async () => {
    writePack(join(lab.dir, 'site'), {
      'pack.yaml': 'name: site\nversion: 1.0.0\n',
      'tasks/inventory.yaml': [
        'name: inventory',
        'outputs:',
        '  serial: { type: string }',
        '  bootenv: { type: string }',
        'expect:',
        '  - { param: bootenv, equals: discovery }',
        'script: |',
        '  set -eu',
        '  takt-set serial "$(cat /sys/class/dmi/id/product_serial)"',
        "  takt-set bootenv \"$(tr ' ' '\\n' < /proc/cmdline | sed -n 's/^takt\\.bootenv=//p')\"",
        '  echo "inventory of $(cat /sys/class/dmi/id/product_serial), from memory"',
        '',
      ].join('\n'),
      'stages/check.yaml': 'name: check\ntasks: [inventory]\n',
      'pipelines/burn-in.yaml': 'name: burn-in\nstages: [check]\nenvironments: [metal]\n',
      // The doc's classifier: any qemu VM.
      'classifiers/site.yaml': 'name: site\nrules:\n  - name: vms\n    match: [system.vendor=QEMU]\n    pipeline: burn-in\n',
    });
    const inst = await cli(['content', 'install', join(lab.dir, 'site')]);
    expect(inst.code, inst.stderr).toBe(0);

    const t0 = Date.now();
    const made = await cli(['machines', 'create', 'vm-1', '--broker', 'qemu', '--firmware', 'bios', '--memory', '1024', '--disk-size', '1', '--bootenv', 'discovery', '-o', 'json']);
    expect(made.code, made.stderr + lab.output).toBe(0);
    expect(made.stderr).not.toMatch(/no --qemu-bridge/);
    const vm = (JSON.parse(made.stdout) as Machine[])[0]!;
    const mac = vm.boot!.macs[0]!;
    const uuid = vm.boot!.uuid!;
    expect(vm.boot).toEqual(expect.objectContaining({ firmware: 'bios', bootenv: 'discovery' }));
    const vmDir = join(lab.data, 'qemu', vm.id);
    serialLog = join(vmDir, 'serial.log');
    const detail = () => `${lab.output}\n--- serial ---\n${console_()}`;
    const seen = (re: RegExp, ms: number, what: string) => until(() => (re.test(lab.output) ? Date.now() - t0 : undefined), ms, what, detail);

    const script = await seen(/boot: vm-1 gets bootenv discovery/, 120_000, "vm-1's discovery boot script");
    const registered = await seen(/discovery: vm-1 registered/, 240_000, 'vm-1 to register from discovery');
    const done = await cli(['machines', 'wait', 'vm-1', '--until', 'done', '--timeout', '300s'], 330_000);
    const doneAt = Date.now() - t0;
    expect(done.code, `${done.stdout}${done.stderr}\n${detail()}`).toBe(0);
    console.log(`[provision] broker vm-1: script at ${(script / 1000).toFixed(1)} s, registered at ${(registered / 1000).toFixed(1)} s, done at ${(doneAt / 1000).toFixed(1)} s after create (load ${load()})`);

    // Discovery claimed the broker's machine: no metal-<mac> twin.
    const list = JSON.parse((await cli(['machines', 'list', '-o', 'json'])).stdout) as Machine[];
    expect(list.map((m) => m.name)).toEqual(['vm-1']);
    expect(lab.output).toMatch(/discovery: vm-1 registered; classified by rule vms \(site\)/);

    const m = JSON.parse((await cli(['machines', 'get', 'vm-1', '-o', 'json'])).stdout) as Machine;
    expect(m.id).toBe(vm.id);
    expect(m.environment).toBe('metal');
    expect(m.boot).toEqual(expect.objectContaining({ macs: [mac], uuid, bootenv: 'discovery' }));
    // The facts the discovery agent reported carry the identity the broker chose (the serial is its id).
    expect(m.facts).toEqual(expect.objectContaining({ macs: [mac], productUuid: uuid, bootenv: 'discovery' }));
    expect(m.facts!.system).toEqual(expect.objectContaining({ vendor: 'QEMU', serial: vm.id }));
    expect(m.facts!.nics).toEqual([expect.objectContaining({ mac, driver: 'virtio_net', link: 'up' })]);
    expect(m.classification).toEqual(expect.objectContaining({ pack: 'site', classifier: 'site', rule: 'vms', by: `discovery:${mac}` }));
    expect(m.classification!.gave).toEqual(expect.objectContaining({ pipeline: 'burn-in' }));
    expect(m.pipeline).toBe('burn-in');

    // The task ran in the discovery environment, on this VM, and its outputs are recorded.
    const jobs = JSON.parse((await cli(['jobs', 'list', '--machine', 'vm-1', '-o', 'json'])).stdout) as Array<{ id: string; task: string; state: string; outputs: Record<string, unknown> }>;
    expect(jobs.map((j) => [j.task, j.state])).toEqual([['inventory', 'succeeded']]);
    expect(jobs[0]!.outputs).toEqual({ serial: vm.id, bootenv: 'discovery' });
    const log = await cli(['jobs', 'log', jobs[0]!.id]);
    expect(log.stdout).toContain(`inventory of ${vm.id}, from memory`);

    // Delete: qemu ended, its tap and directory gone.
    const pid = qemuPidOf(vmDir);
    expect(pid).not.toBeNull();
    expect(links()).toContain(tapName(vm.id));
    const del = await cli(['machines', 'delete', 'vm-1']);
    expect(del.code, del.stderr).toBe(0);
    expect(existsSync(vmDir)).toBe(false);
    expect(links()).not.toContain(tapName(vm.id));
    expect(!existsSync(`/proc/${pid}`) || /\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))).toBe(true);
    expect(lab.killBrokerVms()).toEqual([]);
  }, 900_000);
});
