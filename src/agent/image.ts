/**
 * Writing an image to a disk for a task (`takt-image write NAME@VERSION DEVICE`, helpers.ts). The script
 * only writes a request file into its control dir (TAKT_CONTROL_DIR/image); when it has exited
 * successfully the agent — never the script, which has no token — fetches the image's catalog record and
 * bytes with the machine's own token through the one HTTP client, resumes a broken download with
 * `Range` (bounded retries), hashes the bytes as it writes them, fsyncs the target, and reports what it
 * wrote (CompleteRequest.image) only when the digest equals the catalog's. Every failure is a reason that
 * names it (IMAGE_FAILURES) and fails the job. See docs/provisioning.md, "Deploying an image".
 *
 * Request file (written by takt-image, read back here):
 *   line 1  NAME@VERSION
 *   line 2  the target: an absolute path to a block device, or to an existing regular file (a test disk)
 */
import { createHash } from 'node:crypto';
import { open, readFile, realpath, stat } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { ApiClient, backoffMs, NetworkError, sleep } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import type { Image } from '../model/image.js';
import type { ImageWritten } from '../model/protocol.js';
import { JOIN_BLOCK_SIZE } from '../model/joinblock.js';
import { deliverJoinBlock } from './deployed.js';
import { sizeFileOf } from './blockdev.js';
import { errorMessage } from './log.js';

/** The control file's name (in TAKT_CONTROL_DIR, beside takt-power's). */
export const IMAGE_CONTROL_FILE = 'image';
/** A request is a reference and a path; anything longer was not written by takt-image. */
export const MAX_IMAGE_REQUEST_BYTES = 4096;

/**
 * The words a failed write's reason starts with (after `image NAME@VERSION to TARGET not written: `),
 * one per way it can fail, so an operator (and a test) can tell them apart.
 */
export const IMAGE_FAILURES = {
  unknown: 'image unknown',
  target: 'bad target',
  tooSmall: 'disk too small',
  truncated: 'truncated download',
  digest: 'digest mismatch',
  write: 'write failed',
  join: 'join block not written',
  notRun: 'not carried out',
} as const;

/** What a script asked with takt-image. */
export interface ImageRequest {
  name: string;
  version: string;
  /** As the script gave it (absolute): the disk to write, or (publish) the file to publish. */
  target: string;
  /** `publish` (takt-image publish: the file goes into the catalog, publish.ts); absent: write. */
  action?: 'publish';
}

export interface ReadImageRequest {
  request?: ImageRequest;
  /** Why the file is not a request (the job then fails, and nothing is written). */
  problem: string | null;
}

/**
 * `NAME@VERSION` split, checked by shape only: the agent loads no schema library (model/image.ts
 * parseImageRef does, through the content model), and the catalog answers `image unknown` for anything
 * that is not one of its versions. NAME as content names are (lower case, 63 at most); VERSION as semver.org
 * 2.0.0 spells a version, without build metadata (the catalog keeps versions as `semver.valid` gives them).
 * @throws Error naming what is wrong.
 */
export function splitImageRef(ref: string): { name: string; version: string } {
  const at = ref.lastIndexOf('@');
  if (at <= 0) throw new Error(`'${ref}' is not NAME@VERSION (e.g. debian-min@1.0.0)`);
  const name = ref.slice(0, at);
  const version = ref.slice(at + 1);
  if (!/^[a-z0-9][a-z0-9._-]{0,62}$/.test(name)) throw new Error(`image name '${name}' is not valid: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, 63 at most`);
  if (!/^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$/.test(version)) {
    throw new Error(`image version '${version}' is not a semantic version such as 1.0.0`);
  }
  return { name, version };
}

/** The request in the file's text. Pure. */
export function parseImageRequest(text: string): ReadImageRequest {
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  const bad = (why: string): ReadImageRequest => ({ problem: `takt-image's request ${why} (write requests with takt-image write NAME@VERSION DEVICE or takt-image publish NAME@VERSION FILE); nothing done` });
  // A publish request is the word `publish` and then the two lines of a write request.
  const publish = lines[0] === 'publish';
  if (publish) lines.shift();
  if (lines.length !== 2) return bad(`has ${lines.length + (publish ? 1 : 0)} lines, not ${publish ? 3 : 2}`);
  let ref: { name: string; version: string };
  try {
    ref = splitImageRef(lines[0]!);
  } catch (err) {
    return bad(`names no image: ${errorMessage(err)}`);
  }
  const target = lines[1]!;
  if (!target.startsWith('/') || target.includes('\0')) return bad(`target ${JSON.stringify(target.slice(0, 80))} is not an absolute path`);
  return { request: { ...ref, target, ...(publish ? { action: 'publish' as const } : {}) }, problem: null };
}

