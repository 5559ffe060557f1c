/**
 * Fact selectors: small tests over a machine's observed facts (model/facts.ts), used by classification
 * rules (`memoryBytes>=2GiB`, `os.id in (debian, ubuntu)`, `disks[].sizeBytes>=100GB`) and, in their
 * equality form, by rollout selectors and `--built-with` filters (`facts.os.id=debian`). One parser, one
 * matcher, one set of words for why a term held or not.
 *
 * The term syntax follows Kubernetes' label selectors (`k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`,
 * `!k`; https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors) with
 * numeric comparisons (`>`, `>=`, `<`, `<=`, as Kubernetes' node affinity `Gt`/`Lt`) and byte units.
 *
 * Paths are dotted field names below the facts; `[]` after a name means "any element of this list"
 * (`disks[].sizeBytes`), and a list of scalars at the end of a path is compared element by element
 * (`macs=52:54:00:12:34:56` holds when one of the MACs is that). Paths are checked against FactsSchema,
 * so a fact added to the schema is selectable with no change here.
 */
import { TaktError } from './errors.js';
import { factAt, FactsSchema, type Facts } from './facts.js';
import { SIZE_UNITS } from './size.js';

export type FactOp = 'eq' | 'ne' | 'in' | 'notin' | 'gt' | 'ge' | 'lt' | 'le' | 'exists' | 'absent';

/** One parsed term. `values` for eq/ne (one) and in/notin (several); `number` for the comparisons. */
export interface FactTerm {
  /** The term as written (trimmed), for reasons and messages. */
  text: string;
  /** The dotted path as written, `[]` included, e.g. `disks[].sizeBytes`. */
  path: string;
  op: FactOp;
  values: string[];
  /** For gt/ge/lt/le: the value as a number (units applied). */
  number?: number;
}

/** The operators as written, longest first so `>=` is not read as `>`. */
const OPS: Array<[string, FactOp]> = [
  ['==', 'eq'],
  ['!=', 'ne'],
  ['>=', 'ge'],
  ['<=', 'le'],
  ['=', 'eq'],
  ['>', 'gt'],
  ['<', 'lt'],
];
const OP_TEXT: Record<FactOp, string> = { eq: '=', ne: '!=', in: 'in', notin: 'notin', gt: '>', ge: '>=', lt: '<', le: '<=', exists: '', absent: '!' };

/** The syntax in one line, for messages. */
export const FACT_SELECTOR_SYNTAX =
  'PATH=VALUE, PATH!=VALUE, PATH in (A, B), PATH notin (A, B), PATH>=N (also >, <, <=; N may carry a unit: 2GiB, 500GB), PATH (present) or !PATH (absent); PATH is dotted, with [] for any list element (e.g. memoryBytes>=2GiB, os.id in (debian, ubuntu), disks[].sizeBytes>=100GB)';

const SEGMENT = /^([A-Za-z][A-Za-z0-9]*(\[\])?|\d{1,4})$/;
const MAX_TERM_CHARS = 1024;

/**
 * A number with an optional byte unit: `2`, `-1`, `1.5`, `2GiB`, `500GB`, `64M` (bare K/M/G/T are binary,
 * as everywhere in takt: model/size.ts). Undefined when `text` is not one.
 */
export function parseQuantity(text: string): number | undefined {
  const m = /^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(text);
  if (!m) return undefined;
  const key = m[2]!.toLowerCase();
  if (!Object.hasOwn(SIZE_UNITS, key)) return undefined;
  const unit = SIZE_UNITS[key]!;
  const n = Number(m[1]) * unit;
  return Number.isFinite(n) ? n : undefined;
}

/** JSON-Schema node type of a FactsSchema node, following nullable unions (`string | null`). */
type SchemaNode = { type?: unknown; properties?: Record<string, SchemaNode>; items?: SchemaNode; anyOf?: SchemaNode[] };

function nonNull(node: SchemaNode): SchemaNode {
  if (Array.isArray(node.anyOf)) {
    const rest = node.anyOf.filter((b) => b.type !== 'null');
    if (rest.length === 1) return nonNull(rest[0]!);
  }
  return node;
}

/** What a path leads to in FactsSchema: the leaf's schema node and whether it passes through a list. */
interface PathShape {
  leaf: SchemaNode;
}

/**
 * Why `path` is not a selectable fact path, or undefined when it is: each segment a field name (with
 * `[]` on a list), every field known to FactsSchema (with a "did you mean"), `[]` only on lists.
 */
export function factPathProblem(path: string): string | undefined {
  const r = shapeOf(path);
  return typeof r === 'string' ? r : undefined;
}

