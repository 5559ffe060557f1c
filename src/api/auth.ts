/**
 * Who is calling: the admin (token in the data dir) or one machine (its own token, scoped to itself and
 * its jobs). Every API route but /health requires one of them.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { TaktError } from '../model/errors.js';
import { machineIdFromToken } from '../model/protocol.js';
import type { Store } from '../store/store.js';

export type Principal = { kind: 'admin'; name: string } | { kind: 'machine'; machineId: string };

const digest = (s: string) => createHash('sha256').update(s).digest();

export class Authenticator {
  private readonly adminDigest: Buffer;

  constructor(
    adminToken: string,
    private readonly store: Store,
  ) {
    this.adminDigest = digest(adminToken);
  }

  async authenticate(header: string | undefined): Promise<Principal> {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
    if (!m) throw new TaktError('unauthorized', 'missing bearer token: pass --token, set TAKT_TOKEN, or send "Authorization: Bearer <token>"');
    const token = m[1]!;
    const presented = digest(token);
    if (timingSafeEqual(presented, this.adminDigest)) return { kind: 'admin', name: 'admin' };
    const machineId = machineIdFromToken(token);
    if (machineId) {
      const hash = await this.store.getMachineTokenHash(machineId);
      if (hash && timingSafeEqual(Buffer.from(hash, 'hex'), presented)) return { kind: 'machine', machineId };
    }
    throw new TaktError('unauthorized', 'token not accepted: it is not the admin token nor the token of an existing machine');
  }
}

/** The author recorded on changes made by this principal. */
export function authorOf(p: Principal): string {
  return p.kind === 'admin' ? p.name : `machine:${p.machineId}`;
}

/** The machine a machine principal is limited to, or null for the admin. */
export function machineScope(p: Principal): string | null {
  return p.kind === 'machine' ? p.machineId : null;
}

export function requireOwnMachine(p: Principal, machineId: string): void {
  if (p.kind === 'machine' && p.machineId !== machineId) {
    throw new TaktError('forbidden', 'a machine token can only read and act on its own machine and its jobs');
  }
}
