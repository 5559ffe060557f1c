/**
 * The endpoint's TLS material: its own certificate authority and a server certificate it issues, kept in
 * `<data>/tls/` (dir 0700, files 0600), or an operator's certificate and key.
 *
 *   tls/ca.pem, tls/ca.key          the endpoint's CA (ECDSA P-256, 10 years); agents trust only it
 *   tls/server.pem, tls/server.key  the server certificate (90 days) the CA issued, for every name and
 *                                   address the endpoint is reached at (subjectAltName, RFC 5280 §4.2.1.6)
 *
 * The server key is made once and kept across renewals, so a public-key pin (`curl --pinnedpubkey
 * sha256//…`, the hash of the certificate's SubjectPublicKeyInfo as in RFC 7469 §2.4) stays valid when the
 * certificate is re-issued: for a new expiry, or for a name or address added later (the netns bridge).
 *
 * An operator certificate (`--tls-cert/--tls-key`) is served on the listeners clients use; the endpoint's
 * own CA still signs what it serves to the machines it starts itself (the netns bridge listener), whose
 * address an operator certificate cannot be expected to name.
 */
import { createHash, createPrivateKey, createPublicKey, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { rootCertificates } from 'node:tls';
import { join } from 'node:path';
// @peculiar/x509 resolves its ASN.1 codecs through tsyringe, which needs the Reflect metadata polyfill loaded first.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { TaktError } from '../model/errors.js';
import { isValidHost } from '../model/host.js';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALG: webcrypto.EcKeyGenParams & webcrypto.EcdsaParams = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
const DAY = 24 * 3600_000;
/** A server certificate's life, and how long before its end it is re-issued. */
export const SERVER_CERT_DAYS = 90;
export const RENEW_BEFORE_DAYS = 30;
const CA_YEARS = 10;

/** What a listener serves and what clients pin. */
export interface TlsMaterial {
  /** PEM: the server certificate, followed by the CA's when the endpoint issued it. */
  cert: string;
  /** PEM (PKCS#8): the server key. */
  key: string;
  /** PEM: the endpoint's CA certificate (the only one its agents trust). */
  caPem: string;
  /** SHA-256 of the CA certificate (DER), upper-case hex in colon-separated pairs, as `openssl x509 -fingerprint -sha256` prints it. */
  caFingerprint: string;
  /** `sha256//<base64>`: SHA-256 of the served certificate's SubjectPublicKeyInfo (curl's --pinnedpubkey format). */
  spkiPin: string;
  /** When the served certificate stops being valid (ISO 8601). */
  notAfter: string;
  /** The subjectAltNames it carries (DNS names and IP addresses). */
  names: string[];
}

export interface TlsOptions {
  /** The data dir; material lives in `<dir>/tls`. */
  dataDir: string;
  /** Names and addresses the certificate must carry (hostname, listen addresses, --tls-san). */
  names: string[];
  /** Operator files served instead of an issued certificate (both or neither). */
  certFile?: string;
  keyFile?: string;
  log?: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
  /** Injected clock (tests). */
  now?: () => Date;
}

/** `sha256//<base64>` of a PEM certificate's public key (RFC 7469 §2.4; curl --pinnedpubkey). */
export function spkiPinOf(certPem: string): string {
  const der = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' });
  return `sha256//${createHash('sha256').update(der).digest('base64')}`;
}

/** One spelling per address: IPv6 fully expanded without leading zeros (`::1` → `0:0:0:0:0:0:0:1`), as Node prints SANs. */
export function canonicalName(name: string): string {
  const n = name.replace(/^\[|\]$/g, '').toLowerCase();
  if (isIP(n) !== 6) return n;
  const [head, tail] = n.includes('::') ? n.split('::') as [string, string] : [n, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  // An embedded IPv4 tail (::ffff:1.2.3.4) is two groups.
  const groups = (parts: string[]) =>
    parts.flatMap((p) => (p.includes('.') ? ((b) => [((b[0]! << 8) | b[1]!).toString(16), ((b[2]! << 8) | b[3]!).toString(16)])(p.split('.').map(Number)) : [p]));
  const hg = groups(h);
  const tg = groups(t);
  const all = tail === undefined ? hg : [...hg, ...Array(8 - hg.length - tg.length).fill('0'), ...tg];
  return all.map((g) => parseInt(g, 16).toString(16)).join(':');
}

/** Splits `names` into the DNS and IP entries of a subjectAltName; drops wildcard addresses. */
export function sanEntries(names: readonly string[]): Array<{ type: 'dns' | 'ip'; value: string }> {
  const out: Array<{ type: 'dns' | 'ip'; value: string }> = [];
  const seen = new Set<string>();
  for (const raw of names) {
    const n = raw.replace(/^\[|\]$/g, '').toLowerCase();
    if (n === '' || n === '0.0.0.0' || n === '::' || seen.has(canonicalName(n))) continue;
    seen.add(canonicalName(n));
    out.push({ type: isIP(n) ? 'ip' : 'dns', value: n });
  }
  return out;
}

/** `--tls-cert` and `--tls-key` go together. @throws TaktError bad_request when only one is given. */
export function checkTlsFlags(certFile: string | undefined, keyFile: string | undefined): void {
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new TaktError('bad_request', '--tls-cert and --tls-key go together: give both, or neither (the endpoint then issues its own)');
  }
}

/** A DNS name a certificate may carry (RFC 1123 labels), or an IP literal. Throws with the flag's name otherwise. */
export function checkSanName(name: string, flag = '--tls-san'): void {
  // A certificate may also name every host of a domain (`*.example.org`, RFC 6125 §6.4.3).
  if (!isValidHost(name.replace(/^\*\./, ''))) {
    throw new TaktError('bad_request', `${flag} '${name}' is not a DNS name or IP address`);
  }
}

/**
 * Loads the endpoint's TLS material, creating what is missing and re-issuing the server certificate when
 * it is near its end or lacks a wanted name. One instance per endpoint; listeners re-read `material` (and
 * `internal`) after `ensure` reports a change.
 */
export class TlsManager {
  private readonly dir: string;
  private readonly names = new Set<string>();
  private readonly now: () => Date;
  private issued: TlsMaterial | null = null;
  private operator: TlsMaterial | null = null;
  private readonly listeners: Array<() => void> = [];

  constructor(private readonly opts: TlsOptions) {
    this.dir = join(opts.dataDir, 'tls');
    this.now = opts.now ?? (() => new Date());
    for (const n of opts.names) this.names.add(n.replace(/^\[|\]$/g, '').toLowerCase());
    checkTlsFlags(opts.certFile, opts.keyFile);
  }

  /** What the listeners clients use serve: the operator's certificate when given, else the issued one. */
  get material(): TlsMaterial {
    const m = this.operator ?? this.issued;
    if (!m) throw new TaktError('internal', 'TLS material used before TlsManager.ensure()');
    return m;
  }

  /** What the endpoint serves to machines it starts itself (always issued by its own CA). */
  get internal(): TlsMaterial {
    if (!this.issued) throw new TaktError('internal', 'TLS material used before TlsManager.ensure()');
    return this.issued;
  }

  /** Calls `fn` whenever the served material changes (a renewal or a new name). */
  onChange(fn: () => void): void {
    this.listeners.push(fn);
  }

  /**
   * Makes sure the CA and a valid server certificate for every wanted name exist; `extra` adds names
   * (kept for later renewals). Re-issues (same key) when needed and tells the listeners. Idempotent.
   * Throws TaktError('bad_request') for unreadable or mismatched operator files.
   */
  async ensure(extra: readonly string[] = []): Promise<boolean> {
    for (const n of extra) this.names.add(n.replace(/^\[|\]$/g, '').toLowerCase());
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    chmodSync(this.dir, 0o700);
    const ca = await this.loadOrCreateCa();
    const serverKey = await this.loadOrCreateKey(join(this.dir, 'server.key'));
    let changed = false;
    const certPath = join(this.dir, 'server.pem');
    const wanted = sanEntries([...this.names]);
    let current = existsSync(certPath) ? readFileSync(certPath, 'utf8') : null;
    if (current && (this.needsRenewal(current, wanted.map((e) => e.value)) || !samePublicKey(current, serverKey.pem) || !issuedBy(current, ca.pem))) current = null;
    if (!current) {
      current = await this.issue(ca, serverKey, wanted);
      writeSecret(certPath, current);
      changed = this.issued !== null;
      this.opts.log?.('info', 'TLS: issued the server certificate', { names: wanted.map((e) => e.value), days: SERVER_CERT_DAYS });
    }
    this.issued = materialOf(current, serverKey.pem, ca.pem);
    if (this.opts.certFile && this.opts.keyFile) {
      const before = this.operator?.notAfter;
      this.operator = loadOperator(this.opts.certFile, this.opts.keyFile);
      if (before !== undefined && before !== this.operator.notAfter) changed = true;
      const left = (Date.parse(this.operator.notAfter) - this.now().getTime()) / DAY;
      if (left < RENEW_BEFORE_DAYS) this.opts.log?.('warn', `TLS: the certificate in ${this.opts.certFile} expires in ${Math.max(0, Math.floor(left))} days; replace it (the endpoint re-reads it daily)`);
    }
    if (changed) for (const fn of this.listeners) fn();
    return changed;
  }

  /** Re-checks expiry (and operator files) every `everyMs`; returns a stop function. */
  watch(everyMs = 12 * 3600_000): () => void {
    const t = setInterval(() => {
      this.ensure().catch((err: unknown) => this.opts.log?.('error', 'TLS: renewal failed; the current certificate stays in use', { error: (err as Error).message }));
    }, everyMs);
    t.unref();
    return () => clearInterval(t);
  }

  private needsRenewal(pem: string, names: string[]): boolean {
    const cert = new X509Certificate(pem);
    if (Date.parse(cert.validTo) - this.now().getTime() < RENEW_BEFORE_DAYS * DAY) return true;
    const have = new Set(sansOf(cert));
    return names.some((n) => !have.has(canonicalName(n)));
  }

  private async loadOrCreateCa(): Promise<{ pem: string; key: CryptoKey; cert: x509.X509Certificate }> {
    const certPath = join(this.dir, 'ca.pem');
    const keyPath = join(this.dir, 'ca.key');
    if (existsSync(certPath) && existsSync(keyPath)) {
      const pem = readFileSync(certPath, 'utf8');
      const key = await importPrivate(readFileSync(keyPath, 'utf8'));
      const left = (Date.parse(new X509Certificate(pem).validTo) - this.now().getTime()) / DAY;
      if (left < 365) this.opts.log?.('warn', `TLS: the endpoint's CA expires in ${Math.max(0, Math.floor(left))} days; see docs/remote.md (rotating the CA)`);
      return { pem, key, cert: new x509.X509Certificate(pem) };
    }
    const keys = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
    const now = this.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serial(),
      name: `CN=takt endpoint CA ${randomBytes(4).toString('hex')}`,
      notBefore: new Date(now.getTime() - 3600_000),
      notAfter: new Date(now.getTime() + CA_YEARS * 365 * DAY),
      signingAlgorithm: ALG,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    const pem = cert.toString('pem') + '\n';
    // Key first: a CA certificate without its key on disk would be a CA nobody can issue from.
    writeSecret(keyPath, await exportPrivate(keys.privateKey));
    writeSecret(certPath, pem);
    this.opts.log?.('info', 'TLS: created the endpoint CA', { fingerprint: new X509Certificate(pem).fingerprint256 });
    return { pem, key: keys.privateKey, cert };
  }

  private async loadOrCreateKey(path: string): Promise<{ pem: string; pair: CryptoKeyPair }> {
    if (existsSync(path)) {
      const pem = readFileSync(path, 'utf8');
      return { pem, pair: { privateKey: await importPrivate(pem), publicKey: await importPublic(pem) } };
    }
    const pair = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
    const pem = await exportPrivate(pair.privateKey);
    writeSecret(path, pem);
    return { pem, pair };
  }

  private async issue(ca: { key: CryptoKey; cert: x509.X509Certificate }, server: { pair: CryptoKeyPair }, names: Array<{ type: 'dns' | 'ip'; value: string }>): Promise<string> {
    const now = this.now();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject: `CN=${names.find((n) => n.type === 'dns')?.value ?? 'takt endpoint'}`,
      issuer: ca.cert.subject,
      notBefore: new Date(now.getTime() - 3600_000),
      notAfter: new Date(now.getTime() + SERVER_CERT_DAYS * DAY),
      signingAlgorithm: ALG,
      publicKey: server.pair.publicKey,
      signingKey: ca.key,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        new x509.SubjectAlternativeNameExtension(names.map((n) => ({ type: n.type, value: n.value }))),
        await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
        await x509.SubjectKeyIdentifierExtension.create(server.pair.publicKey),
      ],
    });
    return cert.toString('pem') + '\n';
  }
}

