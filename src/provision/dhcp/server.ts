/**
 * takt's DHCPv4 server for network boot, in two modes:
 *
 * - **full**: the DHCP server of one subnet (RFC 2131): an address range, reservations per MAC, lease time,
 *   router/DNS/domain options, plus boot information for PXE/iPXE clients. It offers at once (no
 *   ping-before-offer: trap 3 of the provisioning facts cost 3 s per boot), and tells iPXE not to wait for
 *   ProxyDHCP offers (option 175 sub-option 176 = 1, trap 2).
 * - **proxy**: proxyDHCP beside an existing DHCP server (PXE spec 2.1 §2.2.1): answers only PXE/iPXE
 *   clients (vendor class `PXEClient`), with boot information and no address (yiaddr 0.0.0.0), on port 67
 *   (DISCOVER → OFFER) and port 4011 (REQUEST → ACK, unicast back to the client).
 *
 * `DhcpResponder` is the protocol: bytes in, a reply (bytes + destination) or nothing out; no sockets, the
 * clock injected, so it is unit-tested and fuzzed directly. `DhcpServer` binds the sockets.
 *
 * Sockets (Node's dgram cannot SO_BINDTODEVICE nor read IP_PKTINFO, see docs/decisions.md): one socket on
 * 0.0.0.0:67 receives broadcasts; a second on `serverIp`:67 receives unicasts (renewals) and sends every
 * reply, because Linux routes a limited broadcast (255.255.255.255) out of the interface that owns the
 * sending socket's source address. So the server answers on the interface holding `serverIp`, but it also
 * *hears* broadcasts from every interface of its network namespace: run it where the boot network is the
 * only one (a dedicated namespace), or on a host whose other segments have no clients for it. A message
 * relayed from elsewhere (giaddr outside the subnet) is ignored.
 */
import { createSocket, type Socket } from 'node:dgram';
import { TaktError } from '../../model/errors.js';
import { bootAnswer, classifyClient, type BootAnswer, type BootClient, type BootFiles } from './classify.js';
import type { Lease, LeaseStore } from './leases.js';
import {
  BOOTREPLY,
  BOOTREQUEST,
  DhcpMessageType as T,
  clientId,
  decodeDhcp,
  encodeDhcp,
  hostName,
  intToIp,
  ipToInt,
  isIPv4,
  IpxeOpt,
  messageType,
  messageTypeName,
  Opt,
  optv,
  PxeOpt,
  relayAgentInfo,
  requestedIp,
  serverId,
  type DhcpPacket,
} from './packet.js';

/** A reservation: this MAC always gets this address (and, optionally, this host name). */
export interface Reservation {
  mac: string;
  ip: string;
  hostname?: string;
}

/**
 * Reservations that change while the server runs (takt's machines with `boot.ip`), asked synchronously on
 * every message. Consulted after the configuration's own `reservations`; entries outside the subnet are
 * ignored (the service warns about them).
 */
export interface ReservationSource {
  /** The reservation of a client, by MAC (`aa:bb:cc:dd:ee:ff`). */
  byMac(mac: string): Reservation | undefined;
  /** The MAC an address is reserved for. */
  byIp(ip: string): string | undefined;
}

/** Settings of a full DHCP server for one subnet. */
export interface SubnetConfig {
  /** `a.b.c.d/prefix`; `serverIp` must be inside it. */
  subnet: string;
  /** First and last address handed out dynamically (inclusive). */
  rangeStart: string;
  rangeEnd: string;
  reservations?: Reservation[];
  /** Lease time in seconds (option 51). Default 3600. */
  leaseSeconds?: number;
  routers?: string[];
  dns?: string[];
  domain?: string;
}

/** Configuration of `DhcpResponder`/`DhcpServer`. */
export interface DhcpConfig {
  mode: 'full' | 'proxy';
  /** This server's address on the boot network: option 54, siaddr (TFTP next-server), the socket it answers from. */
  serverIp: string;
  /** Boot files and script URLs (see `classify.ts`). */
  boot: BootFiles;
  /** Required in full mode, ignored in proxy mode. */
  subnet?: SubnetConfig;
  /** How long an OFFER holds an address for the client, seconds. Default 60. */
  offerHoldSeconds?: number;
}

