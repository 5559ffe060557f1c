/**
 * Boot artifacts (kernels, initrds, images, extra files) kept by content hash: each is fetched once from
 * its URL or copied from its path, checked against the sha256 its bootenv declares while it streams,
 * and only then put in place under `<dir>/<sha256>`. A file that does not match is never served: the
 * hash is the artifact's identity, so a changed upstream file cannot change what machines boot.
 *
 * Layout: `<dir>/<sha256>` (the file), `<dir>/.partial-*` (fetches in flight; removed on failure and
 * swept on start).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import type { BootArtifact } from '../model/content.js';
import { TaktError } from '../model/errors.js';

const SHA256 = /^[0-9a-f]{64}$/;

export interface ArtifactCacheOptions {
  /** Directory the artifacts are kept in (created if missing), e.g. `<data>/boot/files`. */
  dir: string;
  /** Largest artifact accepted, in bytes (default 8 GiB: disk images are artifacts too). */
  maxBytes?: number;
  /** How long one fetch may take in all, in ms (default 30 minutes). */
  fetchTimeoutMs?: number;
}

/** Progress of one fetch, for long downloads: bytes so far and the total when the source says it. */
export type FetchProgress = (bytes: number, total: number | undefined) => void;

export interface KeptArtifact {
  sha256: string;
  /** Absolute path of the kept file. */
  path: string;
  /** Bytes. */
  size: number;
}

/** Artifacts by sha256 on disk; see the file comment. */
export class ArtifactCache {
  readonly dir: string;
  private readonly maxBytes: number;
  private readonly fetchTimeoutMs: number;
  /** Fetches in flight by hash: two bootenvs (or two machines) needing one file share one download. */
  private readonly inflight = new Map<string, Promise<KeptArtifact>>();

  constructor(opts: ArtifactCacheOptions) {
    this.dir = opts.dir;
    this.maxBytes = opts.maxBytes ?? 8 * 1024 ** 3;
    this.fetchTimeoutMs = opts.fetchTimeoutMs ?? 30 * 60_000;
  }

  /** Creates the directory and removes fetches a previous process left half done. */
  async open(): Promise<this> {
    await mkdir(this.dir, { recursive: true, mode: 0o755 });
    for (const f of await readdir(this.dir)) if (f.startsWith('.partial-')) await rm(join(this.dir, f), { force: true });
    return this;
  }

  /** The kept file for `sha256`, or undefined when it is not kept (or `sha256` is not a hash). */
  async get(sha256: string): Promise<KeptArtifact | undefined> {
    if (!SHA256.test(sha256)) return undefined;
    const path = join(this.dir, sha256);
    const st = await stat(path).catch(() => undefined);
    return st?.isFile() ? { sha256, path, size: st.size } : undefined;
  }

  /** Every kept artifact, by hash. */
  async list(): Promise<KeptArtifact[]> {
    const out: KeptArtifact[] = [];
    for (const f of (await readdir(this.dir).catch(() => [] as string[])).sort()) {
      const kept = await this.get(f);
      if (kept) out.push(kept);
    }
    return out;
  }

  /**
   * Makes sure `a` is kept: returns at once when its hash is, else fetches it (http, https, file URL)
   * or copies it (path), hashing as it streams, and keeps it only when the hash matches.
   * `what` names it in errors, e.g. `bootenv 'sledge' kernel`.
   * @throws TaktError('invalid') for a hash mismatch, a truncated or oversized transfer, an HTTP error,
   *   a missing file or an unsupported URL — the message says which file, from where, and what to check.
   */
  async ensure(a: BootArtifact, what: string, progress?: FetchProgress): Promise<KeptArtifact & { fetched: boolean }> {
    const kept = await this.get(a.sha256);
    if (kept) return { ...kept, fetched: false };
    let p = this.inflight.get(a.sha256);
    if (!p) {
      p = this.fetch(a, what, progress).finally(() => this.inflight.delete(a.sha256));
      this.inflight.set(a.sha256, p);
    }
    return { ...(await p), fetched: true };
  }

