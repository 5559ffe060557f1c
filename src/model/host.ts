/**
 * Host names in URLs takt hands to other hosts (join URLs: `--url`, `--advertise-url`) and the loopback
 * rule for plain HTTP. A join URL ends up in a shell line and a script, so its host is held to IP
 * literals and RFC 1123 names; loopback is decided on IP literals only (a DNS name such as
 * `127.0.0.1.nip.io` may resolve anywhere).
 */
import { isIP } from 'node:net';

/** RFC 1123 §2.1 host name: dot-separated labels of letters, digits and inner hyphens, 1–63 each, ≤ 253 in all. */
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i;

/**
 * Whether `host` (as URL.hostname gives it; an IPv6 literal with or without its brackets) is an IP
 * literal or an RFC 1123 host name. Anything else (`$(id)`, quotes, `;`, `_`) is not.
 */
export function isValidHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1');
  if (isIP(h) !== 0) return true;
  if (h.length === 0 || h.length > 253) return false;
  return h.split('.').every((l) => LABEL.test(l));
}

/**
 * Whether `host` is loopback for the plain-HTTP exception: an IPv4 literal in 127.0.0.0/8, `::1`, or the
 * name `localhost` — never another name, whatever it looks like (`127.evil.test`).
 */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  return isIP(h) === 4 && h.startsWith('127.');
}

/** What to bind for a listen host: `localhost` becomes 127.0.0.1 (a hosts file cannot move it), others as given. */
export function loopbackBindAddress(host: string): string {
  return host.toLowerCase() === 'localhost' ? '127.0.0.1' : host;
}