/** Ports, overridable for tests run without privileges. */
export interface DhcpPorts {
  server: number;
  client: number;
  /** PXE boot server / proxyDHCP request port (PXE spec 2.1). */
  pxe: number;
}
export const DEFAULT_PORTS: DhcpPorts = { server: 67, client: 68, pxe: 4011 };

/** One log line from the server: what happened and to whom, for operators and tests. */
export interface DhcpLogEntry {
  event: 'offer' | 'ack' | 'nak' | 'release' | 'decline' | 'ignored' | 'error';
  xid?: number;
  mac?: string;
  ip?: string;
  kind?: string;
  /** The client's architecture (option 93, RFC 4578 §2.1: 0 BIOS, 7/9 x86-64 UEFI, 16 UEFI HTTP), when sent. */
  arch?: number;
  boot?: string;
  reason?: string;
}

/** Where a reply goes. */
export interface DhcpReply {
  data: Buffer;
  address: string;
  port: number;
  /** The decoded reply, for logs and tests. */
  packet: DhcpPacket;
}

const MAX_RANGE = 65536;

interface Subnet {
  network: number;
  mask: number;
  broadcast: number;
  start: number;
  end: number;
  reservations: Map<string, Reservation>;
  reservedIps: Map<number, string>;
  leaseSeconds: number;
  cfg: SubnetConfig;
}

const normMac = (mac: string): string => mac.toLowerCase().replaceAll('-', ':');

/**
 * Checks a configuration; throws `TaktError('invalid')` with the field path for the first problem
 * (addresses that are not IPv4, a range outside the subnet, a range over 65,536 addresses, reservations
 * outside the subnet or twice the same MAC or address).
 */
export function validateDhcpConfig(cfg: DhcpConfig): void {
  const bad = (path: string, msg: string) => new TaktError('invalid', msg, { path });
  if (cfg.mode !== 'full' && cfg.mode !== 'proxy') throw bad('mode', `mode must be 'full' or 'proxy', not '${String(cfg.mode)}'`);
  if (!isIPv4(cfg.serverIp)) throw bad('serverIp', `serverIp '${cfg.serverIp}' is not an IPv4 address`);
  if (cfg.mode === 'proxy') return;
  const s = cfg.subnet;
  if (!s) throw bad('subnet', 'full mode needs a subnet (subnet, rangeStart, rangeEnd)');
  parseSubnet(s, cfg.serverIp);
}

