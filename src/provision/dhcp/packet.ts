/**
 * DHCPv4 message codec, written for takt (no packet library): the fixed header of RFC 2131 §2, the options
 * area of RFC 2132 (pad 0, end 255, the magic cookie 99.130.83.99), option overload (52) into the `file`
 * and `sname` fields on read, and RFC 3396 long options (an option that appears several times is one value:
 * the concatenation of its parts, in the order options area → file → sname). Encoding splits values longer
 * than 255 bytes the same way.
 *
 * Decoding never throws: malformed input gives a `DhcpDecodeError` (a `TaktError` with code `bad_request`)
 * in the result. Every loop advances by at least one byte of a bounded buffer, so decoding is O(length).
 * Typed accessors below read the options PXE and iPXE use; a malformed value of a known option (a 53 that is
 * not one byte, a 54 that is not four) reads as absent rather than as a guess.
 */
import { TaktError } from '../../model/errors.js';

/** BOOTP op codes (RFC 951). */
export const BOOTREQUEST = 1;
export const BOOTREPLY = 2;

/** RFC 2132 §9.6 message types (option 53). */
export const DhcpMessageType = {
  DISCOVER: 1,
  OFFER: 2,
  REQUEST: 3,
  DECLINE: 4,
  ACK: 5,
  NAK: 6,
  RELEASE: 7,
  INFORM: 8,
} as const;
export type DhcpMessageTypeName = keyof typeof DhcpMessageType;

/** Option codes this code reads or writes (RFC 2132 unless noted). */
export const Opt = {
  PAD: 0,
  SUBNET_MASK: 1,
  ROUTER: 3,
  DNS: 6,
  HOST_NAME: 12,
  DOMAIN_NAME: 15,
  BROADCAST: 28,
  VENDOR_SPECIFIC: 43,
  REQUESTED_IP: 50,
  LEASE_TIME: 51,
  OVERLOAD: 52,
  MESSAGE_TYPE: 53,
  SERVER_ID: 54,
  PARAM_REQUEST_LIST: 55,
  MESSAGE: 56,
  MAX_MESSAGE_SIZE: 57,
  RENEWAL_TIME: 58,
  REBINDING_TIME: 59,
  VENDOR_CLASS: 60,
  CLIENT_ID: 61,
  TFTP_SERVER: 66,
  BOOTFILE: 67,
  USER_CLASS: 77, // RFC 3004
  RELAY_AGENT: 82, // RFC 3046
  CLIENT_ARCH: 93, // RFC 4578
  CLIENT_NDI: 94, // RFC 4578
  CLIENT_UUID: 97, // RFC 4578
  IPXE: 175, // iPXE's encapsulated options (site-specific range)
  END: 255,
} as const;

/** iPXE sub-options inside option 175 (iPXE's `include/ipxe/dhcp.h`). */
export const IpxeOpt = {
  /** "no-pxedhcp": 1 tells iPXE not to wait for ProxyDHCP offers (trap 2 of the provisioning facts). */
  NO_PXEDHCP: 176,
} as const;

/** PXE sub-options inside option 43 when the vendor class is `PXEClient` (PXE spec 2.1 §2.4.2). */
export const PxeOpt = {
  /** PXE_DISCOVERY_CONTROL: bit 3 (8) = use the boot file of the offer, do not discover boot servers. */
  DISCOVERY_CONTROL: 6,
} as const;

/** Size of the fixed BOOTP header, up to and excluding the magic cookie (RFC 2131 §2). */
export const HEADER_LEN = 236;
const COOKIE = 0x63825363;
/** Smallest message every DHCP client must accept (RFC 2131 §2); replies are padded up to the BOOTP 300 bytes. */
export const MIN_REPLY_LEN = 300;

