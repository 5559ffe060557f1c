/**
 * Read-only TFTP server for boot files (RFC 1350), with option negotiation (RFC 2347) for `blksize`
 * (RFC 2348, 8–65464 bytes), `tsize` and `timeout` (RFC 2349, 1–255 s).
 *
 * - Serves regular files under one root directory. A name with a `..` segment, or one that resolves
 *   (through symlinks) outside the root, is refused with "access violation"; write requests likewise.
 * - One socket per transfer (the server's transfer id is a fresh port, RFC 1350 §4); a packet from any other
 *   port on that socket gets "unknown transfer ID" and the transfer goes on.
 * - Lock-step: one block in flight; a timeout resends it, at most `maxRetries` times, then the transfer ends.
 *   A duplicate ACK is ignored, never answered with a resend (the "Sorcerer's Apprentice" bug, RFC 1123 §4.2.3.1).
 * - Block numbers wrap from 65535 to 0, so files over 32 MiB at 512-byte blocks still transfer.
 * - `netascii` requests get the bytes unchanged (boot files are binary; no client here asks for text).
 */
import { createSocket, type Socket } from 'node:dgram';
import { open, realpath, stat, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join, relative, sep } from 'node:path';
import { TaktError } from '../../model/errors.js';
import { decodeTftp, encodeData, encodeError, encodeOack, TftpErr, TftpOp } from './packet.js';

/** Configuration of `TftpServer`. */
export interface TftpConfig {
  /** Directory served (read-only). */
  root: string;
  /** Address to bind; transfers use fresh ports on the same address. */
  address: string;
  /** Listening port; default 69. */
  port?: number;
  /** Retransmission timeout when the client names none, milliseconds. Default 1000. */
  timeoutMs?: number;
  /** Resends of one packet before a transfer is abandoned. Default 5. */
  maxRetries?: number;
  /** Transfers at once; more requests get an error. Default 256. */
  maxTransfers?: number;
  /** Largest blksize granted (RFC 2348 allows at most 65464). Default 65464. */
  maxBlksize?: number;
  /**
   * Files outside `root` that a symlink in it may lead to (absolute, compared after resolving symlinks).
   * Debian's `ipxe` package installs `/usr/lib/ipxe/ipxe.efi` as a link to `/boot/ipxe.efi`; the service
   * lists the boot files it hands out here, so exactly those are served and nothing else escapes the root.
   */
  allowOutside?: string[];
  log?: (e: TftpLogEntry) => void;
}

/** One log line of the TFTP server. */
export interface TftpLogEntry {
  event: 'start' | 'done' | 'refused' | 'failed' | 'ignored';
  client?: string;
  file?: string;
  bytes?: number;
  reason?: string;
}

const MAX_BLKSIZE = 65464;

/**
 * Maps a requested name to a path under `root`, or returns why not. Leading slashes are dropped (PXE ROMs
 * send `/undionly.kpxe` as often as `undionly.kpxe`); backslashes count as separators (Windows-style
 * clients). `..` segments are refused outright, and the real path (symlinks resolved) must stay under the
 * real root, unless it is one of `allowOutside` (real paths).
 */
export async function resolveInRoot(root: string, name: string, allowOutside: readonly string[] = []): Promise<{ path: string } | { error: string; code: number }> {
  const rel = name.replaceAll('\\', '/').replace(/^\/+/, '');
  if (rel === '' || rel.split('/').some((seg) => seg === '..')) return { error: `'${name}' leaves the served directory`, code: TftpErr.ACCESS_VIOLATION };
  let real: string;
  let realRoot: string;
  try {
    realRoot = await realpath(root);
    real = await realpath(join(realRoot, rel));
  } catch {
    return { error: `'${name}' not found`, code: TftpErr.FILE_NOT_FOUND };
  }
  const r = relative(realRoot, real);
  if ((r === '' || r.startsWith('..' + sep) || r === '..' || isAbsolute(r)) && !allowOutside.includes(real)) return { error: `'${name}' leaves the served directory`, code: TftpErr.ACCESS_VIOLATION };
  try {
    if (!(await stat(real)).isFile()) return { error: `'${name}' is not a file`, code: TftpErr.FILE_NOT_FOUND };
  } catch {
    return { error: `'${name}' not found`, code: TftpErr.FILE_NOT_FOUND };
  }
  return { path: real };
}

/**
 * Negotiates RFC 2347 options: returns the options to acknowledge (empty → no OACK) and the values to use.
 * Unknown options and out-of-range values are left out (the client then uses the default), as RFC 2347 says.
 */
