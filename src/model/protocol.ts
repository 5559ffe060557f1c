/**
 * The agent protocol over HTTP (see docs/agent.md and docs/api.md). The agent authenticates with its machine token
 * and only ever talks about its own machine and that machine's jobs.
 *
 *   POST /api/v1/machines/:id/claim?wait=<seconds>   ClaimRequest -> ClaimResponse (long-poll up to `wait`)
 *   POST /api/v1/jobs/:id/log        LogRequest      -> 204 (chunks deduplicated by seq; renews the lease)
 *   POST /api/v1/jobs/:id/heartbeat                  -> HeartbeatResponse (renews the lease)
 *   POST /api/v1/jobs/:id/complete   CompleteRequest -> CompleteResponse (idempotent: the same report twice
 *                                                       answers the same; a different second report is 409)
 *
 * A completion may carry the end of the job's log (`log`, the same numbered chunks as POST …/log) and ask
 * for the machine's next job (`claim: true`): then one request and one transaction end a job and start the
 * next, instead of three (log, complete, claim). Neither is part of the report: a resend of the same
 * report with or without them is the same report.
 *
 * Every field is bounded, and sizes are measured on what is sent (JSON, UTF-8), never on raw values:
 * a string of control bytes is six times longer on the wire than on disk. See docs/agent.md § Limits.
 */

/** The endpoint's request body limit: every agent request, as encoded JSON, fits in it. */
export const MAX_REQUEST_BYTES = 1024 * 1024;
/** One output value, measured as its JSON string (quotes and escapes included). */
export const MAX_OUTPUT_BYTES = 256 * 1024;
/** All output values of one report together, measured as above. */
export const MAX_OUTPUTS_TOTAL_BYTES = 768 * 1024;
/** Keys in a report's `outputs`: more than any task declares. */
export const MAX_OUTPUTS = 1000;
/** A report's `error`, in characters. */
export const MAX_ERROR_CHARS = 4096;
/** Log chunk sequence numbers run 1…this (a 32-bit integer: exact in every store). */
export const MAX_LOG_SEQ = 2 ** 31 - 1;
/** One log chunk's `data`, in characters (the agent sends at most 32 KiB per chunk). */
export const MAX_LOG_CHUNK_CHARS = 1024 * 1024;
/** Log chunks a completion may carry. */
export const MAX_TAIL_CHUNKS = 64;
/** Process exit codes are 0…255 (null when killed by a signal). */
export const MAX_EXIT_CODE = 255;
/** A job id as the agent echoes it in a claim's `lastJob`. */
export const MAX_JOB_ID_CHARS = 64;

/** The size of `value` as it is sent: its JSON text in UTF-8 bytes. */
export function encodedBytes(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value) ?? '', 'utf8');
}

export interface ClaimedJob {
  id: string;
  task: string;
  /** The exact script to run with bash, secrets included. Never log it. */
  script: string;
  /** Values the script can read with `takt-get KEY`, secrets included. */
  params: Record<string, unknown>;
  timeoutMs: number;
  leaseMs: number;
  /**
   * The outputs the task declares (the only ones the endpoint accepts), so that `takt-set` refuses any
   * other name at once. Absent from older endpoints: then the agent does not check names.
   */
  outputs?: string[];
}

/** The body of a claim (all optional; an empty body is a claim too). */
export interface ClaimRequest {
  /** The id of the last job this agent process received; null: none since it started. */
  lastJob?: string | null;
  /**
   * The bootenv the machine booted (`takt.bootenv=` on its kernel command line, `local` without one):
   * a stage that needs another one is not given to it (engine: a reboot, then a stop with the reason).
   */
  bootenv?: string;
}

export interface ClaimResponse {
  /** A job to run now, or null when there is nothing to do. */
  job: ClaimedJob | null;
  machine: { state: string; reason: string | null; power: 'on' | 'off' };
  /**
   * `reboot`: no job until the machine has rebooted (its next stage runs in another boot environment,
   * which the endpoint has switched it to); the agent exits with AGENT_EXIT_REBOOT for its supervisor.
   */
  action?: 'reboot';
}

export interface LogRequest {
  /** 1…MAX_LOG_SEQ, one per chunk, without gaps; a resend keeps its number. */
  seq: number;
  stream: 'stdout' | 'stderr' | 'system';
  data: string;
}

/**
 * The answer to POST …/log when the job's log has reached its bound (200; otherwise 204): nothing more of
 * this job's output will be stored, so the agent may stop sending it.
 */
export interface LogResponse {
  logCut: true;
}

export interface CompleteRequest {
  /** The process exit code, or null when it was killed by a signal or never started. */
  exitCode: number | null;
  /**
   * Values the script set with `takt-set KEY VALUE` (raw strings; the server types them by the task's
   * output schemas). Only the task's declared outputs are accepted: any other name fails the job.
   */
  outputs: Record<string, string>;
  timedOut?: boolean;
  /** What went wrong outside the script (spawn failure, agent restarted mid-job…). */
  error?: string;
  /** The log's last chunks, stored (deduplicated by seq) before the job ends. */
  log?: LogRequest[];
  /** Answer with the machine's next job, as a claim without waiting would. */
  claim?: boolean;
  /**
   * What the script asked of its machine's power with `takt-power` (absent: nothing). The endpoint applies
   * it through the machine's power driver, only when the job succeeds (docs/provisioning.md § From a task).
   */
  power?: TaskPowerRequest;
  /**
   * The image the agent wrote for the script's `takt-image write` once it had exited successfully, sent
   * only when every byte was written, fsynced and its sha256 equalled the catalog's (a failed write is
   * `error` instead). The endpoint checks it against its catalog and records it on the job.
   */
  image?: ImageWritten;
}

/** An image written to a machine's disk and verified (agent/image.ts). */
export interface ImageWritten {
  name: string;
  version: string;
  /** Lower-case hex SHA-256 of the bytes written: the catalog's. */
  sha256: string;
  /** Bytes written. */
  size: number;
  /** The device or file as the script named it. */
  target: string;
}

/**
 * A task's power request (`takt-power`): `nextBoot` is set through the driver before the completion is
 * answered (so a reboot, exit 64, boots from it); `action` is done by the driver after the answer, hard,
 * and replaces the exit code's reboot (64) or power off (32): the agent does neither itself.
 */
export interface TaskPowerRequest {
  /** The boot device for the next boot (`takt-power next-boot pxe|disk`). */
  nextBoot?: 'pxe' | 'disk';
  /** With `nextBoot`: for every later boot too (`--persistent`). */
  persistent?: boolean;
  /** `takt-power cycle` (hard reset; powers on when off) or `takt-power off` (hard off). */
  action?: 'cycle' | 'off';
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