/** A decoded (or to-be-encoded) DHCPv4 message. IPv4 addresses are dotted quads. */
export interface DhcpPacket {
  op: number;
  htype: number;
  hlen: number;
  hops: number;
  /** Transaction id chosen by the client (uint32). */
  xid: number;
  /** Seconds since the client began acquiring (uint16). */
  secs: number;
  /** Bit 15 (0x8000) is the BROADCAST flag. */
  flags: number;
  ciaddr: string;
  yiaddr: string;
  siaddr: string;
  giaddr: string;
  /** Client hardware address field, all 16 bytes as sent. */
  chaddr: Buffer;
  /** Server host name (`sname`), up to its first NUL; empty when the field carried options (overload). */
  sname: string;
  /** Boot file name (`file`), up to its first NUL; empty when the field carried options (overload). */
  file: string;
  /**
   * Options by code, in first-seen order; a code that appeared more than once is the concatenation of
   * its parts (RFC 3396). Pad and end are not kept.
   */
  options: Map<number, Buffer>;
}

/** Why a message could not be decoded: a `TaktError` (`bad_request`) with the byte offset in `path`. */
export class DhcpDecodeError extends TaktError {
  /** Offset in the message where the problem was found. */
  readonly offset: number;
  constructor(message: string, offset: number) {
    super('bad_request', `DHCP message: ${message} at byte ${offset}`, { path: `byte ${offset}` });
    this.name = 'DhcpDecodeError';
    this.offset = offset;
  }
}

/** Result of `decodeDhcp`: the message, or why it is not one. */
export type DhcpDecodeResult = { ok: true; packet: DhcpPacket } | { ok: false; error: DhcpDecodeError };

/** Byte at `i`, 0 past the end (callers check bounds first; this keeps strict indexing honest). */
const u8 = (b: Uint8Array, i: number): number => b[i] ?? 0;

/** `a.b.c.d` from four bytes at `off`. */
export function readIp(buf: Buffer, off: number): string {
  return `${u8(buf, off)}.${u8(buf, off + 1)}.${u8(buf, off + 2)}.${u8(buf, off + 3)}`;
}

/** True for a dotted-quad IPv4 address with each part 0–255. */
export function isIPv4(s: string): boolean {
  const parts = s.split('.');
  return parts.length === 4 && parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255);
}

/** IPv4 dotted quad → uint32. Throws `TaktError('invalid')` for anything else (a programming or config error). */
export function ipToInt(ip: string): number {
  if (!isIPv4(ip)) throw new TaktError('invalid', `'${ip}' is not an IPv4 address`);
  return ip.split('.').reduce((n, p) => n * 256 + Number(p), 0);
}

