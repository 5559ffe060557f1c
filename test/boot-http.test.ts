/**
 * Boot artifacts kept by sha256 and served over plain HTTP with Range (issue #13): a file that does not
 * match its hash, a truncated download or a missing source is refused with what and where, and nothing
 * half-written is ever served.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, writeFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TaktError } from '../src/model/errors.js';
import { ArtifactCache } from '../src/provision/artifacts.js';
import { buildBootHttp, parseBootQuery } from '../src/provision/boot-http.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

let dir: string;
let src: string;
const kernel = randomBytes(200_000);
const initrd = randomBytes(70_000);

/** An upstream mirror on loopback: /kernel whole, /short claims more bytes than it sends, /missing 404. */
let mirror: Server;
let mirrorUrl: string;
let mirrorHits = 0;
/** A port nothing listens on (bound, then closed). */
let closedPort = 0;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'takt-boot-'));
  src = join(dir, 'src');
  mkdirSync(src);
  writeFileSync(join(src, 'vmlinuz'), kernel);
  mirror = createServer((req, res) => {
    mirrorHits++;
    if (req.url === '/initrd') {
      res.writeHead(200, { 'content-length': initrd.length }).end(initrd);
    } else if (req.url === '/short') {
      res.writeHead(200, { 'content-length': 1000 });
      res.write(initrd.subarray(0, 400));
      res.destroy();
    } else res.writeHead(404).end('no');
  });
  await new Promise<void>((r) => mirror.listen(0, '127.0.0.1', r));
  mirrorUrl = `http://127.0.0.1:${(mirror.address() as AddressInfo).port}`;
  const gone = createServer();
  await new Promise<void>((r) => gone.listen(0, '127.0.0.1', r));
  closedPort = (gone.address() as AddressInfo).port;
  await new Promise((r) => gone.close(r));
});

