/** Client-side request latency, by request type: time around the whole call through the API client. */
import { summarise, type Summary } from './stats.js';

export class Latencies {
  private readonly samples = new Map<string, number[]>();

  async time<T>(kind: string, fn: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      this.add(kind, performance.now() - t0);
    }
  }

  add(kind: string, ms: number): void {
    let s = this.samples.get(kind);
    if (!s) this.samples.set(kind, (s = []));
    s.push(ms);
  }

  count(): number {
    let n = 0;
    for (const s of this.samples.values()) n += s.length;
    return n;
  }

  summaries(): Record<string, Summary> {
    const out: Record<string, Summary> = {};
    for (const [k, s] of this.samples) out[k] = summarise(s);
    out.all = summarise([...this.samples.values()].flat());
    return out;
  }
}
