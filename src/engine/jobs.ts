/**
 * A job's life once claimed, to its end: its agent's heartbeats (lease renewals, and the long-poll that
 * tells it the job was cancelled), its log chunks, its completion (the report checked, settled, and the next
 * job claimed in the same transaction; a task's power request carried out after the commit), and every
 * other way a job ends while it runs: lost (a lease expired, or a transport found no trace of it) or
 * cancelled by an operator action. Every end goes through settle (complete.ts); claims are claim.ts.
 * Plain functions over the engine's context (JobContext), as claim.ts and complete.ts are.
 */
import { TaktError } from '../model/errors.js';
import { decodeExit } from '../model/exitcodes.js';
import { canonicalJson } from '../model/hash.js';
import type { Job, Machine } from '../model/machine.js';
import { reportOf, type CompleteRequest, type CompleteResponse, type HeartbeatResponse, type LogRequest } from '../model/protocol.js';
import type { Tx } from '../store/store.js';
import { claimIn, leaseUntil, type ClaimContext } from './claim.js';
import { checkPromises, checkWrittenImage, isSecureOutput, keptReport, lockedMachine, saveMachine, settle, typeOutputs, type Settled } from './complete.js';
import { secretTexts } from './logmask.js';
import { printable } from './outputs.js';
import { describePowerRequest, endOfTaskPower, type TaskPowerPlan, type TaskPowerResult } from './taskpower.js';
import type { JobOutcome } from './transitions.js';
import { publicJob } from './views.js';

/** What a job's life needs of the engine: what a claim needs, since a completion may claim the next job. */
export type JobContext = ClaimContext;

/**
 * When a machine was last heard from, as far as a running job tells: the later of its agent's `lastSeenAt`
 * and the job's claim (`claimedAt`, when the agent took the job). ISO-8601 UTC; null when neither is known.
 */
export function lastHeard(lastSeenAt: string | null, claimedAt: string | null): string | null {
  if (lastSeenAt === null) return claimedAt;
  if (claimedAt === null) return lastSeenAt;
  return Date.parse(claimedAt) > Date.parse(lastSeenAt) ? claimedAt : lastSeenAt;
}

/**
 * The job, if `caller` (a machine id, or null for the admin) may act on it. A machine gets the same 403
 * for another machine's job and for a job that does not exist: its token reveals nothing beyond its own.
 */
function owned<J extends Pick<Job, 'machineId'>>(jobId: string, caller: string | null, job: J | undefined): J {
  if (caller !== null && job?.machineId !== caller) throw new TaktError('forbidden', `job '${jobId}' is not a job of this machine`);
  if (!job) throw new TaktError('not_found', `job '${jobId}' not found`);
  return job;
}

/**
 * Ends a running job with its agent's report. The report may carry the log's last chunks and ask for
 * the machine's next job (`claim`), answered from the same transaction. A resend of a report already
 * applied answers as the first time did, without a next job: the agent claims that as usual, and says
 * which job it last received, so a next job whose answer was lost is handed back, not lost.
 */