afterAll(async () => {
  await new Promise((r) => mirror?.close(r));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function refusal(p: Promise<unknown>): Promise<string> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(TaktError);
  return (e as TaktError).message;
}

describe('ArtifactCache', () => {
  it('keeps a file by its hash once, from a path or a URL; a second ensure does not fetch again', async () => {
    const cache = await new ArtifactCache({ dir: join(dir, 'c1') }).open();
    const k = await cache.ensure({ name: 'vmlinuz', path: join(src, 'vmlinuz'), sha256: sha(kernel) }, "bootenv 'sledge' kernel");
    expect(k).toMatchObject({ fetched: true, size: kernel.length, path: join(dir, 'c1', sha(kernel)) });
    expect((await cache.ensure({ name: 'vmlinuz', path: '/nowhere', sha256: sha(kernel) }, 'kernel')).fetched).toBe(false);

    const before = mirrorHits;
    const art = { name: 'initrd', url: `${mirrorUrl}/initrd`, sha256: sha(initrd) };
    // Two machines booting at once need one download.
    const [a, b] = await Promise.all([cache.ensure(art, 'initrd'), cache.ensure(art, 'initrd')]);
    expect(a.path).toBe(b.path);
    expect(mirrorHits - before).toBe(1);
    expect((await cache.list()).map((x) => x.sha256).sort()).toEqual([sha(kernel), sha(initrd)].sort());
  });

  it.each([
    ['a hash that does not match', () => ({ name: 'vmlinuz', path: join(src, 'vmlinuz'), sha256: 'f'.repeat(64) }), /sledge' kernel 'vmlinuz' from .*vmlinuz: sha256 mismatch: the file has [0-9a-f]{64}, the bootenv says f{64}/],
    ['a truncated download', () => ({ name: 'i', url: `${mirrorUrl}/short`, sha256: sha(initrd) }), /from http:\/\/127\.0\.0\.1:\d+\/short: truncated: (got 400 of 1000 bytes|the server closed the connection before the whole file arrived)/],
    ['an HTTP error', () => ({ name: 'i', url: `${mirrorUrl}/missing`, sha256: sha(initrd) }), /\/missing: HTTP 404 Not Found$/],
    ['a missing file', () => ({ name: 'k', path: join(src, 'nope'), sha256: sha(kernel) }), /nope: no such file$/],
    ['a directory', () => ({ name: 'k', path: src, sha256: sha(kernel) }), /: not a regular file$/],
    ['a server that is not there', () => ({ name: 'i', url: `http://127.0.0.1:${closedPort}/x`, sha256: sha(initrd) }), /127\.0\.0\.1:\d+\/x: cannot fetch: .*ECONNREFUSED/],
  ])('refuses %s, keeps nothing and leaves no partial file', async (_what, art, want) => {
    const d = join(dir, `c-${randomBytes(3).toString('hex')}`);
    const cache = await new ArtifactCache({ dir: d }).open();
    expect(await refusal(cache.ensure(art(), "bootenv 'sledge' kernel"))).toMatch(want);
    expect(readdirSync(d)).toEqual([]);
  });

  it('refuses a file over the size limit while it streams', async () => {
    const cache = await new ArtifactCache({ dir: join(dir, 'c-small'), maxBytes: 1000 }).open();
    expect(await refusal(cache.ensure({ name: 'k', path: join(src, 'vmlinuz'), sha256: sha(kernel) }, 'kernel'))).toMatch(/200000 bytes is more than the limit of 1000/);
    expect(readdirSync(join(dir, 'c-small'))).toEqual([]);
  });
});

describe('parseBootQuery', () => {
  it.each<[Record<string, unknown>, unknown]>([
    [{ mac: '52:54:00:AA:bb:01', uuid: '8C6F5C56-0F3C-4B8E-9D1A-2F4E6B7A8C9D', platform: 'efi' }, { mac: '52:54:00:aa:bb:01', uuid: '8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d', platform: 'efi', remote: 'r' }],
    [{ mac: '52-54-00-aa-bb-01', uuid: '' }, { mac: '52:54:00:aa:bb:01', platform: 'pcbios', remote: 'r' }],
    [{ mac: 'nope' }, 'mac: expected a MAC address like 52:54:00:12:34:56 (got "nope")'],
    [{}, 'mac: expected a MAC address like 52:54:00:12:34:56 (got null)'],
    [{ mac: '52:54:00:aa:bb:01', uuid: 'x' }, 'uuid: expected an SMBIOS UUID like 8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d (got "x")'],
    [{ mac: '52:54:00:aa:bb:01', platform: 'arm' }, 'platform: expected pcbios or efi (got "arm")'],
    [{ mac: '52-54-00-aa-bb-01', platform: 'efi-x64' }, { mac: '52:54:00:aa:bb:01', platform: 'efi', remote: 'r' }],
    [{ mac: '52-54-00-aa-bb-01', platform: 'bios' }, { mac: '52:54:00:aa:bb:01', platform: 'pcbios', remote: 'r' }],
  ])('%j', (q, want) => {
    if (typeof want === 'string') expect(() => parseBootQuery(q, 'r')).toThrow(want);
    else expect(parseBootQuery(q, 'r')).toEqual(want);
  });
});

describe('the boot HTTP service', () => {
  let app: FastifyInstance;
  let url: string;
  const served: string[] = [];
  beforeAll(async () => {
    const cache = await new ArtifactCache({ dir: join(dir, 'served') }).open();
    await cache.ensure({ name: 'vmlinuz', path: join(src, 'vmlinuz'), sha256: sha(kernel) }, 'kernel');
    app = await buildBootHttp({
      cache,
      script: async (q) => `#!ipxe\necho ${q.mac} ${q.uuid ?? '-'} ${q.platform}\n`,
      onServe: (e) => served.push(`${e.method} ${e.status}`),
    });
    url = await app.listen({ host: '127.0.0.1', port: 0 });
  });
  afterAll(async () => {
    await app?.close();
  });

  it('serves a kept file whole, by range, and its size to HEAD', async () => {
    const path = `${url}/boot/files/${sha(kernel)}/vmlinuz`;
    const whole = await fetch(path);
    expect(whole.status).toBe(200);
    expect(whole.headers.get('accept-ranges')).toBe('bytes');
    expect(whole.headers.get('cache-control')).toContain('immutable');
    expect(Buffer.from(await whole.arrayBuffer()).equals(kernel)).toBe(true);

    const part = await fetch(path, { headers: { range: 'bytes=1000-1999' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 1000-1999/${kernel.length}`);
    expect(Buffer.from(await part.arrayBuffer()).equals(kernel.subarray(1000, 2000))).toBe(true);

    const head = await fetch(path, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(kernel.length));

    const beyond = await fetch(path, { headers: { range: `bytes=${kernel.length + 10}-` } });
    expect(beyond.status).toBe(416);
    expect(beyond.headers.get('content-range')).toBe(`bytes */${kernel.length}`);
    expect(((await beyond.json()) as { error: { code: string } }).error.code).toBe('range_not_satisfiable');
  });

  it('answers an unknown file, a bad hash and an unknown path with a JSON 404', async () => {
    for (const p of [`/boot/files/${'0'.repeat(64)}/x`, '/boot/files/..%2f..%2fetc%2fpasswd/x', '/boot/files/../../etc/passwd', '/api/v1/machines']) {
      const r = await fetch(`${url}${p}`);
      expect(r.status, p).toBe(404);
      expect(((await r.json()) as { error: { code: string } }).error.code).toBe('not_found');
    }
  });

  it('renders the per-machine script from what iPXE says, uncached; a bad query is a 400 that names the field', async () => {
    const r = await fetch(`${url}/boot/ipxe?mac=52:54:00:12:34:56&uuid=8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d&platform=pcbios`);
    expect(r.status).toBe(200);
    expect(r.headers.get('cache-control')).toBe('no-store');
    expect(await r.text()).toBe('#!ipxe\necho 52:54:00:12:34:56 8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d pcbios\n');
    const bad = await fetch(`${url}/boot/ipxe?mac=zz`);
    expect(bad.status).toBe(400);
    expect(await bad.json()).toEqual({ error: { code: 'bad_request', message: 'mac: expected a MAC address like 52:54:00:12:34:56 (got "zz")', path: '/mac' } });
    expect(served).toContain('GET 200');
  });
});