export function negotiate(
  requested: Map<string, string>,
  size: number,
  defaults: { timeoutMs: number; maxBlksize: number },
): { ack: Map<string, string>; blksize: number; timeoutMs: number } {
  const ack = new Map<string, string>();
  let blksize = 512;
  let timeoutMs = defaults.timeoutMs;
  const num = (v: string | undefined) => (v !== undefined && /^\d{1,9}$/.test(v) ? Number(v) : undefined);
  const b = num(requested.get('blksize'));
  if (b !== undefined && b >= 8) {
    blksize = Math.min(b, defaults.maxBlksize, MAX_BLKSIZE);
    ack.set('blksize', String(blksize));
  }
  const t = num(requested.get('timeout'));
  if (t !== undefined && t >= 1 && t <= 255) {
    timeoutMs = t * 1000;
    ack.set('timeout', String(t));
  }
  if (requested.has('tsize') && num(requested.get('tsize')) !== undefined) ack.set('tsize', String(size));
  return { ack, blksize, timeoutMs };
}

/** The TFTP service. `start()` binds, `stop()` closes the listener and every transfer. */
export class TftpServer {
  private listener?: Socket;
  private readonly transfers = new Set<Transfer>();

  constructor(readonly config: TftpConfig) {}

  /** Binds the listening socket; rejects with `TaktError('unavailable')` if it cannot. */
  async start(): Promise<void> {
    const s = createSocket({ type: 'udp4', reuseAddr: true });
    await new Promise<void>((resolve, reject) => {
      s.once('error', (e) => {
        s.close();
        reject(new TaktError('unavailable', `cannot bind TFTP socket ${this.config.address}:${this.config.port ?? 69}: ${e.message}`));
      });
      s.bind({ address: this.config.address, port: this.config.port ?? 69, exclusive: true }, () => resolve());
    });
    s.removeAllListeners('error');
    s.on('error', () => undefined);
    s.on('message', (msg, rinfo) => {
      // A request must never take the process down (e.g. a send racing stop()): log it and carry on.
      this.onRequest(msg, rinfo).catch((e: unknown) => this.log({ event: 'failed', client: `${rinfo.address}:${rinfo.port}`, reason: (e as Error).message }));
    });
    this.listener = s;
  }

  /** The port the listener is bound to (useful with port 0). */
  port(): number {
    return this.listener?.address().port ?? 0;
  }

  /** Transfers in progress. */
  active(): number {
    return this.transfers.size;
  }

  private log(e: TftpLogEntry): void {
    this.config.log?.(e);
  }

  private async onRequest(msg: Buffer, rinfo: { address: string; port: number }): Promise<void> {
    const client = `${rinfo.address}:${rinfo.port}`;
    const answer = (code: number, text: string) => this.listener?.send(encodeError(code, text), rinfo.port, rinfo.address);
    const d = decodeTftp(msg);
    if (!d.ok) {
      // Garbage gets no answer: answering would make the server a reflector.
      this.log({ event: 'ignored', client, reason: d.error.message });
      return;
    }
    const p = d.packet;
    if (p.op === TftpOp.WRQ) {
      this.log({ event: 'refused', client, file: p.filename, reason: 'write request to a read-only server' });
      answer(TftpErr.ACCESS_VIOLATION, 'read-only server');
      return;
    }
    if (p.op !== TftpOp.RRQ) {
      this.log({ event: 'ignored', client, reason: `opcode ${p.op} on the request port` });
      return;
    }
    if (p.mode !== 'octet' && p.mode !== 'netascii') {
      this.log({ event: 'refused', client, file: p.filename, reason: `mode '${p.mode}'` });
      answer(TftpErr.ILLEGAL_OPERATION, `mode '${p.mode}' is not supported`);
      return;
    }
    if (this.transfers.size >= (this.config.maxTransfers ?? 256)) {
      this.log({ event: 'refused', client, file: p.filename, reason: 'too many transfers' });
      answer(TftpErr.NOT_DEFINED, 'server busy, try again');
      return;
    }
    const r = await resolveInRoot(this.config.root, p.filename, this.config.allowOutside);
    if ('error' in r) {
      this.log({ event: 'refused', client, file: p.filename, reason: r.error });
      answer(r.code, r.error);
      return;
    }
    let fh: FileHandle;
    let size: number;
    try {
      fh = await open(r.path, 'r');
      size = (await fh.stat()).size;
    } catch (e) {
      answer(TftpErr.FILE_NOT_FOUND, 'cannot open file');
      this.log({ event: 'refused', client, file: p.filename, reason: (e as Error).message });
      return;
    }
    const n = negotiate(p.options, size, { timeoutMs: this.config.timeoutMs ?? 1000, maxBlksize: this.config.maxBlksize ?? MAX_BLKSIZE });
    const t = new Transfer(this, fh, size, n, rinfo, p.filename);
    this.transfers.add(t);
    this.log({ event: 'start', client, file: p.filename, bytes: size });
    try {
      await t.begin(this.config.address);
    } catch (e) {
      t.end('failed', (e as Error).message);
    }
  }

