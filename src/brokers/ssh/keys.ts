/**
 * SSH key material: host key fingerprints and the private keys of `ssh-key` credentials. Fingerprints are
 * the SHA-256 of the public key blob in the SSH wire format (RFC 4253 § 6.6), base64 without padding and
 * prefixed `SHA256:` — exactly what `ssh-keygen -lf` and OpenSSH's "host key changed" warning print.
 */
import { createHash } from 'node:crypto';
import ssh2 from 'ssh2';
import { TaktError } from '../../model/errors.js';
import type { HostKey } from '../../model/ssh.js';

/** `SHA256:…` of a public key blob (wire format). */
export function fingerprintOf(blob: Buffer): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

/**
 * The key type a public key blob declares (its first string: uint32 length, then the name).
 * @throws TaktError bad_request when the blob is not one.
 */
export function keyTypeOf(blob: Buffer): string {
  if (blob.length < 4) throw new TaktError('bad_request', 'not an SSH public key blob');
  const len = blob.readUInt32BE(0);
  if (len < 1 || len > 64 || 4 + len > blob.length) throw new TaktError('bad_request', 'not an SSH public key blob');
  const type = blob.subarray(4, 4 + len).toString('latin1');
  if (!/^[a-z0-9@.-]+$/.test(type)) throw new TaktError('bad_request', 'not an SSH public key blob');
  return type;
}

/** A host key as pinned, from the blob the server offered. */
export function hostKeyOf(blob: Buffer): HostKey {
  return { type: keyTypeOf(blob), fingerprint: fingerprintOf(blob) };
}

/**
 * The signature algorithms to offer when only `type` may be accepted: a pinned key's type, so a host with
 * several host keys presents the pinned one (as OpenSSH prefers known key types).
 */
export function hostKeyAlgorithms(type: string): string[] {
  return type === 'ssh-rsa' ? ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'] : [type];
}

export interface PrivateKeyInfo {
  keyType: string;
  fingerprint: string;
  /** authorized_keys line: `type base64 comment`. */
  publicKey: string;
}

/** True when ssh2 could not read the key because it is encrypted and no (or a wrong) passphrase was given. */
export function needsPassphrase(err: Error): boolean {
  return /passphrase|encrypted/i.test(err.message);
}

/**
 * Reads a private key (OpenSSH, PEM PKCS#1/PKCS#8 or PuTTY format, as ssh2 reads them) and describes its
 * public half. `comment` goes in the authorized_keys line.
 * @throws TaktError invalid (at `path`) naming what is wrong; never quoting the key.
 */
export function describePrivateKey(text: string, passphrase: string | undefined, comment: string, path = '/privateKey'): PrivateKeyInfo {
  let parsed: ReturnType<typeof ssh2.utils.parseKey>;
  try {
    parsed = ssh2.utils.parseKey(text, passphrase);
  } catch (err) {
    parsed = err as Error;
  }
  if (Array.isArray(parsed)) parsed = parsed[0] ?? new Error('no key in the file');
  if (parsed instanceof Error) {
    // ssh2's messages name the format problem ("Unsupported key format", "… no passphrase given"); they
    // never contain the key itself.
    const why = needsPassphrase(parsed) ? (passphrase ? 'the passphrase does not open it' : 'it is encrypted and needs its passphrase') : parsed.message;
    throw new TaktError('invalid', `not a private key takt can use: ${why}`, { path: passphrase && needsPassphrase(parsed) ? '/passphrase' : path });
  }
  if (!parsed.isPrivateKey()) throw new TaktError('invalid', 'this is a public key; give the private key (the file without .pub)', { path });
  const blob = parsed.getPublicSSH();
  const keyType = keyTypeOf(blob);
  return { keyType, fingerprint: fingerprintOf(blob), publicKey: `${keyType} ${blob.toString('base64')} ${comment}` };
}
