/**
 * The image catalog against a real endpoint (issue #14, part 1): imports through the CLI and the raw API,
 * the bytes served with Range, machine tokens read-only, and every refused import — wrong digest, a
 * truncated upload, an existing version, an empty file — leaving the catalog and the directory as they were.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Image } from '../src/model/image.js';
import { Endpoint, type Answer } from './helpers/endpoint.js';

let ep: Endpoint;
let dir: string;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A 3 MiB raw disk with an MBR signature: random bytes, `55 AA` at 510. */
const disk = randomBytes(3 * 2 ** 20);
disk[510] = 0x55;
disk[511] = 0xaa;
let diskFile: string;

const blobDir = () => join(ep.data, 'images', 'sha256');
const tmpDir = () => join(ep.data, 'images', 'tmp');
const leftovers = () => (existsSync(tmpDir()) ? readdirSync(tmpDir()) : []);
const images = async () => (await ep.api.get<{ items: Image[] }>('/images')).items.map((i) => `${i.name}@${i.version}`);

/** A raw PUT of `body` (fetch cannot stream a request body of a given length and then break it off). */
function put(path: string, body: Buffer, opts: { token?: string; length?: number; breakAfter?: number; contentType?: string } = {}): Promise<Answer> {
  const u = new URL(`${ep.url}/api/v1${path}`);
  return new Promise((resolve, reject) => {
    const req = request(
      { method: 'PUT', hostname: u.hostname, port: u.port, path: u.pathname + u.search, headers: { authorization: `Bearer ${opts.token ?? ep.token}`, 'content-type': opts.contentType ?? 'application/octet-stream', 'content-length': opts.length ?? body.length } },
      (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : null }));
      },
    );
    req.on('error', (err) => (opts.breakAfter !== undefined ? resolve({ status: 0, body: null }) : reject(err)));
    if (opts.breakAfter !== undefined) {
      req.write(body.subarray(0, opts.breakAfter), () => req.destroy());
    } else req.end(body);
  });
}

