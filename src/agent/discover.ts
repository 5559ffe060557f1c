/**
 * The agent's side of discovery: in a boot environment takt booted (the `discovery` bootenv), the kernel
 * command line carries the endpoint's API URL, its CA fingerprint and a discovery credential
 * (render/bootscript.ts boot.api, boot.ca, boot.token). The agent trusts the CA whose certificate has that
 * fingerprint — fetched from the endpoint's own TLS handshake and checked before anything is sent —
 * registers with the credential (engine/join.ts discover), and keeps the machine token it gets. Then the
 * same agent as everywhere runs (`takt agent`). Trust model: docs/provisioning.md § Trust.
 */
import { X509Certificate } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, type PeerCertificate } from 'node:tls';
import { backoffMs, NetworkError, sleep } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import { registerHost, type Registration } from './register.js';

/** What a discovery boot's kernel command line says. */
export interface DiscoveryParams {
  /** https URL of the endpoint's API. */
  api: string;
  /** SHA-256 fingerprint of the endpoint's CA certificate, upper-case hex pairs joined by colons. */
  ca: string;
  /** The discovery credential. */
  token: string;
}

/**
 * `takt.api=`, `takt.ca=` and `takt.token=` from a kernel command line (space-separated words).
 * @throws TaktError bad_request naming what is missing or malformed.
 */
export function parseDiscoveryCmdline(cmdline: string): DiscoveryParams {
  const words = new Map<string, string>();
  for (const w of cmdline.trim().split(/\s+/)) {
    const m = /^takt\.(api|ca|token)=(.+)$/.exec(w);
    if (m) words.set(m[1]!, m[2]!);
  }
  const missing = ['api', 'ca', 'token'].filter((k) => !words.get(k));
  if (missing.length > 0) {
    throw new TaktError('bad_request', `the kernel command line has no ${missing.map((k) => `takt.${k}=`).join(', ')}: this is not a takt discovery boot, or its bootenv's cmdline does not pass {{ boot.${missing[0]} }}`);
  }
  const api = words.get('api')!;
  if (!/^https:\/\/[^\s/]+$/.test(api)) throw new TaktError('bad_request', `takt.api=${api} is not an https origin (https://HOST:PORT): discovery registers over TLS only`);
  const ca = normalizeFingerprint(words.get('ca')!);
  if (!ca) throw new TaktError('bad_request', `takt.ca=${words.get('ca')} is not a SHA-256 fingerprint (64 hex digits, colons allowed)`);
  return { api, ca, token: words.get('token')! };
}

/** A SHA-256 fingerprint as Node prints it (`AB:CD:…`), from any case with or without colons; null if not one. */
export function normalizeFingerprint(text: string): string | null {
  const hex = text.replace(/:/g, '').toUpperCase();
  return /^[0-9A-F]{64}$/.test(hex) ? hex.match(/../g)!.join(':') : null;
}

/**
 * The PEM of the certificate with fingerprint `fingerprint` in the chain `api` serves. The handshake is not
 * trusted for anything but carrying that certificate: what comes back is checked by its fingerprint, and
 * the registration that follows verifies the server against it as its only CA.
 * @throws TaktError unavailable when the chain has no such certificate (another endpoint, or a
 *   machine in the middle); NetworkError when the endpoint cannot be reached.
 */
export async function fetchPinnedCa(api: string, fingerprint: string, timeoutMs = 10_000): Promise<string> {
  const u = new URL(api);
  const chain = await new Promise<PeerCertificate[]>((resolve, reject) => {
    const sock = connect({ host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 443), rejectUnauthorized: false, servername: /^[\d.]+$|:/.test(u.hostname) ? undefined : u.hostname });
    const timer = setTimeout(() => sock.destroy(new Error(`no TLS handshake within ${timeoutMs} ms`)), timeoutMs);
    sock.once('secureConnect', () => {
      const out: PeerCertificate[] = [];
      let c: PeerCertificate | undefined = sock.getPeerCertificate(true);
      // The chain links by issuerCertificate and ends at a self-signed one that points to itself.
      for (let i = 0; c && c.raw && i < 10; i++) {
        out.push(c);
        const next: PeerCertificate | undefined = (c as { issuerCertificate?: PeerCertificate }).issuerCertificate;
        if (!next || next === c || next.fingerprint256 === c.fingerprint256) break;
        c = next;
      }
      clearTimeout(timer);
      sock.end();
      resolve(out);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(new NetworkError(`cannot reach ${api}: ${err.message}`));
    });
  });
  const found = chain.find((c) => c.fingerprint256 === fingerprint);
  if (!found) {
    throw new TaktError('unavailable', `${api} does not present the CA with fingerprint ${fingerprint} (it showed ${chain.map((c) => c.fingerprint256).join(', ') || 'no certificate'}): it is another endpoint, or something in between`);
  }
  return new X509Certificate(found.raw).toString();
}

/**
 * Registers this machine from its discovery boot: trusts the pinned CA, registers with the credential,
 * writes `<dir>/ca.pem` and `<dir>/token` (0600). Network failures are retried with backoff (the network
 * may still be coming up) until `deadlineMs` has passed; an answer from the endpoint is final.
 */
export async function discoverHost(p: DiscoveryParams, dir: string, agentVersion: string | null, deadlineMs = 120_000, log: (msg: string) => void = () => undefined): Promise<Registration> {
  const until = Date.now() + deadlineMs;
  await mkdir(dir, { recursive: true, mode: 0o700 });
  for (let attempt = 0; ; attempt++) {
    try {
      const ca = await fetchPinnedCa(p.api, p.ca);
      await writeFile(join(dir, 'ca.pem'), ca, { mode: 0o644 });
      return await registerHost({ endpoint: p.api, ca }, p.token, join(dir, 'token'), agentVersion);
    } catch (err) {
      if (!(err instanceof NetworkError) || Date.now() >= until) throw err;
      log(`discovery: ${err.message}; trying again`);
      await sleep(backoffMs(attempt, 500, 5_000));
    }
  }
}
