/**
 * When the agent dies, a detached script keeps running. Before the agent reports that job as
 * interrupted (and the endpoint hands out the next one), it kills what is left of it, so two jobs never
 * run side by side. The processes are found by the TAKT_JOB_ID they inherited — not by a saved pid,
 * which may belong to something else after a reboot.
 */
import { readdir, readFile } from 'node:fs/promises';

/** SIGKILLs every process of this user whose environment carries TAKT_JOB_ID=<jobId>. Linux only; elsewhere a no-op. */
export async function killJobProcesses(jobId: string): Promise<number[]> {
  const needle = Buffer.from(`\0TAKT_JOB_ID=${jobId}\0`);
  let pids: number[];
  try {
    pids = (await readdir('/proc')).filter((n) => /^\d+$/.test(n)).map(Number);
  } catch {
    return [];
  }
  const killed: number[] = [];
  for (const pid of pids) {
    if (pid === process.pid) continue;
    let environ: Buffer;
    try {
      environ = await readFile(`/proc/${pid}/environ`);
    } catch {
      continue; // gone, or another user's
    }
    // Frame with NULs so the first and last variables match the same way as the others.
    if (!Buffer.concat([Buffer.from([0]), environ, Buffer.from([0])]).includes(needle)) continue;
    try {
      process.kill(pid, 'SIGKILL');
      killed.push(pid);
    } catch {
      /* already gone */
    }
  }
  return killed;
}