/** Waits (bounded) until the endpoint has dropped the temporary file of a broken upload. */
async function noLeftovers(): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (leftovers().length > 0) {
    if (Date.now() > deadline) throw new Error(`temporary files left in ${tmpDir()}: ${leftovers().join(', ')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  ep = await Endpoint.start();
  dir = mkdtempSync(join(tmpdir(), 'takt-images-'));
  diskFile = join(dir, 'disk.img');
  writeFileSync(diskFile, disk);
});
afterAll(async () => {
  await ep?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('image catalog', () => {
  it('imports a raw disk through the CLI: format, partition table, size, digest and provenance recorded', async () => {
    const r = await ep.cli(['images', 'import', 'disk@1.0.0', diskFile, '--description', 'test disk']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`imported disk@1.0.0: raw with a MBR partition table, 3.0 MiB, sha256 ${sha(disk)}`);
    expect(r.stderr).toMatch(/hashing disk\.img: .*\(100%\)/);
    expect(r.stderr).toMatch(/sending disk\.img: .*\(100%\)/);
    const got = JSON.parse((await ep.cli(['images', 'get', 'disk@1.0.0', '-o', 'json'])).stdout) as Image;
    expect(got).toMatchObject({ name: 'disk', version: '1.0.0', sha256: sha(disk), size: disk.length, format: 'raw', partitionTable: 'mbr', description: 'test disk', provenance: { kind: 'import', by: 'admin', file: 'disk.img' } });
    expect(readdirSync(blobDir())).toEqual([sha(disk)]);
    const ls = await ep.cli(['images', 'ls']);
    expect(ls.stdout).toMatch(/^IMAGE +FORMAT +SIZE +SHA256 +DESCRIPTION\n/);
    expect(ls.stdout).toMatch(/\ndisk@1\.0\.0 +raw \(mbr\) +3\.0 MiB +[0-9a-f]{12}… +test disk\n/);
  });

  it('serves the bytes whole and by Range; a range past the end is 416 with the length', async () => {
    const whole = await fetch(`${ep.url}/api/v1/images/disk/1.0.0/blob`, { headers: { authorization: `Bearer ${ep.token}` } });
    expect(whole.status).toBe(200);
    expect(whole.headers.get('x-image-sha256')).toBe(sha(disk));
    expect(sha(Buffer.from(await whole.arrayBuffer()))).toBe(sha(disk));
    const part = await fetch(`${ep.url}/api/v1/images/disk/1.0.0/blob`, { headers: { authorization: `Bearer ${ep.token}`, range: 'bytes=1000-1999' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 1000-1999/${disk.length}`);
    expect(Buffer.from(await part.arrayBuffer()).equals(disk.subarray(1000, 2000))).toBe(true);
    const past = await fetch(`${ep.url}/api/v1/images/disk/1.0.0/blob`, { headers: { authorization: `Bearer ${ep.token}`, range: `bytes=${disk.length + 10}-` } });
    expect(past.status).toBe(416);
    expect(past.headers.get('content-range')).toBe(`bytes */${disk.length}`);
    expect(((await past.json()) as { error: { code: string } }).error.code).toBe('range_not_satisfiable');
  });

  it.each(['bytes=abc', 'bytes=', 'items=0-10', 'bytes=10-5x', 'bytes=--1'])('a Range that is not valid syntax (%s) is ignored: the whole image, 200 (RFC 9110 §14.2)', async (range) => {
    const r = await fetch(`${ep.url}/api/v1/images/disk/1.0.0/blob`, { headers: { authorization: `Bearer ${ep.token}`, range } });
    expect(r.status).toBe(200);
    expect(sha(Buffer.from(await r.arrayBuffer()))).toBe(sha(disk));
  });

  it('a valid suffix range (bytes=-100) is still served as a range', async () => {
    const r = await fetch(`${ep.url}/api/v1/images/disk/1.0.0/blob`, { headers: { authorization: `Bearer ${ep.token}`, range: 'bytes=-100' } });
    expect(r.status).toBe(206);
    expect(Buffer.from(await r.arrayBuffer()).equals(disk.subarray(disk.length - 100))).toBe(true);
  });

  it('a machine token reads images and their bytes, and can neither import nor remove', async () => {
    const made = await ep.call('POST', '/machines', { name: 'img-reader' });
    const token = made.body.items[0].token as string;
    const blob = await fetch(`${ep.url}/api/v1/images/disk/1.0.0/blob`, { headers: { authorization: `Bearer ${token}`, range: 'bytes=0-511' } });
    expect(blob.status).toBe(206);
    expect((await ep.call('GET', '/images', undefined, token)).status).toBe(200);
    const imp = await put('/images/evil/1.0.0', Buffer.from('x'), { token });
    expect(imp.status).toBe(403);
    expect((await ep.call('DELETE', '/images/disk/1.0.0', undefined, token)).status).toBe(403);
    expect(await images()).toEqual(['disk@1.0.0']);
  });

  it('bytes that do not match the given sha256 are refused naming both digests; nothing is kept', async () => {
    const other = randomBytes(64 * 1024);
    const r = await put(`/images/bad/1.0.0?sha256=${'0'.repeat(64)}`, other);
    expect(r.status).toBe(422);
    expect(r.body.error.message).toBe(`image bad@1.0.0 not imported: its bytes have sha256 ${sha(other)}, not ${'0'.repeat(64)} as given; nothing was kept`);
    expect(r.body.error.path).toBe('/sha256');
    expect(await images()).toEqual(['disk@1.0.0']);
    expect(readdirSync(blobDir())).toEqual([sha(disk)]);
    expect(leftovers()).toEqual([]);
  });

  it('a truncated upload (the connection breaks off) leaves the catalog and the directory as they were', async () => {
    const big = randomBytes(2 ** 20);
    await put('/images/cut/1.0.0', big, { breakAfter: 100 * 1024 });
    await noLeftovers();
    expect(await images()).toEqual(['disk@1.0.0']);
    expect(readdirSync(blobDir())).toEqual([sha(disk)]);
    // The endpoint is fine afterwards: the same version imports whole.
    const whole = await put('/images/cut/1.0.0', big);
    expect(whole.status, JSON.stringify(whole.body)).toBe(201);
    expect(whole.body.sha256).toBe(sha(big));
  });

  it('an existing version is refused before its bytes are read; versions are immutable', async () => {
    const r = await ep.cli(['images', 'import', 'disk@1.0.0', diskFile, '--sha256', sha(disk)]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('image disk@1.0.0 exists; versions are immutable: import it as a new version');
    expect(r.stderr).not.toMatch(/sending disk\.img: .*\(100%\)/);
  });

  it('an existing version is refused before the file is hashed, and a malformed --sha256 before anything is read', async () => {
    const r = await ep.cli(['images', 'import', 'disk@1.0.0', diskFile]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('image disk@1.0.0 exists; versions are immutable: import it as a new version');
    expect(r.stderr).not.toContain('hashing');
    expect(r.stderr).not.toContain('sending');
    // The digest's shape is the command line's: refused (bad usage) before the file — not there — is looked at.
    const bad = await ep.cli(['images', 'import', 'fresh@1.0.0', join(dir, 'nope.img'), '--sha256', 'nothex']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--sha256 must be 64 lower-case hex digits (got 'nothex')");
    expect(bad.stderr).not.toContain('ENOENT');
  });

  it('refuses an empty file, a JSON body, a bad reference and a missing file, each saying what is wrong', async () => {
    const empty = join(dir, 'empty.img');
    writeFileSync(empty, '');
    const e = await ep.cli(['images', 'import', 'empty@1.0.0', empty]);
    expect(e.code).toBe(1);
    expect(e.stderr).toContain('image empty@1.0.0 not imported: it is empty (0 bytes); nothing was kept');
    const json = await put('/images/j/1.0.0', Buffer.from('{}'), { contentType: 'application/json' });
    expect(json.status).toBe(400);
    expect(json.body.error.message).toMatch(/Content-Type: application\/octet-stream/);
    const ref = await ep.cli(['images', 'import', 'disk', diskFile]);
    expect(ref.stderr).toContain("'disk' is not an image reference: give NAME@VERSION");
    const missing = await ep.cli(['images', 'import', 'x@1.0.0', join(dir, 'nope.img')]);
    expect(missing.stderr).toContain('nope.img: ENOENT');
    const unknown = await ep.cli(['images', 'get', 'disk@9.9.9']);
    expect(unknown.code).toBe(4); // not found
    expect(unknown.stderr).toContain('image disk@9.9.9 not found; disk has 1.0.0 (takt images list)');
    expect(await images()).toEqual(['cut@1.0.0', 'disk@1.0.0']);
  });

  it('versions that share bytes share the file; it goes with the last of them; history records both and a revert is refused', async () => {
    expect((await ep.cli(['images', 'import', 'disk@1.1.0', diskFile, '--sha256', sha(disk)])).code).toBe(0);
    expect(readdirSync(blobDir()).filter((f) => f === sha(disk))).toHaveLength(1);
    expect((await ep.cli(['images', 'rm', 'disk@1.0.0'])).code).toBe(0);
    expect(existsSync(join(blobDir(), sha(disk)))).toBe(true);
    const rm = await ep.cli(['images', 'rm', 'disk@1.1.0']);
    expect(rm.stdout).toContain('removed disk@1.1.0');
    expect(existsSync(join(blobDir(), sha(disk)))).toBe(false);
    const changes = (await ep.api.get<{ items: Array<{ seq: number; object: string; action: string; author: string }> }>('/changes', { limit: 100 })).items.filter((c) => c.object.startsWith('images/disk'));
    expect(changes.map((c) => `${c.action} ${c.object} by ${c.author}`).sort()).toEqual([
      'create images/disk@1.0.0 by admin',
      'create images/disk@1.1.0 by admin',
      'delete images/disk@1.0.0 by admin',
      'delete images/disk@1.1.0 by admin',
    ]);
    const revert = await ep.cli(['history', 'revert', String(changes.find((c) => c.action === 'delete')!.seq)]);
    expect(revert.code).toBe(1);
    expect(revert.stderr).toMatch(/removed image disk@1\.\d\.0; image versions are immutable: import it again \(takt images import\)/);
  });
});
