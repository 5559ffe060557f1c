/**
 * What a label-scoped permission check needs to know about a request's machine, kept in memory (issue #16:
 * "permission checks must not cost a database round trip per request"): machine id and name → labels and
 * pipeline; job id → machine id; work order id → machine id.
 *
 * Fed by the store's events, as the token cache is (auth.ts): `machines.create|update.<id>` carry the whole
 * public machine (labels, pipeline, name) and replace the entry — unless it already holds that name,
 * pipeline and those labels, as it does for most of them (a job finished, the machine moved on): those
 * cost a comparison and nothing else; `machines.delete.<id>` removes it;
 * `jobs.*` and `workorders.*` carry their `machineId`. On PostgreSQL `Store.onEvents` also delivers what
 * other replicas commit (pg-follow.ts), so a label change made through replica B reaches replica A's checks
 * when its event arrives there (at once on a NOTIFY, within the 3 s catch-up otherwise); a change made
 * through this replica is applied before its request is answered (own events publish before `transact`
 * resolves).
 *
 * Bounded: each map keeps at most `max` entries (default 100,000), least recently used out first. A miss
 * reads the store once and fills the entry — unless a `machines.*` event that changed what the index holds
 * arrived while that read was under way (the read may predate it), in which case the answer is used for
 * that one request and not kept.
 * A job's or a work order's machine never changes, so those entries need no invalidation. Machines deleted
 * while the index runs are remembered (same bound), so the events of their jobs cost no read either; a
 * machine made again with that id (an import) is known again from its create event.
 */
import type { TaktEvent } from '../model/machine.js';
import type { MachineScopeView } from '../model/permissions.js';
import type { Store } from '../store/store.js';

/** What the index keeps of a machine. */
export interface IndexedMachine extends MachineScopeView {
  id: string;
  name: string;
}

/** The store reads the index falls back on, and the event feed it follows. */
export type ScopeIndexStore = Pick<Store, 'getMachine' | 'getMachineByName' | 'getJobState' | 'getWorkOrder' | 'onEvents'>;

/** Whether two label sets hold the same keys and values. */
function sameLabels(a: Record<string, string>, b: Record<string, unknown>): boolean {
  let n = 0;
  for (const k in b) {
    if (!Object.hasOwn(b, k)) continue;
    if (!Object.hasOwn(a, k) || a[k] !== b[k]) return false;
    n += 1;
  }
  for (const k in a) if (Object.hasOwn(a, k)) n -= 1;
  return n === 0;
}

/** Default bound of each map (entries). */
export const SCOPE_INDEX_MAX = 100_000;

/**
 * A Map that forgets its least recently used entry past `max` (insertion order is recency). Approximately:
 * a hit moves its entry to the back only when it has not moved for `max / 4` operations, so the hot path
 * (the same machines looked up again and again) is one Map read, not a delete and a set per lookup; an
 * entry is still never dropped while it is hit at least once per `max / 4` operations.
 */
class Lru<K, V> {
  private readonly m = new Map<K, { v: V; at: number }>();
  private clock = 0;
  private readonly stale: number;
  constructor(private readonly max: number) {
    this.stale = Math.max(1, Math.floor(max / 4));
  }
  get(k: K): V | undefined {
    const e = this.m.get(k);
    if (e === undefined) return undefined;
    const now = ++this.clock;
    if (now - e.at >= this.stale) {
      e.at = now;
      this.m.delete(k);
      this.m.set(k, e);
    }
    return e.v;
  }
  peek(k: K): V | undefined {
    return this.m.get(k)?.v;
  }
  set(k: K, v: V): void {
    this.m.delete(k);
    this.m.set(k, { v, at: ++this.clock });
    if (this.m.size > this.max) this.m.delete(this.m.keys().next().value as K);
  }
  delete(k: K): void {
    this.m.delete(k);
  }
  get size(): number {
    return this.m.size;
  }
}

export class ScopeIndex {
  private readonly machines: Lru<string, IndexedMachine>;
  private readonly names: Lru<string, string>;
  private readonly jobs: Lru<string, string>;
  private readonly workorders: Lru<string, string>;
  /** Ids of machines deleted since this index started: their jobs' events need no store read to find nothing. */
  private readonly deleted: Lru<string, true>;
  /** Moved by every `machines.*` event that changes what the index holds: a store read that straddles one is not kept. */
  private epoch = 0;
  private readonly unsubscribe: () => void;
  /** Store reads made so far (misses): the tests hold the hot path to zero. */
  storeReads = 0;

