/**
 * A DHCP client for lease tests and the boot-storm bench, run inside a network namespace next to
 * `takt serve --dhcp full` (`ip netns exec NS node --import tsx test/helpers/lease-probe.ts JSON`). For each
 * MAC, in order, it broadcasts a DISCOVER as SeaBIOS's iPXE ROM would (facts §1), REQUESTs the offered
 * address and waits for the ACK; it prints one JSON line per client, `{"mac","ip","offerMs","ackMs"}`
 * (milliseconds since that client's DISCOVER), or `{"mac","error"}`, and exits 0 when every client has an
 * answer; 1 at the deadline. `concurrency` clients run at once (default 1: strictly in order).
 * Argument: `{"macs": [...], "deadlineMs": N, "concurrency"?: N}`.
 */
import { createSocket } from 'node:dgram';
import { DhcpMessageType as T, decodeDhcp, messageType, serverId } from '../../src/provision/dhcp/packet.js';
import { clientMessage, FIRMWARE } from './dhcp.js';

const a = JSON.parse(process.argv[2] ?? '{}') as { macs: string[]; deadlineMs: number; concurrency?: number };
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
const s = createSocket({ type: 'udp4', reuseAddr: true });
/** xid → the client's state. */
const clients = new Map<number, { mac: string; start: number; offerMs?: number; resolve: () => void; timer: NodeJS.Timeout; tries: number }>();
let next = 0;
let left = a.macs.length;
const deadline = setTimeout(() => {
  out({ timeout: [...clients.values()].map((c) => c.mac) });
  process.exit(1);
}, a.deadlineMs);

function discover(xid: number): void {
  const c = clients.get(xid)!;
  s.send(clientMessage({ mac: c.mac, xid, ...FIRMWARE.ipxeBios }), 67, '255.255.255.255');
  // A lost datagram (the server busy) is sent again, as firmware does, at most 8 times.
  c.timer = setTimeout(() => {
    if (++c.tries < 8) discover(xid);
  }, 2000 * 2 ** Math.min(c.tries, 3));
}

function start(): void {
  if (next >= a.macs.length) return;
  const mac = a.macs[next]!;
  const xid = (0x10000000 + next++) >>> 0;
  new Promise<void>((resolve) => {
    clients.set(xid, { mac, start: performance.now(), resolve, timer: setTimeout(() => undefined, 0), tries: 0 });
    discover(xid);
  }).then(() => {
    clients.delete(xid);
    if (--left === 0) {
      clearTimeout(deadline);
      s.close();
    } else start();
  });
}

s.on('message', (m) => {
  const d = decodeDhcp(m);
  if (!d.ok) return;
  const p = d.packet;
  const c = clients.get(p.xid);
  if (!c) return;
  const type = messageType(p);
  const ms = Math.round(performance.now() - c.start);
  if (type === T.OFFER && c.offerMs === undefined) {
    c.offerMs = ms;
    clearTimeout(c.timer);
    s.send(clientMessage({ mac: c.mac, xid: p.xid, type: T.REQUEST, requested: p.yiaddr, serverId: serverId(p), ...FIRMWARE.ipxeBios }), 67, '255.255.255.255');
  } else if (type === T.ACK && c.offerMs !== undefined) {
    clearTimeout(c.timer);
    out({ mac: c.mac, ip: p.yiaddr, offerMs: c.offerMs, ackMs: ms, file: p.file });
    c.resolve();
  } else if (type === T.NAK) {
    clearTimeout(c.timer);
    out({ mac: c.mac, error: 'NAK' });
    c.resolve();
  }
});
s.bind(68, '0.0.0.0', () => {
  s.setBroadcast(true);
  for (let i = 0; i < Math.max(1, a.concurrency ?? 1); i++) start();
});
