/**
 * The boot artifacts of the small in-memory environment ("sledgehammer") that network-booted machines
 * and the VM tests start: Debian's current kernel, downloaded (never installed on the host) with
 * `apt-get download` and unpacked with `dpkg-deb`, and a busybox initramfs built here.
 *
 * The initramfs (cpio newc + gzip, see cpio.ts) holds busybox-static, the network drivers a VM or a
 * typical server needs (virtio-net, e1000, their dependencies from the kernel's modules.dep) and an
 * /init that prints `TAKT-SLEDGE:` markers on the console, takes a DHCP lease with `udhcpc`, fetches the
 * URL given as `takt.url=` on the kernel command line with `wget` and runs it with `sh`.
 *
 * Everything is cached under `provisionCacheDir()` (TAKT_PROVISION_CACHE, else ~/.cache/takt/provision),
 * keyed by the kernel package and a hash of the initramfs inputs, so repeated runs reuse it. Each cache
 * entry is built in a temporary directory and renamed into place, so two runs racing never see half an
 * entry. Needs Debian's apt, dpkg-deb, depmod (kmod) and /bin/busybox (busybox-static).
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { TaktError } from '../model/errors.js';
import { writeNewc, type CpioEntry } from './cpio.js';

const run = promisify(execFile);

/** A kernel unpacked from a Debian package. */
export interface BootKernel {
  /** The Debian package, e.g. `linux-image-6.1.0-57-amd64`. */
  package: string;
  /** The kernel release (`uname -r`), e.g. `6.1.0-57-amd64`. */
  release: string;
  /** Absolute path of the bzImage. */
  vmlinuz: string;
  /** Absolute path of `lib/modules/<release>` (with modules.dep made by depmod). */
  modulesDir: string;
}

/** The marker /init prints first; tests and the broker wait for it on the serial console. */
export const SLEDGE_MARKER = 'TAKT-SLEDGE: init started';

/** Modules the initramfs loads (with their dependencies): enough for DHCP on a VM or a common server NIC. */
export const SLEDGE_MODULES = ['virtio_pci', 'virtio_net', 'virtio_blk', 'e1000', 'e1000e'];

/** The cache directory: TAKT_PROVISION_CACHE, else `~/.cache/takt/provision`. */
export function provisionCacheDir(): string {
  return process.env.TAKT_PROVISION_CACHE || join(homedir(), '.cache', 'takt', 'provision');
}

async function tool(cmd: string, args: string[], what: string, opts: { cwd?: string; timeoutMs?: number } = {}): Promise<string> {
  try {
    return (await run(cmd, args, { cwd: opts.cwd, timeout: opts.timeoutMs ?? 300_000, maxBuffer: 16 << 20 })).stdout;
  } catch (err) {
    const e = err as { code?: string; stderr?: string; message: string };
    if (e.code === 'ENOENT') throw new TaktError('unavailable', `${what}: '${cmd}' is not installed (Debian: apt-get install ${cmd === 'depmod' ? 'kmod' : cmd === 'dpkg-deb' ? 'dpkg' : 'apt'})`);
    throw new TaktError('unavailable', `${what}: ${cmd} ${args.join(' ')}: ${(e.stderr || e.message).trim().split('\n').slice(-3).join(' ')}`);
  }
}

/**
 * The package `linux-image-amd64` currently depends on (it moves with Debian point releases), from the
 * host's apt lists. @throws TaktError unavailable when apt knows no such package.
 */
export async function resolveKernelPackage(meta = 'linux-image-amd64'): Promise<string> {
  const out = await tool('apt-cache', ['depends', meta], `resolving ${meta}`);
  const m = /Depends:\s+(linux-image-[0-9][^\s]*)/.exec(out);
  if (!m) throw new TaktError('unavailable', `resolving ${meta}: apt-cache names no linux-image-<version> package (run apt-get update)`);
  return m[1]!;
}

