/**
 * `takt bootenvs build discovery` (alias `takt bootenv build discovery`): builds the discovery boot
 * environment from Debian packages on this host (provision/discovery-env.ts) as a content pack, and with
 * `--install` installs it on the endpoint. Runs where the endpoint runs: the pack's artifacts are paths
 * on this host, which the endpoint copies into its artifact cache when the pack is installed.
 */
import type { Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import type { Globals } from './client.js';
import { examples } from './help.js';
import { print, shown } from './output.js';
import { UsageError } from './usage.js';

export function bootenvBuildCommand(bootenvs: Command, g: Globals, api: () => ApiClient): void {
  bootenvs
    .command('build <bootenv>')
    .description("build a built-in boot environment from Debian packages on this host, as a content pack (today: discovery — Debian's kernel and an initramfs with busybox, bash and the takt agent)")
    .addHelpText(
      'after',
      examples(
        'takt bootenv build discovery --install      # build, then install the pack on the endpoint',
        'takt bootenv build discovery --out /srv/takt/discovery -o json',
        'takt bootenv build discovery --disk-image agent-os.img   # also: the same OS as a bootable disk image',
        'takt images import agent-os@1.0.0 agent-os.img           # …to deploy with the image-deploy pipeline',
      ),
    )
    .option('--out <dir>', 'where the pack goes (default: the provisioning cache, TAKT_PROVISION_CACHE or ~/.cache/takt/provision)')
    .option('--install', 'install the built pack on the endpoint and use it')
    .option('--disk-image <file>', 'also write the environment as a raw disk image that boots from disk (BIOS and UEFI) and joins as the machine it is deployed to')
    .action(async (name: string, o: { out?: string; install?: boolean; diskImage?: string }) => {
      if (name !== 'discovery') throw new UsageError(`there is no built-in bootenv '${name}' to build: the one takt builds is 'discovery' (others come in content packs)`);
      const { agentDiskImage, buildDiscoveryEnv, defaultDiscoveryDir } = await import('../provision/discovery-env.js');
      const { AgentBundle } = await import('../join/bundle.js');
      const { provisionCacheDir } = await import('../provision/kernel.js');
      const { VERSION } = await import('./version.js');
      const { join } = await import('node:path');
      const say = (msg: string) => process.stderr.write(`takt: ${msg}\n`);
      say('building the agent bundle (the same agent joined hosts run)');
      const bundle = await new AgentBundle({ cacheDir: process.env.TAKT_BUNDLE_CACHE ?? join(provisionCacheDir(), 'bundles'), version: VERSION }).get();
      const env = await buildDiscoveryEnv({
        out: o.out ?? defaultDiscoveryDir(),
        bundle: bundle.path,
        version: VERSION,
        log: say,
        progress: (f, what) => say(`[${String(Math.round(f * 100)).padStart(3)}%] ${what}`),
      });
      let diskImage: Awaited<ReturnType<typeof agentDiskImage>> | null = null;
      if (o.diskImage) {
        say(`writing the disk image ${o.diskImage}`);
        diskImage = await agentDiskImage(env, o.diskImage);
      }
      let installed: { name: string; version: string } | null = null;
      if (o.install) {
        const { loadPack } = await import('./content.js');
        installed = await api().post<{ name: string; version: string }>('/packs', { files: await loadPack(env.dir), use: true });
      }
      const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
      print(g().output, { ...env, installed, diskImage }, () =>
        shown(
          [
            `discovery@${env.version} in ${env.dir}`,
            `  kernel  ${env.kernelPackage}, ${mib(env.kernel.bytes)}, sha256 ${env.kernel.sha256}`,
            `  initrd  ${mib(env.initrd.bytes)}, sha256 ${env.initrd.sha256}`,
            installed ? `installed on the endpoint as ${installed.name}@${installed.version}` : `install it with: takt content install ${env.dir} --use`,
            ...(diskImage ? [`disk image ${diskImage.path}: ${mib(diskImage.size)}, sha256 ${diskImage.sha256} (import it with: takt images import NAME@VERSION ${diskImage.path})`] : []),
          ].join('\n'),
        ),
      );
    });
}
