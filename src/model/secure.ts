/**
 * Secure param values are sealed with AES-256-GCM before they reach the store, and masked wherever a
 * person or a log could see them. The key lives in the data dir (0600), never in the database.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { TaktError } from './errors.js';

export const MASK = '********';

export interface Sealed {
  $secure: string;
}

export function isSealed(v: unknown): v is Sealed {
  return typeof v === 'object' && v !== null && typeof (v as Sealed).$secure === 'string' && Object.keys(v).length === 1;
}

export class Sealer {
  /** A key for digests only, derived from the sealing key so one secret.key still holds everything. */
  private readonly macKey: Buffer;

  constructor(private readonly key: Buffer) {
    if (key.length !== 32) throw new TaktError('internal', 'secret key must be 32 bytes');
    this.macKey = createHmac('sha256', key).update('takt digest key v1').digest();
  }

  static generateKey(): Buffer {
    return randomBytes(32);
  }

  seal(value: unknown): Sealed {
    if (isSealed(value)) return value;
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.key, iv);
    const ct = Buffer.concat([cipher.update(JSON.stringify(value), 'utf8'), cipher.final()]);
    return { $secure: `v1:${Buffer.concat([iv, cipher.getAuthTag(), ct]).toString('base64')}` };
  }

  open(value: unknown): unknown {
    if (!isSealed(value)) return value;
    const raw = Buffer.from(value.$secure.replace(/^v1:/, ''), 'base64');
    const decipher = createDecipheriv('aes-256-gcm', this.key, raw.subarray(0, 12));
    decipher.setAuthTag(raw.subarray(12, 28));
    try {
      const pt = Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]);
      return JSON.parse(pt.toString('utf8'));
    } catch {
      throw new TaktError('internal', 'a secure value cannot be decrypted: was the data dir\'s secret.key replaced?');
    }
  }

  /**
   * Whether `value` (sealed) was sealed with this endpoint's key: AES-GCM authenticates, so a value sealed
   * with another key (an export from another endpoint) fails here rather than decrypting to garbage.
   * A value that is not sealed opens trivially (true).
   */
  opens(value: unknown): boolean {
    try {
      this.open(value);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * An HMAC-SHA256 (hex) function under a key of its own for `purpose` (e.g. `discovery`), derived from
   * the sealing key: credentials the endpoint signs statelessly (model/discovery.ts) never share a key with
   * the digests it shows (`digest`), so no shown digest can serve as a signature.
   */
  keyed(purpose: string): (text: string) => string {
    const key = createHmac('sha256', this.key).update(`takt ${purpose} key v1`).digest();
    return (text) => createHmac('sha256', key).update(text, 'utf8').digest('hex');
  }

  /**
   * HMAC-SHA256 (hex) of `text` keyed by this endpoint: a digest that is safe to show for text that holds
   * secrets. Unlike a bare sha256, nobody without the data dir's secret.key can test guesses against it
   * (a 4-digit PIN behind a bare hash falls to 10,000 tries). The same text gives the same digest on the
   * same endpoint; another endpoint (another key) gives another.
   */
  digest(text: string): string {
    return createHmac('sha256', this.macKey).update(text, 'utf8').digest('hex');
  }

  /**
   * An endpoint-keyed fingerprint of a secure value (clear or sealed): equal values give equal
   * fingerprints whatever their ciphertext. A value sealed by another key is fingerprinted by its
   * ciphertext (it cannot be opened here).
   */
  fingerprint(value: unknown): string {
    let clear: unknown = value;
    try {
      clear = this.open(value);
    } catch {
      clear = value;
    }
    return this.digest(JSON.stringify(clear) ?? 'null');
  }
}

/** Replaces sealed values with the mask, for display. */
export function maskValues(values: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(values)) out[k] = isSealed(v) ? MASK : v;
  return out;
}

/** Every sealed value anywhere inside `v` replaced by `f(sealed)` (a new value; `v` is not changed). */
export function mapSealed(v: unknown, f: (s: Sealed) => unknown): unknown {
  if (isSealed(v)) return f(v);
  if (Array.isArray(v)) return v.map((x) => mapSealed(x, f));
  if (typeof v === 'object' && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, mapSealed(x, f)]));
  return v;
}

/** JSON pointers (under `at`) of every sealed value inside `v` that `sealer` cannot open: sealed with another key. */
export function foreignSealed(v: unknown, sealer: Pick<Sealer, 'opens'>, at = ''): string[] {
  if (isSealed(v)) return sealer.opens(v) ? [] : [at];
  if (Array.isArray(v)) return v.flatMap((x, i) => foreignSealed(x, sealer, `${at}/${i}`));
  if (typeof v === 'object' && v !== null) return Object.entries(v).flatMap(([k, x]) => foreignSealed(x, sealer, `${at}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`));
  return [];
}
