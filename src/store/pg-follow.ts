/**
 * Events across replicas on PostgreSQL: every store on one database hears every committed event, its own
 * and those other processes (replicas) commit, each exactly once and in id order.
 *
 * How. Each committed group of transactions that wrote events also sends `NOTIFY takt_events, '<newest
 * id>'` (pg_notify, inside the transaction, so it is delivered only if and after it commits), carrying
 * the group's events themselves in as many notifications as they take (each payload under PostgreSQL's
 * 8000-byte bound; sql-store.ts `notifySql`); events that do not fit are left out of the payloads. Each store
 * LISTENs on a connection of its own; on a notification newer than what it has published, it publishes
 * the events that rode along if the first follows its cursor, and otherwise (a gap, or events left out)
 * reads the events table from its cursor (`id > cursor order by id`) and publishes what it finds to its
 * listeners (`Store.onEvents`). A periodic bounded catch-up (default every 3 s) covers a notification that was lost,
 * and a LISTEN connection that breaks is re-made with bounded backoff and catches up from the cursor.
 *
 * Why reading `id > cursor` never skips an event that commits later. Event ids are drawn (from the
 * column's sequence) only by a transaction that holds, until it ends, a lock every other drawer needs too:
 * a store-scoped transaction holds the write advisory lock (sql-store.ts PG_WRITE_LOCK) exclusively from
 * its first statement; a row-scoped group holds it shared, which excludes the former, and draws its ids at
 * its end under DRAW_LOCK, which excludes every other row-scoped group's draw. So ids are drawn by one
 * transaction at a time, and a transaction's locks are released only after its commit is visible: when a
 * statement's snapshot shows the event with id n committed, every transaction that drew an id below n has
 * already committed (its events are visible too) or rolled back (its ids are holes that will never be
 * filled). Ids may have holes (rolled-back transactions, a sequence
 * that jumped after a crash, pruned events), so the follower never waits for an id: it treats what it reads
 * as final up to the newest id it read or was notified of.
 *
 * Own commits. A store's own group is published from memory, as on SQLite, when its first id follows the
 * cursor (no query: a lone endpoint stays as fast as before). Otherwise the ids between the cursor and the
 * group's first id may hold other replicas' events not yet read (say the group got 12–13 while 10–11 came
 * from another replica): they are read and published first, then the group's own. All publication runs
 * through one serial queue per store, and an id at or below the cursor is never published again, so a
 * group that a notification-triggered read already published is not published twice.
 */
import pg from 'pg';
import type { TaktEvent } from '../model/machine.js';
import { PG_EVENTS_CHANNEL, type EventFeed } from './sql-store.js';

/** Events read per query; a read of more loops page by page. */
const PAGE = 1000;
/** Pages one catch-up reads at most before it yields the queue (and queues itself again). */
const MAX_PAGES = 100;
/** Bounds of the backoff between attempts to re-make a broken LISTEN connection, in milliseconds. */
const RECONNECT_MIN_MS = 100;
const RECONNECT_MAX_MS = 5000;

/** What the follower needs from its store and database. */
export interface PgFollowerOptions {
  /** The database's URL (the LISTEN connection is opened on it). */
  url: string;
  /** Type parsers for the LISTEN connection (postgres.ts). */
  types: pg.ClientConfig['types'];
  /** Events with id > `afterId` in id order, at most `limit` (Reads.listEvents). */
  read: (afterId: number, limit: number) => Promise<TaktEvent[]>;
  /** The newest event id in the table, 0 when it is empty. */
  newest: () => Promise<number>;
  /** Hands events to the store's listeners (in order; never throws). */
  publish: (events: TaktEvent[]) => void;
  /** Milliseconds between periodic catch-ups (default 3000). */
  catchUpMs?: number;
  /** Reports trouble that the follower survives (a broken connection, a failed read). */
  warn?: (message: string) => void;
}

/**
 * Follows the events table of a PostgreSQL database for one store (see the header comment).
 * Lifecycle: `start()` once (LISTEN, cursor at the newest event), `close()` once.
 */
