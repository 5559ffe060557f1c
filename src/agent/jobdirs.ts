/**
 * Housekeeping for job work dirs: the newest few stay for an operator to look at, older ones go.
 */
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

export const KEEP_JOB_DIRS = 20;

/**
 * Deletes all but the `keep` most recently modified job dirs. Returns the names it removed. `remove`
 * deletes one dir (default: a recursive delete; scripts run as another user pass one that uses that
 * user's rights, see sandbox.ts).
 */
export async function pruneJobDirs(jobsDir: string, keep = KEEP_JOB_DIRS, remove = (dir: string) => rm(dir, { recursive: true, force: true })): Promise<string[]> {
  const entries = await readdir(jobsDir, { withFileTypes: true }).catch(() => []);
  const dirs = await Promise.all(
    entries
      .filter((e) => e.isDirectory())
      .map(async (e) => ({ name: e.name, mtime: (await stat(join(jobsDir, e.name)).catch(() => null))?.mtimeMs ?? 0 })),
  );
  dirs.sort((a, b) => b.mtime - a.mtime || b.name.localeCompare(a.name));
  const old = dirs.slice(keep).map((d) => d.name);
  // One dir that cannot go (a script locked itself out of part of it) does not keep the others.
  const removed: string[] = [];
  const failed: string[] = [];
  for (const name of old) {
    try {
      await remove(join(jobsDir, name));
      removed.push(name);
    } catch (err) {
      failed.push(`${name} (${err instanceof Error ? err.message : String(err)})`);
    }
  }
  if (failed.length) throw new Error(`removed ${removed.length} old job dirs; could not remove ${failed.join(', ')}`);
  return removed;
}
