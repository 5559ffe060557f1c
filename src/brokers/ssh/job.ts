/**
 * One job on an agentless host, with the agent's contract: set up and started once (remote.ts), its
 * stdout and stderr streamed to the job log as they come (the agent's LogBatcher, posting straight to the
 * engine), its lease kept alive while the host can be reached, its exit code, outputs (read by the
 * agent's readOutputs) and the rest of its log reported once (the agent's report fitting), and then the
 * remote record marked reported. Connection loss and endpoint restarts only interrupt the following: the
 * job runs on in its own session on the host, and is followed again from the last byte stored.
 */
import { randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import { LogBatcher } from '../../agent/logs.js';
import { checkOutputs, paramFiles, type ReadOutputs } from '../../agent/outputs.js';
import { jobPaths } from '../../agent/paths.js';
import { parsePowerRequest, type ReadPower } from '../../agent/power.js';
import { boundedError, fitReport, tailBudget } from '../../agent/report.js';
import { scriptEnv } from '../../agent/runner.js';
import { sleep } from '../../client/http.js';
import type { Engine } from '../../engine/engine.js';
import { TaktError } from '../../model/errors.js';
import type { Machine } from '../../model/machine.js';
import { MAX_OUTPUT_BYTES, type AgentAction, type ClaimedJob, type CompleteRequest } from '../../model/protocol.js';
import { sshTargetText } from '../../model/ssh.js';
import type { ExecResult, SshConnection } from './connection.js';
import type { LogProgress } from './progress.js';
import { followScript, killScript, parseProbe, parseStartHeader, powerScript, probeScript, reportedScript, startScript, stopFollowScript, type Probe, type StartHeader } from './remote.js';
import { ExactUtf8 } from './utf8.js';

export type SshLog = (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;

/** What a job needs from the machine's driver. */
export interface JobHost {
  engine: Engine;
  machine: Pick<Machine, 'id' | 'name'> & { ssh: NonNullable<Machine['ssh']> };
  /** The remote base dir (bootstrap found it). */
  base: string;
  leaseMs: number;
  log: SshLog;
  /** The live connection, reconnecting (with backoff) when it is gone; rejects only when `signal` aborts. */
  connection(signal: AbortSignal): Promise<SshConnection>;
  /** The connection if it is up now (heartbeats go only while the host answers). */
  connected(): SshConnection | null;
  /** The job's result is stored: its dir on the host is marked reported (and its output dropped) on the next command. */
  markReported(jobDir: string): void;
  /** Dirs waiting to be marked reported, taken by a start that marks them on the way. */
  takeReported(): string[];
  /** A start that took them did not get through: they wait for the next one. */
  requeueReported(jobDirs: string[]): void;
  /** A job that must die but the host cannot be reached: killed as soon as it can (kept across restarts). */
  killLater(jobDir: string): void;
  /** The endpoint is stopping: leave the job running on the host; the next start reattaches. */
  signal: AbortSignal;
}

/** The job as the runner needs it: from a claim, or from the store after a restart. */
export interface RemoteJobSpec {
  id: string;
  task: string;
  timeoutMs: number;
  /** Declared outputs (the only ones reported). */
  outputs: string[];
  /** When the job began (ms since the epoch; default: now), for its deadline (jobDeadline). */
  startedAtMs?: number;
}

/** Between TERM and KILL, as the agent. */
const GRACE_MS = 2000;
/** How long the end of a job's log may hold up its report, as the agent. */
const LOG_FLUSH_MS = 10_000;
/** A job dir with no wrapper recorded this long after we first saw it: its start was interrupted. */
const UNSTARTED_GIVE_UP_MS = 60_000;
/** Catch-up reads of a finished job's log before reporting without the rest. */
const MAX_CATCH_UPS = 5;
/**
 * How long past its timeout and grace a job may go without its host saying it ended, before the endpoint
 * gives up on the host and reports it timed out itself: room for a probe's bound and a reconnect.
 */
export const OVERDUE_MARGIN_MS = 60_000;

/**
 * When the endpoint stops waiting for the host to report a job's end (ms since the epoch): the host's
 * wrapper enforces the timeout, but a hung or hostile host may never say so. Null: no timeout.
 */
export function jobDeadline(job: Pick<RemoteJobSpec, 'timeoutMs' | 'startedAtMs'>, now = Date.now()): number | null {
  if (!(job.timeoutMs > 0)) return null;
  return (job.startedAtMs ?? now) + job.timeoutMs + GRACE_MS + OVERDUE_MARGIN_MS;
}

/** The job's setup failed on the host: nothing ran. */
class SetupFailed extends Error {}

/** The first step of following: the start (which sets up, starts and follows in one command). */
type FirstStep = (
  conn: SshConnection,
  token: string,
  handlers: { onStdout: (d: Buffer) => void; onStderr: (d: Buffer) => void; signal: AbortSignal },
) => Promise<ExecResult>;

type Ending =
  | { kind: 'probe'; probe: Probe }
  /** The setup failed before anything could run. */
  | { kind: 'unstartable'; why: string }
  /** The endpoint no longer has the job running (cancelled, lost): killed on the host, nothing to report. */
  | { kind: 'gone'; why: string }
  /** No trace of the job, or its process gone without an exit code: it is reported lost with `why`. */
  | { kind: 'lost'; why: string }
  /** The host did not report the job's end by its deadline (jobDeadline): reported timed out. */
  | { kind: 'overdue' }
  /** The endpoint is stopping. */
  | { kind: 'stopping' };

export class RemoteJob {
  private readonly where: string;
  private readonly paths: ReturnType<typeof jobPaths>;
  private readonly logs: LogBatcher;
  private readonly decoders = { stdout: new ExactUtf8(), stderr: new ExactUtf8() };
  /** Bytes of each remote log received (sent or queued). */
  private readonly received: { stdout: number; stderr: number };
  private gone: string | null = null;
  /** Past its deadline with no end reported by the host. */
  private overdue = false;
  private readonly stopFollowing = new AbortController();
  /** The follower on the host now (its token), so it can be ended when following stops early. */
  private followToken: string | null = null;
  /** A fresh start (not a reattach): a job dir the host has no trace of never got there. */
  private starting = false;
  /** Log sequence numbers of this run count from here (what the store held when it began). */
  private readonly seqBase: number;

  constructor(
    private readonly host: JobHost,
    private readonly job: RemoteJobSpec,
    private readonly progress: LogProgress,
  ) {
    this.where = sshTargetText(host.machine.ssh);
    this.paths = jobPaths(posix.join(host.base, 'jobs'), job.id);
    this.received = progress.sent;
    const base = progress.seqBase;
    this.seqBase = base;
    this.logs = new LogBatcher({
      jobId: job.id,
      log: host.log,
      post: async (chunk) => {
        const seq = base + chunk.seq;
        progress.pending(seq, chunk.stream, chunk.stream === 'system' ? 0 : Buffer.byteLength(chunk.data));
        const r = await host.engine.appendLog(job.id, null, { ...chunk, seq });
        progress.stored(seq);
        return r.cut ? { logCut: true } : undefined;
      },
    });
  }

  private running: Promise<void> = Promise.resolve();

  /** Runs `go` (start or follow); `settled` is over when it is. */
  run(go: (job: RemoteJob) => Promise<void>): Promise<void> {
    this.running = go(this);
    return this.running;
  }

  get settled(): Promise<void> {
    return this.running.catch(() => undefined);
  }

  /** The endpoint is done with this job (its machine is deleted): it is killed on the host, not reported. */
  abandon(why: string): void {
    this.giveUp(why);
  }

  /** The remote work dir. */
  get jobDir(): string {
    return this.paths.workDir;
  }

  /**
   * A fresh claim: sets the job up on the host, starts it and follows it — one command — then reports it.
   * The setup's answer is the first line of its stdout (remote.ts `startScript`), not log output.
   */
  async start(claimed: ClaimedJob): Promise<void> {
    const { files, skipped } = paramFiles(claimed.params);
    if (skipped.length) this.logs.push('system', `takt-ssh: params not usable as file names, not available to takt-get: ${skipped.join(', ')}\n`);
    const env = scriptEnv(claimed, { paths: this.paths, binDir: posix.join(this.host.base, 'bin'), machineId: this.host.machine.id, root: this.host.machine.ssh.root ?? '/', baseEnv: {} });
    const spec = {
      jobDir: this.paths.workDir,
      binDir: posix.join(this.host.base, 'bin'),
      script: claimed.script,
      params: files,
      env: Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined)),
      timeoutMs: claimed.timeoutMs,
      graceMs: GRACE_MS,
    };
    this.starting = true;
    await this.run$(async (conn, token, handlers) => {
      // Dirs of jobs reported earlier are marked on the way (one command fewer per job).
      const reported = this.host.takeReported();
      let header: StartHeader | null = null;
      let head = Buffer.alloc(0);
      const r = await conn
        .run(startScript({ ...spec, reported }, token), {
          ...handlers,
          onStdout: (d) => {
            if (header) return handlers.onStdout(d);
            head = Buffer.concat([head, d]);
            const nl = head.indexOf(10);
            if (nl < 0 && head.length < 64 * 1024) return;
            header = parseStartHeader(head.subarray(0, nl < 0 ? head.length : nl).toString('utf8')) ?? { kind: 'failed', message: `unexpected answer: ${JSON.stringify(head.subarray(0, 200).toString('utf8'))}` };
            if (nl >= 0 && nl + 1 < head.length) handlers.onStdout(head.subarray(nl + 1));
          },
        })
        .catch((err: unknown) => {
          this.host.requeueReported(reported);
          throw err;
        });
      const h = header as StartHeader | null;
      if (h?.kind === 'failed') throw new SetupFailed(h.message);
      if (r.code === 90) throw new SetupFailed(r.stderr.trim() || 'the setup failed');
      if (h?.kind === 'exists') this.host.log('warn', 'ssh: the job dir was there already; following what the host recorded (never starting it twice)', { machine: this.host.machine.name, job: this.job.id });
      return r;
    });
  }

  /** After an endpoint restart (or a reconnect): follows the job from the last byte stored and reports it. */
  async follow(): Promise<void> {
    await this.run$(null);
  }

  /** Follows (after `first`, the start, when given) until the job ends, then reports what happened. */
  private async run$(first: FirstStep | null): Promise<void> {
    const heartbeat = this.heartbeat();
    const deadline = jobDeadline(this.job);
    const overdue =
      deadline === null
        ? undefined
        : setTimeout(
            () => {
              this.overdue = true;
              this.stopFollowing.abort();
            },
            Math.max(0, deadline - Date.now()),
          );
    overdue?.unref();
    let ending: Ending;
    try {
      ending = await this.followUntilEnd(first);
    } finally {
      heartbeat.stop();
      clearTimeout(overdue);
    }
    if (ending.kind === 'stopping' || ending.kind === 'gone' || ending.kind === 'overdue') await this.stopFollower();
    switch (ending.kind) {
      case 'stopping':
        this.logs.discard();
        return;
      case 'gone':
        this.logs.discard();
        await this.killRemote(ending.why);
        this.progress.clear();
        return;
      case 'unstartable':
        // Nothing ran: the wrapper is the setup's last step and the only thing that starts the task.
        await this.report({ exitCode: null, outputs: {}, error: boundedError(`cannot start the job on ${this.where}: ${ending.why}`) }, true);
        return;
      case 'lost':
        this.logs.discard();
        await this.host.engine.loseJob(this.job.id, ending.why);
        this.host.log('warn', `ssh: job lost: ${ending.why}`, { machine: this.host.machine.name, job: this.job.id, task: this.job.task });
        this.host.markReported(this.paths.workDir);
        this.progress.clear();
        return;
      case 'overdue': {
        // As the agent reports a job its timeout killed; the host is told to kill it (now, or when it answers).
        const why = `${this.where} did not report the end of the job within its timeout (${formatMs(this.job.timeoutMs)}) and ${formatMs(GRACE_MS + OVERDUE_MARGIN_MS)} more: the endpoint gave up on the host (hung or not answering) and reported it timed out`;
        this.logs.push('system', `takt-ssh: ${why}\n`);
        await this.killRemote(why);
        await this.report({ exitCode: null, timedOut: true, outputs: {}, error: boundedError(why) }, false);
        return;
      }
      case 'probe':
        await this.reportFinished(ending.probe);
    }
  }

  /** Follows the log until the job has ended on the host (or the endpoint gave up on it). */
  private async followUntilEnd(first: FirstStep | null): Promise<Ending> {
    const signal = this.host.signal;
    const stopOnStop = () => this.stopFollowing.abort();
    signal.addEventListener('abort', stopOnStop, { once: true });
    try {
      return await this.followLoop(first);
    } finally {
      signal.removeEventListener('abort', stopOnStop);
    }
  }

  private async followLoop(first: FirstStep | null): Promise<Ending> {
    const signal = this.host.signal;
    let unstartedSince: number | null = null;
    let catchUps = 0;
    while (!signal.aborted) {
      if (this.gone) return { kind: 'gone', why: this.gone };
      if (this.overdue) return { kind: 'overdue' };
      let conn: SshConnection;
      try {
        conn = await this.host.connection(this.stopFollowing.signal);
      } catch {
        continue; // stopping, or the endpoint gave up on the job: the loop's checks say which
      }
      const began = Date.now();
      try {
        const token = randomBytes(6).toString('hex');
        this.followToken = token;
        const handlers = { onStdout: (d: Buffer) => this.take('stdout', d), onStderr: (d: Buffer) => this.take('stderr', d), signal: this.stopFollowing.signal };
        const step = first;
        first = null; // the start runs once, whatever happens to it
        const follow = step ? await step(conn, token, handlers) : await conn.run(followScript(this.paths.workDir, this.received, token), handlers);
        if (this.gone) return { kind: 'gone', why: this.gone };
        if (this.overdue) return { kind: 'overdue' };
        if (signal.aborted) break;
        const probe = parseProbe((await conn.run(probeScript(this.paths.workDir, this.job.outputs, MAX_OUTPUT_BYTES, this.received), { signal: this.stopFollowing.signal })).stdout);
        // The host answered: a contact, as an agent's request would be (short jobs see no heartbeat).
        this.host.engine.heard(this.host.machine.id, { version: 'ssh', address: this.host.machine.ssh.host, via: 'ssh' });
        switch (probe.state) {
          case 'finished':
            // What the followers had not sent comes with the probe; a larger rest takes another round.
            if (probe.rest.stdout.length) this.take('stdout', probe.rest.stdout);
            if (probe.rest.stderr.length) this.take('stderr', probe.rest.stderr);
            if ((probe.size.stdout > this.received.stdout || probe.size.stderr > this.received.stderr) && catchUps++ < MAX_CATCH_UPS) continue;
            return { kind: 'probe', probe };
          case 'running':
            // The follower ended early (a connection hiccup): not faster than twice a second.
            if (Date.now() - began < 500) await sleep(500, signal);
            continue;
          case 'missing':
            // (The probe has claimed the dir: a start still on its way can no longer run it.)
            if (this.starting) return { kind: 'lost', why: `its start did not reach ${this.where} before the connection went, and it will not run now` };
            return { kind: 'lost', why: `no trace of it on ${this.where}: its job dir ${this.paths.workDir} is gone (deleted, or the host was rebuilt)` };
          case 'vanished':
            return { kind: 'lost', why: `its process on ${this.where} ended without recording an exit code (the host rebooted, or the job's processes were killed)` };
          case 'unstarted':
            unstartedSince ??= Date.now();
            if (Date.now() - unstartedSince > UNSTARTED_GIVE_UP_MS) {
              return { kind: 'lost', why: `its start on ${this.where} was interrupted: the job dir ${this.paths.workDir} exists but no process was ever recorded for it` };
            }
            if (follow.code !== 3) continue;
            await sleep(1000, signal);
            continue;
        }
      } catch (err) {
        if (err instanceof SetupFailed) return { kind: 'unstartable', why: err.message };
        if (signal.aborted || this.gone || this.overdue) continue;
        // The connection went (or the host answered something odd): the job runs on; follow it again.
        this.host.log('warn', `ssh: lost track of a running job; following it again: ${(err as Error).message}`, { machine: this.host.machine.name, job: this.job.id });
        await sleep(500, signal);
      }
    }
    return this.gone ? { kind: 'gone', why: this.gone } : { kind: 'stopping' };
  }

  private take(stream: 'stdout' | 'stderr', data: Buffer): void {
    this.received[stream] += data.length;
    const text = this.decoders[stream].push(data);
    // Bytes held back (half a character) are read again from their offset after a reconnect.
    if (text) this.logs.push(stream, text);
  }

  /**
   * Heartbeats every leaseMs/3 while the host answers; the endpoint saying "not running" ends the job here.
   * Between two, it listens for the job's end: an operator's cancel kills the job on the host at once.
   */
  private heartbeat(): { stop(): void } {
    const stop = new AbortController();
    const every = Math.max(100, Math.floor(this.host.leaseMs / 3));
    void (async () => {
      let last = Date.now();
      while (!stop.signal.aborted && !this.gone) {
        // Returns early when the job ends (an operator cancelled it); it is then given up below like any
        // job the endpoint no longer runs, once the host has answered or its dead connection is closed
        // (killing it on a connection that looks open but is dead would hang). Never more often than
        // every interval otherwise: an ended job that is not given up must not spin this loop.
        const ended = await this.host.engine.jobEnded(this.job.id, this.host.machine.id, Math.max(0, every - (Date.now() - last)), stop.signal).catch(() => false);
        if (!ended) await sleep(Math.max(0, every - (Date.now() - last)), stop.signal);
        last = Date.now();
        if (stop.signal.aborted || this.gone) continue;
        const conn = this.host.connected();
        // A heartbeat says the host is there: it answers a no-op first. (A dead TCP connection can look
        // open for a while; keepalives notice only after three misses.)
        const alive = conn ? await conn.run('true\n', { timeoutMs: every }).then(() => true, () => false) : false;
        if (stop.signal.aborted) continue;
        if (!alive) {
          // No word from the host: no heartbeat (the lease runs out as it would for a silent agent), but
          // a job the endpoint has ended meanwhile is given up instead of waiting on the host for ever.
          if (conn && !conn.closed) {
            this.host.log('warn', `ssh: ${this.where} does not answer; reconnecting`, { machine: this.host.machine.name, job: this.job.id });
            conn.close();
          }
          const state = (await this.host.engine.store.getJobState(this.job.id).catch(() => undefined))?.state;
          if (state !== undefined && state !== 'running') this.giveUp(`the endpoint ended this job (${state}) while ${this.where} could not be reached`);
          continue;
        }
        // The host answered: as fresh a contact as an agent's heartbeat (liveness).
        this.host.engine.heard(this.host.machine.id, { version: 'ssh', address: this.host.machine.ssh.host, via: 'ssh' });
        try {
          const r = await this.host.engine.heartbeat(this.job.id, null);
          if (!r.running) this.giveUp('the endpoint no longer considers this job running (cancelled, or lost)');
        } catch (err) {
          if (err instanceof TaktError && (err.status === 404 || err.status === 409)) this.giveUp(`the endpoint no longer knows this job: ${err.message}`);
          else this.host.log('warn', 'ssh: heartbeat failed; the job keeps running', { job: this.job.id, error: (err as Error).message });
        }
      }
    })();
    return { stop: () => stop.abort() };
  }

  private giveUp(why: string): void {
    if (this.gone) return;
    this.gone = why;
    this.stopFollowing.abort();
  }

  /** Ends the follower left on the host when following stopped early (best effort: it also ends on its own). */
  private async stopFollower(): Promise<void> {
    const token = this.followToken;
    const conn = this.host.connected();
    if (!token || !conn) return;
    this.followToken = null;
    await conn.run(stopFollowScript(this.paths.workDir, token)).catch(() => undefined);
  }

  private async killRemote(why: string): Promise<void> {
    this.host.log('warn', `ssh: killing the job on the host: ${why}`, { machine: this.host.machine.name, job: this.job.id });
    try {
      const conn = await this.connectedOrSoon();
      if (!conn) throw new Error(`${this.where} cannot be reached`);
      await conn.run(`(\n${killScript(this.paths.workDir, GRACE_MS)})\n(\n${reportedScript(this.paths.workDir)})\n`);
    } catch (err) {
      this.host.killLater(this.paths.workDir);
      this.host.log('warn', `ssh: could not kill the job on the host (${(err as Error).message}); it is killed as soon as the host answers again`, { machine: this.host.machine.name, job: this.job.id });
    }
  }

  private async connectedOrSoon(): Promise<SshConnection | null> {
    const now = this.host.connected();
    if (now) return now;
    const t = new AbortController();
    const timer = setTimeout(() => t.abort(), 10_000);
    try {
      return await this.host.connection(t.signal);
    } catch {
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The job's result from the probe of a finished job: outputs read with the agent's rules, then reported. */
  private async reportFinished(p: Probe): Promise<void> {
    if (p.cancelled) {
      // Killed because the endpoint had given up on it: its result is not reported (as the agent).
      this.logs.discard();
      this.host.markReported(this.paths.workDir);
      this.progress.clear();
      return;
    }
    const read = await this.readOutputs(p);
    const power = powerOfProbe(p);
    const rest = this.decoders.stdout.end() + this.decoders.stderr.end();
    if (rest) this.logs.push('stdout', rest);
    if (p.timedOut) this.logs.push('system', `takt-ssh: the task timed out after ${formatMs(this.job.timeoutMs)}; its process group was killed\n`);
    const errors = [p.exitCode === null && !p.timedOut ? `the job's exit code on ${this.where} could not be read` : null, read.problem, power.problem].filter((e): e is string => !!e);
    const report: CompleteRequest = {
      exitCode: p.timedOut ? null : p.exitCode,
      outputs: read.outputs,
      ...(p.timedOut ? { timedOut: true } : {}),
      ...(errors.length ? { error: boundedError(errors.join('; ')) } : {}),
      ...(power.power ? { power: power.power } : {}),
    };
    await this.report(report, true);
  }

  /**
   * The probe's outputs, checked in memory with the agent's rules (checkOutputs): only declared outputs
   * with valid names are read; nothing the host says becomes a path. Lines the probe refused fail the job.
   */
  private async readOutputs(p: Probe): Promise<{ outputs: Record<string, string>; problem: string | null }> {
    return outputsOfProbe(p, this.job.outputs);
  }

  /** Sends the report with the end of the log, acts on the answer, and marks the remote record. */
  private async report(base: CompleteRequest, mark: boolean): Promise<void> {
    const { tail } = await this.logs.closeWithTail(LOG_FLUSH_MS, tailBudget(base));
    const seqBase = this.seqBase;
    const { report, dropped } = fitReport(tail.length ? { ...base, log: tail.map((c) => ({ ...c, seq: seqBase + c.seq })) } : base);
    if (dropped) this.host.log('warn', 'ssh: the job report did not fit; left out of it', { job: this.job.id, dropped });
    let action: AgentAction = 'continue';
    for (let attempt = 0; ; attempt++) {
      try {
        const answer = await this.host.engine.complete(this.job.id, null, report);
        action = answer.action;
        this.host.log('info', `ssh: ${this.host.machine.name}: ${this.job.task} reported`, { job: this.job.id, state: answer.job.state, exitCode: report.exitCode });
        break;
      } catch (err) {
        if (err instanceof TaktError && err.status < 500) {
          this.host.log('warn', `ssh: the endpoint did not take the job's report: ${err.message}`, { job: this.job.id });
          break;
        }
        if (this.host.signal.aborted || attempt >= 20) return; // kept on the host: reported after the restart
        await sleep(Math.min(5000, 200 * 2 ** attempt), this.host.signal);
      }
    }
    if (mark) this.host.markReported(this.paths.workDir);
    this.progress.clear();
    if (action !== 'continue') await this.power(action);
  }

  /** The exit-code contract's reboot (64) and power off (32): the host does it, detached. */
  private async power(action: Exclude<AgentAction, 'continue'>): Promise<void> {
    this.host.log('info', `ssh: ${action} of ${this.where} asked by the task's exit code`, { machine: this.host.machine.name, job: this.job.id });
    try {
      const conn = this.host.connected();
      const r = conn ? await conn.run(powerScript(action)) : null;
      if (r?.code !== 0) this.host.log('warn', `ssh: could not ${action} ${this.where}`, { machine: this.host.machine.name, stderr: r?.stderr.trim() });
    } catch (err) {
      this.host.log('warn', `ssh: could not ${action} ${this.where}: ${(err as Error).message}`, { machine: this.host.machine.name });
    }
  }
}

function formatMs(ms: number): string {
  return ms < 1000 ? `${ms} ms` : ms < 120_000 ? `${+(ms / 1000).toFixed(1)} s` : `${+(ms / 60_000).toFixed(1)} min`;
}

/**
 * A finished job's outputs from its probe (remote.ts), by the agent's rules (checkOutputs): the content
 * the host sent is used as is (its length, not the size the host claims, counts), undeclared or unsent
 * ones by the size the host gave. Output lines the probe refused are named in `problem`, so the job fails
 * with that reason. Pure.
 */
export async function outputsOfProbe(p: Pick<Probe, 'outputs' | 'refused'>, declared: readonly string[]): Promise<ReadOutputs> {
  const read = await checkOutputs(
    p.outputs.map((o) => ({
      name: o.name,
      size: o.content ? o.content.length : o.size,
      // A declared output whose content the host did not send (it said too large) cannot be read.
      read: () => (o.content ? o.content.toString('utf8') : ''),
    })),
    declared,
  );
  const unsent = p.outputs.filter((o) => !o.content && declared.includes(o.name) && o.size <= MAX_OUTPUT_BYTES).map((o) => o.name);
  for (const n of unsent) delete read.outputs[n];
  const problems = [
    p.refused.length ? `the host sent output lines that are not valid (names must be a-z, 0-9 and _, starting with a letter), not reported: ${p.refused.join(', ')}` : null,
    unsent.length ? `the host did not send the content of outputs: ${unsent.join(', ')}` : null,
    read.problem,
  ].filter((x): x is string => x !== null);
  return { outputs: read.outputs, problem: problems.length ? problems.join('; ') : null };
}

/**
 * What the job's `takt-power` asked, from its probe, by the agent's rules (agent/power.ts): a file too
 * large to be a request, or content takt-power does not write, is a problem (the job fails) and no
 * request. Pure.
 */
export function powerOfProbe(p: Pick<Probe, 'power'>): ReadPower {
  const big = (['next_boot', 'action'] as const).filter((n) => p.power[n] === null);
  if (big.length) return { problem: big.map((n) => `takt-power's ${n} request is not a small regular file`).join('; ') };
  return parsePowerRequest(p.power as { next_boot?: string; action?: string });
}
