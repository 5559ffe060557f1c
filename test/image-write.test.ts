/**
 * Writing an image to a machine's disk from a task (`takt-image write NAME@VERSION DEVICE`, agent/image.ts),
 * end to end without a VM: a real endpoint with images in its catalog, real agent processes (each with a
 * --root of its own) whose "disk" is a regular file under that root. The bytes written equal the image and
 * the job records what it wrote; a blob tampered with on the endpoint's disk fails with a digest mismatch;
 * a download cut once mid-way (a small TCP proxy in the test) resumes with Range and still verifies; an
 * unknown image and a target outside the machine's root fail naming why; a failed script writes nothing.
 * The pure parts (request parsing, the size check, device numbers) are table-tested, and the size check
 * once against a real block device node with a stand-in sysfs.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkTargetSize, devNumbers, inspectTarget, parseImageRequest, splitImageRef, writeImage } from '../src/agent/image.js';
import { ApiClient } from '../src/client/http.js';
import { parseBuiltWith } from '../src/engine/records.js';
import { IMAGE_JOB_OUTPUT, parseImageRef } from '../src/model/image.js';
import type { Job, Machine } from '../src/model/machine.js';
import { Endpoint, until } from './helpers/endpoint.js';
import { AgentProcess } from './helpers/liveness.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const MiB = 2 ** 20;

describe('parseImageRequest', () => {
  it.each([
    ['a request', 'debian-min@1.0.0\n/dev/vda\n', { request: { name: 'debian-min', version: '1.0.0', target: '/dev/vda' }, problem: null }],
    ['without the last newline', 'a@2.0.0-rc.1\n/tmp/disk.img', { request: { name: 'a', version: '2.0.0-rc.1', target: '/tmp/disk.img' }, problem: null }],
    ['a publish request', 'publish\nagent-os@1.2.0\n/work/out.img\n', { request: { name: 'agent-os', version: '1.2.0', target: '/work/out.img', action: 'publish' }, problem: null }],
  ])('%s', (_l, text, expected) => expect(parseImageRequest(text)).toEqual(expected));
  it.each([
    ['one line', 'debian-min@1.0.0\n', /has 1 lines, not 2/],
    ['no version', 'debian-min\n/dev/vda\n', /names no image: 'debian-min' is not NAME@VERSION/],
    ['an upper-case name', 'Debian@1.0.0\n/dev/vda\n', /names no image: image name 'Debian' is not valid/],
    ['not semver', 'debian-min@1\n/dev/vda\n', /not a semantic version/],
    ['a relative target', 'debian-min@1.0.0\nvda\n', /target "vda" is not an absolute path/],
    ['three lines', 'a@1.0.0\n/dev/vda\nextra\n', /has 3 lines/],
    ['a publish request without its file', 'publish\na@1.0.0\n', /has 2 lines, not 3/],
  ])('%s is a problem, not a request', (_l, text, why) => {
    const r = parseImageRequest(text);
    expect(r.request).toBeUndefined();
    expect(r.problem).toMatch(why);
    expect(r.problem).toMatch(/nothing done$/);
  });
});

describe("splitImageRef agrees with the catalog's parseImageRef (the agent's light twin of it)", () => {
  it.each(['debian-min@1.0.0', 'a.b_c@2.3.4-rc.1', 'x@1.0.0+build.5', 'x@01.0.0', 'x@1.0', 'Debian@1.0.0', '@1.0.0', 'x@', 'x', 'a@b@1.0.0', `${'a'.repeat(64)}@1.0.0`, 'x@1.0.0-'])('%s', (ref) => {
    const ours = (() => { try { return splitImageRef(ref); } catch { return 'refused'; } })();
    const theirs = (() => { try { return parseImageRef(ref); } catch { return 'refused'; } })();
    expect(ours).toEqual(theirs);
  });
});

describe('checkTargetSize', () => {
  it.each([
    ['a disk larger than the image', { kind: 'block', size: 8 * MiB }, 4 * MiB, null],
    ['a disk exactly the size of the image and the join block', { kind: 'block', size: 4 * MiB + 4096 }, 4 * MiB, null],
    ['a disk exactly the size of the image: no room for the join block', { kind: 'block', size: 4 * MiB }, 4 * MiB, "disk too small: /dev/x holds 4194304 bytes (4.0 MiB), the image is 4194304 bytes (4.0 MiB) and takt's 4096-byte join block goes after it"],
    ['a regular file grows (an empty test disk)', { kind: 'file', size: 0 }, 4 * MiB, null],
    ['a disk one sector short', { kind: 'block', size: 4 * MiB - 512 }, 4 * MiB, "disk too small: /dev/x holds 4193792 bytes (4.0 MiB), the image is 4194304 bytes (4.0 MiB) and takt's 4096-byte join block goes after it"],
    ['an empty loop device', { kind: 'block', size: 0 }, 1, "disk too small: /dev/x holds 0 bytes (0.0 MiB), the image is 1 bytes (0.0 MiB) and takt's 4096-byte join block goes after it"],
    ['a directory', { kind: 'other', what: 'a directory' }, 1, 'bad target: /dev/x is a directory, not a block device or a regular file'],
    ['a character device', { kind: 'other', what: 'a character device' }, 1, 'bad target: /dev/x is a character device, not a block device or a regular file'],
  ] as const)('%s', (_l, target, size, expected) => expect(checkTargetSize(target, size, '/dev/x')).toBe(expected));
});

describe('devNumbers (glibc gnu_dev_major/minor)', () => {
  it.each([
    [0x0700, 7, 0], // loop0
    [0x0701, 7, 1],
    [0xfe00, 254, 0], // vda
    [0x10300, 259, 0], // nvme0n1: major 259, minor 0 → (259 & 0xfff) << 8
    [(0x1 << 20) | 0x0800, 8, 256], // sd minor 256: low 8 bits 0, bits 20.. hold 256 >> 8 = 1
  ])('rdev %i is %i:%i', (rdev, major, minor) => expect(devNumbers(rdev)).toEqual({ major, minor }));
});

describe('inspectTarget on this host', () => {
  it('refuses what is missing and what lies outside the machine root (after links), and sizes a file', async () => {
    const d = mkdtempSync(join(tmpdir(), 'takt-imgtarget-'));
    try {
      mkdirSync(join(d, 'root'));
      writeFileSync(join(d, 'outside.img'), 'x');
      writeFileSync(join(d, 'root', 'disk.img'), 'abc');
      const { symlinkSync } = await import('node:fs');
      symlinkSync(join(d, 'outside.img'), join(d, 'root', 'link.img'));
      await expect(inspectTarget(join(d, 'root', 'nope'), join(d, 'root'))).rejects.toThrow(/^bad target: .*nope does not exist/);
      await expect(inspectTarget(join(d, 'root', 'link.img'), join(d, 'root'))).rejects.toThrow(/^bad target: .*link\.img is outside this machine's root/);
      expect((await inspectTarget(join(d, 'root', 'disk.img'), join(d, 'root'))).info).toEqual({ kind: 'file', size: 3 });
      expect((await inspectTarget(d, '/')).info).toEqual({ kind: 'other', what: 'a directory' });
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});

let ep: Endpoint;
let files: string;
const call = (...args: Parameters<Endpoint['call']>) => ep.call(...args);
const agents: AgentProcess[] = [];

/** 4 MiB of random bytes with an MBR signature: a raw disk image. */
function diskImage(): Buffer {
  const b = randomBytes(4 * MiB);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}
