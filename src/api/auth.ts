/**
 * Who is calling: the admin (token in the data dir), one machine (its own token, scoped to itself and
 * its jobs), or a host joining with a join token (only the join routes take it: the install script, the
 * agent bundle and registration), or a machine booted into discovery with the credential its boot script
 * carried (registration only), or a user with a `tku.` token (issue #16: their roles' grants, checked
 * against each route's declared permission in server.ts). Every API route but /health requires one of them.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { TaktError } from '../model/errors.js';
import { checkDiscoveryToken, isDiscoveryToken, type KeyedDigest } from '../model/discovery.js';
import { joinTokenIdFromToken, joinTokenProblem } from '../model/join.js';
import { machineIdFromToken } from '../model/protocol.js';
import type { Store } from '../store/store.js';
import { BOOTSTRAP_SETTING, Users } from '../engine/users.js';
import type { Grant } from '../model/permissions.js';
import { rotatedProblem, userTokenIdFromToken, userTokenProblem } from '../model/users.js';
import { tokenGrants } from '../model/permissions.js';
import type { LoginLimiter } from './login-limit.js';

export type Principal =
  /** The data dir's admin token: every permission (the bootstrap credential; can be turned off). */
  | { kind: 'admin'; name: string }
  /** A user, through one of their tokens: what the token's roles grant. */
  | { kind: 'user'; name: string; tokenId: string; grants: readonly Grant[] }
  | { kind: 'machine'; machineId: string }
  | { kind: 'join'; tokenId: string }
  /** A machine booted into discovery, with the credential its boot script carried (model/discovery.ts). */
  | { kind: 'discovery'; mac: string };

/** What a join token is told on a route that does not take it. */
/** What a host hears when the token it joins with is none this endpoint made (or not a join token at all). */
export const NOT_A_JOIN_TOKEN = 'join token not accepted: it is not a valid join token for this endpoint (check that it was copied whole, or ask for a new one: takt machines join)';
export const JOIN_TOKEN_SCOPE = 'a join token can only fetch the install script and the agent bundle and register one machine';
/** What a discovery credential is told on a route that does not take it. */
export const DISCOVERY_SCOPE = 'a discovery credential can only register the machine it was issued to (POST /api/v1/join)';

const digest = (s: string) => createHash('sha256').update(s).digest();
/** Two hex digests equal, compared in constant time. */
const hexEqual = (a: string, b: string) => a.length === b.length && timingSafeEqual(Buffer.from(a, 'hex'), Buffer.from(b, 'hex'));

/**
 * Machine tokens verified recently, so an agent's every request does not read its machine's row. An entry
 * goes when its machine is deleted, re-created or its token re-issued — on any replica: those events reach
 * every store on the database (pg-follow.ts) — and after TTL in any case.
 */
const TOKEN_TTL_MS = 60_000;
const TOKEN_CACHE_MAX = 100_000;

/**
 * User tokens resolved recently, by the SHA-256 of their text: a hit costs no database round trip. The
 * whole cache is dropped on any event about users, groups, role bindings, tokens or the bootstrap setting
 * (revocation, rotation, deletion, a changed binding: on PostgreSQL also those another replica commits),
 * and an entry lives USER_TTL_MS at most in any case; an entry past its token's expiry is refused.
 */
const USER_TTL_MS = 30_000;
const USER_CACHE_MAX = 10_000;
const AUTH_TOPICS = ['users.', 'groups.', 'rolebindings.', 'tokens.', 'auth.'];

/** What a refused user token is told when it is no token this endpoint made. */
export const NOT_A_USER_TOKEN = 'token not accepted: it is not a valid user token for this endpoint (log in again: takt login)';

