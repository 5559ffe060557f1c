/**
 * Topic filters for the event stream: `machines.*.*`, `jobs.update.j-123`, `machines` (a shorter pattern
 * matches every topic it is a prefix of), `*` (everything). A filter that could match no topic the
 * endpoint sends (`**`, `machine.create`, `jobs..x`) is refused with the syntax, never silently empty.
 */
import { CONTENT_KINDS } from '../model/content.js';
import { TaktError } from '../model/errors.js';

/** The first segment of every topic the endpoint sends: what changed. */
export const TOPIC_TYPES: readonly string[] = ['machines', 'jobs', 'workorders', 'rollouts', 'packs', 'packversions', 'policies', 'jointokens', 'credentials', 'leases', ...CONTENT_KINDS];
/** The second segment: what happened to it. */
export const TOPIC_ACTIONS: readonly string[] = ['create', 'update', 'delete', 'item', 'token', 'boot-missed'];
/** Later segments: an id or a name (a pack version's dots split it into more segments). */
const ID_SEGMENT = /^[A-Za-z0-9_@+-]{1,200}$/;
/** Filters in one request, at most. */
export const MAX_TOPIC_FILTERS = 50;

export const TOPIC_SYNTAX = `a topic filter is TYPE[.ACTION[.ID]], each part a name or * (one part, any value): e.g. machines, machines.update.*, jobs.update.j-1a2b, *.delete; TYPE is one of ${TOPIC_TYPES.join(', ')}; ACTION one of ${TOPIC_ACTIONS.join(', ')}`;

/** Why `pattern` can match no topic, or null when it can. */
function patternProblem(pattern: string): string | null {
  const segs = pattern.split('.');
  for (const [i, seg] of segs.entries()) {
    if (seg === '*') continue;
    if (seg === '') return 'has an empty part';
    if (seg.includes('*')) return `'${seg}': * stands for a whole part, not part of one`;
    if (i === 0 && !TOPIC_TYPES.includes(seg)) return `'${seg}' is not a topic type`;
    if (i === 1 && !TOPIC_ACTIONS.includes(seg)) return `'${seg}' is not a topic action`;
    if (i >= 2 && !ID_SEGMENT.test(seg)) return `'${seg}' is not an id or a name`;
  }
  return null;
}

/**
 * The filters in a comma-separated list (spaces around them ignored; an empty list is every topic).
 * @throws TaktError `bad_request` (400) naming the first filter that can match nothing, with the syntax.
 */
export function parseTopics(list: string): string[] {
  const patterns = list.split(',').map((s) => s.trim()).filter(Boolean);
  if (patterns.length > MAX_TOPIC_FILTERS) throw new TaktError('bad_request', `topics: ${patterns.length} filters, more than ${MAX_TOPIC_FILTERS}; use a shorter pattern such as machines or *.update`, { path: 'topics' });
  for (const p of patterns) {
    const problem = patternProblem(p);
    if (problem) throw new TaktError('bad_request', `topics: ${JSON.stringify(p.length > 80 ? `${p.slice(0, 80)}…` : p)} can match no event: ${problem}; ${TOPIC_SYNTAX}`, { path: 'topics' });
  }
  return patterns;
}

/**
 * A predicate over topics for `patterns` (as `parseTopics` returns them; checked again here).
 * @throws TaktError `bad_request` for a pattern that can match no topic.
 */
export function topicMatcher(patterns: string[]): (topic: string) => boolean {
  const compiled = parseTopics(patterns.join(',')).map((p) => p.split('.'));
  if (compiled.length === 0) return () => true;
  return (topic) => {
    const parts = topic.split('.');
    return compiled.some((pat) => pat.every((seg, i) => seg === '*' || seg === parts[i]));
  };
}