/** Reads the request in control dir `dir` (none: nothing asked). A file that is not small and regular is a problem. */
export async function readImageRequest(dir: string): Promise<ReadImageRequest> {
  const file = join(dir, IMAGE_CONTROL_FILE);
  const info = await stat(file).catch(() => null);
  if (!info) return { problem: null };
  if (!info.isFile() || info.size > MAX_IMAGE_REQUEST_BYTES) return { problem: "takt-image's request is not a small regular file; nothing written" };
  return parseImageRequest(await readFile(file, 'utf8'));
}

/** A target as found on the machine: a block device (its size in bytes) or a regular file (it grows as written). */
export type TargetInfo = { kind: 'block'; size: number } | { kind: 'file'; size: number } | { kind: 'other'; what: string };

/**
 * Whether an image of `imageSize` bytes fits on `target`: null when it does, else why not (starting with
 * IMAGE_FAILURES.tooSmall or .target). A regular file always fits (it grows: a test's "disk"); a block
 * device must hold every byte and, after them, takt's join block (JOIN_BLOCK_SIZE bytes at its end:
 * model/joinblock.ts), through which the deployed OS joins; anything else (a directory, a character
 * device) is refused. Pure.
 */
export function checkTargetSize(target: TargetInfo, imageSize: number, path: string): string | null {
  if (target.kind === 'other') return `${IMAGE_FAILURES.target}: ${path} is ${target.what}, not a block device or a regular file`;
  if (target.kind === 'file') return null;
  if (target.size >= imageSize + JOIN_BLOCK_SIZE) return null;
  return `${IMAGE_FAILURES.tooSmall}: ${path} holds ${target.size} bytes (${mib(target.size)}), the image is ${imageSize} bytes (${mib(imageSize)}) and takt's ${JOIN_BLOCK_SIZE}-byte join block goes after it`;
}

export { devNumbers } from './blockdev.js';

/**
 * What `path` is and how large, without ioctls: a block device's size is `/sys/dev/block/MAJ:MIN/size`
 * (512-byte sectors, whatever the device's logical block size: Documentation/ABI/stable/sysfs-block).
 * `root`: when not `/`, the machine's sandbox: a target outside it (after following links) is refused.
 * @throws Error whose message starts with IMAGE_FAILURES.target (missing, outside the root, unreadable size).
 */
export async function inspectTarget(path: string, root: string, sys = '/sys'): Promise<{ real: string; info: TargetInfo }> {
  let real: string;
  try {
    real = await realpath(path);
  } catch {
    throw new Error(`${IMAGE_FAILURES.target}: ${path} does not exist (a disk must be there before it is written: check the device name, e.g. lsblk)`);
  }
  if (root !== '/') {
    const r = await realpath(root);
    if (real !== r && !real.startsWith(r + sep)) throw new Error(`${IMAGE_FAILURES.target}: ${path} is outside this machine's root ${root}`);
  }
  const st = await stat(real);
  if (st.isFile()) return { real, info: { kind: 'file', size: st.size } };
  if (!st.isBlockDevice()) return { real, info: { kind: 'other', what: st.isDirectory() ? 'a directory' : st.isCharacterDevice() ? 'a character device' : 'not a disk' } };
  const sizeFile = sizeFileOf(st.rdev, sys);
  let sectors: number;
  try {
    sectors = Number((await readFile(sizeFile, 'utf8')).trim());
  } catch (err) {
    throw new Error(`${IMAGE_FAILURES.target}: cannot read the size of ${path} from ${sizeFile}: ${errorMessage(err)}`);
  }
  if (!Number.isSafeInteger(sectors)) throw new Error(`${IMAGE_FAILURES.target}: ${sizeFile} does not hold a sector count`);
  return { real, info: { kind: 'block', size: sectors * 512 } };
}

export interface WriteImageOptions {
  client: ApiClient;
  /** The deploying machine (its deploy token goes into the disk's join block: agent/deployed.ts). */
  machineId: string;
  request: ImageRequest;
  /** The machine's root (TAKT_ROOT): `/`, or a local machine's sandbox that the target must be inside. */
  root: string;
  /** A progress or retry line for the job's log (ends with a newline). */
  progress: (line: string) => void;
  signal?: AbortSignal;
  /** Download attempts in a row that bring no byte before giving up (default 6). */
  maxAttempts?: number;
  /** Connection cuts in all before giving up, however much each brought (default 50). */
  maxCuts?: number;
  /** No byte for this long is a cut (default 30 s). */
  idleMs?: number;
  /** Between progress lines (default 5 s); the first and last are always logged. */
  progressEveryMs?: number;
  /** Where /sys is (tests). */
  sys?: string;
}

export type WriteImageResult = { ok: true; written: ImageWritten } | { ok: false; reason: string };