export class Authenticator {
  private readonly adminDigest: Buffer;
  private readonly verified = new Map<string, { digest: Buffer; until: number }>();
  /**
   * Moved by every invalidation: a digest read from the store while one arrived may be the one it
   * invalidates (read before the delete committed, cached after its event), so it is not cached.
   */
  private invalidations = 0;
  private readonly users = new Map<string, { principal: Principal; until: number; expiresAt: number; id: string; name: string }>();
  private bootstrapOff: { value: boolean; until: number } | null = null;
  /** User-token resolutions under way, by digest (single flight). */
  private readonly resolving = new Map<string, Promise<Principal>>();
  /** Moved by every auth event: a resolution that straddles one is not cached. */
  private userEpoch = 0;
  private readonly usersService: Users;

  /**
   * `discovery`: the endpoint's keyed digest for discovery credentials (Sealer.keyed('discovery')); without
   * it no discovery credential is accepted. `limiter`: bounds refused tokens per source address (its
   * `token` scope, api/login-limit.ts); without it (unit tests) nothing is limited.
   */
  constructor(
    adminToken: string,
    private readonly store: Store,
    private readonly discovery?: KeyedDigest,
    private readonly now: () => number = Date.now,
    private readonly limiter?: LoginLimiter,
  ) {
    this.adminDigest = digest(adminToken);
    this.usersService = new Users(store, now);
    store.onEvents((events) => {
      for (const e of events) {
        if (AUTH_TOPICS.some((t) => e.topic.startsWith(t))) {
          this.users.clear();
          this.userEpoch += 1;
          // A resolution under way may have read the state before this change: later callers start their own.
          this.resolving.clear();
          this.bootstrapOff = null;
        }
        if (e.topic.startsWith('machines.delete.') || e.topic.startsWith('machines.create.') || e.topic.startsWith('machines.token.')) {
          this.verified.delete(e.topic.slice(e.topic.lastIndexOf('.') + 1));
          this.invalidations += 1;
        }
      }
    });
  }

  private async machineDigest(machineId: string): Promise<Buffer | undefined> {
    const now = Date.now();
    const hit = this.verified.get(machineId);
    if (hit && hit.until > now) return hit.digest;
    const epoch = this.invalidations;
    const hash = await this.store.getMachineTokenHash(machineId);
    if (!hash) {
      this.verified.delete(machineId);
      return undefined;
    }
    const d = Buffer.from(hash, 'hex');
    if (epoch !== this.invalidations) return d;
    if (this.verified.size >= TOKEN_CACHE_MAX) this.verified.delete(this.verified.keys().next().value as string);
    this.verified.set(machineId, { digest: d, until: now + TOKEN_TTL_MS });
    return d;
  }

  /**
   * Who presents `header` (`Authorization: Bearer …`).
   * `joinRoute`: the request is for a join route, so a token that is not accepted is told as a bad join token.
   * `address`: the request's source address; with a limiter, a token not already known valid is checked
   * only while that address has refused-token budget left (else 429 before any lookup), and a refusal
   * counts against it. The admin token and cached valid tokens skip the limit: a guess is never cached, and
   * the agents behind an address that is guessing keep working.
   * @throws TaktError unauthorized (refused, saying why), rate_limited (the address's budget is used up).
   */
  async authenticate(header: string | undefined, joinRoute = false, address?: string): Promise<Principal> {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
    if (!m) throw new TaktError('unauthorized', 'missing bearer token: pass --token, set TAKT_TOKEN, or send "Authorization: Bearer <token>"');
    const token = m[1]!;
    const presented = digest(token);
    if (timingSafeEqual(presented, this.adminDigest)) {
      if (await this.bootstrapDisabled()) throw new TaktError('unauthorized', 'the bootstrap admin token is turned off on this endpoint (takt users bootstrap disable); log in as a user instead: takt login');
      return { kind: 'admin', name: 'admin' };
    }
    const limited = this.limiter !== undefined && address !== undefined && !this.knownValid(token, presented);
    if (!limited) return this.resolve(token, presented, joinRoute);
    this.limiter.check(null, address, 'token');
    try {
      return await this.resolve(token, presented, joinRoute);
    } catch (err) {
      if (err instanceof TaktError && err.code === 'unauthorized') this.limiter.failed(null, address, 'token');
      throw err;
    }
  }

