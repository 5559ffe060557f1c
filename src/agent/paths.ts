/**
 * Where the agent keeps things under its home directory:
 *
 *   state/current.json, state/pending.json   exactly-once bookkeeping (state.ts)
 *   jobs/<jobId>/task.sh                     the job's work dir (the script's cwd)
 *   jobs/<jobId>/.takt/params/<key>          what `takt-get KEY` prints
 *   jobs/<jobId>/.takt/outputs/<key>         what `takt-set KEY VALUE` wrote
 *   bin/takt-get, bin/takt-set               helper commands, first on the script's PATH
 */
import { join } from 'node:path';

export interface AgentPaths {
  home: string;
  stateDir: string;
  jobsDir: string;
  binDir: string;
}

export interface JobPaths {
  workDir: string;
  script: string;
  paramsDir: string;
  outputsDir: string;
}

export function agentPaths(home: string): AgentPaths {
  return { home, stateDir: join(home, 'state'), jobsDir: join(home, 'jobs'), binDir: join(home, 'bin') };
}

export function jobPaths(jobsDir: string, jobId: string): JobPaths {
  const workDir = join(jobsDir, safeFileName(jobId));
  return {
    workDir,
    script: join(workDir, 'task.sh'),
    paramsDir: join(workDir, '.takt', 'params'),
    outputsDir: join(workDir, '.takt', 'outputs'),
  };
}

/** True when `name` can be used as one path component as is (no separators, no dot names). */
export function isSafeFileName(name: string): boolean {
  return /^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$/.test(name);
}

/** Job ids come from the server; a strange one must still not escape the jobs directory. */
function safeFileName(name: string): string {
  return isSafeFileName(name) ? name : `_${name.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 190)}`;
}