function parseSubnet(s: SubnetConfig, serverIp: string): Subnet {
  const bad = (path: string, msg: string) => new TaktError('invalid', msg, { path: `subnet.${path}` });
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(s.subnet);
  if (!m || m[1] === undefined || !isIPv4(m[1]) || Number(m[2]) > 30 || Number(m[2]) < 8) throw bad('subnet', `'${s.subnet}' is not a.b.c.d/prefix with a prefix of 8 to 30`);
  const prefix = Number(m[2]);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const network = (ipToInt(m[1]) & mask) >>> 0;
  const broadcast = (network | (~mask >>> 0)) >>> 0;
  const inside = (ip: number) => ip > network && ip < broadcast;
  for (const [k, v] of [['rangeStart', s.rangeStart], ['rangeEnd', s.rangeEnd]] as const) {
    if (!isIPv4(v)) throw bad(k, `${k} '${v}' is not an IPv4 address`);
    if (!inside(ipToInt(v))) throw bad(k, `${k} ${v} is not a host address of ${s.subnet}`);
  }
  if (!inside(ipToInt(serverIp))) throw new TaktError('invalid', `serverIp ${serverIp} is not inside subnet ${s.subnet}`, { path: 'serverIp' });
  const start = ipToInt(s.rangeStart);
  const end = ipToInt(s.rangeEnd);
  if (end < start) throw bad('rangeEnd', `rangeEnd ${s.rangeEnd} is before rangeStart ${s.rangeStart}`);
  if (end - start + 1 > MAX_RANGE) throw bad('rangeEnd', `the range holds ${end - start + 1} addresses; at most ${MAX_RANGE}`);
  if (s.leaseSeconds !== undefined && (!Number.isInteger(s.leaseSeconds) || s.leaseSeconds < 60 || s.leaseSeconds > 0xfffffffe))
    throw bad('leaseSeconds', `leaseSeconds must be an integer from 60 to ${0xfffffffe}`);
  for (const [k, list] of [['routers', s.routers], ['dns', s.dns]] as const)
    (list ?? []).forEach((ip, i) => {
      if (!isIPv4(ip)) throw bad(`${k}[${i}]`, `'${ip}' is not an IPv4 address`);
    });
  const reservations = new Map<string, Reservation>();
  const reservedIps = new Map<number, string>();
  (s.reservations ?? []).forEach((r, i) => {
    const mac = normMac(r.mac);
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac)) throw bad(`reservations[${i}].mac`, `'${r.mac}' is not a MAC address`);
    if (!isIPv4(r.ip) || !inside(ipToInt(r.ip))) throw bad(`reservations[${i}].ip`, `'${r.ip}' is not a host address of ${s.subnet}`);
    if (reservations.has(mac)) throw bad(`reservations[${i}].mac`, `${mac} is reserved twice`);
    if (reservedIps.has(ipToInt(r.ip))) throw bad(`reservations[${i}].ip`, `${r.ip} is reserved twice`);
    reservations.set(mac, { ...r, mac });
    reservedIps.set(ipToInt(r.ip), mac);
  });
  return { network, mask, broadcast, start, end, reservations, reservedIps, leaseSeconds: s.leaseSeconds ?? 3600, cfg: s };
}

/**
 * The DHCP protocol logic: decides the reply to one received message. Never throws on input: garbage,
 * BOOTREPLYs, messages without a type, from hardware other than Ethernet, or not meant for this server
 * get no reply (and an `ignored` log entry with the reason).
 */
export class DhcpResponder {
  private readonly subnet?: Subnet;
  private readonly server: number;

  constructor(
    readonly config: DhcpConfig,
    readonly leases: LeaseStore,
    private readonly opts: { now?: () => number; log?: (e: DhcpLogEntry) => void; ports?: DhcpPorts; reservations?: ReservationSource } = {},
  ) {
    validateDhcpConfig(config);
    this.server = ipToInt(config.serverIp);
    if (config.mode === 'full') this.subnet = parseSubnet(config.subnet as SubnetConfig, config.serverIp);
  }

  private now(): number {
    return this.opts.now ? this.opts.now() : Date.now();
  }

  /** The client's reservation: the configuration's, else the reservation source's (inside the subnet only). */
  private reservedFor(mac: string): Reservation | undefined {
    const s = this.subnet as Subnet;
    const r = s.reservations.get(mac) ?? this.opts.reservations?.byMac(mac);
    return r && isIPv4(r.ip) && this.inSubnet(ipToInt(r.ip)) && ipToInt(r.ip) !== this.server ? r : undefined;
  }

  /** The MAC an address is reserved for, if any. */
  private reservedOwner(ip: number): string | undefined {
    const s = this.subnet as Subnet;
    return s.reservedIps.get(ip) ?? this.opts.reservations?.byIp(intToIp(ip));
  }

  private log(e: DhcpLogEntry): void {
    this.opts.log?.(e);
  }

  private get ports(): DhcpPorts {
    return this.opts.ports ?? DEFAULT_PORTS;
  }

