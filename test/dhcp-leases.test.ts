/**
 * DHCP leases kept in the store (`StoredLeases`, migration 0022_leases), reservations that change while
 * the server runs (`ReservationSource`, fed by machines' `boot.ip`), and the `boot.ip` setting itself.
 * Over the wire (restart, `takt dhcp leases`, 409 naming the holder): test/provision-leases.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { patchBoot, type MachineBoot } from '../src/model/boot.js';
import type { TaktEvent } from '../src/model/machine.js';
import { StoredLeases, type Lease } from '../src/provision/dhcp/leases.js';
import { DhcpMessageType as T, messageType } from '../src/provision/dhcp/packet.js';
import { DhcpResponder, type DhcpConfig, type Reservation, type ReservationSource } from '../src/provision/dhcp/server.js';
import { inSubnet } from '../src/provision/service.js';
import { defaultBootFiles } from '../src/provision/dhcp/classify.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import { clientMessage, FIRMWARE } from './helpers/dhcp.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('boot.ip', () => {
  const base: MachineBoot = { macs: ['52:54:00:00:00:01'], uuid: null, firmware: null, bootenv: 'local' };
  it.each<[string, string | null, unknown]>([
    ['keeps a dotted quad', '10.0.0.20', { ...base, ip: '10.0.0.20' }],
    ['trims it', ' 10.0.0.20 ', { ...base, ip: '10.0.0.20' }],
    ['forgets it with null', null, base],
    ["forgets it with ''", '', base],
    ['refuses an octet over 255', '10.0.0.300', 'boot.ip: "10.0.0.300" is not an IPv4 address (like 10.0.0.20)'],
    ['refuses leading zeros (octal to some tools)', '10.0.0.020', 'boot.ip: "10.0.0.020" is not an IPv4 address'],
    ['refuses IPv6', 'fd00::20', 'boot.ip: "fd00::20" is not an IPv4 address'],
  ])('%s', (_what, ip, want) => {
    const f = () => patchBoot({ ...base, ip: '10.9.9.9' }, { ip });
    if (typeof want === 'string') expect(f).toThrow(want);
    else expect(f()).toEqual(want);
  });

  it.each<[string, string, boolean]>([
    ['10.0.0.20', '10.0.0.0/24', true],
    ['10.0.0.0', '10.0.0.0/24', false],
    ['10.0.0.255', '10.0.0.0/24', false],
    ['10.0.1.20', '10.0.0.0/24', false],
    ['10.219.7.250', '10.219.4.0/22', true],
  ])('inSubnet(%s, %s) = %s', (ip, subnet, want) => expect(inSubnet(ip, subnet)).toBe(want));
});

describe('StoredLeases', () => {
  it('writes through to the store in batches, with events, and a reopened store has the same leases', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'takt-leases-'));
    dirs.push(dir);
    const file = join(dir, 'takt.db');
    let store = await openSqliteStore(file);
    const events: TaktEvent[] = [];
    store.onEvents((e) => events.push(...e));
    const leases = await StoredLeases.load(store);
    const l = (mac: string, ip: string, state: Lease['state'] = 'bound'): Lease => ({ mac, ip, state, expiresAt: 1_800_000_000_000, arch: 7, uuid: '8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d' });
    leases.put(l('52:54:00:00:00:01', '10.0.0.100', 'offered'));
    leases.put(l('52:54:00:00:00:01', '10.0.0.100')); // same client: only the last state is written
    leases.put(l('52:54:00:00:00:02', '10.0.0.101'));
    leases.put(l('52:54:00:00:00:03', '10.0.0.102'));
    leases.put(l('52:54:00:00:00:04', '10.0.0.102')); // takes .102 from :03
    leases.remove('52:54:00:00:00:02');
    leases.put({ mac: 'declined:10.0.0.103', ip: '10.0.0.103', state: 'declined', expiresAt: 1_800_000_000_000 });
    await leases.flush();
    const want = [l('52:54:00:00:00:01', '10.0.0.100'), l('52:54:00:00:00:04', '10.0.0.102'), { mac: 'declined:10.0.0.103', ip: '10.0.0.103', state: 'declined', expiresAt: 1_800_000_000_000 }];
    expect(await store.listLeases()).toEqual(want);
    expect(events.map((e) => e.topic)).toContain('leases.update.52-54-00-00-00-04');
    expect(events.map((e) => e.topic)).toContain('leases.delete.52-54-00-00-00-02');
    expect(events.map((e) => e.topic)).toContain('leases.update.declined-10-0-0-103');
    await store.close();

    store = await openSqliteStore(file);
    const again = await StoredLeases.load(store);
    expect(again.list().sort((a, b) => a.ip.localeCompare(b.ip))).toEqual(want);
    expect(again.byIp('10.0.0.102')?.mac).toBe('52:54:00:00:00:04');
    await store.close();
  });
});

describe('reservations that change while the server runs', () => {
  const SERVER = '10.216.0.1';
  const cfg: DhcpConfig = { mode: 'full', serverIp: SERVER, boot: defaultBootFiles('http://10.216.0.1:8080'), subnet: { subnet: '10.216.0.0/24', rangeStart: '10.216.0.100', rangeEnd: '10.216.0.101' } };
  const from = { address: '0.0.0.0', port: 68 };
  /** A machine `rack-1` with two MACs reserving .20, and one reserving .100 (inside the range). */
  const table = new Map<string, Reservation>([
    ['52:54:00:00:00:a1', { mac: '52:54:00:00:00:a1', ip: '10.216.0.20', hostname: 'rack-1' }],
    ['52:54:00:00:00:a2', { mac: '52:54:00:00:00:a2', ip: '10.216.0.20', hostname: 'rack-1' }],
    ['52:54:00:00:00:b1', { mac: '52:54:00:00:00:b1', ip: '10.216.0.100', hostname: 'rack-2' }],
    ['52:54:00:00:00:c1', { mac: '52:54:00:00:00:c1', ip: '10.99.0.5', hostname: 'elsewhere' }],
  ]);
  const source: ReservationSource = {
    byMac: (mac) => table.get(mac),
    byIp: (ip) => [...table.values()].find((r) => r.ip === ip)?.mac,
  };
  const make = async () => {
    const dir = mkdtempSync(join(tmpdir(), 'takt-resv-'));
    dirs.push(dir);
    const store = await openSqliteStore(join(dir, 'takt.db'));
    return { store, r: new DhcpResponder(cfg, await StoredLeases.load(store), { reservations: source }) };
  };
  const offer = (r: DhcpResponder, mac: string, requested?: string) => r.handle(clientMessage({ mac, ...(requested ? { requested } : {}), ...FIRMWARE.ipxeBios }), from)?.packet;

  it.each<[string, string, string | undefined, string | null]>([
    ['a reserved MAC gets its address', '52:54:00:00:00:a1', undefined, '10.216.0.20'],
    ['the same machine booting from its other NIC gets it too', '52:54:00:00:00:a2', undefined, '10.216.0.20'],
    ['a stranger never gets a reserved address in the range', '52:54:00:00:00:f1', undefined, '10.216.0.101'],
    ['nor when it asks for it', '52:54:00:00:00:f1', '10.216.0.100', '10.216.0.101'],
    ['a reservation outside the subnet is ignored: an address from the range', '52:54:00:00:00:c1', undefined, '10.216.0.101'],
  ])('%s', async (_what, mac, requested, want) => {
    const { store, r } = await make();
    expect(offer(r, mac, requested)?.yiaddr ?? null).toBe(want);
    await store.close();
  });

  it('a REQUEST for a reserved address from another client is NAKed; the host name is the machine name', async () => {
    const { store, r } = await make();
    const nak = r.handle(clientMessage({ mac: '52:54:00:00:00:f1', type: T.REQUEST, requested: '10.216.0.20', serverId: SERVER, ...FIRMWARE.ipxeBios }), from)!.packet;
    expect(messageType(nak)).toBe(T.NAK);
    const o = offer(r, '52:54:00:00:00:a1')!;
    expect(o.options.get(12)?.toString()).toBe('rack-1');
    await store.close();
  });
});
