/**
 * Summarises V8 .cpuprofile files (from `node --cpu-prof`): where the process spent its own time, by
 * function and by file. Self time only: it names the code that burns the CPU, not its callers.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import Table from 'cli-table3';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface HotSpot {
  name: string;
  /** file:line (1-based), relative to the repo; dist/ paths are where the compiled code ran. */
  where: string;
  selfMs: number;
  share: number;
}

export const windowed = () => windows.length > 0;

export interface ProfileSummary {
  /** The profile file, or what a merged summary covers. */
  file: string;
  /** Profiled time (summed over processes for a merged summary) and, below, the busy part of it. */
  totalMs: number;
  /** Share of the profile the process was busy (not idle). */
  busyShare: number;
  functions: HotSpot[];
  files: HotSpot[];
}

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/**
 * The timed parts of a bench, in CLOCK_MONOTONIC microseconds: V8 stamps profile samples with the same
 * system-wide clock as process.hrtime, so samples of every process can be kept to these windows and
 * start-up and setup left out. No windows: everything counts.
 */
const windows: Array<[number, number]> = [];

/** Starts a timed window; call the result when it ends. */
export function profileWindow(): () => void {
  const start = Number(process.hrtime.bigint() / 1000n);
  return () => {
    windows.push([start, Number(process.hrtime.bigint() / 1000n)]);
  };
}

const inWindow = (t: number) => windows.length === 0 || windows.some(([a, b]) => t >= a && t <= b);

function place(cf: CallFrame): string {
  if (!cf.url) return '(native)';
  const path = cf.url.startsWith('file://') ? relative(ROOT, fileURLToPath(cf.url)) : cf.url;
  return `${path}:${cf.lineNumber + 1}`;
}

/** One profile file, or several of the same program (e.g. 50 agents) added together under `label`. */
export function summariseProfiles(files: string[], label: string, top = 25): ProfileSummary {
  const fns = new Map<string, HotSpot>();
  const byFile = new Map<string, HotSpot>();
  let total = 0;
  let idle = 0;
  for (const file of files) {
    const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    const self = new Map<number, number>();
    // timeDeltas[i] is the time before sample i; attributing it to sample i is V8's own convention.
    let t = p.startTime;
    p.samples.forEach((id, i) => {
      t += p.timeDeltas[i] ?? 0;
      if (inWindow(t)) self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0) / 1000);
    });
    for (const [id, ms] of self) {
      total += ms;
      const cf = byId.get(id)!.callFrame;
      if (cf.functionName === '(idle)') idle += ms;
      add(fns, byFile, cf, ms);
    }
  }
  // Shares are of the busy time: for a mostly idle process (an agent waiting on its script) the share of
  // wall time would hide what its CPU went to.
  const busy = total - idle;
  const rank = (m: Map<string, HotSpot>) =>
    [...m.values()]
      .filter((h) => h.name !== '(idle)')
      .map((h) => ({ ...h, selfMs: Math.round(h.selfMs), share: Math.round((h.selfMs / busy) * 1000) / 10 }))
      .sort((a, b) => b.selfMs - a.selfMs)
      .slice(0, top);
  return { file: label, totalMs: Math.round(total), busyShare: Math.round(((total - idle) / total) * 1000) / 10, functions: rank(fns), files: rank(byFile) };
}

function add(fns: Map<string, HotSpot>, files: Map<string, HotSpot>, cf: CallFrame, ms: number): void {
  const where = place(cf);
  const name = cf.functionName || '(anonymous)';
  const key = `${name}@${where}`;
  const f = fns.get(key) ?? { name, where, selfMs: 0, share: 0 };
  f.selfMs += ms;
  fns.set(key, f);
  const fileKey = where === '(native)' ? name : where.replace(/:\d+$/, '');
  const g = files.get(fileKey) ?? { name: fileKey, where: fileKey, selfMs: 0, share: 0 };
  g.selfMs += ms;
  files.set(fileKey, g);
}

/**
 * Every profile in a directory, summarised per program: the files are named `<command>-<pid>`, so the
 * endpoint (`serve`) gets its own summary and all `agent` processes one merged summary.
 */
export function summariseDir(dir: string): ProfileSummary[] {
  // A bench that profiles several configurations writes one subdirectory each (fleet --store --profile).
  const subdirs = readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory());
  const own = profilesIn(dir);
  if (subdirs.length > 0) return [...(own.length > 0 ? summariseFiles(own, dir) : []), ...subdirs.flatMap((d) => summariseDir(join(dir, d.name)))];
  return summariseFiles(own, dir);
}

function summariseFiles(files: string[], dir: string): ProfileSummary[] {
  const groups = new Map<string, string[]>();
  for (const f of files) {
    const command = /([^/]+)-\d+\.cpuprofile$/.exec(f)?.[1] ?? 'node';
    groups.set(command, [...(groups.get(command) ?? []), f]);
  }
  return [...groups].map(([command, files]) => summariseProfiles(files, files.length === 1 ? files[0]! : `${command}: ${files.length} processes in ${dir}`));
}

export function profilesIn(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => join(dir, f));
}

export function printProfile(s: ProfileSummary, top = 20): void {
  process.stdout.write(`\n${s.file}: ${(s.totalMs / 1000).toFixed(1)} s profiled, ${s.busyShare}% busy (shares below are of the busy time)\n`);
  const t = new Table({ head: ['self ms', '%', 'function', 'where'], style: { head: [], border: [] } });
  for (const h of s.functions.slice(0, top)) t.push([h.selfMs, h.share, h.name, h.where]);
  process.stdout.write(`${t.toString()}\n`);
  const f = new Table({ head: ['self ms', '%', 'file'], style: { head: [], border: [] } });
  for (const h of s.files.slice(0, 12)) f.push([h.selfMs, h.share, h.name]);
  process.stdout.write(`${f.toString()}\n`);
}
