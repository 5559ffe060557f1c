/**
 * The agent: claims its machine's jobs from the endpoint, runs them, streams their logs and reports
 * their results exactly once. It never gives up on the endpoint — network loss, endpoint restarts and a
 * rejected token are logged and retried — and it resolves only to stop (0), or when the endpoint asks
 * the machine to reboot (64) or power off (32); a supervisor acts on those codes.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { ApiClient, backoffMs } from '../client/http.js';
import { LOCAL_BOOTENV } from '../model/bootenv-names.js';
import { TaktError } from '../model/errors.js';
import { decodeExit } from '../model/exitcodes.js';
import { AGENT_EXIT_POWEROFF, AGENT_EXIT_REBOOT, machineIdFromToken, type AgentAction, type ClaimedJob, type ClaimResponse, type CompleteRequest } from '../model/protocol.js';
import { Chaos, type ChaosSpec } from './chaos.js';
import { deliverReport } from './deliver.js';
import { startHeartbeat } from './heartbeat.js';
import { installHelpers } from './helpers.js';
import { writeImage, type ImageRequest } from './image.js';
import { publishImage } from './publish.js';
import { bootenvOf } from './inventory.js';
import { pruneJobDirs } from './jobdirs.js';
import { errorMessage, jsonLineLog, type AgentLog } from './log.js';
import { LogBatcher } from './logs.js';
import { killJobProcesses } from './orphans.js';
import { agentPaths, jobPaths, type AgentPaths } from './paths.js';
import { AUTH_RETRY_MS, classify, sleep } from './retry.js';
import { runScript, type RunResult, type RunSetup } from './runner.js';
import { boundedError, fitReport, tailBudget } from './report.js';
import { prepareSandboxDirs, removeTree, type RunAs } from './sandbox.js';
import { AgentState, interruptedReport, type PendingReport } from './state.js';

export interface AgentOptions {
  /** The endpoint, e.g. http://127.0.0.1:8092. */
  endpoint: string;
  /** Machine token `tkm.<machineId>.<secret>`; the machine id comes from it. */
  token: string;
  /** Agent home: state/, jobs/<jobId>/ work dirs, bin/ helper commands. */
  dir: string;
  /** Exported to scripts as TAKT_ROOT; default '/'. The local broker passes a private sandbox dir. */
  root?: string;
  log?: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
  /** Long-poll length, default 25 (the endpoint allows up to 60). */
  claimWaitSeconds?: number;
  /** Fault injection (testing the endpoint's invariants); see chaos.ts. */
  chaos?: ChaosSpec;
  /** The scripts' side (jobs/, bin/, home/, tmp/); default `dir`. See paths.ts. */
  sandbox?: string;
  /** Run scripts as this user (the agent must be root); see sandbox.ts. */
  runAs?: RunAs;
  /** PEM: the endpoint's CA; an https endpoint must chain to it and nothing else is trusted. */
  ca?: string;
  /**
   * Where the token came from: when the endpoint rejects it, the agent reads this file again and carries on
   * with a new token found there (a re-join or `machines token --rotate` rewrote it) instead of waiting for a restart.
   */
  tokenFile?: string;
  /** This agent's version, sent as `user-agent: takt-agent/<version>` (the endpoint shows it per machine). */
  version?: string;
}

export const AGENT_EXIT_STOPPED = 0;

/**
 * The bootenv the machine under `root` booted, for the endpoint's check that a stage's tasks run in the
 * bootenv the stage needs: `takt.bootenv=NAME` on its kernel command line (takt's in-memory environments
 * put it there), `local` when the command line has none (an OS booted from disk), undefined when the
 * command line cannot be read (a local sandbox has no proc/ of its own).
 */
export async function runningBootenv(root: string): Promise<string | undefined> {
  try {
    return bootenvOf(await readFile(join(root, 'proc', 'cmdline'), 'utf8')) ?? LOCAL_BOOTENV;
  } catch {
    return undefined;
  }
}
/** How long the end of a job's log may hold up its report. */
const LOG_FLUSH_MS = 10_000;
/** An endpoint that answers "nothing to do" at once (no long-poll) is not asked more often than this. */
const MIN_CLAIM_INTERVAL_MS = 1000;
/** After an unexpected local failure (disk full…), before trying again. */
const INTERNAL_RETRY_MS = 5000;
/** Old job dirs are pruned every this many jobs, in the background. */
const PRUNE_EVERY_JOBS = 10;

