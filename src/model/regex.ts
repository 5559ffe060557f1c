/**
 * Regular expressions that come from content, params or requests (JSON Schema `pattern`,
 * `patternProperties`, `propertyNames`, the `regex` format, expectation `matches`). They run on the
 * endpoint's event loop, so they run on RE2 (re2js, a pure-JS port): time linear in the text, never
 * JavaScript's backtracking, which a pattern like `^(a+)+$` turns exponential (ReDoS). RE2 has no
 * backreferences and no lookaround; such patterns are refused when the content is checked, with a hint.
 *
 * Linear is not free: a match costs about (text length) x (compiled program size). Both are bounded —
 * programs by MAX_PROGRAM_SIZE, each match by MATCH_BUDGET — so one check is bounded in the worst case
 * (a pattern whose DFA thrashes, e.g. `[ab]*a[ab]{999}c`), not only in the typical one.
 * Patterns written by takt itself (constants in src) stay native RegExps.
 */
import { RE2JS } from 're2js';
import { TaktError } from './errors.js';

/** Largest compiled program accepted (RE2 instructions; `^(a+)+$` is 9, an IPv6 address check ~1400). */
export const MAX_PROGRAM_SIZE = 2000;
/**
 * Largest (text length x program size) one match may cost: ~0.2 s of event loop in the worst case
 * measured (`[ab]*a[ab]{999}c` over 100,000 characters took ~1 s at 10^8). A 20-instruction pattern
 * checks a whole 1 MiB request body; a 2000-instruction one, 10,000 characters.
 */
export const MATCH_BUDGET = 20_000_000;

export const RE2_HINT = 'patterns use RE2 syntax: no backreferences (\\1), lookahead ((?=, (?!) or lookbehind ((?<=, (?<!); write \\x{41} for \\u0041 (see docs/content.md)';

/** A compiled user pattern: `test` finds a match anywhere in the text, like RegExp.prototype.test. */
export interface UserRegex {
  readonly source: string;
  /** Instructions in the compiled program (cost per character matched). */
  readonly size: number;
  /** Whether the pattern matches somewhere in `text`; throws TaktError('invalid') past MATCH_BUDGET. */
  test(text: string): boolean;
  /** Whether `text` is within this pattern's budget (so `test` will not throw). */
  fits(text: string): boolean;
  toString(): string;
}

/** The most characters `size` instructions may be matched against. */
export const maxTextFor = (size: number): number => Math.floor(MATCH_BUDGET / Math.max(1, size));

const cache = new Map<string, UserRegex>();
const CACHE_MAX = 1000;

/**
 * Compiles `source` (RE2 syntax; `caseInsensitive` for the `i` flag). Cached by source.
 * Throws TaktError('invalid') saying what RE2 refused, with a hint, when the pattern is not RE2 or too big.
 */
export function compileUserRegex(source: string, caseInsensitive = false): UserRegex {
  const key = `${caseInsensitive ? 'i' : '-'}${source}`;
  const hit = cache.get(key);
  if (hit) return hit;
  let re: RE2JS;
  try {
    re = RE2JS.compile(source, caseInsensitive ? RE2JS.CASE_INSENSITIVE : 0);
  } catch (e) {
    throw new TaktError('invalid', `pattern ${JSON.stringify(source)} is not supported: ${reason(e)}`);
  }
  const size = re.programSize();
  if (size > MAX_PROGRAM_SIZE) {
    throw new TaktError('invalid', `pattern ${JSON.stringify(source.length > 60 ? `${source.slice(0, 57)}...` : source)} is too large (${size} RE2 instructions, limit ${MAX_PROGRAM_SIZE}): simplify it or lower its repeat counts`);
  }
  const limit = maxTextFor(size);
  const compiled: UserRegex = {
    source,
    size,
    fits: (text) => text.length <= limit,
    test(text) {
      if (text.length > limit) throw new TaktError('invalid', tooLongMessage(source, text.length, limit));
      return re.test(text);
    },
    toString: () => source,
  };
  if (cache.size >= CACHE_MAX) cache.clear();
  cache.set(key, compiled);
  return compiled;
}

/** What is wrong with `source` as a user pattern (RE2 syntax, size), or null when it compiles. */
export function userRegexProblem(source: string): string | null {
  try {
    compileUserRegex(source);
    return null;
  } catch (e) {
    if (e instanceof TaktError) return e.message;
    throw e;
  }
}

/** The message for a text too long to be checked against a pattern of this cost. */
export function tooLongMessage(source: string, length: number, limit: number): string {
  return `is too long (${length} characters) to be checked against pattern ${JSON.stringify(source)} (limit ${limit} for this pattern)`;
}

/**
 * RE2's reason without its "error parsing regexp: " prefix; what JavaScript has and RE2 has not
 * (lookaround, backreferences, other escapes) named, with the hint.
 */
function reason(e: unknown): string {
  const msg = (e instanceof Error ? e.message : String(e)).replace(/^error parsing regexp: /, '');
  if (/`\(\?<?[=!]/.test(msg)) return `lookahead and lookbehind are not supported (${msg}); ${RE2_HINT}`;
  if (/invalid escape sequence: `\\[1-9]/.test(msg)) return `backreferences are not supported (${msg}); ${RE2_HINT}`;
  if (/invalid escape sequence|unsupported Perl syntax|invalid named capture/.test(msg)) return `${msg}; ${RE2_HINT}`;
  return `${msg} (patterns use RE2 syntax, see docs/content.md)`;
}

/**
 * Ajv's `code.regExp` engine: every `pattern`, `patternProperties` and `propertyNames` pattern in a
 * schema compiles here. Compiling throws (the schema is refused); a text past the pattern's budget
 * does not match, and the error message says why (see `patternFailure`).
 */
export const re2Engine = Object.assign(
  (pattern: string): { test(s: string): boolean; toString(): string } => {
    const re = compileUserRegex(pattern);
    return { test: (s: string) => re.fits(s) && re.test(s), toString: () => pattern };
  },
  // Ajv uses `code` only when it generates standalone modules, which takt does not.
  { code: 're2Engine' },
);

/** Why `value` failed `pattern` when it is because it is past the pattern's budget; null otherwise. */
export function patternFailure(pattern: string, value: unknown): string | null {
  if (typeof value !== 'string') return null;
  let re: UserRegex;
  try {
    re = compileUserRegex(pattern);
  } catch {
    return null;
  }
  return re.fits(value) ? null : tooLongMessage(pattern, value.length, maxTextFor(re.size));
}

/**
 * A fixed pattern (a library's, e.g. a JSON Schema format) on RE2 without the per-match budget: its
 * cost is known and small. `flags` may hold `i`. Throws when RE2 cannot express it.
 */
export function fixedRe2(source: string, flags = ''): (text: string) => boolean {
  const re = RE2JS.compile(source, flags.includes('i') ? RE2JS.CASE_INSENSITIVE : 0);
  return (text) => re.test(text);
}

/** RE2 has no `\u{...}`/`\uXXXX`; `\x{...}` is the same code point. */
export const re2Escapes = (source: string): string => source.replace(/\\u\{([0-9a-fA-F]+)\}|\\u([0-9a-fA-F]{4})/g, (_, a: string | undefined, b: string | undefined) => `\\x{${a ?? b}}`);
