/**
 * Writes the audit log (model/audit.ts) in batches, reads it, and prunes it.
 *
 * Entries are buffered and written in groups through Store.transact, so a burst of requests costs one
 * transaction, not one each. A write's entry is *durable*: the API waits for the group that holds it
 * before it answers (api/audit.ts), so no write is ever acknowledged without its entry — a crash can lose
 * only the entries of writes whose answers never left. Other entries (reads of secrets, refusals) are
 * flushed within FLUSH_MS; a crash can lose those of the last FLUSH_MS.
 *
 * Pruning: every PRUNE_EVERY_MS each endpoint asks the store for the turn (Store `takeTurn`, one
 * conditional write), so of several replicas on one database one prunes per period.
 */
import { AUDIT_KEEP_DAYS, type AuditEntry, type AuditFilter, type AuditRecord } from '../model/audit.js';
import type { Store } from '../store/store.js';

/** Non-durable entries wait at most this long for their group (ms). */
export const FLUSH_MS = 1000;
/** A group this large is written at once. */
const GROUP_MAX = 500;
/** Entries kept while the store refuses them (an outage): beyond this the oldest are dropped, counted, logged. */
const BUFFER_MAX = 50_000;
/** How often an endpoint asks for the pruning turn (ms). */
export const PRUNE_EVERY_MS = 10 * 60_000;
/** The setting that records the last pruning turn (Store `takeTurn`). */
export const PRUNE_TURN_KEY = 'audit.pruned';

type Log = (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;

export interface AuditLogOptions {
  /** Entries older than this many days are pruned (default 90). */
  keepDays?: number;
  log?: Log;
  /** The clock (tests). */
  now?: () => number;
}

export class AuditLog {
  private buffer: AuditRecord[] = [];
  /** Waiters for the group that will hold the entries buffered now. */
  private waiters: Array<() => void> = [];
  private flushing: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private pruner: NodeJS.Timeout | null = null;
  private dropped = 0;
  private closed = false;
  private everyMs = PRUNE_EVERY_MS;
  readonly keepDays: number;

  constructor(
    private readonly store: Store,
    private readonly opts: AuditLogOptions = {},
  ) {
    this.keepDays = opts.keepDays ?? AUDIT_KEEP_DAYS.default;
  }

  private now(): number {
    return this.opts.now?.() ?? Date.now();
  }

  /**
   * Queues an entry. `durable`: the returned promise settles once the entry is committed (or the store
   * refused it, which is logged: a request is never failed for its audit entry); otherwise it settles at once.
   */
  record(entry: AuditRecord, durable: boolean): Promise<void> {
    if (this.buffer.length >= BUFFER_MAX) {
      this.buffer.shift();
      this.dropped += 1;
    }
    this.buffer.push(entry);
    if (durable || this.buffer.length >= GROUP_MAX || this.closed) {
      const done = new Promise<void>((resolve) => this.waiters.push(resolve));
      this.kick();
      return durable ? done : Promise.resolve();
    }
    if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.kick();
      }, FLUSH_MS);
      this.timer.unref();
    }
    return Promise.resolve();
  }

  /** Starts a flush unless one is running (that one's end starts the next: group commit). */
  private kick(): void {
    if (this.flushing) return;
    this.flushing = this.drain().finally(() => {
      this.flushing = null;
      if (this.waiters.length > 0) this.kick();
    });
  }

  private async drain(): Promise<void> {
    while (this.buffer.length > 0) {
      const group = this.buffer;
      const waiters = this.waiters;
      this.buffer = [];
      this.waiters = [];
      try {
        await this.store.transact((tx) => tx.insertAudit(group));
      } catch (err) {
        // Kept for the next flush (bounded): the store may be back by then.
        this.buffer = [...group, ...this.buffer].slice(-BUFFER_MAX);
        this.opts.log?.('error', `could not write ${group.length} audit entr${group.length === 1 ? 'y' : 'ies'}; kept to retry: ${(err as Error).message}`);
        for (const w of waiters) w();
        if (!this.timer && !this.closed) {
          this.timer = setTimeout(() => {
            this.timer = null;
            this.kick();
          }, FLUSH_MS);
          this.timer.unref();
        }
        return;
      }
      for (const w of waiters) w();
      if (this.dropped > 0) {
        this.opts.log?.('error', `dropped ${this.dropped} audit entries while the store refused them`);
        this.dropped = 0;
      }
    }
  }

  /** Writes whatever is buffered now (and waits for a flush under way). */
  async flush(): Promise<void> {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.buffer.length > 0) {
      const done = new Promise<void>((resolve) => this.waiters.push(resolve));
      this.kick();
      await done;
    }
    await this.flushing;
  }

  /** Entries matching `filter`, newest first. */
  list(filter: AuditFilter): Promise<AuditEntry[]> {
    return this.store.listAudit(filter);
  }

  /**
   * Deletes entries older than `keepDays` if this endpoint gets the turn (at most one replica per period).
   * @returns how many were deleted, or null when another replica had the turn.
   */
  async prune(): Promise<number | null> {
    const now = this.now();
    const nowIso = new Date(now).toISOString();
    // Due when the last turn (anyone's) is at least one period old, less a second of clock skew.
    const due = new Date(now - this.everyMs + 1000).toISOString();
    const before = new Date(now - this.keepDays * 86_400_000).toISOString();
    return this.store.transact(async (tx) => ((await tx.takeTurn(PRUNE_TURN_KEY, nowIso, due)) ? tx.pruneAudit(before) : null));
  }

  /** Prunes now and then every PRUNE_EVERY_MS (`everyMs` for tests). */
  startPruning(everyMs = PRUNE_EVERY_MS): void {
    this.everyMs = everyMs;
    const run = () =>
      void this.prune()
        .then((n) => {
          if (n) this.opts.log?.('info', `pruned ${n} audit entr${n === 1 ? 'y' : 'ies'} older than ${this.keepDays} days`);
        })
        .catch((err: Error) => this.opts.log?.('error', `audit pruning failed: ${err.message}`));
    run();
    this.pruner = setInterval(run, everyMs);
    this.pruner.unref();
  }

  /** Stops the timers and writes what is buffered. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.pruner) clearInterval(this.pruner);
    await this.flush().catch(() => undefined);
  }
}
