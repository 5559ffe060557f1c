/**
 * `takt images build-disk OUT --root DIR --kernel F --initrd F --cmdline TEXT [--agent]`: a bootable raw
 * disk image (BIOS and UEFI; provision/disk-image.ts buildDiskImage) from a root file system tree, such as
 * the one the built-in `images` pack's `debian-min` pipeline makes with debootstrap. Runs where the tree
 * is (a builder machine's task), needs no endpoint, mounts nothing. `--agent` first puts the takt agent
 * into the tree at `opt/takt` (installAgentTree): the same bundle joined hosts install and the discovery
 * environment carries, so a deployed OS can join as its machine (agent/deployed.ts).
 */
import { chmodSync, cpSync, existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { TaktError } from '../model/errors.js';
import type { Globals } from './client.js';
import { examples } from './help.js';
import { print, shown } from './output.js';
import { UsageError } from './usage.js';

/** Where in a root file system the agent goes: where the discovery environment and `takt join` put it. */
export const AGENT_TREE_DIR = 'opt/takt';

/** The parts of an agent bundle (join/bundle.ts's layout) copied into a tree. */
const BUNDLE_PARTS = ['bin', 'lib', 'app', 'package.json', 'BUNDLE.json'];

/**
 * Puts the takt agent into the root file system `rootDir`, at `opt/takt` (bin/takt runs it; no Node.js
 * needed in the tree, only glibc). Where it comes from: when this takt runs from an agent bundle (a
 * joined host, whose /opt/takt has BUNDLE.json), that bundle is copied; else the bundle the endpoint
 * serves joining hosts is built (or taken from its cache, TAKT_BUNDLE_CACHE or the provisioning cache's
 * `bundles/`) and unpacked — the same way `takt bootenv build discovery` gets it.
 * @returns where it went (absolute) and which of the two it was.
 * @throws TaktError bad_request when `rootDir` is not a directory; unavailable when no bundle can be had
 *   (no compiled CLI, no ldd).
 */
export async function installAgentTree(rootDir: string, opts: { packageRoot?: string } = {}): Promise<{ dir: string; from: 'running bundle' | 'built bundle' }> {
  if (!statSync(rootDir, { throwIfNoEntry: false })?.isDirectory()) throw new TaktError('bad_request', `--root ${rootDir}: not a directory`);
  const dir = join(resolve(rootDir), AGENT_TREE_DIR);
  const packageRoot = opts.packageRoot ?? fileURLToPath(new URL('../../', import.meta.url));
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  let from: 'running bundle' | 'built bundle';
  if (existsSync(join(packageRoot, 'BUNDLE.json')) && existsSync(join(packageRoot, 'bin', 'takt'))) {
    for (const part of BUNDLE_PARTS) cpSync(join(packageRoot, part), join(dir, part), { recursive: true, preserveTimestamps: true });
    from = 'running bundle';
  } else {
    const { AgentBundle } = await import('../join/bundle.js');
    const { provisionCacheDir } = await import('../provision/kernel.js');
    const { VERSION } = await import('./version.js');
    const bundle = await new AgentBundle({ cacheDir: process.env.TAKT_BUNDLE_CACHE ?? join(provisionCacheDir(), 'bundles'), version: VERSION }).get();
    const tar = await import('tar');
    await tar.extract({ file: bundle.path, cwd: dir });
    from = 'built bundle';
  }
  for (const d of ['', 'bin', 'lib', 'app', 'app/cli']) chmodSync(join(dir, d), 0o755);
  return { dir, from };
}

interface BuildDiskOptions {
  root: string;
  kernel: string;
  initrd: string;
  cmdline: string;
  rootMib?: string;
  agent?: boolean;
}

/** Adds `build-disk` to the `images` command. */
export function imageBuildCommand(images: Command, g: Globals): void {
  images
    .command('build-disk <out>')
    .description(
      'write a bootable raw disk image (BIOS and UEFI) from a root file system directory: an MBR, a FAT32 boot partition with SYSLINUX and systemd-boot loading the kernel and initrd, and an ext4 root labelled takt-root filled from the directory (mke2fs -d; nothing is mounted). Runs where the directory is, needs no endpoint; publish the result from a task with takt-image publish',
    )
    .addHelpText(
      'after',
      examples(
        'takt images build-disk /var/tmp/debian.img --root /var/tmp/rootfs --kernel /var/tmp/rootfs/vmlinuz --initrd /var/tmp/rootfs/initrd.img --cmdline "root=LABEL=takt-root rw console=ttyS0,115200" --agent',
        'takt images build-disk small.img --root ./tree --kernel vmlinuz --initrd initrd.img --cmdline "console=ttyS0" --root-mib 64 -o json',
      ),
    )
    .requiredOption('--root <dir>', 'the root file system tree (owners, modes and device nodes are kept: run as root for a debootstrap tree, or in the fakeroot session that made it: fakeroot -i STATE takt images build-disk …)')
    .requiredOption('--kernel <file>', 'the kernel (bzImage) the boot loaders load, e.g. ROOT/boot/vmlinuz-…')
    .requiredOption('--initrd <file>', 'the initrd loaded with it, e.g. ROOT/boot/initrd.img-…')
    .requiredOption('--cmdline <text>', 'the kernel command line (one line), e.g. "root=LABEL=takt-root rw console=ttyS0,115200"')
    .option('--root-mib <n>', "the root partition's size in MiB (default: the tree's size, a quarter more, and 64 MiB)")
    .option('--agent', `first put the takt agent (the bundle joined hosts run) into ROOT/${AGENT_TREE_DIR}`)
    .action(async (out: string, o: BuildDiskOptions) => {
      let rootMiB: number | undefined;
      if (o.rootMib !== undefined) {
        if (!/^[1-9][0-9]{0,6}$/.test(o.rootMib)) throw new UsageError(`--root-mib ${o.rootMib}: give a whole number of MiB (1 or more)`);
        rootMiB = Number(o.rootMib);
      }
      for (const [flag, path] of [['--kernel', o.kernel], ['--initrd', o.initrd]] as const) {
        if (!statSync(path, { throwIfNoEntry: false })?.isFile()) throw new TaktError('bad_request', `${flag} ${path}: no such file`);
      }
      if (!statSync(o.root, { throwIfNoEntry: false })?.isDirectory()) throw new TaktError('bad_request', `--root ${o.root}: not a directory`);
      const say = (msg: string) => process.stderr.write(`takt: ${msg}\n`);
      let agent: Awaited<ReturnType<typeof installAgentTree>> | null = null;
      if (o.agent) {
        agent = await installAgentTree(o.root);
        say(`agent put into ${agent.dir} (from the ${agent.from})`);
      }
      const { buildDiskImage } = await import('../provision/disk-image.js');
      say(`building ${out} from ${o.root}`);
      const img = await buildDiskImage({ out: resolve(out), kernel: o.kernel, initrd: o.initrd, cmdline: o.cmdline, rootDir: o.root, ...(rootMiB !== undefined ? { rootMiB } : {}) });
      const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
      print(g().output, { ...img, agent }, () =>
        shown(
          [
            `${img.path}: ${mib(img.size)} (boot ${mib(img.partitions.boot.size)}, root ${mib(img.partitions.root.size)}), sha256 ${img.sha256}`,
            `  recipe: kernel ${img.recipe.kernel.slice(0, 12)}…, initrd ${img.recipe.initrd.slice(0, 12)}…, root tree ${img.recipe.rootDir?.slice(0, 12) ?? '-'}…`,
            ...(agent ? [`  agent in ${agent.dir} (${agent.from})`] : []),
            '  publish it from a task: takt-image publish NAME@VERSION FILE; or: takt images import NAME@VERSION FILE',
          ].join('\n'),
        ),
      );
    });
}
