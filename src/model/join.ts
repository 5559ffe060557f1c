/**
 * Join tokens: a short-lived, use-limited credential that lets a host install the agent and register
 * itself as one machine (see docs/remote.md). A join token authorises exactly three things: fetching the
 * install script, fetching the agent bundle, and registering (one machine per use). Only its SHA-256
 * digest is stored; the token itself is shown once, when it is made.
 */

/** Uses one join token may allow at most. */
export const MAX_JOIN_USES = 1000;
/** Default lifetime of a join token, in milliseconds (1 h). */
export const DEFAULT_JOIN_EXPIRY_MS = 3_600_000;

export interface JoinToken {
  /** `jt-<hex>`; also the middle part of the token, so the endpoint finds the row without scanning. */
  id: string;
  /** The name of the machine it creates; null: named after the host's hostname. Only on single-use tokens. */
  name: string | null;
  /** The pipeline, profiles and environment the machine it creates gets. */
  pipeline: string | null;
  profiles: string[];
  environment: string;
  /** The endpoint URL the host uses (the one-liner's and the agent's), e.g. https://10.0.0.1:8092. */
  url: string;
  /** Registrations it allows (1…MAX_JOIN_USES), and how many it has had. */
  maxUses: number;
  uses: number;
  expiresAt: string;
  createdBy: string;
  createdAt: string;
  revokedAt: string | null;
  revokedBy: string | null;
  /** Ids of the machines registered with it (created, or recognised again), oldest first. */
  machines: string[];
  /**
   * The one existing machine this token registers again (a deploy's token, model/joinblock.ts: the
   * deployed OS becomes the machine it was deployed to), or null: a new machine or a re-joining host.
   */
  machine: string | null;
}

/** A join token as the API shows it: never the secret, plus what is left of it. */
export type JoinTokenView = JoinToken & { usesLeft: number; state: JoinTokenState };

export type JoinTokenState = 'active' | 'expired' | 'used' | 'revoked';

/**
 * Join tokens look like `tkj.<id>.<secret>` (as machine tokens are `tkm.<machineId>.<secret>`).
 * Returns the token's id, or null when `token` does not have that shape.
 */
export function joinTokenIdFromToken(token: string): string | null {
  const m = /^tkj\.(jt-[a-z0-9]{1,40})\.[A-Za-z0-9_-]{16,128}$/.exec(token);
  return m ? m[1]! : null;
}

/** The state of `t` at `now` (ms since the epoch): revoked wins over expired, expired over used up. */
export function joinTokenState(t: Pick<JoinToken, 'revokedAt' | 'expiresAt' | 'uses' | 'maxUses'>, now: number): JoinTokenState {
  if (t.revokedAt !== null) return 'revoked';
  if (Date.parse(t.expiresAt) <= now) return 'expired';
  if (t.uses >= t.maxUses) return 'used';
  return 'active';
}

/** Why `t` cannot be used at `now`, in words for the host's operator; null when it can. */
export function joinTokenProblem(t: Pick<JoinToken, 'id' | 'revokedAt' | 'expiresAt' | 'uses' | 'maxUses'>, now: number): string | null {
  switch (joinTokenState(t, now)) {
    case 'revoked':
      return `join token ${t.id} was revoked at ${t.revokedAt}; ask for a new one (takt machines join)`;
    case 'expired':
      return `join token ${t.id} expired at ${t.expiresAt}; ask for a new one (takt machines join)`;
    case 'used':
      return `join token ${t.id} is used up (${t.uses} of ${t.maxUses} use${t.maxUses === 1 ? '' : 's'}); ask for a new one (takt machines join --uses N)`;
    default:
      return null;
  }
}

export function viewJoinToken(t: JoinToken, now: number): JoinTokenView {
  return { ...t, usesLeft: Math.max(0, t.maxUses - t.uses), state: joinTokenState(t, now) };
}
