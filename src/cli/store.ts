/**
 * `takt store migrate --from … --to …`: moves an endpoint's whole state from one store to another (SQLite
 * to PostgreSQL, and back), offline, with the rows exactly as they were (store/copy.ts). Runs on the
 * endpoint's host, not through the API: the endpoint must be stopped.
 */
import { existsSync, rmSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import { TaktError } from '../model/errors.js';
import type { CopySummary } from '../store/copy.js';
import type { OpenedStore } from '../store/open.js';
import { isPostgresUrl, redactUrl } from '../store/store-url.js';
import type { GlobalOptions } from './client.js';
import { pc } from './color.js';
import { LOCK_FILE } from './datadir.js';
import { examples } from './help.js';
import { print, renderTable, shown } from './output.js';
import { UsageError } from './usage.js';

/** Files that make a directory an endpoint's data dir (`takt serve` writes them at its first start). */
const DATA_DIR_MARKS = [LOCK_FILE, 'admin.token', 'secret.key'];

/** Rows between two progress lines of one big table. */
const PROGRESS_EVERY = 10_000;

/** A `--from`/`--to` value resolved: what `openStore` takes, and the data dir whose lock must be held. */
interface StoreArg {
  kind: 'sqlite' | 'postgres';
  /** What `openStore` opens: `sqlite:FILE` or the URL. */
  spec: string;
  /** SQLite: the database file (absolute). */
  file?: string;
  /** SQLite in a data dir: that dir (locked while the copy runs, as `takt serve` locks it). */
  dataDir?: string;
  /** As messages say it (never a password). */
  shown: string;
}

/**
 * Reads `--from`/`--to`: `sqlite:DIR` (a data dir: its takt.db), `sqlite:FILE`, or `postgres://…`.
 * @throws UsageError naming the flag for anything else; TaktError `bad_request` for a source that does not exist.
 */
export function storeArg(flag: '--from' | '--to', value: string): StoreArg {
  const v = value.trim();
  if (isPostgresUrl(v)) {
    try {
      new URL(v);
    } catch {
      throw new UsageError(`${flag} ${redactUrl(v)} is not a URL takt can read: use postgres://USER@HOST:PORT/DATABASE (password: PGPASSWORD or ~/.pgpass)`);
    }
    return { kind: 'postgres', spec: v, shown: redactUrl(v) };
  }
  if (v.startsWith('sqlite:') && v.length > 'sqlite:'.length) {
    const path = resolve(v.slice('sqlite:'.length));
    const st = statSync(path, { throwIfNoEntry: false });
    const isDir = st?.isDirectory() === true;
    const file = isDir ? join(path, 'takt.db') : path;
    const dir = isDir ? path : dirname(path);
    const inDataDir = isDir || DATA_DIR_MARKS.some((f) => existsSync(join(dir, f)));
    if (flag === '--from' && !existsSync(file)) {
      throw new TaktError('bad_request', `--from ${v}: ${isDir ? `${path} has no takt.db` : `no such file ${path}`}; give the endpoint's data dir (sqlite:/var/lib/takt) or its takt.db`);
    }
    return { kind: 'sqlite', spec: `sqlite:${file}`, file, ...(inDataDir ? { dataDir: dir } : {}), shown: file };
  }
  throw new UsageError(
    `${flag} '${isPostgresUrl(v) ? redactUrl(v) : v}' is not a store: use sqlite:DIR (an endpoint's data dir), sqlite:FILE or postgres://USER@HOST:PORT/DATABASE`,
  );
}

const sameStore = (a: StoreArg, b: StoreArg) => (a.kind === 'sqlite' ? a.file === b.file : new URL(a.spec).toString() === (b.kind === 'postgres' ? new URL(b.spec).toString() : ''));

/** How to quote a word for a shell line that is shown, not run. */
const sh = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** What to run after a move: the endpoint on its new store, with the same data dir. */
function nextSteps(from: StoreArg, to: StoreArg): { serve: string; notes: string[] } {
  const data = from.dataDir ?? 'DATA';
  const serve = `takt serve --data ${sh(data)} --store ${sh(to.kind === 'postgres' ? to.shown : `sqlite:${to.file!}`)}`;
  const notes = [
    `use the SAME data dir${from.dataDir ? '' : ' the endpoint had'} (or a copy of its secret.key and tls/): secret.key seals the secure values now in ${to.shown}, tls/ holds the CA remote agents trust; neither is in the database`,
    ...(to.kind === 'postgres' && to.shown.includes('****') ? ['the password was left out above: give it with PGPASSWORD or ~/.pgpass rather than in the URL'] : []),
    from.kind === 'sqlite'
      ? `${from.file!} is left as it was (only brought to this takt's schema); remove it once the endpoint runs well on its new store`
      : `${from.shown} is left as it was; drop it once the endpoint runs well on its new store`,
  ];
  return { serve, notes };
}

/**
 * Runs one `takt store migrate`: locks the SQLite data dirs (as serve does), opens both stores (each
 * brought to this build's schema, PostgreSQL with the endpoint lock), copies, closes, unlocks. On failure
 * nothing is left in the target: its transaction is rolled back, and a SQLite file this run created is removed.
 */
async function migrate(fromValue: string, toValue: string, o: { dryRun: boolean; output: GlobalOptions['output'] }): Promise<void> {
  const from = storeArg('--from', fromValue);
  const to = storeArg('--to', toValue);
  if (sameStore(from, to)) throw new UsageError(`--from and --to name the same store (${from.shown}): copy into another, empty one`);
  const { lockDataDir } = await import('./datadir.js');
  const { openStore } = await import('../store/open.js');
  const { copyStore } = await import('../store/copy.js');
  const table = o.output === 'table';
  const say = (line: string) => {
    if (table) process.stdout.write(shown(line) + '\n');
  };

  const unlocks: Array<() => void> = [];
  const opened: OpenedStore[] = [];
  const created = to.kind === 'sqlite' && !existsSync(to.file!) ? to.file! : undefined;
  let ok = false;
  try {
    // One endpoint per data dir: refuses (naming its PID) while takt serve runs there, and keeps one from starting mid-copy.
    for (const dir of new Set([from.dataDir, to.dataDir].filter((d): d is string => d !== undefined))) {
      if (existsSync(dir)) unlocks.push(lockDataDir(dir));
    }
    // Each store is opened as takt serve opens it, so each is brought to this build's schema first.
    // exclusive: PostgreSQL's endpoint lock, refusing a database any takt serve (replica) uses.
    const source = await openStore(from.spec, '', { endpointLock: 'exclusive' });
    opened.push(source);
    const target = await openStore(to.spec, '', { endpointLock: 'exclusive' });
    opened.push(target);
    say(`${o.dryRun ? 'dry run: ' : ''}copying ${source.kind} ${source.where} to ${target.kind} ${target.where} (both opened by this takt, so both at its schema: older ones were migrated first)`);
    const printed = new Map<string, number>();
    const summary: CopySummary = await copyStore(source.store, target.store, {
      dryRun: o.dryRun,
      onProgress: ({ table: t, copied, total, done }) => {
        if (done) return say(`  ${t.padEnd(14)} ${String(copied).padStart(9)} row${copied === 1 ? '' : 's'}`);
        // A big table shows how far it is (on stderr: stdout stays the result).
        if (copied - (printed.get(t) ?? 0) >= PROGRESS_EVERY && copied < total) {
          printed.set(t, copied);
          process.stderr.write(`takt: ${t}: ${copied} of ${total} rows\n`);
        }
      },
    });
    ok = true;
    const next = o.dryRun ? undefined : nextSteps(from, to);
    if (!table) {
      print(o.output, { ...summary, ...(next ? { next } : {}) });
      return;
    }
    if (o.dryRun) {
      process.stdout.write(renderTable(summary.tables, [
        { header: 'TABLE', get: (t) => t.table },
        { header: 'ROWS', get: (t) => String(t.rows) },
      ]) + '\n');
      say(`dry run: nothing written; ${summary.rows} rows in ${summary.tables.length} tables would be copied (schema ${summary.schema}); ${target.where} is empty and can take them`);
      return;
    }
    const nul = summary.tables.filter((t) => t.nulReplaced);
    for (const t of nul) say(pc.yellow(`  ${t.table}: ${t.nulReplaced} text values held NUL characters, stored as U+FFFD (PostgreSQL text cannot hold NUL)`));
    say(pc.green(`copied ${summary.rows} rows in ${summary.tables.length} tables, in one transaction (schema ${summary.schema})`));
    say(`next: ${next!.serve}`);
    for (const n of next!.notes) say(`  - ${n}`);
  } finally {
    for (const s of opened.reverse()) await s.store.close().catch(() => undefined);
    if (!ok && created) for (const f of [created, `${created}-wal`, `${created}-shm`]) rmSync(f, { force: true });
    for (const u of unlocks.reverse()) u();
  }
}

export function storeCommands(program: Command, g: () => GlobalOptions) {
  const cmd = program
    .command('store')
    .description("the endpoint's store itself (SQLite or PostgreSQL), offline: run on the endpoint's host, with the endpoint stopped")
    .addHelpText('after', examples('takt store migrate --from sqlite:/var/lib/takt --to postgres://takt@127.0.0.1:5432/takt'));
  cmd
    .command('migrate')
    .description(
      "copy a stopped endpoint's whole state into an empty store: every machine, job, log, change, event and secret (sealed) with its ids and times; one transaction, all or nothing. The data dir's secret.key and tls/ are not in the store: keep using that data dir",
    )
    .requiredOption('--from <store>', 'the store to copy: sqlite:DIR (an endpoint\'s data dir, its takt.db), sqlite:FILE or postgres://USER@HOST:PORT/DATABASE; left as it was')
    .requiredOption('--to <store>', 'an empty store to copy into: postgres://USER@HOST:PORT/DATABASE (a fresh database; password: PGPASSWORD or ~/.pgpass) or sqlite:FILE')
    .option('--dry-run', 'count the rows and check the target, write nothing', false)
    .addHelpText(
      'after',
      examples(
        'takt store migrate --from sqlite:/var/lib/takt --to postgres://takt@127.0.0.1:5432/takt   # then: takt serve --data /var/lib/takt --store postgres://…',
        'takt store migrate --from sqlite:/var/lib/takt --to postgres://takt@db.example.org/takt --dry-run',
        'takt store migrate --from postgres://takt@127.0.0.1:5432/takt --to sqlite:/var/lib/takt-back/takt.db -o json   # and back',
      ),
    )
    .action(async (opts: { from: string; to: string; dryRun: boolean }) => {
      await migrate(opts.from, opts.to, { dryRun: opts.dryRun, output: g().output });
    });
}