function atomicDir(final: string, build: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = `${final}.tmp-${randomBytes(4).toString('hex')}`;
  mkdirSync(tmp, { recursive: true });
  return build(tmp).then(
    () => {
      try {
        renameSync(tmp, final);
      } catch (err) {
        // Another run won the race: its entry is as good as ours.
        rmSync(tmp, { recursive: true, force: true });
        if (!existsSync(final)) throw err;
      }
    },
    (err: unknown) => {
      rmSync(tmp, { recursive: true, force: true });
      throw err;
    },
  );
}

function kernelIn(dir: string, pkg: string): BootKernel {
  const boot = join(dir, 'boot');
  const image = readdirSync(boot).find((f) => f.startsWith('vmlinuz-'));
  if (!image) throw new TaktError('internal', `${dir}: no boot/vmlinuz-* in the unpacked ${pkg}`);
  const release = image.slice('vmlinuz-'.length);
  return { package: pkg, release, vmlinuz: join(boot, image), modulesDir: join(dir, 'lib', 'modules', release) };
}

/**
 * Debian's current amd64 kernel, downloaded and unpacked into the cache (once per package version).
 * When apt cannot resolve the package (no lists, no network) the newest kernel already cached is used.
 * @throws TaktError unavailable when neither works, naming the failing tool.
 */
export async function debianKernel(opts: { cacheDir?: string; log?: (msg: string) => void } = {}): Promise<BootKernel> {
  const root = join(opts.cacheDir ?? provisionCacheDir(), 'kernel');
  mkdirSync(root, { recursive: true });
  let pkg: string;
  try {
    pkg = await resolveKernelPackage();
  } catch (err) {
    const cached = readdirSync(root).filter((d) => d.startsWith('linux-image-') && !d.includes('.tmp-')).sort();
    const newest = cached.at(-1);
    if (!newest) throw err;
    opts.log?.(`apt could not resolve the kernel (${(err as Error).message}); using the cached ${newest}`);
    return kernelIn(join(root, newest), newest);
  }
  const dir = join(root, pkg);
  if (!existsSync(dir)) {
    opts.log?.(`downloading ${pkg}`);
    await atomicDir(dir, async (tmp) => {
      // apt-get download writes into its working directory.
      await tool('apt-get', ['download', '-q', pkg], `downloading ${pkg}`, { cwd: tmp });
      const deb = readdirSync(tmp).find((f) => f.endsWith('.deb'));
      if (!deb) throw new TaktError('unavailable', `downloading ${pkg}: apt-get wrote no .deb`);
      await tool('dpkg-deb', ['-x', deb, '.'], `unpacking ${pkg}`, { cwd: tmp });
      rmSync(join(tmp, deb));
      const k = kernelIn(tmp, pkg);
      // modules.dep is made by depmod at install time, which never happens here.
      await tool('depmod', ['-b', tmp, k.release], `indexing the modules of ${pkg}`);
    });
  }
  return kernelIn(dir, pkg);
}

/**
 * The module files (relative to the modules dir) for `names` and everything they depend on, dependencies
 * first, from modules.dep. Names built into the kernel (modules.builtin) are skipped.
 * @throws TaktError internal for a module the kernel has neither as a file nor built in.
 */
export function moduleClosure(modulesDir: string, names: string[]): string[] {
  const deps = new Map<string, string[]>();
  for (const line of readFileSync(join(modulesDir, 'modules.dep'), 'utf8').split('\n')) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    deps.set(line.slice(0, i), line.slice(i + 1).trim().split(/\s+/).filter(Boolean));
  }
  const byName = new Map<string, string>();
  const base = (p: string) => p.slice(p.lastIndexOf('/') + 1).replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_');
  for (const p of deps.keys()) byName.set(base(p), p);
  const builtin = new Set(readFileSync(join(modulesDir, 'modules.builtin'), 'utf8').split('\n').filter(Boolean).map(base));
  const out: string[] = [];
  const seen = new Set<string>();
  const visit = (p: string) => {
    if (seen.has(p)) return;
    seen.add(p);
    for (const d of deps.get(p) ?? []) visit(d);
    out.push(p);
  };
  for (const n of names) {
    const key = n.replace(/-/g, '_');
    const p = byName.get(key);
    if (p) visit(p);
    else if (!builtin.has(key)) throw new TaktError('internal', `kernel module '${n}' is neither in ${modulesDir}/modules.dep nor built in`);
  }
  return out;
}

