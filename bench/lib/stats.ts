/** Order statistics over samples; percentiles by nearest rank so a reported p99 is a real sample. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

export const median = (values: readonly number[]): number => percentile(values, 50);

export interface Summary {
  n: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export function summarise(values: readonly number[]): Summary {
  const n = values.length;
  const mean = n ? values.reduce((a, b) => a + b, 0) / n : NaN;
  // Sorted once; no Math.min(...values): spreading 300,000 samples (a 10,000-machine fleet) overflows the stack.
  const sorted = [...values].sort((a, b) => a - b);
  const at = (p: number) => (n ? sorted[Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1))]! : NaN);
  return { n, min: n ? sorted[0]! : NaN, p50: at(50), p90: at(90), p99: at(99), max: n ? sorted[n - 1]! : NaN, mean };
}

/** Rounds for tables and JSON: three significant decimals are more than these measurements carry. */
export function round(v: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}
