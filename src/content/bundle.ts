/**
 * Pack artifacts: one immutable file per version, named `name@version.takt.json`, carrying the pack's
 * files and their sha256. The digest is over the files in canonical order, so the same content always
 * has the same identity whatever machine bundled it.
 */
import { canonicalJson, sha256 } from '../model/hash.js';
import { TaktError } from '../model/errors.js';
import { assertPlainPaths, type PackFiles } from './files.js';

export const BUNDLE_FORMAT = 'takt-pack/1';

export interface Bundle {
  format: typeof BUNDLE_FORMAT;
  name: string;
  version: string;
  sha256: string;
  files: PackFiles;
}

export function packDigest(files: PackFiles): string {
  return sha256(canonicalJson(files));
}

export function makeBundle(name: string, version: string, files: PackFiles): Bundle {
  return { format: BUNDLE_FORMAT, name, version, sha256: packDigest(files), files };
}

export const bundleFileName = (b: Pick<Bundle, 'name' | 'version'>): string => `${b.name}@${b.version}.takt.json`;

/** Parses an artifact and checks it is what it says it is. */
export function readBundle(text: string, where: string): Bundle {
  let b: Partial<Bundle>;
  try {
    b = JSON.parse(text) as Partial<Bundle>;
  } catch {
    throw new TaktError('bad_request', `${where}: not a pack artifact (not JSON); make one with \`takt content bundle DIR\``);
  }
  if (b.format !== BUNDLE_FORMAT || typeof b.files !== 'object' || b.files === null || typeof b.sha256 !== 'string') {
    throw new TaktError('bad_request', `${where}: not a ${BUNDLE_FORMAT} artifact`);
  }
  // A bundle is written to disk again by `takt export`; its paths must stay inside it.
  assertPlainPaths(b.files, where);
  const actual = packDigest(b.files);
  if (actual !== b.sha256) {
    throw new TaktError('bad_request', `${where}: corrupt artifact: its files hash to ${actual.slice(0, 12)}, it claims ${b.sha256.slice(0, 12)}`);
  }
  return b as Bundle;
}
