/**
 * Ad-hoc commands (`takt run`): a command typed by an operator, run on machines as a one-task work order.
 * It goes through the same claim, agent, sandbox and log path as a task; this module only checks the
 * command and prepares it as the job's script.
 */
import { isSecureParam, type ContentSet } from '../model/content.js';
import { DURATION_RANGES, parseDuration } from '../model/duration.js';
import { TaktError } from '../model/errors.js';
import { ADHOC_TASK, type AdhocCommand, type Machine } from '../model/machine.js';
import { isSealed, type Sealer } from '../model/secure.js';
import { paramLayers } from '../render/params.js';
import { secretTexts } from './logmask.js';
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

/**
 * The command as a prepared task: the script as typed and no params — the agent gets no secret in its
 * environment. What its log must not show is the machine's secrets (machineSecrets), given to the log's
 * masker at the endpoint, never to the agent.
 */
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

/**
 * Every secure value a machine's jobs could have been given, as the log could show it (secretTexts): an
 * ad-hoc command can `cat` any file an earlier job rendered, so its job masks all of them, not one task's.
 * Covers the machine's params and outputs, its profiles (with their includes and the `global` profile),
 * every pipeline's and every stage's params (the machine may have run another pipeline before), every
 * blueprint's, the params of the machine's earlier work orders (`workOrderParams`: `--param` values given
 * to `workorders create`, which no content holds), and secure params' defaults — each value that is sealed
 * or belongs to a param declared secure, whether or not a higher layer shadows it. A value that cannot be
 * opened (sealed by another endpoint's key) is skipped: no task could have received it either.
 */
export function machineSecrets(content: ContentSet, sealer: Sealer, m: Machine, workOrderParams: ReadonlyArray<Record<string, unknown>> = []): string[] {
  const secureParam = (name: string) => isSecureParam(content, name);
  const pipeline = m.pipeline ? content.objects.pipelines.get(m.pipeline)?.def : undefined;
  const values: Record<string, unknown>[] = [];
  for (const layer of paramLayers(content, { machine: m, ...(pipeline ? { pipeline: { name: pipeline.name, params: pipeline.params } } : {}) })) values.push(layer.values);
  for (const p of content.objects.pipelines.values()) values.push(p.def.params ?? {});
  for (const st of content.objects.stages.values()) values.push(st.def.params ?? {});
  for (const b of content.objects.blueprints.values()) values.push(b.def.params ?? {});
  values.push(...workOrderParams);
  const secrets: unknown[] = [];
  for (const layer of values) {
    for (const [name, v] of Object.entries(layer)) {
      if (!isSealed(v) && !secureParam(name)) continue;
      try {
        secrets.push(sealer.open(v));
      } catch {
        // Sealed elsewhere: unreadable here, so no job of this endpoint could have printed it.
      }
    }
  }
  for (const p of content.objects.params.values()) {
    const schema = p.def.schema as { default?: unknown } | undefined;
    if (p.def.secure === true && schema && 'default' in schema) secrets.push(schema.default);
  }
  return secretTexts(secrets);
}
