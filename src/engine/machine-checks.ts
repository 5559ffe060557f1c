/**
 * The checks a machine's desired fields pass before they are written (engine.ts: create, update, import,
 * restore; workorders.ts: a work order's params): references into content (pipeline, profiles, bootenv),
 * params against their schemas and bounds, and the identities only one machine may hold (MAC, SMBIOS UUID,
 * reserved address). Each throws a TaktError with the field's path.
 */
import type { ContentSet } from '../model/content.js';
import { LOCAL_BOOTENV, type MachineBoot } from '../model/boot.js';
import { TaktError } from '../model/errors.js';
import { isSealed, type Sealer } from '../model/secure.js';
import { inexactNumbers, validateValue } from '../model/validate.js';
import type { Tx } from '../store/store.js';

/** At most this many params on one machine or work order. */
export const MAX_PARAMS = 1000;
/**
 * At most this many bytes of params (as JSON, sealed values included) on one machine or work order: a
 * machine travels whole in every list, event, replay and export, so its size bounds all of them. Large
 * files belong in content or images, not in params.
 */
export const MAX_PARAMS_BYTES = 64 * 1024;

/** @throws TaktError too_large naming the bound, when `params` is past MAX_PARAMS or MAX_PARAMS_BYTES. */
export function assertParamsBounded(params: Record<string, unknown>): void {
  const count = Object.keys(params).length;
  if (count > MAX_PARAMS) throw new TaktError('too_large', `${count} params; at most ${MAX_PARAMS} may be set on one machine or work order`, { path: '/params' });
  const bytes = Buffer.byteLength(JSON.stringify(params));
  if (bytes > MAX_PARAMS_BYTES) {
    throw new TaktError('too_large', `the params come to ${bytes} bytes as JSON; at most ${MAX_PARAMS_BYTES} may be set on one machine or work order (large files belong in content, not params)`, { path: '/params' });
  }
}

/** @throws TaktError not_found at /pipeline when `content` has no pipeline `name`. */
export function requirePipeline(content: ContentSet, name: string): void {
  if (!content.objects.pipelines.has(name)) throw new TaktError('not_found', `pipeline '${name}' not found`, { path: '/pipeline' });
}

/** @throws TaktError not_found at /profiles/<i> for the first of `names` that `content` does not have. */
export function requireProfiles(content: ContentSet, names: string[]): void {
  names.forEach((p, i) => {
    if (!content.objects.profiles.has(p)) throw new TaktError('not_found', `profile '${p}' not found`, { path: `/profiles/${i}` });
  });
}

/**
 * `current` with `patch` applied: each name checked, each value validated against its param's schema (no
 * inexact numbers), secure params sealed with `sealer`; a null value in `patch` removes the param. Sealed
 * values (from history: revert, rewind, import) pass as they are.
 * @throws TaktError invalid at /params/<name>[/…]; too_large past MAX_PARAMS or MAX_PARAMS_BYTES.
 */
export function checkParams(sealer: Sealer, content: ContentSet, current: Record<string, unknown>, patch: Record<string, unknown>): Record<string, unknown> {
  const out = { ...current };
  for (const [name, value] of Object.entries(patch)) {
    if (!/^[a-z][a-z0-9_]*$/.test(name) || name === 'machine') {
      throw new TaktError('invalid', `'${name}' is not a valid param name (lower-case letters, digits and _; not 'machine')`, { path: `/params/${name}` });
    }
    if (value === null) {
      delete out[name];
      continue;
    }
    // A sealed value comes back from history (revert/rewind/import): it was validated before it was sealed.
    if (isSealed(value)) {
      out[name] = value;
      continue;
    }
    const def = content.objects.params.get(name)?.def;
    // Checked whatever the schema: a rounded integer must not be stored as if the operator had set it.
    const inexact = inexactNumbers(value);
    if (inexact.length > 0) throw new TaktError('invalid', `param '${name}'${inexact[0]!.path}: ${inexact[0]!.message}`, { path: `/params/${name}${inexact[0]!.path}` });
    if (def?.schema) {
      const problems = validateValue(def.schema, value);
      if (problems.length > 0) {
        throw new TaktError('invalid', `param '${name}'${problems[0]!.path} ${problems[0]!.message}`, { path: `/params/${name}${problems[0]!.path}` });
      }
    }
    out[name] = def?.secure ? sealer.seal(value) : value;
  }
  assertParamsBounded(out);
  return out;
}

/**
 * `boot`, after checking its bootenv exists in `content` (or is the built-in `local`).
 * @throws TaktError not_found at /boot/bootenv, with the bootenvs there are.
 */
export function requireBootenv(content: ContentSet, boot: MachineBoot): MachineBoot {
  if (boot.bootenv === LOCAL_BOOTENV || content.objects.bootenvs.has(boot.bootenv)) return boot;
  const known = [LOCAL_BOOTENV, ...content.objects.bootenvs.keys()].sort().join(', ');
  throw new TaktError('not_found', `bootenv '${boot.bootenv}' not found (there are: ${known}); install the pack that defines it`, { path: '/boot/bootenv' });
}

/**
 * A MAC or SMBIOS UUID boots one machine only: the boot service must never hand one machine's script to
 * another; a reserved address (boot.ip) is one machine's too. Checked inside the transaction that writes `boot`.
 * @throws TaktError conflict naming the machine that already boots as it.
 */
export async function assertBootIdentityFree(tx: Tx, boot: MachineBoot, selfId: string): Promise<void> {
  for (const other of await tx.listMachinesWithBootText([...boot.macs, ...(boot.uuid ? [boot.uuid] : []), ...(boot.ip ? [`"ip":"${boot.ip}"`] : [])])) {
    if (other.id === selfId || !other.boot) continue;
    if (boot.ip !== undefined && boot.ip === other.boot.ip) {
      throw new TaktError('conflict', `address ${boot.ip} is already reserved for machine '${other.name}'; an address belongs to one machine`, { path: '/boot/ip' });
    }
    const mac = boot.macs.find((x) => other.boot!.macs.includes(x));
    if (mac) throw new TaktError('conflict', `MAC ${mac} already boots machine '${other.name}'; a MAC belongs to one machine`, { path: '/boot/macs' });
    if (boot.uuid !== null && boot.uuid === other.boot.uuid) {
      throw new TaktError('conflict', `SMBIOS UUID ${boot.uuid} already boots machine '${other.name}'`, { path: '/boot/uuid' });
    }
  }
}

/** @throws TaktError not_found (at /ssh/credential) when no credential of that name exists. */
export async function requireCredential(tx: Tx, name: string): Promise<void> {
  if (!(await tx.getCredential(name))) throw new TaktError('not_found', `credential '${name}' not found; add it with \`takt credentials add ${name} --ssh-key FILE\``, { path: '/ssh/credential' });
}
