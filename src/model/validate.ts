/** The one JSON Schema validator: Ajv 8 with formats, compiled schemas cached per schema object. */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import addFormatsModule from 'ajv-formats';

// ajv-formats is CommonJS; under NodeNext its default export arrives as the module namespace.
const addFormats = (addFormatsModule as unknown as { default?: typeof addFormatsModule }).default ?? addFormatsModule;

export const ajv = new Ajv({ allErrors: true, strict: false, allowUnionTypes: true });
(addFormats as unknown as (a: Ajv) => void)(ajv);

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
  return (fn.errors ?? []).map(describeAjvError);
}

export function describeAjvError(e: ErrorObject): SchemaProblem {
  const path = e.instancePath || '';
  switch (e.keyword) {
    case 'additionalProperties': {
      const extra = (e.params as { additionalProperty: string }).additionalProperty;
      return { path: `${path}/${extra}`, message: `unknown field '${extra}'` };
    }
    case 'required':
      return { path, message: `missing required field '${(e.params as { missingProperty: string }).missingProperty}'` };
    case 'enum':
      return { path, message: `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}` };
    default:
      return { path, message: e.message ?? 'is invalid' };
  }
}
