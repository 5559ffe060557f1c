/**
 * Users, groups and user tokens (issue #16, part 1). Pure: shapes, token text and the rules for when a
 * token is refused. Passwords are hashed with argon2id in engine/users.ts; tokens are stored as the
 * SHA-256 of their text, shown once.
 */
import { TaktError } from './errors.js';

/** Name rule for users, groups and token names: what the CLI can type and a history author can carry. */
export const USER_NAME = /^[a-z][a-z0-9_.-]{0,62}$/;

/** Longest lifetime of a token (1 year); the default for `takt login` is 12 hours, for `tokens create` 30 days. */
export const MAX_TOKEN_TTL_MS = 365 * 24 * 3_600_000;
export const LOGIN_TOKEN_TTL_MS = 12 * 3_600_000;
export const DEFAULT_TOKEN_TTL_MS = 30 * 24 * 3_600_000;

export interface User {
  name: string;
  createdAt: string;
  createdBy: string;
  /**
   * `oidc`: signs in through the OpenID Connect provider `oidc` names (api/oidc.ts) and has no password;
   * absent: a password user.
   */
  kind?: 'oidc';
  /** For kind `oidc`: the provider's issuer URL and the user's subject (`sub`) there, which identify them. */
  oidc?: { issuer: string; subject: string };
}

export interface Group {
  name: string;
  members: string[];
  createdAt: string;
}

/** A personal token (made by its owner, or by `takt login`) or a service token (for automation). */
export interface UserToken {
  /** `t-…`: the part of the token text that names it. */
  id: string;
  name: string;
  kind: 'personal' | 'service';
  /** The user it acts as. */
  owner: string;
  /** Roles it carries (each one its owner holds); absent: all its owner's. */
  roles?: string[];
  expiresAt: string;
  createdAt: string;
  lastUsedAt: string | null;
  /** Set when the token's secret was replaced: the old text is refused saying so. */
  rotatedAt: string | null;
  revokedAt: string | null;
  revokedBy: string | null;
}

export type UserTokenState = 'active' | 'expired' | 'revoked';

/** Token text: `tku.<id>.<secret>`; the id has no dots. */
export const USER_TOKEN_PREFIX = 'tku.';

/** The token id a `tku.` text names, or null for text that is not a user token. */
export function userTokenIdFromToken(token: string): string | null {
  const m = /^tku\.(t-[0-9a-f]{16})\.[A-Za-z0-9_-]{43}$/.exec(token);
  return m ? m[1]! : null;
}

export function userTokenState(t: Pick<UserToken, 'revokedAt' | 'expiresAt'>, now: number): UserTokenState {
  if (t.revokedAt) return 'revoked';
  if (Date.parse(t.expiresAt) <= now) return 'expired';
  return 'active';
}

/** Why a token whose secret matched is refused now, or null when it is usable. */
export function userTokenProblem(t: Pick<UserToken, 'id' | 'name' | 'revokedAt' | 'revokedBy' | 'expiresAt'>, now: number): string | null {
  const state = userTokenState(t, now);
  if (state === 'revoked') return `token ${t.id} (${t.name}) was revoked at ${t.revokedAt}${t.revokedBy ? ` by ${t.revokedBy}` : ''}; make a new one (takt login, or takt tokens create)`;
  if (state === 'expired') return `token ${t.id} (${t.name}) expired at ${t.expiresAt}; log in again (takt login) or make a new one (takt tokens create)`;
  return null;
}

/** What a token whose stored secret has been replaced is told. */
export const rotatedProblem = (t: Pick<UserToken, 'id' | 'name' | 'rotatedAt'>) =>
  `token ${t.id} (${t.name}) was rotated at ${t.rotatedAt}: this is its old secret; use the one takt tokens rotate printed`;

/**
 * Checks a user, group or token name.
 * @throws TaktError invalid naming the field.
 */
export function checkName(name: unknown, what: string, path = '/name'): string {
  if (typeof name !== 'string' || !USER_NAME.test(name)) {
    throw new TaktError('invalid', `${what} name must be 1 to 63 characters: lower-case letters, digits, '_', '.', '-', starting with a letter`, { path });
  }
  return name;
}

/**
 * Parses a token lifetime such as `12h`, `30d`, `90m` (milliseconds).
 * @throws TaktError invalid for anything else or beyond a year.
 */
export function parseTtl(text: string, path = '/ttl'): number {
  const m = /^(\d{1,6})([mhd])$/.exec(text);
  const ms = m ? Number(m[1]) * ({ m: 60_000, h: 3_600_000, d: 86_400_000 } as const)[m[2] as 'm' | 'h' | 'd'] : NaN;
  if (!m || ms <= 0 || ms > MAX_TOKEN_TTL_MS) throw new TaktError('invalid', 'a token lifetime is a whole number of minutes, hours or days (90m, 12h, 30d), more than 0 and at most 365d', { path });
  return ms;
}