export class PgFollower implements EventFeed {
  /** The newest id published (or known final: holes and pruned events below it are passed). */
  private cursor = 0;
  /** The newest id drawn by this store's open group (0 when none): notifications up to it need no read. */
  private drawnUpTo = 0;
  /** The newest id any notification announced. */
  private heard = 0;
  private tail: Promise<void> = Promise.resolve();
  /** Tasks queued or running on `tail`. */
  private busy = 0;
  private catchUpQueued = false;
  private client: pg.Client | undefined;
  private timer: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private backoff = RECONNECT_MIN_MS;
  private closed = false;
  /** LISTEN connections made so far (1 after start; more after each re-made one). */
  connections = 0;
  /** Events published from notifications' payloads, without a read (tests look at it). */
  carried = 0;
  private readonly warn: (message: string) => void;

  constructor(private readonly opts: PgFollowerOptions) {
    this.warn = opts.warn ?? ((m) => process.emitWarning(m));
  }

  /**
   * Listens, then sets the cursor at the newest event (events committed before the store opened are not
   * published; a listener that needs them reads them, as the events route does with Last-Event-ID).
   * @throws whatever connecting fails with (the caller closes the store and reports it unreachable).
   */
  async start(): Promise<void> {
    await this.connect();
    try {
      this.cursor = await this.opts.newest();
    } catch (err) {
      await this.close();
      throw err;
    }
    // A notification that came between LISTEN and the read above may have been taken as old: look once.
    this.catchUp();
    const every = this.opts.catchUpMs ?? 3000;
    this.timer = setInterval(() => this.catchUp(), every);
    this.timer.unref();
  }

  /** The server process id of the LISTEN connection (undefined while it is being re-made). */
  get listenPid(): number | undefined {
    return (this.client as (pg.Client & { processID?: number }) | undefined)?.processID;
  }

  /** Whether the LISTEN connection is up. */
  get listening(): boolean {
    return this.client !== undefined;
  }

  private async connect(): Promise<void> {
    const client = new pg.Client({ connectionString: this.opts.url, types: this.opts.types });
    let broken = false;
    const lost = (why: string) => {
      if (broken) return;
      broken = true;
      if (this.client === client) this.client = undefined;
      void client.end().catch(() => undefined);
      if (this.closed) return;
      this.warn(`PostgreSQL event listener connection lost (${why}); re-making it, then catching up`);
      this.scheduleReconnect();
    };
    client.on('error', (err) => lost(err.message));
    client.on('end', () => lost('connection ended'));
    client.on('notification', (n) => {
      if (n.channel === PG_EVENTS_CHANNEL) this.heardPayload(n.payload ?? '');
    });
    try {
      await client.connect();
      await client.query(`listen ${PG_EVENTS_CHANNEL}`);
    } catch (err) {
      broken = true;
      await client.end().catch(() => undefined);
      throw err;
    }
    if (this.closed) {
      broken = true;
      await client.end().catch(() => undefined);
      return;
    }
    this.client = client;
    this.connections += 1;
  }

