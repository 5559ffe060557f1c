/**
 * How busy the machine is, from /proc/stat. The benches share two cores with whatever else runs here
 * (other people's test suites, builds); a number measured on a busy machine is recorded as such.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { log } from './progress.js';

interface CpuTimes {
  busy: number;
  total: number;
}

function cpuTimes(): CpuTimes | null {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (f[3] ?? 0) + (f[4] ?? 0); // idle + iowait
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: total - idle, total };
  } catch {
    return null;
  }
}

/** Share (0–1) of all cores' time spent busy between `from` and now. */
export function busySince(from: CpuTimes | null): number {
  const now = cpuTimes();
  if (!from || !now || now.total === from.total) return NaN;
  return (now.busy - from.busy) / (now.total - from.total);
}

export const cpuMark = cpuTimes;

/** Core-seconds all cores spent busy since `from` (every process on the box, not only ours). */
export function busyCoreSec(from: CpuTimes | null): number {
  const now = cpuTimes();
  return from && now ? (now.busy - from.busy) / TICKS : NaN;
}

/**
 * Waits (up to `maxMs`) for a second in which the machine is mostly idle, so the bench does not start
 * while another workload is running. Returns the last second's busy share.
 */
export async function waitQuiet(maxMs = 120_000, threshold = 0.15): Promise<number> {
  const deadline = Date.now() + maxMs;
  let warned = false;
  for (;;) {
    const mark = cpuTimes();
    await new Promise((r) => setTimeout(r, 1000));
    const busy = busySince(mark);
    if (!(busy > threshold)) return busy;
    if (Date.now() > deadline) {
      log(`warning: the machine is still ${Math.round(busy * 100)}% busy with other work; measuring anyway (numbers will be worse than on a quiet machine)`);
      return busy;
    }
    if (!warned) log(`waiting for the machine to be quiet (${Math.round(busy * 100)}% busy with other work)…`);
    warned = true;
  }
}

/** USER_HZ: /proc reports CPU time in these ticks (100 on every Linux this runs on). */
const TICKS = 100;

interface ProcSample {
  ppid: number;
  /** utime + stime, ticks. */
  cpu: number;
}

function processes(): Map<number, ProcSample> {
  const out = new Map<number, ProcSample>();
  let names: string[];
  try {
    names = readdirSync('/proc').filter((n) => /^\d+$/.test(n));
  } catch {
    return out;
  }
  for (const n of names) {
    try {
      const stat = readFileSync(`/proc/${n}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(Number(n), { ppid: Number(f[1]), cpu: Number(f[11]) + Number(f[12]) });
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}

export interface LoadReport {
  /** Busy share of the machine in the second before the bench started. */
  busyBefore: number;
  /** Core-seconds the machine was busy during the bench. */
  machineBusySec: number;
  /** Core-seconds used by processes that are not this bench's (sampled each second, so a lower bound). */
  otherBusySec: number;
  /** otherBusySec as a share of all cores over the bench's wall time. */
  otherShare: number;
}

/**
 * Watches the machine while a bench runs: every second, each process's CPU time since the last look,
 * split into the bench's own process tree (endpoint, agents, their scripts, ansible) and everything
 * else. Processes that live less than a second between two looks are missed, so "other" is a lower
 * bound. Call the returned function at the end.
 */
export function accountLoad(busyBefore: number, cores: number): () => LoadReport {
  const mark = cpuTimes();
  const t0 = Date.now();
  let last = processes();
  let other = 0;
  const look = () => {
    const now = processes();
    const ours = new Set<number>([process.pid]);
    const isOurs = (pid: number, depth = 0): boolean => {
      if (ours.has(pid)) return true;
      const p = now.get(pid);
      if (!p || p.ppid <= 1 || depth > 50) return false;
      if (isOurs(p.ppid, depth + 1)) {
        ours.add(pid);
        return true;
      }
      return false;
    };
    for (const [pid, p] of now) {
      if (isOurs(pid)) continue;
      other += p.cpu - (last.get(pid)?.cpu ?? 0); // a new process: all of its time is new
    }
    last = now;
  };
  const timer = setInterval(look, 1000);
  timer.unref();
  return () => {
    clearInterval(timer);
    look();
    const now = cpuTimes();
    const machineBusySec = mark && now ? (now.busy - mark.busy) / TICKS : NaN;
    const otherBusySec = other / TICKS;
    const wallSec = (Date.now() - t0) / 1000;
    return { busyBefore, machineBusySec, otherBusySec, otherShare: otherBusySec / (wallSec * cores) };
  };
}
