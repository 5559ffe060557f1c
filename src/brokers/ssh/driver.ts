/**
 * Drives one agentless machine from inside the endpoint: what its agent would do, with the host reached
 * over SSH. While the machine has work (its pipeline is running, or a work order is queued) and is on,
 * it takes a session slot, connects (reusing the connection across jobs; it closes when idle), claims the
 * next job from the engine and runs it on the host (job.ts). A running job found at start (an endpoint
 * restart) is followed, never claimed again. Trouble reaching the host is retried with backoff and shown
 * in the machine's reason ("cannot reach root@10.0.0.5:22: …"); a changed host key stops the machine and
 * nothing runs until an operator accepts the new key.
 */
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { backoffMs } from '../../client/http.js';
import type { Engine } from '../../engine/engine.js';
import { TaktError } from '../../model/errors.js';
import type { Job, Machine } from '../../model/machine.js';
import type { ClaimedJob } from '../../model/protocol.js';
import { sshTargetText, type MachineSsh } from '../../model/ssh.js';
import type { Store } from '../../store/store.js';
import { IDLE_CLOSE, SshConnection, SshConnectError, type ConnectionOptions } from './connection.js';
import type { Credentials } from './credentials.js';
import { RemoteJob, type JobHost, type SshLog } from './job.js';
import { LogProgress } from './progress.js';
import { bootstrapScript, killScript, parseBootstrap, reportedScript } from './remote.js';
import type { Slots } from './slots.js';

export interface DriverDeps {
  engine: Engine;
  store: Store;
  credentials: Credentials;
  slots: Slots;
  leaseMs: number;
  log: SshLog;
  /** `<data>/ssh`: log progress files. */
  dir: string;
  /** A connection with no job this long is closed. */
  idleMs: number;
  connection?: ConnectionOptions;
  /** Counts every SSH connection opened (for the report and the benchmark). */
  onConnect?: () => void;
}

type SshMachine = Machine & { ssh: MachineSsh };

/** Reasons this driver writes (and may clear): recognised after a restart too. */
const NOTE = /^(cannot reach |cannot log in to |cannot use |waiting for an SSH session)/;
/** After a failed connect: backoff from 1 s up to this. */
const MAX_RETRY_MS = 60_000;
/** A machine whose claim found nothing looks again after an event, or after this. */
const IDLE_CHECK_MS = 30_000;

export class MachineDriver {
  private machine: SshMachine | null = null;
  private conn: SshConnection | null = null;
  private base: string | null = null;
  private connecting: Promise<string | null> | null = null;
  private failures = 0;
  /** The reason this driver last wrote on the machine (null: none). */
  private note: string | null = null;
  /** The pinned fingerprint a host offered a different key against: nothing is tried until it changes. */
  private blockedOn: string | null = null;
  private idleTimer: NodeJS.Timeout | null = null;
  private wakers = new Set<() => void>();
  private readonly stopping = new AbortController();
  private job: RemoteJob | null = null;
  private loop: Promise<void> | null = null;
  /** Dirs of reported jobs still to be marked so on the host (done with the next command that goes there). */
  private toMark: string[] = [];
  /** Job dirs whose jobs must be killed once the host answers (the endpoint gave up on them meanwhile). */
  private readonly kills: string[];
  private readonly killsFile: string;

  constructor(
    readonly id: string,
    private readonly deps: DriverDeps,
  ) {
    this.killsFile = join(deps.dir, `${id}.kills.json`);
    try {
      this.kills = (JSON.parse(readFileSync(this.killsFile, 'utf8')) as unknown[]).filter((d): d is string => typeof d === 'string');
    } catch {
      this.kills = [];
    }
  }

  start(): void {
    this.loop ??= this.run().catch((err: unknown) => this.deps.log('error', `ssh: driver of ${this.id} failed: ${(err as Error).message}`, { machine: this.id }));
  }

  /** Something about the machine changed (an event): look again now. */
  wake(): void {
    for (const f of this.wakers) f();
    this.wakers.clear();
  }

  /**
   * Stops driving. The endpoint stopping leaves a running job to run on (the next start reattaches);
   * `killJob` (the machine is deleted) kills it on the host first.
   */
  async stop(killJob = false): Promise<void> {
    if (killJob) this.job?.abandon('the machine was deleted');
    else this.stopping.abort();
    this.wake();
    if (killJob) {
      await this.job?.settled;
      this.stopping.abort();
    }
    await this.loop;
    await this.flushReported();
    this.closeConnection();
  }

