/** Evaluates expectation rules (task post-conditions, stage preconditions) against param values. */
import { canonicalJson } from './hash.js';
import type { ExpectRule } from './content.js';
import { validateValue } from './validate.js';

const shown = (v: unknown) => (v === undefined ? 'nothing' : JSON.stringify(v));

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
      if (!new RegExp(r.matches).test(text)) return `expectation '${r.param} matches /${r.matches}/' failed (got ${shown(v)})`;
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
