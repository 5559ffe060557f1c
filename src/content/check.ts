/**
 * The semantic checks over content — references, param values against their schemas, include cycles,
 * templates, variants, environment coverage — written once, over a ContentSet, reporting field paths.
 * `lintPack` maps those paths to file:line:col; the API reports them as they are.
 *
 * The objects may not have passed schema validation (lint still checks the rest of a broken file), so
 * every access here is defensive: a field of the wrong type is skipped, never trusted.
 */
import { CONTENT_KINDS, isSecureParam, KIND_NOUN, type ContentKind, type ContentSet } from '../model/content.js';
import { isSealed } from '../model/secure.js';
import { LOCAL_BOOTENV } from '../model/boot.js';
import { DURATION_RANGES, parseDuration } from '../model/duration.js';
import { TaktError } from '../model/errors.js';
import { FACT_FIELDS, FACTS_VAR } from '../model/facts.js';
import { MACHINE_FIELDS, MACHINE_VAR, TemplateError, templateLoopProblems, templateVariableUses } from '../render/template.js';
import { BOOT_FIELDS, BOOT_VAR } from '../render/bootscript.js';
import { userRegexProblem } from '../model/regex.js';
import { ROLE_NAMES } from '../model/permissions.js';
import { formatFactTerm, parseFactTerm } from '../model/factselect.js';
import { metaSchemaProblems, schemaProblems } from './schema.js';
import { taskActionFor } from './variants.js';
import { encodePointer } from './yaml.js';

export interface Problem {
  kind: ContentKind;
  name: string;
  /** JSON pointer into the object, e.g. `/tasks/2`. */
  path: string;
  message: string;
  /** The offending node is the key at `path` (e.g. an unknown param name), not its value. */
  at?: 'key' | 'value';
  /** For template errors: the position inside the string at `path` (1-based). */
  template?: { line: number; col: number };
}

export interface ObjectRef {
  kind: ContentKind;
  name: string;
}

/**
 * Every semantic problem of the whole set, or only of the objects in `only` (each still resolved against
 * the whole set). The API calls this after applying a create/update to a copy of the endpoint's content.
 */
export function checkContentSet(
  set: ContentSet,
  only?: Iterable<ObjectRef>,
): Array<{ kind: ContentKind; name: string; path: string; message: string }> {
  const subjects = only ? [...only] : CONTENT_KINDS.flatMap((kind) => [...set.objects[kind].keys()].map((name) => ({ kind, name })));
  return checkObjects(set, subjects).map((p) => ({
    kind: p.kind,
    name: p.name,
    path: p.path,
    message: p.template ? `template line ${p.template.line}, col ${p.template.col}: ${p.message}` : p.message,
  }));
}

/** The problems of `subjects`, in subject order, each object's in field order. */
export function checkObjects(set: ContentSet, subjects: Iterable<ObjectRef>): Problem[] {
  const out: Problem[] = [];
  const cycles = new Set<string>();
  for (const { kind, name } of subjects) {
    const def = set.objects[kind].get(name)?.def as Record<string, unknown> | undefined;
    if (!def) continue;
    const ctx: Ctx = { set, kind, name, def, out, cycles };
    CHECKS[kind](ctx);
  }
  return out;
}

interface Ctx {
  set: ContentSet;
  kind: ContentKind;
  name: string;
  def: Record<string, unknown>;
  out: Problem[];
  /** Cycles already reported (by sorted member list), so a cycle of three profiles is reported once. */
  cycles: Set<string>;
}

function report(ctx: Ctx, path: string, message: string, extra: Partial<Problem> = {}): void {
  ctx.out.push({ kind: ctx.kind, name: ctx.name, path, message, ...extra });
}