export async function complete(c: JobContext, jobId: string, caller: string | null, request: CompleteRequest): Promise<CompleteResponse> {
  const report = reportOf(request);
  let plan: TaskPowerPlan | undefined;
  // Judged against the content as of every event heard (a change through another replica is reloaded first).
  await c.content.fresh();
  const answered = await c.store.transact(async (tx) => {
    // An agent's report is row-scoped (TransactOptions): its machine is locked before the job is read, so
    // a claim or completion of the same machine through another replica cannot change the job in between.
    const locked = caller !== null ? await tx.lockMachine(caller) : undefined;
    const job = await ownedJob(tx, jobId, caller);
    // The job's own secure outputs join the secrets its log, reason and stored report must not show.
    const outputSecrets = secretTexts(Object.entries(report.outputs ?? {}).filter(([k]) => isSecureOutput(c, k)).map(([, v]) => v));
    const masker = await c.logs.masker(tx, job, outputSecrets);
    const kept = keptReport(c, report, masker);
    if (job.state !== 'running') {
      const prev = (await tx.getJobReport(jobId)) as { report: CompleteRequest; action: CompleteResponse['action'] } | null;
      if (prev && canonicalJson(prev.report) === canonicalJson(kept)) return { job: { id: job.id, state: job.state }, action: prev.action };
      throw new TaktError('conflict', `job ${jobId} already ended as ${job.state}${job.reason ? ` (${job.reason})` : ''}; this report was not applied`);
    }
    // The log's end is masked, then stored with the job's end within the log's bound; then the log is
    // closed. A job's own secure outputs are masked in what it already logged too.
    await c.logs.appendTail(tx, job, request.log, outputSecrets, new Date().toISOString());
    const m = locked ?? (await lockedMachine(tx, job.machineId));
    const typed = typeOutputs(c, report.outputs ?? {}, job.task);
    const exitedOk = decodeExit(report.exitCode).success && !report.timedOut && !report.error;
    const imageProblem = report.image && exitedOk ? await checkWrittenImage(tx, report.image) : null;
    const problem = typed.problem ?? imageProblem ?? (exitedOk ? checkPromises(c, job, report.outputs ?? {}, typed.values) : null);
    const outcome: JobOutcome = problem
      ? { kind: 'invalid', exitCode: report.exitCode, message: masker.mask(problem) }
      : { kind: 'exit', exitCode: report.exitCode, timedOut: report.timedOut, error: kept.error === undefined ? undefined : printable(kept.error), timeoutMs: job.timeoutMs };
    const claim = request.claim === true && !c.stopped();
    const settled = await settle(c, tx, m, job, outcome, typed.values, kept, claim);
    plan = settled.power;
    if (plan) c.powering.add(plan.machineId);
    const answer: CompleteResponse = { job: { id: job.id, state: settled.job.state }, action: settled.action };
    if (claim && settled.action === 'continue') answer.next = await claimIn(c, tx, settled.machine, undefined, true);
    else if (claim) await saveMachine(tx, settled.machine);
    return answer;
  }, caller !== null ? { scope: 'rows', lock: caller } : { scope: 'store' }).catch((err: unknown) => {
    if (plan) c.powering.delete(plan.machineId);
    throw err;
  });
  return plan ? applyTaskPower(c, plan, answered) : answered;
}

/**
 * Carries out a task's power request through the power port, the one place for agents and agentless
 * machines alike: the next boot device before the completion is answered, so that a reboot (exit 64)
 * boots from it; a cycle or off after (on the next turn of the event loop, once the answer is on its
 * way). When the boot device cannot be set, the answer tells the agent not to reboot.
 */
async function applyTaskPower(c: JobContext, plan: TaskPowerPlan, answer: CompleteResponse): Promise<CompleteResponse> {
  const port = c.opts.power!;
  const { nextBoot, persistent, action } = plan.request;
  const parts: string[] = [];
  const failed = (what: string, err: unknown): TaskPowerResult => ({ kind: 'failed', parts, failed: what, message: err instanceof Error ? err.message : String(err) });
  const m = await c.store.getMachine(plan.machineId);
  if (!m) {
    c.powering.delete(plan.machineId);
    return answer;
  }
  if (nextBoot) {
    let r: TaskPowerResult | null = null;
    try {
      const out = await port.nextBoot(m, nextBoot, persistent === true);
      if (!out.done) {
        // A person does it all (the manual driver): the action's instruction joins the boot device's.
        const then = action ? await port.act(m, action).catch(() => null) : null;
        const more = then && !then.done && then.instruction ? ` Then: ${then.instruction}` : '';
        r = { kind: 'manual', parts, instruction: `${out.instruction ?? `Set ${m.name} to boot from ${nextBoot} next.`}${more}` };
      } else parts.push(`next-boot ${nextBoot}${out.persistent ? ' persistent' : ''} (${out.driver})`);
    } catch (err) {
      r = failed(`next-boot ${nextBoot}`, err);
    }
    if (r) {
      // The agent must not reboot into the boot device it had: the answer (and a resend's) says continue.
      await endTaskPower(c, plan, r, answer.action !== 'continue');
      return { job: answer.job, action: 'continue' };
    }
  }
  if (!action) {
    await endTaskPower(c, plan, { kind: 'done', parts });
    return answer;
  }
  setImmediate(() => {
    void (async () => {
      let r: TaskPowerResult;
      try {
        const out = await port.act(m, action);
        if (!out.done) r = { kind: 'manual', parts, instruction: out.instruction ?? `${action === 'off' ? 'power off' : 'power cycle'} ${m.name}` };
        else r = { kind: 'done', parts: [...parts, parts.length ? action : `${action} (${out.driver})`] };
      } catch (err) {
        r = failed(action, err);
      }
      await endTaskPower(c, plan, r).catch((err: unknown) => c.opts.log?.('error', `cannot record the power a task asked for: ${(err as Error).message}`, { job: plan.jobId }));
    })();
  });
  return answer;
}

