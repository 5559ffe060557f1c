/**
 * YAML with positions: parse one object file and answer "where in the file is the node at this JSON
 * pointer", so every check can work on plain values and field paths and still report file:line:col.
 */
import { LineCounter, isMap, isNode, isPair, isScalar, isSeq, parseAllDocuments, Scalar, visit, type Document, type Node } from 'yaml';
import { TaktError } from '../model/errors.js';
import { inexactMessage, isExactNumber } from '../model/numbers.js';

export interface Pos {
  line: number;
  col: number;
}

export interface YamlProblem extends Pos {
  message: string;
}

export interface YamlFile {
  /** The document as plain data; undefined when the file is empty or not a mapping. */
  value: Record<string, unknown> | undefined;
  /** Syntax problems and "not a single mapping"; when there are any, `value` may be partial. */
  problems: YamlProblem[];
  /** Where the node at `pointer` is: its key (`at: 'key'`) or its value; the deepest existing ancestor otherwise. */
  locate(pointer: string, at?: 'key' | 'value'): Pos;
  /** Where line/col (1-based) inside the string at `pointer` is in the file, e.g. a template error. */
  locateInString(pointer: string, line: number, col: number): Pos;
}

const START: Pos = { line: 1, col: 1 };

export function decodePointer(pointer: string): string[] {
  if (pointer === '' || pointer === '/') return [];
  return pointer
    .replace(/^\//, '')
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

export function encodePointer(segments: Array<string | number>): string {
  return segments.map((s) => '/' + String(s).replace(/~/g, '~0').replace(/\//g, '~1')).join('');
}

function describe(node: unknown): string {
  if (isSeq(node)) return 'a list';
  if (isScalar(node)) return node.value === null ? 'an empty value' : `a ${typeof node.value} (${JSON.stringify(node.value)})`;
  return 'something else';
}

/**
 * Bounds every YAML document takt reads, whoever wrote it: its size, how deeply it nests and how far its
 * aliases may expand ("billion laughs"). A document over a bound is refused with a problem, never parsed
 * into something that exhausts memory or the stack.
 */
export const YAML_LIMITS = {
  /** Bytes per document (a pack is at most 8 MiB in all). */
  maxBytes: 1024 * 1024,
  /** yaml's alias expansion budget: roughly, aliases × nodes they copy. */
  maxAliasCount: 100,
  /** Nesting of mappings and lists; content is a few levels deep, param values a few more. */
  maxDepth: 64,
} as const;

interface Loaded {
  at(offset: number): Pos;
  docs: Document.Parsed[];
  problems: YamlProblem[];
}

/** Parses all documents of `text` within YAML_LIMITS; problems carry positions. */
function loadBounded(text: string): Loaded {
  const lc = new LineCounter();
  const at = (offset: number): Pos => {
    const p = lc.linePos(offset);
    return { line: p.line, col: p.col };
  };
  const bytes = Buffer.byteLength(text);
  if (bytes > YAML_LIMITS.maxBytes) {
    return { at, docs: [], problems: [{ ...START, message: `file is ${bytes} bytes; a YAML file may hold at most ${YAML_LIMITS.maxBytes / 1024 / 1024} MiB` }] };
  }
  // prettyErrors must stay off: building a pretty context for a deeply nested error exhausts memory.
  const docs = parseAllDocuments(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const list = Array.isArray(docs) ? docs : [];
  const problems: YamlProblem[] = [];
  for (const doc of list) {
    for (const e of [...doc.errors, ...doc.warnings]) {
      const message = /call stack/i.test(e.message) ? `nested too deeply (at most ${YAML_LIMITS.maxDepth} levels)` : e.message;
      problems.push({ ...at(e.pos[0]), message: `invalid YAML: ${message}` });
    }
    if (doc.errors.length === 0) problems.push(...nodeProblems(doc.contents, at));
  }
  return { at, docs: list, problems };
}

/** Depth and number checks over a composed document, without recursion (its depth is what is checked). */
function nodeProblems(root: unknown, at: (offset: number) => Pos): YamlProblem[] {
  const out: YamlProblem[] = [];
  const stack: Array<[unknown, number]> = [[root, 0]];
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!;
    if (isScalar(node) && typeof node.value === 'number') {
      const written = String(node.source ?? node.value);
      if (!Number.isFinite(node.value)) {
        out.push({ ...at(node.range?.[0] ?? 0), message: `${written} (infinite or not a number) cannot be held in JSON; write it as a string` });
      } else if (!isExactNumber(node.value)) {
        out.push({ ...at(node.range?.[0] ?? 0), message: inexactMessage(written) });
      }
    } else if (isMap(node) || isSeq(node)) {
      if (depth >= YAML_LIMITS.maxDepth) {
        out.push({ ...at(node.range?.[0] ?? 0), message: `nested too deeply: at most ${YAML_LIMITS.maxDepth} levels of mappings and lists` });
        continue;
      }
      for (const item of node.items) {
        stack.push([isPair(item) ? item.value : item, depth + 1]);
      }
    }
  }
  return out.sort((a, b) => a.line - b.line || a.col - b.col);
}

/** The plain value of a composed document; alias expansion over the budget is a problem, not a crash. */
function toValue(doc: Document, at: (offset: number) => Pos): { value?: unknown; problem?: YamlProblem } {
  try {
    return { value: doc.toJS({ maxAliasCount: YAML_LIMITS.maxAliasCount }) };
  } catch (e) {
    let first: Node | undefined;
    visit(doc, { Alias: (_k, n) => ((first = n), visit.BREAK) });
    const message = e instanceof ReferenceError && /alias/i.test(e.message)
      ? `aliases expand too far (more than ${YAML_LIMITS.maxAliasCount} copies); write the values out or use fewer aliases`
      : `cannot be read: ${(e as Error).message}`;
    return { problem: { ...at(first?.range?.[0] ?? 0), message: `invalid YAML: ${message}` } };
  }
}

/**
 * Parses one YAML document that is not a pack file (an export file, a CLI `-f` file) within YAML_LIMITS.
 * @throws TaktError('bad_request') whose message starts `where:line:col:` and whose path is `where`.
 */
export function parseYamlValue(text: string, where: string): unknown {
  const { at, docs, problems } = loadBounded(text);
  if (problems.length === 0 && docs.length > 1) problems.push({ ...at(docs[1]!.range[0]), message: `a file holds one document, found ${docs.length}` });
  let value: unknown = null;
  if (problems.length === 0 && docs[0]) {
    const r = toValue(docs[0], at);
    if (r.problem) problems.push(r.problem);
    value = r.value ?? null;
  }
  const p = problems[0];
  if (p) throw new TaktError('bad_request', `${where}:${p.line}:${p.col}: ${p.message}`, { path: where });
  return value;
}

/** Parses one object file; `noun` names what the file should hold ("task", "pack manifest"). */
export function parseYamlFile(text: string, noun: string): YamlFile {
  const { at, docs: list, problems } = loadBounded(text);
  const doc: Document.Parsed | undefined = list[0];
  let value: Record<string, unknown> | undefined;
  if (problems.length > 0 && list.length === 0) {
    // Refused before parsing (too large): nothing to locate in.
  } else if (!doc || doc.contents === null) {
    if (problems.length === 0) problems.push({ ...START, message: `empty file: expected a ${noun} (a mapping of fields)` });
  } else if (list.length > 1) {
    const second = list[1]!;
    problems.push({ ...at(second.range[0]), message: `a file holds one ${noun}, found ${list.length} YAML documents` });
  } else if (!isMap(doc.contents)) {
    const c = doc.contents as Node;
    problems.push({ ...at(c.range?.[0] ?? 0), message: `expected a ${noun} (a mapping of fields), found ${describe(c)}` });
  } else {
    const r = toValue(doc, at);
    if (r.problem) problems.push(r.problem);
    else value = r.value as Record<string, unknown>;
  }

  const find = (pointer: string, where: 'key' | 'value'): { node: Node | null; pos: Pos } => {
    let node: unknown = doc?.contents ?? null;
    let pos: Pos = isNode(node) ? posOf(node) : START;
    const segs = decodePointer(pointer);
    for (let i = 0; i < segs.length; i++) {
      const seg = segs[i]!;
      const last = i === segs.length - 1;
      if (isMap(node)) {
        const pair = node.items.find((p) => keyText(p.key) === seg);
        if (!pair) return { node: null, pos };
        if (isNode(pair.key)) pos = posOf(pair.key);
        if (last && where === 'key') return { node: null, pos };
        node = pair.value;
      } else if (isSeq(node)) {
        const item = node.items[Number(seg)];
        if (!isNode(item)) return { node: null, pos };
        node = item;
      } else {
        return { node: null, pos };
      }
      if (isNode(node)) pos = posOf(node);
      else return { node: null, pos };
    }
    return { node: node as Node, pos };
  };
  function posOf(n: Node): Pos {
    return at(n.range?.[0] ?? 0);
  }

  return {
    value,
    problems,
    locate: (pointer, where = 'value') => find(pointer, where).pos,
    locateInString(pointer, line, col) {
      const { node, pos } = find(pointer, 'value');
      if (!isScalar(node) || !node.range) return pos;
      if (node.type === Scalar.BLOCK_LITERAL || node.type === Scalar.BLOCK_FOLDED) {
        // Content starts on the line after the `|` header; every content line keeps its line, shifted by
        // the block's indentation (exact for `|`, close for folded `>`).
        const nl = text.indexOf('\n', node.range[0]);
        if (nl < 0) return pos;
        const body = text.slice(nl + 1, node.range[1]);
        const firstLine = body.split('\n').find((l) => l.trim() !== '') ?? '';
        const indent = firstLine.length - firstLine.trimStart().length;
        return { line: pos.line + line, col: indent + col };
      }
      const quote = node.type === Scalar.QUOTE_DOUBLE || node.type === Scalar.QUOTE_SINGLE ? 1 : 0;
      if (line === 1) return { line: pos.line, col: pos.col + quote + col - 1 };
      return { line: pos.line + line - 1, col };
    },
  };
}

function keyText(k: unknown): string {
  return isScalar(k) ? String(k.value) : String(k);
}
