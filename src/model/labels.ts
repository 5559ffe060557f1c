/**
 * Machine labels and label selectors: the operator's own key=value tags (`role=web`, `env=prod`), part of
 * a machine's desired state, and the `-l` selectors that pick machines by them for lists, waits, drains,
 * rollouts and ad-hoc runs.
 *
 * Syntax and limits follow Kubernetes' labels and equality-based selectors
 * (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/), so operators can reuse
 * what they know: keys are `[prefix/]name`, values up to 63 characters, and a selector is a comma-separated
 * list of terms that must all hold. Set-based terms (`in`, `notin`) are not supported yet.
 */
import { TaktError } from './errors.js';

export type Labels = Record<string, string>;

/** One term of a selector: `k=v` / `k==v` (eq), `k!=v` (ne: also true when the key is absent), `k`, `!k`. */
export type LabelTerm = { key: string; op: 'eq' | 'ne'; value: string } | { key: string; op: 'exists' | 'absent' };

/** All terms must hold. An empty selector matches every machine. */
export type LabelSelector = LabelTerm[];

/** At most this many labels on one machine. */
export const MAX_LABELS = 64;

const NAME = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;
const PREFIX = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

/** Why `key` is not a label key, or null when it is. */
export function labelKeyProblem(key: string): string | null {
  const slash = key.indexOf('/');
  const prefix = slash < 0 ? null : key.slice(0, slash);
  const name = slash < 0 ? key : key.slice(slash + 1);
  if (prefix !== null && (prefix.length > 253 || !PREFIX.test(prefix))) return `label key '${key}': the prefix before '/' must be a DNS subdomain (e.g. example.com/role)`;
  if (!NAME.test(name)) return `label key '${key}' must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit`;
  return null;
}

/** Why `value` is not a label value, or null when it is (the empty value is allowed). */
export function labelValueProblem(key: string, value: string): string | null {
  if (value === '' || NAME.test(value)) return null;
  return `label value '${value}' for '${key}' must be empty or 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit`;
}

/**
 * Checks a whole label map (API bodies, imports).
 * @throws TaktError 'invalid' naming the first bad key or value, with a JSON-pointer path under `path`.
 */
export function validateLabels(labels: Labels, path = '/labels'): void {
  const entries = Object.entries(labels);
  if (entries.length > MAX_LABELS) throw new TaktError('invalid', `a machine has at most ${MAX_LABELS} labels, not ${entries.length}`, { path });
  for (const [k, v] of entries) {
    const problem = labelKeyProblem(k) ?? (typeof v === 'string' ? labelValueProblem(k, v) : `label '${k}' must be a string`);
    if (problem) throw new TaktError('invalid', problem, { path: `${path}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}` });
  }
}

/**
 * Parses a selector such as `role=web,env!=prod,gpu,!legacy`.
 * @throws TaktError 'bad_request' naming the term that is wrong and showing the syntax.
 */
export function parseLabelSelector(text: string, path = 'selector'): LabelSelector {
  const out: LabelSelector = [];
  if (text.trim() === '') return out;
  if (text.length > 4096) throw new TaktError('bad_request', 'a label selector is at most 4096 characters', { path });
  for (const raw of text.split(',')) {
    const term = raw.trim();
    const bad = (why: string) => new TaktError('bad_request', `label selector term '${term}': ${why}; use key=value, key!=value, key or !key, joined by commas (e.g. role=web,env!=prod)`, { path });
    if (term === '') throw bad('empty term');
    const m = /^([^=!]+?)\s*(==|=|!=)\s*(.*)$/.exec(term);
    if (m) {
      const [, key, op, value] = m as unknown as [string, string, string, string];
      const problem = labelKeyProblem(key) ?? labelValueProblem(key, value);
      if (problem) throw bad(problem);
      out.push({ key, op: op === '!=' ? 'ne' : 'eq', value });
      continue;
    }
    const negated = term.startsWith('!');
    const key = negated ? term.slice(1).trim() : term;
    const problem = labelKeyProblem(key);
    if (problem) throw bad(problem);
    out.push({ key, op: negated ? 'absent' : 'exists' });
  }
  return out;
}

/** Whether `labels` satisfy every term of `selector`. */
export function matchesLabels(labels: Labels, selector: LabelSelector): boolean {
  return selector.every((t) => {
    const has = Object.prototype.hasOwnProperty.call(labels, t.key);
    switch (t.op) {
      case 'eq':
        return has && labels[t.key] === t.value;
      case 'ne':
        return !has || labels[t.key] !== t.value;
      case 'exists':
        return has;
      case 'absent':
        return !has;
    }
  });
}

/** The selector as text, in the syntax `parseLabelSelector` reads. */
export function formatLabelSelector(selector: LabelSelector): string {
  return selector
    .map((t) => (t.op === 'eq' ? `${t.key}=${t.value}` : t.op === 'ne' ? `${t.key}!=${t.value}` : t.op === 'exists' ? t.key : `!${t.key}`))
    .join(',');
}

/**
 * Reads `--label` arguments: `k=v` sets, `k-` removes (kubectl's `label` syntax). Returns the patch as a map
 * where a removed key maps to null.
 * @throws TaktError 'bad_request' for a malformed pair.
 */
export function parseLabelPairs(pairs: readonly string[]): Record<string, string | null> {
  const out: Record<string, string | null> = {};
  for (const p of pairs) {
    if (p.endsWith('-') && !p.includes('=')) {
      const key = p.slice(0, -1);
      const problem = labelKeyProblem(key);
      if (problem) throw new TaktError('bad_request', problem, { path: 'label' });
      out[key] = null;
      continue;
    }
    const eq = p.indexOf('=');
    if (eq <= 0) throw new TaktError('bad_request', `--label '${p}' is not KEY=VALUE (or KEY- to remove), e.g. --label role=web`, { path: 'label' });
    const key = p.slice(0, eq);
    const value = p.slice(eq + 1);
    const problem = labelKeyProblem(key) ?? labelValueProblem(key, value);
    if (problem) throw new TaktError('bad_request', problem, { path: 'label' });
    out[key] = value;
  }
  return out;
}

/** `labels` with `patch` applied (null removes), keys sorted so stored and exported maps are stable. */
export function applyLabelPatch(labels: Labels, patch: Record<string, string | null>): Labels {
  const next: Record<string, string> = { ...labels };
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete next[k];
    else next[k] = v;
  }
  return sortedLabels(next);
}

/** The same labels with keys in sorted order. */
export function sortedLabels(labels: Labels): Labels {
  return Object.fromEntries(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}
