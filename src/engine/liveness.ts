/**
 * Agent liveness: whether each machine's agent (or the SSH broker driving it) is in touch with the
 * endpoint, when it was last heard from, its version and address.
 *
 * - **Heard**: any request authenticated with the machine's token (claim, log, heartbeat, complete, …),
 *   recorded once per request by the API's authentication hook through `Engine.heard`, or a contact the
 *   SSH broker reports the same way.
 * - **Connected**: a claim long-poll of the machine is open on this endpoint now, or it was heard within
 *   the window (`--agent-gone-after`, default 135 s: twice the longest claim wait the API allows, 60 s,
 *   plus 15 s of slack). A live agent is never quiet that long: it is either long-polling or sending
 *   heartbeats every lease/3 while it runs a job.
 * - **Disconnected**: the window passed with nothing heard and no long-poll open. A timer sweeps the
 *   machines in the order they went quiet and stops at the first one still inside the window, looking at
 *   no more than `maxPerSweep` per sweep.
 *
 * The decision lives in memory (one Map lookup and a few comparisons per request); the store keeps what
 * an operator reads, written in batches, one transaction per batch: at once when connected flips or the
 * version, address or transport changes (with a `machines.update.<id>` event), otherwise `lastSeenAt`
 * at most once per `throttleMs` per machine (no event). A busy fleet thus writes no row per request.
 */
import type { AgentLiveness, Machine, MachineStatus } from '../model/machine.js';

/** The longest claim long-poll the API allows (seconds; `wait` of POST /machines/:id/claim). */
export const MAX_CLAIM_WAIT_S = 60;
/** Default window after which a quiet machine is disconnected: 2 × the longest claim wait + 15 s. */
export const DEFAULT_GONE_AFTER_MS = 2 * MAX_CLAIM_WAIT_S * 1000 + 15_000;
/** Default: `lastSeenAt` is written at most this often per machine while nothing else changes. */
export const DEFAULT_SEEN_THROTTLE_MS = 15_000;
/** Writes per store transaction. */
const BATCH = 500;

export type Transport = 'agent' | 'ssh';

/** What one contact tells: the agent's version and address when known (null/absent: keep what is known). */
export interface Contact {
  version?: string | null;
  address?: string | null;
  via: Transport;
}

/** One machine's liveness as this endpoint tracks it (times in ms since the epoch). */
export interface Tracked {
  connected: boolean;
  /** Last contact; null: never heard (only for entries made from the store). */
  seenMs: number | null;
  /** Last contact or the end of a long-poll (or a start-up's grace): the window counts from here. */
  activityMs: number;
  sinceMs: number;
  version: string | null;
  address: string | null;
  via: Transport | null;
  /** Claim long-polls open now. */
  polls: number;
}

/** What was last written to the store for a machine (to decide the next write). */
export interface Written {
  connected: boolean;
  seenMs: number | null;
  version: string | null;
  address: string | null;
  via: Transport | null;
}

/** Connected: a long-poll is open, or there was activity within the window (inclusive). Pure. */
export function isConnected(t: Pick<Tracked, 'polls' | 'activityMs'>, nowMs: number, windowMs: number): boolean {
  return t.polls > 0 || nowMs - t.activityMs <= windowMs;
}

/**
 * Whether the store needs this state, and whether operators should hear of it. Pure.
 * - `emit`: first write, connected flipped, or version/address/transport changed (write now, with an event);
 * - `write`: only `seenMs` moved on, and the last write is `throttleMs` old or more (no event);
 * - `none`: nothing worth a write.
 */
export function persistDecision(written: Written | null, next: Written, nowMs: number, throttleMs: number): 'emit' | 'write' | 'none' {
  if (!written || written.connected !== next.connected || written.version !== next.version || written.address !== next.address || written.via !== next.via) return 'emit';
  if (next.seenMs !== null && next.seenMs !== written.seenMs && (written.seenMs === null || nowMs - written.seenMs >= throttleMs)) return 'write';
  return 'none';
}

/** The state after a contact at `nowMs`; a version or address the contact does not give is kept. Pure. */
export function afterContact(prev: Tracked | undefined, c: Contact, nowMs: number): Tracked {
  return {
    connected: true,
    seenMs: nowMs,
    activityMs: nowMs,
    sinceMs: prev?.connected ? prev.sinceMs : nowMs,
    version: c.version ?? prev?.version ?? null,
    address: c.address ?? prev?.address ?? null,
    via: c.via,
    polls: prev?.polls ?? 0,
  };
}

const VERSION_RE = /^takt-agent\/([0-9A-Za-z][0-9A-Za-z.+_-]{0,63})(?:\s|$)/;

