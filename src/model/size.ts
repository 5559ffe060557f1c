import { TaktError } from './errors.js';

/** Byte units by lower-case name: bare letters and `iB` are binary, `B` after a letter decimal (`64M` = `64MiB`, `64MB` = 64,000,000). */
export const SIZE_UNITS: Readonly<Record<string, number>> = {
  '': 1, b: 1, k: 1024, kb: 1000, kib: 1024, m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1000 ** 4, tib: 1024 ** 4,
};
const units = SIZE_UNITS;

/**
 * Parses a byte size: `67108864`, `64MiB`, `64M` (binary), `64MB` (decimal), `512KiB`, `1GiB`. Whole
 * bytes from 1 to 2^53 - 1; anything else throws a TaktError naming `what`.
 */
export function parseByteSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m && Object.hasOwn(units, m[2]!.toLowerCase()) ? units[m[2]!.toLowerCase()] : undefined;
  const bytes = m && unit !== undefined ? Math.floor(Number(m[1]) * unit) : NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 1) {
    throw new TaktError('bad_request', `${what} '${text}' is not a size in bytes; use e.g. 67108864, 64MiB, 512KiB, 1GiB`);
  }
  return bytes;
}
