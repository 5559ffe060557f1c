/**
 * Output for every CLI command: `-o table` (default, for people), `-o wide` (the table with more
 * columns: ids, timestamps), `-o name` (`machines/web-1`, one per line, for scripts and xargs),
 * `-o json`, `-o yaml` (for scripts); `--no-headers` drops the table's header line.
 */
import { pc } from './color.js';
import { stringify, type ToStringOptions, type DocumentOptions, type SchemaOptions } from 'yaml';
import { shown, view, type Format } from './view.js';

export { OUTPUT_FORMATS, forStream, setView, shown, shownErr, type Format, type OutputFormat, type View } from './view.js';

/**
 * `-o yaml` is read by all sorts of tools, many of them YAML 1.1 readers (PyYAML, Ruby, Go's yaml.v2)
 * that turn a plain `on`, `no`, `y`, `0777` or `2026-11-30` into a boolean, number or date. Emitted as
 * YAML 1.2 (core schema) with the 1.1 schema as `compat`, the library quotes every string either
 * version would read as something else — `power: "on"` — and leaves the rest plain.
 */
export const YAML_OPTIONS: DocumentOptions & SchemaOptions & ToStringOptions = { schema: 'core', compat: 'yaml-1.1' };

/** Data as `-o yaml` prints it. */
export const toYaml = (data: unknown): string => stringify(data, YAML_OPTIONS);

export interface Column<T> {
  header: string;
  /** The cell's data; strings are shown with `shown` (escaped on a terminal), other values as JSON. */
  get: (row: T) => unknown;
  /** Styles the escaped text, e.g. a state's colour. */
  color?: (text: string, row: T) => string;
  /** The cell is takt's own drawing (bars, coloured figures), printed as `get` returns it. */
  styled?: boolean;
  /** Longer text is cut to this many characters with `…` (tables only: `-o json` and `get` carry it whole). */
  max?: number;
  /**
   * Free text (a reason, a description) that may be cut with `…` to fit the terminal. Other columns
   * (ids, names, states) are never cut: a table wider than the terminal wraps rather than lie.
   * A column with `max` is free text too.
   */
  flex?: boolean;
  /** Shown with `-o wide` only (ids, timestamps, details). */
  wide?: boolean;
}

/**
 * Prints `data`: as JSON or YAML byte for byte (for scripts); with `-o name` as `resource/name` lines;
 * else for people as `table()` (whose parts from the endpoint are already `shown`) or, without one, as
 * YAML with control characters escaped on a terminal.
 */
export function print(format: Format, data: unknown, table?: () => string): void {
  if (format === 'json') process.stdout.write(JSON.stringify(data, null, 2) + '\n');
  else if (format === 'yaml') process.stdout.write(toYaml(data));
  else if (view.name) printNames(data);
  else {
    const text = table ? table() : shown(toYaml(data));
    // An empty table with --no-headers prints nothing at all, so `| while read` sees no line.
    if (text !== '') process.stdout.write(text + '\n');
  }
}

/**
 * The `-o name` form of one object: `resource/name` (`name@version` for pack versions), from the
 * object's `name`, else `id`, else `seq`; null when it has none of them.
 */
export function nameOf(resource: string, item: unknown): string | null {
  if (!item || typeof item !== 'object') return null;
  const o = item as Record<string, unknown>;
  const key = [o.name, o.id, o.seq].find((v) => typeof v === 'string' || typeof v === 'number');
  if (key === undefined) return null;
  const version = typeof o.version === 'string' && typeof o.name === 'string' ? `@${o.version}` : '';
  return `${resource ? `${resource}/` : ''}${String(key)}${version}`;
}

function printNames(data: unknown): void {
  const items = Array.isArray(data) ? data : [data];
  const names = items.map((i) => nameOf(view.resource, i));
  if (names.some((n) => n === null)) {
    // The command may already have changed something: say so on stderr rather than fail after the fact.
    process.stderr.write(pc.yellow('takt: -o name: this command\'s output names no objects; use -o json or -o yaml\n'));
    return;
  }
  for (const n of names) process.stdout.write(shown(n!) + '\n');
}

/**
 * Asks the endpoint for one page of a list, one row more than `--limit`, so a list cut short can say so
 * even where the endpoint sends no total. `get(limit, offset)` is the request; `limit` and `offset` are
 * the options as typed (whole numbers; bad ones are left for the endpoint to refuse).
 */
export async function fetchPage<T>(
  get: (query: { limit: string; offset: string }) => Promise<{ items: T[]; total?: number }>,
  limit: string,
  offset = '0',
): Promise<{ items: T[]; note: string }> {
  const n = Number(limit);
  const ask = Number.isInteger(n) && n > 0 ? String(n + 1) : limit;
  const r = await get({ limit: ask, offset });
  const more = r.items.length > n;
  const items = more ? r.items.slice(0, n) : r.items;
  return { items, note: pageNote(items.length, Number(offset) || 0, r.total, more) };
}

/**
 * The line under a table cut short, as every list prints it: `50 of 230; use --offset 50 (or a bigger
 * --limit) for more`, or without a total `50 shown, more after them; …`. Empty when nothing is cut.
 */
export function pageNote(shownRows: number, offset: number, total: number | undefined, more = total !== undefined && offset + shownRows < total): string {
  if (!more) return '';
  const of = total !== undefined ? `${shownRows} of ${total}` : `${shownRows} shown, more after them`;
  return pc.dim(`\n${of}${offset ? ` (from ${offset})` : ''}; use --offset ${offset + shownRows} (or a bigger --limit) for more`);
}

