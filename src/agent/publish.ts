/**
 * Publishing what a job built into the image catalog (`takt-image publish NAME@VERSION FILE`, helpers.ts):
 * like a write, the script only leaves a request (image.ts); when it has exited successfully the agent
 * hashes the file and uploads it with the machine's own token through the one HTTP client, naming the
 * running job, from which the endpoint records the image's provenance (engine/images.ts
 * buildProvenance: machine, job, task, pack, recipe). A version that exists is refused before the file
 * is hashed (client/images.ts); the endpoint refuses it too, and a digest or length that differs, and any
 * job but the machine's running one.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { ApiClient } from '../client/http.js';
import { refuseExistingImage } from '../client/images.js';
import type { Image } from '../model/image.js';
import { inspectTarget, type ImageRequest } from './image.js';
import { errorMessage } from './log.js';

export interface PublishImageOptions {
  client: ApiClient;
  /** The running job that built the file (its provenance). */
  jobId: string;
  request: ImageRequest;
  /** The machine's root (`/`, or a sandbox's): the file must be inside it. */
  root: string;
  progress: (line: string) => void;
  signal?: AbortSignal;
}

export type PublishImageResult = { ok: true; image: Image } | { ok: false; reason: string };

/** SHA-256 (hex) of a file, streamed. */
function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path, { highWaterMark: 1 << 20, ...(signal ? { signal } : {}) })
      .on('data', (c) => h.update(c))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

/**
 * Uploads the requested file as image NAME@VERSION. Never throws: a failure is a result whose reason is
 * `image NAME@VERSION from FILE not published: <what>` (the job then fails).
 */
export async function publishImage(o: PublishImageOptions): Promise<PublishImageResult> {
  const ref = `${o.request.name}@${o.request.version}`;
  const fail = (why: string): PublishImageResult => ({ ok: false, reason: `image ${ref} from ${o.request.target} not published: ${why}` });
  let real: string;
  let size: number;
  try {
    const t = await inspectTarget(o.request.target, o.root);
    if (t.info.kind !== 'file') return fail(`${o.request.target} is not a regular file`);
    if (t.info.size === 0) return fail(`${o.request.target} is empty`);
    real = t.real;
    size = t.info.size;
  } catch (err) {
    return fail(errorMessage(err));
  }
  try {
    await refuseExistingImage(o.client, o.request.name, o.request.version);
    o.progress(`takt-image: hashing ${o.request.target} (${size} bytes)\n`);
    const sha256 = await sha256File(real, o.signal);
    o.progress(`takt-image: publishing ${ref} (sha256 ${sha256})\n`);
    const file = o.request.target.split('/').pop() ?? '';
    const image = await o.client.upload<Image>(
      'PUT',
      `/images/${encodeURIComponent(o.request.name)}/${encodeURIComponent(o.request.version)}`,
      () => createReadStream(real, { highWaterMark: 1 << 20 }),
      size,
      // Proportional to the size, at no less than 10 MB/s, and never under two minutes.
      { query: { sha256, job: o.jobId, file }, timeoutMs: Math.max(120_000, Math.ceil(size / 10_000)), ...(o.signal ? { signal: o.signal } : {}) },
    );
    o.progress(`takt-image: published ${ref}: ${image.format}${image.partitionTable ? ` (${image.partitionTable})` : ''}, ${image.size} bytes, sha256 ${image.sha256}\n`);
    return { ok: true, image };
  } catch (err) {
    return fail(errorMessage(err));
  }
}
