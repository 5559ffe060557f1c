/**
 * The built-in `images` pack end to end (issue #14; docs/provisioning.md "Building a Debian image"), in
 * `npm run test:provision:full` only: it fetches Debian from deb.debian.org and boots a VM under TCG.
 *
 * 1. Build: a real endpoint (root) with content/images pushed, and a sandboxed `--broker local` builder
 *    machine — its scripts run as the machine's own unprivileged uid, so the task builds under
 *    fakechroot and fakeroot — runs the `debian-min` pipeline as shipped: debootstrap bookworm from
 *    deb.debian.org, the agent baked in, `takt images build-disk` in the same fakeroot session,
 *    `takt-image publish`. The image lands in the catalog with the job as its provenance. (The root
 *    builder's branch of the task is test/images-pack.test.ts's, with a stand-in debootstrap; so is the
 *    debugfs read-back of faked owners, modes and device nodes.)
 * 2. Deploy: the same data dir, now served by `takt serve --provision … --qemu-bridge` in a network
 *    namespace (the builder needed the Internet, the boot network has none). A qemu broker VM (BIOS) boots
 *    discovery, the image-deploy pipeline writes debian-min to its disk, the VM boots Debian from it,
 *    whose first-boot unit joins as the same machine (the join block), and its agent runs the
 *    image-installed stage and one more that reads uname, /etc/os-release and /etc/machine-id there.
 * Phase timings, the load average and the image's size are printed. (The disk is not compared with the
 * image afterwards, as test/provision-deploy.test.ts does: Debian mounts its root read-write.)
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Image } from '../src/model/image.js';
import type { Job, Machine } from '../src/model/machine.js';
import { BootLab, until } from './helpers/boot-lab.js';
import { Endpoint, ROOT, sleep, TAKT, writePack } from './helpers/endpoint.js';
import { bootArtifacts } from './helpers/provision.js';

const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');
const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

describe('the images pack: debian-min built by a pipeline with debootstrap, deployed to a VM, joined as itself', () => {
  const lab = new BootLab({ netnsPrefix: 'tki-', subnet: '10.238', dirPrefix: 'tki-', dataName: 'd', bridgeName: 'tki0', cliTimeoutMs: 120_000 });
  const { prefix, bridge } = lab;
  const cli = (args: string[], timeoutMs?: number) => lab.cli(args, timeoutMs);
  let ep: Endpoint | null = null;
  const savedPath = process.env.PATH;
  let serialLog = '';
  const console_ = () => (serialLog && existsSync(serialLog) ? readFileSync(serialLog, 'utf8').slice(-6000) : '(no serial log)');
  let image: Image | null = null;
  let kernelRelease = '';

  beforeAll(async () => {
    await bootArtifacts();
    lab.open();
  }, 600_000);

  afterAll(async () => {
    process.env.PATH = savedPath;
    await ep?.stop();
    await lab.stopServe();
    lab.killBrokerVms();
    await lab.stop();
  }, 120_000);

  it('a sandboxed local builder (its own uid) runs debian-min: fakechroot debootstrap, the agent baked in, a bootable disk, published with its provenance', async () => {
    // The sandbox's user passes through the lab's dir to its machine dir and the takt CLI.
    chmodSync(lab.dir, 0o711);
    // The takt CLI on the builder's PATH (the endpoint's PATH reaches its local machines' scripts).
    const bin = join(lab.dir, 'bin');
    mkdirSync(bin, { mode: 0o755 });
    writeFileSync(join(bin, 'takt'), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(TAKT)} "$@"\n`, { mode: 0o755 });
    ep = await Endpoint.start({ data: lab.data, env: { PATH: `${bin}:${savedPath}` } });
    const push = await ep.cli(['content', 'push', join(ROOT, 'content', 'images')]);
    expect(push.code, push.stderr).toBe(0);

    const t0 = Date.now();
    const r = await ep.call('POST', '/machines', { name: 'builder', broker: 'local', pipeline: 'debian-min', params: { image_version: '1.0.0' } });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const m = await until(async () => {
      const b = (await ep!.call('GET', '/machines/builder')).body as Machine;
      return b.state === 'done' || b.state === 'stopped' ? b : undefined;
    }, 45 * 60_000, 'the builder to finish');
    const built = Date.now() - t0;
    const job = ((await ep.call('GET', '/jobs?machine=builder')).body.items as Job[])[0]!;
    // The whole log: debootstrap's lines alone pass the default page of 1000 chunks.
    const log = ((await ep.call('GET', `/jobs/${job.id}/log?limit=10000`)).body.chunks as Array<{ data: string }>).map((c) => c.data).join('');
    expect(m.state, `${m.reason}\n${log.slice(-6000)}`).toBe('done');

    image = (await ep.call('GET', '/images/debian-min/1.0.0')).body as Image;
    expect(image).toMatchObject({ name: 'debian-min', version: '1.0.0', format: 'raw', partitionTable: 'mbr' });
    expect(image.provenance).toMatchObject({ kind: 'build', machine: { id: m.id, name: 'builder' }, job: job.id, pipeline: 'debian-min', task: 'debian-min-build', pack: 'images@1.1.0' });
    expect(image.provenance.kind === 'build' && image.provenance.recipe.params).toEqual({ debian_suite: 'bookworm', debian_mirror: 'http://deb.debian.org/debian', debian_packages: '', image_version: '1.0.0' });
    kernelRelease = String(job.outputs.kernel);
    expect(kernelRelease).toMatch(/^\d+\.\d+\.\d+-\d+-amd64$/);
    const debootstrap = /debian-min: debootstrap took (\d+) s/.exec(log)?.[1];
    console.log(`[provision] debian-min@1.0.0 built and published in ${secs(built)} (debootstrap ${debootstrap} s), ${(image.size / 2 ** 20).toFixed(0)} MiB, kernel ${kernelRelease} (load ${load()})`);

    // The endpoint ends, its data dir stays (Endpoint.stop would remove it): served again below.
    const p = ep.proc!;
    if (p.exitCode === null && p.signalCode === null) {
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGTERM');
      await Promise.race([exited, sleep(30_000)]);
      if (p.exitCode === null && p.signalCode === null) {
        p.kill('SIGKILL');
        await exited;
      }
    }
    ep = null;
    expect(existsSync(join(lab.data, 'images', 'sha256', image.sha256))).toBe(true);
  }, 50 * 60_000);

  it('a VM deploys it with image-deploy: discovery → written → Debian from disk joins as vm-1 → its stages run there', async () => {
    expect(image, 'the build above').not.toBeNull();
    await lab.serve(['--listen', '127.0.0.1:0', '--listen', `${prefix}.1:8443`, '--lease', '10s', '--provision', `${prefix}.1/24`, '--dhcp', 'full', '--dhcp-range', `${prefix}.100-${prefix}.150`, '--boot-port', '0', '--qemu-bridge', bridge], { env: { TAKT_QEMU_ACCEL: process.env.TAKT_QEMU_ACCEL ?? 'tcg' }, startMs: 120_000 });
    const env = await cli(['bootenv', 'build', 'discovery', '--install', '-o', 'json'], 540_000);
    expect(env.code, env.stderr).toBe(0);
    const push = await cli(['content', 'push', join(ROOT, 'content', 'image-deploy')]);
    expect(push.code, push.stderr).toBe(0);
    writePack(join(lab.dir, 'site'), {
      'pack.yaml': 'name: site\nversion: 1.0.0\n',
      'tasks/debian-facts.yaml': [
        'name: debian-facts',
        'outputs:',
        '  kernel: { type: string }',
        '  os_id: { type: string }',
        '  version_id: { type: string }',
        '  machine_id: { type: string }',
        '  root_source: { type: string }',
        '  product_serial: { type: string }',
        'script: |',
        '  set -eu',
        '  takt-set kernel "$(uname -r)"',
        '  takt-set os_id "$(. /etc/os-release && echo "$ID")"',
        '  takt-set version_id "$(. /etc/os-release && echo "$VERSION_ID")"',
        '  takt-set machine_id "$(cat /etc/machine-id)"',
        '  takt-set root_source "$(findmnt -n -o SOURCE /)"',
        '  takt-set product_serial "$(cat /sys/class/dmi/id/product_serial)"',
        '',
      ].join('\n'),
      'stages/debian-facts.yaml': 'name: debian-facts\nbootenv: local\ntasks: [debian-facts]\n',
      'pipelines/debian-deploy.yaml': 'name: debian-deploy\nstages: [image-write, image-installed, debian-facts]\nenvironments: [metal]\n',
    });
    const inst = await cli(['content', 'install', join(lab.dir, 'site')]);
    expect(inst.code, inst.stderr).toBe(0);
    await until(() => ((lab.output.match(/boot: kept bootenv 'discovery'/g) ?? []).length >= 2 ? true : undefined), 180_000, 'the discovery artifacts to be kept', () => lab.output);

    const t0 = Date.now();
    const made = await cli(['machines', 'create', 'vm-1', '--broker', 'qemu', '--firmware', 'bios', '--memory', '1024', '--disk-size', '2', '--bootenv', 'discovery', '--pipeline', 'debian-deploy', '--param', 'image=debian-min@1.0.0', '-o', 'json']);
    expect(made.code, made.stderr + lab.output).toBe(0);
    const vm = (JSON.parse(made.stdout) as Machine[])[0]!;
    const vmDir = join(lab.data, 'qemu', vm.id);
    serialLog = join(vmDir, 'serial.log');
    const detail = () => `${lab.output.slice(-8000)}\n--- serial ---\n${console_()}`;
    const seenOnConsole = (re: RegExp, ms: number, what: string) => until(() => (existsSync(serialLog) && re.test(readFileSync(serialLog, 'utf8')) ? Date.now() - t0 : undefined), ms, what, detail);

    const registered = await seenOnConsole(/TAKT-DISCOVERY: registered with/, 600_000, 'vm-1 to register from discovery');
    const debian = await seenOnConsole(/Debian GNU\/Linux 12|Welcome to .*Debian/, 900_000, 'vm-1 to boot Debian from its disk');
    const joining = await seenOnConsole(/takt: agent starting for https:/, 300_000, "Debian's first-boot unit to join as vm-1");
    const done = await cli(['machines', 'wait', 'vm-1', '--until', 'done', '--timeout', '600s'], 630_000);
    const doneAt = Date.now() - t0;
    expect(done.code, `${done.stdout}${done.stderr}\n${detail()}`).toBe(0);
    console.log(
      `[provision] deploy debian-min to vm-1: registered at ${secs(registered)}, Debian booting from disk at ${secs(debian)}, joined and its agent started at ${secs(joining)}, done at ${secs(doneAt)} after create (load ${load()})`,
    );

    const jobs = JSON.parse((await cli(['jobs', 'list', '--machine', 'vm-1', '-o', 'json'])).stdout) as Array<{ task: string; state: string; outputs: Record<string, unknown> }>;
    expect(jobs.map((j) => [j.task, j.state])).toEqual([['debian-facts', 'succeeded'], ['image-booted', 'succeeded'], ['image-write', 'succeeded']]);
    expect(jobs[1]!.outputs).toEqual({ deployed_os: 'Debian GNU/Linux 12 (bookworm)' });
    expect(jobs[0]!.outputs).toMatchObject({ kernel: kernelRelease, os_id: 'debian', version_id: '12', root_source: '/dev/vda2', product_serial: vm.id });
    // Made on its first boot from the empty one in the image.
    expect(jobs[0]!.outputs.machine_id).toMatch(/^[0-9a-f]{32}$/);
    const m = JSON.parse((await cli(['machines', 'get', 'vm-1', '-o', 'json'])).stdout) as Machine;
    expect(m.id).toBe(vm.id);
    // Facts from the deployed Debian: no takt.bootenv= word on its command line (an OS from disk; the agent
    // still reports bootenv local to the endpoint for its stages), its kernel and os-release.
    expect(m.facts).toEqual(expect.objectContaining({ bootenv: null, kernel: kernelRelease, macs: vm.boot!.macs, os: expect.objectContaining({ id: 'debian', versionId: '12' }) }));
    const joinTokens = JSON.parse((await cli(['join-tokens', 'list', '-o', 'json'])).stdout) as Array<{ machine: string | null; state: string; machines: string[] }>;
    expect(joinTokens.filter((t) => t.machine === vm.id)).toEqual([expect.objectContaining({ state: 'used', machines: [vm.id] })]);
    const rec = await cli(['machines', 'record', 'vm-1']);
    expect(rec.stdout).toMatch(/image debian-min@1\.0\.0/);
  }, 60 * 60_000);
});
