/**
 * The built-in `images` pack (content/images) and what it builds with, without the network or a VM:
 * - the pack lints clean as shipped;
 * - `takt images build-disk` refuses what it cannot build, with the reason, and leaves no file;
 * - buildDiskImage's `rootDir`: a tiny tree (a file, a symlink, a device node, modes and owners) is read
 *   back from the ext4 root with debugfs; equal trees give equal recipes, another tree another one;
 * - the `debian-min` pipeline as shipped, on a real endpoint and a real agent (its own --root), with a
 *   stand-in `debootstrap` and `chroot` on the agent's PATH (the real ones are
 *   test/provision-debian-image.test.ts): the task sets the tree up, bakes in the agent with the real
 *   `takt images build-disk --agent`, publishes debian-min@VERSION with the job as provenance; a second
 *   build with the same params has the same recipe digest; a builder whose scripts do not run as root and
 *   that lacks fakechroot is refused with what to do;
 * - the same pipeline on a sandboxed `--broker local` builder (a root endpoint: scripts run as the
 *   machine's own uid): the task builds under fakechroot and fakeroot, and the faked owners, modes,
 *   setuid bits and device nodes reach the image's ext4 root (read back with debugfs).
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readPackDir } from '../src/content/files.js';
import { lintPack } from '../src/content/lint.js';
import type { Image } from '../src/model/image.js';
import type { Job, Machine } from '../src/model/machine.js';
import { buildDiskImage, DISK_IMAGE_TOOLS, treeDigest } from '../src/provision/disk-image.js';
import { Endpoint, ROOT, runCli, TAKT, until } from './helpers/endpoint.js';
import { AgentProcess } from './helpers/liveness.js';

const PACK_DIR = join(ROOT, 'content', 'images');
const MIB = 1 << 20;
const haveTools = ['/usr/sbin/sfdisk', '/usr/bin/mcopy', '/usr/sbin/mkfs.vfat', '/usr/bin/syslinux', '/usr/sbin/debugfs', DISK_IMAGE_TOOLS.mbr, DISK_IMAGE_TOOLS.systemdBoot].every(existsSync);
const isRoot = process.getuid?.() === 0;

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'takt-images-pack-'));
  writeFileSync(join(dir, 'vmlinuz'), Buffer.alloc(MIB, 7));
  writeFileSync(join(dir, 'initrd'), Buffer.alloc(MIB, 9));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A small root tree: a file, an executable, a symlink, an empty machine-id, and (as root) a device node owned by 0:0. */
function tinyTree(at: string, marker: string): string {
  mkdirSync(join(at, 'etc'), { recursive: true });
  mkdirSync(join(at, 'usr', 'bin'), { recursive: true });
  writeFileSync(join(at, 'etc', 'takt-marker'), `${marker}\n`);
  writeFileSync(join(at, 'etc', 'machine-id'), '');
  writeFileSync(join(at, 'usr', 'bin', 'hello'), '#!/bin/sh\necho hello\n');
  chmodSync(join(at, 'usr', 'bin', 'hello'), 0o755);
  symlinkSync('usr/bin', join(at, 'bin'));
  if (isRoot) {
    mkdirSync(join(at, 'dev'));
    execFileSync('mknod', ['-m', '600', join(at, 'dev', 'console'), 'c', '5', '1']);
  }
  return at;
}

describe('content/images as shipped', () => {
  it('lints clean', async () => {
    const r = lintPack(await readPackDir(PACK_DIR));
    expect(r.diagnostics).toEqual([]);
    expect(r.manifest).toMatchObject({ name: 'images' });
  });
});