  private async fetch(a: BootArtifact, what: string, progress?: FetchProgress): Promise<KeptArtifact> {
    const from = a.url ?? a.path ?? '(nowhere)';
    const fail = (why: string): TaktError => new TaktError('invalid', `${what} '${a.name}' from ${from}: ${why}`);
    await mkdir(this.dir, { recursive: true, mode: 0o755 });
    const partial = join(this.dir, `.partial-${randomBytes(6).toString('hex')}`);
    const abort = AbortSignal.timeout(this.fetchTimeoutMs);
    try {
      const { body, total } = await this.source(a, fail, abort);
      if (total !== undefined && total > this.maxBytes) throw fail(`${total} bytes is more than the limit of ${this.maxBytes}`);
      const hash = createHash('sha256');
      let bytes = 0;
      const maxBytes = this.maxBytes;
      const count = new Transform({
        transform(chunk: Buffer, _enc, done) {
          bytes += chunk.length;
          if (bytes > maxBytes) return done(fail(`more than the limit of ${maxBytes} bytes`));
          hash.update(chunk);
          progress?.(bytes, total);
          done(null, chunk);
        },
      });
      await pipeline(body, count, createWriteStream(partial, { mode: 0o644 }), { signal: abort });
      if (total !== undefined && bytes !== total) throw fail(`truncated: got ${bytes} of ${total} bytes`);
      const got = hash.digest('hex');
      if (got !== a.sha256) {
        throw fail(`sha256 mismatch: the file has ${got}, the bootenv says ${a.sha256} — the file changed upstream or the hash in the pack is wrong`);
      }
      const path = join(this.dir, a.sha256);
      await rename(partial, path);
      return { sha256: a.sha256, path, size: bytes };
    } catch (e) {
      await rm(partial, { force: true });
      if (e instanceof TaktError) throw e;
      if (abort.aborted) throw fail(`took longer than ${Math.round(this.fetchTimeoutMs / 1000)} s`);
      throw fail(transferProblem(e as Error));
    }
  }

  /** The source's bytes and, when known, its length. */
  private async source(a: BootArtifact, fail: (why: string) => TaktError, signal: AbortSignal): Promise<{ body: Readable; total: number | undefined }> {
    const local = a.path ?? (a.url?.startsWith('file://') ? fileURLToPath(a.url) : undefined);
    if (local !== undefined) {
      const st = await stat(local).catch(() => undefined);
      if (!st) throw fail('no such file');
      if (!st.isFile()) throw fail('not a regular file');
      return { body: createReadStream(local), total: st.size };
    }
    if (!a.url || !/^https?:\/\//.test(a.url)) throw fail('only http, https and file URLs are supported');
    let res: Response;
    try {
      res = await fetch(a.url, { signal, redirect: 'follow' });
    } catch (e) {
      throw fail(transferProblem(e as Error));
    }
    if (!res.ok || !res.body) throw fail(`HTTP ${res.status} ${res.statusText}`.trim());
    const len = res.headers.get('content-length');
    // A compressed response's length is not the file's: fetch decodes it, so only trust an identity length.
    const encoded = (res.headers.get('content-encoding') ?? 'identity') !== 'identity';
    const total = len !== null && /^\d+$/.test(len) && !encoded ? Number(len) : undefined;
    return { body: Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>), total };
  }
}

/** What went wrong with a transfer, in words: undici says "fetch failed" and keeps the reason in `cause`. */
function transferProblem(e: Error): string {
  const why = (e.cause as Error | undefined)?.message ?? e.message;
  if (/other side closed|terminated|ECONNRESET|socket hang up/i.test(why)) return `truncated: the server closed the connection before the whole file arrived (${why})`;
  return `cannot fetch: ${why}`;
}
