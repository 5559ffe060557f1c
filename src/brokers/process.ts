/**
 * Brokers whose machines are agents supervised as processes on this host, each with a sandbox directory
 * under the data dir: `local` (plain processes) and `netns` (each in its own network namespace, see
 * netns.ts). Agents run in their own session so they outlive an endpoint crash (results then reach the
 * restarted endpoint); a restarted endpoint adopts them by pid file instead of starting twins.
 * When the endpoint is root, each machine's scripts run as a user of their own (layout.ts, uids.ts).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RunAs } from '../agent/sandbox.js';
import { checkReachable, isolating, machinePaths, notIsolatedNotice, prepareMachineDir, type MachinePaths } from './layout.js';
import { killUid, UidPool } from './uids.js';

const TAKT_BIN = fileURLToPath(new URL('../../bin/takt.js', import.meta.url));

export interface LocalMachine {
  id: string;
  name: string;
  power?: 'on' | 'off';
}

/**
 * Where a machine's agent lives beyond its sandbox dir. The local broker's placement is the host itself;
 * netns puts each machine in a network namespace of its own.
 */
export interface Placement {
  /** Checks the host can hold machines at all; throws a TaktError that says how to fix it. */
  check(): Promise<void>;
  /** Makes (or, after a host reboot, remakes) the machine's place; idempotent. */
  prepare(machine: LocalMachine): Promise<void>;
  /** Command prefix that runs the agent in its place, e.g. `ip netns exec NS`. */
  wrap(machine: LocalMachine): string[];
  /** The URL the machine's agent reaches the endpoint at. */
  endpoint(machine: LocalMachine): string;
  /** True when agents started before `check()` were given a URL that no longer works. */
  endpointMoved(): boolean;
  remove(machine: LocalMachine): Promise<void>;
  close(): Promise<void>;
}

export interface ProcessBrokerOptions {
  name: string;
  environment: string;
  dataDir: string;
  /** Defaults to the host itself, reaching the endpoint at `endpoint()`. */
  placement?: Placement;
  /** The URL agents on the host use to reach the endpoint. */
  endpoint: () => string;
  /** The endpoint's CA certificate file: agents reaching an https URL trust it and nothing else. */
  ca?: string;
  log: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
  /** How often to check that agents are alive. */
  superviseMs?: number;
}

interface Tracked {
  machine: LocalMachine;
  pid: number | null;
  wanted: boolean;
  restarts: number[];
  nextStartAt: number;
  /** A start (its placement being prepared) is under way. */
  starting: boolean;
}

/** The host itself: nothing to prepare. */
export function hostPlacement(endpoint: () => string): Placement {
  return {
    check: async () => {},
    prepare: async () => {},
    wrap: () => [],
    endpoint: () => endpoint(),
    // The local endpoint URL is fixed for the life of an agent: a restart on the same port is the rule.
    endpointMoved: () => false,
    remove: async () => {},
    close: async () => {},
  };
}

export class ProcessBroker {
  readonly name: string;
  /** Each machine is a sandbox on this host (see BrokerPort.sandboxed): new and empty when restored here. */
  readonly sandboxed = true;
  /** Its machines live on this host: they stay with the replica that made them (api/hosts.ts). */
  readonly hostBound = true;
  readonly environment: string;
  private readonly placement: Placement;
  private readonly tracked = new Map<string, Tracked>();
  private timer: NodeJS.Timeout | null = null;
  /** Destroys under way, by machine id: a second call for the same machine waits for the first. */
  private readonly destroying = new Map<string, Promise<void>>();

  constructor(private readonly opts: ProcessBrokerOptions) {
    this.name = opts.name;
    this.environment = opts.environment;
    this.placement = opts.placement ?? hostPlacement(opts.endpoint);
  }

  /** Throws when this host cannot hold the broker's machines (before any machine is recorded). */
  async check(): Promise<void> {
    await this.placement.check();
    if (isolating()) checkReachable(this.machinesDir);
  }

  /**
   * Said with every machine this broker creates, when its scripts are not isolated from the endpoint
   * (the endpoint is not root); undefined when they are.
   */
  get notice(): string | undefined {
    return notIsolatedNotice(this.name);
  }

  private get machinesDir(): string {
    return join(this.opts.dataDir, 'machines');
  }

  machineDir(id: string): string {
    return join(this.machinesDir, id);
  }

  /** Whether machine `id`'s sandbox is in this data dir (made here, or by this endpoint before replicas). */
  holds(id: string): boolean {
    return existsSync(this.machineDir(id));
  }

