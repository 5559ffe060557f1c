/**
 * The discovery credential: what an unknown machine booting takt's `discovery` environment registers
 * with. It comes on the kernel command line of a boot script served without authentication (firmware has
 * no token, and Debian's iPXE no HTTPS), so anyone on the provisioning network can read it: it is made to
 * be worth little (docs/provisioning.md § Trust).
 *
 * - Bound to one MAC address: registering with it needs facts that list that MAC, and it creates or claims
 *   only the machine that boots from that MAC, and only while that machine is in discovery.
 * - Short-lived: it expires DISCOVERY_TOKEN_TTL_MS after the script was rendered.
 * - Stateless: `tkd.<mac, 12 hex>.<expiry, s since the epoch>.<HMAC>`, keyed by the endpoint's
 *   secret.key (Sealer.digest), so a boot storm writes nothing to the store and every replica that shares
 *   the key accepts it. Nothing in it is secret but the HMAC.
 *
 * Pure: the keyed digest is passed in.
 */

/** How long a discovery credential is accepted after its boot script was rendered (ms): 30 min. */
export const DISCOVERY_TOKEN_TTL_MS = 30 * 60_000;

/** HMAC-SHA256 (hex) keyed by the endpoint (Sealer.digest). */
export type KeyedDigest = (text: string) => string;

const TOKEN = /^tkd\.([0-9a-f]{12})\.(\d{1,12})\.([0-9a-f]{64})$/;

function signed(mac12: string, expSec: number): string {
  return `takt discovery v1|${mac12}|${expSec}`;
}

/**
 * A discovery credential for the machine booting from `mac` (`aa:bb:cc:dd:ee:ff`), valid until
 * `nowMs + ttlMs` (rounded up to the second).
 */
export function discoveryToken(digest: KeyedDigest, mac: string, nowMs: number, ttlMs = DISCOVERY_TOKEN_TTL_MS): string {
  const mac12 = mac.toLowerCase().replace(/:/g, '');
  const exp = Math.ceil((nowMs + ttlMs) / 1000);
  return `tkd.${mac12}.${exp}.${digest(signed(mac12, exp))}`;
}

/** Whether `token` has the shape of a discovery credential (cheap; says nothing of its validity). */
export function isDiscoveryToken(token: string): boolean {
  return token.startsWith('tkd.');
}

/** The verdict on a presented discovery credential. */
export type DiscoveryCheck = { ok: true; mac: string; expiresAt: string } | { ok: false; problem: string };

/**
 * Checks `token` at `nowMs`: shape, HMAC (compared in constant time by the caller's digest equality,
 * see `equal`), expiry. The problem text is for the booting machine's console and the endpoint's log.
 */
export function checkDiscoveryToken(digest: KeyedDigest, token: string, nowMs: number, equal: (a: string, b: string) => boolean): DiscoveryCheck {
  const m = TOKEN.exec(token);
  if (!m) return { ok: false, problem: 'not a discovery credential of this endpoint' };
  const [, mac12, expText, mac] = m as unknown as [string, string, string, string];
  const exp = Number(expText);
  if (!equal(digest(signed(mac12, exp)), mac)) return { ok: false, problem: "not a discovery credential of this endpoint (made with another endpoint's secret.key?)" };
  if (exp * 1000 <= nowMs) {
    return { ok: false, problem: `the discovery credential expired at ${new Date(exp * 1000).toISOString()}; boot the machine again (power cycle) to get a new one` };
  }
  return { ok: true, mac: mac12.match(/../g)!.join(':'), expiresAt: new Date(exp * 1000).toISOString() };
}