function shapeOf(path: string): PathShape | string {
  if (path === '') return 'the path is empty';
  const segs = path.split('.');
  let node: SchemaNode = FactsSchema as unknown as SchemaNode;
  let at = '';
  for (const seg of segs) {
    if (!SEGMENT.test(seg)) return `'${seg || '(empty)'}' is not a field name (letters and digits, starting with a letter; [] after a list) or an index`;
    const list = seg.endsWith('[]');
    const name = list ? seg.slice(0, -2) : seg;
    node = nonNull(node);
    if (/^\d+$/.test(seg)) {
      // An index: disks.0.name is the first disk's name.
      if (node.type !== 'array' || !node.items) return `'${at || 'facts'}' is not a list, so it has no element ${seg}`;
      node = node.items;
      at = `${at}.${seg}`;
      continue;
    }
    // A list met without [] is looked into too: macs (a list of strings) compares element by element.
    if (node.type === 'array' && node.items) node = nonNull(node.items);
    const props = node.properties;
    if (node.type !== 'object' || !props) return `'${at || 'facts'}' has no fields (it is ${describeNode(node)}), so '${name}' cannot be below it`;
    if (!Object.hasOwn(props, name)) {
      const known = Object.keys(props);
      const hint = closestName(name, known);
      return `${at ? `'${at}'` : 'facts'} has no field '${name}'${hint ? ` (did you mean '${hint}'?)` : ''}; ${at ? 'it has' : 'facts are'} ${known.join(', ')}`;
    }
    node = props[name]!;
    at = at ? `${at}.${name}` : name;
    if (list && nonNull(node).type !== 'array') return `'${at}' is not a list (it is ${describeNode(nonNull(node))}): drop the []`;
  }
  node = nonNull(node);
  if (node.type === 'array' && node.items) node = nonNull(node.items);
  return { leaf: node };
}

function describeNode(node: SchemaNode): string {
  const t = node.type;
  return t === 'array' ? 'a list' : t === 'object' ? 'a mapping' : t === 'integer' || t === 'number' ? 'a number' : t === 'boolean' ? 'a boolean' : t === 'string' ? 'a string' : 'a value';
}

function closestName(name: string, candidates: string[]): string | undefined {
  const lower = name.toLowerCase();
  return candidates.find((c) => c.toLowerCase() === lower) ?? candidates.find((c) => c.toLowerCase().startsWith(lower.slice(0, 3)) && lower.length >= 3);
}

/**
 * Parses one term and checks its path against FactsSchema (a numeric comparison needs a numeric fact).
 * @throws TaktError('invalid') saying what is wrong with the term and showing the syntax.
 */
export function parseFactTerm(raw: string): FactTerm {
  const text = raw.trim();
  const bad = (why: string) => new TaktError('invalid', `selector '${text}': ${why}`);
  if (text === '') throw bad(`empty; write ${FACT_SELECTOR_SYNTAX}`);
  if (text.length > MAX_TERM_CHARS) throw new TaktError('invalid', `a selector is at most ${MAX_TERM_CHARS} characters`);
  let term: FactTerm;
  const set = /^([^\s=!<>()]+)\s+(in|notin)\s*\((.*)\)$/.exec(text);
  if (set) {
    const values = set[3]!.split(',').map((v) => v.trim());
    if (values.some((v) => v === '')) throw bad(`a set lists values between commas, e.g. ${set[1]} ${set[2]} (a, b)`);
    term = { text, path: set[1]!, op: set[2] as 'in' | 'notin', values };
  } else if (/^\S+\s+(in|notin)\b/.test(text)) {
    throw bad(`a set is written in parentheses, e.g. ${text.split(/\s+/)[0]} ${/\bnotin\b/.test(text) ? 'notin' : 'in'} (a, b)`);
  } else {
    const m = /^([^=!<>\s]+)\s*(==|!=|>=|<=|=|>|<)\s*(.*)$/.exec(text);
    if (m) {
      const op = OPS.find(([o]) => o === m[2])![1];
      const value = m[3]!.trim();
      term = { text, path: m[1]!, op, values: [value] };
      if (op === 'gt' || op === 'ge' || op === 'lt' || op === 'le') {
        const n = parseQuantity(value);
        if (n === undefined) throw bad(`'${value}' is not a number; ${m[2]} compares numbers, optionally with a byte unit (2GiB, 512MiB, 500GB)`);
        term.number = n;
      } else if (/[()]/.test(value) || /^[=<>]/.test(value)) {
        throw bad(`'${value}' is not a value; write ${FACT_SELECTOR_SYNTAX}`);
      }
    } else if (/^!?[^\s=!<>()]+$/.test(text)) {
      const absent = text.startsWith('!');
      term = { text, path: absent ? text.slice(1) : text, op: absent ? 'absent' : 'exists', values: [] };
    } else {
      throw bad(`not understood; write ${FACT_SELECTOR_SYNTAX}`);
    }
  }
  const shape = shapeOf(term.path);
  if (typeof shape === 'string') throw bad(shape);
  const numeric = shape.leaf.type === 'integer' || shape.leaf.type === 'number';
  if (term.number !== undefined && !numeric) throw bad(`'${term.path.replace(/\[\]/g, '')}' is ${describeNode(shape.leaf)}, not a number: ${OP_TEXT[term.op]} compares numbers (use = or in for text)`);
  if ((term.op === 'eq' || term.op === 'ne' || term.op === 'in' || term.op === 'notin') && shape.leaf.type === 'object') {
    throw bad(`'${term.path}' is a mapping: compare one of its fields (e.g. ${term.path}.${Object.keys(shape.leaf.properties ?? {})[0] ?? 'field'})`);
  }
  if (numeric && (term.op === 'eq' || term.op === 'ne' || term.op === 'in' || term.op === 'notin')) {
    // 2GiB means the same whatever the operator: memoryBytes=4GiB compares numbers.
    term.values = term.values.map((v) => {
      const n = parseQuantity(v);
      return n === undefined ? v : String(n);
    });
  }
  return term;
}

