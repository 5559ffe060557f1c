/** The `content` commands. */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Command } from 'commander';
import { structuredPatch } from 'diff';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import type { InstallResult, PackDiff } from '../engine/content.js';
import { TaktError } from '../model/errors.js';
import { type Globals } from './client.js';
import { print, renderTable, shown, shownErr } from './output.js';
import { examples } from './help.js';
import { UsageError } from './usage.js';

const enc = encodeURIComponent;

// ---- content ------------------------------------------------------------------------------------------

export function contentCommands(program: Command, g: Globals, api: () => ApiClient) {
  const content = program
    .command('content')
    .description('content packs: lint, install, list, remove')
    .addHelpText('after', examples('takt content lint content/demo', 'takt content push content/demo', 'takt content versions demo'));
  content
    .command('lint <dir>')
    .description('check a pack directory and report every problem as file:line:col: message')
    .addHelpText('after', examples('takt content lint content/demo           # every problem as file:line:col: message; exits 1 on any'))
    .action(async (dir: string) => {
      const { readPackDir } = await import('../content/files.js');
      const { lintPack, formatDiagnostic } = await import('../content/lint.js');
      const result = lintPack(await readPackDir(dir));
      if (g().output !== 'table') print(g().output, { ok: result.diagnostics.length === 0, diagnostics: result.diagnostics });
      else for (const d of result.diagnostics) process.stdout.write(shown(formatDiagnostic({ ...d, file: `${dir.replace(/\/$/, '')}/${d.file}` })) + '\n');
      if (result.diagnostics.length > 0) {
        if (g().output === 'table') process.stderr.write(pc.red(`${result.diagnostics.length} problem(s)\n`));
        process.exitCode = 1;
      } else if (g().output === 'table') {
        process.stdout.write(pc.green(shown(`${result.manifest?.name}@${result.manifest?.version}: ${result.objects.length} objects, no problems`)) + '\n');
      }
    });
  content
    .command('bundle <dir>')
    .description('lint a pack directory and write one immutable artifact, name@version.takt.json, with its sha256')
    .addHelpText('after', examples('takt content bundle content/demo --out dist   # dist/demo@1.2.0.takt.json and its sha256'))
    .option('--out <dir>', 'where to write the artifact', '.')
    .action(async (dir: string, o: { out: string }) => {
      const { readPackDir } = await import('../content/files.js');
      const { lintPack, formatDiagnostic } = await import('../content/lint.js');
      const { makeBundle, bundleFileName } = await import('../content/bundle.js');
      const files = await readPackDir(dir);
      const result = lintPack(files);
      if (!result.manifest || result.diagnostics.length > 0) {
        for (const d of result.diagnostics) process.stderr.write(shownErr(formatDiagnostic({ ...d, file: `${dir.replace(/\/$/, '')}/${d.file}` })) + '\n');
        throw new TaktError('invalid', `not bundled: ${result.diagnostics.length} problem(s)`);
      }
      const bundle = makeBundle(result.manifest.name, result.manifest.version, files);
      const path = join(o.out, bundleFileName(bundle));
      await writeFile(path, JSON.stringify(bundle, null, 1) + '\n');
      print(g().output, { file: path, name: bundle.name, version: bundle.version, sha256: bundle.sha256 }, () => shown(`${path}\nsha256 ${bundle.sha256}`));
    });
  content
    .command('install <artifact>')
    .description('install a pack version (an artifact from `content bundle`, or a directory); versions are kept side by side and never change')
    .addHelpText('after', examples('takt content install demo@1.2.0.takt.json', 'takt content install content/demo --use   # install and run it now'))
    .option('--use', 'run this version now (the first version of a pack always runs)')
    .action(async (artifact: string, o: { use?: boolean }) => {
      const r = await api().post<Installed>('/packs', { files: await loadPack(artifact), use: o.use === true });
      warnUnresumable(r);
      print(g().output, r, () => installLine(r));
    });
  content
    .command('push <dir>')
    .description('install a pack directory and run it (refused whole if it has any problem; a changed pack needs a new version)')
    .addHelpText('after', examples('takt content push content/demo'))
    .action(async (dir: string) => {
      const r = await api().post<Installed>('/packs', { files: await loadPack(dir), use: true });
      warnUnresumable(r);
      print(g().output, r, () => installLine(r));
    });
  content
    .command('use <pack@version>')
    .description('pin the version of a pack the endpoint runs (checked like an install: references, requires, machines)')
    .addHelpText('after', examples('takt content use demo@1.1.0   # roll the pack back (or forward) to this version'))
    .action(async (ref: string) => {
      const { name, version } = parseRef(ref);
      const r = await api().post<Installed>(`/packs/${enc(name)}/use`, { version });
      warnUnresumable(r);
      print(g().output, r, () => shown(`${r.name}@${r.version} is in use`));
    });
  content
    .command('versions [pack]')
    .description('installed versions, side by side')
    .addHelpText('after', examples('takt content versions', 'takt content versions demo -o json'))
    .action(async (name?: string) => {
      const [versions, pins] = await Promise.all([
        api().get<{ items: Array<{ name: string; version: string; sha256: string; installedAt: string; requires: Record<string, string> }> }>('/packs/versions', { name }),
        api().get<{ items: Array<{ name: string; version: string }> }>('/packs'),
      ]);
      const inUse = new Set(pins.items.map((p) => `${p.name}@${p.version}`));
      const rows = versions.items.map((v) => ({ ...v, inUse: inUse.has(`${v.name}@${v.version}`) }));
      print(g().output, rows, () =>
        renderTable(rows, [
          { header: 'PACK', get: (v) => v.name },
          { header: 'VERSION', get: (v) => v.version },
          { header: 'IN USE', get: (v) => (v.inUse ? 'yes' : ''), color: (t) => pc.green(t) },
          { header: 'SHA256', get: (v) => v.sha256.slice(0, 12) },
          { header: 'REQUIRES', get: (v) => Object.entries(v.requires).map(([k, r]) => `${k} ${r}`).join(', ') || null },
          { header: 'INSTALLED', get: (v) => v.installedAt },
        ]),
      );
    });
  content
    .command('diff <from> <to>')
    .description('what changed between two installed versions, object by object: takt content diff demo@1.0.0 demo@1.1.0')
    .addHelpText('after', examples('takt content diff demo@1.0.0 demo@1.1.0', 'takt content diff demo@1.0.0 1.1.0'))
    .action(async (fromRef: string, toRef: string) => {
      const a = parseRef(fromRef);
      const b = toRef.includes('@') ? parseRef(toRef) : { name: a.name, version: toRef };
      if (a.name !== b.name) throw new UsageError(`compare two versions of one pack (got ${a.name} and ${b.name})`);
      const d = await api().get<PackDiff>(`/packs/${enc(a.name)}/diff`, { from: a.version, to: b.version });
      print(g().output, d, () => diffText(d));
    });
  content
    .command('list')
    .description('installed packs')
    .addHelpText('after', examples('takt content ls', 'takt content list -o name   # content/demo@1.2.0'))
    .action(async () => {
      const r = await api().get<{ items: Array<{ name: string; version: string; sha256: string; installedAt: string; files: number }> }>('/packs');
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: 'NAME', get: (p) => p.name },
          { header: 'VERSION', get: (p) => p.version },
          { header: 'FILES', get: (p) => p.files },
          { header: 'SHA256', get: (p) => p.sha256.slice(0, 12) },
          { header: 'INSTALLED', get: (p) => p.installedAt },
        ]),
      );
    });
  content
    .command('remove <pack>')
    .description('NAME: stop running a pack (its versions stay installed; refused while machines or other content use it). NAME@VERSION: remove that one installed version (refused for the version in use and one a machine runs a task from); build records keep its name')
    .option('--dry-run', 'NAME@VERSION: check and say what would be removed, remove nothing')
    .addHelpText('after', examples('takt content rm demo', 'takt content remove demo@1.0.0 --dry-run', 'takt content rm demo@1.0.0   # an old version no machine needs'))
    .action(async (ref: string, o: { dryRun?: boolean }) => {
      if (!ref.includes('@')) {
        if (o.dryRun) throw new UsageError(`--dry-run applies to removing one version (NAME@VERSION, e.g. ${ref}@1.0.0)`);
        const r = await api().delete(`/packs/${enc(ref)}`);
        print(g().output, r, () => shown(`removed pack ${ref}`));
        return;
      }
      const { name, version } = parseRef(ref);
      const r = await api().request<{ name: string; version: string; sha256: string; removed: boolean; dryRun: boolean }>('DELETE', `/packs/${enc(name)}/versions/${enc(version)}`, o.dryRun ? { query: { dryRun: true } } : {});
      print(g().output, r, () => shown(r.dryRun ? `would remove ${r.name}@${r.version} (sha256 ${r.sha256.slice(0, 12)}); nothing removed (--dry-run)` : `removed ${r.name}@${r.version} (sha256 ${r.sha256.slice(0, 12)})`));
    });
}

