/**
 * What `takt serve` replicas on one PostgreSQL database must share, and the checks that they do (issue
 * #15). Each replica has a data dir of its own (its own endpoint id, serve lock and machine sandboxes), but
 * all of them must hold the same `secret.key` (it seals the secure values every replica reads), the same
 * `admin.token` (the CLI and UI may reach any replica) and the same CA in `tls/` (agents pin one CA,
 * whichever replica answers). A replica that invented its own would seem to work and then fail to unseal
 * every secret, or be refused by every agent; so the first `takt serve` on a database records a key check
 * value and the CA's fingerprint in the settings table, and every later one is compared with them.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { TaktError } from '../model/errors.js';
import type { Sealer } from '../model/secure.js';
import type { Store } from '../store/store.js';

/** Settings key of the key check value: HMAC-SHA256 of a fixed text under a key derived from secret.key. */
export const KEY_CHECK_SETTING = 'endpoint.keyCheck';
/** Settings key of the endpoint CA's SHA-256 fingerprint (tls/ca.pem, as `openssl x509 -fingerprint -sha256` prints it). */
export const CA_SETTING = 'endpoint.caFingerprint';

/** The files of a data dir every replica must have the same copy of. */
const SHARED_FILES = ['secret.key', 'admin.token', join('tls', 'ca.pem'), join('tls', 'ca.key')];

/** How to fix a replica without the shared keys, said in every refusal. */
function howToCopy(data: string): string {
  return `replicas share secret.key, admin.token and the CA: copy secret.key, admin.token and the tls/ directory from an existing replica's data dir into ${data} (keeping their modes, 0600 files in a 0700 dir), then start again`;
}

/** The key check value for the key `sealer` holds. */
export function keyCheckOf(sealer: Sealer): string {
  return sealer.keyed('key-check')('takt replicas share this key');
}

/**
 * Called before the data dir's keys are read or made: refuses to start on a database other replicas have
 * used (it has a key check) when the data dir lacks any of the shared files, instead of inventing a new
 * key, token or CA. A database no `takt serve` has started on yet passes.
 * @param where the store as logs show it (URL without password).
 * @throws TaktError conflict naming the missing files and what to copy.
 */
export async function refuseMissingShared(store: Store, data: string, where: string): Promise<void> {
  if ((await store.getSetting<string>(KEY_CHECK_SETTING)) === undefined) return;
  const missing = SHARED_FILES.filter((f) => !existsSync(join(data, f)));
  if (missing.length === 0) return;
  throw new TaktError('conflict', `${where} is already used by takt serve with its own keys, but data dir ${data} has no ${missing.join(', ')}: ${howToCopy(data)}`);
}

/**
 * Compares this replica's key and CA with the ones recorded in the database, recording them when none
 * are (the first `takt serve` on the database). One transaction: two replicas starting together on a new
 * database cannot both record theirs (store writers are serialised).
 * @param caFingerprint the fingerprint of the endpoint's own CA (tls/ca.pem), not an operator certificate's.
 * @returns whether this replica recorded them (`recorded`) or matched them (`matched`).
 * @throws TaktError conflict when the data dir's secret.key or CA is not the other replicas'.
 */
export async function checkShared(store: Store, sealer: Sealer, caFingerprint: string, data: string, where: string): Promise<'recorded' | 'matched'> {
  const check = keyCheckOf(sealer);
  return store.transact(async (tx) => {
    const [haveCheck, haveCa] = [await tx.getSetting<string>(KEY_CHECK_SETTING), await tx.getSetting<string>(CA_SETTING)];
    if (haveCheck !== undefined && haveCheck !== check) {
      throw new TaktError('conflict', `${join(data, 'secret.key')} is not the key the other takt serve replicas on ${where} seal secure values with (this one could not open any of them): ${howToCopy(data)}`);
    }
    if (haveCa !== undefined && haveCa !== caFingerprint) {
      throw new TaktError('conflict', `the CA in ${join(data, 'tls')} (sha256 ${caFingerprint}) is not the CA of the other takt serve replicas on ${where} (sha256 ${haveCa}), so agents that trust theirs would refuse this one: ${howToCopy(data)}`);
    }
    if (haveCheck !== undefined && haveCa !== undefined) return 'matched';
    if (haveCheck === undefined) await tx.putSetting(KEY_CHECK_SETTING, check);
    if (haveCa === undefined) await tx.putSetting(CA_SETTING, caFingerprint);
    return 'recorded';
  });
}
