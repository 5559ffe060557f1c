/**
 * What a script asked of its machine's power with `takt-power` (helpers.ts): the files it wrote into the
 * job's control dir (TAKT_CONTROL_DIR), read back after the script ends and reported with the job
 * (CompleteRequest.power). The endpoint does the asking, never the script: it holds the driver's secrets.
 *
 *   next_boot   `pxe` or `disk`, optionally followed by ` persistent`
 *   action      `cycle` or `off`
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { TaskPowerRequest } from '../model/protocol.js';

/** The control files' names (also what a sandboxed script's control dir is copied with). */
export const CONTROL_FILE = /^(next_boot|action)$/;
/** A control file is a word or two; anything longer was not written by takt-power. */
export const MAX_CONTROL_BYTES = 64;

export interface ReadPower {
  /** The request, or undefined when the script asked nothing (or only what could not be read). */
  power?: TaskPowerRequest;
  /** Why (part of) what was found is not a request, for the report's `error`: the job then fails. */
  problem: string | null;
}

/**
 * The request from the control files' contents (name → text; a missing name was not asked). Pure.
 * Contents other than what takt-power writes are named in `problem`, and then nothing is requested.
 */
export function parsePowerRequest(files: { next_boot?: string; action?: string }): ReadPower {
  const problems: string[] = [];
  const power: TaskPowerRequest = {};
  if (files.next_boot !== undefined) {
    const m = /^(pxe|disk)( persistent)?$/.exec(files.next_boot.trim());
    if (m) {
      power.nextBoot = m[1] as 'pxe' | 'disk';
      if (m[2]) power.persistent = true;
    } else problems.push(`takt-power's next_boot request ${JSON.stringify(files.next_boot.slice(0, 40))} is not 'pxe' or 'disk' [persistent]`);
  }
  if (files.action !== undefined) {
    const a = files.action.trim();
    if (a === 'cycle' || a === 'off') power.action = a;
    else problems.push(`takt-power's action request ${JSON.stringify(files.action.slice(0, 40))} is not 'cycle' or 'off'`);
  }
  if (problems.length) return { problem: `${problems.join('; ')} (write requests with takt-power); no power request reported` };
  return { ...(Object.keys(power).length ? { power } : {}), problem: null };
}

/**
 * Reads the control dir `dir` (a missing dir or file: nothing asked). Files that are not regular or are
 * over MAX_CONTROL_BYTES are problems, not requests. A problem drops the whole request: half of what a
 * script asked (a next boot without its cycle) is worse than none.
 */
export async function readPowerRequest(dir: string): Promise<ReadPower> {
  const files: { next_boot?: string; action?: string } = {};
  const problems: string[] = [];
  for (const name of ['next_boot', 'action'] as const) {
    const file = join(dir, name);
    const info = await stat(file).catch(() => null);
    if (!info) continue;
    if (!info.isFile() || info.size > MAX_CONTROL_BYTES) {
      problems.push(`takt-power's ${name} request is not a small regular file`);
      continue;
    }
    files[name] = await readFile(file, 'utf8');
  }
  const parsed = parsePowerRequest(files);
  if (parsed.problem) problems.push(parsed.problem);
  if (problems.length) return { problem: problems.join('; ') };
  return parsed;
}