  /** Called by a transfer when it ends. */
  finished(t: Transfer, e: TftpLogEntry): void {
    this.transfers.delete(t);
    this.log(e);
  }

  /** Closes the listener and aborts every transfer. */
  async stop(): Promise<void> {
    for (const t of [...this.transfers]) t.end('failed', 'server stopping');
    const s = this.listener;
    this.listener = undefined;
    if (s) await new Promise<void>((res) => s.close(() => res()));
  }

  /** Retry limit for transfers. */
  get maxRetries(): number {
    return this.config.maxRetries ?? 5;
  }
}

/** One read transfer on its own socket. */
class Transfer {
  private sock?: Socket;
  private timer?: NodeJS.Timeout;
  private last?: Buffer;
  /** Block number (unwrapped) waiting for its ACK; 0 = the OACK. */
  private block = 0;
  private lastLen = -1;
  private retries = 0;
  private done = false;

  constructor(
    private readonly server: TftpServer,
    private readonly fh: FileHandle,
    private readonly size: number,
    private readonly n: { ack: Map<string, string>; blksize: number; timeoutMs: number },
    private readonly peer: { address: string; port: number },
    private readonly file: string,
  ) {}

  async begin(address: string): Promise<void> {
    const s = createSocket('udp4');
    this.sock = s;
    s.on('error', (e) => this.end('failed', e.message));
    await new Promise<void>((resolve) => s.bind({ address, port: 0 }, () => resolve()));
    s.on('message', (m, r) => {
      this.onPacket(m, r).catch((e: unknown) => this.end('failed', (e as Error).message));
    });
    if (this.n.ack.size > 0) this.send(encodeOack(this.n.ack));
    else await this.sendBlock(1);
  }

  private send(data: Buffer): void {
    this.last = data;
    this.retries = 0;
    this.sock?.send(data, this.peer.port, this.peer.address);
    this.arm();
  }

  private arm(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (this.done) return;
      if (this.retries >= this.server.maxRetries) {
        try {
          this.sock?.send(encodeError(TftpErr.NOT_DEFINED, 'timed out'), this.peer.port, this.peer.address);
        } catch {
          // the socket is gone; ending is all that is left
        }
        this.end('failed', `no ACK for block ${this.block} after ${this.retries} resends`);
        return;
      }
      this.retries++;
      try {
        if (this.last) this.sock?.send(this.last, this.peer.port, this.peer.address);
      } catch (e) {
        this.end('failed', (e as Error).message);
        return;
      }
      this.arm();
    }, this.n.timeoutMs);
  }

  private async sendBlock(block: number): Promise<void> {
    const buf = Buffer.alloc(Math.max(0, Math.min(this.n.blksize, this.size - (block - 1) * this.n.blksize)));
    if (buf.length > 0) await this.fh.read(buf, 0, buf.length, (block - 1) * this.n.blksize);
    if (this.done) return;
    this.block = block;
    this.lastLen = buf.length;
    this.send(encodeData(block, buf));
  }

  private async onPacket(msg: Buffer, r: { address: string; port: number }): Promise<void> {
    if (this.done) return;
    if (r.address !== this.peer.address || r.port !== this.peer.port) {
      this.sock?.send(encodeError(TftpErr.UNKNOWN_TID, 'unknown transfer ID'), r.port, r.address);
      return;
    }
    const d = decodeTftp(msg);
    if (!d.ok) return;
    const p = d.packet;
    if (p.op === TftpOp.ERROR) {
      this.end('failed', `client sent error ${p.code}: ${p.message}`);
      return;
    }
    if (p.op !== TftpOp.ACK) return;
    if (p.block !== (this.block & 0xffff)) return; // duplicate or stale ACK: wait for the timer, never resend on it
    clearTimeout(this.timer);
    if (this.block > 0 && this.lastLen < this.n.blksize) {
      this.end('done');
      return;
    }
    try {
      await this.sendBlock(this.block + 1);
    } catch (e) {
      this.sock?.send(encodeError(TftpErr.NOT_DEFINED, 'read error'), this.peer.port, this.peer.address);
      this.end('failed', (e as Error).message);
    }
  }

  /** Ends the transfer once: stops the timer, closes socket and file, tells the server. */
  end(how: 'done' | 'failed', reason?: string): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.timer);
    try {
      this.sock?.close();
    } catch {
      // already closed
    }
    void this.fh.close().catch(() => undefined);
    const e: TftpLogEntry = { event: how, client: `${this.peer.address}:${this.peer.port}`, file: this.file, bytes: this.size };
    if (reason) e.reason = reason;
    this.server.finished(this, e);
  }
}
