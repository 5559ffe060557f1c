/**
 * Secure param values are sealed with AES-256-GCM before they reach the store, and masked wherever a
 * person or a log could see them. The key lives in the data dir (0600), never in the database.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { TaktError } from './errors.js';

export const MASK = '********';

export interface Sealed {
  $secure: string;
}

export function isSealed(v: unknown): v is Sealed {
  return typeof v === 'object' && v !== null && typeof (v as Sealed).$secure === 'string' && Object.keys(v).length === 1;
}

export class Sealer {
  constructor(private readonly key: Buffer) {
    if (key.length !== 32) throw new TaktError('internal', 'secret key must be 32 bytes');
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
}

/** Replaces sealed values with the mask, for display. */
export function maskValues(values: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(values)) out[k] = isSealed(v) ? MASK : v;
  return out;
}
