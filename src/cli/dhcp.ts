/**
 * `takt dhcp leases`: the DHCP leases of an endpoint started with `takt serve --provision … --dhcp full|proxy`
 * (GET /api/v1/dhcp/leases), with the machine that boots from each MAC by name.
 */
import type { Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import type { DhcpLeaseAnswer } from '../api/routes/dhcp.js';
import type { GlobalOptions } from './client.js';
import { examples } from './help.js';
import { print, renderTable } from './output.js';

/** RFC 4578 §2.1 architecture numbers as people say them. */
const ARCH: Record<number, string> = { 0: 'bios', 6: 'efi-ia32', 7: 'efi-x64', 9: 'efi-x64', 10: 'efi-arm32', 11: 'efi-arm64', 16: 'efi-x64-http' };

const columns = [
  { header: 'MACHINE', get: (l: DhcpLeaseAnswer) => l.machine ?? l.hostname ?? null },
  { header: 'MAC', get: (l: DhcpLeaseAnswer) => (l.mac.startsWith('declined:') ? null : l.mac) },
  { header: 'IP', get: (l: DhcpLeaseAnswer) => `${l.ip}${l.reserved ? ' (reserved)' : ''}` },
  { header: 'STATE', get: (l: DhcpLeaseAnswer) => l.state },
  { header: 'FIRMWARE', get: (l: DhcpLeaseAnswer) => (l.arch === undefined ? null : (ARCH[l.arch] ?? `arch ${l.arch}`)) },
  { header: 'EXPIRES', get: (l: DhcpLeaseAnswer) => l.expiresAt },
];

export function dhcpCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
  const cmd = program
    .command('dhcp')
    .description('the DHCP server of takt serve --provision ADDR/PREFIX --dhcp full|proxy')
    .addHelpText('after', examples('takt dhcp leases', 'takt dhcp leases -o json'));
  cmd
    .command('leases')
    .description('addresses handed out: machine (by the MAC it boots from), MAC, address, state, firmware, expiry; kept across restarts')
    .addHelpText('after', examples('takt dhcp leases', 'takt dhcp leases -o json | jq -r \'.[] | select(.state == "bound") | .ip\''))
    .action(async () => {
      const r = await api().get<{ items: DhcpLeaseAnswer[] }>('/dhcp/leases');
      print(g().output, r.items, () => renderTable(r.items, columns));
    });
}