/** Exit code for `action`, or null to keep claiming. */
function exitFor(action: AgentAction): number | null {
  return action === 'reboot' ? AGENT_EXIT_REBOOT : action === 'poweroff' ? AGENT_EXIT_POWEROFF : null;
}

export async function runAgent(opts: AgentOptions, signal?: AbortSignal): Promise<number> {
  const machineId = machineIdFromToken(opts.token);
  if (!machineId) throw new TaktError('bad_request', 'the token is not a machine token (expected tkm.<machineId>.<secret>)', { path: 'token' });
  const agent = new Agent(opts, machineId, signal);
  return agent.run();
}

class Agent {
  private readonly log: AgentLog;
  private readonly paths: AgentPaths;
  private readonly client: ApiClient;
  private readonly state: AgentState;
  private readonly root: string;
  private readonly waitSeconds: number;
  private readonly chaos: Chaos | null;
  /** The last machine state logged, to log changes only. */
  private lastMachine = '';
  /** Failed claims in a row: drives the backoff and keeps an outage from flooding the log. */
  private claimFailures = 0;
  /**
   * The last job this process received (null: none yet), sent with each claim after the first so the
   * endpoint can tell a job whose claim answer never arrived (handed back) from one this agent dropped.
   */
  private lastJob: string | null | undefined = undefined;
  /** The next job, when the endpoint handed it over with the answer to a completion: run it without claiming. */
  private handed: ClaimResponse | null = null;
  private jobsSincePrune = 0;
  /** The machine token in use (the token file may bring a new one). */
  private token: string;
  private reloading: Promise<boolean> | null = null;
  /** The bootenv this agent's machine booted (ClaimRequest.bootenv); undefined when it cannot tell. */
  private bootenv: string | undefined;
  private pruning: Promise<void> | null = null;

  constructor(
    private readonly opts: AgentOptions,
    private readonly machineId: string,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.log = opts.log ?? jsonLineLog;
    this.token = opts.token;
    this.paths = agentPaths(resolve(opts.dir), opts.sandbox === undefined ? undefined : resolve(opts.sandbox));
    this.chaos = opts.chaos ? new Chaos(opts.chaos, machineId, this.log) : null;
    const chaos = this.chaos;
    this.client = new ApiClient({
      endpoint: opts.endpoint,
      token: opts.token,
      ...(opts.ca ? { ca: opts.ca } : {}),
      ...(opts.tokenFile ? { onUnauthorized: () => this.reloadToken() } : {}),
      userAgent: `takt-agent/${opts.version ?? 'unknown'}`,
      ...(chaos ? { beforeRequest: () => chaos.beforeRequest() } : {}),
    });
    this.state = new AgentState(this.paths.stateDir, this.log);
    this.root = opts.root ?? '/';
    this.waitSeconds = Math.max(0, Math.min(60, Math.round(opts.claimWaitSeconds ?? 25)));
  }

  private get stopped(): boolean {
    return this.signal?.aborted ?? false;
  }

  async run(): Promise<number> {
    // Local setup problems (an unwritable dir) are configuration errors: they throw to the caller.
    await mkdir(this.paths.jobsDir, { recursive: true, mode: 0o700 });
    if (this.opts.runAs) prepareSandboxDirs(this.paths, this.opts.runAs);
    await installHelpers(this.paths.binDir);
    await this.state.init();
    this.bootenv = await runningBootenv(this.root);
    this.log('info', 'agent started', { machineId: this.machineId, endpoint: this.client.endpoint, dir: this.paths.home, root: this.root });

    let restarting = true;
    while (!this.stopped) {
      try {
        // Whatever a previous run (or a failed iteration) left on disk is settled before claiming:
        // claiming while a job is open would make the endpoint abandon it.
        const code = (await this.settleLeftovers(restarting)) ?? (await this.claimAndRun());
        restarting = false;
        if (code !== null) return code;
      } catch (err) {
        if (this.stopped) break;
        this.log('error', 'unexpected agent failure; retrying', { error: errorMessage(err) });
        await sleep(INTERNAL_RETRY_MS, this.signal);
      }
    }
    await this.pruning;
    this.log('info', 'agent stopped', { machineId: this.machineId });
    return AGENT_EXIT_STOPPED;
  }

