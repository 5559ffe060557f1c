import { createHash } from 'node:crypto';

/** JSON with sorted keys, so equal objects hash equally whatever order their fields were written in. */
export function canonicalJson(v: unknown): string {
  return JSON.stringify(v, (_k, val: unknown) =>
    val && typeof val === 'object' && !Array.isArray(val)
      ? Object.fromEntries(Object.entries(val as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : val,
  );
}

export const sha256 = (s: string | Buffer): string => createHash('sha256').update(s).digest('hex');

export const hashObject = (v: unknown): string => sha256(canonicalJson(v));
