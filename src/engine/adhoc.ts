/**
 * Ad-hoc commands (`takt run`): a command typed by an operator, run on machines as a one-task work order.
 * It goes through the same claim, agent, sandbox and log path as a task; this module only checks the
 * command and prepares it as the job's script.
 */
import { DURATION_RANGES, parseDuration } from '../model/duration.js';
import { TaktError } from '../model/errors.js';
import { ADHOC_TASK, type AdhocCommand } from '../model/machine.js';
import type { PreparedTask } from './prepare.js';

/** At most this many bytes of command: an operator's one-liner or short script, not a file (that is a task). */
export const MAX_COMMAND_BYTES = 16 * 1024;
/** How long an ad-hoc command may run when the operator gives no timeout. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 10 * 60_000;

/** An ad-hoc command as a caller gives it: `timeout` in seconds or as a duration text (`90s`, `5m`). */
export interface AdhocInput {
  script: string;
  timeout?: string | number;
}

/**
 * The command checked and bounded. @throws TaktError invalid (empty, or a NUL byte), too_large (past
 * MAX_COMMAND_BYTES), bad_request (a timeout outside 1s…24d); paths under `/command`.
 */
export function adhocCommand(input: AdhocInput): AdhocCommand {
  const script = input.script;
  if (typeof script !== 'string' || script.trim() === '') throw new TaktError('invalid', 'the command is empty: give the command to run after --', { path: '/command/script' });
  const bytes = Buffer.byteLength(script);
  if (bytes > MAX_COMMAND_BYTES) {
    throw new TaktError('too_large', `the command is ${bytes} bytes; at most ${MAX_COMMAND_BYTES} may be run ad hoc (put a longer script in a task)`, { path: '/command/script' });
  }
  if (script.includes('\0')) throw new TaktError('invalid', 'the command contains a NUL byte', { path: '/command/script' });
  let timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS;
  if (input.timeout !== undefined) {
    try {
      timeoutMs = parseDuration(input.timeout, 'timeout', DURATION_RANGES.taskTimeout);
    } catch (err) {
      if (err instanceof TaktError) throw new TaktError('bad_request', err.message, { path: '/command/timeout' });
      throw err;
    }
  }
  return { script, timeoutMs };
}

/** The command as a prepared task: the script as typed, no params, nothing to mask beyond what any job masks. */
export function prepareCommand(c: AdhocCommand): PreparedTask {
  return {
    task: ADHOC_TASK,
    variant: 'default',
    noop: null,
    params: [],
    missing: [],
    script: c.script,
    displayScript: c.script,
    agentParams: {},
    error: null,
    timeoutMs: c.timeoutMs,
    retries: 0,
  };
}
