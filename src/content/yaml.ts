/**
 * YAML with positions: parse one object file and answer "where in the file is the node at this JSON
 * pointer", so every check can work on plain values and field paths and still report file:line:col.
 */
import { LineCounter, isMap, isNode, isScalar, isSeq, parseAllDocuments, Scalar, type Document, type Node } from 'yaml';

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

/** Parses one object file; `noun` names what the file should hold ("task", "pack manifest"). */
export function parseYamlFile(text: string, noun: string): YamlFile {
  const lc = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const problems: YamlProblem[] = [];
  const at = (offset: number): Pos => {
    const p = lc.linePos(offset);
    return { line: p.line, col: p.col };
  };
  const list = Array.isArray(docs) ? docs : [];
  for (const doc of list) {
    for (const e of [...doc.errors, ...doc.warnings]) problems.push({ ...at(e.pos[0]), message: `invalid YAML: ${e.message}` });
  }
  const doc: Document | undefined = list[0];
  let value: Record<string, unknown> | undefined;
  if (!doc || doc.contents === null) {
    if (problems.length === 0) problems.push({ ...START, message: `empty file: expected a ${noun} (a mapping of fields)` });
  } else if (list.length > 1) {
    const second = list[1]!;
    problems.push({ ...at(second.range[0]), message: `a file holds one ${noun}, found ${list.length} YAML documents` });
  } else if (!isMap(doc.contents)) {
    const c = doc.contents as Node;
    problems.push({ ...at(c.range?.[0] ?? 0), message: `expected a ${noun} (a mapping of fields), found ${describe(c)}` });
  } else {
    // maxAliasCount bounds alias expansion ("billion laughs").
    value = doc.toJS({ maxAliasCount: 100 }) as Record<string, unknown>;
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
