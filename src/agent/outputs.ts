/**
 * Params in, outputs out: the files behind `takt-get` and `takt-set`.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isSafeFileName } from './paths.js';

export const OUTPUT_NAME = /^[a-z][a-z0-9_]*$/;
/** Per value and in total: the completion must fit the endpoint's 1 MiB request limit. */
export const MAX_OUTPUT_BYTES = 256 * 1024;
export const MAX_OUTPUTS_TOTAL_BYTES = 768 * 1024;

/**
 * Writes each param as a file (strings raw, anything else as JSON), readable only by the agent's user
 * because values may be secrets. Returns the keys that could not be used as file names.
 */
export function writeParams(paramsDir: string, params: Record<string, unknown>): string[] {
  mkdirSync(paramsDir, { recursive: true, mode: 0o700 });
  const skipped: string[] = [];
  for (const [key, value] of Object.entries(params)) {
    if (!isSafeFileName(key)) {
      skipped.push(key);
      continue;
    }
    const text = typeof value === 'string' ? value : JSON.stringify(value);
    writeFileSync(join(paramsDir, key), text ?? '', { mode: 0o600 });
  }
  return skipped;
}

export interface ReadOutputs {
  outputs: Record<string, string>;
  /** Why some outputs were left out, for the report's `error`; null when all were read. */
  problem: string | null;
}

/** Reads what `takt-set` wrote: file name → content with one trailing newline trimmed. */
export async function readOutputs(outputsDir: string): Promise<ReadOutputs> {
  let names: string[];
  try {
    names = (await readdir(outputsDir)).filter((n) => OUTPUT_NAME.test(n)).sort();
  } catch {
    return { outputs: {}, problem: null }; // the script may have removed the directory; nothing was set
  }
  const outputs: Record<string, string> = {};
  const tooBig: string[] = [];
  let total = 0;
  for (const name of names) {
    const file = join(outputsDir, name);
    const info = await stat(file).catch(() => null);
    if (!info?.isFile()) continue;
    if (info.size > MAX_OUTPUT_BYTES || total + info.size > MAX_OUTPUTS_TOTAL_BYTES) {
      tooBig.push(`${name} (${info.size} bytes)`);
      continue;
    }
    total += info.size;
    outputs[name] = (await readFile(file, 'utf8')).replace(/\r?\n$/, '');
  }
  const problem = tooBig.length
    ? `outputs too large to report (at most ${MAX_OUTPUT_BYTES} bytes each, ${MAX_OUTPUTS_TOTAL_BYTES} in all): ${tooBig.join(', ')}`
    : null;
  return { outputs, problem };
}
