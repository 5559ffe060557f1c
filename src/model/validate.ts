/** The one JSON Schema validator: Ajv 8 with formats, compiled schemas cached per schema object. */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import addFormatsModule from 'ajv-formats';
import { useRe2Formats } from './formats.js';
import { patternFailure, re2Engine } from './regex.js';

// ajv-formats is CommonJS; under NodeNext its default export arrives as the module namespace.
const addFormats = (addFormatsModule as unknown as { default?: typeof addFormatsModule }).default ?? addFormatsModule;

// Every pattern in a schema (`pattern`, `patternProperties`, `propertyNames`) runs on RE2, and so do the
// formats: schemas come from packs and admins, values from callers (src/model/regex.ts says why).
// `strict: false` also keeps Ajv from testing patternProperties against property names natively.
export const ajv = new Ajv({ allErrors: true, strict: false, allowUnionTypes: true, code: { regExp: re2Engine } });
(addFormats as unknown as (a: Ajv) => void)(ajv);
useRe2Formats(ajv);

import { inexactNumbers } from './numbers.js';

export { inexactMessage, inexactNumbers, isExactNumber } from './numbers.js';

const cache = new WeakMap<object, ValidateFunction>();

export interface SchemaProblem {
  /** JSON pointer into the value, e.g. `/stages/1`. */
  path: string;
  message: string;
}

export function compileSchema(schema: object): ValidateFunction {
  let fn = cache.get(schema);
  if (!fn) {
    fn = ajv.compile(schema);
    cache.set(schema, fn);
  }
  return fn;
}

/** Validates `value`; returns every problem with a readable message (empty when valid). */
export function validateValue(schema: object, value: unknown): SchemaProblem[] {
  const inexact = inexactNumbers(value);
  if (inexact.length > 0) return inexact;
  const fn = compileSchema(schema);
  if (fn(value)) return [];
  return (fn.errors ?? []).map((e) => describeAjvError(e, value));
}

/** One Ajv error as a problem; `root` (the validated value) lets a `pattern` error say when the value was too long to check. */
export function describeAjvError(e: ErrorObject, root?: unknown): SchemaProblem {
  const path = e.instancePath || '';
  switch (e.keyword) {
    case 'additionalProperties': {
      const extra = (e.params as { additionalProperty: string }).additionalProperty;
      return { path: `${path}/${extra}`, message: `unknown field '${extra}'` };
    }
    case 'required':
      return { path, message: `missing required field '${(e.params as { missingProperty: string }).missingProperty}'` };
    case 'pattern': {
      // A value past the pattern's cost budget did not fail the pattern: it was not checked. Say so.
      const tooLong = patternFailure((e.params as { pattern: string }).pattern, valueAt(root, path));
      return { path, message: tooLong ?? e.message ?? 'is invalid' };
    }
    case 'enum':
      return { path, message: `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}` };
    default:
      return { path, message: e.message ?? 'is invalid' };
  }
}

/** The value at a JSON pointer (`/a/0/b`) inside `root`, or undefined. */
function valueAt(root: unknown, pointer: string): unknown {
  let v = root;
  for (const raw of pointer.split('/').slice(1)) {
    if (typeof v !== 'object' || v === null) return undefined;
    v = (v as Record<string, unknown>)[raw.replace(/~1/g, '/').replace(/~0/g, '~')];
  }
  return v;
}
