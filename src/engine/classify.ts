/**
 * Classification: the rules of the endpoint's classifiers (content kind `classifiers`, model/content.ts)
 * matched against a machine's facts, first match wins, with reasons that name each selector and the fact
 * value it saw. Pure functions; the engine applies the result (Engine.classifyMachine) through its one
 * commit path.
 *
 * Order: every classifier in use (from each pack's running version and the local ones) sorted by its
 * `order` (default 100, lowest first), then by classifier name; within a classifier, its rules in file
 * order. Classifier names are unique per endpoint, so the order never depends on install order.
 */
import { DEFAULT_CLASSIFIER_ORDER, LOCAL_LAYER, type ClassifierRuleDef, type ContentSet } from '../model/content.js';
import { explainFactTerm, parseFactTerm, type FactTerm } from '../model/factselect.js';
import type { Facts } from '../model/facts.js';
import { TaktError } from '../model/errors.js';
import type { Machine } from '../model/machine.js';

/** Where a rule comes from: the layer (pack name or `local`), its version, the classifier and the rule's name. */
export interface RuleRef {
  pack: string;
  version: string | null;
  classifier: string;
  name: string;
}

/** One rule in classification order, with where it comes from. */
export interface OrderedRule {
  ref: RuleRef;
  def: ClassifierRuleDef;
}

/** A match: the rule and, per selector, why it held. No match: why the nearest rules failed (at most 3). */
export type ClassifyResult = { rule: RuleRef; def: ClassifierRuleDef; reasons: string[] } | { rule: null; reasons: string[] };

/** How many of the nearest failing rules a no-match explains. */
export const NEAREST_RULES = 3;

/**
 * Every rule of `content`'s classifiers in classification order. `version(layer)` gives the version a
 * pack runs (null for local objects).
 */
export function orderedRules(content: ContentSet, version: (layer: string) => string | null): OrderedRule[] {
  const classifiers = [...content.objects.classifiers.entries()].sort(([a, x], [b, y]) => (x.def.order ?? DEFAULT_CLASSIFIER_ORDER) - (y.def.order ?? DEFAULT_CLASSIFIER_ORDER) || (a < b ? -1 : a > b ? 1 : 0));
  return classifiers.flatMap(([name, { def, layer }]) =>
    def.rules.map((rule) => ({ ref: { pack: layer, version: layer === LOCAL_LAYER ? null : version(layer), classifier: name, name: rule.name }, def: rule })),
  );
}

/** Parsed selectors per rule object (content objects are immutable once loaded). */
const parsed = new WeakMap<object, FactTerm[] | string>();

function termsOf(rule: ClassifierRuleDef): FactTerm[] | string {
  let t = parsed.get(rule);
  if (t === undefined) {
    try {
      t = (rule.match ?? []).map((x) => parseFactTerm(x));
    } catch (e) {
      if (!(e instanceof TaktError)) throw e;
      // Lint refuses such a rule; one that got past it anyway never matches, and says why.
      t = e.message;
    }
    parsed.set(rule, t);
  }
  return t;
}

/** `big-vms (classifier site, pack site@1.2.0)`: a rule as reasons name it. */
export function ruleText(r: RuleRef): string {
  return `${r.name} (classifier ${r.classifier}, ${r.pack === LOCAL_LAYER ? 'local' : `pack ${r.pack}@${r.version ?? '?'}`})`;
}

/**
 * The first rule whose selectors all hold for `facts`, with one reason per selector; a rule without
 * selectors matches every machine ("matches every machine"). Without a match, the reasons say why the
 * nearest rules (fewest failing selectors, then in order) failed, each failing selector with the value it saw.
 */
