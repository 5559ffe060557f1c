/**
 * The join block: how a machine's deployed OS learns, on its first boot, where its endpoint is and how to
 * register as the machine it already is. The deploying agent writes the block into the last
 * JOIN_BLOCK_SIZE bytes of the target disk, after the image (which must leave them free); the deployed
 * OS's agent reads it (`takt agent deployed`), registers with the single-use join token it carries, and
 * zeroes the block, so the credential is used once and the disk beyond the image is zero again.
 * Outside any partition, so it needs no file system support and works for every image format.
 *
 * Layout (big-endian), 4096 bytes:
 *   0   8  magic "TAKTJOIN"
 *   8   1  version (1)
 *   9   3  zero
 *   12  4  payload length n (1 … JOIN_BLOCK_SIZE - 48)
 *   16  32 SHA-256 of the payload
 *   48  n  payload: JSON {api, ca, token, machine}
 *   …      zero
 * takt's own format (the protocol is the product): nothing standard carries an enrolment credential
 * outside a file system. The peers' way is a config drive (cloud-init NoCloud's `cidata` volume) or
 * the provisioner rendering files into the image; both need the deployer to write a file system.
 */
import { createHash } from 'node:crypto';
import { TaktError } from './errors.js';

/** Bytes the block takes at the end of the disk (one 4 KiB sector on every disk, 512e or 4Kn). */
export const JOIN_BLOCK_SIZE = 4096;
/** The block's first bytes. */
export const JOIN_BLOCK_MAGIC = 'TAKTJOIN';
const VERSION = 1;
const HEADER = 48;

/** What a join block carries. */
export interface JoinBlock {
  /** The endpoint's API origin, `https://HOST:PORT`. */
  api: string;
  /** SHA-256 fingerprint of the endpoint's CA (`AB:CD:…`), pinned as in discovery. */
  ca: string;
  /** A single-use join token (`tkj.…`) that registers only `machine`. */
  token: string;
  /** The machine's id: the deployed OS registers as this machine or not at all. */
  machine: string;
}

/**
 * The 4096-byte block for `b`.
 * @throws TaktError bad_request when a field is missing or the payload does not fit.
 */
export function encodeJoinBlock(b: JoinBlock): Buffer {
  for (const k of ['api', 'ca', 'token', 'machine'] as const) {
    if (typeof b[k] !== 'string' || b[k] === '') throw new TaktError('bad_request', `join block: ${k} is missing`);
  }
  const payload = Buffer.from(JSON.stringify({ api: b.api, ca: b.ca, token: b.token, machine: b.machine }));
  if (payload.length > JOIN_BLOCK_SIZE - HEADER) throw new TaktError('bad_request', `join block: the payload is ${payload.length} bytes, more than ${JOIN_BLOCK_SIZE - HEADER}`);
  const out = Buffer.alloc(JOIN_BLOCK_SIZE);
  out.write(JOIN_BLOCK_MAGIC, 0, 'latin1');
  out.writeUInt8(VERSION, 8);
  out.writeUInt32BE(payload.length, 12);
  createHash('sha256').update(payload).digest().copy(out, 16);
  payload.copy(out, HEADER);
  return out;
}

/**
 * The join block in `buf` (the disk's last JOIN_BLOCK_SIZE bytes), or null when there is none (no
 * magic: a disk never deployed by takt, or one whose block was already used).
 * @throws TaktError bad_request when the magic is there but the rest is not a valid block (another
 *   version, a bad length, a checksum mismatch, a payload that is not the JSON object expected).
 */
export function decodeJoinBlock(buf: Buffer): JoinBlock | null {
  if (buf.length < HEADER || buf.toString('latin1', 0, 8) !== JOIN_BLOCK_MAGIC) return null;
  const version = buf.readUInt8(8);
  if (version !== VERSION) throw new TaktError('bad_request', `join block: version ${version}, this takt reads version ${VERSION}`);
  const n = buf.readUInt32BE(12);
  if (n < 1 || n > JOIN_BLOCK_SIZE - HEADER || HEADER + n > buf.length) throw new TaktError('bad_request', `join block: payload length ${n} is out of range`);
  const payload = buf.subarray(HEADER, HEADER + n);
  if (!createHash('sha256').update(payload).digest().equals(buf.subarray(16, 48))) throw new TaktError('bad_request', 'join block: the checksum does not match (the block is damaged)');
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch {
    throw new TaktError('bad_request', 'join block: the payload is not JSON');
  }
  const o = v as Record<string, unknown>;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new TaktError('bad_request', 'join block: the payload is not an object');
  for (const k of ['api', 'ca', 'token', 'machine']) {
    if (typeof o[k] !== 'string' || o[k] === '') throw new TaktError('bad_request', `join block: ${k} is missing`);
  }
  return { api: o.api as string, ca: o.ca as string, token: o.token as string, machine: o.machine as string };
}

/**
 * Where the block goes on a disk of `diskBytes`: its last JOIN_BLOCK_SIZE bytes.
 * @throws TaktError bad_request when the disk is too small to hold `imageBytes` and the block.
 */
export function joinBlockOffset(diskBytes: number, imageBytes = 0): number {
  if (!Number.isSafeInteger(diskBytes) || diskBytes < imageBytes + JOIN_BLOCK_SIZE) {
    throw new TaktError('bad_request', `the disk (${diskBytes} bytes) cannot hold the image (${imageBytes} bytes) and takt's ${JOIN_BLOCK_SIZE}-byte join block after it`);
  }
  return diskBytes - JOIN_BLOCK_SIZE;
}