/** The initramfs /init (busybox sh). Markers start with `TAKT-SLEDGE:` so a console reader can follow it. */
export const SLEDGE_INIT = `#!/bin/sh
# takt sledgehammer: the smallest environment that gets a network-booted machine onto the network.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "${SLEDGE_MARKER}"
for m in $(cat /etc/takt-modules); do insmod "/lib/modules/$m" 2>/dev/null; done
url=
for w in $(cat /proc/cmdline); do
  case "$w" in takt.url=*) url="\${w#takt.url=}" ;; esac
done
ifc=
n=0
while [ -z "$ifc" ] && [ $n -lt 50 ]; do
  for d in /sys/class/net/*; do
    i=\${d##*/}
    [ "$i" != lo ] && [ -z "$ifc" ] && ifc=$i
  done
  [ -z "$ifc" ] && sleep 0.1
  n=$((n + 1))
done
if [ -z "$ifc" ]; then
  echo "TAKT-SLEDGE: no network interface"
else
  ip link set lo up
  ip link set "$ifc" up
  if udhcpc -i "$ifc" -s /etc/udhcpc.sh -q -f -n -t 10 -T 1 >/dev/null 2>&1; then
    echo "TAKT-SLEDGE: dhcp on $ifc $(cat /tmp/lease) mac $(cat /sys/class/net/$ifc/address)"
  else
    echo "TAKT-SLEDGE: dhcp failed on $ifc"
  fi
fi
if [ -z "$url" ]; then
  echo "TAKT-SLEDGE: no takt.url on the kernel command line"
elif wget -q -O /tmp/agent "$url"; then
  echo "TAKT-SLEDGE: fetched $url"
  sh /tmp/agent
  echo "TAKT-SLEDGE: agent exited $?"
else
  echo "TAKT-SLEDGE: agent fetch failed: $url"
fi
# PID 1 must not exit (the kernel would panic); wait for power control.
while true; do sleep 3600; done
`;

/** udhcpc's event script (busybox passes the lease in the environment; \`mask\` is the prefix length). */
export const SLEDGE_UDHCPC = `#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    echo "$ip/$mask" > /tmp/lease ;;
esac
exit 0
`;

/** A built initramfs. */
export interface Initramfs {
  /** Absolute path of the gzip'd cpio. */
  path: string;
  /** Its sha256 (hex). */
  sha256: string;
  /** The module files it loads, in order. */
  modules: string[];
}

/**
 * The busybox initramfs for `kernel`, built once per set of inputs (kernel, busybox binary, /init,
 * modules) and cached as `<cache>/initramfs/sledge-<hash>.cpio.gz`.
 * @throws TaktError unavailable when /bin/busybox (busybox-static) is missing.
 */
