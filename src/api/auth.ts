/**
 * Who is calling: the admin (token in the data dir), one machine (its own token, scoped to itself and
 * its jobs), or a host joining with a join token (only the join routes take it: the install script, the
 * agent bundle and registration), or a machine booted into discovery with the credential its boot script
 * carried (registration only). Every API route but /health requires one of them.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { TaktError } from '../model/errors.js';
import { checkDiscoveryToken, isDiscoveryToken, type KeyedDigest } from '../model/discovery.js';
import { joinTokenIdFromToken, joinTokenProblem } from '../model/join.js';
import { machineIdFromToken } from '../model/protocol.js';
import type { Store } from '../store/store.js';

export type Principal =
  | { kind: 'admin'; name: string }
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

export class Authenticator {
  private readonly adminDigest: Buffer;
  private readonly verified = new Map<string, { digest: Buffer; until: number }>();
  /**
   * Moved by every invalidation: a digest read from the store while one arrived may be the one it
   * invalidates (read before the delete committed, cached after its event), so it is not cached.
   */
  private invalidations = 0;

  /**
   * `discovery`: the endpoint's keyed digest for discovery credentials (Sealer.keyed('discovery')); without
   * it no discovery credential is accepted.
   */
  constructor(
    adminToken: string,
    private readonly store: Store,
    private readonly discovery?: KeyedDigest,
    private readonly now: () => number = Date.now,
  ) {
    this.adminDigest = digest(adminToken);
    store.onEvents((events) => {
      for (const e of events) {
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

  /** `joinRoute`: the request is for a join route, so a token that is not accepted is told as a bad join token. */
  async authenticate(header: string | undefined, joinRoute = false): Promise<Principal> {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
    if (!m) throw new TaktError('unauthorized', 'missing bearer token: pass --token, set TAKT_TOKEN, or send "Authorization: Bearer <token>"');
    const token = m[1]!;
    const presented = digest(token);
    if (timingSafeEqual(presented, this.adminDigest)) return { kind: 'admin', name: 'admin' };
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
  return p.kind === 'admin' ? p.name : p.kind === 'machine' ? `machine:${p.machineId}` : p.kind === 'join' ? `join:${p.tokenId}` : `discovery:${p.mac}`;
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