  private get stopped(): boolean {
    return this.stopping.signal.aborted;
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        const m = await this.deps.store.getMachine(this.id);
        if (!m?.ssh) return; // deleted (or no longer an SSH machine)
        this.machine = m as SshMachine;
        if (this.note === null && m.reason && NOTE.test(m.reason)) this.note = m.reason;
        const running = m.currentJob ? await this.deps.store.getJob(m.currentJob) : undefined;
        if (running?.state === 'running') {
          await this.followRunning(running);
          continue;
        }
        if (m.power === 'off' || this.blocked() || !(await this.hasWork(m))) {
          // Jobs the endpoint gave up on while the host was away are killed as soon as it answers.
          if (this.kills.length && !this.blocked() && (await this.ensureConnected()) !== null) {
            await this.waitWake(this.retryMs());
            continue;
          }
          this.armIdleClose();
          await this.waitWake(IDLE_CHECK_MS);
          continue;
        }
        await this.claimAndRun();
      } catch (err) {
        if (this.stopped) break;
        this.deps.log('error', `ssh: unexpected failure driving machine ${this.machine?.name ?? this.id}; retrying: ${(err as Error).message}`, { machine: this.id });
        await this.waitWake(5000);
      }
    }
  }

  private async hasWork(m: Machine): Promise<boolean> {
    if (m.state === 'running' && m.pipeline) return true;
    return (await this.deps.store.nextWorkOrder(m.id)) !== undefined;
  }

  /** A changed host key blocks the machine until its pin changes (an operator accepted a key, or moved it). */
  private blocked(): boolean {
    if (this.blockedOn === null) return false;
    if ((this.machine?.ssh.hostKey?.fingerprint ?? null) !== this.blockedOn) {
      this.blockedOn = null;
      return false;
    }
    return true;
  }

  /** One slot, one connection, one claim, one job. */
  private async claimAndRun(): Promise<void> {
    const release = await this.waitForSlot();
    if (!release) return;
    let claimed: ClaimedJob | null = null;
    try {
      const problem = await this.ensureConnected();
      if (problem !== null) {
        release();
        await this.waitWake(problem === 'blocked' ? IDLE_CHECK_MS : this.retryMs());
        return;
      }
      const res = await this.deps.engine.claim(this.id, 0, this.stopping.signal);
      claimed = res.job;
      if (!claimed) {
        release();
        await this.waitWake(5000);
        return;
      }
      this.clearIdle();
      await this.runJob(claimed.id, claimed.task, (job) => job.start(claimed!));
    } finally {
      release();
    }
  }

  /** A job that was running when the endpoint stopped (or that the driver lost track of): followed to its end. */
  private async followRunning(job: Job): Promise<void> {
    // It runs on the host whatever the bound says: following it takes a slot even past the limit.
    const release = this.deps.slots.force();
    try {
      this.clearIdle();
      this.deps.log('info', `ssh: ${this.machine!.name}: following job ${job.id} (${job.task}) that was running on the host`, { machine: this.id, job: job.id });
      await this.runJob(job.id, job.task, (j) => j.follow(), job.timeoutMs, Date.parse(job.createdAt));
    } finally {
      release();
    }
  }

  private async runJob(jobId: string, task: string, go: (job: RemoteJob) => Promise<void>, timeoutMs?: number, startedAtMs?: number): Promise<void> {
    // The base dir comes from the host: connect first (retrying) so a restart can find the job's dir.
    const conn = await this.connection(this.stopping.signal).catch(() => null);
    if (!conn || this.base === null) return;
    const m = this.machine!;
    const storedSeq = await this.deps.store.lastLogSeq(jobId);
    const progress = LogProgress.load(this.deps.dir, m.id, jobId, storedSeq);
    const declared = Object.keys(this.deps.engine.content.current.objects.tasks.get(task)?.def.outputs ?? {});
    const jobRecord = timeoutMs ?? (await this.deps.store.getJob(jobId))?.timeoutMs ?? 0;
    const host: JobHost = {
      engine: this.deps.engine,
      machine: { id: m.id, name: m.name, ssh: m.ssh },
      base: this.base,
      leaseMs: this.deps.leaseMs,
      log: this.deps.log,
      connection: (signal) => this.connection(signal),
      connected: () => (this.conn && !this.conn.closed ? this.conn : null),
      markReported: (dir) => void this.toMark.push(dir),
      takeReported: () => this.toMark.splice(0),
      requeueReported: (dirs) => void this.toMark.unshift(...dirs),
      killLater: (dir) => {
        if (!this.kills.includes(dir)) this.kills.push(dir);
        this.saveKills();
      },
      signal: this.stopping.signal,
    };
    const job = new RemoteJob(host, { id: jobId, task, timeoutMs: jobRecord, outputs: declared, ...(startedAtMs !== undefined && Number.isFinite(startedAtMs) ? { startedAtMs } : {}) }, progress);
    this.job = job;
    try {
      await job.run(go);
    } finally {
      this.job = null;
      this.armIdleClose();
    }
  }

  /** Waits for a session slot, saying so on the machine while it waits. Null when stopping or woken for a change. */
  private async waitForSlot(): Promise<(() => void) | null> {
    const slots = this.deps.slots;
    try {
      return await slots.acquire(this.stopping.signal, (ahead) => {
        void this.setNote(`waiting for an SSH session: ${ahead === 0 ? 'next in line' : `${ahead} machine${ahead === 1 ? '' : 's'} ahead`} (at most ${slots.max} SSH machines run jobs at once; --ssh-max-sessions)`);
      });
    } catch {
      return null;
    } finally {
      if (this.note?.startsWith('waiting for an SSH session')) await this.setNote(null);
    }
  }

  /**
   * The live connection, connecting with backoff until it works or `signal` aborts (then it throws).
   * While the host key is blocked, it waits for the machine to change.
   */
  private async connection(signal: AbortSignal): Promise<SshConnection> {
    for (;;) {
      if (this.conn && !this.conn.closed) return this.conn;
      if (signal.aborted || this.stopped) throw new Error('stopped');
      const problem = await this.ensureConnected();
      if (problem === null) continue;
      await this.waitWake(problem === 'blocked' ? IDLE_CHECK_MS : this.retryMs(), signal);
      // A change to the machine (an accepted key, new settings) is read before the next try.
      const m = await this.deps.store.getMachine(this.id);
      if (m?.ssh) this.machine = m as SshMachine;
    }
  }

  private retryMs(): number {
    return backoffMs(this.failures, 1000, MAX_RETRY_MS);
  }

  /** Connects if needed (one attempt at a time). Null when connected; else what went wrong ('blocked' for a changed host key). */
  private ensureConnected(): Promise<string | null> {
    if (this.conn && !this.conn.closed) return Promise.resolve(null);
    this.connecting ??= this.connectOnce().finally(() => (this.connecting = null));
    return this.connecting;
  }

  private async connectOnce(): Promise<string | null> {
    const m = this.machine!;
    const ssh = m.ssh;
    const target = sshTargetText(ssh);
    if (this.blocked()) return 'blocked';
    let secret;
    try {
      secret = await this.deps.credentials.open(ssh.credential);
    } catch (err) {
      this.failures++;
      await this.setNote(`cannot use credential '${ssh.credential}' for ${target}: ${(err as Error).message}`);
      return 'credential';
    }
    let conn: SshConnection;
    try {
      this.deps.onConnect?.();
      conn = await SshConnection.open(ssh, secret, this.deps.connection);
    } catch (err) {
      return this.connectFailed(err as Error, m);
    }
    try {
      if (!ssh.hostKey && conn.hostKey) {
        await this.deps.engine.sshObserved(m.id, { pin: conn.hostKey });
        this.deps.log('info', `ssh: pinned the host key of ${target} on first contact: ${conn.hostKey.fingerprint} (${conn.hostKey.type})`, { machine: m.name });
      }
      const boot = parseBootstrap((await conn.run(bootstrapScript(ssh.dir))).stdout);
      if ('missing' in boot) {
        conn.close();
        this.failures++;
        await this.setNote(`cannot use ${target}: the host lacks ${boot.missing.join(', ')} (takt needs bash, util-linux setsid and GNU coreutils there)`);
        return 'unusable';
      }
      this.base = boot.base;
      await this.killLeftJobs(conn);
    } catch (err) {
      conn.close();
      return this.connectFailed(err as Error, m);
    }
    this.conn = conn;
    this.failures = 0;
    await this.setNote(null);
    this.liveness(true, target);
    conn.onClose((why) => {
      if (this.conn === conn) this.conn = null;
      this.liveness(false, target, why);
    });
    return null;
  }

  private async connectFailed(err: Error, m: SshMachine): Promise<string> {
    this.failures++;
    const target = sshTargetText(m.ssh);
    if (err instanceof SshConnectError && err.kind === 'hostkey') {
      this.blockedOn = m.ssh.hostKey?.fingerprint ?? null;
      const reason = `${err.message}. Nothing runs on it until the key is trusted: if the change is expected (the host was reinstalled or its keys rotated), check the new fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) and accept it with \`takt machines update ${m.name} --ssh-accept-new-key\`, then \`takt machines resume ${m.name}\``;
      await this.deps.engine.sshObserved(m.id, { ...(err.offered ? { offered: err.offered } : {}), stop: reason });
      this.note = null;
      this.deps.log('error', `ssh: ${err.message}; machine ${m.name} stopped`, { machine: m.name });
      return 'blocked';
    }
    const message = err instanceof SshConnectError ? err.message : `cannot reach ${target}: ${err.message}`;
    if (this.failures === 1 || this.failures % 10 === 0) this.deps.log('warn', `ssh: ${message}; retrying`, { machine: m.name, attempt: this.failures });
    await this.setNote(message);
    return err instanceof SshConnectError ? err.kind : 'network';
  }

  /** Kills the jobs the endpoint gave up on while the host could not be reached. */
  private async killLeftJobs(conn: SshConnection): Promise<void> {
    while (this.kills.length) {
      const dir = this.kills[0]!;
      await conn.run(killScript(dir, 2000));
      await conn.run(reportedScript(dir));
      this.deps.log('warn', `ssh: killed a job on ${sshTargetText(this.machine!.ssh)} that the endpoint had given up on while the host could not be reached`, { machine: this.machine!.name, dir });
      this.kills.shift();
      this.saveKills();
    }
  }

  private saveKills(): void {
    if (this.kills.length === 0) return rmSync(this.killsFile, { force: true });
    mkdirSync(this.deps.dir, { recursive: true, mode: 0o700 });
    writeFileSync(`${this.killsFile}.tmp`, JSON.stringify(this.kills), { mode: 0o600 });
    renameSync(`${this.killsFile}.tmp`, this.killsFile);
  }

  /**
   * Reports whether the endpoint is connected to this machine, as an agent's requests would: the machine
   * shows connected (via `ssh`, the host's address) while the connection is up, and disconnected at once
   * when it closes for trouble (the host closed it, stopped answering, keepalives died). Closing an idle
   * connection is not trouble: the host is not said to be gone; the liveness window lapses on its own and
   * the CLI shows such a machine as idle (src/cli/liveness.ts). Running jobs keep it fresh with each
   * heartbeat and probe (see job.ts).
   */
  private liveness(connected: boolean, target: string, why?: string): void {
    this.deps.log('info', `ssh: ${connected ? 'connected to' : 'disconnected from'} ${target}${why ? ` (${why})` : ''}`, { machine: this.machine?.name ?? this.id, ...(connected ? { base: this.base } : {}) });
    if (connected) this.deps.engine.heard(this.id, { version: 'ssh', address: this.machine?.ssh.host ?? null, via: 'ssh' });
    else if (why !== IDLE_CLOSE) this.deps.engine.gone(this.id);
  }

  /** Writes (or with null clears) this driver's note in the machine's reason; never overwrites another reason. */
  private async setNote(text: string | null): Promise<void> {
    if (text === this.note) return;
    const from = this.note;
    this.note = text;
    try {
      await this.deps.engine.sshObserved(this.id, { note: { from, to: text } });
    } catch (err) {
      if (!(err instanceof TaktError)) this.deps.log('warn', `ssh: cannot note on machine ${this.id}: ${(err as Error).message}`);
    }
  }

  /** Marks reported jobs' dirs now (no next start is coming soon). Best effort: unmarked dirs are only not pruned. */
  private async flushReported(): Promise<void> {
    const conn = this.conn && !this.conn.closed ? this.conn : null;
    if (!conn || this.toMark.length === 0) return;
    const dirs = this.toMark.splice(0);
    await conn.run(reportedScript(...dirs)).catch(() => undefined);
  }

  private armIdleClose(): void {
    if (this.idleTimer || !this.conn) return;
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      if (this.job) return;
      void this.flushReported().finally(() => {
        if (!this.job && !this.idleTimer) this.closeConnection(IDLE_CLOSE);
      });
    }, this.deps.idleMs);
    this.idleTimer.unref();
  }

  private clearIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }

  private closeConnection(why?: string): void {
    this.clearIdle();
    this.conn?.close(why);
    this.conn = null;
  }

  /** Waits for `wake()`, `ms`, a stop or `signal`. */
  private waitWake(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakers.delete(done);
        this.stopping.signal.removeEventListener('abort', done);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
      this.stopping.signal.addEventListener('abort', done, { once: true });
      signal?.addEventListener('abort', done, { once: true });
    });
  }
}

