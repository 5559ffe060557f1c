/** Creating bench machines in bulk and watching them move, through the API. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ApiClient } from '../../src/client/http.js';
import { followEvents, type StreamEvent } from '../../src/client/events.js';

export interface CreatedMachine {
  id: string;
  name: string;
  state: string;
  /** Only for machines created without a broker: their agent's token, shown once. */
  token?: string;
}

export const MAX_BATCH = 1000;

/**
 * Creates `count` machines in batches of up to 1000 (the API's limit per request). Each batch gets its
 * own name prefix (`PREFIX<b>-1…`): the endpoint picks free names by looking at only the first 1000
 * machines whose name contains the prefix, so one prefix for more than 1000 machines collides.
 */
export async function createMachines(
  api: ApiClient,
  o: { prefix: string; count: number; pipeline?: string | null; broker?: string; labels?: Record<string, string>; onBatch?: (created: number) => void },
): Promise<CreatedMachine[]> {
  const out: CreatedMachine[] = [];
  for (let b = 0; out.length < o.count; b++) {
    const count = Math.min(MAX_BATCH, o.count - out.length);
    const body = { name: `${o.prefix}${b}`, count, ...(o.pipeline !== undefined ? { pipeline: o.pipeline } : {}), ...(o.broker ? { broker: o.broker } : {}), ...(o.labels ? { labels: o.labels } : {}) };
    const res = await api.post<{ items: CreatedMachine[] }>('/machines', body, { timeoutMs: 600_000 });
    out.push(...res.items);
    o.onBatch?.(out.length);
  }
  return out;
}

/**
 * Follows `machines.update` events and keeps each machine's latest state, so a bench learns the moment
 * the last machine is done without polling the endpoint (which would add load to what it measures).
 */
export class MachineWatch {
  readonly states = new Map<string, string>();
  /** When each machine was last seen entering `done` (local clock, ms). */
  readonly doneAt = new Map<string, number>();
  private readonly ac = new AbortController();
  private readonly waiters = new Set<() => void>();
  private running: Promise<void> = Promise.resolve();
  failure: unknown = null;

  constructor(private readonly api: ApiClient) {}

  async start(): Promise<void> {
    let ready!: () => void;
    const isReady = new Promise<void>((r) => (ready = r));
    this.running = followEvents(this.api, (e) => this.onEvent(e), { topics: 'machines.update', signal: this.ac.signal, onOpen: ready }).catch((err: unknown) => {
      this.failure = err;
      this.notify();
    });
    await Promise.race([isReady, this.running]);
  }

  private onEvent(e: StreamEvent): void {
    const m = e.data as { id: string; state: string };
    const before = this.states.get(m.id);
    this.states.set(m.id, m.state);
    if (m.state === 'done' && before !== 'done') this.doneAt.set(m.id, Date.now());
    this.notify();
  }

  private notify(): void {
    for (const w of this.waiters) w();
  }

  /** Resolves when `pred` holds for every id; rejects on a stopped machine or after `timeoutMs`. */
  async until(ids: readonly string[], pred: (state: string | undefined) => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.failure) throw this.failure;
      const stopped = ids.find((id) => this.states.get(id) === 'stopped');
      if (stopped) throw new Error(`machine ${stopped} stopped (a task failed); see its jobs`);
      if (ids.every((id) => pred(this.states.get(id)))) return;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out: ${ids.filter((id) => !pred(this.states.get(id))).length} machines not there yet`);
      await new Promise<void>((resolve) => {
        const wake = () => {
          clearTimeout(t);
          this.waiters.delete(wake);
          resolve();
        };
        const t = setTimeout(wake, Math.min(left, 1000));
        this.waiters.add(wake);
      });
    }
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await this.running;
  }
}

/**
 * Waits until every machine's agent has had its first claim answered (its log notes the machine's
 * state, which it does on the first answer): the agents are then connected and long-polling, as
 * Ansible's hosts exist before its clock starts. That first answer is "nothing to do" after the
 * long-poll (25 s), so this takes about that long.
 */
export async function agentsReady(data: string, machines: CreatedMachine[], timeoutMs = 180_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const ready = (m: CreatedMachine) => {
    try {
      return readFileSync(join(data, 'machines', m.id, 'agent.log'), 'utf8').includes('"msg":"machine state"');
    } catch {
      return false;
    }
  };
  let waiting = machines;
  while ((waiting = waiting.filter((m) => !ready(m))).length > 0) {
    if (Date.now() > deadline) throw new Error(`${waiting.length} agents did not connect; see ${join(data, 'machines', waiting[0]!.id, 'agent.log')}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}
