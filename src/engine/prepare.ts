/**
 * Prepares one task for one machine: picks the environment variant, resolves every param the task
 * declares (with the layer it came from) and renders the script. Used by claims, `plan` and `render`,
 * so what an operator previews is exactly what the agent gets.
 */
import { taskActionFor } from '../content/variants.js';
import type { ContentSet, TaskDef } from '../model/content.js';
import { DURATION_RANGES, parseDuration } from '../model/duration.js';
import type { Machine } from '../model/machine.js';
import { MASK, type Sealer } from '../model/secure.js';
import { displayValue, paramLayers, resolveParam, type LayerContext } from '../render/params.js';
import { renderTemplate, TemplateError } from '../render/template.js';
import { Masker, secretTexts } from './logmask.js';

export const DEFAULT_TIMEOUT_MS = 3_600_000;

export interface ParamUse {
  name: string;
  /** Display value: secure values are masked. */
  value: unknown;
  from: string;
  secure: boolean;
  required: boolean;
}

export interface PreparedTask {
  task: string;
  variant: string;
  /** Set when the variant for this environment is a declared no-op. */
  noop: string | null;
  params: ParamUse[];
  /** Required params with no value anywhere. */
  missing: string[];
  /** The script for the agent (secrets in clear); null when it cannot be rendered or is a no-op. */
  script: string | null;
  /** The same script with secure values masked, for records and display. */
  displayScript: string | null;
  /** Values the agent exposes through `takt-get`, secrets in clear. */
  agentParams: Record<string, unknown>;
  error: string | null;
  timeoutMs: number;
  retries: number;
}

export function prepareTask(content: ContentSet, sealer: Sealer, machine: Machine, taskName: string, ctx: Omit<LayerContext, 'machine'>): PreparedTask {
  const def: TaskDef | undefined = content.objects.tasks.get(taskName)?.def;
  const base = { task: taskName, params: [], missing: [], script: null, displayScript: null, agentParams: {}, timeoutMs: DEFAULT_TIMEOUT_MS, retries: 0 };
  if (!def) return { ...base, variant: 'default', noop: null, error: `task '${taskName}' no longer exists in the installed content` };
  let timeoutMs = DEFAULT_TIMEOUT_MS;
  try {
    if (def.timeout !== undefined) timeoutMs = parseDuration(def.timeout, 'timeout', DURATION_RANGES.taskTimeout);
  } catch (e) {
    // Content stored before lint refused such a timeout: the job is refused with the reason, never run.
    return { ...base, variant: 'default', noop: null, error: `task '${taskName}': ${(e as Error).message}` };
  }
  const retries = def.retries ?? 0;
  const action = taskActionFor(def, machine.environment);
  const variant = action?.variant ?? 'default';
  if (action && 'noop' in action) return { ...base, variant, noop: action.noop, error: null, timeoutMs, retries };
  if (!action) {
    return { ...base, variant, noop: null, timeoutMs, retries, error: `task '${taskName}' has no script for environment '${machine.environment}' and no default script` };
  }
  const source = action.script;

  const layers = paramLayers(content, { machine, ...ctx });
  const required = def.params?.required ?? [];
  const optional = def.params?.optional ?? [];
  const params: ParamUse[] = [];
  const missing: string[] = [];
  const sealedElsewhere: string[] = [];
  const clear: Record<string, unknown> = {};
  const masked: Record<string, unknown> = {};
  for (const name of [...required, ...optional]) {
    const isRequired = required.includes(name);
    const r = resolveParam(content, layers, name);
    if (!r) {
      if (isRequired) missing.push(name);
      // Optional params with no value render as empty rather than tripping strict variables.
      clear[name] = null;
      masked[name] = null;
      continue;
    }
    let value: unknown;
    try {
      value = sealer.open(r.value);
    } catch {
      // Sealed by another endpoint's key (an import without its secret.key): say which param, do not throw.
      sealedElsewhere.push(name);
      value = null;
    }
    clear[name] = value;
    masked[name] = r.secure ? MASK : value;
    params.push({ name, value: displayValue(r), from: r.from, secure: r.secure, required: isRequired });
  }
  const agentParams = Object.fromEntries(Object.entries(clear).filter(([, v]) => v !== null));
  if (missing.length > 0) {
    const list = missing.map((n) => `'${n}'`).join(', ');
    return {
      ...base, variant, noop: null, params, missing, agentParams, timeoutMs, retries,
      error: `required param${missing.length > 1 ? 's' : ''} ${list} ha${missing.length > 1 ? 've' : 's'} no value: set ${missing.length > 1 ? 'them' : 'it'} on the machine, a profile, the stage or pipeline, or give ${missing.length > 1 ? 'them' : 'it'} a default`,
    };
  }
  if (sealedElsewhere.length > 0) {
    return {
      ...base, variant, noop: null, params, missing, agentParams, timeoutMs, retries,
      error: `secure param${sealedElsewhere.length > 1 ? 's' : ''} ${sealedElsewhere.map((n) => `'${n}'`).join(', ')} cannot be decrypted with this endpoint's secret.key (sealed elsewhere?): set ${sealedElsewhere.length > 1 ? 'them' : 'it'} again`,
    };
  }
  const machineVars = { id: machine.id, name: machine.name, environment: machine.environment };
  // Observed facts sit beside the params, never among them (a param cannot be named `facts`).
  const facts = machine.facts ?? {};
  try {
    const script = renderTemplate(source, { ...clear, machine: machineVars, facts });
    const secure = params.some((p) => p.secure);
    const displayScript = secure ? renderTemplate(source, { ...masked, machine: machineVars, facts }) : script;
    return { task: taskName, variant, noop: null, params, missing, script, displayScript, agentParams, error: null, timeoutMs, retries };
  } catch (err) {
    const msg = err instanceof TemplateError ? `template line ${err.line}:${err.col}: ${err.message}` : (err as Error).message;
    // Rendered with the clear values: an error about a value must not carry it into a plan or a job's reason.
    const error = new Masker(secretTexts(secureValues(params, clear))).mask(msg);
    return { ...base, variant, noop: null, params, missing, agentParams, timeoutMs, retries, error };
  }
}

function secureValues(params: ParamUse[], clear: Record<string, unknown>): unknown[] {
  return params.filter((p) => p.secure).map((p) => clear[p.name]);
}

/**
 * The clear values of the task's secure params: what the job could print and its log must not show.
 * Never part of a PreparedTask itself, which `render` and `plan` show.
 */
export function secretsOf(p: PreparedTask): string[] {
  return secretTexts(secureValues(p.params, p.agentParams));
}