const CHECKS: Record<ContentKind, (ctx: Ctx) => void> = {
  params: checkParam,
  profiles: (ctx) => {
    checkRefs(ctx, '/include', 'profiles');
    checkIncludeCycle(ctx);
    checkValues(ctx);
  },
  tasks: checkTask,
  stages: (ctx) => {
    checkRefs(ctx, '/tasks', 'tasks');
    checkValues(ctx);
    checkExpect(ctx);
    // Approvals are enforced by role (issue #16): a role no one can hold would leave the stage to admins only.
    const approval = record(ctx.def.approval);
    if (approval && typeof approval.role === 'string' && !ROLE_NAMES.includes(approval.role)) {
      const near = closest(approval.role, ROLE_NAMES);
      report(ctx, '/approval/role', `unknown role '${approval.role}': approvals are given by holders of a built-in role (${ROLE_NAMES.join(', ')}) or admins${near ? `; did you mean '${near}'?` : ''}`);
    }
    // `local` (boot from the machine's own disk) is built in: a stage after a deploy to disk names it.
    if (typeof ctx.def.bootenv === 'string' && ctx.def.bootenv !== LOCAL_BOOTENV && !ctx.set.objects.bootenvs.has(ctx.def.bootenv)) {
      report(ctx, '/bootenv', notFound(ctx.set, 'bootenvs', ctx.def.bootenv));
    }
  },
  pipelines: (ctx) => {
    checkRefs(ctx, '/stages', 'stages');
    checkValues(ctx);
    checkEnvironments(ctx);
  },
  blueprints: (ctx) => {
    checkRefs(ctx, '/tasks', 'tasks');
    checkValues(ctx);
  },
  bootenvs: checkBootenv,
  classifiers: checkClassifier,
};

// ---- helpers over untrusted shapes ----

function record(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

/** The string items of a list with their indexes (non-strings are schema errors, reported elsewhere). */
function strings(v: unknown): Array<[number, string]> {
  if (!Array.isArray(v)) return [];
  return v.flatMap((x, i): Array<[number, string]> => (typeof x === 'string' ? [[i, x]] : []));
}

function field(def: Record<string, unknown>, pointer: string): unknown {
  let v: unknown = def;
  for (const seg of pointer.split('/').slice(1)) v = record(v)?.[seg];
  return v;
}

function notFound(set: ContentSet, kind: ContentKind, name: string): string {
  const hint = closest(name, [...set.objects[kind].keys()]);
  return `${KIND_NOUN[kind]} '${name}' not found${hint ? ` (did you mean '${hint}'?)` : ''}`;
}

/** The most similar known name within edit distance 2, for "did you mean". */
export function closest(name: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const c of candidates) {
    const d = editDistance(name, c, bestD);
    if (d < bestD) [best, bestD] = [c, d];
  }
  return best;
}

