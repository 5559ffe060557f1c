/**
 * The `discovery` boot environment, built from Debian packages on the endpoint's host
 * (`takt bootenv build discovery`): Debian's kernel (kernel.ts) and an initramfs holding busybox, bash,
 * the glibc they and Node need, and the same takt agent bundle joined hosts install (join/bundle.ts) —
 * one agent, not two. Its /init takes a DHCP lease, runs `takt agent discover` (registers with the
 * discovery credential on the kernel command line, agent/discover.ts) and then `takt agent`, which runs
 * whatever pipeline the machine is given in memory. Measured (provisioning-facts.md §2): ~116 MB
 * unpacked, ~41 MB with gzip (~35 MB with zstd); the kernel's unpacking is 1–11 s of guest time under
 * software emulation, depending on the load (docs/performance.md, Discovery boot).
 *
 * The result is a content pack directory (pack.yaml + bootenvs/discovery.yaml + the two files) whose
 * artifacts are local paths with their sha256, ready for `takt content install`.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { DISCOVERY_BOOTENV } from '../model/boot.js';
import { TaktError } from '../model/errors.js';
import { writeNewc, type CpioEntry } from './cpio.js';
import { buildDiskImage, type DiskImage } from './disk-image.js';
import { busyboxEntries, debianKernel, moduleClosure, moduleEntries, provisionCacheDir, SLEDGE_MODULES, SLEDGE_UDHCPC, type BootKernel } from './kernel.js';

const run = promisify(execFile);

/** Where the agent bundle lives inside the initramfs (its bin/takt is the CLI). */
export const DISCOVERY_AGENT_DIR = 'opt/takt';
/** The marker the discovery /init prints when the agent has registered; tests and operators follow it. */
export const DISCOVERY_MARKER = 'TAKT-DISCOVERY:';

/**
 * The discovery /init (busybox sh as PID 1). `takt agent` exits 64 when the endpoint asks the machine to
 * reboot (a stage needs another bootenv): PID 1 then reboots; any other exit starts the agent again after
 * a pause, since PID 1 must never exit.
 */
export const DISCOVERY_INIT = `#!/bin/sh
export PATH=/bin:/usr/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mkdir -p /run/takt /dev/pts /root
up() { read u _ </proc/uptime; echo "up=\${u}s"; }
echo "${DISCOVERY_MARKER} init started $(up)"
for m in $(cat /etc/takt-modules); do insmod "/lib/modules/$m" 2>/dev/null; done
hostname discovery
ifc=
n=0
while [ -z "$ifc" ] && [ $n -lt 100 ]; do
  for d in /sys/class/net/*; do
    i=\${d##*/}
    [ "$i" != lo ] && [ -e "$d/device" ] && [ -z "$ifc" ] && ifc=$i
  done
  [ -z "$ifc" ] && sleep 0.1
  n=$((n + 1))
done
ip link set lo up
if [ -z "$ifc" ]; then
  echo "${DISCOVERY_MARKER} no network interface"
else
  ip link set "$ifc" up
  until udhcpc -i "$ifc" -s /etc/udhcpc.sh -q -f -n -t 10 -T 1 >/dev/null 2>&1; do
    echo "${DISCOVERY_MARKER} dhcp failed on $ifc; trying again"
    sleep 2
  done
  echo "${DISCOVERY_MARKER} dhcp on $ifc $(cat /tmp/lease) mac $(cat /sys/class/net/$ifc/address) $(up)"
fi
takt=/${DISCOVERY_AGENT_DIR}/bin/takt
# Booted from a disk takt deployed (its boot entry says takt.boot=disk): join with the disk's join block,
# once (agent/deployed.ts); later rounds of the loop keep the token it got. Else: discovery.
join=discover
grep -q 'takt.boot=disk' /proc/cmdline && join=deployed
while true; do
  echo "${DISCOVERY_MARKER} agent starting ($join) $(up)"
  if [ "$join" = deployed ] && [ -s /run/takt/api ] && [ -s /run/takt/token ]; then
    api=$(cat /run/takt/api)
  elif api=$($takt agent --dir /run/takt $join); then
    echo "$api" > /run/takt/api
  else
    api=
  fi
  if [ -n "$api" ]; then
    echo "${DISCOVERY_MARKER} registered with $api $(up)"
    $takt agent --endpoint "$api" --token-file /run/takt/token --ca /run/takt/ca.pem --dir /run/takt --report-facts
    code=$?
    echo "${DISCOVERY_MARKER} agent exited $code"
    if [ "$code" = 64 ]; then sync; reboot -f; fi
  else
    echo "${DISCOVERY_MARKER} registration failed $(up)"
  fi
  sleep 10
done
`;

