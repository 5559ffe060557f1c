/**
 * Sends fuzzed datagrams (fast-check, fixed seed) at takt's DHCP and TFTP ports from inside a test
 * network namespace: random bytes, and DHCP/TFTP requests with bytes overwritten or cut. Prints
 * `{"sent":N,"answers":M}` where M counts answers received to datagrams that do not decode as DHCP
 * (there must be none). Argument: `{"server","count"}`.
 */
import { createSocket } from 'node:dgram';
import fc from 'fast-check';
import { decodeDhcp } from '../../src/provision/dhcp/packet.js';
import { encodeRrq } from '../../src/provision/tftp/packet.js';
import { clientMessage, FIRMWARE } from './dhcp.js';

const a = JSON.parse(process.argv[2] ?? '{}') as { server: string; count: number };
const valid = [clientMessage({ mac: '52:54:00:16:0f:01', ...FIRMWARE.ipxeBios }), encodeRrq('undionly.kpxe', 'octet', { blksize: '1468', tsize: '0' })];
const arb = fc.oneof(
  fc.uint8Array({ maxLength: 1400 }),
  fc.tuple(fc.constantFrom(...valid), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }), fc.nat()).map(([b, edits, cut]) => {
    const c = Buffer.from(b);
    for (const [p, v] of edits) c[p % c.length] = v;
    return c.subarray(0, cut % (c.length + 1));
  }),
);
const datagrams = fc.sample(arb, { numRuns: a.count, seed: 1130 }).map((d) => Buffer.from(d));
const s = createSocket({ type: 'udp4', reuseAddr: true });
let answers = 0;
const garbage = new Set(datagrams.filter((d) => !decodeDhcp(d).ok).map((d) => (d.length >= 8 ? d.readUInt32BE(4) : -1)));
s.on('message', (m) => {
  const r = decodeDhcp(m);
  // A DHCP answer carries the xid of what it answers; one whose xid only garbage carried is an answer to garbage.
  if (r.ok && garbage.has(r.packet.xid) && !datagrams.some((d) => decodeDhcp(d).ok && d.readUInt32BE(4) === r.packet.xid)) answers++;
});
s.bind(68, '0.0.0.0', async () => {
  s.setBroadcast(true);
  let i = 0;
  for (const d of datagrams) {
    const [host, port] = i % 4 === 0 ? ['255.255.255.255', 67] : i % 4 === 1 ? [a.server, 67] : i % 4 === 2 ? [a.server, 69] : [a.server, 4011];
    await new Promise<void>((res) => s.send(d, port, host, () => res()));
    i++;
  }
  // Answers to the last datagrams are in flight; a valid DISCOVER last, and its OFFER, mark the end.
  const marker = clientMessage({ mac: '52:54:00:16:0f:02', xid: 0x5eed5eed });
  const deadline = setTimeout(() => {
    clearInterval(again);
    process.stdout.write(JSON.stringify({ sent: datagrams.length, answers, marker: false }) + '\n');
    process.exit(1);
  }, 30_000);
  s.on('message', (m) => {
    const r = decodeDhcp(m);
    if (r.ok && r.packet.xid === 0x5eed5eed) {
      clearTimeout(deadline);
      process.stdout.write(JSON.stringify({ sent: datagrams.length, answers, marker: true }) + '\n');
      s.close();
    }
  });
  // Resent until answered (bounded by the deadline): the flood may have overrun the server's receive buffer.
  const again = setInterval(() => s.send(marker, 67, '255.255.255.255'), 500);
  s.on('close', () => clearInterval(again));
  s.send(marker, 67, '255.255.255.255');
});
