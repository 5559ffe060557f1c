/** Output for every CLI command: `-o table` (default, for people), `-o json`, `-o yaml` (for scripts). */
import Table from 'cli-table3';
import pc from 'picocolors';
import { stringify } from 'yaml';
import { printable } from '../model/printable.js';

export type Format = 'table' | 'json' | 'yaml';

/**
 * Text from the endpoint (names, reasons, job output, values) as it goes to `stream`. On a terminal,
 * control characters are shown as `\u001b`-style escapes (newline and tab kept, CRLF shown as a newline)
 * so a machine or a script cannot drive the operator's terminal; piped or redirected, it is byte for byte.
 */
export function forStream(stream: { isTTY?: boolean }, text: string): string {
  return stream.isTTY ? printable(text.replace(/\r\n/g, '\n')) : text;
}

/** `forStream` for standard output: wrap every piece of endpoint text a table or message shows. */
export const shown = (text: string): string => forStream(process.stdout, text);
/** `forStream` for standard error. */
export const shownErr = (text: string): string => forStream(process.stderr, text);

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
}

/**
 * Prints `data`: as JSON or YAML byte for byte (for scripts), or for people as `table()` (whose parts
 * from the endpoint are already `shown`) or, without one, as YAML with control characters escaped on a terminal.
 */
export function print(format: Format, data: unknown, table?: () => string): void {
  if (format === 'json') process.stdout.write(JSON.stringify(data, null, 2) + '\n');
  else if (format === 'yaml') process.stdout.write(stringify(data));
  else process.stdout.write((table ? table() : shown(stringify(data))) + '\n');
}

export function renderTable<T>(rows: T[], columns: Column<T>[]): string {
  if (rows.length === 0) return pc.dim('(none)');
  const t = new Table({ head: columns.map((c) => pc.bold(c.header)), style: { head: [], border: [] } });
  for (const r of rows) t.push(columns.map((c) => cell(c, r)));
  return t.toString();
}

function cell<T>(c: Column<T>, row: T): string {
  const v = c.get(row);
  if (v === null || v === undefined) return pc.dim('-');
  if (c.styled) return String(v);
  const full = shown(typeof v === 'string' ? v : JSON.stringify(v));
  const text = c.max !== undefined && full.length > c.max ? `${full.slice(0, c.max - 1)}…` : full;
  return c.color ? c.color(text, row) : text;
}

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
