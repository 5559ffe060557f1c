/**
 * Bounded property tests (fast-check, fixed seed) of the DHCP and TFTP decoders and the DHCP responder:
 * random bytes and mutations of valid firmware messages never make them throw anything but a typed
 * error, and garbage never gets an answer.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { defaultBootFiles } from '../src/provision/dhcp/classify.js';
import { MemoryLeaseStore } from '../src/provision/dhcp/leases.js';
import { BOOTREPLY, decodeDhcp, DhcpDecodeError } from '../src/provision/dhcp/packet.js';
import { DhcpResponder, type DhcpConfig } from '../src/provision/dhcp/server.js';
import { decodeTftp, encodeRrq, TftpDecodeError } from '../src/provision/tftp/packet.js';
import { clientMessage, FIRMWARE } from './helpers/dhcp.js';

const RUNS = 3000;
const seed = 20261130;
const boot = defaultBootFiles('http://10.216.0.1:8080');
const configs: DhcpConfig[] = [
  { mode: 'full', serverIp: '10.216.0.1', boot, subnet: { subnet: '10.216.0.0/24', rangeStart: '10.216.0.100', rangeEnd: '10.216.0.200' } },
  { mode: 'proxy', serverIp: '10.216.0.1', boot },
];
const valid = [
  ...Object.values(FIRMWARE).map((f, i) => clientMessage({ mac: `52:54:00:00:00:0${i}`, uuid: '8f1c2b3a-4d5e-6f70-8192-a3b4c5d6e7f8', ...f })),
  clientMessage({ mac: '52:54:00:00:01:01', type: 3, requested: '10.216.0.100', serverId: '10.216.0.1', ...FIRMWARE.ipxeBios }),
  clientMessage({ mac: '52:54:00:00:01:02', type: 3, ciaddr: '10.216.0.100', ...FIRMWARE.ipxeEfi }),
];

/** A valid message with some bytes overwritten, a cut, or bytes appended. */
const mutated = fc
  .tuple(
    fc.constantFrom(...valid),
    fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
    fc.option(fc.nat(), { nil: undefined }),
    fc.uint8Array({ maxLength: 64 }),
  )
  .map(([base, edits, cut, tail]) => {
    const b = Buffer.from(base);
    // Mutate the options area mostly: that is where parsers break.
    for (const [pos, val] of edits) b[236 + (pos % (b.length - 236))] = val;
    const c = cut === undefined ? b : b.subarray(0, cut % (b.length + 1));
    return Buffer.concat([c, Buffer.from(tail)]);
  });

function checkResponder(bytes: Uint8Array): void {
  for (const cfg of configs) {
    const errors: unknown[] = [];
    const r = new DhcpResponder(cfg, new MemoryLeaseStore(), { now: () => 1000, log: (e) => e.event === 'error' && errors.push(e) });
    for (const via of ['dhcp', 'pxe'] as const) {
      const decoded = decodeDhcp(bytes);
      const reply = r.handle(bytes, { address: '10.216.0.50', port: 68 }, via);
      if (!decoded.ok) expect(reply).toBeNull();
      if (reply) {
        const back = decodeDhcp(reply.data);
        expect(back.ok).toBe(true);
        if (back.ok && decoded.ok) {
          expect(back.packet.op).toBe(BOOTREPLY);
          expect(back.packet.xid).toBe(decoded.packet.xid);
        }
      }
    }
    // An 'error' entry means the responder caught an exception of its own: a bug even if nothing crashed.
    expect(errors).toEqual([]);
  }
}

describe('DHCP fuzz', () => {
  it('random bytes: decode gives a packet or a DhcpDecodeError, the responder never throws nor answers', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 1500 }), (bytes) => {
        const r = decodeDhcp(bytes);
        if (!r.ok) expect(r.error).toBeInstanceOf(DhcpDecodeError);
        checkResponder(bytes);
      }),
      { numRuns: RUNS, seed },
    );
  });

  it('random bytes behind a valid header and cookie (options area fuzzed)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 1200 }), (opts) => {
        const bytes = Buffer.concat([valid[0]!.subarray(0, 240), Buffer.from(opts)]);
        const r = decodeDhcp(bytes);
        if (!r.ok) expect(r.error).toBeInstanceOf(DhcpDecodeError);
        checkResponder(bytes);
      }),
      { numRuns: RUNS, seed },
    );
  });

  it('mutated firmware messages never crash the responder', () => {
    fc.assert(
      fc.property(mutated, (bytes) => {
        const r = decodeDhcp(bytes);
        if (!r.ok) expect(r.error).toBeInstanceOf(DhcpDecodeError);
        checkResponder(bytes);
      }),
      { numRuns: RUNS, seed },
    );
  });
});

describe('TFTP fuzz', () => {
  it('random and mutated requests decode to a packet or a TftpDecodeError', () => {
    const rrq = encodeRrq('undionly.kpxe', 'octet', { blksize: '1468', tsize: '0' });
    const arb = fc.oneof(
      fc.uint8Array({ maxLength: 600 }),
      fc.tuple(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }), fc.nat()).map(([edits, cut]) => {
        const b = Buffer.from(rrq);
        for (const [p, v] of edits) b[p % b.length] = v;
        return b.subarray(0, cut % (b.length + 1));
      }),
    );
    fc.assert(
      fc.property(arb, (bytes) => {
        const r = decodeTftp(bytes);
        if (!r.ok) expect(r.error).toBeInstanceOf(TftpDecodeError);
      }),
      { numRuns: RUNS, seed },
    );
  });
});
