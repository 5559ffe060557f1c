/**
 * The image catalog (issue #14): immutable `name@version` artifacts whose bytes the endpoint keeps under
 * their SHA-256 in `<data>/images/sha256/<hex>` and whose records (format, size, provenance) live in the
 * store. An import streams the bytes to a temporary file while hashing them, checks what the client said
 * (digest, length), and only then moves the file into place and writes the record: a broken, truncated or
 * mismatched upload leaves the catalog and the directory as they were. Versions that share bytes share
 * the file; removing the last version that uses a file removes it.
 *
 * Replicas on one PostgreSQL database share the records but not the directory: they need it on shared
 * storage (the same path on each), which README "Running on PostgreSQL" says.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { TaktError } from '../model/errors.js';
import { checkImageName, checkImageSha256, checkImageVersion, detectFormat, imageExists, imageRef, SNIFF_BYTES, type BuildProvenance, type Image } from '../model/image.js';
import type { Reads, Store } from '../store/store.js';

/**
 * The machines whose current build record names image `name@version` (engine/records.ts
 * machinesUsingImage), read through `reads`: the removal's own transaction, so that a deploy recorded
 * meanwhile is seen.
 */
export type ImageUsers = (reads: Pick<Reads, 'listJobs' | 'listMachines'>, name: string, version: string) => Promise<string[]>;

/** Machines named at most in a refusal; the rest are counted. */
const LISTED_USERS = 10;

export interface ImportInput {
  name: string;
  version: string;
  description?: string | null;
  /** The digest the client computed (lower-case hex): a different one refuses the import. */
  sha256?: string;
  /** The length the client is sending, in bytes: fewer or more refuses the import (a truncated upload). */
  size?: number;
  /** The file name the client sent it from (shown in provenance; directories dropped). */
  file?: string;
  /** Set when a job publishes what it built (`buildProvenance`); else the import is a person's. */
  build?: Omit<BuildProvenance, 'file'>;
}

/**
 * The provenance of an image that job `jobId` publishes with machine `machineId`'s token: the job must be
 * that machine's and running now (a finished job's token use, or another machine's job, is refused).
 * @throws TaktError forbidden when the job is not the machine's running job (saying which), not_found when
 *   the job does not exist.
 */
export async function buildProvenance(reads: Pick<Reads, 'getJob' | 'getMachine'>, machineId: string, jobId: string): Promise<Omit<BuildProvenance, 'file'>> {
  const job = await reads.getJob(jobId);
  if (!job || job.machineId !== machineId) throw new TaktError('forbidden', `job ${jobId} is not a job of this machine: a machine publishes images only from its own running job (takt-image publish does)`);
  if (job.state !== 'running') throw new TaktError('forbidden', `job ${jobId} is ${job.state}: images are published while the job that built them runs`);
  const m = await reads.getMachine(machineId);
  const recipe = { taskSha256: job.taskSha256, params: Object.fromEntries(Object.entries(job.params).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => [k, v.value])) };
  return {
    kind: 'build',
    by: `machine:${machineId}`,
    machine: { id: machineId, name: m?.name ?? machineId },
    job: job.id,
    pipeline: job.pipeline,
    stage: job.stage,
    task: job.task,
    pack: job.pack,
    recipe,
    recipeSha256: createHash('sha256').update(JSON.stringify({ pack: job.pack?.replace(/@.*$/, '') ?? null, task: job.task, ...recipe })).digest('hex'),
  };
}

export class ImageCatalog {
  private readonly blobs: string;
  private readonly tmp: string;

  /**
   * `dir`: where the bytes are kept (`<data>/images`); made on first use, mode 0700. `usedBy`: who uses a
   * version (removing one a machine's build record names is refused); without it nothing is refused.
   */
  constructor(
    private readonly store: Store,
    readonly dir: string,
    private readonly usedBy?: ImageUsers,
  ) {
    this.blobs = join(dir, 'sha256');
    this.tmp = join(dir, 'tmp');
  }

  async list(name?: string): Promise<Image[]> {
    if (name !== undefined) checkImageName(name);
    return this.store.listImages(name);
  }

  /** @throws TaktError not_found naming the versions of `name` there are, if any. */
  async get(name: string, version: string): Promise<Image> {
    checkImageName(name);
    checkImageVersion(version);
    const i = await this.store.getImage(name, version);
    if (i) return i;
    const others = await this.store.listImages(name);
    throw new TaktError('not_found', `image ${name}@${version} not found${others.length ? `; ${name} has ${others.map((o) => o.version).join(', ')}` : ''} (takt images list)`);
  }