  /** @param max the bound of each map, entries (≥ 1). */
  constructor(private readonly store: ScopeIndexStore, max = SCOPE_INDEX_MAX) {
    const n = Math.max(1, Math.floor(max));
    this.machines = new Lru(n);
    this.names = new Lru(n);
    this.jobs = new Lru(n);
    this.workorders = new Lru(n);
    this.deleted = new Lru(n);
    this.unsubscribe = store.onEvents((events) => {
      for (const e of events) this.apply(e);
    });
  }

  /** Stops following the store's events. */
  close(): void {
    this.unsubscribe();
  }

  /** Entries held: machines, jobs, work orders (for tests and metrics). */
  sizes(): { machines: number; jobs: number; workorders: number } {
    return { machines: this.machines.size, jobs: this.jobs.size, workorders: this.workorders.size };
  }

  private apply(e: TaktEvent): void {
    const [type, action] = e.topic.split('.', 2);
    const id = e.topic.slice(e.topic.indexOf('.', e.topic.indexOf('.') + 1) + 1);
    const data = (e.data ?? {}) as Record<string, unknown>;
    if (type === 'machines') {
      if ((action === 'create' || action === 'update') && typeof data.name === 'string' && typeof data.labels === 'object' && data.labels !== null) {
        const pipeline = typeof data.pipeline === 'string' ? data.pipeline : null;
        const held = this.machines.peek(id);
        // Most machine events (a job finished, the machine moved on) change nothing the index keeps: nothing
        // to store, and no epoch move (no read under way can have been made stale by them).
        if (held && held.name === data.name && held.pipeline === pipeline && sameLabels(held.labels, data.labels as Record<string, unknown>)) return;
        this.epoch += 1;
        this.put({ id, name: data.name, labels: { ...(data.labels as Record<string, string>) }, pipeline });
        return;
      }
      this.epoch += 1;
      if (action === 'delete') this.forget(id, true);
      else if (action === 'create' || action === 'update') this.forget(id);
    } else if (type === 'jobs' && action === 'create' && typeof data.machineId === 'string') this.jobs.set(id, data.machineId);
    else if (type === 'workorders' && action === 'create' && typeof data.machineId === 'string') this.workorders.set(id, data.machineId);
  }

  private put(m: IndexedMachine): void {
    this.deleted.delete(m.id);
    const old = this.machines.peek(m.id);
    if (old && old.name !== m.name && this.names.peek(old.name) === m.id) this.names.delete(old.name);
    this.machines.set(m.id, m);
    this.names.set(m.name, m.id);
  }

  private forget(id: string, deleted = false): void {
    if (deleted) this.deleted.set(id, true);
    const old = this.machines.peek(id);
    if (old && this.names.peek(old.name) === id) this.names.delete(old.name);
    this.machines.delete(id);
  }

  /** The machine with this id, from memory when held (no store read). */
  peek(id: string): IndexedMachine | undefined {
    return this.machines.peek(id);
  }

  /** The machine with id or name `ref` when the index holds it (no store read, no promise), else undefined. */
  cached(ref: string): IndexedMachine | undefined {
    return this.machines.get(ref) ?? this.byName(ref);
  }

  /** The machine with id or name `ref`, or undefined when there is none; reads the store on a miss. */
  async machine(ref: string): Promise<IndexedMachine | undefined> {
    const hit = this.cached(ref);
    if (hit) return hit;
    if (this.deleted.peek(ref)) return undefined;
    const epoch = this.epoch;
    this.storeReads += 1;
    const m = (await this.store.getMachine(ref)) ?? (await this.store.getMachineByName(ref));
    if (!m) return undefined;
    const view: IndexedMachine = { id: m.id, name: m.name, labels: { ...(m.labels ?? {}) }, pipeline: m.pipeline ?? null };
    if (epoch === this.epoch) this.put(view);
    return view;
  }

  private byName(name: string): IndexedMachine | undefined {
    const id = this.names.get(name);
    const m = id === undefined ? undefined : this.machines.get(id);
    return m && m.name === name ? m : undefined;
  }

  /** The machine a job runs on (undefined: no such job, or its machine is gone). */
  async machineOfJob(jobId: string): Promise<IndexedMachine | undefined> {
    let machineId = this.jobs.get(jobId);
    if (machineId === undefined) {
      this.storeReads += 1;
      machineId = (await this.store.getJobState(jobId))?.machineId;
      if (machineId === undefined) return undefined;
      this.jobs.set(jobId, machineId);
    }
    return this.machine(machineId);
  }

  /** The machine a work order is for (undefined: no such work order, or its machine is gone). */
  async machineOfWorkOrder(woId: string): Promise<IndexedMachine | undefined> {
    let machineId = this.workorders.get(woId);
    if (machineId === undefined) {
      this.storeReads += 1;
      machineId = (await this.store.getWorkOrder(woId))?.machineId;
      if (machineId === undefined) return undefined;
      this.workorders.set(woId, machineId);
    }
    return this.machine(machineId);
  }
}
