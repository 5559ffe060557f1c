/**
 * DHCP codec, boot-client classification and the DHCP responder (full and proxy mode), without sockets.
 * Client messages carry the option values measured from real firmware (provisioning facts §1).
 */
import { describe, expect, it } from 'vitest';
import { bootAnswer, classifyClient, defaultBootFiles, type BootFiles } from '../src/provision/dhcp/classify.js';
import { MemoryLeaseStore } from '../src/provision/dhcp/leases.js';
import {
  clientArch,
  clientNdi,
  clientUuid,
  decodeDhcp,
  DhcpDecodeError,
  DhcpMessageType as T,
  encodeDhcp,
  ipxeOptions,
  messageType,
  Opt,
  optv,
  serverId,
  userClasses,
  vendorSpecific,
  type DhcpPacket,
} from '../src/provision/dhcp/packet.js';
import { DhcpResponder, validateDhcpConfig, type DhcpConfig } from '../src/provision/dhcp/server.js';
import { clientMessage, clientPacket, FIRMWARE } from './helpers/dhcp.js';

const UUID = '8f1c2b3a-4d5e-6f70-8192-a3b4c5d6e7f8';
const MAC = '52:54:00:12:34:56';

function decode(b: Buffer): DhcpPacket {
  const r = decodeDhcp(b);
  if (!r.ok) throw r.error;
  return r.packet;
}

describe('DHCP codec', () => {
  it('round-trips a message with the iPXE BIOS options', () => {
    const p = decode(clientMessage({ mac: MAC, uuid: UUID, ...FIRMWARE.ipxeBios }));
    expect(messageType(p)).toBe(T.DISCOVER);
    expect(clientArch(p)).toEqual([0]);
    expect(clientNdi(p)).toEqual({ type: 1, major: 2, minor: 1 });
    expect(clientUuid(p)).toBe(UUID);
    expect(userClasses(p)).toEqual(['iPXE']);
    expect(ipxeOptions(p)?.get(19)).toEqual(Buffer.from([1]));
    expect(encodeDhcp(p)).toEqual(clientMessage({ mac: MAC, uuid: UUID, ...FIRMWARE.ipxeBios }));
  });

  it.each([
    ['bare string (iPXE)', Buffer.from('iPXE'), ['iPXE']],
    ['RFC 3004 list', Buffer.from('\x04iPXE\x03foo', 'latin1'), ['iPXE', 'foo']],
    ['length byte that overruns → one bare class', Buffer.from('\x09ab', 'latin1'), ['\tab']],
  ])('option 77 as %s', (_n, raw, want) => {
    expect(userClasses(decode(clientMessage({ mac: MAC, userClass: raw })))).toEqual(want);
  });

  it('joins a long option split in parts (RFC 3396) and splits it again when encoding', () => {
    const p = clientPacket({ mac: MAC });
    const long = Buffer.alloc(600, 7);
    p.options.set(Opt.VENDOR_SPECIFIC, long);
    const wire = encodeDhcp(p);
    expect(decode(wire).options.get(Opt.VENDOR_SPECIFIC)).toEqual(long);
  });

  it('reads options overloaded into file and sname (option 52), in the order options → file → sname', () => {
    const p = clientPacket({ mac: MAC });
    p.options.set(Opt.OVERLOAD, optv.u8(3));
    p.options.delete(Opt.HOST_NAME);
    const wire = encodeDhcp(p);
    // file (108..235): host name part 1; sname (44..107): host name part 2 + vendor class
    wire.write('\x0c\x03abc\xff', 108, 'latin1');
    wire.write('\x0c\x02de\x3c\x03xyz\xff', 44, 'latin1');
    const d = decode(wire);
    expect(d.options.get(Opt.HOST_NAME)?.toString()).toBe('abcde');
    expect(d.options.get(Opt.VENDOR_CLASS)?.toString()).toBe('xyz');
    expect(d.file).toBe('');
    expect(d.sname).toBe('');
  });

  it.each([
    ['empty', Buffer.alloc(0), 'too short'],
    ['header only', Buffer.alloc(236, 1), 'too short'],
    ['no cookie', Buffer.concat([Buffer.from([1, 1, 6, 0]), Buffer.alloc(240)]), 'magic cookie'],
    ['bad op', Buffer.concat([Buffer.from([9, 1, 6, 0]), Buffer.alloc(240)]), 'op 9'],
    ['hlen 17', Buffer.concat([Buffer.from([1, 1, 17, 0]), Buffer.alloc(240)]), 'hardware address length'],
  ])('refuses %s with a typed error', (_n, buf, msg) => {
    const r = decodeDhcp(buf);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.error).toBeInstanceOf(DhcpDecodeError);
      expect(r.error.code).toBe('bad_request');
      expect(r.error.message).toContain(msg);
    }
  });

  it('refuses an option whose length runs past the end', () => {
    const wire = clientMessage({ mac: MAC });
    const cut = Buffer.concat([wire.subarray(0, 240), Buffer.from([Opt.HOST_NAME, 40, 65, 65])]);
    const r = decodeDhcp(cut);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error.message).toMatch(/option 12 \(length 40\) runs past the end .* at byte 240/);
  });
});