function editDistance(a: string, b: string, limit: number): number {
  if (Math.abs(a.length - b.length) >= limit) return limit;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

// ---- the checks ----

function checkRefs(ctx: Ctx, pointer: string, target: ContentKind): void {
  for (const [i, ref] of strings(field(ctx.def, pointer))) {
    if (!ctx.set.objects[target].has(ref)) report(ctx, `${pointer}/${i}`, notFound(ctx.set, target, ref));
  }
}

/** Param values (profile, stage, pipeline, blueprint `params`): each names a defined param and fits its schema. */
function checkValues(ctx: Ctx, at: string[] = [], raw: unknown = ctx.def.params): void {
  const values = record(raw);
  if (!values) return;
  for (const [key, value] of Object.entries(values)) {
    const path = encodePointer([...at, 'params', key]);
    const def = ctx.set.objects.params.get(key)?.def;
    if (!def) {
      report(ctx, path, notFound(ctx.set, 'params', key), { at: 'key' });
      continue;
    }
    const schema = usableSchema(def.schema);
    // Sealed (encrypted) values cannot be inspected; they were checked before they were sealed.
    if (!schema || isSealed(value)) continue;
    for (const p of schemaProblems(schema, value)) report(ctx, path + p.path, `param '${key}': ${def.secure === true ? withoutValue(p.message) : p.message}`, { at: p.at });
  }
}

/** Whether each param schema object is valid, so checking many values against one schema checks it once. */
const schemaValidity = new WeakMap<object, boolean>();

/** A param schema that compiles, or undefined (an invalid one is reported on the param itself). */
function usableSchema(schema: unknown): object | undefined {
  const s = record(schema);
  if (!s) return undefined;
  let ok = schemaValidity.get(s);
  if (ok === undefined) {
    ok = s.$id === undefined && metaSchemaProblems(s).length === 0;
    schemaValidity.set(s, ok);
  }
  return ok ? s : undefined;
}

/**
 * A schema message without the offending value: problems with a secure param's value say what is wrong
 * and where, never the value (lint output and API errors end up in terminals, CI logs and tickets).
 */
export function withoutValue(message: string): string {
  return `${message.replace(/\s*\(got [\s\S]*\)\s*$/, '')} (secure value, not shown)`;
}

function checkParam(ctx: Ctx): void {
  if (ctx.name === MACHINE_VAR) {
    report(ctx, '/name', `'${MACHINE_VAR}' is reserved for the machine object in templates; choose another param name`);
  }
  if (ctx.name === FACTS_VAR) {
    report(ctx, '/name', `'${FACTS_VAR}' is reserved for the machine's observed facts in templates; choose another param name`);
  }
  const schema = record(ctx.def.schema);
  if (!schema) return;
  if (schema.$id !== undefined) {
    // Param schemas share one Ajv instance; an $id would collide across updates and packs.
    report(ctx, '/schema/$id', 'param schemas may not set $id');
    return;
  }
  const problems = metaSchemaProblems(schema);
  for (const p of problems) report(ctx, '/schema' + p.path, `invalid JSON Schema: ${p.message}`, { at: p.at });
  // A secure param's default is sealed at rest: it was checked before it was sealed.
  if (problems.length === 0 && 'default' in schema && !isSealed(schema.default)) {
    for (const p of schemaProblems(schema, schema.default)) {
      report(ctx, '/schema/default' + p.path, `default does not match the schema: ${ctx.def.secure === true ? withoutValue(p.message) : p.message}`, { at: p.at });
    }
  }
}

function checkIncludeCycle(ctx: Ctx): void {
  const profiles = ctx.set.objects.profiles;
  const includes = (name: string): Array<[number, string]> => strings(profiles.get(name)?.def.include);
  // Breadth-first from each include of this profile back to it: the shortest cycle through it.
  for (const [i, first] of includes(ctx.name)) {
    const parent = new Map<string, string>([[first, ctx.name]]);
    const queue = [first];
    let found = false;
    while (queue.length > 0 && !found) {
      const cur = queue.shift()!;
      if (cur === ctx.name) {
        found = true;
        break;
      }
      for (const [, next] of includes(cur)) {
        if (!parent.has(next)) {
          parent.set(next, cur);
          queue.push(next);
        }
      }
    }
    if (!found) continue;
    const chain = [ctx.name];
    for (let n = parent.get(ctx.name); n !== undefined && n !== ctx.name; n = parent.get(n)) chain.unshift(n);
    chain.unshift(ctx.name);
    const key = [...new Set(chain)].sort().join(',');
    if (ctx.cycles.has(key)) continue;
    ctx.cycles.add(key);
    report(ctx, `/include/${i}`, `include cycle: ${chain.join(' -> ')}`);
  }
}

/** The params a task or bootenv declares (`params.required` + `params.optional`); unknown ones reported. */
function declaredParams(ctx: Ctx): Set<string> {
  const declared = new Set<string>();
  for (const list of ['required', 'optional'] as const) {
    for (const [i, p] of strings(record(ctx.def.params)?.[list])) {
      declared.add(p);
      if (!ctx.set.objects.params.has(p)) report(ctx, `/params/${list}/${i}`, notFound(ctx.set, 'params', p));
    }
  }
  return declared;
}

/**
 * A bootenv boots: it has a kernel or an iPXE script, each artifact comes from exactly one place, no two
 * artifacts are served under one name, and its templates use only what a boot render provides.
 */
function checkBootenv(ctx: Ctx): void {
  // Machines in `local` boot from their disk without a script: a pack's bootenv of that name would never be used.
  if (ctx.name === LOCAL_BOOTENV) report(ctx, '/name', `bootenv name '${LOCAL_BOOTENV}' is built in (boot from the machine's own disk) and cannot be defined by a pack; choose another name`);
  const declared = declaredParams(ctx);
  if (declared.has(BOOT_VAR)) report(ctx, '/params', `'${BOOT_VAR}' is reserved for the boot URLs in bootenv templates; choose another param name`);
  // Boot scripts go to firmware without authentication (and iPXE has no HTTPS here): never a secret.
  for (const list of ['required', 'optional'] as const) {
    for (const [i, p] of strings(record(ctx.def.params)?.[list])) {
      if (isSecureParam(ctx.set, p)) {
        report(ctx, `/params/${list}/${i}`, `param '${p}' is secure: boot scripts are served to firmware without authentication, so a bootenv cannot use a secret (deliver it to the machine's agent in a task instead)`);
      }
    }
  }
  if (ctx.def.kernel === undefined && ctx.def.ipxe === undefined) {
    report(ctx, '', 'bootenv has neither a kernel nor an ipxe script: add `kernel:` (with initrds and cmdline), or `ipxe:` (e.g. `exit` to boot from disk)');
  }
  if (ctx.def.kernel === undefined && (ctx.def.initrds !== undefined || ctx.def.cmdline !== undefined)) {
    report(ctx, ctx.def.initrds !== undefined ? '/initrds' : '/cmdline', 'initrds and cmdline need a kernel: add `kernel:`', { at: 'key' });
  }
  const artifacts: Array<[string, Record<string, unknown>]> = [];
  const k = record(ctx.def.kernel);
  if (k) artifacts.push(['/kernel', k]);
  for (const list of ['initrds', 'files'] as const) {
    const items = ctx.def[list];
    if (Array.isArray(items)) items.forEach((a, i) => record(a) && artifacts.push([`/${list}/${i}`, record(a)!]));
  }
  const byName = new Map<string, string>();
  for (const [path, a] of artifacts) {
    if ((a.url === undefined) === (a.path === undefined)) {
      report(ctx, path, a.url === undefined ? 'give the file a `url:` (http, https, file) or a `path:` on the endpoint host' : 'give either `url:` or `path:`, not both');
    }
    if (typeof a.name !== 'string') continue;
    const first = byName.get(a.name);
    if (first !== undefined) report(ctx, `${path}/name`, `'${a.name}' is also the name of ${first}; each file is served under its own name`);
    else byName.set(a.name, path.slice(1));
  }
  for (const field of ['cmdline', 'ipxe'] as const) {
    if (typeof ctx.def[field] === 'string') checkTemplate(ctx, `/${field}`, ctx.def[field] as string, declared, { boot: true });
  }
  if (typeof ctx.def.ipxe === 'string' && !/^#!ipxe\b/.test(ctx.def.ipxe)) {
    report(ctx, '/ipxe', 'an iPXE script starts with `#!ipxe` on its first line');
  }
}

function checkTask(ctx: Ctx): void {
  const declared = declaredParams(ctx);

  const templates: Array<[string, string]> = [];
  if (typeof ctx.def.script === 'string') templates.push(['/script', ctx.def.script]);
  const variants = record(ctx.def.variants);
  if (ctx.def.script === undefined && (!variants || Object.keys(variants).length === 0)) {
    report(ctx, '', 'task has neither a script nor variants: add `script:` (or `variants:` per environment)');
  }
  for (const [env, raw] of Object.entries(variants ?? {})) {
    const v = record(raw);
    if (!v) continue;
    const path = encodePointer(['variants', env]);
    if (v.script !== undefined && v.noop !== undefined) {
      report(ctx, path, `variant '${env}' has both a script and a noop; keep one`, { at: 'key' });
    } else if (v.script === undefined && v.noop === undefined) {
      report(ctx, path, `variant '${env}' needs a script, or a noop that says why the task does nothing there`, { at: 'key' });
    }
    if (typeof v.script === 'string') templates.push([`${path}/script`, v.script]);
  }

  for (const [path, source] of templates) checkTemplate(ctx, path, source, declared);
  checkTimeout(ctx);
  for (const [name, schema] of Object.entries(record(ctx.def.outputs) ?? {})) checkSchema(ctx, encodePointer(['outputs', name]), schema);
  checkExpect(ctx);
}

/**
 * Expectation rules (task post-conditions, stage preconditions) run on the endpoint when a machine
 * reports: a `matches` pattern must compile on RE2 and a `schema` must be a valid JSON Schema, checked
 * here so nothing reaches the engine that would be refused or run there unchecked.
 */
function checkExpect(ctx: Ctx): void {
  const rules = ctx.def.expect;
  if (!Array.isArray(rules)) return;
  rules.forEach((raw, i) => {
    const rule = record(raw);
    if (!rule) return;
    if (typeof rule.matches === 'string') {
      const problem = userRegexProblem(rule.matches);
      if (problem) report(ctx, `/expect/${i}/matches`, problem);
    }
    if (rule.schema !== undefined) checkSchema(ctx, `/expect/${i}/schema`, rule.schema);
  });
}

/** A JSON Schema in content other than a param's (task outputs, expectation schemas): valid, patterns on RE2. */
function checkSchema(ctx: Ctx, path: string, raw: unknown): void {
  const schema = record(raw);
  if (!schema) return;
  if (schema.$id !== undefined) {
    // Schemas share one Ajv instance; an $id would collide across updates and packs.
    report(ctx, `${path}/$id`, 'schemas in content may not set $id');
    return;
  }
  for (const p of metaSchemaProblems(schema)) report(ctx, path + p.path, `invalid JSON Schema: ${p.message}`, { at: p.at });
}

/** A timeout lint accepts works as written: within the range the agent's timer can hold, and not 0. */
function checkTimeout(ctx: Ctx): void {
  const t = ctx.def.timeout;
  if (typeof t !== 'string' && typeof t !== 'number') return;
  try {
    parseDuration(t, 'timeout', DURATION_RANGES.taskTimeout);
  } catch (e) {
    if (!(e instanceof TaktError)) throw e;
    report(ctx, '/timeout', e.message);
  }
}

/**
 * Field access the renderer will refuse, known from the param's schema: a field of a string, number,
 * boolean or list (`{{ disk.size }}` on a string; sizes are the `| size` filter), or a field a closed
 * mapping does not have.
 */
function fieldAccessProblem(schema: unknown, name: string, path: string[]): string | undefined {
  let node = record(schema);
  let at = name;
  for (const seg of path) {
    if (!node) return undefined;
    const type = node.type;
    if (type === 'object') {
      const props = record(node.properties);
      if (props && seg in props) node = record(props[seg]);
      else if (node.additionalProperties === false && !node.patternProperties) return `'${at}' has no field '${seg}'${filterHint(seg)}`;
      else return undefined;
    } else if (type === 'array') {
      if (!/^\d+$/.test(seg)) return `'${at}' is a list: it has no field '${seg}' (use an index, e.g. ${at}[0]${filterHint(seg, ' or')})`;
      node = record(node.items);
    } else if (typeof type === 'string' && ['string', 'number', 'integer', 'boolean', 'null'].includes(type)) {
      return `'${at}' is ${type === 'integer' ? 'an' : 'a'} ${type}: it has no field '${seg}'${filterHint(seg)}`;
    } else return undefined;
    at = `${at}.${seg}`;
  }
  return undefined;
}

function filterHint(seg: string, join = ';'): string {
  return ['size', 'first', 'last'].includes(seg) ? `${join} use the filter: | ${seg}` : '';
}

function checkTemplate(ctx: Ctx, path: string, source: string, declared: Set<string>, opts: { boot?: boolean } = {}): void {
  let uses;
  try {
    uses = templateVariableUses(source);
  } catch (e) {
    if (!(e instanceof TemplateError)) throw e;
    report(ctx, path, `template: ${e.message}`, { template: { line: e.line, col: e.col } });
    return;
  }
  const reported = new Set<string>();
  for (const u of uses) {
    const template = { line: u.line, col: u.col };
    if (u.name === MACHINE_VAR) {
      const f = u.path[1];
      if (f !== undefined && !(MACHINE_FIELDS as readonly string[]).includes(f) && !reported.has(`machine.${f}`)) {
        reported.add(`machine.${f}`);
        report(ctx, path, `template: machine has no field '${f}' (it has ${MACHINE_FIELDS.join(', ')})${filterHint(f)}`, { template });
      } else if (f !== undefined && u.path.length > 2 && !reported.has(u.path.join('.'))) {
        // machine.id, .name and .environment are strings: nothing below them.
        reported.add(u.path.join('.'));
        report(ctx, path, `template: 'machine.${f}' is a string: it has no field '${u.path[2]}'${filterHint(u.path[2]!)}`, { template });
      }
    } else if (u.name === FACTS_VAR) {
      // Facts are observed, so whether a machine has one is known only when it runs (strict: a missing
      // fact fails the render there); here only the top-level field can be checked.
      const f = u.path[1];
      if (f !== undefined && f !== 'observedAt' && !FACT_FIELDS.includes(f) && !reported.has(`facts.${f}`)) {
        reported.add(`facts.${f}`);
        report(ctx, path, `template: facts has no field '${f}' (it has ${FACT_FIELDS.join(', ')}, observedAt)${filterHint(f)}`, { template });
      }
    } else if (opts.boot && u.name === BOOT_VAR) {
      const f = u.path[1];
      if (f !== undefined && !(BOOT_FIELDS as readonly string[]).includes(f) && !reported.has(`boot.${f}`)) {
        reported.add(`boot.${f}`);
        report(ctx, path, `template: boot has no field '${f}' (it has ${BOOT_FIELDS.join(', ')})`, { template });
      } else if (f === 'cmdline' && path === '/cmdline' && !reported.has('boot.cmdline')) {
        reported.add('boot.cmdline');
        report(ctx, path, 'template: the command line cannot use boot.cmdline (it is what is being rendered)', { template });
      }
    } else if (!declared.has(u.name) && !reported.has(u.name)) {
      reported.add(u.name);
      report(ctx, path, `template uses '${u.name}', which the ${KIND_NOUN[ctx.kind]} does not declare in params.required or params.optional`, {
        template,
      });
    } else if (declared.has(u.name) && u.path.length > 1) {
      const problem = fieldAccessProblem(ctx.set.objects.params.get(u.name)?.def.schema, u.name, u.path.slice(1));
      if (problem && !reported.has(`${u.path.join('.')}`)) {
        reported.add(u.path.join('.'));
        report(ctx, path, `template: ${problem}`, { template });
      }
    }
  }
  for (const p of templateLoopProblems(source)) report(ctx, path, `template: ${p.message}`, { template: { line: p.line, col: p.col } });
}

/** Principle 1: a pipeline that claims an environment must say, in every task, what happens there. */
function checkEnvironments(ctx: Ctx): void {
  const envs = strings(ctx.def.environments);
  if (envs.length === 0) return;
  const { stages, tasks } = ctx.set.objects;
  for (const [i, env] of envs) {
    const missing: string[] = [];
    for (const [, stageName] of strings(ctx.def.stages)) {
      for (const [, taskName] of strings(stages.get(stageName)?.def.tasks)) {
        const task = tasks.get(taskName)?.def;
        if (task && !taskActionFor(task, env) && !missing.includes(taskName)) missing.push(taskName);
      }
    }
    for (const t of missing) {
      report(
        ctx,
        `/environments/${i}`,
        `task '${t}' has no script for environment '${env}': give it a default script or a '${env}' variant (a noop with a reason if it does not apply)`,
      );
    }
  }
}

/**
 * A classifier's rules: each selector parses and names a known fact, the profiles and pipeline it gives
 * exist, its params are declared and fit their schemas, its environment is one its pipeline runs in, rule
 * names are unique, it gives something, and no rule is unreachable behind an earlier one of the same
 * classifier whose selectors are a subset of its own (an empty `match` takes every machine).
 */
function checkClassifier(ctx: Ctx): void {
  const rules = ctx.def.rules;
  if (!Array.isArray(rules)) return;
  const seen = new Map<string, number>();
  const earlier: Array<{ index: number; name: string; terms: Set<string> | null }> = [];
  rules.forEach((raw, i) => {
    const rule = record(raw);
    if (!rule) return;
    const at = `/rules/${i}`;
    if (typeof rule.name === 'string') {
      const first = seen.get(rule.name);
      if (first !== undefined) report(ctx, `${at}/name`, `rule '${rule.name}' is also the name of rule ${first + 1}; rule names are unique within a classifier`);
      else seen.set(rule.name, i);
    }
    let terms: Set<string> | null = new Set();
    for (const [j, text] of strings(rule.match)) {
      try {
        terms?.add(formatFactTerm(parseFactTerm(text)));
      } catch (e) {
        if (!(e instanceof TaktError)) throw e;
        report(ctx, `${at}/match/${j}`, e.message);
        terms = null;
      }
    }
    if (rule.profiles === undefined && rule.environment === undefined && rule.pipeline === undefined && rule.params === undefined) {
      report(ctx, at, 'the rule gives nothing: add profiles, environment, pipeline or params', { at: 'value' });
    }
    for (const [j, p] of strings(rule.profiles)) if (!ctx.set.objects.profiles.has(p)) report(ctx, `${at}/profiles/${j}`, notFound(ctx.set, 'profiles', p));
    const pipeline = typeof rule.pipeline === 'string' ? rule.pipeline : undefined;
    if (pipeline !== undefined && !ctx.set.objects.pipelines.has(pipeline)) report(ctx, `${at}/pipeline`, notFound(ctx.set, 'pipelines', pipeline));
    const envs = pipeline ? ctx.set.objects.pipelines.get(pipeline)?.def.environments : undefined;
    if (envs && typeof rule.environment === 'string' && !envs.includes(rule.environment)) {
      report(ctx, `${at}/environment`, `pipeline '${pipeline}' does not run in environment '${rule.environment}'; it runs in: ${envs.join(', ')}`);
    }
    checkValues(ctx, ['rules', String(i)], rule.params);
    // Pack files are sealed at their objects' top-level `params` only (engine/sealing.ts): a secret here
    // would be stored in the clear. A profile the rule gives carries it sealed instead.
    for (const key of Object.keys(record(rule.params) ?? {})) {
      if (isSecureParam(ctx.set, key)) {
        report(ctx, encodePointer(['rules', String(i), 'params', key]), `param '${key}' is secure: a classification rule cannot set a secret; set it in a profile and give the rule that profile`, { at: 'key' });
      }
    }
    if (terms) {
      const shadow = earlier.find((e) => e.terms && [...e.terms].every((t) => terms!.has(t)));
      if (shadow) {
        const why = shadow.terms!.size === 0 ? 'matches every machine' : `matches every machine this one does (its selectors are a subset: ${[...shadow.terms!].join(', ')})`;
        report(ctx, `${at}/name`, `rule '${typeof rule.name === 'string' ? rule.name : i + 1}' can never match: rule '${shadow.name}' before it ${why}, and the first match wins; move this rule up or remove it`);
      }
    }
    earlier.push({ index: i, name: typeof rule.name === 'string' ? rule.name : String(i + 1), terms });
  });
}
