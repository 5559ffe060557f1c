/**
 * The one template renderer in takt (task scripts, boot files). Liquid, configured so a template cannot
 * run code, read files or reach prototype properties, and fails on any missing variable or filter:
 * a script that would silently render `rm -rf /` from an empty variable must not run at all.
 *
 * Scope contract (the engine builds it): every param the task declares, by name at the top level
 * (`{{ greeting }}`), plus the reserved `machine` object `{ id, name, environment }` and the machine's
 * observed `facts` (model/facts.ts; `{}` until its agent reports them). A declared optional
 * param that has no value is passed as `null` (renders empty; `{% if x %}` / `| default:` work), so only
 * names the task never declared are "undefined".
 */
import { Context, Drop, Liquid, LiquidError, toValue, toValueSync, type Emitter, type FS, type Scope, type Template } from 'liquidjs';

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

/**
 * Bounds on the work one template may do, so no render holds the endpoint's event loop for long (renders
 * run synchronously on it). `renderMs` is wall time, checked between template nodes; `memory` counts
 * liquidjs allocations (range elements, filter string lengths), so a loop over a literal range is
 * refused deterministically whatever the machine's speed; `outputBytes` caps the script produced.
 * `renderMs` is 1000: an honest template renders in well under a millisecond, and a busy endpoint's pauses
 * (GC, a preempted process) must not fail it — at 200 ms, an honest render failed on a host at load 12
 * (serve-replicas, 2026-12-02); a hostile one holds the loop at most this long per render, and the
 * `memory` bound stops most before it.
 */
export const TEMPLATE_LIMITS = {
  /** Characters of template source. */
  parseChars: 1_000_000,
  renderMs: 1000,
  memory: 10_000_000,
  outputBytes: 4 * 1024 * 1024,
  /** Lint: the most times nested loops over literal ranges may run (about what renders well within renderMs). */
  staticLoopSteps: 10_000,
} as const;

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
  parseLimit: TEMPLATE_LIMITS.parseChars,
  renderLimit: TEMPLATE_LIMITS.renderMs,
  memoryLimit: TEMPLATE_LIMITS.memory,
});

/** Properties liquidjs invents on any object, array or string (`x.size` = key count) unless it has them. */
const INVENTED = new Set(['size', 'first', 'last']);

/**
 * Field access means field access: `{{ disk.size }}` reads the field `size` of `disk`, and fails (strict
 * variables) when there is none, instead of liquidjs's key count. Size, first and last are filters
 * (`| size`, `| first`, `| last`). Drops (forloop.first/last, …) are liquidjs's own objects and keep theirs.
 */
class FieldContext extends Context {
  override readProperty(obj: Scope, key: Parameters<Context['readProperty']>[1]): unknown {
    const k = key instanceof Drop ? key.valueOf() : key;
    if (typeof k === 'string' && INVENTED.has(k) && obj !== null && obj !== undefined && !(obj instanceof Drop)) {
      const own = typeof obj === 'object' && Object.prototype.hasOwnProperty.call(obj, k);
      if (!own) throw new Error(`${describeValue(obj)} has no field '${k}'; use the filter instead: | ${k}`);
    }
    return super.readProperty(obj, key);
  }
}

const outputTooLarge = () => `the rendered script would be larger than ${TEMPLATE_LIMITS.outputBytes / 1024 / 1024} MiB (the limit)`;

/**
 * liquidjs's string emitter with a size cap, checked as output is written: a loop that prints a large
 * value many times stops at the cap instead of building hundreds of megabytes first.
 */
class BoundedEmitter implements Emitter {
  buffer = '';

  write(html: unknown): void {
    const s = emitted(html);
    // UTF-16 units undercount bytes at most 3x; the exact byte count is checked once at the end.
    if (this.buffer.length + s.length > TEMPLATE_LIMITS.outputBytes) throw new Error(outputTooLarge());
    this.buffer += s;
  }
}

/** What liquidjs's own emitter writes for a value: strings as they are, lists joined, nothing for nil. */
function emitted(v: unknown): string {
  const x: unknown = toValue(v);
  if (typeof x === 'string') return x;
  if (x === null || x === undefined) return '';
  if (Array.isArray(x)) return x.map(emitted).join('');
  return String(x);
}

function describeValue(v: unknown): string {
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return `a ${typeof v}`;
}

// Tags that load other templates from disk are removed, so using one is a parse error with a position.
for (const tag of ['include', 'render', 'layout']) delete engine.tags[tag];