  /** Delivers a pending report, then reports a job the agent was running when it died. */
  private async settleLeftovers(atStart: boolean): Promise<number | null> {
    const { pending, interrupted } = await this.state.recover();
    if (pending) {
      this.log('info', 'delivering a saved job report', { jobId: pending.jobId });
      const code = await this.deliver(pending);
      if (code !== null) return code;
    }
    if (interrupted && !this.stopped) {
      const killed = await killJobProcesses(interrupted.jobId);
      this.log('warn', atStart ? 'a job was running when the agent last stopped; reporting its result as unknown' : 'a job was interrupted; reporting its result as unknown', {
        jobId: interrupted.jobId,
        task: interrupted.task,
        killedProcesses: killed.length,
      });
      const report = interruptedReport(interrupted);
      await this.state.writePending(report);
      await this.state.clearCurrent();
      return this.deliver(report);
    }
    return null;
  }

  /**
   * Sends a saved report until it is answered, then removes it. Returns the exit code its action asks
   * for (null: keep going), or 0 when the agent is stopping (the report stays for the next start).
   */
  private async deliver(p: PendingReport): Promise<number | null> {
    const d = await deliverReport(this.client, p, { log: this.log, signal: this.signal });
    if (d.kind === 'aborted') return AGENT_EXIT_STOPPED;
    await this.state.clearPending();
    if (d.kind === 'dropped') return null;
    this.log('info', 'job report delivered', { jobId: p.jobId, state: d.state, action: d.action });
    if (d.next) {
      this.handed = d.next;
      if (d.next.job) this.lastJob = d.next.job.id;
    }
    return exitFor(d.action);
  }

  /** One claim; runs the job it brings. */
  private async claimAndRun(): Promise<number | null> {
    const handed = this.handed;
    this.handed = null;
    // A handed-over "nothing to do" still leads to a long-poll: only a job or an action (a reboot into the
    // next stage's bootenv) saves the claim — dropping a reboot would leave the machine in the old bootenv.
    const res = handed?.job || handed?.action ? handed : await this.claim();
    if (!res) return null;
    if (res.machine) this.noteMachine(res.machine);
    if (res.job) return this.runJob(res.job);
    if (res.action === 'reboot') {
      this.log('info', 'the machine is to reboot (its next stage runs in another boot environment)', { machineId: this.machineId });
      return AGENT_EXIT_REBOOT;
    }
    if (res.machine?.power === 'off') {
      this.log('info', 'the machine is to be powered off', { machineId: this.machineId });
      return AGENT_EXIT_POWEROFF;
    }
    return null;
  }

  /** Long-polls for a job. Null after a failure (already waited out) or when stopping. */
  private async claim(): Promise<ClaimResponse | null> {
    const started = Date.now();
    try {
      const body = { ...(this.lastJob === undefined ? {} : { lastJob: this.lastJob }), ...(this.bootenv ? { bootenv: this.bootenv } : {}) };
      this.lastJob ??= null;
      const res = await this.client.post<ClaimResponse>(`/machines/${encodeURIComponent(this.machineId)}/claim`, body, {
        query: { wait: this.waitSeconds },
        timeoutMs: (this.waitSeconds + 10) * 1000,
        signal: this.signal,
      });
      if (res?.job) this.lastJob = res.job.id;
      if (this.claimFailures > 0) this.log('info', 'endpoint reachable again', { endpoint: this.client.endpoint });
      this.claimFailures = 0;
      if (!res?.job) {
        const left = Math.min(MIN_CLAIM_INTERVAL_MS, this.waitSeconds * 1000) - (Date.now() - started);
        if (left > 0) await sleep(left, this.signal);
      }
      return res ?? null;
    } catch (err) {
      if (this.stopped) return null;
      const kind = classify(err);
      const error = errorMessage(err);
      if (kind === 'retry') {
        if (this.claimFailures === 0 || this.claimFailures % 20 === 0) this.log('warn', 'cannot claim jobs; retrying', { endpoint: this.client.endpoint, error, attempt: this.claimFailures });
        await sleep(backoffMs(this.claimFailures++), this.signal);
      } else {
        // 401/403 (and an endpoint that does not know this machine): an operator has to act; ask slowly.
        this.log('error', kind === 'auth' ? `token rejected: ${error}` : `the endpoint refused the claim: ${error}`, { machineId: this.machineId });
        this.claimFailures++;
        await sleep(AUTH_RETRY_MS, this.signal);
      }
      return null;
    }
  }