  /** True when `token` is in a cache of valid tokens (a user token not past its expiry, a verified machine token): no lookup needed. */
  private knownValid(token: string, presented: Buffer): boolean {
    if (token.startsWith('tku.')) {
      const hit = this.users.get(presented.toString('hex'));
      const now = this.now();
      return hit !== undefined && hit.until > now && hit.expiresAt > now;
    }
    const machineId = machineIdFromToken(token);
    const hit = machineId ? this.verified.get(machineId) : undefined;
    return hit !== undefined && hit.until > Date.now() && hit.digest.length === presented.length && timingSafeEqual(hit.digest, presented);
  }

  /** The principal of a token that is not the admin token (see authenticate). */
  private async resolve(token: string, presented: Buffer, joinRoute: boolean): Promise<Principal> {
    if (token.startsWith('tku.')) return this.userPrincipal(token, presented);
    const machineId = machineIdFromToken(token);
    if (machineId) {
      const stored = await this.machineDigest(machineId);
      if (stored && stored.length === presented.length && timingSafeEqual(stored, presented)) return { kind: 'machine', machineId };
    }
    const tokenId = joinTokenIdFromToken(token);
    if (tokenId) return this.joinPrincipal(tokenId, presented);
    if (isDiscoveryToken(token)) {
      const check = this.discovery ? checkDiscoveryToken(this.discovery, token, this.now(), hexEqual) : { ok: false as const, problem: 'this endpoint runs no discovery' };
      if (!check.ok) throw new TaktError('unauthorized', `discovery credential not accepted: ${check.problem}`);
      return { kind: 'discovery', mac: check.mac };
    }
    if (joinRoute || token.startsWith('tkj.')) throw new TaktError('unauthorized', NOT_A_JOIN_TOKEN);
    throw new TaktError('unauthorized', 'token not accepted: it is not the admin token nor the token of an existing machine');
  }

  private async bootstrapDisabled(): Promise<boolean> {
    const now = this.now();
    if (this.bootstrapOff && this.bootstrapOff.until > now) return this.bootstrapOff.value;
    const value = !!(await this.store.getSetting<{ disabled?: boolean }>(BOOTSTRAP_SETTING))?.disabled;
    this.bootstrapOff = { value, until: now + USER_TTL_MS };
    return value;
  }

  /**
   * A user token: from the cache by digest, else its row (hash compared in constant time), its state and its
   * owner's grants. Refused saying which: not a token of this endpoint, rotated, revoked or expired.
   */
  private async userPrincipal(token: string, presented: Buffer): Promise<Principal> {
    const key = presented.toString('hex');
    const now = this.now();
    const hit = this.users.get(key);
    if (hit && hit.until > now) {
      if (hit.expiresAt <= now) throw new TaktError('unauthorized', `token ${hit.id} (${hit.name}) expired at ${new Date(hit.expiresAt).toISOString()}; log in again (takt login) or make a new one (takt tokens create)`);
      return hit.principal;
    }
    // Concurrent first uses of one token (a service token's burst after start, or after its entry aged
    // out) share one resolution: one set of store reads and one last-use write, not one each.
    const pending = this.resolving.get(key);
    if (pending) return pending;
    const resolution: Promise<Principal> = this.resolveUser(token, presented, key, now).finally(() => {
      if (this.resolving.get(key) === resolution) this.resolving.delete(key);
    });
    this.resolving.set(key, resolution);
    return resolution;
  }

