/** A minimal TFTP read client for tests (lock-step, bounded by a deadline). */
import { createSocket } from 'node:dgram';
import { decodeTftp, encodeAck, encodeRrq, TftpOp } from '../../src/provision/tftp/packet.js';

export interface TftpGetResult {
  data?: Buffer;
  error?: { code: number; message: string };
  oack?: Map<string, string>;
  /** Every DATA block number received, duplicates included. */
  blocks: number[];
}

/**
 * Reads `file` from host:port. `dropFirst` ignores the first DATA packet (to see the server resend it);
 * `ackFrom` sends ACKs from a second socket once (a wrong transfer id) before the right one.
 */
export function tftpGet(
  host: string,
  port: number,
  file: string,
  opts: { options?: Record<string, string>; dropFirst?: boolean; noAck?: boolean; deadlineMs?: number } = {},
): Promise<TftpGetResult> {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    const parts: Buffer[] = [];
    const res: TftpGetResult = { blocks: [] };
    let blksize = Number(opts.options?.blksize ?? 512);
    let dropped = false;
    let expect = 1;
    const timer = setTimeout(() => {
      s.close();
      reject(new Error(`tftp ${file}: no end within ${opts.deadlineMs ?? 20000} ms (blocks ${res.blocks.length})`));
    }, opts.deadlineMs ?? 20000);
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      s.close();
      resolve(res);
    };
    s.on('message', (m, r) => {
      if (finished) return;
      const d = decodeTftp(m);
      if (!d.ok) return;
      const p = d.packet;
      if (p.op === TftpOp.ERROR) {
        res.error = { code: p.code, message: p.message };
        finish();
      } else if (p.op === TftpOp.OACK) {
        res.oack = p.options;
        if (p.options.has('blksize')) blksize = Number(p.options.get('blksize'));
        if (!opts.noAck) s.send(encodeAck(0), r.port, r.address);
      } else if (p.op === TftpOp.DATA) {
        res.blocks.push(p.block);
        if (opts.dropFirst && !dropped) {
          dropped = true;
          return;
        }
        if (opts.noAck) return;
        if (p.block === (expect & 0xffff)) {
          parts.push(p.data);
          expect++;
        }
        const last = p.block === ((expect - 1) & 0xffff) && p.data.length < blksize;
        // Close only after the final ACK has left, or the server resends the last block to a closed port.
        s.send(encodeAck(p.block), r.port, r.address, () => {
          if (!last) return;
          res.data = Buffer.concat(parts);
          finish();
        });
      }
    });
    s.bind(0, '127.0.0.1', () => s.send(encodeRrq(file, 'octet', opts.options ?? {}), port, host));
  });
}
