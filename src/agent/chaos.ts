/**
 * Fault injection for the agent, to prove the endpoint's invariants under the failures real fleets see:
 * jobs that fail, a slow network, a connection that drops mid-job, an agent that dies mid-job.
 *
 * `takt agent --chaos 'fail=0.1,latency=200ms,drop=0.05,drop-for=3s,die=0.02,seed=7'` (or TAKT_AGENT_CHAOS,
 * which local machines inherit from their endpoint). Every injection is logged as a warning that starts
 * with `chaos:`, so no injected fault can be mistaken for a real one.
 */
import { NetworkError } from '../client/http.js';
import { DURATION_RANGES, parseDuration } from '../model/duration.js';
import { TaktError } from '../model/errors.js';
import type { AgentLog } from './log.js';
import { sleep } from './retry.js';

export interface ChaosSpec {
  /** Fraction of jobs reported as failed (exit 1) without running their script. */
  fail: number;
  /** Each request to the endpoint waits a random time up to this first. */
  latencyMs: number;
  /** Fraction of jobs during which the agent loses the endpoint for `dropMs`. */
  drop: number;
  dropMs: number;
  /** Fraction of jobs during which the agent process is killed (SIGKILL) while the script runs. */
  die: number;
  /** Seeds the choices, so a run can be repeated; mixed with the machine id so machines differ. */
  seed: number;
}

const FRACTIONS = ['fail', 'drop', 'die'] as const;
const KEYS = ['fail', 'latency', 'drop', 'drop-for', 'die', 'seed'];

export function parseChaos(text: string): ChaosSpec {
  const spec: ChaosSpec = { fail: 0, latencyMs: 0, drop: 0, dropMs: 3000, die: 0, seed: 1 };
  for (const part of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const [key, value] = part.split('=', 2).map((s) => s.trim());
    const bad = (why: string) => new TaktError('bad_request', `chaos '${part}': ${why}; e.g. fail=0.1,latency=200ms,drop=0.05,drop-for=3s,die=0.02,seed=7`, { path: 'chaos' });
    if (!key || value === undefined || value === '') throw bad('expected key=value');
    if ((FRACTIONS as readonly string[]).includes(key)) {
      const n = Number(value);
      if (!Number.isFinite(n) || n < 0 || n > 1) throw bad('a fraction from 0 to 1');
      spec[key as (typeof FRACTIONS)[number]] = n;
    } else if (key === 'latency') spec.latencyMs = parseDuration(value, 'chaos latency', DURATION_RANGES.chaos);
    else if (key === 'drop-for') spec.dropMs = parseDuration(value, 'chaos drop-for', DURATION_RANGES.chaos);
    else if (key === 'seed') {
      if (!/^\d+$/.test(value)) throw bad('a whole number');
      spec.seed = Number(value);
    } else throw bad(`unknown key '${key}' (known: ${KEYS.join(', ')})`);
  }
  return spec;
}

/** What chaos does to one job. */
export interface JobChaos {
  /** Report exit 1 without running the script. */
  fail: boolean;
  /** Lose the endpoint this many ms into the job (null: not this job). */
  dropAtMs: number | null;
  /** Kill the agent this many ms into the job (null: not this job). */
  dieAtMs: number | null;
}

export class Chaos {
  private state: number;
  private offlineUntil = 0;

  constructor(
    readonly spec: ChaosSpec,
    private readonly machineId: string,
    private readonly log: AgentLog,
  ) {
    this.state = mix(spec.seed >>> 0, machineId);
  }

  /** mulberry32: small, fast, and the same sequence for the same seed. */
  random(): number {
    const [value, next] = mulberry32(this.state);
    this.state = next;
    return value;
  }

  /** Called by the HTTP client before every request: latency, and refusal while the link is down. */
  async beforeRequest(): Promise<void> {
    if (this.spec.latencyMs > 0) await sleep(Math.floor(this.random() * this.spec.latencyMs));
    if (Date.now() < this.offlineUntil) throw new NetworkError('chaos: connection dropped');
  }

  /**
   * Decides the job's fate when it starts, from the seed, the machine and the job: the same job always
   * meets the same fate, and a task that is resumed (a new job) draws again. (Drawing from the agent's
   * own sequence made an agent that died replay the same fate on its next job after restarting, forever.)
   */
  forJob(jobId: string): JobChaos {
    let state = mix(mix(this.spec.seed >>> 0, this.machineId), jobId);
    const random = () => {
      const [value, next] = mulberry32(state);
      state = next;
      return value;
    };
    const fail = random() < this.spec.fail;
    const drop = !fail && random() < this.spec.drop;
    const die = !fail && random() < this.spec.die;
    // Early enough that short scripts are still running.
    const at = () => Math.floor(20 + random() * 200);
    const c: JobChaos = { fail, dropAtMs: drop ? at() : null, dieAtMs: die ? at() : null };
    if (fail || drop || die) this.log('warn', 'chaos: injecting a fault into this job', { jobId, ...c, dropMs: drop ? this.spec.dropMs : undefined });
    return c;
  }

  /** Schedules the job's drop and death; returns a cancel for when the job ends first. */
  arm(jobId: string, c: JobChaos): () => void {
    const timers: NodeJS.Timeout[] = [];
    if (c.dropAtMs !== null) {
      timers.push(
        setTimeout(() => {
          this.offlineUntil = Date.now() + this.spec.dropMs;
          this.log('warn', 'chaos: connection dropped', { jobId, forMs: this.spec.dropMs });
        }, c.dropAtMs),
      );
    }
    if (c.dieAtMs !== null) {
      timers.push(
        setTimeout(() => {
          this.log('warn', 'chaos: agent dies now (SIGKILL)', { jobId });
          process.kill(process.pid, 'SIGKILL');
        }, c.dieAtMs),
      );
    }
    return () => timers.forEach(clearTimeout);
  }
}

function mix(h: number, text: string): number {
  for (const c of text) h = Math.imul(h ^ c.charCodeAt(0), 2654435761) >>> 0;
  return h || 1;
}

/** One step of mulberry32: the value in [0, 1) and the next state. */
function mulberry32(state: number): [number, number] {
  const next = (state + 0x6d2b79f5) >>> 0;
  let t = next;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return [((t ^ (t >>> 14)) >>> 0) / 4294967296, next];
}
