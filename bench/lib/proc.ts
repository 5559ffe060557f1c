/** Process facts the benches report: a process's peak resident set (VmHWM) from /proc. */
import { readFileSync } from 'node:fs';

/** Peak RSS in bytes, or null when /proc does not have the process (it exited, or not Linux). */
export function peakRss(pid: number): number | null {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

export function currentRss(pid: number): number | null {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

export const mib = (bytes: number | null) => (bytes === null ? NaN : Math.round((bytes / 2 ** 20) * 10) / 10);

/** CPU seconds of a process (utime+stime) and of the children it has reaped (cutime+cstime). */
export function cpuOf(pid: number): { self: number; children: number } {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
    // Fields 14–17 of the line (utime stime cutime cstime) are 12–15 after the command name; USER_HZ = 100.
    return { self: ((f[11] ?? 0) + (f[12] ?? 0)) / 100, children: ((f[13] ?? 0) + (f[14] ?? 0)) / 100 };
  } catch {
    return { self: NaN, children: NaN };
  }
}

/** Sum of cpuOf over processes. */
export function cpuOfAll(pids: number[]): { self: number; children: number } {
  return pids.map(cpuOf).reduce((a, b) => ({ self: a.self + b.self, children: a.children + b.children }), { self: 0, children: 0 });
}