/**
 * The discovery bootenv's command line. The last `console=` is /dev/console, where /init writes: the
 * serial port, so markers reach a serial console (and a BMC's serial-over-LAN); the kernel logs to both.
 */
export const DISCOVERY_CMDLINE = 'console=tty0 console=ttyS0 quiet takt.bootenv=discovery takt.api={{ boot.api }} takt.ca={{ boot.ca }} takt.token={{ boot.token }}';

/** Every file ldd says `binary` loads, glibc and the loader included (the initramfs has no libc of its own). */
export async function allLibraries(binary: string): Promise<string[]> {
  let out: string;
  try {
    out = (await run('ldd', [binary], { timeout: 30_000 })).stdout;
  } catch (err) {
    throw new TaktError('unavailable', `\`ldd ${binary}\` failed: ${(err as Error).message.split('\n')[0]} (Debian: apt-get install libc-bin)`);
  }
  return parseLddAll(out);
}

/** The absolute paths in ldd output: `name => /path (0x…)` and the loader's `/path (0x…)` line. */
export function parseLddAll(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(?:\S+\s+=>\s+)?(\/\S+)\s+\(0x[0-9a-f]+\)/.exec(line);
    if (m && !out.includes(m[1]!)) out.push(m[1]!);
  }
  return out;
}

/** Parent directories of `path` (relative, no leading slash), outermost first. */
function parents(path: string): string[] {
  const out: string[] = [];
  for (let d = dirname(path); d !== '.' && d !== '/' && d !== ''; d = dirname(d)) out.unshift(d);
  return out;
}

/** A built discovery environment. */
export interface DiscoveryEnv {
  /** The pack directory (pack.yaml, bootenvs/discovery.yaml, files/). */
  dir: string;
  kernel: { path: string; sha256: string; bytes: number };
  initrd: { path: string; sha256: string; bytes: number };
  /** The Debian kernel package it boots. */
  kernelPackage: string;
  /** The pack's version: the takt version and a digest of the two files. */
  version: string;
}

export interface BuildOptions {
  /** Where the pack goes (created; files replaced). */
  out: string;
  /** The agent bundle (.tar.gz) to put in (AgentBundle.get()). */
  bundle: string;
  /** The takt version, for the pack's version. */
  version: string;
  cacheDir?: string;
  kernel?: BootKernel;
  log?: (msg: string) => void;
  /** Progress of the long steps, for a bar: 0…1 with what is being done. */
  progress?: (fraction: number, what: string) => void;
  /** How the initramfs is compressed (default gzip): part of the build's key. */
  compression?: InitrdCompression;
}

/**
 * How the initramfs is compressed. The kernel decompresses it on the machine's CPU before /init runs, so
 * this is boot time: Debian's kernel has gzip, xz, lz4 and zstd built in (CONFIG_RD_*). Measured under
 * software emulation (docs/performance.md, Discovery boot), zstd (15 % smaller) was not consistently
 * faster to unpack than gzip, so gzip stays the default; `none` skips the step but is ~3× the bytes to
 * send. zstd and none are for `npm run bench -- discover` and for builds that ask for them.
 */
export type InitrdCompression = 'gzip' | 'zstd' | 'none';

/** The file name suffix of each compression. */
const SUFFIX: Record<InitrdCompression, string> = { gzip: '.gz', zstd: '.zst', none: '' };

/**
 * `data` compressed as `how`. zstd runs the `zstd` command (level 9, all cores: the kernel's decompressor
 * takes any level's frames; levels above 19 need a larger window than it allows).
 * @throws TaktError unavailable when zstd is asked for and not installed.
 */
