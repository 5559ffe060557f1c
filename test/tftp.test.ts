/**
 * The TFTP server on loopback: whole-file reads with and without options (blksize, tsize, timeout),
 * path traversal and symlinks out of the root refused, write requests refused, a lost block resent,
 * a silent client abandoned after bounded resends.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeTftp, TftpErr } from '../src/provision/tftp/packet.js';
import { negotiate, TftpServer, type TftpLogEntry } from '../src/provision/tftp/server.js';
import { until } from './helpers/endpoint.js';
import { tftpGet } from './helpers/tftp-client.js';

let dir: string;
let root: string;
let server: TftpServer;
const log: TftpLogEntry[] = [];
const big = randomBytes(300_000);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'takt-tftp-'));
  root = join(dir, 'root');
  mkdirSync(join(root, 'sub'), { recursive: true });
  writeFileSync(join(root, 'big.bin'), big);
  writeFileSync(join(root, 'exact.bin'), Buffer.alloc(1024, 5)); // a multiple of 512: ends with an empty block
  writeFileSync(join(root, 'empty.bin'), Buffer.alloc(0));
  writeFileSync(join(root, 'sub', 'a.txt'), 'hello\n');
  writeFileSync(join(dir, 'secret'), 'outside');
  symlinkSync(join(dir, 'secret'), join(root, 'link-out'));
  server = new TftpServer({ root, address: '127.0.0.1', port: 0, timeoutMs: 200, maxRetries: 3, log: (e) => log.push(e) });
  await server.start();
});

afterAll(async () => {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('TFTP server', () => {
  it.each([
    ['big.bin', {}, big],
    ['big.bin', { blksize: '1468', tsize: '0' }, big],
    ['/big.bin', { blksize: '65464' }, big],
    ['exact.bin', {}, Buffer.alloc(1024, 5)],
    ['empty.bin', {}, Buffer.alloc(0)],
    ['sub/a.txt', { timeout: '3' }, Buffer.from('hello\n')],
  ])('reads %s with options %j byte-identical', async (file, options, want) => {
    const r = await tftpGet('127.0.0.1', server.port(), file, { options });
    expect(r.error).toBeUndefined();
    expect(r.data?.equals(want)).toBe(true);
    if ('tsize' in options) expect(r.oack?.get('tsize')).toBe(String(want.length));
  });

  it.each([
    ['../secret', TftpErr.ACCESS_VIOLATION],
    ['sub/../../secret', TftpErr.ACCESS_VIOLATION],
    ['link-out', TftpErr.ACCESS_VIOLATION],
    ['..\\secret', TftpErr.ACCESS_VIOLATION],
    ['missing.bin', TftpErr.FILE_NOT_FOUND],
    ['sub', TftpErr.FILE_NOT_FOUND],
  ])('refuses %s with error %d', async (file, code) => {
    const r = await tftpGet('127.0.0.1', server.port(), file);
    expect(r.error?.code).toBe(code);
    expect(r.data).toBeUndefined();
  });

  it('refuses write requests and ignores garbage', async () => {
    const s = createSocket('udp4');
    const got: Buffer[] = [];
    s.on('message', (m) => got.push(m));
    await new Promise<void>((res) => s.bind(0, '127.0.0.1', () => res()));
    s.send(Buffer.from([0xde, 0xad]), server.port(), '127.0.0.1');
    s.send(Buffer.from('\x00\x02x\x00octet\x00', 'latin1'), server.port(), '127.0.0.1');
    await until(async () => got.length > 0, 10_000, 'an answer to the WRQ');
    s.close();
    const d = decodeTftp(got[0]!);
    expect(d.ok && d.packet.op === 5 && d.packet.code).toBe(TftpErr.ACCESS_VIOLATION);
    expect(got).toHaveLength(1); // the garbage before it got nothing
  });

  it('resends a lost block, and the transfer still completes', async () => {
    const r = await tftpGet('127.0.0.1', server.port(), 'sub/a.txt', { dropFirst: true });
    expect(r.blocks.filter((b) => b === 1).length).toBeGreaterThanOrEqual(2);
    expect(r.data?.toString()).toBe('hello\n');
  });

  it('abandons a client that never ACKs after bounded resends', async () => {
    const before = log.filter((e) => e.event === 'failed').length;
    await tftpGet('127.0.0.1', server.port(), 'big.bin', { noAck: true, deadlineMs: 1 }).catch(() => undefined);
    await until(async () => log.filter((e) => e.event === 'failed').length > before && server.active() === 0, 20_000, 'the transfer abandoned');
    expect(log.filter((e) => e.event === 'failed').at(-1)?.reason).toMatch(/after 3 resends/);
  });

  it.each([
    [{ blksize: '7' }, 512, []],
    [{ blksize: '99999' }, 65464, ['blksize']],
    [{ blksize: 'x', timeout: '0', tsize: '0', foo: '1' }, 512, ['tsize']],
  ])('negotiates %j', (opts, blksize, acked) => {
    const n = negotiate(new Map(Object.entries(opts)), 42, { timeoutMs: 1000, maxBlksize: 65464 });
    expect(n.blksize).toBe(blksize);
    expect([...n.ack.keys()]).toEqual(acked);
  });
});
