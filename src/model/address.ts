/** Addresses: what counts as this host only. */
import { isIP } from 'node:net';

/**
 * True only for addresses no other host can reach: an IPv4 literal in 127.0.0.0/8, `::1` (bracketed or
 * not), or the name `localhost`. Any other name is false, however it starts (`127.evil.test`,
 * `127.0.0.1.nip.io` resolve wherever their owner likes); callers that listen on `localhost` bind
 * 127.0.0.1 itself (see `loopbackBindAddress`).
 */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return /^(0{0,4}:){7}0{0,3}1$|^::1$/.test(h) || h === '0:0:0:0:0:0:0:1';
  return false;
}

/** What to bind for a listen host: `localhost` becomes 127.0.0.1 (a hosts file cannot move it), others as given. */
export function loopbackBindAddress(host: string): string {
  return host.toLowerCase() === 'localhost' ? '127.0.0.1' : host;
}