/** `| size` counts a list's items, a string's characters and a mapping's keys (liquidjs says 0 for a mapping). */
engine.registerFilter('size', (v: unknown) => {
  if (typeof v === 'string' || Array.isArray(v)) return v.length;
  if (typeof v === 'object' && v !== null && !(v instanceof Drop)) return Object.keys(v).length;
  return 0;
});

/** Quotes a value for POSIX shells: `{{ greeting | shellquote }}` → `'it'\''s'`. */
engine.registerFilter('shellquote', (v: unknown) => `'${String(v ?? '').replace(/'/g, `'\\''`)}'`);

function toTemplateError(e: unknown): TemplateError {
  if (e instanceof TemplateError) return e;
  if (LiquidError.is(e)) {
    const [line = 1, col = 1] = e.token ? e.token.getPosition() : [];
    // liquidjs appends ", line:X, col:Y" to its messages; the position lives in our fields instead.
    let message = (e.originalError?.message ?? e.message).replace(/, (file:.*?, )?line:\d+, col:\d+$/, '');
    if (/^template render limit exceeded/.test(message)) {
      message = `the template took more than ${TEMPLATE_LIMITS.renderMs} ms to render (the limit); loop over less`;
    } else if (/^memory alloc limit exceeded/.test(message)) {
      message = `the template allocates too much (over ${TEMPLATE_LIMITS.memory} range items or characters, the limit); loop over less`;
    } else if (/^parse length limit exceeded/.test(message)) {
      message = `the template is longer than ${TEMPLATE_LIMITS.parseChars} characters (the limit)`;
    }
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

/**
 * Renders `source` with `vars`; throws TemplateError for syntax errors, missing variables and fields,
 * unknown filters, and work beyond TEMPLATE_LIMITS (time, allocations, output size).
 */
export function renderTemplate(source: string, vars: Record<string, unknown>): string {
  const tpl = parseTemplate(source);
  let out: string;
  try {
    const ctx = new FieldContext(vars, engine.options, { sync: true }, { liquid: engine });
    out = String(toValueSync(engine.renderer.renderTemplates(tpl, ctx, new BoundedEmitter())));
  } catch (e) {
    throw toTemplateError(e);
  }
  if (Buffer.byteLength(out) > TEMPLATE_LIMITS.outputBytes) throw new TemplateError(outputTooLarge(), 1, 1);
  return out;
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

/** A place in a template that would loop more than TEMPLATE_LIMITS.staticLoopSteps times. */
export interface LoopProblem {
  message: string;
  line: number;
  col: number;
}

interface RangeLike {
  kind?: unknown;
  lhs?: { content?: unknown };
  rhs?: { content?: unknown };
}

/** The literal size of `for x in (a..b)`, or 1 when the collection is not a literal range. */
function literalRangeSize(collection: unknown): number {
  const r = collection as RangeLike | undefined;
  const lo = r?.lhs?.content;
  const hi = r?.rhs?.content;
  if (typeof lo !== 'number' || typeof hi !== 'number') return 1;
  return Math.max(0, hi - lo + 1);
}

/**
 * Loops over literal ranges whose nested product exceeds TEMPLATE_LIMITS.staticLoopSteps, found without
 * rendering (lint). Loops over param values cannot be sized here; the render limits catch those.
 * @throws TemplateError on a syntax error.
 */
export function templateLoopProblems(source: string): LoopProblem[] {
  const out: LoopProblem[] = [];
  const walk = (templates: unknown, outer: number): void => {
    if (!Array.isArray(templates)) return;
    for (const t of templates as Array<Record<string, unknown> & { token?: { getPosition(): number[] } }>) {
      let steps = outer;
      if (t.name === 'for' || t.name === 'tablerow') {
        steps = outer * literalRangeSize(t.collection);
        if (steps > TEMPLATE_LIMITS.staticLoopSteps && outer <= TEMPLATE_LIMITS.staticLoopSteps) {
          const [line = 1, col = 1] = t.token?.getPosition() ?? [];
          out.push({ line, col, message: `this loop would run ${steps} times; a template may loop at most ${TEMPLATE_LIMITS.staticLoopSteps} times` });
        }
      }
      walk(t.templates, steps);
      walk(t.elseTemplates, outer);
      if (Array.isArray(t.branches)) for (const b of t.branches as Array<{ templates?: unknown }>) walk(b.templates, outer);
    }
  };
  walk(parseTemplate(source), 1);
  return out;
}

/** The top-level variable names a template reads, sorted. */
export function templateVariables(source: string): string[] {
  return [...new Set(templateVariableUses(source).map((u) => u.name))].sort();
}