/** An install or use, with the stopped or paused machines a resume is now refused for (when it is in use). */
type Installed = InstallResult & { unresumable?: Array<{ machine: string; message: string }> };

/** One warning line per machine the content now in use leaves un-resumable: said now, not at the resume. */
function warnUnresumable(r: Installed): void {
  for (const u of r.unresumable ?? []) process.stderr.write(pc.yellow(shownErr(`warning: ${u.machine} can not be resumed now: ${u.message}`)) + '\n');
}

const installLine = (r: InstallResult) =>
  shown(`${r.installed ? 'installed' : 'already installed:'} ${r.name}@${r.version} (${r.objects} objects, sha256 ${r.sha256.slice(0, 12)})${r.active ? ', in use' : '; run it with `takt content use ' + r.name + '@' + r.version + '`'}`);

function parseRef(ref: string): { name: string; version: string } {
  const m = /^([a-z0-9][a-z0-9._-]*)@(.+)$/.exec(ref);
  if (!m) throw new UsageError(`'${ref}' is not PACK@VERSION (e.g. demo@1.0.1)`);
  return { name: m[1]!, version: m[2]! };
}

/** A directory is read as a pack; a file must be an artifact from `takt content bundle`. */
/** The files of a pack directory or bundle artifact, as POST /packs takes them. */
export async function loadPack(path: string): Promise<Record<string, string>> {
  if ((await stat(path).catch(() => null))?.isDirectory()) {
    const { readPackDir } = await import('../content/files.js');
    return readPackDir(path);
  }
  const { readBundle } = await import('../content/bundle.js');
  const text = await readFile(path, 'utf8').catch(() => {
    throw new TaktError('not_found', `${path}: no such file or directory`);
  });
  return readBundle(text, path).files;
}