  /**
   * Handles one datagram. `via` is the port it arrived on: `dhcp` (67) or `pxe` (4011, proxy mode only).
   * Returns the reply to send, or null.
   */
  handle(data: Uint8Array, from: { address: string; port: number }, via: 'dhcp' | 'pxe' = 'dhcp'): DhcpReply | null {
    const decoded = decodeDhcp(data);
    if (!decoded.ok) {
      this.log({ event: 'ignored', reason: decoded.error.message });
      return null;
    }
    const p = decoded.packet;
    const ignore = (reason: string) => {
      this.log({ event: 'ignored', xid: p.xid, reason });
      return null;
    };
    if (p.op !== BOOTREQUEST) return ignore('not a BOOTREQUEST');
    if (p.htype !== 1 || p.hlen !== 6) return ignore(`hardware type ${p.htype}/length ${p.hlen} is not Ethernet`);
    const type = messageType(p);
    if (type === undefined) return ignore('no DHCP message type (plain BOOTP is not served)');
    try {
      return this.config.mode === 'proxy' ? this.proxy(p, type, from, via) : this.full(p, type);
    } catch (e) {
      // Bad configuration is refused at construction; anything here is a bug, but never a crash of the server.
      this.log({ event: 'error', xid: p.xid, reason: (e as Error).message });
      return null;
    }
  }

  // ----- proxy mode ---------------------------------------------------------------------------------------

  private proxy(p: DhcpPacket, type: number, from: { address: string; port: number }, via: 'dhcp' | 'pxe'): DhcpReply | null {
    const client = classifyClient(p);
    const mac = client.mac;
    if (client.kind !== 'pxe' && client.kind !== 'ipxe') {
      this.log({ event: 'ignored', xid: p.xid, mac, reason: 'not a PXE client (proxyDHCP answers PXEClient only)' });
      return null;
    }
    const answer = bootAnswer(client, this.config.boot);
    if (answer.kind === 'none') {
      this.log({ event: 'ignored', xid: p.xid, mac, kind: client.kind, reason: answer.reason });
      return null;
    }
    if (via === 'dhcp') {
      if (type !== T.DISCOVER) {
        this.log({ event: 'ignored', xid: p.xid, mac, reason: `proxyDHCP answers DISCOVER on port ${this.ports.server}, not ${messageTypeName(type)}` });
        return null;
      }
      const reply = this.reply(p, T.OFFER, '0.0.0.0');
      this.addBoot(reply, client, answer, true);
      this.log({ event: 'offer', xid: p.xid, mac, kind: client.kind, ...archOf(client), boot: bootText(answer) });
      return this.address(p, reply, T.OFFER);
    }
    // Port 4011: the client has its address and asks the boot server directly (PXE 2.1 §2.2.1 step 6).
    if (type !== T.REQUEST && type !== T.INFORM) {
      this.log({ event: 'ignored', xid: p.xid, mac, reason: `port ${this.ports.pxe} answers REQUEST, not ${messageTypeName(type)}` });
      return null;
    }
    const reply = this.reply(p, T.ACK, '0.0.0.0');
    this.addBoot(reply, client, answer, true);
    this.log({ event: 'ack', xid: p.xid, mac, kind: client.kind, ...archOf(client), boot: bootText(answer) });
    return { data: encodeDhcp(reply), address: from.address, port: from.port, packet: reply };
  }

  // ----- full mode ----------------------------------------------------------------------------------------