/** Records how a task's power request ended: on its job, on its machine (taskpower.ts endOfTaskPower) and in the log. */
async function endTaskPower(c: JobContext, plan: TaskPowerPlan, r: TaskPowerResult, noReboot = false): Promise<void> {
  let done: { machine: string; power: string } | null;
  try {
    done = await c.store.transact(async (tx) => {
      const m = await tx.lockMachine(plan.machineId);
      const job = await tx.getJob(plan.jobId);
      if (!m || !job) return null;
      const end = endOfTaskPower(plan, m, r);
      // The boot device could not be set: a resent report is answered as the first was (no reboot).
      const stored = noReboot ? ((await tx.getJobReport(job.id)) as { report: CompleteRequest } | null) : null;
      const updated: Job = { ...job, power: end.jobPower };
      await tx.updateJob(updated, stored ? { report: stored.report, action: 'continue' } : undefined);
      tx.emit(`jobs.update.${job.id}`, publicJob(updated));
      await saveMachine(tx, { ...end.machine, updatedAt: new Date().toISOString() });
      return { machine: m.name, power: end.jobPower };
    });
  } finally {
    c.powering.delete(plan.machineId);
  }
  if (done) c.opts.log?.(r.kind === 'done' ? 'info' : 'warn', `${done.machine}: power asked by task ${plan.task} (job ${plan.jobId}, ${describePowerRequest(plan.request)}): ${done.power}`);
  // Claims held back meanwhile may go on now.
  c.wakeups.wake(plan.machineId);
}

/**
 * Renews a running job's lease. `waitMs` > 0: then holds the answer up to that long, answering at once
 * when the job ends meanwhile (an operator cancelled it), so the agent kills the script without waiting
 * for its next heartbeat.
 */
export async function heartbeat(c: JobContext, jobId: string, caller: string | null, waitMs = 0, signal?: AbortSignal): Promise<HeartbeatResponse> {
  const job = await c.store.transact(async (tx) => {
    const j = await ownedJobState(tx, jobId, caller);
    if (j.state === 'running') await tx.renewLease(j.id, leaseUntil(c.opts.leaseMs));
    return j;
  });
  if (job.state !== 'running') return { running: false };
  return { running: !(await jobEnded(c, jobId, job.machineId, waitMs, signal)) };
}

/**
 * Waits up to `waitMs` for a running job to end (woken by its machine's events, not by polling).
 * True when it has ended (or is gone); false when it still runs at the deadline, on abort or on stop.
 */
export async function jobEnded(c: JobContext, jobId: string, machineId: string, waitMs: number, signal?: AbortSignal): Promise<boolean> {
  const deadline = Date.now() + waitMs;
  for (let i = 0; i < 10_000; i++) {
    const gen = c.wakeups.generation(machineId);
    const state = (await c.store.getJobState(jobId))?.state;
    if (state !== 'running') return true;
    const left = deadline - Date.now();
    if (left <= 0 || signal?.aborted || c.stopped()) return false;
    if (c.wakeups.generation(machineId) === gen) await c.wakeups.waitForWake(machineId, left, signal);
  }
  return false;
}

/**
 * Stores one log chunk of a running job, within the job's log bound (past it the chunk is dropped and
 * the log says so once). A job's log closes when the job ends: a chunk for an ended job is a conflict,
 * except a resend of a chunk already stored, which is answered as the first time was. `cut`: the log
 * has reached its bound, nothing more of it will be stored.
 */