const files: BootFiles = { ...defaultBootFiles('http://10.216.0.1:8080'), efiIa32: 'ipxe-ia32.efi', httpBootUrl: 'http://10.216.0.1:8080/boot/ipxe.efi' };

describe('boot-client classification (facts §1 table)', () => {
  it.each([
    ['qemu iPXE ROM, BIOS', FIRMWARE.ipxeBios, 'ipxe', 'bios', `http://10.216.0.1:8080/boot/52-54-00-12-34-56.ipxe?uuid=${UUID}&firmware=bios`],
    ['qemu iPXE EFI ROM / ipxe.efi', FIRMWARE.ipxeEfi, 'ipxe', 'efi-x64', `http://10.216.0.1:8080/boot/52-54-00-12-34-56.ipxe?uuid=${UUID}&firmware=efi-x64`],
    ['iPXE by option 175 alone', { ...FIRMWARE.ipxeBios, userClass: undefined }, 'ipxe', 'bios', `http://10.216.0.1:8080/boot/52-54-00-12-34-56.ipxe?uuid=${UUID}&firmware=bios`],
    ['iPXE by option 77 alone', { ...FIRMWARE.ipxeBios, ipxe175: false }, 'ipxe', 'bios', `http://10.216.0.1:8080/boot/52-54-00-12-34-56.ipxe?uuid=${UUID}&firmware=bios`],
    ['SeaBIOS PXE ROM (arch 0)', FIRMWARE.seabiosPxe, 'pxe', 'bios', 'tftp:undionly.kpxe'],
    ['OVMF own PXE (arch 7) — trap 4: never undionly.kpxe', FIRMWARE.ovmfPxe, 'pxe', 'efi-x64', 'tftp:ipxe.efi'],
    ['UEFI x64 arch 9', { vendorClass: 'PXEClient:Arch:00009:UNDI:003000', arch: 9 }, 'pxe', 'efi-x64', 'tftp:ipxe.efi'],
    ['UEFI ia32 arch 6', { vendorClass: 'PXEClient:Arch:00006:UNDI:003000', arch: 6 }, 'pxe', 'efi-ia32', 'tftp:ipxe-ia32.efi'],
    ['OVMF HTTP boot', FIRMWARE.ovmfHttp, 'http', 'unknown', 'http://10.216.0.1:8080/boot/ipxe.efi'],
    ['HTTP boot by arch 16', { arch: 16 }, 'http', 'efi-x64', 'http://10.216.0.1:8080/boot/ipxe.efi'],
    ['PXE ROM without option 93', { vendorClass: 'PXEClient' }, 'pxe', 'unknown', 'tftp:undionly.kpxe'],
    ['PXE ROM with an unknown arch', { vendorClass: 'PXEClient:Arch:00011', arch: 11 }, 'pxe', 'unknown', 'none'],
    ['plain DHCP client', FIRMWARE.plain, 'none', 'unknown', 'none'],
  ])('%s', (_n, spec, kind, firmware, boot) => {
    const c = classifyClient(decode(clientMessage({ mac: MAC, uuid: UUID, ...spec })));
    expect(c.kind).toBe(kind);
    expect(c.firmware).toBe(firmware);
    const a = bootAnswer(c, files);
    expect(a.kind === 'tftp' ? `tftp:${a.file}` : a.kind === 'http' ? a.url : 'none').toBe(boot);
  });

  it('snponly.efi is a configuration choice for UEFI', () => {
    const c = classifyClient(decode(clientMessage({ mac: MAC, ...FIRMWARE.ovmfPxe })));
    expect(bootAnswer(c, { ...files, efiX64: 'snponly.efi' })).toEqual({ kind: 'tftp', file: 'snponly.efi' });
  });

  it('ia32 without a configured binary has no answer, with the reason', () => {
    const c = classifyClient(decode(clientMessage({ mac: MAC, vendorClass: 'PXEClient:Arch:00006', arch: 6 })));
    expect(bootAnswer(c, defaultBootFiles('http://x'))).toEqual({ kind: 'none', reason: expect.stringContaining('arch 6') });
  });
});

