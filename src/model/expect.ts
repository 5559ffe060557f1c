/** Evaluates expectation rules (task post-conditions, stage preconditions) against param values. */
import { canonicalJson } from './hash.js';
import type { ExpectRule } from './content.js';
import { compileUserRegex, maxTextFor, tooLongMessage, type UserRegex } from './regex.js';
import { validateValue } from './validate.js';

/** The value as JSON, cut at 200 characters: a broken rule's message becomes a machine's reason, shown everywhere. */
const shown = (v: unknown): string => {
  const text = v === undefined ? 'nothing' : JSON.stringify(v);
  return text.length > 200 ? `${text.slice(0, 200)}… (${text.length} characters)` : text;
};

/** The first broken rule, described with the rule and the value; null when all hold. */
export function checkExpectations(rules: readonly ExpectRule[], values: Record<string, unknown>): string | null {
  for (const r of rules) {
    const v = values[r.param];
    if (r.nonEmpty && (v === undefined || v === null || v === '' || (Array.isArray(v) && v.length === 0) || (typeof v === 'object' && v !== null && Object.keys(v).length === 0))) {
      return `expectation '${r.param} is non-empty' failed (got ${shown(v)})`;
    }
    if ('equals' in r && canonicalJson(v) !== canonicalJson(r.equals)) return `expectation '${r.param} equals ${JSON.stringify(r.equals)}' failed (got ${shown(v)})`;
    if (r.matches !== undefined) {
      const text = typeof v === 'string' ? v : v === undefined ? '' : JSON.stringify(v);
      // RE2, linear in the text (a pack's pattern meets a machine's value here); lint refused what RE2
      // cannot compile, and a text past the pattern's budget fails the rule, saying so.
      let re: UserRegex;
      try {
        re = compileUserRegex(r.matches);
      } catch (e) {
        // Content checked before RE2 may hold one (e.g. lookahead): the rule cannot hold, and says why.
        return `expectation '${r.param} matches /${r.matches}/' cannot be checked: ${(e as Error).message}`;
      }
      if (!re.fits(text)) return `expectation '${r.param} matches /${r.matches}/' failed: the value ${tooLongMessage(r.matches, text.length, maxTextFor(re.size))}`;
      if (!re.test(text)) return `expectation '${r.param} matches /${r.matches}/' failed (got ${shown(v)})`;
    }
    if (r.range) {
      const n = typeof v === 'number' ? v : Number(v);
      const { min, max } = r.range;
      if (!Number.isFinite(n) || (min !== undefined && n < min) || (max !== undefined && n > max)) {
        return `expectation '${r.param} in [${min ?? '-∞'}, ${max ?? '∞'}]' failed (got ${shown(v)})`;
      }
    }
    if (r.schema) {
      const problems = validateValue(r.schema, v);
      if (problems.length) return `expectation '${r.param} matches its schema' failed: ${problems[0]!.path || 'value'} ${problems[0]!.message} (got ${shown(v)})`;
    }
  }
  return null;
}