  private paths(id: string): MachinePaths {
    return machinePaths(this.machinesDir, id);
  }

  async create(machine: LocalMachine, token: string): Promise<void> {
    const p = this.paths(machine.id);
    this.prepareDir(machine);
    writeFileSync(p.token, token, { mode: 0o600 });
    const notice = this.notice;
    if (notice) this.opts.log('warn', notice, { machine: machine.name });
    await this.placement.prepare(machine);
    this.track(machine, true);
    await this.ensureRunning(this.tracked.get(machine.id)!);
  }

  /**
   * Stops the machine's agent and removes its place and sandbox. Idempotent: a machine already destroyed
   * (or never made on this host) is a no-op, and a call while one is under way waits for that one — the
   * API route and the machines.delete event (cli/serve.ts) may both ask for the same machine.
   */
  async destroy(machine: LocalMachine): Promise<void> {
    const running = this.destroying.get(machine.id);
    if (running) return running;
    const p = this.destroyNow(machine).finally(() => this.destroying.delete(machine.id));
    this.destroying.set(machine.id, p);
    return p;
  }

  private async destroyNow(machine: LocalMachine): Promise<void> {
    const t = this.tracked.get(machine.id);
    this.tracked.delete(machine.id);
    await this.kill(t?.pid ?? this.readPid(machine.id));
    await this.placement.remove(machine);
    const dir = this.machineDir(machine.id);
    const pool = isolating() ? UidPool.forDataDir(this.opts.dataDir) : null;
    const uid = pool?.uidOf(machine.id);
    // Whatever its scripts left running (services they detached) goes too, before its files: nothing of
    // that user is left to race the delete, or to meet the next machine that gets this uid.
    if (uid !== undefined) for (let i = 0; i < 10 && killUid(uid) > 0; i++) await new Promise((r) => setTimeout(r, 50));
    rmSync(dir, { recursive: true, force: true });
    pool?.release(machine.id, dir);
  }

  /** The machine's uid (allocated on first use) and its dirs made or repaired. Null: not isolating. */
  private prepareDir(machine: LocalMachine): RunAs | null {
    const p = this.paths(machine.id);
    // The dir exists before its uid is claimed: a host-wide claim points at it.
    mkdirSync(p.dir, { recursive: true, mode: 0o700 });
    const uid = isolating() ? UidPool.forDataDir(this.opts.dataDir).uidFor(machine.id, p.dir) : null;
    const user = uid === null ? null : { uid, gid: uid };
    prepareMachineDir(this.machinesDir, p, user);
    return user;
  }

  /** At endpoint start: keep every live agent, start the ones that should run and do not. */
  async adopt(machines: LocalMachine[]): Promise<void> {
    if (machines.length > 0) {
      // The placement's shared parts (netns: bridge and forwarder) come back before any agent needs them.
      await this.placement.check().catch((err: Error) => this.opts.log('error', `broker ${this.name} cannot run its machines: ${err.message}`));
    }
    const moved = this.placement.endpointMoved();
    for (const m of machines) {
      const t = this.track(m, m.power !== 'off');
      const pid = this.readPid(m.id);
      if (pid && this.isOurAgent(pid, m.id)) {
        // An agent that knows an address that is gone is restarted with the new one.
        if (moved) await this.kill(pid);
        else t.pid = pid;
      }
      if (t.wanted) await this.ensureRunning(t);
    }
    this.startSupervision();
  }

  /** The machine's power changed: an `off` machine's agent is stopped, an `on` one is started. */
  async setPower(machine: LocalMachine): Promise<void> {
    const t = this.tracked.get(machine.id);
    if (!t) return;
    t.machine = machine;
    const was = t.wanted;
    t.wanted = machine.power !== 'off';
    // Said once per change (updates of a machine's other fields come through here too): with replicas,
    // this is where a power change made through another replica is carried out.
    if (was !== t.wanted) this.opts.log('info', `${machine.name} powered ${t.wanted ? 'on: its agent starts' : 'off: its agent stops'}`, { machine: machine.name, broker: this.name });
    if (t.wanted) await this.ensureRunning(t);
    else await this.kill(t.pid);
  }

