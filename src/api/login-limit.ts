/**
 * Rate limits on the endpoint's unauthenticated entries (issue #16): every place where a caller without a
 * valid credential makes the endpoint check one (or ask the identity provider to) is bounded per source
 * address, so guessing costs the guesser time and a flood costs the endpoint bounded memory and work.
 * One limiter, several budgets (`LimitScope`), each kept apart so a flood of one kind does not lock out
 * another:
 *
 * - **login** — `POST /api/v1/login` (passwords) and `POST /api/v1/login/sso/device/token` (device codes,
 *   under the name '(device code)'): at most `maxFailures` failed attempts per user name *and* source
 *   address within `windowMs` (default 10 in 5 minutes); past that the next attempts are refused with 429
 *   `rate_limited` and `retryAfter` (seconds until the oldest failure in the window ages out) before any
 *   password is checked. A successful login clears the name+address key. The account itself is never
 *   locked: a guesser elsewhere cannot lock its owner out. Per address over all names: `maxFailures ×
 *   ADDRESS_FACTOR` failures, so one address cannot spray a common password over many accounts (a
 *   success does not clear it).
 * - **token** — a bearer token that is not already known to be valid (not the admin token, not in the
 *   token caches: a guess always is a miss) and is refused: machine, user, join and discovery tokens
 *   alike, on every route (the join script's `GET /join/:token` included). `maxFailures × ADDRESS_FACTOR`
 *   per address; past that, tokens not known valid are refused with 429 before they are looked up, while
 *   the known-valid tokens of other callers behind that address keep working.
 * - **sso** — single sign-on starts (browser `GET /api/v1/login/sso/start`, device `POST
 *   /api/v1/login/sso/device`: each asks the provider or keeps state) and failed browser callbacks:
 *   `maxFailures × ADDRESS_FACTOR` per address, every start counted.
 *
 * Sliding window: each key keeps the times of its last attempts (at most its limit). In memory, per
 * replica (behind N replicas an attacker gets N× the budget), forgotten at restart; at most `maxKeys` keys
 * (oldest first out), so a flood of addresses cannot grow it without bound. The address is the socket's
 * peer (forwarded headers are not trusted, as in the audit log). Times come from `now` (tests inject a clock).
 * Flags: `--login-max-failures` (maxFailures) and `--login-window` (windowMs) set every budget.
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

/** Which budget an attempt counts against (see the module comment). */
export type LimitScope = 'login' | 'token' | 'sso';

/** What a refusal says each scope counted, for `address`. */
const SCOPE_WHAT: Record<LimitScope, { address: (a: string) => string; counted: string }> = {
  login: { address: (a) => `logins from ${a}`, counted: 'failed' },
  token: { address: (a) => `tokens this endpoint does not accept, presented from ${a},`, counted: 'were refused' },
  sso: { address: (a) => `single sign-on starts and failed callbacks from ${a}`, counted: 'came' },
};

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

  /** The keys an attempt counts against: its name+address (login only, when named) and its scope's address. */
  private keys(name: string | null, address: string, scope: LimitScope): Array<{ key: string; limit: number; what: string; counted: string }> {
    const w = SCOPE_WHAT[scope];
    // The login scope keeps its historical key spelling (no prefix); the others are prefixed with their scope.
    const prefix = scope === 'login' ? '' : `${scope}\u0000`;
    const byAddress = { key: `${prefix}a\u0000${address}`, limit: this.maxFailures * ADDRESS_FACTOR, what: w.address(address), counted: w.counted };
    if (name === null || scope !== 'login') return [byAddress];
    return [{ key: `n\u0000${name}\u0000${address}`, limit: this.maxFailures, what: `login for '${name}' from ${address}`, counted: 'failed' }, byAddress];
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
  check(name: string | null, address: string, scope: LimitScope = 'login'): void {
    const now = this.now();
    for (const k of this.keys(name, address, scope)) {
      const list = this.recent(k.key, now);
      if (list && list.length >= k.limit) {
        const retryAfter = Math.max(1, Math.ceil((list[list.length - k.limit]! + this.windowMs - now) / 1000));
        const head = k.counted === 'came' ? 'too many requests' : 'too many failed attempts';
        throw new TaktError('rate_limited', `${head}: ${k.what} ${k.counted} ${list.length} times within ${Math.round(this.windowMs / 1000)} s; try again in ${retryAfter} s`, { retryAfter });
      }
    }
  }

  /** Counts a failed attempt against the name+address (login) and the scope's address key; `name` null: the address only. */
  failed(name: string | null, address: string, scope: LimitScope = 'login'): void {
    const now = this.now();
    for (const k of this.keys(name, address, scope)) {
      const list = this.recent(k.key, now) ?? [];
      list.push(now);
      if (list.length > k.limit) list.shift();
      this.failures.delete(k.key);
      this.failures.set(k.key, list);
    }
    while (this.failures.size > this.maxKeys) this.failures.delete(this.failures.keys().next().value as string);
  }

  /**
   * Counts an attempt that costs the endpoint whatever its outcome (a single sign-on start): refused past
   * the scope's address budget, else recorded.
   * @throws TaktError rate_limited (429) with `retryAfter`.
   */
  attempt(address: string, scope: LimitScope): void {
    this.check(null, address, scope);
    this.failed(null, address, scope);
  }

  /** A successful login: clears its name+address key (the address's count stays). */
  succeeded(name: string, address: string): void {
    this.failures.delete(this.keys(name, address, 'login')[0]!.key);
  }

  /** Keys held (for tests). */
  get size(): number {
    return this.failures.size;
  }
}