  private full(p: DhcpPacket, type: number): DhcpReply | null {
    const s = this.subnet as Subnet;
    const client = classifyClient(p);
    const mac = client.mac;
    if (p.giaddr !== '0.0.0.0' && !this.inSubnet(ipToInt(p.giaddr))) {
      this.log({ event: 'ignored', xid: p.xid, mac, reason: `relayed from ${p.giaddr}, outside ${s.cfg.subnet}` });
      return null;
    }
    const sid = serverId(p);
    const now = this.now();
    switch (type) {
      case T.DISCOVER: {
        const ip = this.pick(p, mac, now);
        if (ip === undefined) {
          this.log({ event: 'ignored', xid: p.xid, mac, reason: `no free address in ${s.cfg.rangeStart}-${s.cfg.rangeEnd}` });
          return null;
        }
        this.leases.put(this.leaseFor(p, client, ip, 'offered', now + (this.config.offerHoldSeconds ?? 60) * 1000));
        return this.grant(p, client, T.OFFER, ip);
      }
      case T.REQUEST: {
        if (sid !== undefined && sid !== this.config.serverIp) {
          // SELECTING another server's offer: release what we held for this client.
          const held = this.leases.byMac(mac);
          if (held?.state === 'offered') this.leases.remove(mac);
          this.log({ event: 'ignored', xid: p.xid, mac, reason: `client chose server ${sid}` });
          return null;
        }
        const wanted = sid !== undefined ? requestedIp(p) : p.ciaddr !== '0.0.0.0' ? p.ciaddr : requestedIp(p);
        if (wanted === undefined) return this.nak(p, mac, 'REQUEST names no address (no option 50, no ciaddr)');
        const why = this.refusal(mac, wanted, now);
        // This server is authoritative for its subnet: a wrong address gets a NAK at once (also in INIT-REBOOT,
        // where RFC 2131 §4.3.2 allows silence), so the client restarts with DISCOVER instead of timing out.
        if (why) return this.nak(p, mac, why);
        this.leases.put(this.leaseFor(p, client, wanted, 'bound', now + s.leaseSeconds * 1000));
        return this.grant(p, client, T.ACK, wanted);
      }
      case T.DECLINE: {
        const ip = requestedIp(p);
        const held = this.leases.byMac(mac);
        if (ip && held && held.ip === ip) {
          this.leases.remove(mac);
          this.leases.put({ mac: `declined:${ip}`, ip, state: 'declined', expiresAt: now + s.leaseSeconds * 1000 });
          this.log({ event: 'decline', xid: p.xid, mac, ip });
        }
        return null;
      }
      case T.RELEASE: {
        const held = this.leases.byMac(mac);
        if (held && held.ip === p.ciaddr) {
          this.leases.remove(mac);
          this.log({ event: 'release', xid: p.xid, mac, ip: p.ciaddr });
        }
        return null;
      }
      case T.INFORM: {
        // The client has an address already; it wants options only (RFC 2131 §4.3.5): no yiaddr, no lease time.
        if (!isIPv4(p.ciaddr) || !this.inSubnet(ipToInt(p.ciaddr))) {
          this.log({ event: 'ignored', xid: p.xid, mac, reason: `INFORM from ${p.ciaddr}, outside ${s.cfg.subnet}` });
          return null;
        }
        const reply = this.reply(p, T.ACK, '0.0.0.0');
        this.addNetwork(reply, false);
        const answer = bootAnswer(client, this.config.boot);
        if (answer.kind !== 'none') this.addBoot(reply, client, answer, false);
        this.log({ event: 'ack', xid: p.xid, mac, ip: p.ciaddr, reason: 'INFORM' });
        return { data: encodeDhcp(reply), address: p.ciaddr, port: this.ports.client, packet: reply };
      }
      default:
        this.log({ event: 'ignored', xid: p.xid, mac, reason: `${messageTypeName(type)} is not a client message` });
        return null;
    }
  }

  private inSubnet(ip: number): boolean {
    const s = this.subnet as Subnet;
    return ip > s.network && ip < s.broadcast;
  }

  private free(ip: number, mac: string, now: number): boolean {
    const s = this.subnet as Subnet;
    if (ip === this.server || ip === s.network || ip === s.broadcast) return false;
    const owner = this.reservedOwner(ip);
    // A machine with several MACs has one reservation: each of its MACs may have the address.
    if (owner !== undefined && owner !== mac && this.reservedFor(mac)?.ip !== intToIp(ip)) return false;
    const l = this.leases.byIp(intToIp(ip));
    return !l || l.mac === mac || l.expiresAt <= now;
  }

