/**
 * Numbers that JSON cannot carry exactly. Kept apart from validate.ts (Ajv) so the CLI can check a
 * `--param` without loading a schema validator.
 */

/** One problem: a JSON pointer into the value and a message. */
export interface NumberProblem {
  path: string;
  message: string;
}

/** How deep `inexactNumbers` looks; deeper values are refused elsewhere (request and YAML limits). */
const MAX_WALK_DEPTH = 256;

/**
 * Numbers a JSON document cannot carry exactly: integers beyond ±(2^53-1), which JSON.parse and YAML have
 * already rounded (12345678901234567891 arrives as 12345678901234567000), and non-finite values. Such a
 * value is refused, with the hint to write it as a string, rather than stored silently changed.
 */
export function inexactNumbers(value: unknown, path = ''): NumberProblem[] {
  const out: NumberProblem[] = [];
  const walk = (v: unknown, at: string, depth: number): void => {
    if (typeof v === 'number') {
      if (!isExactNumber(v)) out.push({ path: at, message: inexactMessage(String(v), true) });
    } else if (typeof v === 'object' && v !== null && depth < MAX_WALK_DEPTH) {
      for (const [k, x] of Object.entries(v)) walk(x, `${at}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`, depth + 1);
    }
  };
  walk(value, path, 0);
  return out;
}

/** Whether a number survives JSON exactly as it was written (as far as can still be told). */
export function isExactNumber(n: number): boolean {
  return Number.isFinite(n) && (!Number.isInteger(n) || Number.isSafeInteger(n));
}

/**
 * The one message for a number that cannot be held exactly. It never repeats the number: the value may
 * be a secure param's (the path or file:line:col says where it is). `rounded`: it arrived after JSON
 * parsing had already rounded it.
 */
export function inexactMessage(_written: string, rounded = false): string {
  const what = rounded ? 'this number (as received: it may already be rounded)' : 'this number';
  return `${what} cannot be held exactly: integers are exact only up to ±${Number.MAX_SAFE_INTEGER}; write it as a string ("...")`;
}
