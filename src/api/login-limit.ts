/**
 * Login rate limits (issue #16): password guessing against `POST /api/v1/login` (and device-code guessing
 * on the single sign-on device poll) is bounded per user name *and* source address, and per source
 * address across names.
 *
 * - **name + address**: at most `maxFailures` failed attempts within `windowMs` (default 10 in 5 minutes);
 *   past that the next attempts are refused with 429 `rate_limited` and `retryAfter` (seconds until the
 *   oldest failure in the window ages out) before any password is checked. A successful login clears the
 *   key. The account itself is never locked: a guesser elsewhere cannot lock its owner out.
 * - **address**: at most `maxFailures × ADDRESS_FACTOR` failures within the window over all names, so one
 *   address cannot spray a common password over many accounts. A success does not clear it.
 *
 * Sliding window: each key keeps the times of its last failures (at most its limit). In memory, per
 * replica (behind N replicas an attacker gets N× the budget), forgotten at restart; at most `maxKeys` keys
 * (oldest first out), so a flood of addresses cannot grow it without bound. The address is the socket's
 * peer (forwarded headers are not trusted, as in the audit log). Times come from `now` (tests inject a clock).
 */
import { TaktError } from '../model/errors.js';

/** Limits and clock. */
export interface LoginLimitOptions {
  /** Failures allowed per name+address within the window (≥ 1). Default 10. */
  maxFailures?: number;
  /** The window, milliseconds (≥ 1000). Default 5 minutes. */
  windowMs?: number;
  /** Keys kept at most. Default 100,000. */
  maxKeys?: number;
  now?: () => number;
}

export const LOGIN_MAX_FAILURES = 10;
export const LOGIN_WINDOW_MS = 5 * 60_000;
/** An address may fail this many times the per-name limit, over all names. */
export const ADDRESS_FACTOR = 10;
const MAX_KEYS = 100_000;

export class LoginLimiter {
  readonly maxFailures: number;
  readonly windowMs: number;
  private readonly maxKeys: number;
  private readonly now: () => number;
  /** Key → times of its recent failures, oldest first. */
  private readonly failures = new Map<string, number[]>();

  constructor(o: LoginLimitOptions = {}) {
    this.maxFailures = Math.max(1, Math.floor(o.maxFailures ?? LOGIN_MAX_FAILURES));
    this.windowMs = Math.max(1000, o.windowMs ?? LOGIN_WINDOW_MS);
    this.maxKeys = Math.max(2, o.maxKeys ?? MAX_KEYS);
    this.now = o.now ?? Date.now;
  }

  private keys(name: string, address: string): Array<{ key: string; limit: number; what: string }> {
    return [
      { key: `n\u0000${name}\u0000${address}`, limit: this.maxFailures, what: `login for '${name}' from ${address}` },
      { key: `a\u0000${address}`, limit: this.maxFailures * ADDRESS_FACTOR, what: `logins from ${address}` },
    ];
  }

  /** The failures of `key` still inside the window (pruned in place). */
  private recent(key: string, now: number): number[] | undefined {
    const list = this.failures.get(key);
    if (!list) return undefined;
    while (list.length > 0 && list[0]! <= now - this.windowMs) list.shift();
    if (list.length === 0) {
      this.failures.delete(key);
      return undefined;
    }
    return list;
  }

  /**
   * Refuses an attempt whose key has used its budget. Call before checking the password.
   * @throws TaktError rate_limited (429) with `retryAfter` (whole seconds, ≥ 1).
   */
  check(name: string, address: string): void {
    const now = this.now();
    for (const k of this.keys(name, address)) {
      const list = this.recent(k.key, now);
      if (list && list.length >= k.limit) {
        const retryAfter = Math.max(1, Math.ceil((list[list.length - k.limit]! + this.windowMs - now) / 1000));
        throw new TaktError('rate_limited', `too many failed attempts: ${k.what} failed ${list.length} times within ${Math.round(this.windowMs / 1000)} s; try again in ${retryAfter} s`, { retryAfter });
      }
    }
  }

  /** Counts a failed attempt against the name+address and the address. */
  failed(name: string, address: string): void {
    const now = this.now();
    for (const k of this.keys(name, address)) {
      const list = this.recent(k.key, now) ?? [];
      list.push(now);
      if (list.length > k.limit) list.shift();
      this.failures.delete(k.key);
      this.failures.set(k.key, list);
    }
    while (this.failures.size > this.maxKeys) this.failures.delete(this.failures.keys().next().value as string);
  }

  /** A successful login: clears its name+address key (the address's count stays). */
  succeeded(name: string, address: string): void {
    this.failures.delete(this.keys(name, address)[0]!.key);
  }

  /** Keys held (for tests). */
  get size(): number {
    return this.failures.size;
  }
}
