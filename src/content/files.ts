/**
 * A content pack on disk: `pack.yaml` plus one YAML file per object under the kind directories.
 * Reading only collects text; every judgement about the files (misplaced, malformed) is lint's, so a
 * pack read from disk and one uploaded as a bundle are checked the same way.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CONTENT_KINDS, type ContentKind } from '../model/content.js';
import { TaktError } from '../model/errors.js';

/** Relative posix path → file text. */
export type PackFiles = Record<string, string>;

export const MANIFEST_FILE = 'pack.yaml';
export const MAX_PACK_BYTES = 8 * 1024 * 1024;
const YAML_EXT = /\.ya?ml$/;
/** Not part of the pack: documentation, VCS and tool directories. */
const SKIP_DIRS = /^(\.|node_modules$|docs?$)/i;
/** Deep enough to find a misplaced object file (e.g. tasks/extra/x.yaml); a pack is a shallow tree. */
const MAX_DEPTH = 3;

/** Where an object file belongs: `tasks/foo.yaml` → { kind: 'tasks', name: 'foo' }; undefined elsewhere. */
export function objectFileOf(path: string): { kind: ContentKind; name: string } | undefined {
  const m = /^([^/]+)\/([^/]+)\.ya?ml$/.exec(path);
  if (!m || !(CONTENT_KINDS as readonly string[]).includes(m[1]!)) return undefined;
  return { kind: m[1] as ContentKind, name: m[2]! };
}

export function isYamlFile(path: string): boolean {
  return YAML_EXT.test(path);
}

/**
 * Reads a pack directory: pack.yaml and every YAML file in it (object files and misplaced ones, which
 * lint reports), skipping docs and dot-directories. Refuses a missing directory or pack.yaml and a pack
 * over 8 MiB.
 */
export async function readPackDir(dir: string): Promise<PackFiles> {
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) throw new TaktError('bad_request', `${dir}: not a directory (a content pack is a directory with a pack.yaml)`);
  const manifest = await stat(join(dir, MANIFEST_FILE)).catch(() => undefined);
  if (!manifest?.isFile()) {
    throw new TaktError('bad_request', `${dir}: no ${MANIFEST_FILE} (a content pack starts with pack.yaml: name, version, description)`, {
      path: join(dir, MANIFEST_FILE),
    });
  }

  const files: PackFiles = {};
  let total = 0;
  const walk = async (rel: string, depth: number): Promise<void> => {
    const entries = await readdir(join(dir, rel), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      // Symlinked files are read (a pack may share a file); symlinked directories are not followed (loops).
      const isFile = e.isFile() || (e.isSymbolicLink() && (await stat(join(dir, path)).catch(() => undefined))?.isFile() === true);
      if (e.isDirectory()) {
        if (!SKIP_DIRS.test(e.name) && depth < MAX_DEPTH) await walk(path, depth + 1);
      } else if (isFile && isYamlFile(e.name)) {
        const size = (await stat(join(dir, path))).size;
        total += size;
        if (total > MAX_PACK_BYTES) {
          throw new TaktError('bad_request', `${dir}: the pack's YAML files exceed ${MAX_PACK_BYTES / 1024 / 1024} MiB`);
        }
        files[path] = await readFile(join(dir, path), 'utf8');
      }
    }
  };
  await walk('', 0);
  return files;
}
