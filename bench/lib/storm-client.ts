/**
 * The boot-storm load generator (bench/boot-storm.ts), run inside the boot segment's network namespace:
 * `ip netns exec NS node --import tsx bench/lib/storm-client.ts JSON`. Each simulated machine does what
 * iPXE does on a boot: broadcast DISCOVER (as qemu's iPXE ROM: option 60/77/93/175, facts §1), REQUEST the
 * offered address, GET the script URL the ACK carries (iPXE's `${net0/mac}`, `${uuid:uuid}` and
 * `${platform}` filled in), then fetch the first `rangeBytes` of the kernel the script names with a
 * `Range` header. All clients of a wave start together; one UDP socket on port 68 serves them all
 * (replies are broadcast; matched by xid). Lost datagrams are sent again after 4 s, at most 5 times.
 *
 * Prints one JSON line per client: `{mac, ip?, offerMs?, ackMs?, scriptMs?, kernelMs?, bytes?, error?}`
 * (milliseconds from its DISCOVER), then `{"done": true}`.
 * Argument: `{"macs": [...], "rangeBytes": N, "deadlineMs": N}`.
 */
import { createSocket } from 'node:dgram';
import { DhcpMessageType as T, decodeDhcp, messageType, serverId } from '../../src/provision/dhcp/packet.js';
import { clientMessage, FIRMWARE } from '../../test/helpers/dhcp.js';

const a = JSON.parse(process.argv[2] ?? '{}') as { macs: string[]; rangeBytes: number; deadlineMs: number };
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
// Every reply is broadcast and lands on this one socket: a large buffer, so the client is not what drops.
const s = createSocket({ type: 'udp4', reuseAddr: true, recvBufferSize: 4 << 20 });

interface Client {
  mac: string;
  xid: number;
  start: number;
  phase: 'discover' | 'request' | 'http';
  offered?: { ip: string; server: string };
  r: Record<string, unknown>;
  tries: number;
  timer?: NodeJS.Timeout;
  done: (r: Record<string, unknown>) => void;
}
const byXid = new Map<number, Client>();

function send(c: Client): void {
  const msg =
    c.phase === 'discover'
      ? clientMessage({ mac: c.mac, xid: c.xid, ...FIRMWARE.ipxeBios })
      : clientMessage({ mac: c.mac, xid: c.xid, type: T.REQUEST, requested: c.offered!.ip, serverId: c.offered!.server, ...FIRMWARE.ipxeBios });
  s.send(msg, 67, '255.255.255.255');
  clearTimeout(c.timer);
  c.timer = setTimeout(() => {
    if (c.phase === 'http') return;
    if (++c.tries > 5) c.done({ ...c.r, error: `no ${c.phase === 'discover' ? 'OFFER' : 'ACK'} after 5 resends` });
    else send(c);
  }, 4000);
}

async function http(c: Client, file: string): Promise<void> {
  const url = file.replaceAll('${net0/mac}', c.mac).replaceAll('${uuid:uuid}', '').replaceAll('${platform}', 'pcbios');
  try {
    const res = await fetch(url);
    const script = await res.text();
    c.r.scriptMs = Math.round(performance.now() - c.start);
    if (res.status !== 200) return c.done({ ...c.r, error: `script: HTTP ${res.status}` });
    const kernel = /^kernel\s+(\S+)/m.exec(script)?.[1];
    if (!kernel) return c.done({ ...c.r, error: `script names no kernel: ${script.slice(0, 120)}` });
    const k = await fetch(kernel, { headers: { range: `bytes=0-${a.rangeBytes - 1}` } });
    const body = await k.arrayBuffer();
    c.r.kernelMs = Math.round(performance.now() - c.start);
    c.r.bytes = body.byteLength;
    if (k.status !== 206) return c.done({ ...c.r, error: `kernel: HTTP ${k.status}` });
    c.done(c.r);
  } catch (e) {
    c.done({ ...c.r, error: `http: ${(e as Error).message}` });
  }
}

s.on('message', (m) => {
  const d = decodeDhcp(m);
  if (!d.ok) return;
  const p = d.packet;
  const c = byXid.get(p.xid);
  if (!c) return;
  const type = messageType(p);
  const ms = Math.round(performance.now() - c.start);
  if (type === T.OFFER && c.phase === 'discover') {
    c.r.offerMs = ms;
    c.offered = { ip: p.yiaddr, server: serverId(p) ?? '' };
    c.phase = 'request';
    c.tries = 0;
    send(c);
  } else if (type === T.ACK && c.phase === 'request') {
    clearTimeout(c.timer);
    c.r.ackMs = ms;
    c.r.ip = p.yiaddr;
    c.phase = 'http';
    void http(c, p.file);
  } else if (type === T.NAK && c.phase === 'request') {
    // Start over, as a client does after a NAK.
    c.r.naks = ((c.r.naks as number | undefined) ?? 0) + 1;
    c.phase = 'discover';
    send(c);
  }
});

const deadline = setTimeout(() => {
  out({ timeout: [...byXid.values()].map((c) => c.mac) });
  process.exit(1);
}, a.deadlineMs);

s.bind(68, '0.0.0.0', () => {
  s.setBroadcast(true);
  void Promise.all(
    a.macs.map(
      (mac, i) =>
        new Promise<void>((resolve) => {
          const c: Client = {
            mac,
            xid: (0x20000000 + i) >>> 0,
            start: performance.now(),
            phase: 'discover',
            r: { mac },
            tries: 0,
            done: (r) => {
              if (!byXid.has(c.xid)) return; // answered once already
              clearTimeout(c.timer);
              byXid.delete(c.xid);
              out(r);
              resolve();
            },
          };
          byXid.set(c.xid, c);
          send(c);
        }),
    ),
  ).then(() => {
    clearTimeout(deadline);
    out({ done: true });
    s.close();
  });
});
