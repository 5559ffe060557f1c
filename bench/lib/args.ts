/**
 * The benches' command line: `<name> [--flag value]…`. Deliberately tiny: every bench takes a handful of
 * numeric knobs, and a typo must fail loudly rather than silently run the default size.
 */
export interface BenchArgs {
  name: string;
  flags: Map<string, string>;
}

export function parseArgs(argv: string[]): BenchArgs {
  const [name, ...rest] = argv;
  const flags = new Map<string, string>();
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (!a.startsWith('--')) throw new Error(`unexpected argument '${a}' (flags look like --reps 3)`);
    const eq = a.indexOf('=');
    if (eq > 0) flags.set(a.slice(2, eq), a.slice(eq + 1));
    else if (rest[i + 1] !== undefined && !rest[i + 1]!.startsWith('--')) flags.set(a.slice(2), rest[++i]!);
    else flags.set(a.slice(2), 'true');
  }
  return { name: name ?? '', flags };
}

/** Reads the flags a bench knows; anything else is an error, so `--machine 500` does not run 10,000. */
export class Flags {
  private readonly used = new Set<string>();

  constructor(private readonly flags: Map<string, string>) {}

  int(name: string, fallback: number, min = 1): number {
    this.used.add(name);
    const v = this.flags.get(name);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be a whole number >= ${min} (got '${v}')`);
    return n;
  }

  bool(name: string): boolean {
    this.used.add(name);
    const v = this.flags.get(name);
    return v !== undefined && v !== 'false';
  }

  string(name: string): string | undefined {
    this.used.add(name);
    return this.flags.get(name);
  }

  /** Call after reading every flag. */
  done(): void {
    const unknown = [...this.flags.keys()].filter((k) => !this.used.has(k));
    if (unknown.length) throw new Error(`unknown flag${unknown.length > 1 ? 's' : ''}: ${unknown.map((k) => `--${k}`).join(', ')} (known: ${[...this.used].map((k) => `--${k}`).join(', ')})`);
  }
}
