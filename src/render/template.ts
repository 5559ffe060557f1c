/**
 * The one template renderer in takt (task scripts, boot files). Liquid, configured so a template cannot
 * run code, read files or reach prototype properties, and fails on any missing variable or filter:
 * a script that would silently render `rm -rf /` from an empty variable must not run at all.
 *
 * Scope contract (the engine builds it): every param the task declares, by name at the top level
 * (`{{ greeting }}`), plus the reserved `machine` object `{ id, name, environment }`. A declared optional
 * param that has no value is passed as `null` (renders empty; `{% if x %}` / `| default:` work), so only
 * names the task never declared are "undefined".
 */
import { Liquid, LiquidError, type FS, type Template } from 'liquidjs';

/** The reserved template variable describing the machine; a param may not use this name. */
export const MACHINE_VAR = 'machine';
export const MACHINE_FIELDS = ['id', 'name', 'environment'] as const;

export class TemplateError extends Error {
  /** 1-based, relative to the template source. */
  readonly line: number;
  readonly col: number;

  constructor(message: string, line: number, col: number) {
    super(message);
    this.name = 'TemplateError';
    this.line = line;
    this.col = col;
  }
}

/** Any file lookup (include/render/layout, if one ever slipped through) fails: templates are self-contained. */
const noFs: FS = {
  exists: () => Promise.resolve(false),
  existsSync: () => false,
  readFile: (f) => Promise.reject(new Error(`templates cannot read files (${f})`)),
  readFileSync: (f) => {
    throw new Error(`templates cannot read files (${f})`);
  },
  resolve: (_dir, file) => file,
};

const engine = new Liquid({
  strictVariables: true,
  strictFilters: true,
  ownPropertyOnly: true,
  fs: noFs,
  root: [],
  partials: [],
  layouts: [],
  relativeReference: false,
  cache: false,
  // DoS bounds: a script is at most a few hundred KiB; rendering is per machine and must stay cheap.
  parseLimit: 1_000_000,
  renderLimit: 2_000,
  memoryLimit: 50_000_000,
});
// Tags that load other templates from disk are removed, so using one is a parse error with a position.
for (const tag of ['include', 'render', 'layout']) delete engine.tags[tag];

/** Quotes a value for POSIX shells: `{{ greeting | shellquote }}` → `'it'\''s'`. */
engine.registerFilter('shellquote', (v: unknown) => `'${String(v ?? '').replace(/'/g, `'\\''`)}'`);

function toTemplateError(e: unknown): TemplateError {
  if (e instanceof TemplateError) return e;
  if (LiquidError.is(e)) {
    const [line = 1, col = 1] = e.token ? e.token.getPosition() : [];
    // liquidjs appends ", line:X, col:Y" to its messages; the position lives in our fields instead.
    let message = (e.originalError?.message ?? e.message).replace(/, (file:.*?, )?line:\d+, col:\d+$/, '');
    if (/^tag "(include|render|layout)" not found/.test(message)) {
      message = message.replace('not found', 'is not available: templates cannot load other files');
    }
    return new TemplateError(message, line, col);
  }
  return new TemplateError(e instanceof Error ? e.message : String(e), 1, 1);
}

/** Parsed templates by source text, least recently used first; the engine renders one script for many machines. */
const CACHE_MAX = 500;
const cache = new Map<string, Template[]>();

/** Parses (or takes from the cache) a template; throws TemplateError on a syntax error. */
export function parseTemplate(source: string): Template[] {
  const hit = cache.get(source);
  if (hit) {
    cache.delete(source);
    cache.set(source, hit);
    return hit;
  }
  let tpl: Template[];
  try {
    tpl = engine.parse(source);
  } catch (e) {
    throw toTemplateError(e);
  }
  cache.set(source, tpl);
  if (cache.size > CACHE_MAX) cache.delete(cache.keys().next().value as string);
  return tpl;
}

/** Renders `source` with `vars`; throws TemplateError for syntax errors, missing variables, unknown filters. */
export function renderTemplate(source: string, vars: Record<string, unknown>): string {
  const tpl = parseTemplate(source);
  try {
    return String(engine.renderSync(tpl, vars));
  } catch (e) {
    throw toTemplateError(e);
  }
}

export interface VariableUse {
  /** The top-level name, e.g. `machine`. */
  name: string;
  /** The full access path, e.g. `['machine', 'name']` (non-literal segments omitted). */
  path: string[];
  line: number;
  col: number;
}

/** Every read of a global variable (not assigned, captured or a loop variable), in source order. */
export function templateVariableUses(source: string): VariableUse[] {
  let analysis;
  try {
    analysis = engine.analyzeSync(parseTemplate(source), { partials: false });
  } catch (e) {
    throw toTemplateError(e);
  }
  const uses: VariableUse[] = [];
  for (const [name, vars] of Object.entries(analysis.globals)) {
    for (const v of vars) {
      const path: string[] = [];
      // Stop at a computed segment (`a[b]`): what follows it is not a static path any more.
      for (const s of v.segments) {
        if (typeof s === 'object') break;
        path.push(String(s));
      }
      uses.push({ name, path, line: v.location.row, col: v.location.col });
    }
  }
  return uses.sort((a, b) => a.line - b.line || a.col - b.col);
}

/** The top-level variable names a template reads, sorted. */
export function templateVariables(source: string): string[] {
  return [...new Set(templateVariableUses(source).map((u) => u.name))].sort();
}
