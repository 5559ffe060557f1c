import { TaktError } from './errors.js';

const units: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1000, kib: 1024, m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3 };

/**
 * Parses a byte size: `67108864`, `64MiB`, `64M` (binary), `64MB` (decimal), `512KiB`, `1GiB`. Whole
 * bytes from 1 to 2^53 - 1; anything else throws a TaktError naming `what`.
 */
export function parseByteSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m ? units[m[2]!.toLowerCase()] : undefined;
  const bytes = m && unit !== undefined ? Math.floor(Number(m[1]) * unit) : NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 1) {
    throw new TaktError('bad_request', `${what} '${text}' is not a size in bytes; use e.g. 67108864, 64MiB, 512KiB, 1GiB`);
  }
  return bytes;
}