export function classify(facts: Facts | null, rules: readonly OrderedRule[]): ClassifyResult {
  if (rules.length === 0) return { rule: null, reasons: ['no classification rules are installed (a pack\'s classifiers/ directory, or `takt classifiers apply`)'] };
  const misses: Array<{ index: number; rule: OrderedRule; failed: string[] }> = [];
  for (const [index, rule] of rules.entries()) {
    const terms = termsOf(rule.def);
    if (typeof terms === 'string') {
      misses.push({ index, rule, failed: [terms] });
      continue;
    }
    if (terms.length === 0) return { rule: rule.ref, def: rule.def, reasons: ['matches every machine (no selectors)'] };
    const results = terms.map((t) => explainFactTerm(facts, t));
    const failed = results.filter((r) => !r.ok).map((r) => r.reason);
    if (failed.length === 0) return { rule: rule.ref, def: rule.def, reasons: results.map((r) => r.reason) };
    misses.push({ index, rule, failed });
  }
  const nearest = misses.sort((a, b) => a.failed.length - b.failed.length || a.index - b.index).slice(0, NEAREST_RULES);
  const head = facts === null ? ['the machine has reported no facts'] : [];
  return {
    rule: null,
    reasons: [...head, `no rule matched (${rules.length} tried); nearest:`, ...nearest.map((m) => `${ruleText(m.rule.ref)}: ${m.failed.join('; ')}`)],
  };
}

/** What applying a rule changes on a machine: a MachinePatch part and the record of what it gave. */
export interface ClassificationChange {
  patch: { profiles?: string[]; environment?: string; pipeline?: string; params?: Record<string, unknown> };
  gave: { profiles: string[]; environment: string | null; pipeline: string | null; params: string[] };
}

/**
 * The change a rule makes to `m`: its profiles added after the machine's own (the machine's keep their
 * precedence; one it already lists stays where it is), its environment and pipeline set, and its params
 * set where the machine has no value of its own (an operator's value is never overwritten). Only what
 * differs is in the patch; a pipeline the machine already has is left as it is (not restarted).
 */
export function classificationChange(m: Pick<Machine, 'profiles' | 'environment' | 'pipeline' | 'params'>, rule: ClassifierRuleDef): ClassificationChange {
  const patch: ClassificationChange['patch'] = {};
  const added = (rule.profiles ?? []).filter((p) => !m.profiles.includes(p));
  if (added.length) patch.profiles = [...m.profiles, ...added];
  if (rule.environment !== undefined && rule.environment !== m.environment) patch.environment = rule.environment;
  if (rule.pipeline !== undefined && rule.pipeline !== m.pipeline) patch.pipeline = rule.pipeline;
  const params = Object.fromEntries(Object.entries(rule.params ?? {}).filter(([k]) => !Object.hasOwn(m.params, k)));
  if (Object.keys(params).length) patch.params = params;
  return {
    patch,
    gave: { profiles: added, environment: patch.environment ?? null, pipeline: patch.pipeline ?? null, params: Object.keys(params) },
  };
}

/** States in which a machine's pipeline is under way: classification does not replace it there without `force`. */
export const IN_PROGRESS_STATES: readonly Machine['state'][] = ['running', 'paused', 'stopped', 'awaiting-approval'];

/**
 * Refuses to replace a pipeline that is under way (running, paused, stopped or awaiting approval, or with
 * a job running) unless `force`: classification names what a machine should become; it must not cancel
 * work by surprise. A machine with no pipeline, an idle one, or one that is done is reassigned.
 * @throws TaktError conflict naming the machine, its pipeline and state, and the way out.
 */
export function assertReplaceable(m: Pick<Machine, 'name' | 'pipeline' | 'state' | 'currentJob'>, rule: RuleRef, pipeline: string, force: boolean): void {
  if (force || m.pipeline === null || m.pipeline === pipeline) return;
  if (!IN_PROGRESS_STATES.includes(m.state) && m.currentJob === null) return;
  throw new TaktError(
    'conflict',
    `machine '${m.name}' is ${m.state} in pipeline ${m.pipeline}; rule ${ruleText(rule)} would replace it with ${pipeline} and cancel that work. Wait until it is done, or classify with --force (API: force: true) to replace it now`,
    { path: '/pipeline', details: { machine: m.name, state: m.state, pipeline: m.pipeline, wanted: pipeline } },
  );
}