  /**
   * After a rejected token (the client asks, see ClientOptions.onUnauthorized): a different token for this
   * machine in the token file is used from now on. Concurrent asks read the file once.
   */
  private reloadToken(): Promise<boolean> {
    this.reloading ??= this.readTokenFile().finally(() => (this.reloading = null));
    return this.reloading;
  }

  private async readTokenFile(): Promise<boolean> {
    if (!this.opts.tokenFile) return false;
    let next: string;
    try {
      next = (await readFile(this.opts.tokenFile, 'utf8')).trim();
    } catch {
      return false;
    }
    if (next === this.token || machineIdFromToken(next) !== this.machineId) return false;
    this.token = next;
    this.client.setToken(next);
    this.log('info', 'the endpoint rejected the token; using the new one in the token file', { machineId: this.machineId, file: this.opts.tokenFile });
    return true;
  }

  private noteMachine(m: ClaimResponse['machine']): void {
    const key = `${m.state}|${m.reason ?? ''}|${m.power}`;
    if (key === this.lastMachine) return;
    this.lastMachine = key;
    this.log('info', 'machine state', { machineId: this.machineId, state: m.state, reason: m.reason, power: m.power });
  }

  /** Runs one job and reports it. Returns the exit code to stop with, or null to claim again. */
  private async runJob(job: ClaimedJob): Promise<number | null> {
    const started = Date.now();
    const paths = jobPaths(this.paths.jobsDir, job.id);
    // Task and id only: the script and params may hold secrets.
    this.log('info', 'job started', { jobId: job.id, task: job.task, timeoutMs: job.timeoutMs });
    await this.state.writeCurrent({ jobId: job.id, task: job.task, startedAt: new Date(started).toISOString() });

    const logs = new LogBatcher({
      jobId: job.id,
      log: this.log,
      post: (chunk, signal) => this.client.post(`/jobs/${encodeURIComponent(job.id)}/log`, chunk, { signal, timeoutMs: 10_000 }),
    });
    const kill = new AbortController();
    let gone: string | null = null;
    const onStop = () => kill.abort();
    this.signal?.addEventListener('abort', onStop, { once: true });
    const heartbeat = startHeartbeat(this.client, job.id, job.leaseMs, (why) => {
      gone = why;
      kill.abort();
    }, this.log);

    const chaos = this.chaos?.forJob(job.id);
    const disarm = chaos ? this.chaos!.arm(job.id, chaos) : () => {};
    let result: RunResult;
    try {
      if (chaos?.fail) {
        logs.push('system', 'chaos: injected failure; the script did not run\n');
        result = { exitCode: 1, timedOut: false, outputs: {}, aborted: false, error: 'chaos: injected failure' };
      } else {
        result = await runScript(
          job,
          { paths, binDir: this.paths.binDir, machineId: this.machineId, root: this.root, token: this.token, ...this.scriptUser() },
          (stream, data) => logs.push(stream, data),
          kill.signal,
        );
        // takt-image: written now, while the heartbeat still holds the job's lease (it may take minutes).
        if (result.image) result = await this.carryOutImage(job.id, result, result.image, (line) => logs.push('system', line), kill.signal);
      }
    } finally {
      disarm();
      heartbeat.stop();
      this.signal?.removeEventListener('abort', onStop);
    }

    if (this.stopped) {
      // current.json stays: the next start reports this job as interrupted, unless the endpoint's lease
      // expiry has marked it lost first (then that report is refused and dropped).
      logs.discard();
      this.log('info', 'stopping: killed the running job; its result is left to the endpoint', { jobId: job.id });
      return AGENT_EXIT_STOPPED;
    }
    if (gone) {
      logs.discard();
      await this.state.clearCurrent();
      this.log('warn', 'killed the job: the endpoint has moved on; its result is not reported', { jobId: job.id, why: gone });
      this.prune();
      return null;
    }

    this.log('info', 'job ended', {
      jobId: job.id,
      task: job.task,
      exitCode: result.exitCode,
      timedOut: result.timedOut,
      durationMs: Date.now() - started,
      outputs: Object.keys(result.outputs),
      ...(result.error ? { error: result.error } : {}),
    });

    // The log goes with or before the report (the endpoint shows a finished job with its whole log):
    // its end rides in the completion; a longer backlog is posted first, but cannot hold the report up
    // for long. A stop during the flush drops the rest of the log. The tail takes only the room the
    // report leaves in one request, measured as sent.
    const base: CompleteRequest = {
      exitCode: result.exitCode,
      outputs: result.outputs,
      ...(result.timedOut ? { timedOut: true } : {}),
      ...(result.error ? { error: boundedError(result.error) } : {}),
      ...(result.power ? { power: result.power } : {}),
      ...(result.written ? { image: result.written } : {}),
      claim: true,
    };
    const dropLogs = () => logs.discard();
    this.signal?.addEventListener('abort', dropLogs, { once: true });
    const { stats: sent, tail } = await logs.closeWithTail(LOG_FLUSH_MS, tailBudget(base));
    this.signal?.removeEventListener('abort', dropLogs);
    if (sent.bytesDropped > 0 && !sent.cut) this.log('warn', 'part of the job log was not delivered', { jobId: job.id, bytes: sent.bytesDropped });

    // Never sent when it cannot be taken: a report too large becomes a failure report that says so.
    const { report, dropped } = fitReport(tail.length ? { ...base, log: tail } : base);
    if (dropped) this.log('warn', 'the job report did not fit in one request; left out of it', { jobId: job.id, dropped });
    const pending: PendingReport = { jobId: job.id, report, endedAt: new Date().toISOString() };
    await this.state.writePending(pending);
    await this.state.clearCurrent();

    const code = await this.deliver(pending);
    this.prune();
    return code;
  }

