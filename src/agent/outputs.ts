/**
 * Params in, outputs out: the files behind `takt-get` and `takt-set`.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MAX_OUTPUT_BYTES, MAX_OUTPUTS, MAX_OUTPUTS_TOTAL_BYTES, encodedBytes } from '../model/protocol.js';
import { isSafeFileName } from './paths.js';

export const OUTPUT_NAME = /^[a-z][a-z0-9_]*$/;
// Measured as sent (each value as a JSON string), so that a report within them fits the endpoint's
// request limit whatever bytes the values hold: control bytes take six bytes each in JSON.
export { MAX_OUTPUT_BYTES, MAX_OUTPUTS_TOTAL_BYTES };
/** Output files looked at when the endpoint did not say which outputs the task declares. */
export const MAX_OUTPUT_FILES = MAX_OUTPUTS;
/** Names listed in a problem at most; the rest are counted. */
const LISTED = 5;

/**
 * Writes each param as a file (strings raw, anything else as JSON), readable only by the agent's user
 * because values may be secrets. Returns the keys that could not be used as file names.
 */
export function writeParams(paramsDir: string, params: Record<string, unknown>): string[] {
  mkdirSync(paramsDir, { recursive: true, mode: 0o700 });
  const { files, skipped } = paramFiles(params);
  for (const [key, text] of Object.entries(files)) writeFileSync(join(paramsDir, key), text, { mode: 0o600 });
  return skipped;
}

/**
 * The params as `takt-get` files: file name → content (strings raw, anything else as JSON), and the keys
 * that cannot be file names. Pure: the agent writes them locally, the SSH transport on the remote host.
 */
export function paramFiles(params: Record<string, unknown>): { files: Record<string, string>; skipped: string[] } {
  const files: Record<string, string> = {};
  const skipped: string[] = [];
  for (const [key, value] of Object.entries(params)) {
    if (!isSafeFileName(key)) {
      skipped.push(key);
      continue;
    }
    files[key] = (typeof value === 'string' ? value : JSON.stringify(value)) ?? '';
  }
  return { files, skipped };
}

export interface ReadOutputs {
  outputs: Record<string, string>;
  /**
   * Why some outputs were left out (undeclared, too large as sent), naming each, for the report's
   * `error`: the job then fails with it as its reason. Null when every output was read.
   */
  problem: string | null;
}

const list = (items: string[]) => (items.length > LISTED ? `${items.slice(0, LISTED).join(', ')} and ${items.length - LISTED} more` : items.join(', '));

/** One output as found (a file, or a line of an agentless host's probe), for `checkOutputs`. */
export interface FoundOutput {
  /** Its name as found: anything (names outside OUTPUT_NAME are refused, never used as a path). */
  name: string;
  /** Its size in bytes. */
  size: number;
  /** Its content as text (called only for a declared output within the size limits). */
  read: () => string | Promise<string>;
}

/**
 * The outputs a report carries, by the agent's rules: names must match OUTPUT_NAME (others are refused
 * and named), be unique, and be declared (`declared` undefined: an older endpoint, names not checked but
 * at most MAX_OUTPUT_FILES); values are read only within MAX_OUTPUT_BYTES each and
 * MAX_OUTPUTS_TOTAL_BYTES in all, as sent in JSON, with one trailing newline trimmed. What is left out is
 * named in `problem`. Pure but for `read`: the agent reads files, the SSH broker hands over the bytes
 * the host sent.
 */
export async function checkOutputs(found: readonly FoundOutput[], declared?: readonly string[]): Promise<ReadOutputs> {
  const problems: string[] = [];
  const invalid = found.filter((o) => !OUTPUT_NAME.test(o.name)).map((o) => JSON.stringify(o.name.slice(0, 64)));
  if (invalid.length) problems.push(`output names that are not valid (a-z, 0-9 and _, starting with a letter), not reported: ${list(invalid)}`);
  const byName = new Map<string, FoundOutput>();
  const twice = new Set<string>();
  for (const o of found) {
    if (!OUTPUT_NAME.test(o.name)) continue;
    if (byName.has(o.name)) twice.add(o.name);
    else byName.set(o.name, o);
  }
  if (twice.size) problems.push(`outputs found more than once, not reported: ${list([...twice].sort())}`);
  let names = [...byName.keys()].filter((n) => !twice.has(n)).sort();
  if (declared) {
    const known = new Set(declared);
    const undeclared = names.filter((n) => !known.has(n));
    if (undeclared.length) {
      problems.push(`outputs the task does not declare, not reported: ${list(undeclared)} (it declares ${declared.length ? list([...declared]) : 'none'})`);
      names = names.filter((n) => known.has(n));
    }
  } else if (names.length > MAX_OUTPUT_FILES) {
    problems.push(`${names.length} outputs set, more than the ${MAX_OUTPUT_FILES} a report may carry; not reported: ${list(names.slice(MAX_OUTPUT_FILES))}`);
    names = names.slice(0, MAX_OUTPUT_FILES);
  }
  const outputs: Record<string, string> = {};
  const tooBig: string[] = [];
  let total = 0;
  for (const name of names) {
    const { size, read } = byName.get(name)!;
    // JSON never makes a value shorter than its bytes: one over the limit is not even read.
    if (!(size <= MAX_OUTPUT_BYTES) || total + size > MAX_OUTPUTS_TOTAL_BYTES) {
      tooBig.push(`${name} (${size} bytes)`);
      continue;
    }
    const value = (await read()).replace(/\r?\n$/, '');
    const sent = encodedBytes(value);
    if (sent > MAX_OUTPUT_BYTES || total + sent > MAX_OUTPUTS_TOTAL_BYTES) {
      tooBig.push(`${name} (${size} bytes, ${sent} as sent)`);
      continue;
    }
    total += sent;
    outputs[name] = value;
  }
  if (tooBig.length) problems.push(`outputs too large to report (at most ${MAX_OUTPUT_BYTES} bytes each and ${MAX_OUTPUTS_TOTAL_BYTES} in all, as sent in JSON): ${list(tooBig)}`);
  return { outputs, problem: problems.length ? problems.join('; ') : null };
}

/**
 * Reads what `takt-set` wrote: file name → content with one trailing newline trimmed. `declared`: the
 * task's outputs as the endpoint sent them (undefined from an older endpoint: names are not checked).
 * Undeclared outputs and outputs too large as sent are left out and named in `problem` (checkOutputs).
 * Files whose names are not output names (takt-set's temporary files) are not outputs.
 */
export async function readOutputs(outputsDir: string, declared?: readonly string[]): Promise<ReadOutputs> {
  let names: string[];
  try {
    names = (await readdir(outputsDir)).filter((n) => OUTPUT_NAME.test(n));
  } catch {
    return { outputs: {}, problem: null }; // the script may have removed the directory; nothing was set
  }
  const found: FoundOutput[] = [];
  for (const name of names) {
    const file = join(outputsDir, name);
    const info = await stat(file).catch(() => null);
    if (info?.isFile()) found.push({ name, size: info.size, read: () => readFile(file, 'utf8') });
  }
  return checkOutputs(found, declared);
}
