/**
 * What every bench hands back: a table for people and a JSON document for the record, written to
 * bench/results/<name>-<timestamp>.json (gitignored) so runs can be compared later.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Table from 'cli-table3';

export const BENCH_DIR = fileURLToPath(new URL('..', import.meta.url));
export const ROOT_DIR = fileURLToPath(new URL('../..', import.meta.url));

export interface Row {
  metric: string;
  value: string | number;
  goal?: string;
  met?: boolean | null;
}

export interface BenchReport {
  rows: Row[];
  /** Everything measured, raw enough to recompute the table. */
  data: Record<string, unknown>;
  notes?: string[];
}

export function machineInfo() {
  return { cores: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version, platform: process.platform };
}

export function printReport(name: string, r: BenchReport): void {
  const t = new Table({ head: ['metric', 'value', 'goal', 'met'], style: { head: [], border: [] } });
  for (const row of r.rows) t.push([row.metric, String(row.value), row.goal ?? '', row.met === undefined || row.met === null ? '' : row.met ? 'yes' : 'NO']);
  process.stdout.write(`\n${name}\n${t.toString()}\n`);
  for (const n of r.notes ?? []) process.stdout.write(`  note: ${n}\n`);
}

export function writeReport(name: string, args: Record<string, unknown>, r: BenchReport): string {
  const dir = join(BENCH_DIR, 'results');
  mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const file = join(dir, `${name}-${stamp}.json`);
  writeFileSync(file, JSON.stringify({ bench: name, at: new Date().toISOString(), machine: machineInfo(), args, rows: r.rows, notes: r.notes ?? [], data: r.data }, null, 2) + '\n');
  return file;
}