  /** Why `mac` may not have `ip` now, or null if it may. */
  private refusal(mac: string, ip: string, now: number): string | null {
    const s = this.subnet as Subnet;
    if (!isIPv4(ip) || !this.inSubnet(ipToInt(ip))) return `${ip} is not in ${s.cfg.subnet}`;
    const reserved = this.reservedFor(mac);
    if (reserved && reserved.ip !== ip) return `${mac} is reserved ${reserved.ip}, not ${ip}`;
    const n = ipToInt(ip);
    if (!reserved && (n < s.start || n > s.end)) {
      const held = this.leases.byMac(mac);
      if (!held || held.ip !== ip) return `${ip} is outside the range ${s.cfg.rangeStart}-${s.cfg.rangeEnd}`;
    }
    if (!this.free(n, mac, now)) return `${ip} is in use by another client`;
    return null;
  }

  /** Address for a DISCOVER: reservation, the client's current lease, its requested address, the first free one. */
  private pick(p: DhcpPacket, mac: string, now: number): string | undefined {
    const s = this.subnet as Subnet;
    const reserved = this.reservedFor(mac);
    if (reserved) return reserved.ip;
    const held = this.leases.byMac(mac);
    if (held && held.state !== 'declined' && this.free(ipToInt(held.ip), mac, now)) return held.ip;
    const req = requestedIp(p);
    if (req && this.refusal(mac, req, now) === null) return req;
    // Bounded: at most MAX_RANGE addresses (checked when the config was parsed).
    for (let ip = s.start; ip <= s.end; ip++) if (this.free(ip, mac, now) && !this.leases.byIp(intToIp(ip))) return intToIp(ip);
    for (let ip = s.start; ip <= s.end; ip++) if (this.free(ip, mac, now)) return intToIp(ip);
    return undefined;
  }

  private leaseFor(p: DhcpPacket, c: BootClient, ip: string, state: Lease['state'], expiresAt: number): Lease {
    const l: Lease = { mac: c.mac, ip, state, expiresAt };
    const id = clientId(p);
    if (id) l.clientId = id.toString('hex');
    const hn = hostName(p);
    if (hn) l.hostname = hn;
    // The firmware's identity outlives the firmware: the OS the machine boots (udhcpc, no option 93/97)
    // renews without it, and the lease keeps what the firmware said.
    const prev = this.leases.byMac(c.mac);
    const uuid = c.uuid ?? prev?.uuid;
    const arch = c.arch ?? prev?.arch;
    if (uuid) l.uuid = uuid;
    if (arch !== undefined) l.arch = arch;
    return l;
  }

  private grant(p: DhcpPacket, client: BootClient, type: number, ip: string): DhcpReply {
    const reply = this.reply(p, type, ip);
    this.addNetwork(reply, true);
    const reserved = this.reservedFor(client.mac);
    if (reserved?.hostname) reply.options.set(Opt.HOST_NAME, optv.str(reserved.hostname));
    const answer = bootAnswer(client, this.config.boot);
    if (answer.kind !== 'none') this.addBoot(reply, client, answer, false);
    this.log({ event: type === T.OFFER ? 'offer' : 'ack', xid: p.xid, mac: client.mac, ip, kind: client.kind, ...archOf(client), boot: bootText(answer) });
    return this.address(p, reply, type);
  }

  private nak(p: DhcpPacket, mac: string, reason: string): DhcpReply {
    const reply = this.reply(p, T.NAK, '0.0.0.0');
    reply.options.set(Opt.MESSAGE, optv.str(reason));
    this.log({ event: 'nak', xid: p.xid, mac, reason });
    return this.address(p, reply, T.NAK);
  }

  // ----- building replies ---------------------------------------------------------------------------------

  private reply(p: DhcpPacket, type: number, yiaddr: string): DhcpPacket {
    const options = new Map<number, Buffer>();
    options.set(Opt.MESSAGE_TYPE, optv.u8(type));
    options.set(Opt.SERVER_ID, optv.ips(this.config.serverIp));
    return {
      op: BOOTREPLY,
      htype: p.htype,
      hlen: p.hlen,
      hops: 0,
      xid: p.xid,
      secs: 0,
      flags: p.flags & 0x8000,
      ciaddr: type === T.NAK ? '0.0.0.0' : p.ciaddr,
      yiaddr,
      siaddr: '0.0.0.0',
      giaddr: p.giaddr,
      chaddr: Buffer.from(p.chaddr),
      sname: '',
      file: '',
      options,
    };
  }