/**
 * Writes the requested image to its target and verifies it. Never throws: every failure is a result whose
 * reason is `image NAME@VERSION to TARGET not written: <IMAGE_FAILURES word>: <what>`; a digest mismatch
 * or a write failure says the target now holds unverified bytes.
 */
export async function writeImage(o: WriteImageOptions): Promise<WriteImageResult> {
  const ref = `${o.request.name}@${o.request.version}`;
  const fail = (why: string): WriteImageResult => ({ ok: false, reason: `image ${ref} to ${o.request.target} not written: ${why}` });
  let image: Image;
  try {
    image = await withRetries(o, `the catalog record of ${ref}`, () => o.client.request<Image>('GET', `/images/${encodeURIComponent(o.request.name)}/${encodeURIComponent(o.request.version)}`, { signal: o.signal }));
  } catch (err) {
    if (err instanceof TaktError && err.code === 'not_found') return fail(`${IMAGE_FAILURES.unknown}: ${err.message}`);
    return fail(`${IMAGE_FAILURES.unknown}: cannot read its catalog record: ${errorMessage(err)}`);
  }
  let real: string;
  let kind: TargetInfo['kind'];
  try {
    const t = await inspectTarget(o.request.target, o.root, o.sys);
    real = t.real;
    kind = t.info.kind;
    const problem = checkTargetSize(t.info, image.size, o.request.target);
    if (problem) return fail(problem);
  } catch (err) {
    return fail(errorMessage(err));
  }
  o.progress(`takt-image: writing ${ref} (${image.format}, ${image.size} bytes, sha256 ${image.sha256}) to ${o.request.target}\n`);
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    // r+: never created (a mistyped /dev/sdX would become a file in /dev) and never truncated (a disk).
    fh = await open(real, 'r+');
  } catch (err) {
    return fail(`${IMAGE_FAILURES.target}: cannot open ${o.request.target} for writing: ${errorMessage(err)}`);
  }
  try {
    const d = await download(o, image, fh, ref);
    if ('failure' in d) return fail(d.failure);
    const got = d.digest;
    try {
      await fh.sync();
    } catch (err) {
      return fail(`${IMAGE_FAILURES.write}: fsync of ${o.request.target} failed: ${errorMessage(err)}; it holds unverified bytes`);
    }
    if (got !== image.sha256) return fail(`${IMAGE_FAILURES.digest}: the ${image.size} bytes served have sha256 ${got}, the catalog says ${image.sha256}; ${o.request.target} now holds bytes that are not the image: do not boot it (check the endpoint's copy, <data>/images/sha256/${image.sha256})`);
    o.progress(`takt-image: ${ref} written to ${o.request.target} and verified (sha256 ${got})\n`);
    await fh.close().catch(() => undefined);
    // The deployed OS joins as this machine with a single-use token left at the disk's end (agent/deployed.ts).
    // A regular file is a test's disk, never booted: it gets none.
    if (kind === 'block') {
      try {
        const j = await deliverJoinBlock(o.client, o.machineId, o.client.endpoint, real, image.size);
        o.progress(`takt-image: join block written at the end of ${o.request.target} (deploy token ${j.joinToken}, single use, until ${j.expiresAt})\n`);
      } catch (err) {
        return fail(`${IMAGE_FAILURES.join}: ${errorMessage(err)}; the image is on the disk, but its OS cannot join as this machine`);
      }
    } else o.progress(`takt-image: ${o.request.target} is a regular file (a test disk): no join block written\n`);
    return { ok: true, written: { name: image.name, version: image.version, sha256: image.sha256, size: image.size, target: o.request.target } };
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/**
 * Streams the image's bytes into `fh` from byte 0, resuming after a cut with `Range: bytes=N-`, hashing
 * them in order. Returns the hex digest of what was written, or a failure reason (starting with an
 * IMAGE_FAILURES word).
 */
async function download(o: WriteImageOptions, image: Image, fh: Awaited<ReturnType<typeof open>>, ref: string): Promise<{ digest: string } | { failure: string }> {
  const path = `/images/${encodeURIComponent(image.name)}/${encodeURIComponent(image.version)}/blob`;
  const maxAttempts = o.maxAttempts ?? 6;
  const maxCuts = o.maxCuts ?? 50;
  const everyMs = o.progressEveryMs ?? 5000;
  let hash = createHash('sha256');
  let offset = 0;
  let fruitless = 0;
  let cuts = 0;
  let lastError = '';
  const started = Date.now();
  let lastShown = started;
  const show = (final = false) => {
    const now = Date.now();
    if (!final && now - lastShown < everyMs) return;
    lastShown = now;
    const secs = Math.max(0.001, (now - started) / 1000);
    o.progress(`takt-image: ${mib(offset)} of ${mib(image.size)} (${Math.floor((offset / image.size) * 100)}%), ${mib(offset / secs)}/s\n`);
  };
  while (offset < image.size) {
    if (o.signal?.aborted) return { failure: `${IMAGE_FAILURES.notRun}: the agent stopped the job after ${offset} of ${image.size} bytes` };
    const before = offset;
    try {
      const res = await o.client.download(path, { offset, idleMs: o.idleMs ?? 30_000, ...(o.signal ? { signal: o.signal } : {}) });
      if (offset > 0 && res.status === 200) {
        // The endpoint sent the whole image instead of the range: start over, hash and all.
        o.progress(`takt-image: the endpoint ignored the range; starting again from byte 0\n`);
        hash = createHash('sha256');
        offset = 0;
      } else if (offset > 0) {
        const start = /^bytes (\d+)-/.exec(String(res.headers['content-range'] ?? ''))?.[1];
        if (Number(start) !== offset) {
          res.body.destroy();
          return { failure: `${IMAGE_FAILURES.truncated}: asked for the bytes from ${offset}, the endpoint answered ${String(res.headers['content-range'] ?? 'without a Content-Range')}` };
        }
      }
      const total = res.status === 206 ? Number(/\/(\d+)$/.exec(String(res.headers['content-range'] ?? ''))?.[1]) : Number(res.headers['content-length']);
      if (res.headers['content-length'] !== undefined && total !== image.size) {
        res.body.destroy();
        return { failure: `${IMAGE_FAILURES.digest}: the endpoint serves ${total} bytes for ${ref}, its catalog says ${image.size} (its copy was changed or truncated: check <data>/images/sha256/${image.sha256})` };
      }
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        if (offset + chunk.length > image.size) return { failure: `${IMAGE_FAILURES.digest}: the endpoint sent more than the ${image.size} bytes of ${ref}` };
        hash.update(chunk);
        try {
          await writeAll(fh, chunk, offset);
        } catch (err) {
          return { failure: `${IMAGE_FAILURES.write}: writing ${o.request.target} at byte ${offset}: ${errorMessage(err)}; it holds part of the image` };
        }
        offset += chunk.length;
        show();
      }
      if (offset < image.size) throw new NetworkError(`the connection closed after ${offset} of ${image.size} bytes`);
    } catch (err) {
      if (o.signal?.aborted) return { failure: `${IMAGE_FAILURES.notRun}: the agent stopped the job after ${offset} of ${image.size} bytes` };
      if (err instanceof TaktError) {
        // An answer, not a cut: the image went from the catalog meanwhile (404), or its bytes are not here (503).
        return { failure: `${err.code === 'not_found' ? IMAGE_FAILURES.unknown : IMAGE_FAILURES.truncated}: after ${offset} of ${image.size} bytes the endpoint answered: ${err.message}` };
      }
      lastError = errorMessage(err);
      cuts++;
      fruitless = offset > before ? 0 : fruitless + 1;
      if (fruitless >= maxAttempts || cuts >= maxCuts) {
        return { failure: `${IMAGE_FAILURES.truncated}: ${offset} of ${image.size} bytes arrived; gave up after ${cuts} broken connection${cuts === 1 ? '' : 's'} (${fruitless} in a row without a byte); last: ${lastError}` };
      }
      o.progress(`takt-image: the download broke off after ${offset} of ${image.size} bytes (${lastError}); resuming from byte ${offset} with Range\n`);
      await sleep(backoffMs(fruitless, 200, 5000), o.signal);
    }
  }
  show(true);
  return { digest: hash.digest('hex') };
}

/** Positional writes until the whole chunk is on its way (a short write is not an error). */
async function writeAll(fh: Awaited<ReturnType<typeof open>>, chunk: Buffer, position: number): Promise<void> {
  let done = 0;
  for (let i = 0; i < 1000 && done < chunk.length; i++) {
    const { bytesWritten } = await fh.write(chunk, done, chunk.length - done, position + done);
    done += bytesWritten;
  }
  if (done < chunk.length) throw new Error(`short writes: ${done} of ${chunk.length} bytes`);
}

/** `fn` again after a network failure (not after an answer), up to `maxAttempts` times in all. */
async function withRetries<T>(o: WriteImageOptions, what: string, fn: () => Promise<T>): Promise<T> {
  const max = o.maxAttempts ?? 6;
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof NetworkError) || attempt + 1 >= max || o.signal?.aborted) throw err;
      o.progress(`takt-image: cannot read ${what} (${errorMessage(err)}); trying again\n`);
      await sleep(backoffMs(attempt, 200, 5000), o.signal);
    }
  }
}

/** Bytes as MiB with one decimal. */
function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}