/**
 * The agent version from a `user-agent` header (`takt-agent/<version>`, optionally followed by more
 * product tokens); null for any other client, or a version that is not a short plain token.
 */
export function agentVersion(userAgent: string | undefined): string | null {
  return userAgent ? (VERSION_RE.exec(userAgent)?.[1] ?? null) : null;
}

/** A peer address as operators read it: an IPv4 address mapped into IPv6 (`::ffff:10.0.0.5`) unmapped. */
export function peerAddress(ip: string | undefined): string | null {
  if (!ip) return null;
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
}

/** The status operators read: `waiting-for-agent` when the machine has work and no agent. Pure. */
export function machineStatus(m: Pick<Machine, 'state' | 'power' | 'agent'>): MachineStatus {
  return m.state === 'running' && m.power === 'on' && !m.agent.connected ? 'waiting-for-agent' : m.state;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

function record(t: Tracked): AgentLiveness {
  return { connected: t.connected, lastSeenAt: iso(t.seenMs), version: t.version, address: t.address, via: t.via, since: iso(t.sinceMs)! };
}

const written = (t: Tracked): Written => ({ connected: t.connected, seenMs: t.seenMs, version: t.version, address: t.address, via: t.via });

/** One machine's liveness for the store. */
export interface LivenessWrite {
  machineId: string;
  agent: AgentLiveness;
  /** Emit `machines.update.<id>`: connected flipped, or version/address/transport changed. */
  emit: boolean;
  /**
   * A disconnect this endpoint's sweep decided: the writer skips it when the store shows a contact within
   * the window that this endpoint did not see (another replica heard the machine), and answers its id.
   */
  sweptAt: number | null;
}

export interface LivenessOptions {
  /** Quiet this long (ms) with no long-poll open: disconnected. */
  windowMs: number;
  /** `lastSeenAt` written at most this often per machine when nothing else changes (ms). */
  throttleMs: number;
  /** How often the sweep runs (ms); default a quarter of the window, 100 ms – 5 s. */
  sweepMs?: number;
  /** Machines looked at per sweep at most (default 1000); the rest wait for the next sweep. */
  maxPerSweep?: number;
  /** The clock (ms since the epoch); injected by tests. */
  now?: () => number;
  /**
   * Writes one batch in one transaction. Answers the ids of swept writes it skipped because the store
   * knew of a later contact (they are taken as heard now). Errors are logged; the state is written again
   * on its next change.
   */
  persist: (writes: LivenessWrite[]) => Promise<string[]>;
  log?: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
}

/** Tracks every machine's liveness in memory and keeps the store up to date (see the module comment). */
export class Liveness {
  private readonly tracked = new Map<string, Tracked>();
  private readonly written = new Map<string, Written>();
  /** Connected machines with no long-poll open, in the order of their last activity (oldest first). */
  private readonly quiet = new Map<string, number>();
  /** Machines whose state must be written; `emit` once any change since the last write asked for it. */
  private readonly dirty = new Map<string, { emit: boolean; sweptAt: number | null }>();
  private flushing: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly now: () => number;

  constructor(private readonly opts: LivenessOptions) {
    this.now = opts.now ?? Date.now;
  }

  get windowMs(): number {
    return this.opts.windowMs;
  }

  /** Starts the sweep timer (unref'd: it never keeps the process alive). */
  start(): void {
    if (this.timer) return;
    const every = this.opts.sweepMs ?? Math.min(5000, Math.max(100, Math.floor(this.opts.windowMs / 4)));
    this.timer = setInterval(() => this.sweep(), every);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /**
   * Machines the store shows connected when this endpoint starts: they stay so for one window from now
   * (their agents reconnect after a restart, with backoff), then go like any other quiet machine.
   */
  seed(machines: Array<Pick<Machine, 'id' | 'agent'>>): void {
    const now = this.now();
    for (const m of machines) {
      if (this.tracked.has(m.id) || !m.agent.connected) continue;
      const t: Tracked = {
        connected: true,
        seenMs: m.agent.lastSeenAt ? Date.parse(m.agent.lastSeenAt) : null,
        activityMs: now,
        sinceMs: Date.parse(m.agent.since),
        version: m.agent.version,
        address: m.agent.address,
        via: m.agent.via,
        polls: 0,
      };
      this.tracked.set(m.id, t);
      this.written.set(m.id, written(t));
      this.quiet.set(m.id, now);
    }
  }

  /** A contact with the machine (see Engine.heard). Cheap: no I/O unless a write is due. */
  heard(machineId: string, c: Contact): void {
    const now = this.now();
    const prev = this.tracked.get(machineId);
    const t = afterContact(prev, c, now);
    // Kept as the same object: an open long-poll's closer holds on to it.
    if (prev) Object.assign(prev, t);
    else this.tracked.set(machineId, t);
    if (t.polls === 0) {
      this.quiet.delete(machineId);
      this.quiet.set(machineId, now);
    }
    this.decide(machineId, prev ?? t, now, null);
  }

  /** The SSH broker lost the machine (see Engine.gone): disconnected now, not after the window. */
  gone(machineId: string): void {
    const t = this.tracked.get(machineId);
    if (!t?.connected) return;
    const now = this.now();
    t.connected = false;
    t.sinceMs = now;
    this.quiet.delete(machineId);
    this.decide(machineId, t, now, null);
  }

  /** A claim long-poll opened; the answer closes it. While one is open the machine is connected. */
  pollOpened(machineId: string): () => void {
    const t = this.tracked.get(machineId);
    if (!t) return () => {};
    t.polls++;
    this.quiet.delete(machineId);
    let open = true;
    return () => {
      if (!open) return;
      open = false;
      t.polls = Math.max(0, t.polls - 1);
      if (t.polls > 0 || this.tracked.get(machineId) !== t || !t.connected) return;
      t.activityMs = this.now();
      this.quiet.delete(machineId);
      this.quiet.set(machineId, t.activityMs);
    };
  }

  /** The machine was deleted. */
  forget(machineId: string): void {
    this.tracked.delete(machineId);
    this.written.delete(machineId);
    this.quiet.delete(machineId);
    this.dirty.delete(machineId);
  }

  /**
   * The machine's liveness: what this endpoint knows in memory, with the store's record filling what it
   * does not (a later contact another replica wrote, a version this endpoint has not been told).
   */
  view(m: Pick<Machine, 'id' | 'agent'>): AgentLiveness {
    const t = this.tracked.get(m.id);
    if (!t) return m.agent;
    const mine = record(t);
    const stored = m.agent;
    const newer = stored.lastSeenAt !== null && (mine.lastSeenAt === null || stored.lastSeenAt > mine.lastSeenAt);
    return {
      ...mine,
      lastSeenAt: newer ? stored.lastSeenAt : mine.lastSeenAt,
      version: mine.version ?? stored.version,
      address: mine.address ?? stored.address,
    };
  }

  /** Disconnects machines whose window has passed; looks at no more than `maxPerSweep`. Answers how many. */
  sweep(): number {
    const now = this.now();
    const max = this.opts.maxPerSweep ?? 1000;
    let looked = 0;
    let gone = 0;
    for (const [id, activity] of this.quiet) {
      if (looked++ >= max || now - activity <= this.opts.windowMs) break;
      this.quiet.delete(id);
      const t = this.tracked.get(id);
      if (!t?.connected || isConnected(t, now, this.opts.windowMs)) continue;
      t.connected = false;
      t.sinceMs = now;
      gone++;
      this.decide(id, t, now, now);
    }
    return gone;
  }

  /** Resolves when everything decided so far is written (tests; shutdown). */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  private decide(id: string, t: Tracked, now: number, sweptAt: number | null): void {
    const d = persistDecision(this.written.get(id) ?? null, written(t), now, this.opts.throttleMs);
    if (d === 'none') return;
    const before = this.dirty.get(id);
    this.dirty.set(id, { emit: d === 'emit' || (before?.emit ?? false), sweptAt });
    this.flushing ??= this.writeAll().finally(() => (this.flushing = null));
  }

  /** Writes dirty machines in batches until none is left; each batch takes their state as it is then. */
  private async writeAll(): Promise<void> {
    // Let the request that made a machine dirty finish first; more of them join this batch meanwhile.
    await new Promise<void>((r) => setImmediate(r));
    while (this.dirty.size > 0) {
      const batch: LivenessWrite[] = [];
      for (const [id, d] of this.dirty) {
        this.dirty.delete(id);
        const t = this.tracked.get(id);
        if (!t) continue;
        this.written.set(id, written(t));
        batch.push({ machineId: id, agent: record(t), emit: d.emit, sweptAt: d.sweptAt });
        if (batch.length >= BATCH) break;
      }
      if (batch.length === 0) break;
      try {
        for (const id of await this.opts.persist(batch)) this.revive(id);
      } catch (err) {
        // Written again on the machine's next change; the first write after this one emits.
        for (const w of batch) this.written.delete(w.machineId);
        this.opts.log?.('error', 'cannot write agent liveness', { machines: batch.length, err: String(err) });
      }
    }
  }

  /** Another replica heard the machine after this one last did: connected again, as of now. */
  private revive(id: string): void {
    const t = this.tracked.get(id);
    if (!t || t.connected) return;
    const now = this.now();
    t.connected = true;
    t.activityMs = now;
    this.written.delete(id);
    this.quiet.delete(id);
    this.quiet.set(id, now);
  }
}