  /** A user token not in the cache: read, checked, and cached (see userPrincipal). */
  private async resolveUser(token: string, presented: Buffer, key: string, now: number): Promise<Principal> {
    const id = userTokenIdFromToken(token);
    if (!id) throw new TaktError('unauthorized', NOT_A_USER_TOKEN);
    const epoch = this.userEpoch;
    const [hash, t] = await Promise.all([this.store.getUserTokenHash(id), this.store.getUserToken(id)]);
    const stored = hash ? Buffer.from(hash, 'hex') : undefined;
    if (!t || !stored || stored.length !== presented.length || !timingSafeEqual(stored, presented)) {
      throw new TaktError('unauthorized', t?.rotatedAt ? rotatedProblem(t) : NOT_A_USER_TOKEN);
    }
    const problem = userTokenProblem(t, now);
    if (problem) throw new TaktError('unauthorized', problem);
    const principal: Principal = { kind: 'user', name: t.owner, tokenId: t.id, grants: tokenGrants(await this.usersService.grantsOf(t.owner), t.roles) };
    // Not kept when an auth event arrived during the reads (they may predate a revocation); used this once.
    if (epoch !== this.userEpoch) return principal;
    if (this.users.size >= USER_CACHE_MAX) this.users.delete(this.users.keys().next().value as string);
    this.users.set(key, { principal, until: now + USER_TTL_MS, expiresAt: Date.parse(t.expiresAt), id: t.id, name: t.name });
    // Last use, to the resolution (a token used within the cache's lifetime is not written again).
    await this.store.transact((tx) => tx.touchUserToken(t.id, new Date(now).toISOString())).catch(() => undefined);
    return principal;
  }

  /**
   * A join token is read from the store on every use (hosts join rarely) and accepted only while usable:
   * an expired, used-up or revoked one is refused saying which, so the host's operator knows what to ask for.
   */
  private async joinPrincipal(tokenId: string, presented: Buffer): Promise<Principal> {
    const hash = await this.store.getJoinTokenHash(tokenId);
    const stored = hash ? Buffer.from(hash, 'hex') : undefined;
    if (!stored || stored.length !== presented.length || !timingSafeEqual(stored, presented)) {
      throw new TaktError('unauthorized', NOT_A_JOIN_TOKEN);
    }
    const t = await this.store.getJoinToken(tokenId);
    const problem = t ? joinTokenProblem(t, Date.now()) : NOT_A_JOIN_TOKEN;
    if (problem) throw new TaktError('unauthorized', problem);
    return { kind: 'join', tokenId };
  }
}

/** The author recorded on changes made by this principal. */
export function authorOf(p: Principal): string {
  return p.kind === 'admin' ? p.name : p.kind === 'user' ? `user:${p.name}` : p.kind === 'machine' ? `machine:${p.machineId}` : p.kind === 'join' ? `join:${p.tokenId}` : `discovery:${p.mac}`;
}

/**
 * The machine a machine principal is limited to, or null for the admin. A join token has no machine
 * (routes for machines never take it; this refuses it again, should one be declared by mistake).
 */
export function machineScope(p: Principal): string | null {
  if (p.kind === 'join') throw new TaktError('forbidden', JOIN_TOKEN_SCOPE);
  if (p.kind === 'discovery') throw new TaktError('forbidden', DISCOVERY_SCOPE);
  return p.kind === 'machine' ? p.machineId : null;
}

/**
 * For a machine principal, `ref` (an id or a name from the URL) must name its own machine: anything else,
 * another machine or none, is the same 403, so a machine token cannot probe which machines exist.
 * The admin passes. Reads only the caller's own machine.
 */
export async function requireOwnMachineRef(p: Principal, ref: string, store: Pick<Store, 'getMachine'>): Promise<void> {
  if (p.kind === 'join') throw new TaktError('forbidden', JOIN_TOKEN_SCOPE);
  if (p.kind === 'discovery') throw new TaktError('forbidden', DISCOVERY_SCOPE);
  if (p.kind !== 'machine' || ref === p.machineId) return;
  const own = await store.getMachine(p.machineId);
  if (own?.name !== ref) throw new TaktError('forbidden', 'a machine token can only read and act on its own machine and its jobs');
}

export function requireOwnMachine(p: Principal, machineId: string): void {
  if (p.kind === 'join') throw new TaktError('forbidden', JOIN_TOKEN_SCOPE);
  if (p.kind === 'discovery') throw new TaktError('forbidden', DISCOVERY_SCOPE);
  if (p.kind === 'machine' && p.machineId !== machineId) {
    throw new TaktError('forbidden', 'a machine token can only read and act on its own machine and its jobs');
  }
}
