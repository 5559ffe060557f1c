/**
 * The agent protocol over HTTP (see docs/agent.md and docs/api.md). The agent authenticates with its machine token
 * and only ever talks about its own machine and that machine's jobs.
 *
 *   POST /api/v1/machines/:id/claim?wait=<seconds>   -> ClaimResponse (long-poll up to `wait`)
 *   POST /api/v1/jobs/:id/log        LogRequest      -> 204 (chunks deduplicated by seq; renews the lease)
 *   POST /api/v1/jobs/:id/heartbeat                  -> HeartbeatResponse (renews the lease)
 *   POST /api/v1/jobs/:id/complete   CompleteRequest -> CompleteResponse (idempotent: the same report twice
 *                                                       answers the same; a different second report is 409)
 *
 * A completion may carry the end of the job's log (`log`, the same numbered chunks as POST …/log) and ask
 * for the machine's next job (`claim: true`): then one request and one transaction end a job and start the
 * next, instead of three (log, complete, claim). Neither is part of the report: a resend of the same
 * report with or without them is the same report.
 */

export interface ClaimedJob {
  id: string;
  task: string;
  /** The exact script to run with bash, secrets included. Never log it. */
  script: string;
  /** Values the script can read with `takt-get KEY`, secrets included. */
  params: Record<string, unknown>;
  timeoutMs: number;
  leaseMs: number;
}

export interface ClaimResponse {
  /** A job to run now, or null when there is nothing to do. */
  job: ClaimedJob | null;
  machine: { state: string; reason: string | null; power: 'on' | 'off' };
}

export interface LogRequest {
  seq: number;
  stream: 'stdout' | 'stderr' | 'system';
  data: string;
}

export interface CompleteRequest {
  /** The process exit code, or null when it was killed by a signal or never started. */
  exitCode: number | null;
  /** Values the script set with `takt-set KEY VALUE` (raw strings; the server types them by param schema). */
  outputs: Record<string, string>;
  timedOut?: boolean;
  /** What went wrong outside the script (spawn failure, agent restarted mid-job…). */
  error?: string;
  /** The log's last chunks, stored (deduplicated by seq) before the job ends. */
  log?: LogRequest[];
  /** Answer with the machine's next job, as a claim without waiting would. */
  claim?: boolean;
}

/** The parts of a CompleteRequest that are the job's result (what a resend is compared on). */
export function reportOf(r: CompleteRequest): CompleteRequest {
  const { log: _log, claim: _claim, ...report } = r;
  return report;
}

/** What the agent must do after reporting: the exit-code contract's side effects. */
export type AgentAction = 'continue' | 'reboot' | 'poweroff';

export interface CompleteResponse {
  job: { id: string; state: string };
  action: AgentAction;
  /**
   * When the completion asked for it (`claim: true`), was the first answer to this report and the action
   * is 'continue': what a claim would have answered (its `job` may be null: then long-poll as usual).
   */
  next?: ClaimResponse;
}

export interface HeartbeatResponse {
  /** False when the server no longer considers this job running (lost, cancelled): stop it. */
  running: boolean;
}

/** Agent exit codes understood by the local broker's supervisor. */
export const AGENT_EXIT_REBOOT = 64;
export const AGENT_EXIT_POWEROFF = 32;

/**
 * Machine tokens look like `tkm.<machineId>.<secret>`: the agent learns its machine id from its token,
 * and the server finds the machine without scanning (it still verifies the secret's hash).
 */
export function machineIdFromToken(token: string): string | null {
  const m = /^tkm\.([a-z0-9-]+)\.[A-Za-z0-9_-]+$/.exec(token);
  return m ? m[1]! : null;
}