  startSupervision(): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      for (const t of this.tracked.values()) if (t.wanted) void this.ensureRunning(t);
    }, this.opts.superviseMs ?? 1000);
    this.timer.unref();
  }

  /** Graceful endpoint shutdown: stop the agents (an endpoint crash leaves them running on purpose). */
  async stopAll(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await Promise.all([...this.tracked.values()].map((t) => this.kill(t.pid)));
    await this.placement.close();
  }

  private track(machine: LocalMachine, wanted: boolean): Tracked {
    let t = this.tracked.get(machine.id);
    if (!t) {
      t = { machine, pid: null, wanted, restarts: [], nextStartAt: 0, starting: false };
      this.tracked.set(machine.id, t);
    }
    t.wanted = wanted;
    return t;
  }

  private async ensureRunning(t: Tracked): Promise<void> {
    if (t.starting || (t.pid && alive(t.pid))) return;
    const now = Date.now();
    if (now < t.nextStartAt) return;
    // Crash-loop guard: more than 5 starts within a minute backs off, doubling up to 60 s.
    t.restarts = t.restarts.filter((at) => now - at < 60_000);
    if (t.restarts.length >= 5) {
      const delay = Math.min(60_000, 1000 * 2 ** (t.restarts.length - 5));
      t.nextStartAt = now + delay;
      this.opts.log('warn', 'agent keeps exiting; backing off', { machine: t.machine.name, delayMs: delay });
    }
    t.restarts.push(now);
    t.starting = true;
    try {
      // After a host reboot a namespace is gone while its machine is not: make it again.
      await this.placement.prepare(t.machine);
      // Deleted while its place was being prepared: starting it now would claim its uid and dir again.
      if (this.tracked.get(t.machine.id) !== t) return;
      t.pid = this.spawnAgent(t.machine);
    } catch (err) {
      this.opts.log('error', 'cannot start agent', { machine: t.machine.name, broker: this.name, err: (err as Error).message });
    } finally {
      t.starting = false;
    }
  }

  private spawnAgent(m: LocalMachine): number | null {
    const p = this.paths(m.id);
    const dir = p.dir;
    const user = this.prepareDir(m);
    const tokenFile = p.token;
    if (!existsSync(tokenFile)) {
      this.opts.log('error', 'cannot start agent: its token file is missing', { machine: m.name, file: tokenFile });
      return null;
    }
    const out = openSync(p.log, 'a', 0o600);
    try {
      const endpoint = this.placement.endpoint(m);
      const argv = [process.execPath, TAKT_BIN, 'agent', '--endpoint', endpoint, '--dir', p.privateDir, '--sandbox', dir, '--root', p.root];
      if (user) argv.push('--run-as', `${user.uid}:${user.gid}`);
      if (this.opts.ca && endpoint.startsWith('https:')) argv.push('--ca', this.opts.ca);
      const [command, ...args] = [...this.placement.wrap(m), ...argv] as [string, ...string[]];
      const child = spawn(command, args, {
        detached: true,
        stdio: ['ignore', out, out],
        // The token goes through the environment, not argv, so `ps` does not show it.
        env: { ...agentEnv(process.env), TAKT_TOKEN: readFileSync(tokenFile, 'utf8').trim(), TAKT_MACHINE_DIR: dir },
      });
      child.on('error', (err) => this.opts.log('error', 'agent failed to start', { machine: m.name, err: err.message }));
      child.unref();
      if (child.pid) writeFileSync(p.pid, String(child.pid), { mode: 0o600 });
      return child.pid ?? null;
    } finally {
      closeSync(out);
    }
  }

  private readPid(id: string): number | null {
    try {
      const pid = Number(readFileSync(this.paths(id).pid, 'utf8'));
      return Number.isInteger(pid) && pid > 0 ? pid : null;
    } catch {
      return null;
    }
  }

  /** A pid file can outlive its process and the pid be reused; check the command line names this machine. */
  private isOurAgent(pid: number, id: string): boolean {
    if (!alive(pid)) return false;
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(this.machineDir(id));
    } catch {
      return false;
    }
  }

  private async kill(pid: number | null): Promise<void> {
    if (!pid || !alive(pid)) return;
    try {
      process.kill(-pid, 'SIGTERM');
    } catch {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        return;
      }
    }
    for (let i = 0; i < 50 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
    if (alive(pid)) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    // A zombie (exited child not yet reaped) still answers signal 0.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

/**
 * The endpoint's environment as its local agents get it, without what reaches the endpoint's store: the
 * store URL (`TAKT_STORE`, which may carry a password) and libpq's variables (`PGPASSWORD`, `PGHOST`, …,
 * which `pg` reads). An agent of a non-root endpoint runs its scripts with the agent's environment.
 */
export function agentEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) if (k !== 'TAKT_STORE' && !/^PG[A-Z_]*$/.test(k)) out[k] = v;
  return out;
}