const good = diskImage();
const tampered = diskImage();

const line = (name: string, script: string) => ({
  [`tasks/${name}.yaml`]: `name: ${name}\nscript: |\n${script.split('\n').map((l) => `  ${l}`).join('\n')}\n`,
  [`stages/${name}.yaml`]: `name: ${name}\ntasks: [${name}]\n`,
  [`pipelines/${name}.yaml`]: `name: ${name}\nstages: [${name}]\n`,
});
const writeTo = (ref: string, then = '') => `: > "$TAKT_ROOT/disk.img"\ntakt-image write ${ref} "$TAKT_ROOT/disk.img"${then ? `\n${then}` : ''}`;
const PACK: Record<string, string> = {
  'pack.yaml': 'name: imagewrite\nversion: 1.0.0\n',
  ...line('write-good', writeTo('good@1.0.0')),
  ...line('write-tampered', writeTo('tampered@1.0.0')),
  ...line('write-unknown', writeTo('nosuch@1.0.0')),
  ...line('write-then-fail', writeTo('good@1.0.0', 'exit 3')),
  ...line('write-outside', ': > /tmp/takt-image-outside-$TAKT_JOB_ID\ntakt-image write good@1.0.0 /tmp/takt-image-outside-$TAKT_JOB_ID'),
  ...line('write-usage', 'takt-image write good /dev/vda'),
};