// eslint-disable-next-line no-control-regex -- matching the colour codes is the point
const ANSI = /\x1b\[[0-9;]*m/g;
/** Columns `text` takes on a terminal: colour codes take none, every code point one. */
export const visibleWidth = (text: string): number => [...text.replace(ANSI, '')].length;
const cut = (text: string, width: number): string => ([...text].length > width ? `${[...text].slice(0, Math.max(0, width - 1)).join('')}…` : text);
const GAP = '   ';
/** A free-text column is never cut narrower than this (or its header). */
const MIN_FLEX = 10;

interface Cell {
  lines: string[];
  /** Printed as is (takt's own drawing, or the dim `-` of an empty cell): never cut, not coloured again. */
  raw: boolean;
}

/**
 * A plain table like kubectl's: a header line, then one line per row, columns aligned with three spaces,
 * no borders. On a terminal with headers a cell with newlines takes several lines, aligned (for people);
 * piped, redirected or with `--no-headers` (for scripts: `| while read`, awk, wc -l) every row is exactly
 * one line, a cell's line breaks shown as the two characters `\n` (and `\r`) — as `ps` and `systemctl`
 * print them; `-o json`/`-o yaml` carry the text exactly. Fits `width` (default: the terminal's) by cutting the
 * free-text columns (`flex`/`max`), widest first, with `…`. `-o wide` adds the `wide` columns,
 * `--no-headers` drops the header line.
 */
export function renderTable<T>(rows: T[], columns: Column<T>[], opts: { width?: number } = {}): string {
  if (rows.length === 0) return view.headers ? pc.dim('(none)') : '';
  const cols = columns.filter((c) => !c.wide || view.wide);
  const multiline = view.tty && view.headers;
  const cells = rows.map((r) => cols.map((c) => cell(c, r, multiline)));
  const widths = cols.map((c, i) => Math.max(view.headers ? visibleWidth(c.header) : 0, ...cells.map((row) => Math.max(...row[i]!.lines.map(visibleWidth)))));
  fit(cols, widths, opts.width ?? view.width);
  const line = (parts: string[]) => parts.map((p, i) => (i === parts.length - 1 ? p : p + ' '.repeat(Math.max(0, widths[i]! - visibleWidth(p))))).join(GAP).trimEnd();
  const out: string[] = [];
  if (view.headers) out.push(line(cols.map((c, i) => pc.bold(cut(c.header, widths[i]!)))));
  rows.forEach((r, ri) => {
    const row = cells[ri]!;
    const height = Math.max(...row.map((c) => c.lines.length));
    for (let l = 0; l < height; l++) {
      out.push(
        line(
          row.map((c, ci) => {
            const text = c.lines[l] ?? '';
            if (c.raw) return text;
            const col = cols[ci]!;
            const shortened = col.flex || col.max !== undefined ? cut(text, widths[ci]!) : text;
            return col.color && shortened ? col.color(shortened, r) : shortened;
          }),
        ),
      );
    }
  });
  return out.join('\n');
}

/** Narrows the free-text columns, widest first, until the table fits `width` (or they reach their minimum). */
function fit<T>(cols: Column<T>[], widths: number[], width: number | undefined): void {
  if (!width) return;
  const total = () => widths.reduce((a, b) => a + b, 0) + GAP.length * (widths.length - 1);
  const flexible = cols.map((c, i) => ({ i, min: Math.min(widths[i]!, Math.max(MIN_FLEX, c.header.length)) })).filter(({ i }) => cols[i]!.flex || cols[i]!.max !== undefined);
  for (let round = 0; round < flexible.length && total() > width; round++) {
    const widest = flexible.filter(({ i, min }) => widths[i]! > min).sort((a, b) => widths[b.i]! - widths[a.i]!)[0];
    if (!widest) return;
    widths[widest.i] = Math.max(widest.min, widths[widest.i]! - (total() - width));
  }
}

/** One cell's lines: its text split at newlines when `multiline`, else one line with `\n`/`\r` escaped. */
function cell<T>(c: Column<T>, row: T, multiline: boolean): Cell {
  const v = c.get(row);
  if (v === null || v === undefined) return { lines: [pc.dim('-')], raw: true };
  if (c.styled) return { lines: String(v).split('\n'), raw: true };
  const text = shown(typeof v === 'string' ? v : JSON.stringify(v));
  const full = multiline ? text : oneLine(text);
  const lines = full.split('\n').map((l) => (c.max !== undefined && [...l].length > c.max ? cut(l, c.max) : l));
  return { lines, raw: false };
}

/** `text` on one line: LF and CR shown as `\n` and `\r` (a table row for scripts stays one line). */
export const oneLine = (text: string): string => text.replace(/\n/g, '\\n').replace(/\r/g, '\\r');

const stateColors: Record<string, (s: string) => string> = {
  done: pc.green,
  succeeded: pc.green,
  running: pc.cyan,
  stopped: pc.red,
  failed: pc.red,
  lost: pc.red,
  idle: pc.dim,
  queued: pc.dim,
  cancelled: pc.yellow,
  'awaiting-approval': pc.yellow,
  completed: pc.green,
  paused: pc.yellow,
  aborted: pc.yellow,
  pending: pc.dim,
  waiting: pc.yellow,
  skipped: pc.dim,
};

/** A state from the endpoint, escaped (`shown`) and coloured by what it means. */
export const colorState = (s: string): string => (stateColors[s] ?? ((x: string) => x))(shown(s));
