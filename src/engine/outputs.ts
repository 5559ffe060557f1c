/**
 * Which outputs a completion may set. A machine token can send any JSON it likes; the endpoint accepts
 * only the outputs the job's task declares, each within the size limit as sent, and fails the job with
 * a reason that names what it refused. Pure functions; the engine applies them.
 */
import { MAX_OUTPUT_BYTES, MAX_OUTPUTS_TOTAL_BYTES, encodedBytes } from '../model/protocol.js';
import { FACTS_VAR } from '../model/facts.js';
import { MACHINE_VAR } from '../render/template.js';

/** Reasons escape control characters with the one helper the CLI uses too. */
export { printable } from '../model/printable.js';

const NAME = /^[a-z][a-z0-9_]{0,62}$/;
/** Names listed in a reason at most; the rest are counted. */
const LISTED = 5;
/** How much of an odd name a reason shows. */
const SHOWN_CHARS = 40;

/** A name as a reason shows it: quoted, control characters escaped, long names cut. */
export function shownName(name: string): string {
  if (NAME.test(name)) return `'${name}'`;
  const cut = [...name].slice(0, SHOWN_CHARS).join('');
  return `${JSON.stringify(cut)}${cut.length < name.length ? '…' : ''}`;
}

function listed(names: string[]): string {
  const shown = names.slice(0, LISTED).map(shownName).join(', ');
  return names.length > LISTED ? `${shown} and ${names.length - LISTED} more` : shown;
}

/**
 * Null when every output in `raw` is declared in `declared` (the task's `outputs`) and fits; else the
 * reason, e.g. `it set an output its task does not declare: 'foo' (it declares: count)`.
 */
export function refusedOutputs(raw: Record<string, string>, declared: Record<string, unknown>): string | null {
  const names = Object.keys(raw);
  // Own keys only: `constructor` or `__proto__` must not find Object.prototype's members.
  const undeclared = names.filter((n) => !Object.hasOwn(declared, n) || n === MACHINE_VAR || n === FACTS_VAR || !NAME.test(n));
  if (undeclared.length > 0) {
    const known = Object.keys(declared);
    const what = undeclared.length === 1 ? 'an output' : `${undeclared.length} outputs`;
    return `it set ${what} its task does not declare: ${listed(undeclared)} (it declares ${known.length ? listed(known) : 'none'}; declare outputs under 'outputs:' in the task)`;
  }
  let total = 0;
  for (const name of names) {
    const size = encodedBytes(raw[name]);
    if (size > MAX_OUTPUT_BYTES) return `its output ${shownName(name)} is ${size} bytes as sent (JSON), over the limit of ${MAX_OUTPUT_BYTES} bytes per output`;
    total += size;
  }
  if (total > MAX_OUTPUTS_TOTAL_BYTES) return `its outputs are ${total} bytes as sent (JSON), over the limit of ${MAX_OUTPUTS_TOTAL_BYTES} bytes in all`;
  return null;
}