function materialOf(certPem: string, keyPem: string, caPem: string): TlsMaterial {
  const cert = new X509Certificate(certPem);
  return {
    cert: certPem.trimEnd() + '\n' + caPem,
    key: keyPem,
    caPem,
    caFingerprint: new X509Certificate(caPem).fingerprint256,
    spkiPin: spkiPinOf(certPem),
    notAfter: new Date(cert.validTo).toISOString(),
    names: sansOf(cert),
  };
}

/** The operator's certificate chain and key, checked to belong together. */
function loadOperator(certFile: string, keyFile: string): TlsMaterial {
  let certPem: string;
  let keyPem: string;
  try {
    certPem = readFileSync(certFile, 'utf8');
    keyPem = readFileSync(keyFile, 'utf8');
  } catch (err) {
    throw new TaktError('bad_request', `cannot read the TLS certificate or key: ${(err as Error).message}`);
  }
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(certPem);
    createPrivateKey(keyPem);
  } catch (err) {
    throw new TaktError('bad_request', `--tls-cert ${certFile} / --tls-key ${keyFile} is not a PEM certificate and key: ${(err as Error).message}`);
  }
  if (!samePublicKey(certPem, keyPem)) throw new TaktError('bad_request', `--tls-key ${keyFile} is not the key of the certificate in --tls-cert ${certFile}`);
  // What agents that join through this listener trust: the chain's own root when the file carries one (a
  // private CA), else the public roots Node ships (a certificate from a public CA). Node 20 cannot anchor
  // trust on an intermediate, so a private CA's root must be in --tls-cert. The endpoint's own CA (see
  // `internal`) stays for the listeners it serves its own machines on.
  const chain = pemBlocks(certPem).map((p) => new X509Certificate(p));
  const root = chain.find((c) => c.ca && c.checkIssued(c));
  const caPem = root ? root.toString() : rootCertificates.join('\n') + '\n';
  return {
    cert: certPem,
    key: keyPem,
    caPem,
    caFingerprint: root ? root.fingerprint256 : 'public CAs (the root store Node ships)',
    spkiPin: spkiPinOf(certPem),
    notAfter: new Date(leaf.validTo).toISOString(),
    names: sansOf(leaf),
  };
}

