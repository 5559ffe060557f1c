/**
 * The `ssh` broker: agentless machines, driven by the endpoint itself over SSH (one driver per machine,
 * driver.ts), with the same job contract as the agent. It creates nothing on the host beyond its own dir
 * (`/var/lib/takt-ssh` for root, `~/.takt` otherwise) and destroys nothing there but running jobs.
 *
 * The same broker interface as the process brokers (src/brokers/process.ts): check, create, destroy,
 * adopt (at endpoint start: every SSH machine is driven again, and a job that was running is followed
 * where it stands), setPower, stopAll (a graceful stop leaves running jobs on their hosts).
 */
import { join } from 'node:path';
import type { Engine } from '../../engine/engine.js';
import type { Machine } from '../../model/machine.js';
import type { Store } from '../../store/store.js';
import type { ConnectionOptions } from './connection.js';
import type { Credentials } from './credentials.js';
import { MachineDriver } from './driver.js';
import type { SshLog } from './job.js';
import { Slots } from './slots.js';

export interface SshBrokerOptions {
  engine: Engine;
  store: Store;
  credentials: Credentials;
  dataDir: string;
  /** The endpoint's job lease (heartbeats go every third of it). */
  leaseMs: number;
  /** How many SSH machines run jobs at once; the others wait, with a reason that says so. */
  maxSessions: number;
  log: SshLog;
  /** A connection with no job this long is closed (default 60 s). */
  idleMs?: number;
  connection?: ConnectionOptions;
}

export const DEFAULT_SSH_MAX_SESSIONS = 64;

export class SshBroker {
  readonly name = 'ssh';
  /** Not host-bound: any replica reaches an SSH host, so its machines belong to no replica (api/hosts.ts). */
  readonly hostBound = false;
  readonly environment = 'ssh';
  readonly notice = undefined;
  private readonly drivers = new Map<string, MachineDriver>();
  private readonly slots: Slots;
  private readonly unsubscribe: () => void;
  /** SSH connections opened since start. */
  connectionsOpened = 0;

  constructor(private readonly opts: SshBrokerOptions) {
    this.slots = new Slots(opts.maxSessions);
    // Whatever may give a machine work, or change how it is reached, wakes its driver.
    this.unsubscribe = opts.store.onEvents((events) => {
      for (const e of events) {
        const [type, , id] = e.topic.split('.');
        const machineId = type === 'machines' ? id : (e.data as { machineId?: string } | null)?.machineId;
        if (machineId) this.drivers.get(machineId)?.wake();
      }
    });
  }

  /** Nothing host-wide is needed: each machine's reachability shows on the machine. */
  async check(): Promise<void> {}

  /** Starts driving a new machine (its SSH settings are on the machine; the token is not used). */
  async create(machine: { id: string; name: string }, _token: string): Promise<void> {
    this.drive(machine.id);
  }

  /** The machine is deleted: its running job (already cancelled by the engine) is killed on the host. */
  async destroy(machine: { id: string; name: string }): Promise<void> {
    const d = this.drivers.get(machine.id);
    this.drivers.delete(machine.id);
    await d?.stop(true);
  }

  async adopt(machines: Machine[]): Promise<void> {
    for (const m of machines) if (m.ssh) this.drive(m.id);
  }

  async setPower(machine: Pick<Machine, 'id'>): Promise<void> {
    this.drivers.get(machine.id)?.wake();
  }

  /** Graceful endpoint stop: drivers stop, connections close; jobs run on and are followed after the restart. */
  async stopAll(): Promise<void> {
    this.unsubscribe();
    await Promise.all([...this.drivers.values()].map((d) => d.stop(false)));
    this.drivers.clear();
  }

  private drive(id: string): void {
    if (this.drivers.has(id)) return;
    const d = new MachineDriver(id, {
      engine: this.opts.engine,
      store: this.opts.store,
      credentials: this.opts.credentials,
      slots: this.slots,
      leaseMs: this.opts.leaseMs,
      log: this.opts.log,
      dir: join(this.opts.dataDir, 'ssh'),
      idleMs: this.opts.idleMs ?? 60_000,
      onConnect: () => this.connectionsOpened++,
      ...(this.opts.connection ? { connection: this.opts.connection } : {}),
    });
    this.drivers.set(id, d);
    d.start();
  }
}