const SERVER = '10.216.0.1';
const fullConfig: DhcpConfig = {
  mode: 'full',
  serverIp: SERVER,
  boot: files,
  subnet: {
    subnet: '10.216.0.0/24',
    rangeStart: '10.216.0.100',
    rangeEnd: '10.216.0.102',
    reservations: [{ mac: '52:54:00:00:00:09', ip: '10.216.0.9', hostname: 'pxe-9' }],
    leaseSeconds: 600,
    routers: ['10.216.0.1'],
    dns: ['10.216.0.1'],
    domain: 'boot.test',
  },
};

function responder(cfg: DhcpConfig = fullConfig, clock = { t: 1_000_000 }) {
  const log: unknown[] = [];
  const r = new DhcpResponder(cfg, new MemoryLeaseStore(), { now: () => clock.t, log: (e) => log.push(e) });
  return { r, log, clock };
}
const from = { address: '0.0.0.0', port: 68 };

describe('full DHCP server', () => {
  it('DISCOVER → OFFER → REQUEST → ACK with network options, a lease, and boot info for iPXE incl. 175.176=1', () => {
    const { r } = responder();
    const offer = r.handle(clientMessage({ mac: MAC, uuid: UUID, ...FIRMWARE.ipxeBios }), from);
    expect(offer).not.toBeNull();
    const o = offer!.packet;
    expect(messageType(o)).toBe(T.OFFER);
    expect(o.yiaddr).toBe('10.216.0.100');
    expect(offer!.address).toBe('255.255.255.255');
    expect(offer!.port).toBe(68);
    expect(serverId(o)).toBe(SERVER);
    expect(o.options.get(Opt.LEASE_TIME)?.readUInt32BE(0)).toBe(600);
    expect(o.file).toBe(`http://10.216.0.1:8080/boot/52-54-00-12-34-56.ipxe?uuid=${UUID}&firmware=bios`);
    expect(ipxeOptions(o)?.get(176)).toEqual(Buffer.from([1]));
    // the ACK
    const ack = r.handle(clientMessage({ mac: MAC, type: T.REQUEST, requested: '10.216.0.100', serverId: SERVER, ...FIRMWARE.ipxeBios }), from);
    expect(messageType(ack!.packet)).toBe(T.ACK);
    expect(ack!.packet.yiaddr).toBe('10.216.0.100');
    expect(r.leases.list()).toEqual([expect.objectContaining({ mac: MAC, ip: '10.216.0.100', state: 'bound', expiresAt: 1_000_000 + 600_000, arch: 0 })]);
  });

  it('a plain PXE ROM gets siaddr + the TFTP file for its arch, option 60 PXEClient and 43 discovery control 8', () => {
    const { r } = responder();
    const o = r.handle(clientMessage({ mac: MAC, ...FIRMWARE.ovmfPxe }), from)!.packet;
    expect(o.siaddr).toBe(SERVER);
    expect(o.file).toBe('ipxe.efi');
    expect(o.options.get(Opt.VENDOR_CLASS)?.toString()).toBe('PXEClient');
    expect(vendorSpecific(o)?.get(6)).toEqual(Buffer.from([8]));
    expect(o.options.has(Opt.IPXE)).toBe(false);
  });

  it.each<[string, string, string]>([
    ['a renewing client in the subnet is answered by unicast', '10.216.0.100', '10.216.0.100'],
    ['a ciaddr outside the subnet (mangled, or a moved client) is answered by broadcast', '0.93.0.0', '255.255.255.255'],
  ])('%s', (_what, ciaddr, to) => {
    const { r } = responder();
    expect(r.handle(clientMessage({ mac: MAC, ciaddr, ...FIRMWARE.ipxeBios }), from)?.address).toBe(to);
  });

  it('a non-PXE client gets an address and no boot info', () => {
    const { r } = responder();
    const o = r.handle(clientMessage({ mac: MAC }), from)!.packet;
    expect(o.yiaddr).toBe('10.216.0.100');
    expect(o.file).toBe('');
    expect(o.options.has(Opt.BOOTFILE)).toBe(false);
  });

  it('a reserved MAC gets its address and host name; nobody else gets that address', () => {
    const { r } = responder();
    const o = r.handle(clientMessage({ mac: '52:54:00:00:00:09' }), from)!.packet;
    expect(o.yiaddr).toBe('10.216.0.9');
    expect(o.options.get(Opt.HOST_NAME)?.toString()).toBe('pxe-9');
    const nak = r.handle(clientMessage({ mac: MAC, type: T.REQUEST, requested: '10.216.0.9', serverId: SERVER }), from)!.packet;
    expect(messageType(nak)).toBe(T.NAK);
  });

  it('hands out each address once; a full range gets no offer; an expired lease is reused', () => {
    const { r, clock, log } = responder();
    const ips: string[] = [];
    for (let i = 0; i < 3; i++) {
      const mac = `52:54:00:aa:00:0${i}`;
      const o = r.handle(clientMessage({ mac }), from)!.packet;
      ips.push(o.yiaddr);
      r.handle(clientMessage({ mac, type: T.REQUEST, requested: o.yiaddr, serverId: SERVER }), from);
    }
    expect(new Set(ips).size).toBe(3);
    expect(r.handle(clientMessage({ mac: '52:54:00:aa:00:09' }), from)).toBeNull();
    expect(log.at(-1)).toMatchObject({ event: 'ignored', reason: expect.stringContaining('no free address') });
    clock.t += 601_000;
    expect(r.handle(clientMessage({ mac: '52:54:00:aa:00:09' }), from)!.packet.yiaddr).toBe('10.216.0.100');
  });

  it('the same client keeps its address on a second DISCOVER and on renewal (unicast to ciaddr)', () => {
    const { r } = responder();
    r.handle(clientMessage({ mac: MAC }), from);
    r.handle(clientMessage({ mac: MAC, type: T.REQUEST, requested: '10.216.0.100', serverId: SERVER }), from);
    expect(r.handle(clientMessage({ mac: MAC }), from)!.packet.yiaddr).toBe('10.216.0.100');
    const renew = r.handle(clientMessage({ mac: MAC, type: T.REQUEST, ciaddr: '10.216.0.100', broadcast: false }), from)!;
    expect(messageType(renew.packet)).toBe(T.ACK);
    expect(renew.address).toBe('10.216.0.100');
  });

  it('a REQUEST for another server releases the offer silently; a foreign address is NAKed (broadcast)', () => {
    const { r } = responder();
    r.handle(clientMessage({ mac: MAC }), from);
    expect(r.handle(clientMessage({ mac: MAC, type: T.REQUEST, requested: '10.9.9.9', serverId: '10.216.0.77' }), from)).toBeNull();
    expect(r.leases.list()).toEqual([]);
    const nak = r.handle(clientMessage({ mac: MAC, type: T.REQUEST, requested: '192.168.1.5' }), from)!;
    expect(messageType(nak.packet)).toBe(T.NAK);
    expect(nak.address).toBe('255.255.255.255');
  });

  it('DECLINE blocks the address; RELEASE frees it', () => {
    const { r } = responder();
    r.handle(clientMessage({ mac: MAC }), from);
    r.handle(clientMessage({ mac: MAC, type: T.REQUEST, requested: '10.216.0.100', serverId: SERVER }), from);
    r.handle(clientMessage({ mac: MAC, type: T.DECLINE, requested: '10.216.0.100', serverId: SERVER }), from);
    expect(r.handle(clientMessage({ mac: MAC }), from)!.packet.yiaddr).toBe('10.216.0.101');
    r.handle(clientMessage({ mac: MAC, type: T.REQUEST, requested: '10.216.0.101', serverId: SERVER }), from);
    r.handle(clientMessage({ mac: MAC, type: T.RELEASE, ciaddr: '10.216.0.101' }), from);
    expect(r.leases.byMac(MAC)).toBeUndefined();
  });

  it('INFORM gets options without an address or lease (unicast to ciaddr); one from outside the subnet is ignored', () => {
    const { r } = responder();
    const ack = r.handle(clientMessage({ mac: MAC, type: T.INFORM, ciaddr: '10.216.0.33', broadcast: false }), from)!;
    expect(messageType(ack.packet)).toBe(T.ACK);
    expect(ack.address).toBe('10.216.0.33');
    expect(ack.packet.yiaddr).toBe('0.0.0.0');
    expect(ack.packet.options.has(Opt.LEASE_TIME)).toBe(false);
    // Found by the namespace fuzz: a garbage ciaddr made the server try to unicast to 0.93.0.0.
    expect(r.handle(clientMessage({ mac: MAC, type: T.INFORM, ciaddr: '0.93.0.0' }), from)).toBeNull();
  });

  it('relayed messages: answered to giaddr:67 with option 82 echoed; giaddr outside the subnet ignored', () => {
    const { r } = responder();
    const relay = optv.encap([[1, Buffer.from('eth7')]]);
    const rep = r.handle(clientMessage({ mac: MAC, giaddr: '10.216.0.254', relay }), from)!;
    expect(rep.address).toBe('10.216.0.254');
    expect(rep.port).toBe(67);
    expect(rep.packet.options.get(Opt.RELAY_AGENT)).toEqual(relay);
    expect(r.handle(clientMessage({ mac: MAC, giaddr: '172.16.0.1' }), from)).toBeNull();
  });

  it('never answers a BOOTREPLY, a message without type, or a non-Ethernet client', () => {
    const { r } = responder();
    const reply = clientPacket({ mac: MAC });
    reply.op = 2;
    expect(r.handle(encodeDhcp(reply), from)).toBeNull();
    const untyped = clientPacket({ mac: MAC });
    untyped.options.delete(Opt.MESSAGE_TYPE);
    expect(r.handle(encodeDhcp(untyped), from)).toBeNull();
    const ib = clientPacket({ mac: MAC });
    ib.htype = 32;
    expect(r.handle(encodeDhcp(ib), from)).toBeNull();
  });

  it.each([
    [{ ...fullConfig, serverIp: '10.216.1.1' }, 'serverIp'],
    [{ ...fullConfig, subnet: { ...fullConfig.subnet!, rangeEnd: '10.216.1.5' } }, 'subnet.rangeEnd'],
    [{ ...fullConfig, subnet: { ...fullConfig.subnet!, rangeStart: '10.216.0.50', rangeEnd: '10.216.0.40' } }, 'subnet.rangeEnd'],
    [{ ...fullConfig, subnet: { ...fullConfig.subnet!, subnet: '10.216.0.0/33' } }, 'subnet.subnet'],
    [{ ...fullConfig, subnet: { ...fullConfig.subnet!, reservations: [{ mac: 'zz', ip: '10.216.0.9' }] } }, 'subnet.reservations[0].mac'],
    [{ ...fullConfig, subnet: undefined }, 'subnet'],
  ])('refuses a bad configuration with the field path (%#)', (cfg, path) => {
    expect(() => validateDhcpConfig(cfg as DhcpConfig)).toThrow(expect.objectContaining({ code: 'invalid', path }));
  });
});

