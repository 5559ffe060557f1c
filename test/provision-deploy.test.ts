/**
 * An image deploy end to end on a real VM (issue #14 "Deploy"; docs/provisioning.md "Deploying an
 * image"): `takt serve --provision … --dhcp full --qemu-bridge` in a network namespace; the discovery
 * bootenv built and installed, and the same environment as a bootable disk image (`takt bootenv build
 * discovery --disk-image`) imported into the image catalog. A qemu broker VM (BIOS) boots discovery and
 * runs a pipeline whose first stage writes the image to its disk (`takt-image write`; the agent streams
 * it, checks its sha256 and writes the disk's join block), and whose second stage needs bootenv `local`:
 * the agent reboots, SeaBIOS boots the disk, the deployed OS joins as the same machine with the join block
 * (a new token; the block zeroed), and runs the stage there. The disk then equals the image
 * (`qemu-img compare`). Figures are printed with the load average.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Machine } from '../src/model/machine.js';
import { BootLab, until } from './helpers/boot-lab.js';
import { writePack } from './helpers/endpoint.js';

describe('deploying an image to a VM: written from discovery, booted from disk, joined as itself', () => {
  const lab = new BootLab({ netnsPrefix: 'tkdy-', subnet: '10.234', dirPrefix: 'tkdy-', dataName: 'd', bridgeName: 'tkdy0', cliTimeoutMs: 120_000 });
  const cli = (args: string[], timeoutMs?: number) => lab.cli(args, timeoutMs);
  let serialLog = '';
  const console_ = () => (serialLog && existsSync(serialLog) ? readFileSync(serialLog, 'utf8').slice(-4000) : '(no serial log)');
  const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');
  let image = '';

  beforeAll(async () => {
    await lab.startVms();
  }, 600_000);

  afterAll(() => lab.close(), 60_000);

  it('builds discovery and its disk image; installs the one, imports the other', async () => {
    image = join(lab.dir, 'agent-os.img');
    const r = await cli(['bootenv', 'build', 'discovery', '--install', '--disk-image', image, '-o', 'json'], 540_000);
    expect(r.code, r.stderr).toBe(0);
    const built = JSON.parse(r.stdout) as { diskImage: { path: string; sha256: string; size: number } };
    expect(built.diskImage).toMatchObject({ path: image });
    const imp = await cli(['images', 'import', 'agent-os@1.0.0', image, '-o', 'json'], 300_000);
    expect(imp.code, imp.stderr).toBe(0);
    expect(JSON.parse(imp.stdout)).toMatchObject({ name: 'agent-os', version: '1.0.0', sha256: built.diskImage.sha256, format: 'raw', partitionTable: 'mbr' });
    await until(() => ((lab.output.match(/boot: kept bootenv 'discovery'/g) ?? []).length >= 2 ? true : undefined), 180_000, 'the discovery artifacts to be kept', () => lab.output);
  }, 900_000);

  it('vm-1: discovery → image written → reboot from disk → the deployed OS joins as vm-1 → its stage runs there; the disk equals the image', async () => {
    writePack(join(lab.dir, 'site'), {
      'pack.yaml': 'name: site\nversion: 1.0.0\n',
      'tasks/write-disk.yaml': 'name: write-disk\nscript: |\n  set -eu\n  takt-image write agent-os@1.0.0 /dev/vda\n',
      'stages/write.yaml': 'name: write\ntasks: [write-disk]\n',
      'tasks/verify.yaml': [
        'name: verify',
        'outputs:',
        '  boot: { type: string }',
        '  root: { type: string }',
        'script: |',
        '  set -eu',
        "  takt-set boot \"$(tr ' ' '\\n' < /proc/cmdline | sed -n 's/^takt\\.boot=//p')\"",
        '  takt-set root "$(cat /sys/class/dmi/id/product_serial)"',
        '',
      ].join('\n'),
      'stages/installed.yaml': 'name: installed\nbootenv: local\ntasks: [verify]\n',
      'pipelines/deploy.yaml': 'name: deploy\nstages: [write, installed]\nenvironments: [metal]\n',
    });
    const inst = await cli(['content', 'install', join(lab.dir, 'site')]);
    expect(inst.code, inst.stderr).toBe(0);

    const t0 = Date.now();
    const made = await cli(['machines', 'create', 'vm-1', '--broker', 'qemu', '--firmware', 'bios', '--memory', '1024', '--disk-size', '1', '--bootenv', 'discovery', '--pipeline', 'deploy', '-o', 'json']);
    expect(made.code, made.stderr + lab.output).toBe(0);
    const vm = (JSON.parse(made.stdout) as Machine[])[0]!;
    const vmDir = join(lab.data, 'qemu', vm.id);
    serialLog = join(vmDir, 'serial.log');
    const detail = () => `${lab.output}\n--- serial ---\n${console_()}`;
    const seenOnConsole = (re: RegExp, ms: number, what: string) => until(() => (existsSync(serialLog) && re.test(readFileSync(serialLog, 'utf8')) ? Date.now() - t0 : undefined), ms, what, detail);

    const registered = await seenOnConsole(/TAKT-DISCOVERY: registered with/, 300_000, 'vm-1 to register from discovery');
    const fromDisk = await seenOnConsole(/TAKT-DISCOVERY: agent starting \(deployed\)/, 600_000, 'vm-1 to boot the deployed OS from its disk');
    const done = await cli(['machines', 'wait', 'vm-1', '--until', 'done', '--timeout', '600s'], 630_000);
    const doneAt = Date.now() - t0;
    expect(done.code, `${done.stdout}${done.stderr}\n${detail()}`).toBe(0);
    console.log(`[provision] deploy vm-1: registered at ${(registered / 1000).toFixed(1)} s, deployed OS started at ${(fromDisk / 1000).toFixed(1)} s, done at ${(doneAt / 1000).toFixed(1)} s after create (load ${load()})`);

    const jobs = JSON.parse((await cli(['jobs', 'list', '--machine', 'vm-1', '-o', 'json'])).stdout) as Array<{ task: string; state: string; outputs: Record<string, unknown>; image?: { name: string; version: string; sha256: string } }>;
    // Newest first.
    expect(jobs.map((j) => [j.task, j.state])).toEqual([['verify', 'succeeded'], ['write-disk', 'succeeded']]);
    // The second stage ran in the OS booted from the disk, on the same VM.
    expect(jobs[0]!.outputs).toEqual({ boot: 'disk', root: vm.id });
    const m = JSON.parse((await cli(['machines', 'get', 'vm-1', '-o', 'json'])).stdout) as Machine;
    expect(m.id).toBe(vm.id);
    expect(m.facts).toEqual(expect.objectContaining({ bootenv: 'local', macs: vm.boot!.macs }));
    // Its deploy token was used once, by vm-1.
    const tokens = JSON.parse((await cli(['join-tokens', 'list', '-o', 'json'])).stdout) as Array<{ machine: string | null; state: string; machines: string[] }>;
    expect(tokens.filter((t) => t.machine === vm.id)).toEqual([expect.objectContaining({ state: 'used', machines: [vm.id] })]);

    // The disk is the image, and zeros after it (the join block was zeroed once used). -U: qemu has it open.
    execFileSync('qemu-img', ['compare', '-U', '-q', '-f', 'raw', '-F', 'qcow2', image, join(vmDir, 'disk.qcow2')], { timeout: 120_000 });
  }, 1_500_000);
});
