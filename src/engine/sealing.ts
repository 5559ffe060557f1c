/**
 * Secure values in content: a value set for a `secure` param on a profile, stage, pipeline or blueprint
 * (or a secure param's schema default) is sealed before it is stored — in the object the engine runs, in
 * the pack files kept for export and `GET /packs`, and so in history and events.
 *
 * Pack files are rewritten in place: only the text of each secure value changes, to
 * `{ "$secure": "v1:…" }`, so comments and layout survive. A pack's identity (its sha256) is computed over
 * the files with each secure value replaced by an HMAC of its clear value keyed by this endpoint
 * (`{ "$hmac": "…" }`): installing the same pack twice, or an export of it back, is the same version, a
 * changed secret is a different one, and nobody without the endpoint's key can test guesses of a secret
 * against the published hash. A pack without secure values keeps the plain digest of its files (the
 * same as its bundle's).
 */
import { isNode, parse, parseDocument } from 'yaml';
import { packDigest } from '../content/bundle.js';
import type { PackFiles } from '../content/files.js';
import { isSecureParam, type ContentKind, type ContentSet } from '../model/content.js';
import { TaktError } from '../model/errors.js';
import { canonicalJson, sha256 } from '../model/hash.js';
import { isSealed, mapSealed, MASK, type Sealer } from '../model/secure.js';

/** Kinds whose objects carry param values under `params`. */
const VALUE_KINDS: ReadonlySet<ContentKind> = new Set(['profiles', 'stages', 'pipelines', 'blueprints']);

/** Whether a param is secure, by name. */
export type IsSecure = (param: string) => boolean;

/** Secure params by the content set (and any extra param definitions, e.g. a pack's own). */
export function secureParams(set: ContentSet, extra: Iterable<{ kind: ContentKind; def: unknown }> = []): IsSecure {
  const own = new Map<string, boolean>();
  for (const o of extra) {
    const d = o.def as { name?: unknown; secure?: unknown };
    if (o.kind === 'params' && typeof d.name === 'string') own.set(d.name, d.secure === true);
  }
  return (name) => own.get(name) ?? isSecureParam(set, name);
}

/** Paths (as keys) of the values in `def` that must be sealed: secure params' values and defaults. */
export function secureSites(kind: ContentKind, def: unknown, isSecure: IsSecure): string[][] {
  const d = def as Record<string, unknown> | null;
  if (typeof d !== 'object' || d === null) return [];
  if (VALUE_KINDS.has(kind)) {
    const params = d.params;
    if (typeof params !== 'object' || params === null || Array.isArray(params)) return [];
    return Object.entries(params)
      .filter(([k, v]) => isSecure(k) && v !== null && !isSealed(v))
      .map(([k]) => ['params', k]);
  }
  if (kind === 'params' && d.secure === true) {
    const schema = d.schema as Record<string, unknown> | undefined;
    if (typeof schema === 'object' && schema !== null && 'default' in schema && schema.default !== null && !isSealed(schema.default)) return [['schema', 'default']];
  }
  return [];
}

function getIn(v: unknown, path: string[]): unknown {
  let cur = v;
  for (const k of path) cur = (cur as Record<string, unknown>)[k];
  return cur;
}

function setIn<T>(v: T, path: string[], value: unknown): T {
  if (path.length === 0) return value as T;
  const [head, ...rest] = path;
  const obj = v as Record<string, unknown>;
  return { ...obj, [head!]: setIn(obj[head!], rest, value) } as T;
}

/** The object with its secure values sealed (a new object; sealed values are kept as they are). */
export function sealDef<T>(kind: ContentKind, def: T, isSecure: IsSecure, sealer: Sealer): T {
  let out = def;
  for (const path of secureSites(kind, def, isSecure)) out = setIn(out, path, sealer.seal(getIn(def, path)));
  return out;
}

/** For comparing and showing content: each sealed value as the mask and a keyed fingerprint of its value. */
export function fingerprinted(def: unknown, sealer: Sealer): unknown {
  return mapSealed(def, (s) => `${MASK} (secure, fingerprint ${sealer.fingerprint(s).slice(0, 12)})`);
}

