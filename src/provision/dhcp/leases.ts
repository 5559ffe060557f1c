/**
 * Where the DHCP server keeps its leases. `LeaseStore` is the interface the server uses (synchronously);
 * `MemoryLeaseStore` keeps leases as long as the process, `StoredLeases` writes them through to takt's
 * store (table `dhcp_leases`, migration 0022_leases) so that a restarted endpoint knows them again.
 */
import type { Lease } from '../../model/lease.js';
import type { Store } from '../../store/store.js';

export type { Lease } from '../../model/lease.js';

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

/** Topic segment for a lease key (`52:54:00:…` → `52-54-00-…`; `declined:10.0.0.5` → `declined-10-0-0-5`). */
function topicId(mac: string): string {
  return mac.replace(/[:.]/g, '-');
}

/**
 * A `LeaseStore` backed by takt's store: an in-memory index (the server's reads and writes stay
 * synchronous and fast) written through to the `dhcp_leases` table. Writes are queued and committed in
 * batches — every change made while one commit runs goes into the next — through `Store.transact`, the
 * store's one commit path, each with an event `leases.update.<mac>` / `leases.delete.<mac>` (MAC with `-`).
 * Only the latest state of a MAC is written, so a burst of OFFER/REQUEST for one client costs one row write.
 *
 * Use `StoredLeases.load(store)` (reads every kept lease into the index) before starting the server, and
 * `flush()` before closing the store. A failed commit is reported through `onError` and its writes are
 * retried with the next batch (bounded: the queue holds one entry per MAC).
 */
export class StoredLeases implements LeaseStore {
  private readonly index = new MemoryLeaseStore();
  /** MAC → the lease to write, or null to delete. */
  private queued = new Map<string, Lease | null>();
  private committing: Promise<void> | null = null;

  private constructor(
    private readonly store: Store,
    private readonly onError: (e: Error) => void,
  ) {}

  /** Opens the leases kept in `store`. @throws what the store throws when it cannot be read. */
  static async load(store: Store, opts: { onError?: (e: Error) => void } = {}): Promise<StoredLeases> {
    const s = new StoredLeases(store, opts.onError ?? (() => undefined));
    for (const l of await store.listLeases()) s.index.put(l);
    return s;
  }

  list(): Lease[] {
    return this.index.list();
  }

  byMac(mac: string): Lease | undefined {
    return this.index.byMac(mac);
  }

  byIp(ip: string): Lease | undefined {
    return this.index.byIp(ip);
  }

  put(lease: Lease): void {
    const other = this.index.byIp(lease.ip);
    if (other && other.mac !== lease.mac) this.queued.set(other.mac, null);
    this.index.put(lease);
    this.queued.set(lease.mac, { ...lease });
    this.kick();
  }

  remove(mac: string): void {
    if (!this.index.byMac(mac)) return;
    this.index.remove(mac);
    this.queued.set(mac, null);
    this.kick();
  }

  /** Resolves when every change made so far is committed (or its commit failed and was reported). */
  async flush(): Promise<void> {
    // Bounded: each round commits what was queued before it; a round that fails leaves its writes queued.
    for (let round = 0; round < 3 && (this.committing || this.queued.size > 0); round++) {
      if (!this.committing) this.kick();
      await this.committing;
    }
  }

  private kick(): void {
    if (this.committing) return;
    this.committing = (async () => {
      while (this.queued.size > 0) {
        const batch = this.queued;
        this.queued = new Map();
        try {
          await this.store.transact(async (tx) => {
            for (const [mac, l] of batch) {
              if (l) await tx.putLease(l);
              else await tx.deleteLease(mac);
              tx.emit(`leases.${l ? 'update' : 'delete'}.${topicId(mac)}`, l ? { mac, ip: l.ip, state: l.state, expiresAt: new Date(l.expiresAt).toISOString() } : { mac });
            }
          });
        } catch (e) {
          // Keep what was not superseded meanwhile, for the next batch; report and stop this round.
          for (const [mac, l] of batch) if (!this.queued.has(mac)) this.queued.set(mac, l);
          this.onError(e as Error);
          break;
        }
      }
    })().finally(() => {
      this.committing = null;
    });
  }
}
