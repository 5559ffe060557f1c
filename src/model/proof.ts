/**
 * How the CLI checks, before sending an admin token it read from a data dir, that the server it is about
 * to send it to is that data dir's `takt serve`: it sends a random challenge on the unauthenticated
 * `GET /api/v1/health?challenge=…`, and only a server that holds the same admin token can answer with
 * HMAC-SHA256(admin token, PROOF_CONTEXT + challenge) (RFC 2104). The token itself never leaves the CLI
 * until the answer matches; the context string keeps the MAC from meaning anything anywhere else.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

const PROOF_CONTEXT = 'takt endpoint proof v1\n';

/** A challenge: 16–128 characters of base64url (what `newChallenge` makes is 32). */
export const CHALLENGE_PATTERN = /^[A-Za-z0-9_-]{16,128}$/;

/** A fresh random challenge (24 bytes, base64url). */
export function newChallenge(): string {
  return randomBytes(24).toString('base64url');
}

/** The proof for `challenge` from whoever holds `adminToken`: HMAC-SHA256, base64url. */
export function endpointProof(adminToken: string, challenge: string): string {
  return createHmac('sha256', adminToken).update(PROOF_CONTEXT + challenge).digest('base64url');
}

/** Whether `proof` (from a server's answer; any value) is the proof for `challenge` by `adminToken`, compared in constant time. */
export function proofMatches(adminToken: string, challenge: string, proof: unknown): boolean {
  if (typeof proof !== 'string') return false;
  const want = Buffer.from(endpointProof(adminToken, challenge));
  const got = Buffer.from(proof);
  return got.length === want.length && timingSafeEqual(got, want);
}