  /**
   * Carries out what a successful script asked with takt-image and folds the outcome into the result:
   * the image written and verified (image.ts), or the file published to the catalog (publish.ts), or an
   * error naming why not (the job then fails). A script that did not succeed gets nothing done, and its
   * log says so.
   */
  private async carryOutImage(jobId: string, result: RunResult, request: ImageRequest, log: (line: string) => void, signal: AbortSignal): Promise<RunResult> {
    const ref = `${request.name}@${request.version}`;
    const succeeded = result.exitCode !== null && decodeExit(result.exitCode).success && !result.timedOut && !result.error && !result.aborted;
    if (!succeeded) {
      log(`takt-image: ${ref} not ${request.action === 'publish' ? 'published from' : 'written to'} ${request.target}: the script did not succeed\n`);
      return result;
    }
    if (request.action === 'publish') {
      const p = await publishImage({ client: this.client, jobId, request, root: this.root, progress: log, signal });
      if (!p.ok) log(`takt-image: ${p.reason}\n`);
      return p.ok ? result : { ...result, error: p.reason };
    }
    const w = await writeImage({ client: this.client, machineId: this.machineId, request, root: this.root, progress: log, signal });
    if (!w.ok) {
      log(`takt-image: ${w.reason}\n`);
      return { ...result, error: w.reason };
    }
    return { ...result, written: w.written };
  }

  /** With --run-as: whom scripts run as, with their HOME and TMPDIR and the agent's scratch dir. */
  private scriptUser(): Pick<RunSetup, 'user'> {
    const r = this.opts.runAs;
    return r ? { user: { ...r, home: this.paths.scriptHome, tmp: this.paths.scriptTmp, scratch: this.paths.scratchDir } } : {};
  }

  /** Removes old job dirs now and then, in the background: it never holds up the next job. */
  private prune(): void {
    if (this.pruning || ++this.jobsSincePrune < PRUNE_EVERY_JOBS) return;
    this.jobsSincePrune = 0;
    const runAs = this.opts.runAs;
    this.pruning = pruneJobDirs(this.paths.jobsDir, undefined, runAs ? (dir) => removeTree(dir, runAs) : undefined)
      .then(() => undefined)
      .catch((err: unknown) => this.log('warn', 'cannot remove old job dirs', { error: errorMessage(err) }))
      .finally(() => (this.pruning = null));
  }
}
