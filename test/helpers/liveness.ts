/**
 * For the liveness tests: a recorder of the endpoint's event stream that tests wait on (never sleeps),
 * and an agent process a test starts and kills itself.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { followEvents, type StreamEvent } from '../../src/client/events.js';
import type { AgentLiveness } from '../../src/model/machine.js';
import { Endpoint, packFiles, TAKT } from './endpoint.js';

/** A machine as events carry it (the fields these tests read). */
export interface MachineData {
  id: string;
  name: string;
  state: string;
  status: string;
  reason: string | null;
  currentJob: string | null;
  agent: AgentLiveness;
}

/** Every event since the recorder started (replayed from `since`), and waits on them. */
export class EventRecorder {
  readonly events: StreamEvent[] = [];
  private readonly waiters = new Set<() => void>();
  private readonly ac = new AbortController();
  private readonly done: Promise<void>;

  constructor(ep: Endpoint, since = 0) {
    this.done = followEvents(
      ep.api,
      (e) => {
        this.events.push(e);
        for (const w of this.waiters) w();
      },
      { since, signal: this.ac.signal },
    ).catch(() => undefined);
  }

  /** The first event at or after index `from` that `match` accepts; fails after `ms` naming `what`. */
  async waitFor(what: string, match: (e: StreamEvent) => boolean, ms = 60_000, from = 0): Promise<StreamEvent> {
    const find = () => this.events.slice(from).find(match);
    const found = find();
    if (found) return found;
    return new Promise((resolve, reject) => {
      const check = () => {
        const e = find();
        if (!e) return;
        cleanup();
        resolve(e);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`no event for ${what} within ${ms} ms; seen: ${this.events.slice(from).map((e) => e.topic).join(', ')}`));
      }, ms);
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
    });
  }

  /** Waits for a `machines.update.<id>` whose machine passes `match`. */
  machine(id: string, what: string, match: (m: MachineData) => boolean, from = 0, ms?: number): Promise<MachineData> {
    return this.waitFor(`${what} (${id})`, (e) => e.topic === `machines.update.${id}` && match(e.data as MachineData), ms, from).then((e) => e.data as MachineData);
  }

  /** The machine updates of `id` recorded so far. */
  machineUpdates(id: string): MachineData[] {
    return this.events.filter((e) => e.topic === `machines.update.${id}`).map((e) => e.data as MachineData);
  }

  /** A point in the recording: pass it as `from` to wait only for what comes after. */
  mark(): number {
    return this.events.length;
  }

  stop(): Promise<void> {
    this.ac.abort();
    return this.done;
  }
}

/** One agent process for a machine: `takt agent` with the machine's token in its environment. */
export class AgentProcess {
  proc: ChildProcess | null = null;
  output = '';
  readonly dir = mkdtempSync(join(tmpdir(), 'takt-live-agent-'));

  constructor(
    private readonly endpoint: string,
    private readonly token: string,
  ) {}

  start(): this {
    // Its own process group, so a kill takes the scripts it runs along.
    // A root of its own: a test's scripts (the demo's write /etc/motd under $TAKT_ROOT) never touch the host.
    const root = join(this.dir, 'root');
    mkdirSync(root, { recursive: true });
    const p = spawn(process.execPath, [TAKT, 'agent', '--endpoint', this.endpoint, '--dir', this.dir, '--root', root], {
      env: { ...process.env, TAKT_TOKEN: this.token, NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    p.stdout!.on('data', (d: Buffer) => (this.output += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (this.output += d.toString()));
    this.proc = p;
    return this;
  }

  /** kill -9 of the agent and everything in its process group; resolves when it has exited. */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    try {
      process.kill(-p.pid!, 'SIGKILL');
    } catch {
      p.kill('SIGKILL');
    }
    await exited;
  }

  async dispose(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * The endpoint both liveness tests use: a 3 s lease, agents called gone after 2 s of silence, the liveness
 * test pack installed, and an event recorder on it.
 */
export async function livenessEndpoint(): Promise<{ ep: Endpoint; events: EventRecorder }> {
  const ep = await Endpoint.start({ lease: '3s', env: { TAKT_AGENT_GONE_AFTER: '2s' } });
  const r = await ep.call('POST', '/packs', { files: await packFiles('liveness') });
  if (r.status >= 300) throw new Error(`installing the liveness pack: ${JSON.stringify(r.body)}`);
  return { ep, events: new EventRecorder(ep) };
}