beforeAll(async () => {
  ep = await Endpoint.start();
  files = mkdtempSync(join(tmpdir(), 'takt-image-write-'));
  const r = await call('POST', '/packs', { files: PACK });
  expect(r.status, JSON.stringify(r.body)).toBeLessThan(300);
  for (const [ref, bytes] of [['good@1.0.0', good], ['tampered@1.0.0', tampered]] as const) {
    const f = join(files, `${ref}.img`);
    writeFileSync(f, bytes);
    const c = await ep.cli(['images', 'import', ref, f]);
    expect(c.code, c.stderr).toBe(0);
  }
}, 120_000);

afterAll(async () => {
  for (const a of agents) await a.dispose();
  await ep?.stop();
  if (files) rmSync(files, { recursive: true, force: true });
});

/** A machine on `pipeline` with an agent of this test's (through `endpoint`, default the endpoint itself). */
async function machineWithAgent(name: string, pipeline: string, endpoint = ep.url): Promise<{ id: string; agent: AgentProcess }> {
  const r = await call('POST', '/machines', { name, pipeline });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  const m = r.body.items[0] as { id: string; token: string };
  const agent = new AgentProcess(endpoint, m.token).start();
  agents.push(agent);
  return { id: m.id, agent };
}

/** The machine once it is done or stopped (bounded). */
const settled = (name: string) =>
  until(async () => {
    const m = (await call('GET', `/machines/${name}`)).body as Machine;
    return m.state === 'done' || m.state === 'stopped' ? m : null;
  }, 90_000, `${name} to finish`);

const onlyJob = async (name: string) => {
  const jobs = (await call('GET', `/jobs?machine=${name}`)).body.items as Job[];
  expect(jobs).toHaveLength(1);
  return jobs[0]!;
};
const logOf = async (job: Job) => ((await call('GET', `/jobs/${job.id}/log`)).body.chunks as Array<{ data: string }>).map((c) => c.data).join('');
const diskOf = (agent: AgentProcess) => readFileSync(join(agent.dir, 'root', 'disk.img'));