  private addNetwork(reply: DhcpPacket, withLease: boolean): void {
    const s = this.subnet as Subnet;
    reply.options.set(Opt.SUBNET_MASK, optv.ips(intToIp(s.mask)));
    reply.options.set(Opt.BROADCAST, optv.ips(intToIp(s.broadcast)));
    if (s.cfg.routers?.length) reply.options.set(Opt.ROUTER, optv.ips(...s.cfg.routers));
    if (s.cfg.dns?.length) reply.options.set(Opt.DNS, optv.ips(...s.cfg.dns));
    if (s.cfg.domain) reply.options.set(Opt.DOMAIN_NAME, optv.str(s.cfg.domain));
    if (withLease) {
      reply.options.set(Opt.LEASE_TIME, optv.u32(s.leaseSeconds));
      reply.options.set(Opt.RENEWAL_TIME, optv.u32(Math.floor(s.leaseSeconds / 2)));
      reply.options.set(Opt.REBINDING_TIME, optv.u32(Math.floor((s.leaseSeconds * 7) / 8)));
    }
  }

  /**
   * Boot information: siaddr + file (+ option 66/67) for TFTP, the URL as file for iPXE/HTTP boot. PXE
   * clients get option 60 `PXEClient` (the PXE spec requires it in a boot offer) and option 43 with
   * discovery control 8 (boot the file in this offer, no boot-server discovery); HTTP boot clients get
   * `HTTPClient`; iPXE gets 175.176 = 1 ("no-pxedhcp": do not wait for ProxyDHCP, trap 2).
   */
  private addBoot(reply: DhcpPacket, c: BootClient, answer: BootAnswer, proxy: boolean): void {
    if (answer.kind === 'none') return;
    reply.siaddr = this.config.serverIp;
    const file = answer.kind === 'tftp' ? answer.file : answer.url;
    if (Buffer.byteLength(file, 'latin1') <= 127) reply.file = file;
    reply.options.set(Opt.BOOTFILE, optv.str(file));
    if (answer.kind === 'tftp') reply.options.set(Opt.TFTP_SERVER, optv.str(this.config.serverIp));
    if (c.kind === 'http') reply.options.set(Opt.VENDOR_CLASS, optv.str('HTTPClient'));
    else reply.options.set(Opt.VENDOR_CLASS, optv.str('PXEClient'));
    if (c.kind === 'pxe' || proxy) reply.options.set(Opt.VENDOR_SPECIFIC, optv.encap([[PxeOpt.DISCOVERY_CONTROL, optv.u8(8)]]));
    if (c.kind === 'ipxe' && !proxy) reply.options.set(Opt.IPXE, optv.encap([[IpxeOpt.NO_PXEDHCP, optv.u8(1)]]));
  }

  /** RFC 2131 §4.1 destination of a server reply (relay agent info echoed per RFC 3046 §2.2). */
  private address(p: DhcpPacket, reply: DhcpPacket, type: number): DhcpReply {
    const relay = relayAgentInfo(p);
    if (relay) reply.options.set(Opt.RELAY_AGENT, relay);
    const data = encodeDhcp(reply);
    const bcast = '255.255.255.255';
    if (p.giaddr !== '0.0.0.0') return { data, address: p.giaddr, port: this.ports.server, packet: reply };
    if (type === T.NAK) return { data, address: bcast, port: this.ports.client, packet: reply };
    // Unicast to ciaddr only where it can arrive: in full mode, a host address of the subnet. A client
    // claiming an address elsewhere (a moved laptop, a mangled DISCOVER) is answered by broadcast instead.
    if (p.ciaddr !== '0.0.0.0' && (!this.subnet || (isIPv4(p.ciaddr) && this.inSubnet(ipToInt(p.ciaddr))))) return { data, address: p.ciaddr, port: this.ports.client, packet: reply };
    // Unicast to yiaddr before the client has it needs an ARP entry only raw sockets can make; broadcast
    // instead, which RFC 2131 permits and every client accepts.
    return { data, address: bcast, port: this.ports.client, packet: reply };
  }
}

