/**
 * `takt content lint`: every problem of a pack at once, each at the file:line:col of the node at fault,
 * like a compiler. File-level checks (YAML, schema, names) live here; the semantic checks are the ones
 * in check.ts, whose field paths are mapped back into the files.
 */
import semver from 'semver';
import {
  CONTENT_KINDS,
  CONTENT_SCHEMAS,
  KIND_NOUN,
  LOCAL_LAYER,
  PackManifestSchema,
  emptyContentSet,
  type ContentKind,
  type ContentObject,
  type ContentSet,
  type PackManifest,
} from '../model/content.js';
import { checkObjects, type ObjectRef } from './check.js';
import { MANIFEST_FILE, isYamlFile, objectFileOf, type PackFiles } from './files.js';
import { schemaProblems } from './schema.js';
import { encodePointer, parseYamlFile, type Pos, type YamlFile } from './yaml.js';

export { checkContentSet } from './check.js';

export interface Diagnostic {
  file: string;
  /** 1-based. */
  line: number;
  col: number;
  message: string;
  /** JSON pointer of the offending field inside the file's object, e.g. `/tasks/2`. */
  path?: string;
}

export interface LintResult {
  /** Set when pack.yaml is valid. */
  manifest?: PackManifest;
  /** Every object file that parsed to a mapping (valid or not), in file order. */
  objects: Array<{ kind: ContentKind; def: ContentObject; file: string }>;
  diagnostics: Diagnostic[];
}

export function formatDiagnostic(d: Diagnostic): string {
  return `${d.file}:${d.line}:${d.col}: ${d.message}`;
}

/** The layer name objects get while linting a pack whose pack.yaml is unusable. */
const UNNAMED_PACK = '(this pack)';

/**
 * Lints a pack. `base` is the rest of the endpoint's content (other packs and local objects) that
 * references may resolve into. The caller removes the linted pack's own previous version from it; objects
 * of the same layer as this pack's name are ignored anyway, so passing the full set is harmless.
 */