function diffText(d: PackDiff): string {
  const lines = [pc.bold(shown(`${d.name} ${d.from} → ${d.to}`))];
  for (const a of d.added) lines.push(pc.green(shown(`+ ${a}`)));
  for (const r of d.removed) lines.push(pc.red(shown(`- ${r}`)));
  for (const c of d.changed) {
    lines.push(pc.yellow(shown(`~ ${c.object}`)));
    for (const f of c.fields) {
      lines.push(shown(`    ${f.path}:`));
      lines.push(...fieldDiff(f.before, f.after).map((l) => (l.startsWith('-') ? pc.red(shown(`      ${l}`)) : l.startsWith('+') ? pc.green(shown(`      ${l}`)) : pc.dim(shown(`      ${l}`)))));
    }
  }
  if (lines.length === 1) lines.push(pc.dim('no differences'));
  return lines.join('\n');
}

/**
 * One changed field as lines: a unified line diff (3 lines of context, `@@` hunk heads) when either side is a
 * multi-line string such as a script, else the two values as JSON, `- before` and `+ after`.
 */
export function fieldDiff(before: unknown, after: unknown): string[] {
  const multiline = (v: unknown) => typeof v === 'string' && v.includes('\n');
  if (!(multiline(before) || multiline(after)) || (typeof before !== 'string' && before !== undefined) || (typeof after !== 'string' && after !== undefined)) {
    return [`- ${JSON.stringify(before)}`, `+ ${JSON.stringify(after)}`];
  }
  const patch = structuredPatch('before', 'after', (before as string | undefined) ?? '', (after as string | undefined) ?? '', undefined, undefined, { context: 3 });
  // A side with no lines starts at line 0, as diff -u writes it.
  const at = (start: number, lines: number) => `${lines === 0 ? start - 1 : start},${lines}`;
  return patch.hunks.flatMap((h) => [`@@ -${at(h.oldStart, h.oldLines)} +${at(h.newStart, h.newLines)} @@`, ...h.lines.filter((l) => !l.startsWith('\\'))]);
}
