/**
 * Where the agent keeps things. Under its home directory (`--dir`), its own:
 *
 *   state/current.json, state/pending.json   exactly-once bookkeeping (state.ts)
 *   outputs/                                 a job's outputs, copied out of a sandbox before reading
 *
 * and under the scripts' side (`--sandbox`, the home directory when not given):
 *
 *   jobs/<jobId>/task.sh                     the job's work dir (the script's cwd)
 *   jobs/<jobId>/.takt/params/<key>          what `takt-get KEY` prints
 *   jobs/<jobId>/.takt/outputs/<key>         what `takt-set KEY VALUE` wrote
 *   jobs/<jobId>/.takt/control/{next_boot,action}   what `takt-power` asked (power.ts)
 *   jobs/<jobId>/.takt/control/image         what `takt-image` asked (image.ts)
 *   bin/takt-get, bin/takt-set, bin/takt-power, bin/takt-image   helper commands, first on the script's PATH
 *   home/, tmp/                              HOME and TMPDIR of scripts run as another user
 */
import { join } from 'node:path';

export interface AgentPaths {
  home: string;
  stateDir: string;
  /** Where outputs of a script run as another user are copied before they are read. */
  scratchDir: string;
  jobsDir: string;
  binDir: string;
  scriptHome: string;
  scriptTmp: string;
}

export interface JobPaths {
  workDir: string;
  script: string;
  paramsDir: string;
  outputsDir: string;
  /** Where `takt-power` and `takt-image` write their requests (TAKT_CONTROL_DIR). */
  controlDir: string;
}

/** The agent's paths; `sandbox` holds what scripts see (default: the home dir itself). */
export function agentPaths(home: string, sandbox = home): AgentPaths {
  return {
    home,
    stateDir: join(home, 'state'),
    scratchDir: join(home, 'outputs'),
    jobsDir: join(sandbox, 'jobs'),
    binDir: join(sandbox, 'bin'),
    scriptHome: join(sandbox, 'home'),
    scriptTmp: join(sandbox, 'tmp'),
  };
}

export function jobPaths(jobsDir: string, jobId: string): JobPaths {
  const workDir = join(jobsDir, safeFileName(jobId));
  return {
    workDir,
    script: join(workDir, 'task.sh'),
    paramsDir: join(workDir, '.takt', 'params'),
    outputsDir: join(workDir, '.takt', 'outputs'),
    controlDir: join(workDir, '.takt', 'control'),
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
