/**
 * JSON Schema validation for people: runs the shared Ajv (src/model/validate.ts) and turns its errors
 * into one readable message per offending node — unknown fields list the allowed ones, patterns use the
 * schema's description, a failed `anyOf` is one error instead of one per branch.
 */
import type { ErrorObject } from 'ajv';
import { NAME_PATTERN, PARAM_NAME_PATTERN } from '../model/content.js';
import { patternFailure, userRegexProblem } from '../model/regex.js';
import { RECURSIVE_SCHEMA_PROBLEM, ajv, compileSchema, describeAjvError, inexactNumbers, isStackOverflow, schemaShapeProblems } from '../model/validate.js';
import { decodePointer } from './yaml.js';

export interface FieldProblem {
  /** JSON pointer into the validated value. */
  path: string;
  message: string;
  /** Whether the offending node is the key (unknown field) or the value. */
  at: 'key' | 'value';
}

type SchemaNode = Record<string, unknown>;

/** Keywords whose message is clearer with the offending scalar next to it. */
const LIMIT_KEYWORDS = new Set([
  'maximum', 'minimum', 'exclusiveMaximum', 'exclusiveMinimum', 'maxLength', 'minLength', 'multipleOf', 'enum', 'const', 'format',
]);

/** Key patterns TypeBox records use, described the way the named fields are. */
const KEY_PATTERNS: Record<string, string> = {
  [NAME_PATTERN]: 'lower-case name: letters, digits, . _ -',
  [PARAM_NAME_PATTERN]: 'lower-case identifier: letters, digits, _',
};

/** Validates `value` against `schema` (compiled once per schema object). */
export function schemaProblems(schema: object, value: unknown): FieldProblem[] {
  const inexact = inexactNumbers(value);
  if (inexact.length > 0) return inexact.map((p) => ({ ...p, at: 'value' }));
  let fn: ReturnType<typeof compileSchema>;
  try {
    fn = compileSchema(schema);
    if (fn(value)) return [];
  } catch (err) {
    if (isStackOverflow(err)) return [{ ...RECURSIVE_SCHEMA_PROBLEM, at: 'value' }];
    throw err;
  }
  return explainErrors(fn.errors ?? [], schema, value);
}

/** Checks that `schema` is itself a valid JSON Schema; problems point into the schema. */
export function metaSchemaProblems(schema: object): FieldProblem[] {
  // First: the checks below recurse over the schema, and a value checked against a $ref loop never ends.
  const shape = schemaShapeProblems(schema);
  if (shape.length > 0) return shape.map((p) => ({ ...p, at: 'value' }));
  let ok: boolean;
  try {
    ok = ajv.validateSchema(schema) as boolean;
  } catch (e) {
    return [{ path: '', message: (e as Error).message, at: 'value' }];
  }
  if (!ok) {
    const meta = metaSchemaFor(schema);
    return explainErrors(ajv.errors ?? [], meta ?? {}, schema);
  }
  const regexProblems = badPatterns(schema, '');
  if (regexProblems.length > 0) return regexProblems;
  try {
    // Compiling catches what the meta-schema cannot, e.g. unresolvable $refs.
    compileSchema(schema);
  } catch (e) {
    return [{ path: '', message: isStackOverflow(e) ? RECURSIVE_SCHEMA_PROBLEM.message : (e as Error).message, at: 'value' }];
  }
  return [];
}

/** Keywords whose values are data, not schemas: their `pattern` fields are not patterns. */
const DATA_KEYWORDS = new Set(['default', 'const', 'enum', 'examples']);

/**
 * Patterns Ajv would refuse at compile time, found where they are: every schema pattern compiles on RE2
 * (src/model/regex.ts), so backreferences, lookaround and over-large patterns are refused here, with a hint.
 */
function badPatterns(node: unknown, path: string): FieldProblem[] {
  if (typeof node !== 'object' || node === null) return [];
  const out: FieldProblem[] = [];
  const tryRegex = (source: string, at: string, where: 'key' | 'value'): void => {
    const problem = userRegexProblem(source);
    if (problem) out.push({ path: at, at: where, message: problem });
  };
  for (const [k, v] of Object.entries(node)) {
    const at = `${path}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`;
    if (k === 'pattern' && typeof v === 'string') tryRegex(v, at, 'value');
    else if (k === 'patternProperties' && typeof v === 'object' && v !== null) {
      for (const key of Object.keys(v)) tryRegex(key, `${at}/${key.replace(/~/g, '~0').replace(/\//g, '~1')}`, 'key');
    }
    // Values, not schemas: a `pattern` field inside a default is data.
    if (!DATA_KEYWORDS.has(k)) out.push(...badPatterns(v, at));
  }
  return out;
}

function metaSchemaFor(schema: object): object | undefined {
  const id = (schema as { $schema?: unknown }).$schema;
  const key = typeof id === 'string' ? id : (ajv.opts.defaultMeta as string | undefined) ?? 'http://json-schema.org/draft-07/schema';
  return ajv.getSchema(key)?.schema as object | undefined;
}

