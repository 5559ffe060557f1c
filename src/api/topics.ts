/**
 * Topic filters for the event stream: `machines.*.*`, `jobs.update.j-123`, `machines` (a shorter pattern
 * matches every topic it is a prefix of), `*` (everything).
 */
export function topicMatcher(patterns: string[]): (topic: string) => boolean {
  const compiled = patterns.map((p) => p.split('.').filter((s) => s.length > 0));
  if (compiled.length === 0) return () => true;
  return (topic) => {
    const parts = topic.split('.');
    return compiled.some((pat) => pat.every((seg, i) => seg === '*' || seg === parts[i]));
  };
}