/** uint32 → IPv4 dotted quad. */
export function intToIp(n: number): string {
  return [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function writeIp(buf: Buffer, off: number, ip: string): void {
  buf.writeUInt32BE(ipToInt(ip), off);
}

/** Text of a NUL-terminated fixed field. */
function cstring(buf: Buffer): string {
  const nul = buf.indexOf(0);
  return buf.subarray(0, nul < 0 ? buf.length : nul).toString('latin1');
}

/**
 * Walks one options region, appending each option's bytes to `parts` (RFC 3396: repeated codes concatenate).
 * Stops at END or at the region's end; returns an error for an option whose length runs past the region.
 */
function readOptions(buf: Buffer, start: number, end: number, parts: Map<number, Buffer[]>, base: number): DhcpDecodeError | null {
  let i = start;
  while (i < end) {
    const code = u8(buf, i);
    if (code === Opt.PAD) {
      i += 1;
      continue;
    }
    if (code === Opt.END) return null;
    if (i + 1 >= end) return new DhcpDecodeError(`option ${code} has no length byte`, base + i);
    const len = u8(buf, i + 1);
    if (i + 2 + len > end) return new DhcpDecodeError(`option ${code} (length ${len}) runs past the end of its field`, base + i);
    const list = parts.get(code);
    const value = buf.subarray(i + 2, i + 2 + len);
    if (list) list.push(value);
    else parts.set(code, [value]);
    i += 2 + len;
  }
  // RFC 2131 says the options field ends with END; clients in the wild (and option-overloaded fields) omit it.
  return null;
}

/**
 * Decodes a DHCPv4 message (RFC 2131/2132/3396). Never throws: structural problems (too short, no magic
 * cookie, an option running past its field, an unknown hardware address length) are a `DhcpDecodeError`.
 */
export function decodeDhcp(input: Uint8Array): DhcpDecodeResult {
  try {
    return decodeUnchecked(Buffer.from(input.buffer, input.byteOffset, input.byteLength));
  } catch (e) {
    // Defensive: the decoder is written not to throw; anything that does is still reported, typed.
    return { ok: false, error: new DhcpDecodeError(`undecodable (${(e as Error).message})`, 0) };
  }
}

function decodeUnchecked(buf: Buffer): DhcpDecodeResult {
  const fail = (message: string, offset: number): DhcpDecodeResult => ({ ok: false, error: new DhcpDecodeError(message, offset) });
  if (buf.length < HEADER_LEN + 4) return fail(`too short (${buf.length} bytes, at least ${HEADER_LEN + 4})`, buf.length);
  const op = u8(buf, 0);
  if (op !== BOOTREQUEST && op !== BOOTREPLY) return fail(`op ${op} is neither BOOTREQUEST (1) nor BOOTREPLY (2)`, 0);
  const hlen = u8(buf, 2);
  if (hlen > 16) return fail(`hardware address length ${hlen} exceeds 16`, 2);
  if (buf.readUInt32BE(HEADER_LEN) !== COOKIE) return fail('no DHCP magic cookie (99.130.83.99)', HEADER_LEN);

  const parts = new Map<number, Buffer[]>();
  const optErr = readOptions(buf, HEADER_LEN + 4, buf.length, parts, 0);
  if (optErr) return { ok: false, error: optErr };

  // Option overload (RFC 2132 §9.3): 1 = file holds options, 2 = sname, 3 = both; file is read before sname.
  const overloadVal = parts.get(Opt.OVERLOAD)?.[0];
  const overload = overloadVal && overloadVal.length === 1 ? u8(overloadVal, 0) : 0;
  const sname = buf.subarray(44, 108);
  const file = buf.subarray(108, 236);
  if (overload & 1) {
    const e = readOptions(file, 0, file.length, parts, 108);
    if (e) return { ok: false, error: e };
  }
  if (overload & 2) {
    const e = readOptions(sname, 0, sname.length, parts, 44);
    if (e) return { ok: false, error: e };
  }
  const options = new Map<number, Buffer>();
  for (const [code, list] of parts) options.set(code, Buffer.concat(list));

  return {
    ok: true,
    packet: {
      op,
      htype: u8(buf, 1),
      hlen,
      hops: u8(buf, 3),
      xid: buf.readUInt32BE(4),
      secs: buf.readUInt16BE(8),
      flags: buf.readUInt16BE(10),
      ciaddr: readIp(buf, 12),
      yiaddr: readIp(buf, 16),
      siaddr: readIp(buf, 20),
      giaddr: readIp(buf, 24),
      chaddr: Buffer.from(buf.subarray(28, 44)),
      sname: overload & 2 ? '' : cstring(sname),
      file: overload & 1 ? '' : cstring(file),
      options,
    },
  };
}

/**
 * Encodes a message. Options are written in the map's order (message type first if present, as many
 * clients expect), values longer than 255 bytes split into consecutive parts (RFC 3396), then END, and the
 * whole padded to 300 bytes (the BOOTP minimum some PXE ROMs insist on). `sname`/`file` longer than their
 * fields (63/127 bytes plus NUL) are refused with `TaktError('invalid')`: a truncated boot file name would
 * boot the wrong thing.
 */
export function encodeDhcp(p: DhcpPacket): Buffer {
  if (Buffer.byteLength(p.sname, 'latin1') > 63) throw new TaktError('invalid', `sname '${p.sname}' is longer than 63 bytes`, { path: 'sname' });
  if (Buffer.byteLength(p.file, 'latin1') > 127) throw new TaktError('invalid', `boot file '${p.file}' is longer than 127 bytes`, { path: 'file' });
  const chunks: Buffer[] = [];
  const order = [...p.options.keys()].sort((a, b) => (a === Opt.MESSAGE_TYPE ? -1 : b === Opt.MESSAGE_TYPE ? 1 : 0));
  for (const code of order) {
    if (code === Opt.PAD || code === Opt.END) continue;
    const value = p.options.get(code) as Buffer;
    if (value.length === 0) {
      chunks.push(Buffer.from([code, 0]));
      continue;
    }
    for (let off = 0; off < value.length; off += 255) {
      const part = value.subarray(off, Math.min(off + 255, value.length));
      chunks.push(Buffer.from([code, part.length]), part);
    }
  }
  chunks.push(Buffer.from([Opt.END]));
  const opts = Buffer.concat(chunks);
  const buf = Buffer.alloc(Math.max(MIN_REPLY_LEN, HEADER_LEN + 4 + opts.length));
  buf.writeUInt8(p.op & 255, 0);
  buf.writeUInt8(p.htype & 255, 1);
  buf.writeUInt8(p.hlen & 255, 2);
  buf.writeUInt8(p.hops & 255, 3);
  buf.writeUInt32BE(p.xid >>> 0, 4);
  buf.writeUInt16BE(p.secs & 0xffff, 8);
  buf.writeUInt16BE(p.flags & 0xffff, 10);
  writeIp(buf, 12, p.ciaddr);
  writeIp(buf, 16, p.yiaddr);
  writeIp(buf, 20, p.siaddr);
  writeIp(buf, 24, p.giaddr);
  p.chaddr.copy(buf, 28, 0, Math.min(16, p.chaddr.length));
  buf.write(p.sname, 44, 'latin1');
  buf.write(p.file, 108, 'latin1');
  buf.writeUInt32BE(COOKIE, HEADER_LEN);
  opts.copy(buf, HEADER_LEN + 4);
  return buf;
}

// ---------------------------------------------------------------------------------------------------------
// Option value builders (for encoding).

/** Builders of option values, each returning the raw bytes of one option. */
export const optv = {
  u8: (n: number): Buffer => Buffer.from([n & 255]),
  u16: (n: number): Buffer => {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(n & 0xffff);
    return b;
  },
  u32: (n: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n >>> 0);
    return b;
  },
  /** One or more IPv4 addresses (options 1, 3, 6, 28, 50, 54). */
  ips: (...ips: string[]): Buffer => {
    const b = Buffer.alloc(4 * ips.length);
    ips.forEach((ip, i) => writeIp(b, i * 4, ip));
    return b;
  },
  str: (s: string): Buffer => Buffer.from(s, 'latin1'),
  /** Encapsulated sub-options (43, 175, 82): code, length, value; each value at most 255 bytes. */
  encap: (subs: Array<[number, Buffer]>): Buffer =>
    Buffer.concat(
      subs.flatMap(([code, v]) => {
        if (v.length > 255) throw new TaktError('invalid', `sub-option ${code} is longer than 255 bytes`);
        return [Buffer.from([code, v.length]), v];
      }),
    ),
};

// ---------------------------------------------------------------------------------------------------------
// Typed accessors (for decoding). Each returns undefined when the option is absent or malformed.

const opt = (p: DhcpPacket, code: number): Buffer | undefined => p.options.get(code);

/** Option 53: the message type (1–8), or undefined. */
export function messageType(p: DhcpPacket): number | undefined {
  const v = opt(p, Opt.MESSAGE_TYPE);
  return v && v.length === 1 && u8(v, 0) >= 1 && u8(v, 0) <= 8 ? u8(v, 0) : undefined;
}

/** Name of a message type number (`DISCOVER`, …), for logs. */
export function messageTypeName(t: number | undefined): string {
  const hit = Object.entries(DhcpMessageType).find(([, v]) => v === t);
  return hit ? hit[0] : `type ${t ?? 'none'}`;
}

function oneIp(p: DhcpPacket, code: number): string | undefined {
  const v = opt(p, code);
  return v && v.length === 4 ? readIp(v, 0) : undefined;
}

function ipList(p: DhcpPacket, code: number): string[] | undefined {
  const v = opt(p, code);
  if (!v || v.length === 0 || v.length % 4 !== 0) return undefined;
  const out: string[] = [];
  for (let i = 0; i < v.length; i += 4) out.push(readIp(v, i));
  return out;
}

function u32(p: DhcpPacket, code: number): number | undefined {
  const v = opt(p, code);
  return v && v.length === 4 ? v.readUInt32BE(0) : undefined;
}

function text(p: DhcpPacket, code: number): string | undefined {
  const v = opt(p, code);
  return v && v.length > 0 ? cstring(v) : undefined;
}

/** Option 50: requested IP address. */
export const requestedIp = (p: DhcpPacket): string | undefined => oneIp(p, Opt.REQUESTED_IP);
/** Option 54: server identifier. */
export const serverId = (p: DhcpPacket): string | undefined => oneIp(p, Opt.SERVER_ID);
/** Option 51: lease time in seconds. */
export const leaseTime = (p: DhcpPacket): number | undefined => u32(p, Opt.LEASE_TIME);
/** Option 1: subnet mask. */
export const subnetMask = (p: DhcpPacket): string | undefined => oneIp(p, Opt.SUBNET_MASK);
/** Option 3: routers. */
export const routers = (p: DhcpPacket): string[] | undefined => ipList(p, Opt.ROUTER);
/** Option 6: DNS servers. */
export const dnsServers = (p: DhcpPacket): string[] | undefined => ipList(p, Opt.DNS);
/** Option 12: host name. */
export const hostName = (p: DhcpPacket): string | undefined => text(p, Opt.HOST_NAME);
/** Option 15: domain name. */
export const domainName = (p: DhcpPacket): string | undefined => text(p, Opt.DOMAIN_NAME);
/** Option 60: vendor class identifier, e.g. `PXEClient:Arch:00000:UNDI:002001`. */
export const vendorClass = (p: DhcpPacket): string | undefined => text(p, Opt.VENDOR_CLASS);
/** Option 66: TFTP server name. */
export const tftpServerName = (p: DhcpPacket): string | undefined => text(p, Opt.TFTP_SERVER);
/** Option 67: boot file name. */
export const bootfileName = (p: DhcpPacket): string | undefined => text(p, Opt.BOOTFILE);

/** Option 55: parameter request list (option codes the client asks for). */
export function paramRequestList(p: DhcpPacket): number[] | undefined {
  const v = opt(p, Opt.PARAM_REQUEST_LIST);
  return v ? [...v] : undefined;
}

/** Option 57: maximum DHCP message size the client accepts (bytes; RFC 2132 says at least 576). */
export function maxMessageSize(p: DhcpPacket): number | undefined {
  const v = opt(p, Opt.MAX_MESSAGE_SIZE);
  return v && v.length === 2 ? v.readUInt16BE(0) : undefined;
}

/** Option 61: client identifier (type byte + data), raw. */
export const clientId = (p: DhcpPacket): Buffer | undefined => {
  const v = opt(p, Opt.CLIENT_ID);
  return v && v.length >= 2 ? v : undefined;
};

/** Option 82: relay agent information, raw (passed back unchanged in replies, RFC 3046 §2.2). */
export const relayAgentInfo = (p: DhcpPacket): Buffer | undefined => opt(p, Opt.RELAY_AGENT);

/**
 * Option 77: user classes. RFC 3004 encodes a list of length-prefixed strings; iPXE sends the bare string
 * `iPXE` (provisioning facts §1). Both are accepted: if the bytes parse exactly as RFC 3004 items of
 * printable text, they are that list, otherwise the whole value is one class.
 */
export function userClasses(p: DhcpPacket): string[] | undefined {
  const v = opt(p, Opt.USER_CLASS);
  if (!v || v.length === 0) return undefined;
  const items: string[] = [];
  let i = 0;
  let rfc = true;
  while (i < v.length) {
    const len = u8(v, i);
    if (len === 0 || i + 1 + len > v.length) {
      rfc = false;
      break;
    }
    const item = v.subarray(i + 1, i + 1 + len);
    if (!item.every((b) => b >= 0x20 && b < 0x7f)) {
      rfc = false;
      break;
    }
    items.push(item.toString('latin1'));
    i += 1 + len;
  }
  return rfc ? items : [cstring(v)];
}

/** Option 93 (RFC 4578 §2.1): client system architectures, uint16 each (0 BIOS, 6 EFI ia32, 7/9 EFI x64, 16 HTTP x64). */
export function clientArch(p: DhcpPacket): number[] | undefined {
  const v = opt(p, Opt.CLIENT_ARCH);
  if (!v || v.length === 0 || v.length % 2 !== 0) return undefined;
  const out: number[] = [];
  for (let i = 0; i < v.length; i += 2) out.push(v.readUInt16BE(i));
  return out;
}

/** Option 94 (RFC 4578 §2.2): network device interface: type (1 = UNDI) and version. */
export function clientNdi(p: DhcpPacket): { type: number; major: number; minor: number } | undefined {
  const v = opt(p, Opt.CLIENT_NDI);
  return v && v.length === 3 ? { type: u8(v, 0), major: u8(v, 1), minor: u8(v, 2) } : undefined;
}

/**
 * Option 97 (RFC 4578 §2.3): client machine identifier, type 0 + 16-byte GUID, as the lowercase UUID text
 * in SMBIOS byte order (the first three fields little-endian, as firmware and iPXE's `${uuid}` print it).
 */
export function clientUuid(p: DhcpPacket): string | undefined {
  const v = opt(p, Opt.CLIENT_UUID);
  if (!v || v.length !== 17 || u8(v, 0) !== 0) return undefined;
  const g = v.subarray(1);
  const hex = (b: Buffer) => b.toString('hex');
  const rev = (a: number, b: number) => hex(Buffer.from(g.subarray(a, b)).reverse());
  return `${rev(0, 4)}-${rev(4, 6)}-${rev(6, 8)}-${hex(g.subarray(8, 10))}-${hex(g.subarray(10, 16))}`;
}

/**
 * Parses encapsulated sub-options (code, length, value; pad 0 and end 255 honoured) as in options 43, 82
 * and 175. Returns undefined if a sub-option runs past the value (malformed).
 */
export function parseEncapsulated(v: Buffer): Map<number, Buffer> | undefined {
  const out = new Map<number, Buffer>();
  let i = 0;
  while (i < v.length) {
    const code = u8(v, i);
    if (code === 0) {
      i += 1;
      continue;
    }
    if (code === 255) break;
    if (i + 1 >= v.length) return undefined;
    const len = u8(v, i + 1);
    if (i + 2 + len > v.length) return undefined;
    const prev = out.get(code);
    const value = v.subarray(i + 2, i + 2 + len);
    out.set(code, prev ? Buffer.concat([prev, value]) : Buffer.from(value));
    i += 2 + len;
  }
  return out;
}

/** Option 43 as sub-options (meaningful for PXE when option 60 starts with `PXEClient`). */
export function vendorSpecific(p: DhcpPacket): Map<number, Buffer> | undefined {
  const v = opt(p, Opt.VENDOR_SPECIFIC);
  return v ? parseEncapsulated(v) : undefined;
}

/** Option 175 (iPXE) as sub-options; its presence marks an iPXE client. */
export function ipxeOptions(p: DhcpPacket): Map<number, Buffer> | undefined {
  const v = opt(p, Opt.IPXE);
  return v ? parseEncapsulated(v) : undefined;
}

/** The client's hardware address as `aa:bb:cc:dd:ee:ff` (hlen bytes of chaddr). */
export function macOf(p: DhcpPacket): string {
  return [...p.chaddr.subarray(0, Math.min(p.hlen, 16))].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** True when the client set the BROADCAST flag (RFC 2131 §2, flags bit 15). */
export const wantsBroadcast = (p: DhcpPacket): boolean => (p.flags & 0x8000) !== 0;
