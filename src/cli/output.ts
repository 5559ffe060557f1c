/** Output for every CLI command: `-o table` (default, for people), `-o json`, `-o yaml` (for scripts). */
import Table from 'cli-table3';
import pc from 'picocolors';
import { stringify } from 'yaml';

export type Format = 'table' | 'json' | 'yaml';

export interface Column<T> {
  header: string;
  get: (row: T) => unknown;
}

export function print(format: Format, data: unknown, table?: () => string): void {
  if (format === 'json') process.stdout.write(JSON.stringify(data, null, 2) + '\n');
  else if (format === 'yaml') process.stdout.write(stringify(data));
  else process.stdout.write((table ? table() : stringify(data)) + '\n');
}

export function renderTable<T>(rows: T[], columns: Column<T>[]): string {
  if (rows.length === 0) return pc.dim('(none)');
  const t = new Table({ head: columns.map((c) => pc.bold(c.header)), style: { head: [], border: [] } });
  for (const r of rows) t.push(columns.map((c) => cell(c.get(r))));
  return t.toString();
}

function cell(v: unknown): string {
  if (v === null || v === undefined) return pc.dim('-');
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
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
  skipped: pc.dim,
};

export const colorState = (s: string): string => (stateColors[s] ?? ((x: string) => x))(s);
