/**
 * A content pack on disk: `pack.yaml` plus one YAML file per object under the kind directories.
 * Reading only collects text; every judgement about the files (misplaced, malformed) is lint's, so a
 * pack read from disk and one uploaded as a bundle are checked the same way.
 */
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { join, sep } from 'node:path';
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

/** Longest path (and path segment) a pack file may have, in characters. */
const MAX_PATH_CHARS = 1024;
const MAX_SEGMENT_CHARS = 255;

/**
 * Why `path` is not a plain relative path that stays inside its pack, or undefined when it is. A plain
 * path is `seg/seg/...`: no leading `/`, no drive letter, no backslash, no empty, `.` or `..` segment,
 * no NUL or other control character. Everything that writes a pack's files somewhere (`takt export`) or
 * reads them from somewhere relies on this.
 */
export function packPathProblem(path: string): string | undefined {
  if (path.length === 0) return 'is empty';
  if (path.length > MAX_PATH_CHARS) return `is longer than ${MAX_PATH_CHARS} characters`;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(path)) return 'contains a NUL or control character';
  if (path.includes('\\')) return 'contains a backslash (use / between directories)';
  if (path.startsWith('/') || /^[A-Za-z]:/.test(path)) return 'is absolute (it must be relative to the pack)';
  for (const seg of path.split('/')) {
    if (seg === '' || seg === '.' || seg === '..') return `has a '${seg || '(empty)'}' segment (it must stay inside the pack: no ., .. or //)`;
    if (seg.length > MAX_SEGMENT_CHARS) return `has a name longer than ${MAX_SEGMENT_CHARS} characters`;
  }
  return undefined;
}

/**
 * Refuses a set of files (a pack, a bundle, an export) holding any path that is not plain and relative,
 * or a file that is not text. `where` names the set in the message.
 * @throws TaktError('bad_request') naming the first bad path, with `path` set to it.
 */
export function assertPlainPaths(files: Record<string, unknown>, where: string): void {
  for (const [path, text] of Object.entries(files)) {
    const problem = packPathProblem(path);
    if (problem) throw new TaktError('bad_request', `${where}: file path ${JSON.stringify(path)} ${problem}`, { path });
    if (typeof text !== 'string') throw new TaktError('bad_request', `${where}: file ${JSON.stringify(path)} is not text`, { path });
  }
}

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
  const root = await realpath(dir);
  const walk = async (rel: string, depth: number): Promise<void> => {
    const entries = await readdir(join(dir, rel), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        if (!SKIP_DIRS.test(e.name) && depth < MAX_DEPTH) await walk(path, depth + 1);
        continue;
      }
      if (!isYamlFile(e.name) || !(e.isFile() || e.isSymbolicLink())) continue;
      const problem = packPathProblem(path);
      if (problem) throw new TaktError('bad_request', `${join(dir, path)}: file path ${problem}`, { path: join(dir, path) });
      // A symlinked file is read only when it is a regular file inside the pack (packs may share a file
      // between versions of a directory); one that leads out of the pack (/proc/self/environ, ~/.ssh/…)
      // would upload whatever it points at, so it is refused. Symlinked directories are never followed.
      if (e.isSymbolicLink()) await assertLinkInside(root, dir, path);
      if (e.isFile() || e.isSymbolicLink()) {
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

/** Refuses a symlink at `path` (inside `dir`, whose real path is `root`) unless it resolves to a regular file inside the pack. */
async function assertLinkInside(root: string, dir: string, path: string): Promise<void> {
  const where = join(dir, path);
  const target = await realpath(where).catch(() => undefined);
  const inside = target !== undefined && (target + sep).startsWith(root + sep) && target !== root;
  const st = target ? await stat(target).catch(() => undefined) : undefined;
  if (!inside || !st?.isFile()) {
    throw new TaktError(
      'bad_request',
      `${where}: a symbolic link ${target === undefined ? 'that leads nowhere' : inside ? 'to something that is not a file' : `out of the pack (to ${target})`}; a pack holds its files itself: copy the file in`,
      { path: where },
    );
  }
}