/** The values `path` reaches in `facts`: `[]` and a list at the end spread into their elements; nulls left out. */
export function factValues(facts: Facts | null, path: string): unknown[] {
  // Lists stay whole until the next segment: an index picks an element, a name looks into every element.
  let vals: unknown[] = [facts];
  for (const seg of path.split('.')) {
    const name = seg.endsWith('[]') ? seg.slice(0, -2) : seg;
    const next: unknown[] = [];
    for (const v of vals) {
      const items = Array.isArray(v) && !/^\d+$/.test(name) ? v : [v];
      for (const it of items) {
        const x = factAt(it as Facts | null, name);
        if (x !== undefined && x !== null) next.push(x);
      }
    }
    vals = next;
  }
  return vals.flatMap((v) => (Array.isArray(v) ? v.filter((e) => e !== null && e !== undefined) : [v]));
}

/** A scalar as text the way selectors compare it: strings as they are, numbers and booleans by their JSON text. */
function asText(v: unknown): string | undefined {
  return typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined;
}

/** Whether one term holds for `facts`. */
export function matchFactTerm(facts: Facts | null, t: FactTerm): boolean {
  return explainFactTerm(facts, t).ok;
}

/**
 * Whether a term holds, and why, in words: the fact's value(s) next to what was asked, e.g.
 * `memoryBytes 4294967296 >= 2147483648 (2GiB)` or `cpu.count 1 is not >= 2`.
 */
export function explainFactTerm(facts: Facts | null, t: FactTerm): { ok: boolean; reason: string } {
  const vals = factValues(facts, t.path);
  const shown = vals.length === 0 ? 'is absent' : vals.length === 1 ? show(vals[0]) : `[${vals.slice(0, 8).map(show).join(', ')}${vals.length > 8 ? `, … ${vals.length - 8} more` : ''}]`;
  const subject = `${t.path} ${shown}`;
  const texts = vals.map(asText);
  const any = (want: string[]) => texts.some((x) => x !== undefined && want.includes(x));
  const wantText = t.values.length === 1 ? show(t.values[0]) : `(${t.values.join(', ')})`;
  const unit = t.number !== undefined && t.values[0] !== String(t.number) ? ` (${t.values[0]})` : '';
  switch (t.op) {
    case 'exists':
      return vals.length > 0 ? { ok: true, reason: `${t.path} is present (${shown})` } : { ok: false, reason: `${t.path} is absent` };
    case 'absent':
      return vals.length === 0 ? { ok: true, reason: `${t.path} is absent` } : { ok: false, reason: `${t.path} is present (${shown}), wanted absent` };
    case 'eq':
    case 'in': {
      const ok = any(t.values);
      const op = t.op === 'eq' ? '=' : 'in';
      return { ok, reason: ok ? `${subject} ${op} ${wantText}` : vals.length === 0 ? `${subject} (wanted ${op} ${wantText})` : `${subject} is not ${op === '=' ? '' : 'in '}${wantText}`.replace(/ {2}/g, ' ') };
    }
    case 'ne':
    case 'notin': {
      const ok = !any(t.values);
      const op = t.op === 'ne' ? '!=' : 'notin';
      return { ok, reason: ok ? `${subject} ${op} ${wantText}` : `${subject} ${op === '!=' ? '=' : 'in'} ${wantText}, wanted ${op} ${wantText}` };
    }
    default: {
      const n = t.number!;
      const cmp = (x: number) => (t.op === 'gt' ? x > n : t.op === 'ge' ? x >= n : t.op === 'lt' ? x < n : x <= n);
      const ok = vals.some((x) => typeof x === 'number' && cmp(x));
      const op = OP_TEXT[t.op];
      return { ok, reason: ok ? `${subject} ${op} ${n}${unit}` : vals.length === 0 ? `${subject} (wanted ${op} ${n}${unit})` : `${subject} is not ${op} ${n}${unit}` };
    }
  }
}

function show(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}

/**
 * Whether the fact at `path` equals `want` as text (a rollout's `facts.os.id=debian`): the `=` term of
 * the selector language, so a list matches when one of its elements does and an absent fact equals nothing.
 */
export function factMatches(facts: Facts | null, path: string, want: string): boolean {
  return factValues(facts, path).some((v) => asText(v) === want);
}

/** The canonical text of a term (spacing normalised), so two rules' terms can be compared as written. */
export function formatFactTerm(t: FactTerm): string {
  switch (t.op) {
    case 'exists':
      return t.path;
    case 'absent':
      return `!${t.path}`;
    case 'in':
    case 'notin':
      return `${t.path} ${t.op} (${[...t.values].sort().join(', ')})`;
    default:
      return `${t.path}${OP_TEXT[t.op]}${t.number ?? t.values[0]}`;
  }
}
