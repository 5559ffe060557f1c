/**
 * Where the DHCP server keeps its leases. `LeaseStore` is the interface the server uses; `MemoryLeaseStore`
 * is the only implementation so far: leases live as long as the process.
 *
 * TODO(provisioning): a store-backed implementation (migration `0016_dhcp_leases`, writes through
 * `Store.transact` with `tx.emit` so leases show in the API and event stream). The server only calls the
 * methods below, synchronously, so swapping the implementation does not touch the protocol code.
 */

/** One address binding (RFC 2131 §4.3). Times are milliseconds since the epoch. */
export interface Lease {
  /** Client hardware address, `aa:bb:cc:dd:ee:ff`. */
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
  /** SMBIOS UUID (option 97) and architecture (option 93), for discovery later. */
  uuid?: string;
  arch?: number;
}

/** Lease persistence used by `DhcpResponder`. All methods are synchronous and must not throw on a miss. */
export interface LeaseStore {
  /** Every lease, expired ones included until they are replaced or removed. */
  list(): Lease[];
  /** The lease held by a client (by MAC), if any. */
  byMac(mac: string): Lease | undefined;
  /** The lease on an address, if any. */
  byIp(ip: string): Lease | undefined;
  /** Writes a lease, replacing the client's previous one and any other lease on the same address. */
  put(lease: Lease): void;
  /** Forgets a client's lease. */
  remove(mac: string): void;
}

/** In-memory `LeaseStore`: two maps kept consistent. */
export class MemoryLeaseStore implements LeaseStore {
  private readonly macs = new Map<string, Lease>();
  private readonly ips = new Map<string, Lease>();

  list(): Lease[] {
    return [...this.macs.values()].map((l) => ({ ...l }));
  }

  byMac(mac: string): Lease | undefined {
    const l = this.macs.get(mac);
    return l ? { ...l } : undefined;
  }

  byIp(ip: string): Lease | undefined {
    const l = this.ips.get(ip);
    return l ? { ...l } : undefined;
  }

  put(lease: Lease): void {
    this.remove(lease.mac);
    const other = this.ips.get(lease.ip);
    if (other) this.macs.delete(other.mac);
    const copy = { ...lease };
    this.macs.set(lease.mac, copy);
    this.ips.set(lease.ip, copy);
  }

  remove(mac: string): void {
    const l = this.macs.get(mac);
    if (!l) return;
    this.macs.delete(mac);
    if (this.ips.get(l.ip) === l) this.ips.delete(l.ip);
  }
}
