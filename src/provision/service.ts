/**
 * The boot services of `takt serve --provision ADDR[/PREFIX]`: the boot HTTP service on the
 * provisioning address (per-machine iPXE scripts, boot files by sha256), fed by the engine's
 * BootScripts, and the artifact cache kept in step with the installed bootenvs — every kernel, initrd
 * and file a bootenv names is fetched and checked when its pack is installed, not when a machine is
 * already waiting at its firmware prompt.
 *
 * Off by default: an endpoint answers firmware only where an operator said so.
 */
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { ContentService } from '../engine/content.js';
import { BootScripts } from '../engine/boot.js';
import type { BootArtifact, BootenvDef } from '../model/content.js';
import { TaktError } from '../model/errors.js';
import type { Store } from '../store/store.js';
import { ArtifactCache } from './artifacts.js';
import { buildBootHttp } from './boot-http.js';

/** The provisioning network as `--provision` gives it: the endpoint's address on it, and its prefix length. */
export interface ProvisionNet {
  address: string;
  /** 0…32; undefined when only an address was given. */
  prefix?: number;
}

/**
 * Parses `--provision ADDR[/PREFIX]` (IPv4: DHCPv4 and PXE are IPv4 here).
 * @throws TaktError('bad_request') saying what a good value looks like.
 */
export function parseProvisionNet(text: string): ProvisionNet {
  const m = /^([^/]+)(?:\/(\d{1,2}))?$/.exec(text.trim());
  if (!m || isIP(m[1]!) !== 4 || (m[2] !== undefined && Number(m[2]) > 32)) {
    throw new TaktError('bad_request', `--provision '${text}' is not an IPv4 address with an optional prefix, e.g. 10.0.0.1/24 (the endpoint's address on the provisioning network)`);
  }
  return { address: m[1]!, ...(m[2] !== undefined ? { prefix: Number(m[2]) } : {}) };
}

export interface ProvisionOptions {
  net: ProvisionNet;
  /** TCP port of the boot HTTP service; 0 picks a free one. */
  httpPort: number;
  /** The endpoint's data dir: artifacts go in `<data>/boot/files`. */
  data: string;
  store: Store;
  content: ContentService;
  /** Whether unknown machines boot the `discovery` bootenv. */
  discovery: boolean;
  log: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
}

export interface Provisioning {
  /** `http://ADDR:PORT`: where firmware fetches scripts and files. */
  bootUrl: string;
  /** The URL iPXE chains to, with iPXE's own variables for its identity (DHCP hands it out). */
  scriptUrl: string;
  cache: ArtifactCache;
  /** Fetches every artifact of the installed bootenvs that is not kept yet; resolves when all are tried. */
  sync: () => Promise<void>;
  close: () => Promise<void>;
}

/** Every artifact of a bootenv with what it is, for messages. */
function artifactsOf(b: BootenvDef): Array<{ a: BootArtifact; what: string }> {
  return [
    ...(b.kernel ? [{ a: b.kernel, what: `bootenv '${b.name}' kernel` }] : []),
    ...(b.initrds ?? []).map((a) => ({ a, what: `bootenv '${b.name}' initrd` })),
    ...(b.files ?? []).map((a) => ({ a, what: `bootenv '${b.name}' file` })),
  ];
}

/**
 * Starts the boot HTTP service on the provisioning address and the artifact sync.
 * @throws TaktError('bad_request') when the address cannot be bound (not on this host, port taken).
 */
export async function startProvisioning(opts: ProvisionOptions): Promise<Provisioning> {
  const cache = await new ArtifactCache({ dir: join(opts.data, 'boot', 'files') }).open();
  let bootUrl = '';
  const scripts = new BootScripts({ store: opts.store, content: () => opts.content.current, endpoint: () => bootUrl, discovery: opts.discovery });
  const app = await buildBootHttp({
    cache,
    script: async (q) => {
      const r = await scripts.script(q);
      if (r.problem) opts.log('warn', `boot: ${r.problem}`, { mac: q.mac, remote: q.remote });
      else opts.log('info', `boot: ${r.machine?.name ?? q.mac} gets bootenv ${r.bootenv}`, { mac: q.mac, remote: q.remote });
      return r.script;
    },
  });
  try {
    await app.listen({ host: opts.net.address, port: opts.httpPort });
  } catch (e) {
    await app.close();
    throw new TaktError('bad_request', `--provision ${opts.net.address}: cannot serve boot files on ${opts.net.address}:${opts.httpPort}: ${(e as Error).message} (is the address on one of this host's interfaces?)`);
  }
  const port = (app.server.address() as { port: number }).port;
  bootUrl = `http://${opts.net.address}:${port}`;

  let running: Promise<void> | null = null;
  let again = false;
  const syncOnce = async (): Promise<void> => {
    for (const { def } of opts.content.current.objects.bootenvs.values()) {
      for (const { a, what } of artifactsOf(def)) {
        try {
          let last = 0;
          const r = await cache.ensure(a, what, (bytes, total) => {
            // Long downloads show progress: a line per 64 MiB.
            if (bytes - last >= 64 * 1024 * 1024) {
              last = bytes;
              opts.log('info', `boot: fetching ${what} '${a.name}': ${Math.round(bytes / 1048576)} MiB${total ? ` of ${Math.round(total / 1048576)} MiB` : ''}`);
            }
          });
          if (r.fetched) opts.log('info', `boot: kept ${what} '${a.name}' (${r.size} bytes, sha256 ${a.sha256.slice(0, 12)}…)`);
        } catch (e) {
          opts.log('error', `boot: ${(e as Error).message}`);
        }
      }
    }
  };
  /** One sync at a time; a content change during one runs another after it. */
  const sync = (): Promise<void> => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        await syncOnce();
      } while (again);
    })().finally(() => {
      running = null;
    });
    return running;
  };
  const stopListening = opts.store.onEvents((events) => {
    // Events are heard at COMMIT, and the content service adopts the committed content in the writer's
    // continuation right after: the sync runs once those microtasks are done, on the content in use.
    if (events.some((e) => e.topic.startsWith('packs.') || e.topic.startsWith('packversions.') || e.topic.startsWith('bootenvs.'))) setImmediate(() => void sync());
  });
  void sync();
  opts.log('info', `boot services: scripts and files at ${bootUrl} (iPXE chains to ${bootUrl}/boot/ipxe)`);

  return {
    get bootUrl() {
      return bootUrl;
    },
    get scriptUrl() {
      return `${bootUrl}/boot/ipxe?mac=\${net0/mac}&uuid=\${uuid}&platform=\${platform}`;
    },
    cache,
    sync,
    close: async () => {
      stopListening();
      await running?.catch(() => undefined);
      await app.close();
    },
  };
}