/**
 * Replaces the text of the values at the given paths in one YAML file, each with its replacement written
 * as flow YAML where the old value stood; when that cannot keep the document's meaning the file is
 * re-written as a whole. Throws when neither yields the intended document.
 */
function rewriteYaml(file: string, text: string, edits: Array<{ path: string[]; value: unknown }>): string {
  if (edits.length === 0) return text;
  let expected = parse(text) as unknown;
  for (const e of edits) expected = setIn(expected, e.path, e.value);
  const doc = parseDocument(text);
  const spans: Array<{ start: number; end: number; text: string }> = [];
  let inPlace = true;
  for (const e of edits) {
    const node = doc.getIn(e.path, true);
    if (!isNode(node) || !node.range || node.anchor) {
      inPlace = false;
      break;
    }
    const [start, end] = node.range;
    const trail = /\s*$/.exec(text.slice(start, end))![0];
    spans.push({ start, end, text: JSON.stringify(e.value) + trail });
  }
  const matches = (t: string) => {
    try {
      return canonicalJson(parse(t)) === canonicalJson(expected);
    } catch {
      return false;
    }
  };
  if (inPlace) {
    let out = text;
    for (const sp of spans.sort((a, b) => b.start - a.start)) out = out.slice(0, sp.start) + sp.text + out.slice(sp.end);
    if (matches(out)) return out;
  }
  const whole = parseDocument(text);
  for (const e of edits) whole.setIn(e.path, whole.createNode(e.value));
  const out = whole.toString({ lineWidth: 0 });
  if (matches(out)) return out;
  const where = `/${edits[0]!.path.join('/')}`;
  throw new TaktError('invalid', `${file}: the secure value at ${where} cannot be sealed in place; write it as a plain value (no anchors or aliases)`, { path: `${file}${where}` });
}

export interface SealedPack {
  files: PackFiles;
  /** The objects as the engine runs them: secure values sealed, the same ciphertexts as in `files`. */
  objects: Array<{ kind: ContentKind; def: unknown; file: string }>;
  /** The pack's identity on this endpoint (see the module comment). */
  sha256: string;
}

/**
 * Seals the secure values of a linted pack: in its files and its objects. `objects` come from lint
 * (each with its file); `isSecure` knows the pack's own params and the endpoint's.
 */
export function sealPack(files: PackFiles, objects: Array<{ kind: ContentKind; def: unknown; file: string }>, isSecure: IsSecure, sealer: Sealer): SealedPack {
  const sealedFiles: PackFiles = { ...files };
  const digestFiles: PackFiles = { ...files };
  let secure = false;
  const outObjects = objects.map((o) => {
    const sites = secureSites(o.kind, o.def, isSecure);
    let def = o.def;
    for (const path of sites) def = setIn(def, path, sealer.seal(getIn(o.def, path)));
    // Values already sealed (an export coming back) stay as they are but count for the digest too.
    const sealed = sealedPaths(o.kind, def);
    if (sealed.length === 0) return o;
    secure = true;
    const text = files[o.file]!;
    const sealedText = rewriteYaml(o.file, text, sites.map((path) => ({ path, value: getIn(def, path) })));
    sealedFiles[o.file] = sealedText;
    digestFiles[o.file] = rewriteYaml(o.file, sealedText, sealed.map((path) => ({ path, value: { $hmac: sealer.fingerprint(getIn(def, path)) } })));
    return { ...o, def };
  });
  return { files: sealedFiles, objects: outObjects, sha256: secure ? sha256(canonicalJson(digestFiles)) : packDigest(files) };
}

/** Paths of the sealed values where a secure value may be set. */
function sealedPaths(kind: ContentKind, def: unknown): string[][] {
  const d = def as Record<string, unknown> | null;
  if (typeof d !== 'object' || d === null) return [];
  if (VALUE_KINDS.has(kind) && typeof d.params === 'object' && d.params !== null) {
    return Object.entries(d.params).filter(([, v]) => isSealed(v)).map(([k]) => ['params', k]);
  }
  if (kind === 'params' && isSealed((d.schema as Record<string, unknown> | undefined)?.default)) return [['schema', 'default']];
  return [];
}