export async function appendLog(c: JobContext, jobId: string, caller: string | null, chunk: LogRequest): Promise<{ cut: boolean }> {
  return c.store.transact(async (tx) => {
    const job = await ownedJobState(tx, jobId, caller);
    if (job.state !== 'running') {
      c.logs.closed(jobId);
      const stored = await tx.getLogs(jobId, chunk.seq - 1, 1);
      if (stored[0]?.seq === chunk.seq) return { cut: false };
      throw new TaktError('conflict', `job ${jobId} is ${job.state}; its log is closed`);
    }
    const { cut } = await c.logs.append(tx, job, [chunk], new Date().toISOString());
    await tx.renewLease(job.id, leaseUntil(c.opts.leaseMs));
    return { cut };
  });
}

/**
 * Ends a running job as lost, with `why` (what the transport that drives it found: e.g. no trace of it
 * on the host). For transports that run jobs themselves (SSH); an agent's lost jobs come from leases.
 * A job that is no longer running is left as it is.
 */
export async function loseJob(c: JobContext, jobId: string, why: string): Promise<void> {
  await c.store.transact(async (tx) => {
    const job = await tx.getJob(jobId);
    if (!job || job.state !== 'running') return;
    const m = await lockedMachine(tx, job.machineId);
    await settle(c, tx, m, job, { kind: 'lost', leaseMs: c.opts.leaseMs, why });
    c.opts.log?.('warn', 'job lost', { job: job.id, machine: m.name, task: job.task, why });
  });
}

/** Job `jobId` if `caller` may act on it (owned). */
async function ownedJob(tx: Tx, jobId: string, caller: string | null): Promise<Job> {
  return owned(jobId, caller, await tx.getJob(jobId));
}

/** As ownedJob, reading only the job's id, machine and state (store getJobState). */
async function ownedJobState(tx: Tx, jobId: string, caller: string | null) {
  return owned(jobId, caller, await tx.getJobState(jobId));
}

/** Marks running jobs whose agent has gone quiet as lost; their machines stop with that reason. */
export async function sweepLeases(c: JobContext): Promise<number> {
  const now = new Date().toISOString();
  const expired = await c.store.listExpiredJobs(now);
  for (const candidate of expired) {
    await c.store.transact(async (tx) => {
      const job = await tx.getJob(candidate.id);
      if (!job || job.state !== 'running' || !job.leaseExpiresAt || job.leaseExpiresAt >= now) return;
      const m = await tx.lockMachine(job.machineId);
      if (!m) return;
      const agent = c.liveness.view(m);
      // Last heard: the later of the machine's last contact and the job's claim. The job was handed to the
      // agent over its open claim long-poll, which counts as contact but does not move lastSeenAt (that
      // is the poll's start, and batched): "last heard before the job started" would contradict describe.
      const heard = lastHeard(agent.lastSeenAt, job.createdAt);
      // Silent: nothing at all heard from the machine for a whole lease (the network or the host), not
      // only nothing about this job.
      const silent = heard === null || Date.now() - Date.parse(heard) >= c.opts.leaseMs;
      await settle(c, tx, m, job, { kind: 'lost', leaseMs: c.opts.leaseMs, agent: { lastSeenAt: heard, address: agent.address, silent } });
      c.opts.log?.('warn', 'job lost: lease expired', { job: job.id, machine: m.name, task: job.task });
    });
  }
  return expired.length;
}

/**
 * An operator action ends the machine's running job, if it has one: `cancelled by <author>: <why>`,
 * through settle like every job's end (a work-order job cancels its work order). Answers the machine
 * after it, not yet written (the caller writes it with its own change), with no current job.
 */
export async function cancelCurrent(c: JobContext, tx: Tx, m: Machine, author: string, why: string): Promise<Machine> {
  return (await cancelRunning(c, tx, m, author, why, false))?.machine ?? { ...m, currentJob: null };
}

/** As cancelCurrent; `hold`: the machine pauses on the job's task. Null when no job was running. */
export async function cancelRunning(c: JobContext, tx: Tx, m: Machine, author: string, why: string, hold: boolean): Promise<Settled | null> {
  const job = m.currentJob ? await tx.getJob(m.currentJob) : undefined;
  if (job?.state !== 'running') return null;
  c.opts.log?.('info', 'job cancelled', { job: job.id, machine: m.name, task: job.task, by: author, why });
  return settle(c, tx, m, job, { kind: 'cancelled', by: author, why, hold }, {}, undefined, true);
}