export async function compressInitrd(data: Buffer, how: InitrdCompression): Promise<Buffer> {
  if (how === 'none') return data;
  if (how === 'gzip') return gzipSync(data, { level: 6 });
  return await new Promise<Buffer>((resolvePromise, reject) => {
    const p = spawn('zstd', ['-q', '-9', '-T0', '-c'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    p.stdout.on('data', (b: Buffer) => out.push(b));
    p.stderr.on('data', (b: Buffer) => (err += b.toString()));
    p.once('error', (e: NodeJS.ErrnoException) =>
      reject(e.code === 'ENOENT' ? new TaktError('unavailable', "compressing the initramfs with zstd: 'zstd' is not installed (Debian: apt-get install zstd)") : e),
    );
    p.once('close', (code) => (code === 0 ? resolvePromise(Buffer.concat(out)) : reject(new TaktError('internal', `zstd exited ${code}: ${err.trim()}`))));
    p.stdin.on('error', () => undefined); // a zstd that died early is reported by 'close'
    p.stdin.end(data);
  });
}

/**
 * Builds the discovery environment into `opts.out` as a content pack.
 * @throws TaktError unavailable when a Debian tool or package is missing (saying which to install).
 */
export async function buildDiscoveryEnv(opts: BuildOptions): Promise<DiscoveryEnv> {
  const progress = opts.progress ?? (() => undefined);
  progress(0, 'kernel');
  const kernel = opts.kernel ?? (await debianKernel({ ...(opts.cacheDir ? { cacheDir: opts.cacheDir } : {}), ...(opts.log ? { log: opts.log } : {}) }));
  // Built once per set of inputs: a second build with the same kernel, agent bundle, init and host
  // binaries returns the pack already in `out` (the compression alone takes ~20 s).
  const out = resolve(opts.out);
  const compression = opts.compression ?? 'gzip';
  const key = buildKey(kernel, opts.bundle, opts.version, compression);
  const kept = keptBuild(out, key);
  if (kept) {
    progress(1, 'already built with the same inputs');
    return kept;
  }
  progress(0.2, 'agent bundle');
  const stage = mkdtempSync(join(tmpdir(), 'takt-discovery-'));
  try {
    const tar = await import('tar');
    await tar.extract({ file: opts.bundle, cwd: stage });
    if (!existsSync('/bin/bash')) throw new TaktError('unavailable', '/bin/bash is missing: task scripts run with bash (Debian: apt-get install bash)');
    const bash = realpathSync('/bin/bash');
    progress(0.3, 'libraries');
    const libs = new Set<string>([...(await allLibraries(join(stage, 'lib', 'node'))), ...(await allLibraries(bash))]);

    const entries: CpioEntry[] = [];
    const dirs = new Set<string>();
    const dir = (d: string) => {
      for (const p of [...parents(`${d}/x`)]) {
        if (!dirs.has(p)) {
          dirs.add(p);
          entries.push({ type: 'dir', path: p });
        }
      }
    };
    busyboxEntries(entries, dirs, ['env']);
    moduleEntries(entries, kernel, moduleClosure(kernel.modulesDir, SLEDGE_MODULES));
    for (const d of ['run', 'root', 'usr/bin']) dir(d);
    entries.push({ type: 'symlink', path: 'usr/bin/env', target: '/bin/busybox' });
    entries.push({ type: 'file', path: 'bin/bash', data: readFileSync(bash), mode: 0o755 });
    entries.push({ type: 'symlink', path: 'usr/bin/bash', target: '/bin/bash' });
    for (const lib of [...libs].sort()) {
      const path = lib.replace(/^\/+/, '');
      dir(dirname(path));
      // Contents of the real file, at the path the loader looks for (symlinks such as /lib64's resolved).
      entries.push({ type: 'file', path, data: readFileSync(realpathSync(lib)), mode: 0o755 });
    }
    // The agent bundle, as joined hosts unpack it.
    const walk = (rel: string) => {
      for (const name of readdirSync(join(stage, rel)).sort()) {
        const r = rel ? `${rel}/${name}` : name;
        const st = statSync(join(stage, r));
        if (st.isDirectory()) {
          dir(`${DISCOVERY_AGENT_DIR}/${r}`);
          walk(r);
        } else if (st.isFile()) {
          dir(dirname(`${DISCOVERY_AGENT_DIR}/${r}`));
          entries.push({ type: 'file', path: `${DISCOVERY_AGENT_DIR}/${r}`, data: readFileSync(join(stage, r)), mode: st.mode & 0o777 });
        }
      }
    };
    dir(DISCOVERY_AGENT_DIR);
    walk('');
    entries.push({ type: 'file', path: 'init', data: Buffer.from(DISCOVERY_INIT), mode: 0o755 });
    entries.push({ type: 'file', path: 'etc/udhcpc.sh', data: Buffer.from(SLEDGE_UDHCPC), mode: 0o755 });
    progress(0.5, `compressing the initramfs (${compression})`);
    const gz = await compressInitrd(writeNewc(entries), compression);

    progress(0.9, 'writing the pack');
    mkdirSync(join(out, 'files'), { recursive: true });
    mkdirSync(join(out, 'bootenvs'), { recursive: true });
    const initrdPath = join(out, 'files', `discovery.cpio${SUFFIX[compression]}`);
    for (const f of readdirSync(join(out, 'files'))) if (f.startsWith('discovery.cpio') && join(out, 'files', f) !== initrdPath) rmSync(join(out, 'files', f), { force: true });
    const kernelPath = join(out, 'files', 'vmlinuz');
    const tmp = `${initrdPath}.tmp-${randomBytes(4).toString('hex')}`;
    writeFileSync(tmp, gz);
    renameSync(tmp, initrdPath);
    copyFileSync(kernel.vmlinuz, `${kernelPath}.tmp`);
    renameSync(`${kernelPath}.tmp`, kernelPath);
    const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
    const k = { path: kernelPath, sha256: sha(kernelPath), bytes: statSync(kernelPath).size };
    const i = { path: initrdPath, sha256: createHash('sha256').update(gz).digest('hex'), bytes: gz.length };
    const version = `${opts.version}+${createHash('sha256').update(k.sha256).update(i.sha256).digest('hex').slice(0, 12)}`;
    writeFileSync(join(out, 'pack.yaml'), `name: ${DISCOVERY_BOOTENV}\nversion: ${version}\ndescription: takt's discovery environment (${kernel.package}, busybox, the takt agent), built by takt bootenv build discovery\n`);
    writeFileSync(join(out, 'bootenvs', `${DISCOVERY_BOOTENV}.yaml`), discoveryBootenvYaml(k, i, kernel.package));
    const env: DiscoveryEnv = { dir: out, kernel: k, initrd: i, kernelPackage: kernel.package, version };
    writeFileSync(join(out, '.build.json'), `${JSON.stringify({ key, env }, null, 2)}\n`);
    progress(1, 'done');
    return env;
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

/**
 * The bootenv definition: the agent finds the endpoint's API, the CA it pins and its discovery
 * credential on the command line (agent/discover.ts), and its own name for facts in `takt.bootenv`.
 */
export function discoveryBootenvYaml(k: { path: string; sha256: string }, i: { path: string; sha256: string }, kernelPackage: string): string {
  return [
    `name: ${DISCOVERY_BOOTENV}`,
    `description: In-memory environment for machines takt does not know yet (${kernelPackage}); registers them and runs their pipelines`,
    `kernel: { name: vmlinuz, path: ${JSON.stringify(k.path)}, sha256: ${k.sha256} }`,
    'initrds:',
    `  - { name: ${basename(i.path)}, path: ${JSON.stringify(i.path)}, sha256: ${i.sha256} }`,
    // initrd=NAME: under UEFI, iPXE hands the initrd to the kernel's EFI stub by this name (BIOS ignores it).
    `cmdline: initrd=${basename(i.path)} ${DISCOVERY_CMDLINE}`,
    '',
  ].join('\n');
}

/** What a build depends on: the kernel package, the bundle (its path names its key), /init, busybox, bash, the compression. */
function buildKey(kernel: BootKernel, bundle: string, version: string, compression: InitrdCompression): string {
  const h = createHash('sha256').update(`${version}\0${kernel.package}\0${bundle}\0${statSync(bundle).size}\0${compression}\0`).update(DISCOVERY_INIT).update(SLEDGE_UDHCPC).update(DISCOVERY_CMDLINE).update('initrd= on the cmdline (UEFI)');
  // statSync follows links: a missing file hashes as size 0 (the build itself then says what to install).
  for (const f of ['/bin/busybox', '/bin/bash']) {
    const st = statSync(f, { throwIfNoEntry: false });
    h.update(`${f}\0${st?.size ?? 0}\0${st?.mtimeMs ?? 0}\0`);
  }
  return h.digest('hex');
}

/** The pack in `out` when it was built from inputs with `key` and its files are still whole. */
function keptBuild(out: string, key: string): DiscoveryEnv | null {
  try {
    const { key: k, env } = JSON.parse(readFileSync(join(out, '.build.json'), 'utf8')) as { key: string; env: DiscoveryEnv };
    if (k !== key) return null;
    for (const f of [env.kernel, env.initrd]) if (statSync(f.path).size !== f.bytes) return null;
    return env;
  } catch {
    return null;
  }
}

/**
 * The kernel command line of the same environment installed on a disk (`agentDiskImage`): no discovery
 * credential — the OS joins with the join block its deploy wrote (DISCOVERY_INIT's `takt.boot=disk`).
 */
export const DEPLOYED_CMDLINE = 'console=tty0 console=ttyS0 quiet takt.bootenv=local takt.boot=disk';

/**
 * A bootable disk image (BIOS and UEFI, disk-image.ts) of the built environment: its kernel and initramfs
 * booted from disk with DEPLOYED_CMDLINE, so the machine it is deployed to comes up running takt's agent
 * and joins as itself (agent/deployed.ts). The smallest OS an image deploy can be proved with end to end;
 * it lives in memory, so a reboot needs a new deploy (its join block was used) or a discovery boot.
 */
export async function agentDiskImage(env: Pick<DiscoveryEnv, 'kernel' | 'initrd' | 'version'>, out: string): Promise<DiskImage> {
  return buildDiskImage({
    out,
    kernel: env.kernel.path,
    initrd: env.initrd.path,
    cmdline: DEPLOYED_CMDLINE,
    rootFiles: { 'etc/takt-image': `takt agent OS, discovery environment ${env.version}\n` },
  });
}

/** Where `takt bootenv build discovery` puts the pack by default: the provisioning cache. */
export function defaultDiscoveryDir(): string {
  return join(provisionCacheDir(), 'bootenvs', DISCOVERY_BOOTENV);
}