export function explainErrors(errors: ErrorObject[], root: object, data: unknown): FieldProblem[] {
  // A failed anyOf explains itself; the per-branch errors at or below the same node are noise.
  const anyOfPaths = errors.filter((e) => e.keyword === 'anyOf' || e.keyword === 'oneOf').map((e) => e.instancePath);
  const out: FieldProblem[] = [];
  const seen = new Set<string>();
  for (const e of errors) {
    if (e.keyword !== 'anyOf' && e.keyword !== 'oneOf' && anyOfPaths.some((p) => e.instancePath === p || e.instancePath.startsWith(p + '/'))) {
      continue;
    }
    const p = explain(e, root, data);
    const key = `${p.path}\0${p.message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(p);
  }
  return out;
}

function explain(e: ErrorObject, root: object, data: unknown): FieldProblem {
  const node = schemaAt(root, e.schemaPath);
  const got = valueAt(data, e.instancePath);
  switch (e.keyword) {
    case 'additionalProperties': {
      const extra = (e.params as { additionalProperty: string }).additionalProperty;
      const path = `${e.instancePath}/${extra.replace(/~/g, '~0').replace(/\//g, '~1')}`;
      const props = node?.properties as SchemaNode | undefined;
      const patterns = node?.patternProperties as SchemaNode | undefined;
      if (props && Object.keys(props).length > 0) {
        return { path, at: 'key', message: `unknown field '${extra}' (allowed: ${Object.keys(props).join(', ')})` };
      }
      if (patterns) {
        const pattern = Object.keys(patterns)[0] ?? '';
        const what = KEY_PATTERNS[pattern];
        return { path, at: 'key', message: `invalid key '${extra}': must be ${what ? `a ${what}` : `match ${pattern}`}` };
      }
      return { path, at: 'key', message: `unknown field '${extra}'` };
    }
    case 'pattern': {
      const desc = node?.description;
      const pattern = (e.params as { pattern: string }).pattern;
      const tooLong = patternFailure(pattern, got);
      if (tooLong) return { path: e.instancePath, at: 'value', message: tooLong };
      const want = typeof desc === 'string' ? `a ${desc}` : `match ${pattern}`;
      return { path: e.instancePath, at: 'value', message: `must be ${want} (got ${JSON.stringify(got)})` };
    }
    case 'type':
      return { path: e.instancePath, at: 'value', message: `must be ${typeNames((e.params as { type: string | string[] }).type)} (got ${jsonType(got)})` };
    case 'anyOf':
    case 'oneOf': {
      const desc = node?.description;
      const branches = (node?.[e.keyword] as SchemaNode[] | undefined) ?? [];
      const want = typeof desc === 'string' ? desc : branches.map((b) => describeBranch(b, root)).join(' or ');
      return { path: e.instancePath, at: 'value', message: `must be ${want || 'one of the allowed forms'} (got ${jsonType(got)})` };
    }
    case 'minItems': {
      const n = (e.params as { limit: number }).limit;
      return { path: e.instancePath, at: 'value', message: `must list at least ${n} item${n === 1 ? '' : 's'}` };
    }
    default: {
      const d = describeAjvError(e, data);
      const showGot = LIMIT_KEYWORDS.has(e.keyword) && (typeof got !== 'object' || got === null);
      return { path: d.path, at: 'value', message: showGot ? `${d.message} (got ${jsonType(got)})` : d.message };
    }
  }
}

function describeBranch(b: SchemaNode, root: object): string {
  const ref = b.$ref;
  if (typeof ref === 'string' && ref.startsWith('#')) {
    const target = schemaAt(root, `${ref}/x`);
    if (target) return describeBranch(target, root);
  }
  if (typeof b.description === 'string') return b.description;
  if (Array.isArray(b.enum)) return `one of ${b.enum.map((v) => JSON.stringify(v)).join(', ')}`;
  if (b.type !== undefined) return typeNames(b.type as string | string[]);
  return 'a valid value';
}

const TYPE_NAMES: Record<string, string> = {
  array: 'a list',
  object: 'a mapping',
  string: 'a string',
  number: 'a number',
  integer: 'an integer',
  boolean: 'a boolean (true or false)',
  null: 'null',
};

function typeNames(t: string | string[]): string {
  return (Array.isArray(t) ? t : [t]).map((x) => TYPE_NAMES[x] ?? x).join(' or ');
}

export function jsonType(v: unknown): string {
  if (v === null || v === undefined) return 'nothing';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return `a string ${JSON.stringify(v.length > 40 ? v.slice(0, 37) + '...' : v)}`;
  return `${typeof v === 'number' && Number.isInteger(v) ? 'an integer' : `a ${typeof v}`} ${JSON.stringify(v)}`;
}

/** The schema node that holds the failing keyword (`schemaPath` minus the keyword itself). */
function schemaAt(root: object, schemaPath: string): SchemaNode | undefined {
  const segs = schemaPath.replace(/^#/, '').split('/').slice(1, -1).map((s) => decodeURIComponent(s).replace(/~1/g, '/').replace(/~0/g, '~'));
  let node: unknown = root;
  for (const s of segs) {
    if (typeof node !== 'object' || node === null) return undefined;
    node = (node as Record<string, unknown>)[s];
  }
  return typeof node === 'object' && node !== null ? (node as SchemaNode) : undefined;
}

function valueAt(data: unknown, pointer: string): unknown {
  let v = data;
  for (const s of decodePointer(pointer)) {
    if (typeof v !== 'object' || v === null) return undefined;
    v = (v as Record<string, unknown>)[s];
  }
  return v;
}
