/**
 * TFTP packet codec (RFC 1350) with option extension (RFC 2347: OACK; RFC 2348 blksize; RFC 2349 timeout,
 * tsize). Decoding never throws: malformed input is a `TftpDecodeError` (`TaktError`, `bad_request`).
 */
import { TaktError } from '../../model/errors.js';

/** RFC 1350 / 2347 opcodes. */
export const TftpOp = { RRQ: 1, WRQ: 2, DATA: 3, ACK: 4, ERROR: 5, OACK: 6 } as const;

/** RFC 1350 §5 error codes (+ 8 from RFC 2347). */
export const TftpErr = {
  NOT_DEFINED: 0,
  FILE_NOT_FOUND: 1,
  ACCESS_VIOLATION: 2,
  DISK_FULL: 3,
  ILLEGAL_OPERATION: 4,
  UNKNOWN_TID: 5,
  FILE_EXISTS: 6,
  NO_SUCH_USER: 7,
  OPTION_REFUSED: 8,
} as const;

/** A decoded TFTP packet. Request option names are lowercased (RFC 2347: case-insensitive). */
export type TftpPacket =
  | { op: 1 | 2; filename: string; mode: string; options: Map<string, string> }
  | { op: 3; block: number; data: Buffer }
  | { op: 4; block: number }
  | { op: 5; code: number; message: string }
  | { op: 6; options: Map<string, string> };

/** Why bytes are not a TFTP packet. */
export class TftpDecodeError extends TaktError {
  constructor(message: string) {
    super('bad_request', `TFTP packet: ${message}`);
    this.name = 'TftpDecodeError';
  }
}

export type TftpDecodeResult = { ok: true; packet: TftpPacket } | { ok: false; error: TftpDecodeError };

/** Splits NUL-terminated strings from `off`; returns undefined if the last one is not terminated. */
function strings(buf: Buffer, off: number, max: number): string[] | undefined {
  const out: string[] = [];
  let i = off;
  while (i < buf.length) {
    if (out.length >= max) return undefined;
    const nul = buf.indexOf(0, i);
    if (nul < 0) return undefined;
    out.push(buf.subarray(i, nul).toString('latin1'));
    i = nul + 1;
  }
  return out;
}

/** Decodes one TFTP datagram. */
export function decodeTftp(input: Uint8Array): TftpDecodeResult {
  const buf = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  const fail = (m: string): TftpDecodeResult => ({ ok: false, error: new TftpDecodeError(m) });
  if (buf.length < 4) return fail(`too short (${buf.length} bytes)`);
  const op = buf.readUInt16BE(0);
  switch (op) {
    case TftpOp.RRQ:
    case TftpOp.WRQ: {
      // filename, mode, then up to 32 option name/value pairs (more is not a real client).
      const parts = strings(buf, 2, 2 + 64);
      if (!parts || parts.length < 2 || parts.length % 2 !== 0) return fail('request is not filename\\0mode\\0[option\\0value\\0]…');
      const [filename, mode] = parts as [string, string, ...string[]];
      if (filename === '') return fail('empty file name');
      const options = new Map<string, string>();
      for (let i = 2; i < parts.length; i += 2) options.set((parts[i] as string).toLowerCase(), parts[i + 1] as string);
      return { ok: true, packet: { op, filename, mode: mode.toLowerCase(), options } };
    }
    case TftpOp.DATA:
      return { ok: true, packet: { op, block: buf.readUInt16BE(2), data: Buffer.from(buf.subarray(4)) } };
    case TftpOp.ACK:
      return { ok: true, packet: { op, block: buf.readUInt16BE(2) } };
    case TftpOp.ERROR: {
      const nul = buf.indexOf(0, 4);
      return { ok: true, packet: { op, code: buf.readUInt16BE(2), message: buf.subarray(4, nul < 0 ? buf.length : nul).toString('latin1') } };
    }
    case TftpOp.OACK: {
      const parts = strings(buf, 2, 64);
      if (!parts || parts.length % 2 !== 0) return fail('OACK is not option\\0value\\0 pairs');
      const options = new Map<string, string>();
      for (let i = 0; i < parts.length; i += 2) options.set((parts[i] as string).toLowerCase(), parts[i + 1] as string);
      return { ok: true, packet: { op, options } };
    }
    default:
      return fail(`unknown opcode ${op}`);
  }
}

/** DATA packet: block number (wraps at 65536) and up to blksize bytes. */
export function encodeData(block: number, data: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt16BE(TftpOp.DATA, 0);
  head.writeUInt16BE(block & 0xffff, 2);
  return Buffer.concat([head, data]);
}

/** ERROR packet. */
export function encodeError(code: number, message: string): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt16BE(TftpOp.ERROR, 0);
  head.writeUInt16BE(code, 2);
  return Buffer.concat([head, Buffer.from(message, 'latin1'), Buffer.from([0])]);
}

/** OACK packet with the accepted options. */
export function encodeOack(options: Map<string, string>): Buffer {
  const parts: Buffer[] = [Buffer.from([0, TftpOp.OACK])];
  for (const [k, v] of options) parts.push(Buffer.from(`${k}\0${v}\0`, 'latin1'));
  return Buffer.concat(parts);
}

/** ACK packet (used by clients and tests). */
export function encodeAck(block: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt16BE(TftpOp.ACK, 0);
  b.writeUInt16BE(block & 0xffff, 2);
  return b;
}

/** RRQ packet (used by clients and tests). */
export function encodeRrq(filename: string, mode = 'octet', options: Record<string, string> = {}): Buffer {
  const opts = Object.entries(options).map(([k, v]) => `${k}\0${v}\0`).join('');
  return Buffer.concat([Buffer.from([0, TftpOp.RRQ]), Buffer.from(`${filename}\0${mode}\0${opts}`, 'latin1')]);
}
