/**
 * The join block on a disk (model/joinblock.ts), both sides: the deploying agent writes it after the image
 * (`deliverJoinBlock`), and the deployed OS's agent, on its first boot, finds it, registers with the
 * single-use deploy token it carries — as the machine the disk was deployed to — and zeroes it
 * (`joinDeployed`). Registration is discovery's (agent/discover.ts discoverHost): the CA is pinned by
 * the fingerprint the block carries, and the machine token lands in `<dir>/token` (0600).
 */
import { open, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { ApiClient } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import { decodeJoinBlock, encodeJoinBlock, JOIN_BLOCK_SIZE, joinBlockOffset, type JoinBlock } from '../model/joinblock.js';
import { sizeFileOf } from './blockdev.js';
import { discoverHost } from './discover.js';
import type { Registration } from './register.js';

/**
 * The size in bytes of `path`: a regular file's length, or a block device's size from sysfs
 * (blockdev.ts sizeFileOf).
 * @throws TaktError bad_request when `path` is neither, or cannot be read.
 */
export async function deviceSize(path: string): Promise<number> {
  const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new TaktError('bad_request', `${path}: ${err.code === 'ENOENT' ? 'no such device or file' : err.message}`);
  });
  if (st.isFile()) return st.size;
  if (!st.isBlockDevice()) throw new TaktError('bad_request', `${path} is neither a block device nor a regular file`);
  const sizeFile = sizeFileOf(st.rdev);
  const text = await readFile(sizeFile, 'utf8').catch(() => {
    throw new TaktError('bad_request', `${path}: cannot read its size from ${sizeFile}`);
  });
  return Number(text.trim()) * 512;
}

async function readAt(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

async function writeAt(path: string, offset: number, data: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, offset);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Writes `block` into the last JOIN_BLOCK_SIZE bytes of `device`, after an image of `imageBytes`.
 * @throws TaktError bad_request when the disk cannot hold both.
 */
export async function writeJoinBlock(device: string, block: JoinBlock, imageBytes: number): Promise<void> {
  const offset = joinBlockOffset(await deviceSize(device), imageBytes);
  await writeAt(device, offset, encodeJoinBlock(block));
}

/** The join block at the end of `device`, or null when it has none. @throws TaktError for a damaged one. */
export async function readJoinBlock(device: string): Promise<JoinBlock | null> {
  const size = await deviceSize(device);
  if (size < JOIN_BLOCK_SIZE) return null;
  return decodeJoinBlock(await readAt(device, size - JOIN_BLOCK_SIZE, JOIN_BLOCK_SIZE));
}

/** Zeroes the join block of `device` (the disk beyond the image is zero again, as before the deploy). */
export async function wipeJoinBlock(device: string): Promise<void> {
  const size = await deviceSize(device);
  await writeAt(device, size - JOIN_BLOCK_SIZE, Buffer.alloc(JOIN_BLOCK_SIZE));
}

/**
 * The whole disks of this host, as /dev paths, in sysfs order: /sys/block without loop, ram, zram,
 * optical (sr), floppy (fd: qemu gives a PC one by default, and reading an empty drive logs I/O errors),
 * device-mapper and md devices, whose ends are not a deployed disk's.
 */
export async function wholeDisks(sys = '/sys/block'): Promise<string[]> {
  const names = await readdir(sys).catch(() => [] as string[]);
  return names.filter((n) => !/^(loop|ram|zram|sr|fd|dm-|md)/.test(n)).sort().map((n) => join('/dev', n));
}

/**
 * Asks the endpoint for machine `machineId`'s deploy token and writes it into `device`'s join block, after
 * an image of `imageBytes`: the deployed OS registers with it on its first boot.
 * @param client the deploying agent's client (its machine token).
 * @param endpoint the endpoint URL the deployed OS is to use (the deploying agent's own).
 * @throws TaktError as the endpoint answers (no TLS: `unavailable`), or bad_request for a too-small disk.
 */
export async function deliverJoinBlock(client: ApiClient, machineId: string, endpoint: string, device: string, imageBytes: number): Promise<{ joinToken: string; expiresAt: string }> {
  // Refused before a token is made: a disk that cannot hold the block would waste one.
  joinBlockOffset(await deviceSize(device), imageBytes);
  const r = await client.post<{ machine: string; api: string; caFingerprint: string; token: string; expiresAt: string; joinToken: string }>(`/machines/${encodeURIComponent(machineId)}/deploy-token`, { url: endpoint });
  await writeJoinBlock(device, { api: r.api, ca: r.caFingerprint, token: r.token, machine: r.machine }, imageBytes);
  return { joinToken: r.joinToken, expiresAt: r.expiresAt };
}

/**
 * The deployed OS's first boot: finds the join block on `devices` (default: every whole disk), registers
 * with it (CA pinned by its fingerprint; network failures retried until `deadlineMs`), writes
 * `<dir>/ca.pem` and `<dir>/token`, and only then zeroes the block, so a registration cut short can be
 * tried again at the next boot, and a used one never.
 * @returns the API URL and the registration.
 * @throws TaktError not_found when no disk has a block (this OS was not deployed by takt, or its block was
 *   used already: its token is in `<dir>`, or the machine must be deployed again); what the endpoint
 *   answered otherwise (an expired or used token is `unauthorized`, another machine's disk `forbidden`).
 */
export async function joinDeployed(dir: string, agentVersion: string | null, opts: { devices?: string[]; deadlineMs?: number; log?: (msg: string) => void } = {}): Promise<{ api: string; device: string; registration: Registration }> {
  const devices = opts.devices ?? (await wholeDisks());
  let found: { device: string; block: JoinBlock } | undefined;
  for (const device of devices) {
    const block = await readJoinBlock(device).catch((err: unknown) => {
      if (err instanceof TaktError && /join block/.test(err.message)) throw new TaktError('bad_request', `${device}: ${err.message}`);
      return null; // unreadable (no medium, permissions): not the deployed disk
    });
    if (block) {
      found = { device, block };
      break;
    }
  }
  if (!found) throw new TaktError('not_found', `no join block on ${devices.join(', ') || 'any disk'}: this OS was not deployed by takt, or it has joined already (its token is in ${dir}/token); deploy the machine again to join it anew`);
  const registration = await discoverHost({ api: found.block.api, ca: found.block.ca, token: found.block.token }, dir, agentVersion, opts.deadlineMs ?? 120_000, opts.log);
  if (registration.machine.id !== found.block.machine) {
    throw new TaktError('internal', `the endpoint registered this OS as machine ${registration.machine.id}, and its join block is for ${found.block.machine}`);
  }
  await wipeJoinBlock(found.device);
  return { api: found.block.api, device: found.device, registration };
}
