/**
 * Credentials the endpoint itself uses to reach machines: SSH private keys, sealed at rest by the
 * endpoint's Sealer (src/model/secure.ts). The clear key exists only inside the endpoint process, for the
 * SSH broker's connections: no answer, event, history entry, export, log line or error carries it.
 * History and events record a credential's name, type and public-key fingerprint only.
 */
import { TaktError } from '../../model/errors.js';
import { NAME_PATTERN } from '../../model/content.js';
import type { Sealer } from '../../model/secure.js';
import type { CredentialRecord, Store } from '../../store/store.js';
import { describePrivateKey } from './keys.js';

/** What a credential looks like from outside: never the key. */
export interface CredentialView {
  name: string;
  kind: CredentialRecord['kind'];
  keyType: string;
  fingerprint: string;
  /** authorized_keys line for the hosts this key should log in to. */
  publicKey: string;
  createdAt: string;
  /** Names of the machines that use it. */
  usedBy: string[];
}

export interface NewCredential {
  name: string;
  kind: 'ssh-key';
  /** The private key file's text. */
  privateKey: string;
  /** Its passphrase, when it is encrypted. */
  passphrase?: string;
}

/** The opened secret, for the SSH broker only. */
export interface SshKeySecret {
  privateKey: string;
  passphrase?: string;
}

/** Bounds: a private key file is a few KiB; an RSA-16384 key in PEM is about 12 KiB. */
export const MAX_PRIVATE_KEY_CHARS = 64 * 1024;
export const MAX_PASSPHRASE_CHARS = 1024;

const NAME = new RegExp(NAME_PATTERN);

export class Credentials {
  constructor(
    private readonly store: Store,
    private readonly sealer: Sealer,
  ) {}

  /**
   * Stores a new credential; the key is checked (it must be a private key that opens with the passphrase
   * given) and sealed before it reaches the store.
   * @throws TaktError invalid (bad name, not a usable key), conflict (the name is taken).
   */
  async add(input: NewCredential, author: string): Promise<CredentialView> {
    if (!NAME.test(input.name)) throw new TaktError('invalid', `'${input.name}' is not a valid credential name (lower-case letters, digits, . _ -; at most 63)`, { path: '/name' });
    if (input.kind !== 'ssh-key') throw new TaktError('invalid', "kind must be 'ssh-key'", { path: '/kind' });
    if (input.privateKey.length > MAX_PRIVATE_KEY_CHARS) throw new TaktError('too_large', `the private key is over ${MAX_PRIVATE_KEY_CHARS} characters`, { path: '/privateKey' });
    const passphrase = input.passphrase === '' ? undefined : input.passphrase;
    const info = describePrivateKey(input.privateKey, passphrase, `takt:${input.name}`);
    const secret: SshKeySecret = { privateKey: input.privateKey, ...(passphrase !== undefined ? { passphrase } : {}) };
    const rec: CredentialRecord = { name: input.name, kind: 'ssh-key', ...info, secret: this.sealer.seal(secret), createdAt: new Date().toISOString() };
    await this.store.transact(async (tx) => {
      if (await tx.getCredential(rec.name)) throw new TaktError('conflict', `a credential named '${rec.name}' already exists; remove it first to replace it`, { path: '/name' });
      await tx.insertCredential(rec);
      await tx.change(author, `credentials/${rec.name}`, 'create', null, recorded(rec));
      tx.emit(`credentials.create.${rec.name}`, recorded(rec));
    });
    return view(rec, []);
  }

  async list(): Promise<CredentialView[]> {
    const recs = await this.store.listCredentials();
    return Promise.all(recs.map(async (r) => view(r, await this.store.credentialUsers(r.name))));
  }

  /** @throws TaktError not_found. */
  async get(name: string): Promise<CredentialView> {
    const r = await this.store.getCredential(name);
    if (!r) throw notFound(name);
    return view(r, await this.store.credentialUsers(name));
  }

  /**
   * Removes a credential no machine uses.
   * @throws TaktError not_found, or conflict naming the machines that still use it.
   */
  async remove(name: string, author: string): Promise<CredentialView> {
    return this.store.transact(async (tx) => {
      const r = await tx.getCredential(name);
      if (!r) throw notFound(name);
      const users = await tx.credentialUsers(name);
      if (users.length) {
        const shown = users.length > 5 ? `${users.slice(0, 5).join(', ')} and ${users.length - 5} more` : users.join(', ');
        throw new TaktError('conflict', `credential '${name}' is used by ${users.length === 1 ? 'machine' : 'machines'} ${shown}; give them another (takt machines update M --ssh-key OTHER) or delete them first`);
      }
      await tx.deleteCredential(name);
      await tx.change(author, `credentials/${name}`, 'delete', recorded(r), null);
      tx.emit(`credentials.delete.${name}`, recorded(r));
      return view(r, []);
    });
  }

  /**
   * The clear key, for the SSH broker's connection. Never pass it anywhere else.
   * @throws TaktError not_found (the machine names a credential that was removed).
   */
  async open(name: string): Promise<SshKeySecret> {
    const r = await this.store.getCredential(name);
    if (!r) throw notFound(name);
    return this.sealer.open(r.secret) as SshKeySecret;
  }
}

/** What history and events keep of a credential. */
function recorded(r: CredentialRecord) {
  return { name: r.name, kind: r.kind, keyType: r.keyType, fingerprint: r.fingerprint };
}

function view(r: CredentialRecord, usedBy: string[]): CredentialView {
  return { name: r.name, kind: r.kind, keyType: r.keyType, fingerprint: r.fingerprint, publicKey: r.publicKey, createdAt: r.createdAt, usedBy };
}

function notFound(name: string): TaktError {
  return new TaktError('not_found', `credential '${name}' not found`);
}