  private scheduleReconnect(): void {
    if (this.closed || this.retry) return;
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, RECONNECT_MAX_MS);
    this.retry = setTimeout(() => {
      this.retry = undefined;
      this.connect().then(
        () => {
          this.backoff = RECONNECT_MIN_MS;
          // Whatever was committed while nobody listened.
          this.catchUp();
        },
        (err: unknown) => {
          if (this.closed) return;
          this.warn(`PostgreSQL event listener cannot reconnect: ${(err as Error).message}; trying again`);
          this.scheduleReconnect();
        },
      );
    }, delay);
    this.retry.unref();
  }

  /**
   * A notification's payload (sql-store.ts `notifySql`): `<newest id>` alone, or `<newest id>:<events>`,
   * a JSON array of `[id, topic, at, data]` with consecutive ids, a part of the group's events that rode
   * along. The JSON is parsed only when the events are not already published (own groups, mostly).
   */
  private heardPayload(payload: string): void {
    const colon = payload.indexOf(':');
    if (colon < 0) return this.notified(Number(payload));
    const id = Number(payload.slice(0, colon));
    if (!Number.isFinite(id)) return;
    if (id <= this.cursor || id <= this.drawnUpTo) return this.notified(id);
    let events: TaktEvent[] | undefined;
    try {
      events = (JSON.parse(payload.slice(colon + 1)) as Array<[number, string, string, unknown]>).map(([eid, topic, at, data]) => ({ id: eid, topic, at, data }));
    } catch {
      events = undefined;
    }
    this.notified(id, events);
  }

  /**
   * Another process committed events up to `id`. `events`, when they rode along: published at once if
   * the first follows the cursor (nothing can come between: ids are drawn in commit order, and
   * notifications arrive in commit order); a later part of the same group comes next. Otherwise (a gap,
   * or no events), the table is read from the cursor.
   */
  private notified(id: number, events?: TaktEvent[]): void {
    if (!Number.isFinite(id)) return;
    if (id > this.heard) this.heard = id;
    // Up to drawnUpTo, the own group's publication reads any gap before it (and catches up after it).
    if (!(id > this.cursor && id > this.drawnUpTo)) return;
    if (events !== undefined && events.length > 0 && events[0]!.id === this.cursor + 1) {
      this.deliver(events);
      this.carried += events.length;
      return;
    }
    this.catchUp();
  }

  /** Runs `task` after every task queued before it; a task that fails is reported, not retried. */
  private enqueue(task: () => Promise<void>): Promise<void> {
    this.busy += 1;
    const run = this.tail.then(task).catch((err: unknown) => this.warn(`reading events failed: ${(err as Error).message ?? String(err)}`));
    this.tail = run.finally(() => {
      this.busy -= 1;
    });
    return this.tail;
  }

  /** Publishes events with ids above the cursor (ascending) and moves the cursor to the last. */
  private deliver(events: TaktEvent[]): void {
    const fresh = events.filter((e) => e.id > this.cursor);
    if (fresh.length === 0) return;
    this.cursor = fresh[fresh.length - 1]!.id;
    this.opts.publish(fresh);
  }

  /** Queues a read of everything after the cursor (at most one queued at a time). */
  private catchUp(): void {
    if (this.closed || this.catchUpQueued) return;
    this.catchUpQueued = true;
    void this.enqueue(async () => {
      this.catchUpQueued = false;
      if (this.closed) return;
      // Notified ids are committed: if the read finds nothing up to one, it was pruned or never existed.
      const known = this.heard;
      for (let page = 0; page < MAX_PAGES; page++) {
        const events = await this.opts.read(this.cursor, PAGE);
        this.deliver(events);
        if (events.length < PAGE) {
          if (known > this.cursor) this.cursor = known;
          return;
        }
      }
      this.catchUp();
    });
  }

  drawn(id: number): void {
    if (id > this.drawnUpTo) this.drawnUpTo = id;
  }

  own(batches: TaktEvent[][]): Promise<void> | undefined {
    const first = batches[0]?.[0]?.id;
    if (first === undefined) {
      this.settled();
      return undefined;
    }
    if (this.busy === 0 && first === this.cursor + 1) {
      for (const b of batches) this.deliver(b);
      this.settled();
      return undefined;
    }
    return this.enqueue(async () => {
      try {
        // Ids below `first` are final (the write and draw locks): read the ones after the cursor, publish, then ours.
        for (let page = 0; this.cursor < first - 1 && page < MAX_PAGES * 10; page++) {
          const events = await this.opts.read(this.cursor, PAGE);
          this.deliver(events.filter((e) => e.id < first));
          if (events.length < PAGE || events[events.length - 1]!.id >= first) break;
        }
      } finally {
        // Even when the read failed: our own events are never withheld, and never published out of order.
        if (this.cursor < first - 1) this.cursor = first - 1;
        for (const b of batches) this.deliver(b);
        this.settled();
      }
    });
  }

  failed(): void {
    this.settled();
  }

  /** The own group is over: a notification taken as covered by it, but not, is caught up now. */
  private settled(): void {
    this.drawnUpTo = 0;
    if (this.heard > this.cursor) this.catchUp();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    clearTimeout(this.retry);
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => undefined);
    await this.tail;
  }
}
