/**
 * Builders of DHCP client messages for tests, with the exact option values the provisioning facts file
 * measured from real firmware (§1 "What iPXE sends").
 */
import { BOOTREQUEST, DhcpMessageType, encodeDhcp, Opt, optv, type DhcpPacket } from '../../src/provision/dhcp/packet.js';

/** What a simulated client sends. */
export interface ClientSpec {
  mac: string;
  xid?: number;
  type?: number;
  vendorClass?: string;
  arch?: number;
  /** Raw option 77 bytes (iPXE: the bare string `iPXE`). */
  userClass?: Buffer;
  /** Send option 175 (iPXE feature flags). */
  ipxe175?: boolean;
  ndi?: [number, number, number];
  /** SMBIOS UUID text; sent as option 97 type 0 in SMBIOS byte order. */
  uuid?: string;
  requested?: string;
  serverId?: string;
  ciaddr?: string;
  giaddr?: string;
  broadcast?: boolean;
  relay?: Buffer;
  hostname?: string;
}

/** Option 97 bytes for a UUID text (first three fields little-endian, as SMBIOS stores them). */
export function uuidOption(uuid: string): Buffer {
  const h = uuid.replaceAll('-', '');
  const b = Buffer.from(h, 'hex');
  const g = Buffer.concat([Buffer.from(b.subarray(0, 4)).reverse(), Buffer.from(b.subarray(4, 6)).reverse(), Buffer.from(b.subarray(6, 8)).reverse(), b.subarray(8)]);
  return Buffer.concat([Buffer.from([0]), g]);
}

/** 48 bytes of iPXE feature flags as qemu's iPXE ROM sends them in option 175 (shape, not exact flags). */
export const IPXE_175 = optv.encap([
  [16, optv.u8(1)], // PXEEXT
  [19, optv.u8(1)], // HTTP
  [21, optv.u8(1)], // DNS
  [24, optv.u8(1)], // TFTP
  [33, optv.u8(1)], // bzImage
  [34, optv.u8(1)], // Multiboot
  [35, optv.u8(1)], // iSCSI
  [39, optv.u8(1)], // Menu
  [235, Buffer.from([1, 0, 0, 0x82])], // version 1.0.0+
  [17, optv.u8(1)], // PXE
  [25, optv.u8(1)], // NFS
  [36, optv.u8(1)], // AoE
  [235 - 1, optv.u8(1)],
]);

/** A client message (DISCOVER unless `type` says otherwise) as a DhcpPacket. */
export function clientPacket(c: ClientSpec): DhcpPacket {
  const options = new Map<number, Buffer>();
  options.set(Opt.MESSAGE_TYPE, optv.u8(c.type ?? DhcpMessageType.DISCOVER));
  if (c.requested) options.set(Opt.REQUESTED_IP, optv.ips(c.requested));
  if (c.serverId) options.set(Opt.SERVER_ID, optv.ips(c.serverId));
  options.set(Opt.PARAM_REQUEST_LIST, Buffer.from([1, 3, 6, 12, 15, 17, 43, 60, 66, 67, 119, 128, 129, 175, 203]));
  options.set(Opt.MAX_MESSAGE_SIZE, optv.u16(1472));
  if (c.vendorClass) options.set(Opt.VENDOR_CLASS, optv.str(c.vendorClass));
  if (c.arch !== undefined) options.set(Opt.CLIENT_ARCH, optv.u16(c.arch));
  if (c.ndi) options.set(Opt.CLIENT_NDI, Buffer.from(c.ndi));
  if (c.uuid) options.set(Opt.CLIENT_UUID, uuidOption(c.uuid));
  if (c.userClass) options.set(Opt.USER_CLASS, c.userClass);
  if (c.ipxe175) options.set(Opt.IPXE, IPXE_175);
  if (c.hostname) options.set(Opt.HOST_NAME, optv.str(c.hostname));
  if (c.relay) options.set(Opt.RELAY_AGENT, c.relay);
  const mac = Buffer.from(c.mac.replaceAll(':', ''), 'hex');
  options.set(Opt.CLIENT_ID, Buffer.concat([Buffer.from([1]), mac]));
  const chaddr = Buffer.alloc(16);
  mac.copy(chaddr);
  return {
    op: BOOTREQUEST,
    htype: 1,
    hlen: 6,
    hops: 0,
    xid: c.xid ?? 0x1234abcd,
    secs: 0,
    flags: c.broadcast === false ? 0 : 0x8000,
    ciaddr: c.ciaddr ?? '0.0.0.0',
    yiaddr: '0.0.0.0',
    siaddr: '0.0.0.0',
    giaddr: c.giaddr ?? '0.0.0.0',
    chaddr,
    sname: '',
    file: '',
    options,
  };
}

/** Encoded client message. */
export const clientMessage = (c: ClientSpec): Buffer => encodeDhcp(clientPacket(c));

/** The clients of the facts file's table, by name. */
export const FIRMWARE = {
  ipxeBios: { vendorClass: 'PXEClient:Arch:00000:UNDI:002001', arch: 0, userClass: Buffer.from('iPXE'), ipxe175: true, ndi: [1, 2, 1] as [number, number, number] },
  ipxeEfi: { vendorClass: 'PXEClient:Arch:00007:UNDI:003010', arch: 7, userClass: Buffer.from('iPXE'), ipxe175: true, ndi: [1, 3, 10] as [number, number, number] },
  ovmfPxe: { vendorClass: 'PXEClient:Arch:00007:UNDI:003000', arch: 7, ndi: [1, 3, 0] as [number, number, number] },
  ovmfHttp: { vendorClass: 'HTTPClient:Arch:00016:UNDI:003000' },
  seabiosPxe: { vendorClass: 'PXEClient:Arch:00000:UNDI:002001', arch: 0, ndi: [1, 2, 1] as [number, number, number] },
  plain: {},
};
