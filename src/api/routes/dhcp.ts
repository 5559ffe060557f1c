/**
 * The DHCP leases of `takt serve --provision … --dhcp full|proxy`, under /api/v1/dhcp/leases. Admin only.
 * The DHCP server keeps them in memory and writes them through to the store (table `dhcp_leases`,
 * src/provision/dhcp/leases.ts `StoredLeases`), so they survive a restart of the endpoint.
 */
import type { FastifyInstance } from 'fastify';
import { TaktError } from '../../model/errors.js';
import type { ApiContext } from '../context.js';

/** One address binding as the API shows it (RFC 2131 §4.3); `expiresAt` is ISO 8601. */
export interface DhcpLeaseAnswer {
  /** Client hardware address, `aa:bb:cc:dd:ee:ff` (`declined:<ip>` for an address a client declined). */
  mac: string;
  ip: string;
  /** `offered` (held between OFFER and REQUEST), `bound` (ACKed) or `declined` (reported in use). */
  state: 'offered' | 'bound' | 'declined';
  expiresAt: string;
  /** Option 12 as the client sent it. */
  hostname?: string;
  /** Option 97 (client UUID) as the client sent it. */
  uuid?: string;
  /** Option 93 (RFC 4578 §2.1): 0 BIOS, 7/9 x86-64 UEFI, 16 UEFI HTTP boot. */
  arch?: number;
  /** The machine that boots from this MAC (its boot settings), when there is one. */
  machine?: string;
  /** Whether the address is that machine's reservation (`boot.ip`). */
  reserved?: boolean;
}

/** What the route needs of the DHCP service (src/provision/service.ts's DhcpServer); null when DHCP is off. */
export type DhcpLeasesPort = () => DhcpLeaseAnswer[] | null;

export function dhcpRoutes(app: FastifyInstance, ctx: ApiContext) {
  app.get('/api/v1/dhcp/leases', { config: { permission: 'dhcp:read' } }, async () => {
    const items = ctx.dhcpLeases?.() ?? null;
    if (items === null) throw new TaktError('not_found', 'this endpoint runs no DHCP server (takt serve --provision ADDR/PREFIX --dhcp full|proxy)');
    // Names rather than MACs where a machine boots from the MAC: one read for the page of leases.
    const macs = [...new Set(items.map((l) => l.mac).filter((m) => !m.startsWith('declined:')))];
    const byMac = new Map<string, { name: string; ip?: string }>();
    for (let i = 0; i < macs.length; i += 200) {
      for (const m of await ctx.store.listMachinesWithBootText(macs.slice(i, i + 200))) {
        for (const mac of m.boot?.macs ?? []) byMac.set(mac, { name: m.name, ...(m.boot?.ip ? { ip: m.boot.ip } : {}) });
      }
    }
    return {
      items: items.map((l) => {
        const m = byMac.get(l.mac);
        return m ? { ...l, machine: m.name, ...(m.ip === l.ip ? { reserved: true } : {}) } : l;
      }),
    };
  });
}