export function lintPack(files: PackFiles, base: ContentSet = emptyContentSet()): LintResult {
  const diagnostics: Diagnostic[] = [];
  const diag = (file: string, pos: Pos, message: string, path?: string): void => {
    diagnostics.push({ file, line: pos.line, col: pos.col, message, ...(path !== undefined ? { path } : {}) });
  };

  const manifest = lintManifest(files, diag);
  const layer = manifest?.name ?? UNNAMED_PACK;

  // Parse and schema-check every object file.
  interface Parsed {
    kind: ContentKind;
    name: string;
    file: string;
    yaml: YamlFile;
    def: Record<string, unknown>;
    /** Clean enough YAML to run the semantic checks on. */
    checkable: boolean;
  }
  const parsed: Parsed[] = [];
  for (const file of Object.keys(files).sort()) {
    if (file === MANIFEST_FILE) continue;
    const where = objectFileOf(file);
    if (!where) {
      if (isYamlFile(file)) diag(file, { line: 1, col: 1 }, misplacedMessage(file));
      continue;
    }
    const yaml = parseYamlFile(files[file]!, KIND_NOUN[where.kind]);
    for (const p of yaml.problems) diag(file, p, p.message);
    if (!yaml.value) continue;
    const def = yaml.value;
    const checkable = yaml.problems.length === 0;
    // A file with YAML errors parses to a partial value; schema errors about it would only be noise.
    if (checkable) {
      for (const p of schemaProblems(CONTENT_SCHEMAS[where.kind], def)) diag(file, yaml.locate(p.path, p.at), p.message, p.path);
    }
    const name = typeof def.name === 'string' ? def.name : where.name;
    if (typeof def.name === 'string' && def.name !== where.name) {
      diag(file, yaml.locate('/name'), `name '${def.name}' does not match the file name: ${file} must say name: ${where.name}`, '/name');
    }
    parsed.push({ kind: where.kind, name, file, yaml, def, checkable });
  }

  // Build the endpoint's content as it would be with this pack installed; the first file of a name wins.
  const set = emptyContentSet();
  for (const kind of CONTENT_KINDS) {
    for (const [name, entry] of base.objects[kind]) {
      if (entry.layer !== layer) (set.objects[kind] as Map<string, unknown>).set(name, entry);
    }
  }
  const owner = new Map<string, Parsed>();
  const subjects: ObjectRef[] = [];
  for (const p of parsed) {
    const key = `${p.kind}/${p.name}`;
    const first = owner.get(key);
    if (first) {
      const at = first.yaml.locate('/name');
      diag(p.file, p.yaml.locate('/name'), `duplicate ${KIND_NOUN[p.kind]} '${p.name}' (also defined at ${first.file}:${at.line}:${at.col})`, '/name');
      continue;
    }
    const existing = base.objects[p.kind].get(p.name);
    if (existing && existing.layer !== layer) {
      const by = existing.layer === LOCAL_LAYER ? 'a local object on the endpoint' : `pack '${existing.layer}'`;
      diag(p.file, p.yaml.locate('/name'), `${KIND_NOUN[p.kind]} '${p.name}' is already defined by ${by}; names are unique per kind`, '/name');
    }
    owner.set(key, p);
    (set.objects[p.kind] as Map<string, unknown>).set(p.name, { def: p.def, layer });
    if (p.checkable) subjects.push({ kind: p.kind, name: p.name });
  }

  // Semantic checks, mapped back to positions. A node that already has a schema error (at it or inside
  // it) is not reported again: one problem per node, the most basic one.
  const schemaPaths = diagnostics.filter((d) => d.path !== undefined).map((d) => `${d.file}\0${d.path}`);
  const hasSchemaError = (file: string, path: string): boolean =>
    path !== '' && schemaPaths.some((s) => s === `${file}\0${path}` || s.startsWith(`${file}\0${path}/`));
  for (const prob of checkObjects(set, subjects)) {
    const p = owner.get(`${prob.kind}/${prob.name}`)!;
    if (hasSchemaError(p.file, prob.path)) continue;
    const pos = prob.template
      ? p.yaml.locateInString(prob.path, prob.template.line, prob.template.col)
      : p.yaml.locate(prob.path, prob.at);
    diag(p.file, pos, prob.message, prob.path);
  }

  diagnostics.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.line - b.line || a.col - b.col));
  return {
    ...(manifest ? { manifest } : {}),
    objects: parsed.map((p) => ({ kind: p.kind, def: p.def as unknown as ContentObject, file: p.file })),
    diagnostics,
  };
}

function lintManifest(files: PackFiles, diag: (file: string, pos: Pos, message: string, path?: string) => void): PackManifest | undefined {
  const text = files[MANIFEST_FILE];
  if (text === undefined) {
    diag(MANIFEST_FILE, { line: 1, col: 1 }, 'missing pack.yaml: a pack needs a manifest with name and version (semver)');
    return undefined;
  }
  const yaml = parseYamlFile(text, 'pack manifest');
  for (const p of yaml.problems) diag(MANIFEST_FILE, p, p.message);
  if (!yaml.value) return undefined;
  const problems = schemaProblems(PackManifestSchema, yaml.value);
  for (const p of problems) diag(MANIFEST_FILE, yaml.locate(p.path, p.at), p.message, p.path);
  let ok = problems.length === 0 && yaml.problems.length === 0;
  const requires = yaml.value.requires;
  if (typeof requires === 'object' && requires !== null) {
    for (const [pack, range] of Object.entries(requires)) {
      if (typeof range === 'string' && semver.validRange(range) === null) {
        const path = encodePointer(['requires', pack]);
        diag(MANIFEST_FILE, yaml.locate(path), `'${range}' is not a semver range (e.g. ^1.2.0)`, path);
        ok = false;
      }
    }
  }
  return ok ? (yaml.value as PackManifest) : undefined;
}

function misplacedMessage(file: string): string {
  if (/^pack\.yml$/.test(file)) return 'the manifest must be named pack.yaml';
  // Kinds DESIGN.md plans for packs but this version does not load yet: say so rather than "misplaced".
  const dir = /^(triggers)\//.exec(file)?.[1];
  if (dir) return `${dir}/ is not supported in packs by this version of takt yet`;
  const dirs = CONTENT_KINDS.map((k) => `${k}/`).join(', ');
  return `not an object file: each object goes in its own file directly under ${dirs} (e.g. tasks/NAME.yaml)`;
}
