/**
 * The CLI's one colour decision. picocolors on its own also colours when `CI` is set, so a script
 * running `takt machines ls | grep …` in a CI job would read escape codes; takt colours like kubectl
 * and gh do: only for a terminal, and never when told not to.
 *
 * Source: the NO_COLOR convention (https://no-color.org) and FORCE_COLOR as Node.js reads it.
 */
import { createColors } from 'picocolors';

/**
 * Whether output is coloured: `--no-color` or a non-empty `NO_COLOR` → no; `--color` or
 * `FORCE_COLOR` other than `0`/`false` → yes; else yes only when standard output is a terminal
 * whose `TERM` is not `dumb`.
 */
export function colorWanted(env: Record<string, string | undefined>, argv: readonly string[], isTTY: boolean): boolean {
  if (argv.includes('--no-color') || (env.NO_COLOR ?? '') !== '') return false;
  if (argv.includes('--color')) return true;
  if (env.FORCE_COLOR !== undefined) return !['0', 'false'].includes(env.FORCE_COLOR);
  return isTTY && env.TERM !== 'dumb';
}

/** picocolors' formatters, on or off by `colorWanted` for this process. */
export const pc = createColors(colorWanted(process.env, process.argv, Boolean(process.stdout.isTTY)));
