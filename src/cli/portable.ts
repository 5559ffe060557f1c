/** The `portable` commands. */
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { type Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import { type Globals } from './client.js';
import { print, shown } from './output.js';
import { examples } from './help.js';
import { makeDir } from './outdir.js';
import { UsageError } from './usage.js';

/** What an export writes at the top of its directory; an export replaces these, and only these. */
const EXPORT_ENTRIES = ['packs', 'local', 'machines', 'takt-export.yaml'];

export function portableCommands(program: Command, g: Globals, api: () => ApiClient) {
  program
    .command('export <dir>')
    .description("write the complete desired state (pack versions, local content, machines) as a directory of YAML, e.g. to keep it in git; each machine's file also holds its place, outputs and build record, for a restore")
    .addHelpText('after', examples('takt export ./state && git -C state add -A && git -C state commit -m snapshot'))
    .action(async (dir: string) => {
      // The directory is checked (and made) before anything is fetched: a bad path costs no export.
      makeDir(dir, 'export DIR');
      const existing = await readdir(dir);
      if (existing.length > 0 && !existing.includes('takt-export.yaml')) {
        throw new TaktError('conflict', `${dir} is not empty and holds no takt export; choose an empty or new directory`);
      }
      const { files } = await api().get<{ files: Record<string, string> }>('/export');
      // Every path must stay inside DIR, whatever the endpoint sends: checked before anything is written.
      const { assertPlainPaths } = await import('../content/files.js');
      assertPlainPaths(files, 'export');
      // Written whole beside the old export first, then swapped in: a failure half-way (a full disk) leaves
      // the earlier export as it was, and files of deleted objects do not linger.
      const staging = join(dir, '.takt-export-new');
      await rm(staging, { recursive: true, force: true });
      try {
        for (const [path, text] of Object.entries(files)) {
          await mkdir(dirname(join(staging, path)), { recursive: true });
          await writeFile(join(staging, path), text);
        }
      } catch (err) {
        await rm(staging, { recursive: true, force: true });
        throw new TaktError('unavailable', `export to ${dir} not written (the earlier export there is unchanged): ${(err as Error).message}`);
      }
      for (const e of existing) if (EXPORT_ENTRIES.includes(e)) await rm(join(dir, e), { recursive: true, force: true });
      for (const e of await readdir(staging)) await rename(join(staging, e), join(dir, e));
      await rm(staging, { recursive: true, force: true });
      print(g().output, { dir, files: Object.keys(files).length }, () => shown(`exported ${Object.keys(files).length} files to ${dir}`));
    });
  program
    .command('import <dir>')
    .description('restore the desired state from a `takt export` directory, all or nothing (machines not in it are reported, not deleted); machines it creates keep their place and wait for `takt machines resume`')
    .option('--dry-run', 'print what it would change, change nothing (the same checks as the import: the same problems)')
    .option('--allow-undeclared', "store machine params no content declares (as `machines update --allow-undeclared`); refused otherwise")
    .addHelpText(
      'after',
      examples(
        'takt import ./state --dry-run   # what would change, or every problem (file:line:col or file + field)',
        'takt import ./state             # then re-attach the agents it lists, and restart the machines it holds',
      ),
    )
    .action(async (dir: string, o: { dryRun?: boolean; allowUndeclared?: boolean }) => {
      if (dir.trim() === '') throw new UsageError('import DIR: an empty path; give the directory a `takt export` wrote');
      const files: Record<string, string> = {};
      const walk = async (rel: string) => {
        for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
          const p = rel ? `${rel}/${e.name}` : e.name;
          if (e.isDirectory()) await walk(p);
          else if (e.isFile() && !e.name.startsWith('.')) files[p] = await readFile(join(dir, p), 'utf8');
        }
      };
      await walk('').catch((err: NodeJS.ErrnoException) => {
        throw new TaktError('not_found', `${dir}: ${err.code === 'ENOENT' ? 'no such directory' : err.message}`);
      });
      // A refusal carries every problem (error.details.problems): `report` prints one line each.
      const r = await api().post<ImportResult>('/import', { files, ...(o.dryRun ? { dryRun: true } : {}), ...(o.allowUndeclared ? { allowUndeclared: true } : {}) });
      print(g().output, r, () =>
        [
          r.dryRun
            ? shown(`dry run: importing ${dir} would make ${r.changes.length} change(s)${r.changes.length ? ':' : ''}`)
            : shown(`imported ${dir}: ${r.packVersionsInstalled.length} pack version(s) installed, content ${r.content.created} created / ${r.content.updated} updated / ${r.content.deleted} deleted, machines ${r.machines.created.length} created / ${r.machines.updated.length} updated`),
          ...r.changes.map((c) => shown(`  ${c}`)),
          ...(r.reattach.length ? [r.dryRun ? 'agents to re-attach (each machine gets a new token):' : 're-attach each machine\'s agent (new tokens were issued):', ...r.reattach.map((a) => shown(`  ${a.machine}: ${a.how}`))] : []),
          ...(r.notes ?? []).map((n) => pc.yellow(shown(`  ${n}`))),
          ...((r.held ?? []).length
            ? [
                r.dryRun ? 'machines that would be held (restored onto a new host: their sandbox is new and empty):' : 'held (restored onto a new host: their sandbox is new and empty); restart each to recreate it:',
                ...(r.held ?? []).map((h) => shown(`  ${h.machine}: ${h.command}`)),
              ]
            : []),
          ...r.problems.map((p) => pc.yellow(shown(`  ${p}`))),
        ].join('\n'),
      );
      if (r.problems.length) process.exitCode = 1;
    });
}

interface ImportResult {
  dryRun: boolean;
  changes: string[];
  reattach: Array<{ machine: string; how: string }>;
  packVersionsInstalled: string[];
  content: Record<string, number>;
  machines: { created: string[]; updated: string[] };
  problems: string[];
  /** Per machine: where a machine whose pipeline changes is held, restored params its outputs shadow. */
  notes?: string[];
  /** Absent from endpoints before it existed. */
  held?: Array<{ machine: string; reason: string; command: string }>;
}