describe.skipIf(!haveTools)('buildDiskImage from a directory (rootDir)', () => {
  it('fills the ext4 root from the tree: files, modes, links and device nodes read back with debugfs', async () => {
    const tree = tinyTree(join(dir, 'tree-a'), 'a1');
    const out = join(dir, 'a.img');
    const img = await buildDiskImage({ out, kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd'), cmdline: 'root=LABEL=takt-root rw', rootDir: tree });
    // A tiny tree: a few 4 KiB blocks, a quarter more, 64 MiB of room.
    expect(img.partitions.root.size).toBe(65 * MIB);
    expect(img.recipe.rootDir).toBe(treeDigest(tree).sha256);
    expect(img.recipe.rootFiles).toEqual({});
    const part = join(dir, 'a.ext4');
    execFileSync('dd', [`if=${out}`, `of=${part}`, 'bs=1M', `skip=${img.partitions.root.start / MIB}`, `count=${img.partitions.root.size / MIB}`, 'status=none']);
    const debugfs = (req: string) => execFileSync('debugfs', ['-R', req, part], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    expect(execFileSync('e2label', [part], { encoding: 'utf8' }).trim()).toBe('takt-root');
    expect(debugfs('cat /etc/takt-marker')).toBe('a1\n');
    expect(debugfs('stat /usr/bin/hello')).toMatch(/Mode:\s+0755/);
    expect(debugfs('stat /etc/machine-id')).toMatch(/Size: 0\b/);
    expect(debugfs('stat /bin')).toMatch(/Type: symlink/);
    expect(debugfs('stat /bin')).toMatch(/Fast link dest: "usr\/bin"/);
    if (isRoot) {
      const st = debugfs('stat /dev/console');
      expect(st).toMatch(/Type: character special/);
      expect(st).toMatch(/Mode:\s+0600/);
      expect(st).toMatch(/User:\s+0\s+Group:\s+0/);
      expect(st).toMatch(/Device major\/minor number: 05:01/);
    }
  });

  it("makes a boot partition of Debian's size (6.1 kernel and initrd, 42.6 MiB: a 62 MiB partition, on a 200 MiB root) FAT32 that SYSLINUX takes", async () => {
    // mkfs.vfat's own cluster size, on a file this size, leaves the partition under FAT32's 65,525
    // clusters, and SYSLINUX refuses it ("zero FAT sectors (FAT12/16)").
    writeFileSync(join(dir, 'initrd-big'), Buffer.alloc(36_327_952, 9));
    writeFileSync(join(dir, 'vmlinuz-big'), Buffer.alloc(8_222_656, 7));
    const out = join(dir, 'big.img');
    const img = await buildDiskImage({ out, kernel: join(dir, 'vmlinuz-big'), initrd: join(dir, 'initrd-big'), cmdline: 'x', rootDir: tinyTree(join(dir, 'tree-big'), 'g1'), rootMiB: 200 });
    expect(img.partitions.boot.size).toBe(62 * MIB);
    const listing = execFileSync('mdir', ['-i', `${out}@@${img.partitions.boot.start}`, '-a', '-b', '::/'], { encoding: 'utf8', env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
    expect(listing).toContain('::/ldlinux.sys');
    expect(execFileSync('file', ['-s', '-L', out], { encoding: 'utf8' })).toMatch(/MBR boot sector/);
    rmSync(out);
  });

  it('gives equal trees the same recipe and another tree another one; refuses both inputs, a missing tree, a too small root', async () => {
    const a = await buildDiskImage({ out: join(dir, 'a2.img'), kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd'), cmdline: 'x', rootDir: tinyTree(join(dir, 'tree-a2'), 'a1') });
    const a3 = await buildDiskImage({ out: join(dir, 'a3.img'), kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd'), cmdline: 'x', rootDir: tinyTree(join(dir, 'tree-a3'), 'a1') });
    const b = await buildDiskImage({ out: join(dir, 'b.img'), kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd'), cmdline: 'x', rootDir: tinyTree(join(dir, 'tree-b'), 'b1') });
    expect(a3.recipe).toEqual(a.recipe);
    expect(b.recipe.rootDir).not.toBe(a.recipe.rootDir);
    const base = { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd'), cmdline: 'x' };
    await expect(buildDiskImage({ ...base, out: join(dir, 'bad.img'), rootDir: join(dir, 'tree-a'), rootFiles: { 'etc/x': 'y' } })).rejects.toThrow(/rootFiles or as rootDir, not both/);
    await expect(buildDiskImage({ ...base, out: join(dir, 'bad.img'), rootDir: join(dir, 'nope') })).rejects.toThrow(/not a directory/);
    writeFileSync(join(dir, 'tree-a', 'big'), Buffer.alloc(3 * MIB));
    await expect(buildDiskImage({ ...base, out: join(dir, 'bad.img'), rootDir: join(dir, 'tree-a'), rootMiB: 2 })).rejects.toThrow(/root partition of 2 MiB cannot hold/);
    expect(existsSync(join(dir, 'bad.img'))).toBe(false);
  });
});

describe('takt images build-disk', () => {
  it('has help with examples, and refuses a missing tree, kernel or initrd, a bad size and a multi-line command line', async () => {
    const help = await runCli(['images', 'build-disk', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Examples:\n\s+\$ takt images build-disk/);
    const tree = tinyTree(join(dir, 'tree-cli'), 'c1');
    const base = ['images', 'build-disk', join(dir, 'cli.img'), '--kernel', join(dir, 'vmlinuz'), '--initrd', join(dir, 'initrd')];
    const cases: Array<[string[], RegExp]> = [
      [[...base, '--root', join(dir, 'nope'), '--cmdline', 'x'], /--root \S+nope: not a directory/],
      [['images', 'build-disk', join(dir, 'cli.img'), '--root', tree, '--kernel', join(dir, 'nokernel'), '--initrd', join(dir, 'initrd'), '--cmdline', 'x'], /--kernel \S+nokernel: no such file/],
      [['images', 'build-disk', join(dir, 'cli.img'), '--root', tree, '--kernel', join(dir, 'vmlinuz'), '--initrd', join(dir, 'noinitrd'), '--cmdline', 'x'], /--initrd \S+noinitrd: no such file/],
      [[...base, '--root', tree, '--cmdline', 'x', '--root-mib', '0'], /--root-mib 0: give a whole number of MiB/],
      [[...base, '--root', tree, '--cmdline', 'a\nb'], /must be one line/],
      [[...base, '--root', tree], /required option '--cmdline <text>' not specified/],
    ];
    for (const [args, re] of cases) {
      const r = await runCli(args);
      expect(r.code, `${args.join(' ')}\n${r.stdout}${r.stderr}`).not.toBe(0);
      expect(r.stderr).toMatch(re);
      expect(r.stderr).not.toMatch(/at .*\.js:\d+/); // no stack trace
    }
    expect(existsSync(join(dir, 'cli.img'))).toBe(false);
  });
});

/**
 * The pipeline as shipped with stand-ins for what needs the network and a real root file system:
 * `debootstrap SUITE DIR MIRROR` makes a tree with a kernel and initrd in boot/ and the directories the
 * task writes to, and records its arguments; `chroot DIR CMD…` records the command. Everything else is
 * real: the task's script, `takt images build-disk --agent`, `takt-image publish`, the endpoint's catalog.
 */
const FAKE_DEBOOTSTRAP = `#!/bin/bash
set -eu
echo "$@" > "$FAKE_LOG/debootstrap.args"
# debootstrap [OPTION…] SUITE TARGET [MIRROR]: the task gives all three.
suite=\${@: -3:1} root=\${@: -2:1}
mkdir -p "$root"/boot "$root"/etc/apt "$root"/etc/systemd/system "$root"/usr/local/sbin "$root"/var/lib/dbus "$root"/var/lib/apt/lists "$root"/tmp
head -c 1048576 /dev/zero > "$root/boot/vmlinuz-6.1.0-99-amd64"
head -c 1048576 /dev/zero > "$root/boot/initrd.img-6.1.0-99-amd64"
echo 0123456789abcdef > "$root/etc/machine-id"
echo 0123456789abcdef > "$root/var/lib/dbus/machine-id"
echo "PRETTY_NAME=\\"Debian GNU/Linux ($suite, stand-in)\\"" > "$root/etc/os-release"
`;
const FAKE_CHROOT = `#!/bin/bash
set -eu
shift
echo "$*" >> "$FAKE_LOG/chroot.log"
`;

describe.skipIf(!haveTools || !isRoot)('the debian-min pipeline (stand-in debootstrap)', () => {
  let ep: Endpoint;
  const agents: AgentProcess[] = [];
  let fakes: string;
  let log: string;
  const savedPath = process.env.PATH;
  const call = (...args: Parameters<Endpoint['call']>) => ep.call(...args);

  beforeAll(async () => {
    ep = await Endpoint.start();
    const push = await ep.cli(['content', 'push', PACK_DIR]);
    expect(push.code, push.stderr).toBe(0);
    fakes = join(dir, 'fakes');
    log = join(dir, 'fake-log');
    mkdirSync(fakes);
    mkdirSync(log);
    writeFileSync(join(fakes, 'debootstrap'), FAKE_DEBOOTSTRAP, { mode: 0o755 });
    writeFileSync(join(fakes, 'chroot'), FAKE_CHROOT, { mode: 0o755 });
    // The takt CLI the task calls, as on a joined host's PATH.
    writeFileSync(join(fakes, 'takt'), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(TAKT)} "$@"\n`, { mode: 0o755 });
    // The agents started below inherit this environment (and pass it to their scripts).
    process.env.PATH = `${fakes}:${savedPath}`;
    process.env.FAKE_LOG = log;
  }, 120_000);

  afterAll(async () => {
    process.env.PATH = savedPath;
    delete process.env.FAKE_LOG;
    for (const a of agents) await a.dispose();
    await ep?.stop();
  });

  const builder = async (name: string, params: Record<string, string>) => {
    const r = await call('POST', '/machines', { name, pipeline: 'debian-min', params });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const agent = new AgentProcess(ep.url, r.body.items[0].token as string).start();
    agents.push(agent);
    return agent;
  };
  const settled = (name: string) =>
    until(async () => {
      const m = (await call('GET', `/machines/${name}`)).body as Machine;
      return m.state === 'done' || m.state === 'stopped' ? m : null;
    }, 240_000, `${name} to finish`);
  const jobOf = async (name: string) => ((await call('GET', `/jobs?machine=${name}`)).body.items as Job[])[0]!;
  const logOf = async (id: string) => ((await call('GET', `/jobs/${id}/log`)).body.chunks as Array<{ data: string }>).map((c) => c.data).join('');

  it('sets the tree up, bakes in the agent, builds the disk and publishes debian-min@VERSION with the job as provenance', async () => {
    const agent = await builder('builder-1', { image_version: '1.0.0', debian_packages: 'openssh-server,curl' });
    const m = await settled('builder-1');
    const job = await jobOf('builder-1');
    expect(m.state, `${m.reason}\n${await logOf(job.id)}\n${agent.output}`).toBe('done');
    expect(readFileSync(join(log, 'debootstrap.args'), 'utf8').trim()).toMatch(
      /^--variant=minbase --include=linux-image-amd64,systemd-sysv,udev,initramfs-tools,e2fsprogs,openssh-server,curl bookworm \S+\/var\/tmp\/takt-debian-min\/j-\S+\/rootfs http:\/\/deb\.debian\.org\/debian$/,
    );
    expect(readFileSync(join(log, 'chroot.log'), 'utf8')).toBe('systemctl enable systemd-networkd.service takt-agent.service\napt-get clean\n');
    expect(job.outputs).toMatchObject({ image: 'debian-min@1.0.0', kernel: '6.1.0-99-amd64' });

    const image = (await call('GET', '/images/debian-min/1.0.0')).body as Image;
    expect(image).toMatchObject({ name: 'debian-min', version: '1.0.0', format: 'raw', partitionTable: 'mbr', size: job.outputs.image_bytes });
    expect(image.provenance).toMatchObject({ kind: 'build', machine: { id: m.id, name: 'builder-1' }, job: job.id, pipeline: 'debian-min', task: 'debian-min-build', pack: 'images@1.1.0', file: 'debian-min.img' });
    expect(image.provenance.kind === 'build' && image.provenance.recipe.params).toMatchObject({ image_version: '1.0.0', debian_suite: 'bookworm', debian_mirror: 'http://deb.debian.org/debian', debian_packages: 'openssh-server,curl' });

    // What is on the image's root: the agent, the first-boot unit, networking, an empty machine-id.
    const img = join(agent.dir, 'root', 'var', 'tmp', 'takt-debian-min', job.id, 'debian-min.img');
    const table = JSON.parse(execFileSync('sfdisk', ['-J', img], { encoding: 'utf8' })) as { partitiontable: { partitions: Array<{ start: number; size: number }> } };
    const rootPart = table.partitiontable.partitions[1]!;
    const part = join(dir, 'built-root.ext4');
    execFileSync('dd', [`if=${img}`, `of=${part}`, 'bs=512', `skip=${rootPart.start}`, `count=${rootPart.size}`, 'status=none']);
    const debugfs = (req: string) => execFileSync('debugfs', ['-R', req, part], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    expect(debugfs('cat /etc/machine-id')).toBe('');
    expect(debugfs('stat /var/lib/dbus/machine-id')).toBe('');
    expect(debugfs('cat /etc/fstab')).toBe('LABEL=takt-root / ext4 errors=remount-ro 0 1\n');
    expect(debugfs('cat /etc/systemd/network/80-takt-dhcp.network')).toMatch(/Name=en\* eth\*\n\n\[Network\]\nDHCP=yes/);
    expect(debugfs('cat /etc/systemd/system/takt-agent.service')).toMatch(/ExecStart=\/usr\/local\/sbin\/takt-agent-boot\nRestart=always/);
    const boot = debugfs('cat /usr/local/sbin/takt-agent-boot');
    expect(boot).toMatch(/^#!\/bin\/sh\n/);
    expect(boot).toContain('api=$("$takt" agent --dir "$dir" deployed) || exit 1');
    expect(debugfs('stat /usr/local/sbin/takt-agent-boot')).toMatch(/Mode:\s+0755/);
    expect(debugfs('stat /opt/takt/bin/takt')).toMatch(/Mode:\s+0755/);
    expect(debugfs('stat /opt/takt/lib/node')).toMatch(/Type: regular/);
    expect(debugfs('cat /opt/takt/BUNDLE.json')).toMatch(/"takt":/);
    // The work tree is gone; only the image is left for the upload.
    expect(existsSync(join(agent.dir, 'root', 'var', 'tmp', 'takt-debian-min', job.id, 'rootfs'))).toBe(false);
  }, 300_000);

  it('builds the same recipe from the same params (after the version is removed), and another from others', async () => {
    const recipe = async (v: string) => {
      const p = ((await call('GET', `/images/debian-min/${v}`)).body as Image).provenance;
      return p.kind === 'build' ? p.recipeSha256 : '';
    };
    const first = await recipe('1.0.0');
    expect(first).toMatch(/^[0-9a-f]{64}$/);
    // The version is an input (a param) and versions are immutable: the same inputs again need the
    // version gone from the catalog.
    const rm = await ep.cli(['images', 'rm', 'debian-min@1.0.0']);
    expect(rm.code, rm.stderr).toBe(0);
    // One after the other: both write the stand-in's argument file.
    await builder('builder-2', { image_version: '1.0.0', debian_packages: 'openssh-server,curl' });
    expect((await settled('builder-2')).state).toBe('done');
    await builder('builder-3', { image_version: '1.0.1', debian_suite: 'trixie' });
    expect((await settled('builder-3')).state).toBe('done');
    expect(await recipe('1.0.0')).toBe(first);
    expect(await recipe('1.0.1')).not.toBe(first);
    expect(readFileSync(join(log, 'debootstrap.args'), 'utf8')).toMatch(/ trixie /);
  }, 300_000);

  it('refuses a builder whose scripts do not run as root and that has no fakechroot, naming the tools and the other way', async () => {
    // A stand-in `id` makes the script see a user's uid; a PATH of only it, bash and debootstrap hides
    // fakechroot and fakeroot.
    const nonRoot = join(dir, 'nonroot');
    mkdirSync(nonRoot);
    writeFileSync(join(nonRoot, 'id'), '#!/bin/sh\ncase "$1" in -u) echo 1000 ;; -un) echo builder ;; *) echo "uid=1000(builder)" ;; esac\n', { mode: 0o755 });
    symlinkSync('/bin/bash', join(nonRoot, 'bash'));
    symlinkSync(join(fakes, 'debootstrap'), join(nonRoot, 'debootstrap'));
    const before = process.env.PATH;
    process.env.PATH = nonRoot;
    try {
      await builder('builder-4', { image_version: '2.0.0' });
    } finally {
      process.env.PATH = before;
    }
    const m = await settled('builder-4');
    expect(m.state).toBe('stopped');
    expect(await logOf((await jobOf('builder-4')).id)).toMatch(
      /debian-min: this task runs as uid 1000, not root, so it builds under fakechroot and fakeroot, and 'fakechroot' is not installed on the builder \(Debian: apt-get install fakechroot fakeroot\); or run the pipeline on a builder whose scripts run as root/,
    );
    expect((await call('GET', '/images/debian-min/2.0.0')).status).toBe(404);
  }, 120_000);
});

/**
 * The stand-in debootstrap of a builder whose scripts do not run as root: it must find itself inside
 * fakechroot (FAKECHROOT=true) and fakeroot (id -u 0), and makes what dpkg makes as root — other owners, a
 * setuid file, setgid directories — plus what --variant=fakechroot leaves (/dev and /proc links to the
 * builder's, ldconfig and ldd stand-ins diverted in dpkg's database), for the task to undo. It logs into
 * $HOME/fake-log: a sandboxed script's environment has nothing else of the test's.
 */
const FAKE_DEBOOTSTRAP_UNPRIV = `#!/bin/bash
set -eu
log="$HOME/fake-log"
mkdir -p "$log"
echo "$@" > "$log/debootstrap.args"
echo "FAKECHROOT=\${FAKECHROOT:-} uid=$(id -u)" > "$log/debootstrap.env"
root=\${@: -2:1}
mkdir -p "$root"/boot "$root"/etc/apt "$root"/etc/systemd/system "$root"/usr/local/sbin "$root"/usr/bin "$root"/usr/sbin "$root"/var/lib/dbus "$root"/var/lib/apt/lists "$root"/var/lib/dpkg/info "$root"/var/log/journal "$root"/var/cache/man "$root"/tmp
ln -s usr/sbin "$root/sbin"
head -c 1048576 /dev/zero > "$root/boot/vmlinuz-6.1.0-99-amd64"
head -c 1048576 /dev/zero > "$root/boot/initrd.img-6.1.0-99-amd64"
echo 0123456789abcdef > "$root/etc/machine-id"
# systemd makes it read-only (0444): the task, not root in truth, must still empty it
chmod 444 "$root/etc/machine-id"
echo 'root:*:19000:0:99999:7:::' > "$root/etc/shadow"
chown 0:42 "$root/etc/shadow"
chmod 640 "$root/etc/shadow"
printf '#!/bin/sh\\n' > "$root/usr/bin/su"
chmod 4755 "$root/usr/bin/su"
chown 0:101 "$root/var/log/journal"
chmod 2755 "$root/var/log/journal"
chown 6:12 "$root/var/cache/man"
chmod 2755 "$root/var/cache/man"
ln -s /dev "$root/dev"
ln -s /proc "$root/proc"
# fakechroot writes a link made in its chroot with the builder's path in front.
mkdir -p "$root/usr/share/zoneinfo/Etc"
echo UTC > "$root/usr/share/zoneinfo/Etc/UTC"
ln -s "$root/usr/share/zoneinfo/Etc/UTC" "$root/etc/localtime"
ln -s ../usr/share/zoneinfo/Etc/UTC "$root/etc/timezone-rel"
echo real-ldconfig > "$root/usr/sbin/ldconfig.REAL"
echo fake-ldconfig > "$root/usr/sbin/ldconfig"
echo real-ldd > "$root/usr/bin/ldd.REAL"
echo fake-ldd > "$root/usr/bin/ldd"
printf '/usr/bin/foo\\n/usr/bin/foo.distrib\\nfoo\\n/sbin/ldconfig\\n/sbin/ldconfig.REAL\\nfakechroot\\n/usr/bin/ldd\\n/usr/bin/ldd.REAL\\nfakechroot\\n' > "$root/var/lib/dpkg/diversions"
printf '#!/bin/sh\\n' > "$root/var/lib/dpkg/info/systemd.postinst"
`;
const FAKE_CHROOT_UNPRIV = `#!/bin/bash
set -eu
shift
echo "$*" >> "$HOME/fake-log/chroot.log"
`;
const haveFake = ['/usr/bin/fakechroot', '/usr/bin/fakeroot'].every(existsSync);

describe.skipIf(!haveTools || !isRoot || !haveFake)('the debian-min pipeline on a sandboxed local builder (its own uid: fakechroot and fakeroot)', () => {
  let ep: Endpoint;

  beforeAll(async () => {
    // The sandbox's user passes through the test's dir to the stand-ins and the takt CLI.
    chmodSync(dir, 0o711);
    const fakes = join(dir, 'fakes-unpriv');
    mkdirSync(fakes, { mode: 0o755 });
    writeFileSync(join(fakes, 'debootstrap'), FAKE_DEBOOTSTRAP_UNPRIV, { mode: 0o755 });
    writeFileSync(join(fakes, 'chroot'), FAKE_CHROOT_UNPRIV, { mode: 0o755 });
    writeFileSync(join(fakes, 'takt'), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(TAKT)} "$@"\n`, { mode: 0o755 });
    // The endpoint's PATH is its local machines' scripts' PATH.
    ep = await Endpoint.start({ env: { PATH: `${fakes}:${process.env.PATH}` } });
    const push = await ep.cli(['content', 'push', PACK_DIR]);
    expect(push.code, push.stderr).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await ep?.stop();
  });

  it("builds in fakechroot+fakeroot as the machine's uid and the image's root has the faked owners, modes and device nodes", async () => {
    const r = await ep.call('POST', '/machines', { name: 'sandboxed', broker: 'local', pipeline: 'debian-min', params: { image_version: '3.0.0' } });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const m = await until(async () => {
      const b = (await ep.call('GET', '/machines/sandboxed')).body as Machine;
      return b.state === 'done' || b.state === 'stopped' ? b : null;
    }, 240_000, 'the sandboxed builder to finish');
    const job = ((await ep.call('GET', '/jobs?machine=sandboxed')).body.items as Job[])[0]!;
    const log = ((await ep.call('GET', `/jobs/${job.id}/log`)).body.chunks as Array<{ data: string }>).map((c) => c.data).join('');
    expect(m.state, `${m.reason}\n${log}\n${ep.output.slice(-4000)}`).toBe('done');

    // Its scripts ran as the machine's own uid, not root.
    const mdir = join(ep.data, 'machines', m.id);
    const uid = statSync(join(mdir, 'root')).uid;
    expect(uid).toBeGreaterThanOrEqual(1_600_000_000);
    const fakeLog = join(mdir, 'home', 'fake-log');
    expect(readFileSync(join(fakeLog, 'debootstrap.env'), 'utf8')).toBe('FAKECHROOT=true uid=0\n');
    expect(readFileSync(join(fakeLog, 'debootstrap.args'), 'utf8').trim()).toMatch(
      /^--variant=fakechroot --include=linux-image-amd64,systemd-sysv,udev,initramfs-tools,e2fsprogs bookworm \S+\/var\/tmp\/takt-debian-min\/j-\S+\/rootfs http:\/\/deb\.debian\.org\/debian$/,
    );
    expect(readFileSync(join(fakeLog, 'chroot.log'), 'utf8')).toBe('sh /var/lib/dpkg/info/systemd.postinst configure\nsystemctl enable systemd-networkd.service takt-agent.service\napt-get clean\n');
    expect(log).toMatch(/debootstrap --variant=fakechroot bookworm .* \(as fake\)/);
    expect((await ep.call('GET', '/images/debian-min/3.0.0')).body).toMatchObject({ name: 'debian-min', version: '3.0.0', size: job.outputs.image_bytes });

    const work = join(mdir, 'root', 'var', 'tmp', 'takt-debian-min', job.id);
    const img = join(work, 'debian-min.img');
    const table = JSON.parse(execFileSync('sfdisk', ['-J', img], { encoding: 'utf8' })) as { partitiontable: { partitions: Array<{ start: number; size: number }> } };
    const rootPart = table.partitiontable.partitions[1]!;
    const part = join(dir, 'sandboxed-root.ext4');
    execFileSync('dd', [`if=${img}`, `of=${part}`, 'bs=512', `skip=${rootPart.start}`, `count=${rootPart.size}`, 'status=none']);
    const debugfs = (req: string) => execFileSync('debugfs', ['-R', req, part], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const owner = (path: string) => {
      const st = debugfs(`stat ${path}`);
      const u = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(st);
      const mode = /Mode:\s+(\d+)/.exec(st);
      const type = /Type:\s+(\S+)/.exec(st);
      return `${type?.[1]} ${mode?.[1]} ${u?.[1]}:${u?.[2]}`;
    };
    // What the stand-in made as (fake) root, as dpkg would: the faked owners and modes, not the sandbox uid.
    expect(
      Object.fromEntries(['/etc/shadow', '/usr/bin/su', '/var/log/journal', '/var/cache/man', '/dev', '/dev/console', '/dev/null', '/proc', '/etc/fstab', '/usr/local/sbin/takt-agent-boot', '/opt/takt/bin/takt', '/etc/machine-id'].map((p) => [p, owner(p)])),
    ).toEqual({
      '/etc/shadow': 'regular 0640 0:42',
      '/usr/bin/su': 'regular 04755 0:0',
      '/var/log/journal': 'directory 02755 0:101',
      '/var/cache/man': 'directory 02755 6:12',
      '/dev': 'directory 0755 0:0',
      '/dev/console': 'character 0600 0:0',
      '/dev/null': 'character 0666 0:0',
      '/proc': 'directory 0555 0:0',
      // Written by the task as the sandbox uid, outside fakeroot: root's in the image all the same.
      '/etc/fstab': 'regular 0644 0:0',
      '/usr/local/sbin/takt-agent-boot': 'regular 0755 0:0',
      '/opt/takt/bin/takt': 'regular 0755 0:0',
      '/etc/machine-id': 'regular 0444 0:0',
    });
    expect(debugfs('stat /dev/console')).toMatch(/Device major\/minor number: 05:01/);
    expect(debugfs('stat /dev/null')).toMatch(/Device major\/minor number: 01:03/);
    // Nothing in the image belongs to the sandbox's uid.
    expect(debugfs('ls -l /')).not.toContain(String(uid));
    expect(debugfs('ls -l /opt/takt/lib')).not.toContain(String(uid));
    // Links fakechroot wrote with the builder's path in front point into the image's own root; others are kept.
    expect(debugfs('stat /etc/localtime')).toMatch(/Fast link dest: "\/usr\/share\/zoneinfo\/Etc\/UTC"/);
    expect(debugfs('stat /etc/timezone-rel')).toMatch(/Fast link dest: "\.\.\/usr\/share\/zoneinfo\/Etc\/UTC"/);
    expect(log).toMatch(/debian-min: 1 absolute links made under fakechroot pointed into the builder's \S+\/rootfs; each now points into the image's own root/);
    // fakechroot's stand-ins are undone: the real ldconfig and ldd, no diversions of fakechroot's.
    expect(debugfs('cat /usr/sbin/ldconfig')).toBe('real-ldconfig\n');
    expect(debugfs('cat /usr/bin/ldd')).toBe('real-ldd\n');
    expect(debugfs('cat /var/lib/dpkg/diversions')).toBe('/usr/bin/foo\n/usr/bin/foo.distrib\nfoo\n');
    // The tree and fakeroot's record of it are gone; the image stays for the upload.
    expect(existsSync(join(work, 'rootfs'))).toBe(false);
    expect(existsSync(join(work, 'fakeroot.state'))).toBe(false);
  }, 300_000);
});