describe('proxyDHCP', () => {
  const proxyConfig: DhcpConfig = { mode: 'proxy', serverIp: SERVER, boot: files };

  it('offers boot info and no address to a PXE ROM; ignores a plain client', () => {
    const { r, log } = responder(proxyConfig);
    const o = r.handle(clientMessage({ mac: MAC, uuid: UUID, ...FIRMWARE.seabiosPxe }), from)!;
    expect(messageType(o.packet)).toBe(T.OFFER);
    expect(o.packet.yiaddr).toBe('0.0.0.0');
    expect(o.packet.siaddr).toBe(SERVER);
    expect(o.packet.file).toBe('undionly.kpxe');
    expect(o.packet.options.get(Opt.VENDOR_CLASS)?.toString()).toBe('PXEClient');
    expect(o.packet.options.has(Opt.LEASE_TIME)).toBe(false);
    expect(r.handle(clientMessage({ mac: '52:54:00:99:99:99' }), from)).toBeNull();
    expect(log.at(-1)).toMatchObject({ event: 'ignored', reason: expect.stringContaining('not a PXE client') });
    expect(r.leases.list()).toEqual([]);
  });

  it('does not answer REQUESTs on port 67 (the real server does); answers them on 4011, unicast to the sender', () => {
    const { r } = responder(proxyConfig);
    expect(r.handle(clientMessage({ mac: MAC, type: T.REQUEST, requested: '10.216.0.50', serverId: '10.216.0.2', ...FIRMWARE.ipxeEfi }), from)).toBeNull();
    const ack = r.handle(clientMessage({ mac: MAC, type: T.REQUEST, ciaddr: '10.216.0.50', ...FIRMWARE.ipxeEfi }), { address: '10.216.0.50', port: 68 }, 'pxe')!;
    expect(messageType(ack.packet)).toBe(T.ACK);
    expect(ack.address).toBe('10.216.0.50');
    expect(ack.packet.file).toContain('firmware=efi-x64');
  });
});