  /**
   * Reads `body` to its end into the catalog as `input.name@input.version`.
   * @throws TaktError conflict when that version exists (before any byte is read); invalid for a bad
   *   name, version or digest, an empty image, or bytes whose length or digest differ from what the client
   *   said (naming both); bad_request when the upload broke off. Nothing is kept in any of these cases.
   */
  async import(input: ImportInput, body: Readable, author: string): Promise<Image> {
    checkImageName(input.name);
    checkImageVersion(input.version);
    if (input.sha256 !== undefined) checkImageSha256(input.sha256);
    const ref = `${input.name}@${input.version}`;
    if (await this.store.getImage(input.name, input.version)) throw imageExists(ref);
    mkdirSync(this.tmp, { recursive: true, mode: 0o700 });
    mkdirSync(this.blobs, { recursive: true, mode: 0o700 });
    const tmpFile = join(this.tmp, `${randomBytes(8).toString('hex')}.part`);
    let received: { sha256: string; size: number; head: Buffer };
    try {
      received = await receive(body, tmpFile);
    } catch (err) {
      rmSync(tmpFile, { force: true });
      throw err;
    }
    const refuse = (message: string, path?: string): never => {
      rmSync(tmpFile, { force: true });
      throw new TaktError('invalid', `image ${ref} not imported: ${message}; nothing was kept`, path ? { path } : undefined);
    };
    if (received.size === 0) refuse('it is empty (0 bytes)');
    if (input.size !== undefined && received.size !== input.size) refuse(`${received.size} bytes arrived, ${input.size} were announced (a truncated upload?)`, '/size');
    if (input.sha256 !== undefined && received.sha256 !== input.sha256) refuse(`its bytes have sha256 ${received.sha256}, not ${input.sha256} as given`, '/sha256');
    const blob = join(this.blobs, received.sha256);
    // The same bytes under another version: the file is there already (and they are identical).
    if (existsSync(blob)) rmSync(tmpFile, { force: true });
    else renameSync(tmpFile, blob);
    const { format, partitionTable } = detectFormat(received.head);
    const image: Image = {
      name: input.name,
      version: input.version,
      sha256: received.sha256,
      size: received.size,
      format,
      partitionTable,
      description: input.description ?? null,
      provenance: input.build
        ? { ...input.build, file: input.file ? (input.file.split('/').pop() ?? null) : null }
        : { kind: 'import', by: author, file: input.file ? (input.file.split('/').pop() ?? null) : null },
      createdAt: new Date().toISOString(),
    };
    try {
      await this.store.transact(async (tx) => {
        // Checked again where it is written: two imports of one version race to here.
        if (await tx.getImage(image.name, image.version)) throw new TaktError('conflict', `image ${ref} exists; versions are immutable: import it as a new version`);
        await tx.insertImage(image);
        await tx.change(author, `images/${ref}`, 'create', null, image);
        tx.emit(`images.create.${ref}`, image);
      });
    } catch (err) {
      await this.dropBlobIfUnused(received.sha256);
      throw err;
    }
    return image;
  }

  /**
   * Removes a version from the catalog, and its bytes when no other version has them.
   * @throws TaktError not_found; conflict when a machine's current build record names it (its disk was
   *   written with it: a rebuild or rollout would need the bytes), naming the machines and how to go on.
   */
  async remove(name: string, version: string, author: string): Promise<Image> {
    const image = await this.get(name, version);
    await this.store.transact(async (tx) => {
      if (!(await tx.getImage(name, version))) throw new TaktError('not_found', `image ${imageRef(image)} not found`);
      const users = this.usedBy ? await this.usedBy(tx, name, version) : [];
      if (users.length) {
        const ref = imageRef(image);
        const shown = users.slice(0, LISTED_USERS).join(', ') + (users.length > LISTED_USERS ? ` and ${users.length - LISTED_USERS} more` : '');
        throw new TaktError(
          'conflict',
          `image ${ref} is in use: the build record of ${users.length === 1 ? 'machine' : `${users.length} machines`} ${shown} names it (their disks were written with it); rebuild them with another image or delete them first (takt machines list --built-with image:${ref}), then remove it`,
          { details: { machines: users } },
        );
      }
      await tx.deleteImage(name, version);
      await tx.change(author, `images/${imageRef(image)}`, 'delete', image, null);
      tx.emit(`images.delete.${imageRef(image)}`, image);
    });
    await this.dropBlobIfUnused(image.sha256);
    return image;
  }

  /**
   * The file holding an image's bytes, for serving.
   * @throws TaktError unavailable when the file is not here (a replica without the shared directory).
   */
  blobPath(image: Image): { path: string; size: number } {
    const path = join(this.blobs, image.sha256);
    try {
      return { path, size: statSync(path).size };
    } catch {
      throw new TaktError('unavailable', `the bytes of image ${imageRef(image)} (sha256 ${image.sha256}) are not in ${this.blobs} on this endpoint; replicas need that directory on shared storage`);
    }
  }

  private async dropBlobIfUnused(sha256: string): Promise<void> {
    if ((await this.store.imagesWithSha256(sha256)).length === 0) rmSync(join(this.blobs, sha256), { force: true });
  }
}

/**
 * Writes `body` to `file` while hashing it, through `stream.pipeline` (back-pressure, and a body that ends
 * early — the client went away — is an error, not a short file).
 * @throws TaktError bad_request when the body breaks off; unavailable when the disk is full.
 */
async function receive(body: Readable, file: string): Promise<{ sha256: string; size: number; head: Buffer }> {
  const hash = createHash('sha256');
  const head: Buffer[] = [];
  let headBytes = 0;
  let size = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      hash.update(chunk);
      size += chunk.length;
      if (headBytes < SNIFF_BYTES) {
        head.push(chunk.subarray(0, SNIFF_BYTES - headBytes));
        headBytes += Math.min(chunk.length, SNIFF_BYTES - headBytes);
      }
      done(null, chunk);
    },
  });
  try {
    await pipeline(body, tap, createWriteStream(file, { mode: 0o600 }));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOSPC') throw new TaktError('unavailable', `the endpoint's disk is full after ${size} bytes of the image`);
    throw new TaktError('bad_request', `the upload broke off after ${size} bytes: ${(err as Error).message || 'connection closed'}`);
  }
  return { sha256: hash.digest('hex'), size, head: Buffer.concat(head) };
}
