/** Field-level differences between two JSON values, for pack diffs and history. */
import { canonicalJson } from '../model/hash.js';

export interface FieldChange {
  /** JSON pointer of the field, e.g. `/script` or `/params/greeting`. */
  path: string;
  before: unknown;
  after: unknown;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function fieldChanges(before: unknown, after: unknown, path = ''): FieldChange[] {
  if (canonicalJson(before) === canonicalJson(after)) return [];
  if (isObject(before) && isObject(after)) {
    const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
    return keys.flatMap((k) => fieldChanges(before[k], after[k], `${path}/${k}`));
  }
  return [{ path: path || '/', before, after }];
}