describe('takt-image write, carried out by a real agent', () => {
  it('writes the image byte for byte, logs its progress, and the job records what it wrote', async () => {
    const { agent } = await machineWithAgent('img-good', 'write-good');
    const m = await settled('img-good');
    expect(m.state, m.reason ?? '').toBe('done');
    const disk = diskOf(agent);
    expect(disk.length).toBe(good.length);
    expect(sha(disk)).toBe(sha(good));
    const job = await onlyJob('img-good');
    expect(job.state).toBe('succeeded');
    expect(job.outputs[IMAGE_JOB_OUTPUT]).toEqual({ name: 'good', version: '1.0.0', sha256: sha(good), size: good.length, target: join(agent.dir, 'root', 'disk.img') });
    // Never copied into the machine's outputs: later tasks do not see it as a value.
    expect(m.outputs[IMAGE_JOB_OUTPUT]).toBeUndefined();
    const log = await logOf(job);
    expect(log).toMatch(/takt-image: asked to write good@1\.0\.0 to \S+disk\.img/);
    expect(log).toMatch(/takt-image: writing good@1\.0\.0 \(raw, 4194304 bytes, sha256 [0-9a-f]{64}\)/);
    expect(log).toMatch(/takt-image: 4\.0 MiB of 4\.0 MiB \(100%\), [\d.]+ MiB\/s/);
    expect(log).toMatch(/written to \S+disk\.img and verified/);
    expect(log).toMatch(/disk\.img is a regular file \(a test disk\): no join block written/);
    // Shown by takt jobs get.
    const g = await ep.cli(['jobs', 'get', job.id]);
    expect(g.stdout).toContain(sha(good));
  }, 120_000);

  it('fails with a digest mismatch when the endpoint serves bytes other than the catalog says', async () => {
    // Tamper with the stored copy: same length, one byte different.
    const blob = join(ep.data, 'images', 'sha256', sha(tampered));
    const b = readFileSync(blob);
    b[4096] = b[4096]! ^ 0xff;
    writeFileSync(blob, b);
    await machineWithAgent('img-tampered', 'write-tampered');
    const m = await settled('img-tampered');
    expect(m.state).toBe('stopped');
    expect(m.reason).toMatch(new RegExp(`^task 'write-tampered' failed: image tampered@1\\.0\\.0 to \\S+disk\\.img not written: digest mismatch: the 4194304 bytes served have sha256 ${sha(b)}, the catalog says ${sha(tampered)}; .* do not boot it`));
    const job = await onlyJob('img-tampered');
    expect(job.state).toBe('failed');
    expect(job.outputs[IMAGE_JOB_OUTPUT]).toBeUndefined();
  }, 120_000);

  it('fails naming an unknown image, and writes nothing', async () => {
    const { agent } = await machineWithAgent('img-unknown', 'write-unknown');
    const m = await settled('img-unknown');
    expect(m.state).toBe('stopped');
    expect(m.reason).toMatch(/^task 'write-unknown' failed: image nosuch@1\.0\.0 to \S+disk\.img not written: image unknown: image nosuch@1\.0\.0 not found \(takt images list\)$/);
    expect(diskOf(agent).length).toBe(0);
  }, 120_000);

  it('writes nothing for a script that failed, and says so in the log', async () => {
    const { agent } = await machineWithAgent('img-fail', 'write-then-fail');
    const m = await settled('img-fail');
    expect(m.state).toBe('stopped');
    expect(m.reason).toBe("task 'write-then-fail' failed with exit code 3");
    expect(diskOf(agent).length).toBe(0);
    expect(await logOf(await onlyJob('img-fail'))).toMatch(/takt-image: good@1\.0\.0 not written to \S+: the script did not succeed/);
  }, 120_000);

  it("refuses a target outside the machine's root", async () => {
    await machineWithAgent('img-outside', 'write-outside');
    const m = await settled('img-outside');
    expect(m.state).toBe('stopped');
    expect(m.reason).toMatch(/not written: bad target: \/tmp\/takt-image-outside-\S+ is outside this machine's root/);
    const job = await onlyJob('img-outside');
    rmSync(`/tmp/takt-image-outside-${job.id}`, { force: true });
  }, 120_000);

  it('stops the script at a bad takt-image call (exit 1 with the usage)', async () => {
    await machineWithAgent('img-usage', 'write-usage');
    const m = await settled('img-usage');
    expect(m.reason).toBe("task 'write-usage' failed with exit code 1");
    expect(await logOf(await onlyJob('img-usage'))).toMatch(/takt-image: 'good' is not NAME@VERSION \(e\.g\. debian-min@1\.0\.0\)\nusage: takt-image write NAME@VERSION DEVICE/);
  }, 120_000);
});

/**
 * A TCP proxy to the endpoint that cuts, once, the first connection carrying an image's bytes after
 * `cutAfter` bytes of its answer, and records the Range header of every blob request it forwards.
 */
class CuttingProxy {
  readonly ranges: string[] = [];
  cut = false;
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  port = 0;

  constructor(
    private readonly target: URL,
    private readonly cutAfter: number,
    /** Cut every blob answer, not only the first. */
    private readonly always = false,
  ) {
    this.server = createServer((client) => this.handle(client));
  }

  async start(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as { port: number }).port;
    return `http://127.0.0.1:${this.port}`;
  }

  private handle(client: Socket): void {
    const upstream = createConnection({ host: this.target.hostname, port: Number(this.target.port) });
    this.sockets.add(client).add(upstream);
    let blob = false;
    let served = 0;
    client.on('data', (d: Buffer) => {
      const text = d.toString('latin1');
      if (/^GET \/api\/v1\/images\/[^ ]+\/blob /m.test(text)) {
        blob = true;
        this.ranges.push(/^range: *(.*)\r$/im.exec(text)?.[1] ?? '(none)');
      }
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => {
      if (blob && (!this.cut || this.always)) {
        served += d.length;
        if (served > this.cutAfter) {
          this.cut = true;
          // Part of this chunk gets through, then the connection is gone (as a broken link would).
          client.write(d.subarray(0, d.length - (served - this.cutAfter)), () => {
            client.destroy();
            upstream.destroy();
          });
          return;
        }
      }
      client.write(d);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

describe('a download cut mid-way', () => {
  it('resumes with Range from where it broke off, and the disk still equals the image', async () => {
    const proxy = new CuttingProxy(new URL(ep.url), 1 * MiB + 12345);
    const via = await proxy.start();
    try {
      const { agent } = await machineWithAgent('img-cut', 'write-good', via);
      const m = await settled('img-cut');
      expect(m.state, m.reason ?? '').toBe('done');
      expect(proxy.cut).toBe(true);
      // The first request from byte 0; the next from what had arrived when the cut came (the headers and
      // what the agent's socket had not handed over yet make it a little under the proxy's count).
      expect(proxy.ranges[0]).toBe('(none)');
      expect(proxy.ranges.length).toBeGreaterThanOrEqual(2);
      const from = Number(/^bytes=(\d+)-$/.exec(proxy.ranges[1]!)?.[1]);
      expect(from).toBeGreaterThan(MiB / 2);
      expect(from).toBeLessThanOrEqual(MiB + 12345);
      expect(sha(diskOf(agent))).toBe(sha(good));
      expect(await logOf(await onlyJob('img-cut'))).toMatch(new RegExp(`the download broke off after ${from} of 4194304 bytes \\(.*\\); resuming from byte ${from} with Range`));
    } finally {
      await proxy.stop();
    }
  }, 120_000);

  it('gives up after bounded attempts with a truncated download when the endpoint goes away', async () => {
    // In process, through a proxy that cuts every answer with the bytes before its first byte: no attempt brings any.
    const r = await call('POST', '/machines', { name: 'img-gone', pipeline: 'write-good' });
    const token = r.body.items[0].token as string;
    const d = mkdtempSync(join(tmpdir(), 'takt-imggone-'));
    const proxy = new CuttingProxy(new URL(ep.url), 0, true);
    const via = await proxy.start();
    try {
      writeFileSync(join(d, 'disk.img'), '');
      const lines: string[] = [];
      const w = await writeImage({
        client: new ApiClient({ endpoint: via, token }),
        machineId: r.body.items[0].id as string,
        request: { name: 'good', version: '1.0.0', target: join(d, 'disk.img') },
        root: d,
        progress: (l) => lines.push(l),
        maxAttempts: 3,
      });
      expect(w.ok).toBe(false);
      expect(!w.ok && w.reason).toMatch(/^image good@1\.0\.0 to \S+disk\.img not written: truncated download: 0 of 4194304 bytes arrived; gave up after \d+ broken connections \(3 in a row without a byte\); last: /);
    } finally {
      await proxy.stop();
      rmSync(d, { recursive: true, force: true });
    }
  }, 60_000);
});

describe('a block device too small for the image', () => {
  // A real block device node, its size read through a stand-in sysfs (so nothing depends on, or writes to,
  // what the host's loop device holds): refused before it is opened.
  const node = ['/dev/loop0', '/dev/vda', '/dev/sda'].find((p) => existsSync(p));
  it.skipIf(!node)('is refused with its size and the image size, and nothing is written', async () => {
    const { statSync } = await import('node:fs');
    const { major, minor } = devNumbers(statSync(node!).rdev);
    const sys = mkdtempSync(join(tmpdir(), 'takt-sys-'));
    try {
      mkdirSync(join(sys, 'dev', 'block', `${major}:${minor}`), { recursive: true });
      writeFileSync(join(sys, 'dev', 'block', `${major}:${minor}`, 'size'), '16\n'); // 8 KiB
      const r = await call('POST', '/machines', { name: 'img-small', pipeline: 'write-good' });
      const w = await writeImage({
        client: new ApiClient({ endpoint: ep.url, token: r.body.items[0].token as string }),
        machineId: r.body.items[0].id as string,
        request: { name: 'good', version: '1.0.0', target: node! },
        root: '/',
        progress: () => undefined,
        sys,
      });
      expect(w).toEqual({ ok: false, reason: `image good@1.0.0 to ${node} not written: disk too small: ${node} holds 8192 bytes (0.0 MiB), the image is 4194304 bytes (4.0 MiB) and takt's 4096-byte join block goes after it` });
    } finally {
      rmSync(sys, { recursive: true, force: true });
    }
  });
});

describe('parseBuiltWith', () => {
  it.each([
    ['demo@<1.2.0', { kind: 'pack', pack: 'demo', range: '<1.2.0' }],
    ['demo', { kind: 'pack', pack: 'demo', range: '*' }],
    ['image:debian-min@<2', { kind: 'image', pack: 'debian-min', range: '<2' }],
    ['image:debian-min', { kind: 'image', pack: 'debian-min', range: '*' }],
    ['image:good@1.0.0', { kind: 'image', pack: 'good', range: '1.0.0' }],
  ])('%s', (sel, expected) => expect(parseBuiltWith(sel)).toEqual(expected));
  it.each(['image:', 'image:@1', 'image:Debian', 'image:debian@not a range', 'images:debian'])('%s is refused naming both forms', (sel) => {
    expect(() => parseBuiltWith(sel)).toThrow(/is not PACK\[@RANGE\] or image:IMAGE\[@RANGE\]/);
  });
});

describe('the completion route checks the image a report names', () => {
  /** A machine on write-good whose job this test claims and completes by hand. */
  async function claimed(name: string): Promise<{ token: string; job: string }> {
    const r = await call('POST', '/machines', { name, pipeline: 'write-good' });
    const m = r.body.items[0] as { id: string; token: string };
    const c = await call('POST', `/machines/${m.id}/claim`, undefined, m.token);
    return { token: m.token, job: c.body.job.id as string };
  }
  const written = { name: 'good', version: '1.0.0', sha256: sha(good), size: good.length, target: '/dev/vda' };

  it.each([
    ['a digest that is not hex', { ...written, sha256: 'x'.repeat(64) }],
    ['no target', { name: 'good', version: '1.0.0', sha256: sha(good), size: good.length }],
    ['a size of 0', { ...written, size: 0 }],
    ['an extra field', { ...written, token: 'x' }],
  ])('%s is a 422 at /image, and the job stays running', async (what, image) => {
    const { token, job } = await claimed(`hand-${what.replace(/[^a-z0-9]+/g, '-')}`.replace(/-$/, ''));
    const bad = await call('POST', `/jobs/${job}/complete`, { exitCode: 0, outputs: {}, image }, token);
    expect(bad.status, JSON.stringify(bad.body)).toBe(422);
    expect(bad.body.error.path).toMatch(/^\/image/);
    expect(((await call('GET', `/jobs/${job}`)).body as Job).state).toBe('running');
  });

  it.each([
    ['an image the catalog does not have', { ...written, name: 'nosuch' }, /it reported writing image nosuch@1\.0\.0, which is not in the catalog/],
    ['another digest than the catalog has', { ...written, sha256: 'a'.repeat(64) }, /it reported writing image good@1\.0\.0 with sha256 a{64} \(4194304 bytes\), but the catalog has sha256 [0-9a-f]{64} \(4194304 bytes\)/],
  ])('%s fails the job, and nothing is recorded', async (what, image, why) => {
    const { token, job } = await claimed(`hand-x-${what.split(' ')[1]}`);
    const r = await call('POST', `/jobs/${job}/complete`, { exitCode: 0, outputs: {}, image }, token);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const j = (await call('GET', `/jobs/${job}`)).body as Job;
    expect(j.state).toBe('failed');
    expect(j.reason).toMatch(why);
    expect(j.outputs[IMAGE_JOB_OUTPUT]).toBeUndefined();
  });
});

describe('build records name the image', () => {
  it('takt machines record shows it beside the pack version', async () => {
    const j = await ep.cli(['machines', 'record', 'img-good', '-o', 'json']);
    expect(j.code, j.stderr).toBe(0);
    const rec = JSON.parse(j.stdout) as { images: string[]; entries: Array<{ pack: string; image?: unknown }> };
    expect(rec.images).toEqual(['good@1.0.0']);
    expect(rec.entries[0]).toMatchObject({ pack: 'imagewrite@1.0.0', image: { name: 'good', version: '1.0.0', sha256: sha(good) } });
    const t = await ep.cli(['machines', 'record', 'img-good']);
    expect(t.stdout).toMatch(/^img-good pipeline write-good image good@1\.0\.0$/m);
    expect(t.stdout).toMatch(/IMAGE/);
    expect(t.stdout).toMatch(/imagewrite@1\.0\.0\s+good@1\.0\.0/);
  });

  it('takt machines list --built-with image:NAME@RANGE selects the machines deployed with it', async () => {
    const names = async (sel: string) => {
      const c = await ep.cli(['machines', 'list', '--built-with', sel, '-o', 'name']);
      expect(c.code, c.stderr).toBe(0);
      return c.stdout.trim().split('\n').filter(Boolean).map((n) => n.replace(/^machines\//, '')).sort();
    };
    expect(await names('image:good@<2')).toEqual(['img-cut', 'img-good']);
    expect(await names('image:good')).toEqual(['img-cut', 'img-good']);
    expect(await names('image:good@>=2')).toEqual([]);
    expect(await names('image:tampered')).toEqual([]); // its job failed: nothing recorded
    expect(await names('good')).toEqual([]); // a pack of that name: none
    expect(await names('imagewrite@1.0.0')).toContain('img-good');
    const bad = await ep.cli(['machines', 'list', '--built-with', 'image:']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/'image:' is not PACK\[@RANGE\] or image:IMAGE\[@RANGE\]/);
  });
});

describe('removing an image version', () => {
  it('is refused (409) while a build record names it, naming the machines; allowed once none does', async () => {
    const r = await call('DELETE', '/images/good/1.0.0');
    expect(r.status, JSON.stringify(r.body)).toBe(409);
    expect(r.body.error.message).toBe('image good@1.0.0 is in use: the build record of 2 machines img-cut, img-good names it (their disks were written with it); rebuild them with another image or delete them first (takt machines list --built-with image:good@1.0.0), then remove it');
    expect(r.body.error.details).toEqual({ machines: ['img-cut', 'img-good'] });
    const c = await ep.cli(['images', 'rm', 'good@1.0.0']);
    expect(c.code).not.toBe(0);
    expect(c.stderr).toMatch(/image good@1\.0\.0 is in use/);
    expect(existsSync(join(ep.data, 'images', 'sha256', sha(good)))).toBe(true);
    expect((await call('GET', '/images/good/1.0.0')).status).toBe(200);
    // An image no record names goes (the tampered one: its only write failed).
    expect((await call('DELETE', '/images/tampered/1.0.0')).status).toBe(200);
    for (const name of ['img-cut', 'img-good']) expect((await call('DELETE', `/machines/${name}`)).status).toBeLessThan(300);
    const after = await call('DELETE', '/images/good/1.0.0');
    expect(after.status, JSON.stringify(after.body)).toBe(200);
    expect(existsSync(join(ep.data, 'images', 'sha256', sha(good)))).toBe(false);
  }, 60_000);
});