/** The PEM blocks of a file, in order. */
function pemBlocks(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

function sansOf(cert: X509Certificate): string[] {
  return (cert.subjectAltName ?? '')
    .split(/,\s*/)
    .map((s) => canonicalName(s.replace(/^(DNS|IP Address):/, '')))
    .filter(Boolean);
}

function samePublicKey(certPem: string, keyPem: string): boolean {
  const a = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' });
  const b = createPublicKey(keyPem).export({ type: 'spki', format: 'der' });
  return a.equals(b);
}

function issuedBy(certPem: string, caPem: string): boolean {
  return new X509Certificate(certPem).verify(new X509Certificate(caPem).publicKey);
}

const serial = () => '01' + randomBytes(15).toString('hex');

async function exportPrivate(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n?$/, '\n')}-----END PRIVATE KEY-----\n`;
}

async function importPrivate(pem: string): Promise<CryptoKey> {
  const der = createPrivateKey(pem).export({ type: 'pkcs8', format: 'der' });
  return webcrypto.subtle.importKey('pkcs8', der, ALG, true, ['sign']);
}

async function importPublic(privatePem: string): Promise<CryptoKey> {
  const der = createPublicKey(privatePem).export({ type: 'spki', format: 'der' });
  return webcrypto.subtle.importKey('spki', der, ALG, true, ['verify']);
}

/** Written whole (temp file, then rename) and 0600: a crash never leaves half a key. */
function writeSecret(path: string, text: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, text, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}