function archOf(c: BootClient): { arch?: number } {
  return c.arch !== undefined ? { arch: c.arch } : {};
}

function bootText(a: BootAnswer): string {
  return a.kind === 'tftp' ? `tftp:${a.file}` : a.kind === 'http' ? a.url : `none (${a.reason})`;
}

/**
 * The DHCP service on sockets: `start()` binds 0.0.0.0:67 and `serverIp`:67 (and `serverIp`:4011 in proxy
 * mode), `stop()` closes them. Needs CAP_NET_BIND_SERVICE (root) for the standard ports.
 */
export class DhcpServer {
  readonly responder: DhcpResponder;
  private sockets: Socket[] = [];
  private sender?: Socket;
  private pxeSocket?: Socket;

  constructor(
    config: DhcpConfig,
    leases: LeaseStore,
    private readonly opts: { log?: (e: DhcpLogEntry) => void; ports?: DhcpPorts; now?: () => number; reservations?: ReservationSource } = {},
  ) {
    this.responder = new DhcpResponder(config, leases, opts);
  }

  private get ports(): DhcpPorts {
    return this.opts.ports ?? DEFAULT_PORTS;
  }

  /** Binds the sockets. Rejects with `TaktError('unavailable')` naming the address if a bind fails. */
  async start(): Promise<void> {
    const ip = this.responder.config.serverIp;
    const any = await bind('0.0.0.0', this.ports.server);
    this.sockets.push(any);
    const own = await bind(ip, this.ports.server);
    this.sockets.push(own);
    this.sender = own;
    any.on('message', (m, r) => this.onMessage(m, r, 'dhcp'));
    own.on('message', (m, r) => this.onMessage(m, r, 'dhcp'));
    if (this.responder.config.mode === 'proxy') {
      const pxe = await bind(ip, this.ports.pxe);
      this.sockets.push(pxe);
      this.pxeSocket = pxe;
      pxe.on('message', (m, r) => this.onMessage(m, r, 'pxe'));
    }
  }

  private onMessage(msg: Buffer, rinfo: { address: string; port: number }, via: 'dhcp' | 'pxe'): void {
    const reply = this.responder.handle(msg, rinfo, via);
    if (!reply) return;
    const sock = via === 'pxe' ? this.pxeSocket : this.sender;
    const failed = (err: Error) => this.opts.log?.({ event: 'error', xid: reply.packet.xid, reason: `send to ${reply.address}:${reply.port}: ${err.message}` });
    try {
      sock?.send(reply.data, reply.port, reply.address, (err) => err && failed(err));
    } catch (e) {
      failed(e as Error); // the socket closed under us (stop() racing a message): never crash the endpoint
    }
  }

  /** Current leases (a copy). */
  leases(): Lease[] {
    return this.responder.leases.list();
  }

  /** Closes every socket. */
  async stop(): Promise<void> {
    const socks = this.sockets;
    this.sockets = [];
    await Promise.all(socks.map((s) => new Promise<void>((res) => s.close(() => res()))));
  }
}

function bind(address: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    // A boot storm (a rack powered on at once) sends hundreds of DISCOVERs within milliseconds: the default
    // receive buffer (≈208 KiB, ≈100 datagrams with their overhead) drops the rest, and each dropped client
    // waits 4 s or more to send again (bench/boot-storm.ts). 4 MiB, as far as net.core.rmem_max allows.
    const s = createSocket({ type: 'udp4', reuseAddr: true, recvBufferSize: 4 << 20 });
    s.once('error', (e) => {
      s.close();
      reject(new TaktError('unavailable', `cannot bind DHCP socket ${address}:${port}: ${e.message}`));
    });
    s.bind({ address, port, exclusive: true }, () => {
      s.removeAllListeners('error');
      s.on('error', () => undefined); // a send error is reported through the send callback
      s.setBroadcast(true);
      resolve(s);
    });
  });
}
