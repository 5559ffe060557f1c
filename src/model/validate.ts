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
  try {
    const fn = compileSchema(schema);
    if (fn(value)) return [];
    return (fn.errors ?? []).map((e) => describeAjvError(e, value));
  } catch (err) {
    // A schema stored before its shape was checked (schemaShapeProblems) must not turn a check into a 500.
    if (isStackOverflow(err)) return [RECURSIVE_SCHEMA_PROBLEM];
    throw err;
  }
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
      return { path, message: ajvWords(e.keyword, e.params, e.message) };
  }
}

const ARTICLE: Record<string, string> = { string: 'a string', integer: 'an integer', number: 'a number', object: 'an object', array: 'an array', boolean: 'true or false', null: 'null' };
const count = (n: number, one: string, many: string) => `${n} ${n === 1 ? one : many}`;

/**
 * What a JSON-schema rule asks, in words for people rather than Ajv's ("must NOT have more than 16
 * characters" → "must be at most 16 characters long", "must be integer" → "must be an integer"): the one
 * wording of schema errors for API answers (api/server.ts) and content checks alike. `fallback` (Ajv's
 * message) is used for the rules not listed; 'is invalid' when there is none.
 */
export function ajvWords(keyword: string, params: unknown, fallback?: string): string {
  const p = (params ?? {}) as { limit?: number; type?: string | string[]; comparison?: string };
  switch (keyword) {
    case 'maxLength':
      return `must be at most ${count(p.limit!, 'character', 'characters')} long`;
    case 'minLength':
      return p.limit === 1 ? 'must not be empty' : `must be at least ${count(p.limit!, 'character', 'characters')} long`;
    case 'maxItems':
      return `must have at most ${count(p.limit!, 'item', 'items')}`;
    case 'minItems':
      return p.limit === 1 ? 'must not be empty (give at least one)' : `must have at least ${count(p.limit!, 'item', 'items')}`;
    case 'maxProperties':
      return `must have at most ${count(p.limit!, 'entry', 'entries')}`;
    case 'minProperties':
      return p.limit === 1 ? 'must not be empty' : `must have at least ${count(p.limit!, 'entry', 'entries')}`;
    case 'type': {
      const types = (Array.isArray(p.type) ? p.type : String(p.type ?? '').split(',')).filter(Boolean);
      return types.length ? `must be ${types.map((t) => ARTICLE[t] ?? t).join(' or ')}` : (fallback ?? 'is invalid');
    }
    default:
      return fallback ?? 'is invalid';
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

/**
 * How deep a JSON Schema may nest. Checking a schema walks it recursively (Ajv's meta-schema check and
 * compiler included), so a deeper one is refused before any of them runs out of stack.
 */
export const MAX_SCHEMA_DEPTH = 64;

/** Keywords that apply a subschema to the same value (not to a part of it), by how they hold it. */
const IN_PLACE_ONE = ['not', 'if', 'then', 'else'];
const IN_PLACE_LIST = ['allOf', 'anyOf', 'oneOf'];
const IN_PLACE_MAP = ['dependencies', 'dependentSchemas'];

type Node = Record<string, unknown>;
const isNode = (v: unknown): v is Node => typeof v === 'object' && v !== null && !Array.isArray(v);
const escapeToken = (s: string) => s.replace(/~/g, '~0').replace(/\//g, '~1');

/**
 * Shape problems in a JSON Schema that would make checking it, or a value against it, recurse without
 * end: nesting deeper than `MAX_SCHEMA_DEPTH`, and a `$ref` that comes back to where it started without
 * looking into a part of the value (`{"$ref": "#"}`, `a → b → a` through `definitions`, `allOf`, `not`…).
 * A `$ref` inside `properties` or `items` is fine: each step looks at a smaller part of the value.
 * Pure; iterative, so any input is safe. Problems point into the schema.
 */
export function schemaShapeProblems(schema: object): SchemaProblem[] {
  const deep = tooDeep(schema);
  if (deep) return [{ path: deep, message: `nests deeper than ${MAX_SCHEMA_DEPTH} levels; flatten it with definitions and $ref` }];
  const nodes = new Map<string, Node>();
  const todo: Array<[unknown, string]> = [[schema, '']];
  while (todo.length > 0) {
    const [v, at] = todo.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    if (isNode(v)) nodes.set(at, v);
    for (const [k, child] of Object.entries(v)) todo.push([child, `${at}/${escapeToken(k)}`]);
  }
  const cycle = refCycle(nodes);
  if (!cycle) return [];
  const shown = cycle.map((p) => `#${p}`).join(' → ');
  const referrer = cycle.find((p) => typeof nodes.get(p)?.$ref === 'string');
  return [{ path: referrer !== undefined ? `${referrer}/$ref` : cycle[0]!, message: `refers to itself without looking into the value (${shown}), so checking a value would never end; make the $ref point into properties or items, or remove it` }];
}

/** The pointer of the first node nested deeper than `MAX_SCHEMA_DEPTH`, or null. */
function tooDeep(schema: object): string | null {
  const todo: Array<[unknown, string, number]> = [[schema, '', 0]];
  while (todo.length > 0) {
    const [v, at, depth] = todo.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    if (depth > MAX_SCHEMA_DEPTH) return at;
    for (const [k, child] of Object.entries(v)) todo.push([child, `${at}/${escapeToken(k)}`, depth + 1]);
  }
  return null;
}

/** The nodes a node applies to the same value: its in-place subschemas and the target of a local `$ref`. */
function sameValueEdges(at: string, node: Node, nodes: Map<string, Node>): string[] {
  const out: string[] = [];
  for (const k of IN_PLACE_ONE) if (isNode(node[k])) out.push(`${at}/${k}`);
  for (const k of IN_PLACE_LIST) {
    const list = node[k];
    if (Array.isArray(list)) list.forEach((s, i) => isNode(s) && out.push(`${at}/${k}/${i}`));
  }
  for (const k of IN_PLACE_MAP) {
    const map = node[k];
    if (isNode(map)) for (const [name, s] of Object.entries(map)) if (isNode(s)) out.push(`${at}/${k}/${escapeToken(name)}`);
  }
  const ref = node.$ref;
  if (typeof ref === 'string' && (ref === '#' || ref.startsWith('#/'))) {
    let target: string;
    try {
      target = decodeURIComponent(ref.slice(1));
    } catch {
      return out;
    }
    if (nodes.has(target)) out.push(target);
  }
  return out;
}

/** A cycle of same-value edges, as the pointers along it (first repeated at the end), or null. Iterative DFS. */
function refCycle(nodes: Map<string, Node>): string[] | null {
  const state = new Map<string, 'open' | 'done'>();
  for (const start of nodes.keys()) {
    if (state.has(start)) continue;
    const path: string[] = [start];
    const stack: Array<{ at: string; next: string[] }> = [{ at: start, next: sameValueEdges(start, nodes.get(start)!, nodes) }];
    state.set(start, 'open');
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const to = top.next.pop();
      if (to === undefined) {
        state.set(top.at, 'done');
        stack.pop();
        path.pop();
        continue;
      }
      if (state.get(to) === 'open') return [...path.slice(path.indexOf(to)), to];
      if (state.has(to)) continue;
      state.set(to, 'open');
      path.push(to);
      stack.push({ at: to, next: sameValueEdges(to, nodes.get(to)!, nodes) });
    }
  }
  return null;
}

/** Whether `err` is the engine running out of stack (a schema that recursed past what the checks above catch). */
export function isStackOverflow(err: unknown): boolean {
  return err instanceof RangeError && /call stack/i.test(err.message);
}

/** The problem reported when checking against a schema ran out of stack. */
export const RECURSIVE_SCHEMA_PROBLEM: SchemaProblem = {
  path: '',
  message: 'the schema refers to itself without end (a $ref loop); checking against it never finishes; fix its $ref',
};
