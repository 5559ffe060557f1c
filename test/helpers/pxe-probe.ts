/**
 * A PXE-like DHCP client for the proxyDHCP integration test, run inside the client's network namespace
 * (`ip netns exec NS node --import tsx test/helpers/pxe-probe.ts JSON`). It broadcasts a DISCOVER from a
 * plain client (xid A) and then one from a PXE ROM (xid B), requests the address the DHCP server offered B,
 * and asks the proxy on port 4011 for B's boot file. It prints every reply as one JSON line and exits 0
 * once it has all of: the server's offer and ACK, the proxy's offer and its 4011 ACK; exits 1 at the deadline.
 * Argument: `{"mac","plainMac","proxy","deadlineMs"}`.
 */
import { createSocket } from 'node:dgram';
import { DhcpMessageType as T, decodeDhcp, messageType, serverId, vendorClass } from '../../src/provision/dhcp/packet.js';
import { clientMessage, FIRMWARE } from './dhcp.js';

const a = JSON.parse(process.argv[2] ?? '{}') as { mac: string; plainMac: string; proxy: string; deadlineMs: number };
const XA = 0x0a0a0a0a;
const XB = 0x0b0b0b0b;
const got = { serverOffer: '', serverAck: false, proxyOffer: false, proxyAck: false };
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
const s = createSocket({ type: 'udp4', reuseAddr: true });
const done = () => got.serverAck && got.proxyOffer && got.proxyAck;
const timer = setTimeout(() => {
  out({ timeout: got });
  process.exit(1);
}, a.deadlineMs);

s.on('message', (m, r) => {
  const d = decodeDhcp(m);
  if (!d.ok) return;
  const p = d.packet;
  const type = messageType(p);
  out({ from: `${r.address}:${r.port}`, xid: p.xid, type, yiaddr: p.yiaddr, siaddr: p.siaddr, file: p.file, serverId: serverId(p), vendorClass: vendorClass(p) });
  if (p.xid !== XB) return;
  const fromProxy = serverId(p) === a.proxy;
  if (type === T.OFFER && !fromProxy && !got.serverOffer) {
    got.serverOffer = p.yiaddr;
    s.send(clientMessage({ mac: a.mac, xid: XB, type: T.REQUEST, requested: p.yiaddr, serverId: serverId(p), ...FIRMWARE.seabiosPxe }), 67, '255.255.255.255');
  } else if (type === T.ACK && !fromProxy) got.serverAck = true;
  else if (type === T.OFFER && fromProxy && !got.proxyOffer) {
    got.proxyOffer = true;
    // PXE 2.1: with an address in hand, ask the proxy's boot service on 4011 (here from the probe's own address).
    s.send(clientMessage({ mac: a.mac, xid: XB, type: T.REQUEST, ciaddr: '0.0.0.0', ...FIRMWARE.seabiosPxe }), 4011, a.proxy);
  } else if (type === T.ACK && fromProxy) got.proxyAck = true;
  if (done()) {
    clearTimeout(timer);
    out({ done: got });
    s.close();
  }
});
s.bind(68, '0.0.0.0', () => {
  s.setBroadcast(true);
  s.send(clientMessage({ mac: a.plainMac, xid: XA }), 67, '255.255.255.255');
  s.send(clientMessage({ mac: a.mac, xid: XB, uuid: '8f1c2b3a-4d5e-6f70-8192-a3b4c5d6e7f8', ...FIRMWARE.seabiosPxe }), 67, '255.255.255.255');
});
