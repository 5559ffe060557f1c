/**
 * The boot services of `takt serve --provision ADDR[/PREFIX]`: the boot HTTP service on the
 * provisioning address (per-machine iPXE scripts, boot files by sha256), fed by the engine's
 * BootScripts, and the artifact cache kept in step with the installed bootenvs — every kernel, initrd
 * and file a bootenv names is fetched and checked when its pack is installed, not when a machine is
 * already waiting at its firmware prompt.
 *
 * Off by default: an endpoint answers firmware only where an operator said so.
 */
import { existsSync, realpathSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import type { ContentService } from '../engine/content.js';
import { BootScripts } from '../engine/boot.js';
import type { BootArtifact, BootenvDef } from '../model/content.js';
import { TaktError } from '../model/errors.js';
import type { Store } from '../store/store.js';
import { ArtifactCache } from './artifacts.js';
import { buildBootHttp } from './boot-http.js';
import { DEBIAN_IPXE_ROOT, defaultBootFiles } from './dhcp/classify.js';
import { StoredLeases } from './dhcp/leases.js';
import { DhcpServer, validateDhcpConfig, type DhcpConfig, type DhcpLogEntry, type DhcpPorts, type Reservation, type ReservationSource } from './dhcp/server.js';
import { startRouterAdvertiser, type RouterAdvertiser } from './ra.js';
import { TftpServer, type TftpLogEntry } from './tftp/server.js';

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

/**
 * What `--dhcp`, `--dhcp-range` and `--tftp-root` ask for, checked: DHCP off, proxyDHCP beside the
 * network's own DHCP server, or a full DHCP server handing out `range` on the `--provision` subnet.
 * TFTP (for PXE ROMs that need an iPXE binary first) runs whenever DHCP does.
 */
export type DhcpPlan =
  | { mode: 'off' }
  | { mode: 'proxy'; tftpRoot: string }
  | { mode: 'full'; tftpRoot: string; subnet: string; rangeStart: string; rangeEnd: string };

const ipInt = (ip: string): number => ip.split('.').reduce((a, o) => (a << 8) | Number(o), 0) >>> 0;

/** Whether `ip` is a host address of `subnet` (`a.b.c.d/prefix`): not its network or broadcast address. */
export function inSubnet(ip: string, subnet: string): boolean {
  const [net, p] = subnet.split('/');
  const prefix = Number(p);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const n = ipInt(ip);
  const network = ipInt(net!);
  return ((n & mask) >>> 0) === network && n !== network && n !== ((network | (~mask >>> 0)) >>> 0);
}

/**
 * The addresses machines reserve (`boot.ip`, `takt machines create|update M --mac … --ip …`), kept in memory
 * for the DHCP server's synchronous lookups and reloaded whenever a machine changes. At most 1,000
 * machines with a reservation are read (the store's page).
 */
export class MachineReservations implements ReservationSource {
  private macs = new Map<string, Reservation & { machine: string }>();
  private ips = new Map<string, string>();
  /** Machine id → `ip macs…` of every machine read with a reservation (inside the subnet or not). */
  private seen = new Map<string, string>();
  private loading: Promise<void> | null = null;
  private again = false;

  constructor(
    private readonly store: Store,
    private readonly subnet: string | null,
    private readonly log: ProvisionOptions['log'],
  ) {}

  byMac(mac: string): Reservation | undefined {
    return this.macs.get(mac);
  }

  byIp(ip: string): string | undefined {
    return this.ips.get(ip);
  }

  /**
   * Whether a machine event may change the reservations: a machine created or deleted with an address, or
   * one whose address or MACs differ from what was read. Most machine updates (jobs, liveness) do not.
   */
  concerns(topic: string, data: unknown): boolean {
    const m = data as { id?: string; boot?: { ip?: string; macs?: string[] } } | null;
    // While a read runs, `seen` may be older than the store: read again after it, to be sure.
    if (!m?.id || this.loading) return true;
    const now = m.boot?.ip ? `${m.boot.ip} ${(m.boot.macs ?? []).join(' ')}` : undefined;
    if (topic.startsWith('machines.delete.')) return this.seen.has(m.id);
    return now !== this.seen.get(m.id);
  }

  /** Reads the reservations again (one read at a time; a change during one runs another after it). */
  reload(): Promise<void> {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = (async () => {
      do {
        this.again = false;
        const macs = new Map<string, Reservation & { machine: string }>();
        const ips = new Map<string, string>();
        const outside: string[] = [];
        const seen = new Map<string, string>();
        for (const m of await this.store.listMachinesWithBootText(['"ip":"'])) {
          const ip = m.boot?.ip;
          if (!ip) continue;
          seen.set(m.id, `${ip} ${m.boot!.macs.join(' ')}`);
          if (this.subnet && !inSubnet(ip, this.subnet)) {
            outside.push(`${m.name} (${ip})`);
            continue;
          }
          for (const mac of m.boot!.macs) macs.set(mac, { mac, ip, hostname: m.name, machine: m.name });
          ips.set(ip, m.boot!.macs[0]!);
        }
        const before = new Set([...this.macs.values()].map((r) => `${r.machine}=${r.ip}`));
        this.macs = macs;
        this.ips = ips;
        this.seen = seen;
        const now = [...macs.values()].map((r) => `${r.machine}=${r.ip}`).filter((x, i, a) => a.indexOf(x) === i && !before.has(x));
        if (now.length) this.log('info', `dhcp: reserved ${now.join(', ')}`);
        if (outside.length) this.log('warn', `dhcp: reservations outside ${this.subnet} are not handed out: ${outside.join(', ')} (takt machines update NAME --ip ADDRESS inside --provision, or --ip '' to free it)`);
      } while (this.again);
    })()
      .catch((e: unknown) => this.log('error', `dhcp: cannot read reservations: ${(e as Error).message}`))
      .finally(() => {
        this.loading = null;
      });
    return this.loading;
  }
}

/** The mask's network address of `address/prefix`, as `a.b.c.d/prefix`. */
function subnetOf(address: string, prefix: number): string {
  const n = address.split('.').reduce((a, o) => (a << 8) | Number(o), 0) >>> 0;
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const net = (n & mask) >>> 0;
  return `${[24, 16, 8, 0].map((s) => (net >>> s) & 255).join('.')}/${prefix}`;
}

/**
 * Checks the DHCP/TFTP flags of `takt serve` together, before anything starts. The default is `off`: a
 * second DHCP server on a LAN hands out wrong addresses, so takt answers DHCP only where the operator
 * asked. `full` needs `--dhcp-range FIRST-LAST` inside the `--provision` prefix; `proxy` (RFC-less PXE
 * 2.1 proxyDHCP) needs neither and gives no addresses.
 * @throws TaktError('bad_request') naming the flag and what a good value looks like.
 */
export function planDhcp(flags: { dhcp?: string; dhcpRange?: string; tftpRoot?: string }, net: ProvisionNet | undefined): DhcpPlan {
  const mode = flags.dhcp ?? 'off';
  if (mode !== 'off' && mode !== 'proxy' && mode !== 'full') throw new TaktError('bad_request', `--dhcp must be full, proxy or off (got '${mode}')`);
  if (mode !== 'off' && !net) throw new TaktError('bad_request', `--dhcp ${mode} needs --provision ADDR/PREFIX (the address DHCP answers from and points machines at)`);
  if (flags.dhcpRange !== undefined && mode !== 'full') throw new TaktError('bad_request', `--dhcp-range is only for --dhcp full (got --dhcp ${mode})`);
  if (flags.tftpRoot !== undefined && mode === 'off') throw new TaktError('bad_request', '--tftp-root is only for --dhcp full or proxy (TFTP serves the iPXE binaries DHCP points PXE ROMs at)');
  if (mode === 'off') return { mode };
  const tftpRoot = resolve(flags.tftpRoot ?? DEBIAN_IPXE_ROOT);
  if (!existsSync(tftpRoot) || !statSync(tftpRoot).isDirectory()) {
    throw new TaktError('bad_request', `--tftp-root ${tftpRoot} is not a directory${flags.tftpRoot === undefined ? " (the default is Debian's ipxe package: apt-get install ipxe)" : ''}`);
  }
  if (mode === 'proxy') return { mode, tftpRoot };
  if (flags.dhcpRange === undefined) throw new TaktError('bad_request', '--dhcp full needs --dhcp-range FIRST-LAST, e.g. 10.0.0.100-10.0.0.200 (the addresses handed out)');
  if (net!.prefix === undefined) throw new TaktError('bad_request', `--dhcp full needs the prefix in --provision (e.g. ${net!.address}/24): it is the subnet addresses are handed out on`);
  const m = /^\s*([0-9.]+)\s*-\s*([0-9.]+)\s*$/.exec(flags.dhcpRange);
  if (!m) throw new TaktError('bad_request', `--dhcp-range '${flags.dhcpRange}' is not FIRST-LAST, e.g. 10.0.0.100-10.0.0.200`);
  const plan = { mode, tftpRoot, subnet: subnetOf(net!.address, net!.prefix), rangeStart: m[1]!, rangeEnd: m[2]! } as const;
  try {
    validateDhcpConfig(dhcpConfigOf(plan, net!.address, 'http://x/'));
  } catch (e) {
    throw new TaktError('bad_request', `--dhcp-range ${flags.dhcpRange} with --provision ${net!.address}/${net!.prefix}: ${(e as Error).message}`);
  }
  return plan;
}

/** The DHCP server's configuration for a plan; iPXE clients are sent to `scriptUrl`. */
function dhcpConfigOf(plan: Exclude<DhcpPlan, { mode: 'off' }>, serverIp: string, scriptUrl: string): DhcpConfig {
  const boot = { ...defaultBootFiles('http://unused'), scriptUrl };
  if (plan.mode === 'proxy') return { mode: 'proxy', serverIp, boot };
  return { mode: 'full', serverIp, boot, subnet: { subnet: plan.subnet, rangeStart: plan.rangeStart, rangeEnd: plan.rangeEnd } };
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
  /** DHCP and TFTP (from `planDhcp`); absent = off. */
  dhcp?: DhcpPlan;
  /**
   * Router advertisements on the boot segment (src/provision/ra.ts, radvd) so iPXE does not wait 13–16 s for
   * an IPv6 router. Default: on with `--dhcp full` (takt owns the segment), off otherwise.
   */
  routerAdverts?: boolean;
  /** DHCP/TFTP ports, for tests without privileges; default 67/68/4011 and 69. */
  ports?: DhcpPorts & { tftp: number };
  log: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
  /** The API URL and CA fingerprint agents in boot environments use (BootScriptsOptions.agentAccess). */
  agentAccess?: () => { api: string; ca: string } | null;
  /** Makes a discovery credential for a booting MAC (BootScriptsOptions.discoveryToken). */
  discoveryToken?: (mac: string) => string;
  /**
   * A machine's firmware showed up on the boot services (a PXE/iPXE DHCP packet or a script request from
   * this MAC): the boot watch stops waiting for it (boot-watch.ts).
   */
  seen?: (mac: string) => void;
}

export interface Provisioning {
  /** `http://ADDR:PORT`: where firmware fetches scripts and files. */
  bootUrl: string;
  /** The URL iPXE chains to, with iPXE's own variables for its identity (DHCP hands it out). */
  scriptUrl: string;
  cache: ArtifactCache;
  /** The DHCP server when `--dhcp` is on (its `leases()` lists the leases). */
  dhcp: DhcpServer | null;
  /** Reservations from machines' boot settings (`--dhcp full`), else null. */
  reservations: MachineReservations | null;
  /** The TFTP server's port when it runs. */
  tftpPort: number | null;
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
  const scripts = new BootScripts({
    store: opts.store,
    content: () => opts.content.current,
    endpoint: () => bootUrl,
    discovery: opts.discovery,
    ...(opts.agentAccess ? { agentAccess: opts.agentAccess } : {}),
    ...(opts.discoveryToken ? { discoveryToken: opts.discoveryToken } : {}),
  });
  const app = await buildBootHttp({
    cache,
    script: async (q) => {
      opts.seen?.(q.mac);
      const r = await scripts.script(q);
      const who = { mac: q.mac, ...(q.uuid ? { uuid: q.uuid } : {}), platform: q.platform, remote: q.remote };
      if (r.problem) opts.log('warn', `boot: ${r.problem}`, who);
      else opts.log('info', `boot: ${r.machine?.name ?? q.mac} gets bootenv ${r.bootenv}`, who);
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

  let dhcp: DhcpServer | null = null;
  let tftp: TftpServer | null = null;
  let leases: StoredLeases | null = null;
  let reservations: MachineReservations | null = null;
  if (opts.dhcp && opts.dhcp.mode !== 'off') {
    // iPXE expands its own settings in the boot file name it gets. `${uuid:uuid}` (the same setting with
    // its type spelled out) because the DHCP answer fills `{uuid}` placeholders itself, with option 97's
    // byte order rather than the SMBIOS text the boot service matches machines by.
    const dhcpScriptUrl = `${bootUrl}/boot/ipxe?mac=\${net0/mac}&uuid=\${uuid:uuid}&platform=\${platform}`;
    const names = async (mac: string): Promise<string> => {
      try {
        return (await scripts.machineFor({ mac: mac.toLowerCase(), platform: 'pcbios' }))?.name ?? mac;
      } catch {
        return mac;
      }
    };
    const dhcpLog = (e: DhcpLogEntry): void => {
      if (e.event === 'ignored') return; // other clients' traffic on the segment: not news
      if (e.mac) opts.seen?.(e.mac);
      void (async () => {
        const who = e.mac ? await names(e.mac) : '?';
        const level = e.event === 'error' || e.event === 'nak' || e.event === 'decline' ? 'warn' : 'info';
        const what = [e.ip ? `address ${e.ip}` : '', e.arch !== undefined ? `arch ${e.arch}` : '', e.boot ? `boot ${e.boot}` : '', e.reason ?? ''].filter(Boolean).join(', ');
        opts.log(level, `dhcp: ${e.event} ${who}${what ? `: ${what}` : ''}`, { mac: e.mac, ip: e.ip, kind: e.kind, arch: e.arch });
      })();
    };
    const tftpLog = (e: TftpLogEntry): void => {
      if (e.event === 'ignored') return;
      opts.log(e.event === 'failed' || e.event === 'refused' ? 'warn' : 'info', `tftp: ${e.event} ${e.file ?? ''} for ${e.client ?? '?'}${e.reason ? `: ${e.reason}` : ''}`, { file: e.file, client: e.client, bytes: e.bytes });
    };
    try {
      leases = await StoredLeases.load(opts.store, { onError: (e) => opts.log('error', `dhcp: cannot save leases: ${e.message} (they are kept in memory and written with the next change)`) });
      if (opts.dhcp.mode === 'full') {
        // Leases kept by an earlier run on another subnet or range are not this server's to honour.
        const { subnet, rangeStart, rangeEnd } = opts.dhcp;
        for (const l of leases.list()) if (!inSubnet(l.ip, subnet)) leases.remove(l.mac);
        reservations = new MachineReservations(opts.store, subnet, opts.log);
        await reservations.reload();
        const kept = leases.list().filter((l) => l.state === 'bound');
        opts.log('info', `dhcp: ${kept.length} lease${kept.length === 1 ? '' : 's'} kept from before (range ${rangeStart}-${rangeEnd})`);
      }
      dhcp = new DhcpServer(dhcpConfigOf(opts.dhcp, opts.net.address, dhcpScriptUrl), leases, { log: dhcpLog, ...(opts.ports ? { ports: opts.ports } : {}), ...(reservations ? { reservations } : {}) });
      await dhcp.start();
      // The boot files handed out may be links out of the root (Debian: /usr/lib/ipxe/ipxe.efi → /boot/ipxe.efi).
      const files = defaultBootFiles('http://unused');
      const root = opts.dhcp.tftpRoot;
      const allowOutside = [files.bios, files.efiX64].flatMap((f) => {
        try {
          return [realpathSync(join(root, f))];
        } catch {
          return [];
        }
      });
      tftp = new TftpServer({ root: opts.dhcp.tftpRoot, address: opts.net.address, port: opts.ports?.tftp ?? 69, allowOutside, log: tftpLog });
      await tftp.start();
    } catch (e) {
      await dhcp?.stop();
      await leases?.flush();
      await app.close();
      throw new TaktError('bad_request', `--dhcp ${opts.dhcp.mode}: ${(e as Error).message} (ports 67, 69 and 4011 need root or CAP_NET_BIND_SERVICE)`);
    }
    opts.log('info', `dhcp: ${opts.dhcp.mode === 'full' ? `full DHCP on ${opts.dhcp.subnet}, handing out ${opts.dhcp.rangeStart}-${opts.dhcp.rangeEnd}` : 'proxyDHCP beside the network\'s DHCP server'}; tftp: ${opts.dhcp.tftpRoot}`);
  }

  let ra: RouterAdvertiser | null = null;
  if (opts.routerAdverts ?? opts.dhcp?.mode === 'full') {
    try {
      ra = startRouterAdvertiser({ address: opts.net.address, dir: join(opts.data, 'ra'), log: opts.log });
    } catch (e) {
      // Not fatal: machines still boot, iPXE only waits longer. The message says how to fix or silence it.
      opts.log('warn', `ra: ${(e as Error).message}`);
    }
  }

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
    if (reservations && events.some((e) => e.topic.startsWith('machines.') && reservations!.concerns(e.topic, e.data))) void reservations.reload();
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
    dhcp,
    reservations,
    get tftpPort() {
      return tftp?.port() ?? null;
    },
    sync,
    close: async () => {
      stopListening();
      await ra?.stop();
      await dhcp?.stop();
      await leases?.flush();
      await tftp?.stop();
      await running?.catch(() => undefined);
      await app.close();
    },
  };
}
