/**
 * The local broker: each machine is a sandbox directory under the data dir with its agent running as a
 * supervised process. Agents run in their own session so they outlive an endpoint crash (results then
 * reach the restarted endpoint); a restarted endpoint adopts them by pid file instead of starting twins.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const TAKT_BIN = fileURLToPath(new URL('../../bin/takt.js', import.meta.url));

export interface LocalMachine {
  id: string;
  name: string;
  power?: 'on' | 'off';
}

export interface LocalBrokerOptions {
  dataDir: string;
  /** The URL agents use to reach the endpoint. */
  endpoint: () => string;
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
}

export class LocalBroker {
  readonly name = 'local';
  readonly environment = 'local';
  private readonly tracked = new Map<string, Tracked>();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: LocalBrokerOptions) {}

  machineDir(id: string): string {
    return join(this.opts.dataDir, 'machines', id);
  }

  async create(machine: LocalMachine, token: string): Promise<void> {
    const dir = this.machineDir(machine.id);
    mkdirSync(join(dir, 'root'), { recursive: true });
    writeFileSync(join(dir, 'agent.token'), token, { mode: 0o600 });
    this.track(machine, true);
    this.ensureRunning(this.tracked.get(machine.id)!);
  }

  async destroy(machine: LocalMachine): Promise<void> {
    const t = this.tracked.get(machine.id);
    this.tracked.delete(machine.id);
    await this.kill(t?.pid ?? this.readPid(machine.id));
    rmSync(this.machineDir(machine.id), { recursive: true, force: true });
  }

  /** At endpoint start: keep every live agent, start the ones that should run and do not. */
  adopt(machines: LocalMachine[]): void {
    for (const m of machines) {
      const t = this.track(m, m.power !== 'off');
      const pid = this.readPid(m.id);
      if (pid && this.isOurAgent(pid, m.id)) t.pid = pid;
      if (t.wanted) this.ensureRunning(t);
    }
    this.startSupervision();
  }

  /** The machine's power changed: an `off` machine's agent is stopped, an `on` one is started. */
  async setPower(machine: LocalMachine): Promise<void> {
    const t = this.tracked.get(machine.id);
    if (!t) return;
    t.machine = machine;
    t.wanted = machine.power !== 'off';
    if (t.wanted) this.ensureRunning(t);
    else await this.kill(t.pid);
  }

  startSupervision(): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      for (const t of this.tracked.values()) if (t.wanted) this.ensureRunning(t);
    }, this.opts.superviseMs ?? 1000);
    this.timer.unref();
  }

  /** Graceful endpoint shutdown: stop the agents (an endpoint crash leaves them running on purpose). */
  async stopAll(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await Promise.all([...this.tracked.values()].map((t) => this.kill(t.pid)));
  }

  private track(machine: LocalMachine, wanted: boolean): Tracked {
    let t = this.tracked.get(machine.id);
    if (!t) {
      t = { machine, pid: null, wanted, restarts: [], nextStartAt: 0 };
      this.tracked.set(machine.id, t);
    }
    t.wanted = wanted;
    return t;
  }

  private ensureRunning(t: Tracked): void {
    if (t.pid && alive(t.pid)) return;
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
    t.pid = this.spawnAgent(t.machine);
  }

  private spawnAgent(m: LocalMachine): number | null {
    const dir = this.machineDir(m.id);
    const tokenFile = join(dir, 'agent.token');
    if (!existsSync(tokenFile)) {
      this.opts.log('error', 'cannot start agent: its token file is missing', { machine: m.name, file: tokenFile });
      return null;
    }
    mkdirSync(join(dir, 'root'), { recursive: true });
    const out = openSync(join(dir, 'agent.log'), 'a');
    try {
      const child = spawn(process.execPath, [TAKT_BIN, 'agent', '--endpoint', this.opts.endpoint(), '--dir', dir, '--root', join(dir, 'root')], {
        detached: true,
        stdio: ['ignore', out, out],
        // The token goes through the environment, not argv, so `ps` does not show it.
        env: { ...process.env, TAKT_TOKEN: readFileSync(tokenFile, 'utf8').trim(), TAKT_MACHINE_DIR: dir },
      });
      child.on('error', (err) => this.opts.log('error', 'agent failed to start', { machine: m.name, err: err.message }));
      child.unref();
      if (child.pid) writeFileSync(join(dir, 'agent.pid'), String(child.pid));
      return child.pid ?? null;
    } finally {
      closeSync(out);
    }
  }

  private readPid(id: string): number | null {
    try {
      const pid = Number(readFileSync(join(this.machineDir(id), 'agent.pid'), 'utf8'));
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
