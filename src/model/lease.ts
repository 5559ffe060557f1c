/**
 * A DHCP address binding (RFC 2131 §4.3), as the DHCP server (src/provision/dhcp) keeps it and the store
 * (table `dhcp_leases`, migration 0022_leases) persists it. Pure data.
 */

/** One address binding. Times are milliseconds since the epoch. */
export interface Lease {
  /**
   * Client hardware address, `aa:bb:cc:dd:ee:ff`; for a declined address (DHCPDECLINE, nobody's) the key
   * `declined:<ip>`.
   */
  mac: string;
  ip: string;
  /**
   * `offered`: held for the client between OFFER and REQUEST (short); `bound`: ACKed; `declined`: the
   * client reported the address in use (DHCPDECLINE), so nobody gets it until it expires.
   */
  state: 'offered' | 'bound' | 'declined';
  expiresAt: number;
  /** Option 61, hex, if the client sent one. */
  clientId?: string;
  /** Option 12 as the client sent it. */
  hostname?: string;
  /** SMBIOS UUID (option 97) and architecture (option 93, RFC 4578 §2.1), for discovery later. */
  uuid?: string;
  arch?: number;
}