export function sledgeInitramfs(kernel: BootKernel, opts: { cacheDir?: string; busybox?: string; modules?: string[] } = {}): Initramfs {
  const busyboxPath = opts.busybox ?? '/bin/busybox';
  if (!existsSync(busyboxPath)) throw new TaktError('unavailable', `${busyboxPath} is missing: the initramfs needs a static busybox (Debian: apt-get install busybox-static)`);
  const busybox = readFileSync(busyboxPath);
  const modules = moduleClosure(kernel.modulesDir, opts.modules ?? SLEDGE_MODULES);
  const key = createHash('sha256')
    .update(kernel.package).update('\0').update(busybox).update('\0').update(SLEDGE_INIT).update(SLEDGE_UDHCPC)
    .update(modules.join('\n'))
    .digest('hex')
    .slice(0, 16);
  const dir = join(opts.cacheDir ?? provisionCacheDir(), 'initramfs');
  const path = join(dir, `sledge-${key}.cpio.gz`);
  if (existsSync(path)) return { path, sha256: createHash('sha256').update(readFileSync(path)).digest('hex'), modules };

  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  busyboxEntries(entries, dirs, [], busyboxPath);
  moduleEntries(entries, kernel, modules);
  entries.push({ type: 'file', path: 'init', data: Buffer.from(SLEDGE_INIT), mode: 0o755 });
  entries.push({ type: 'file', path: 'etc/udhcpc.sh', data: Buffer.from(SLEDGE_UDHCPC), mode: 0o755 });
  const gz = gzipSync(writeNewc(entries), { level: 6 });
  mkdirSync(dir, { recursive: true });
  const tmp = `${path}.tmp-${randomBytes(4).toString('hex')}`;
  writeFileSync(tmp, gz);
  renameSync(tmp, path);
  return { path, sha256: createHash('sha256').update(gz).digest('hex'), modules };
}

/** Busybox applets every takt initramfs links (as symlinks: no `busybox --install` step at boot). */
export const BUSYBOX_APPLETS = ['sh', 'mount', 'insmod', 'ip', 'udhcpc', 'wget', 'cat', 'sleep', 'echo', 'ls', 'dmesg', 'uname', 'reboot', 'poweroff', 'sync', 'dd', 'gunzip', 'sha256sum', 'head', 'grep', 'sed', 'awk', 'free', 'df', 'ps', 'kill', 'mkdir', 'rm', 'cp', 'mv', 'ln', 'hostname', 'ifconfig', 'route', 'ping', 'nc', 'tr', 'cut', 'wc', 'true', 'false', 'test', '['];

/**
 * The base of a takt initramfs, appended to `entries`: the directories, /dev/console and /dev/null,
 * busybox-static with its applets (plus `extra`) as symlinks in /bin. `dirs` records the directories made.
 * @throws TaktError unavailable when busybox is missing.
 */
export function busyboxEntries(entries: CpioEntry[], dirs: Set<string>, extra: string[] = [], busyboxPath = '/bin/busybox'): void {
  if (!existsSync(busyboxPath)) throw new TaktError('unavailable', `${busyboxPath} is missing: the initramfs needs a static busybox (Debian: apt-get install busybox-static)`);
  for (const d of ['bin', 'dev', 'etc', 'lib', 'lib/modules', 'proc', 'sys', 'tmp']) {
    dirs.add(d);
    entries.push({ type: 'dir', path: d });
  }
  entries.push({ type: 'char', path: 'dev/console', major: 5, minor: 1 });
  entries.push({ type: 'char', path: 'dev/null', major: 1, minor: 3, mode: 0o666 });
  entries.push({ type: 'file', path: 'bin/busybox', data: readFileSync(busyboxPath), mode: 0o755 });
  for (const applet of new Set([...BUSYBOX_APPLETS, ...extra])) entries.push({ type: 'symlink', path: `bin/${applet}`, target: 'busybox' });
}

/** The kernel modules `modules` (module files relative to the kernel's modules dir) in /lib/modules, and /etc/takt-modules listing their load order. */
export function moduleEntries(entries: CpioEntry[], kernel: BootKernel, modules: string[]): void {
  entries.push({ type: 'file', path: 'etc/takt-modules', data: Buffer.from(modules.map((m) => m.slice(m.lastIndexOf('/') + 1)).join('\n') + '\n') });
  for (const m of modules) entries.push({ type: 'file', path: `lib/modules/${m.slice(m.lastIndexOf('/') + 1)}`, data: readFileSync(join(kernel.modulesDir, m)) });
}
