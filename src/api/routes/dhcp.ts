/**
 * The DHCP leases of `takt serve --provision … --dhcp full|proxy`, under /api/v1/dhcp/leases. Admin only.
 * Leases live in the DHCP server's memory (src/provision/dhcp/leases.ts): a restart forgets them.
 */
import type { FastifyInstance } from 'fastify';
import { TaktError } from '../../model/errors.js';
import type { ApiContext } from '../context.js';

/** One address binding as the API shows it (RFC 2131 §4.3); `expiresAt` is ISO 8601. */
export interface DhcpLeaseAnswer {
  /** Client hardware address, `aa:bb:cc:dd:ee:ff`. */
  mac: string;
  ip: string;
  /** `offered` (held between OFFER and REQUEST), `bound` (ACKed) or `declined` (reported in use). */
  state: 'offered' | 'bound' | 'declined';
  expiresAt: string;
  /** Option 12 as the client sent it. */
  hostname?: string;
  /** Option 97 (client UUID) as the client sent it. */
  uuid?: string;
}

/** What the route needs of the DHCP service (src/provision/service.ts's DhcpServer); null when DHCP is off. */
export type DhcpLeasesPort = () => DhcpLeaseAnswer[] | null;

export function dhcpRoutes(app: FastifyInstance, ctx: ApiContext) {
  app.get('/api/v1/dhcp/leases', async () => {
    const items = ctx.dhcpLeases?.() ?? null;
    if (items === null) throw new TaktError('not_found', 'this endpoint runs no DHCP server (takt serve --provision ADDR/PREFIX --dhcp full|proxy)');
    return { items };
  });
}
