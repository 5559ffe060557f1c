/**
 * Dispatch: how long one machine waits between the end of one job and the start of the next, walking a
 * pipeline of trivial tasks, beside what it costs Node to spawn `/bin/true` on the same machine.
 *
 * Two views of the gap:
 * - script stamps: each task writes `$EPOCHREALTIME` (a bash builtin: no extra process) when it starts and
 *   when it ends. next start − previous end is everything takt does between two scripts: bash exiting,
 *   the agent reaping it and saving the report, `POST complete` (one transaction that ends the job and
 *   creates the next, whose answer carries it), the agent writing the next work dir, spawning bash,
 *   bash starting up.
 * - job records: next job's createdAt − previous job's finishedAt, the server-side part only, at the
 *   records' millisecond resolution.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeAtomic } from '../src/agent/state.js';
import type { Job } from '../src/model/machine.js';
import type { Flags } from './lib/args.js';
import { adminApi, withEndpoint, type Endpoint } from './lib/endpoint.js';
import { agentsReady, createMachines, MachineWatch } from './lib/machines.js';
import { installPack, seqPack } from './lib/packs.js';
import { profileWindow } from './lib/profile.js';
import { log, progress } from './lib/progress.js';
import type { BenchReport } from './lib/report.js';
import { spawnTimes } from './lib/spawn.js';
import { median, round, summarise } from './lib/stats.js';

const GOAL_MS = 3;
const PIPELINE = 'dispatch';

/** `true`, bracketed by two builtin-only stamps. */
const SCRIPT = 'echo "s $EPOCHREALTIME" >> "$TAKT_ROOT/stamps"\ntrue\necho "e $EPOCHREALTIME" >> "$TAKT_ROOT/stamps"\n';

export async function dispatchBench(flags: Flags, profileDir?: string): Promise<BenchReport> {
  const tasks = flags.int('tasks', 200, 2);
  flags.done();

  log('floor: spawning /bin/true, and bash with the task script, from Node…');
  const scratch = mkdtempSync(join(tmpdir(), 'takt-bench-dispatch-'));
  try {
    const trueMs = await spawnTimes('/bin/true', [], 200);
    writeFileSync(join(scratch, 'task.sh'), SCRIPT);
    const bashMs = await spawnTimes('bash', ['-e', 'task.sh'], 200, { cwd: scratch, env: { ...process.env, TAKT_ROOT: scratch } });
    const floor = median(trueMs);
    // The agent saves its state twice per job with this (write a temporary, rename it into place).
    const atomicMs: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t = performance.now();
      await writeAtomic(join(scratch, 'state.json'), { jobId: `j-${i}`, startedAt: new Date().toISOString() });
      atomicMs.push(performance.now() - t);
    }
    log(`  /bin/true ${round(floor)} ms, bash -e task.sh ${round(median(bashMs))} ms, agent state write ${round(median(atomicMs))} ms`);

    const run = await withEndpoint({ profileDir }, (ep) => walkPipeline(ep, tasks));
    const { jobs, stamps, wallMs } = run;
    const recordGaps = jobs.slice(1).map((j, i) => Date.parse(j.createdAt) - Date.parse(jobs[i]!.finishedAt!));
    const scriptGaps = stamps.slice(1).map((s, i) => s.start - stamps[i]!.end);
    const cycle = stamps.slice(1).map((s, i) => s.start - stamps[i]!.start);
    const parts = breakdown(run.agent, jobs, stamps);

    const gap = median(scriptGaps);
    const over = gap - floor;
    const g = summarise(scriptGaps);
    return {
      rows: [
        { metric: 'floor: spawn /bin/true from Node (median)', value: `${round(floor)} ms` },
        { metric: 'spawn bash -e task.sh from Node (median)', value: `${round(median(bashMs))} ms` },
        { metric: 'gap script end → next script start (median)', value: `${round(gap)} ms` },
        { metric: 'gap minus floor', value: `${round(over)} ms`, goal: `≤ ${GOAL_MS} ms`, met: over <= GOAL_MS },
        { metric: 'gap p90 / p99 / max', value: `${round(g.p90)} / ${round(g.p99)} / ${round(g.max)} ms` },
        { metric: 'server part: job finishedAt → next createdAt (median)', value: `${round(median(recordGaps))} ms` },
        { metric: 'cycle: script start → next script start (median)', value: `${round(median(cycle))} ms` },
        { metric: `wall time, ${tasks} tasks`, value: `${(wallMs / 1000).toFixed(2)} s (${round(wallMs / tasks)} ms/task)` },
        { metric: 'agent state write (write + rename; 2 per job)', value: `${round(median(atomicMs))} ms` },
        ...parts.map((p) => ({ metric: `  gap part: ${p.name} (median)`, value: `${round(p.median)} ms` })),
      ],
      data: {
        tasks,
        floorTrueMs: summarise(trueMs),
        spawnBashMs: summarise(bashMs),
        scriptGapMs: g,
        recordGapMs: summarise(recordGaps),
        stateWriteMs: summarise(atomicMs),
        parts,
        cycleMs: summarise(cycle),
        wallMs,
        scriptGaps,
        recordGaps,
      },
      notes: [
        'gap = everything between two scripts: agent report + POST complete (which answers with the next job) + work dir + spawn bash + bash start-up (bash alone costs the "spawn bash" row)',
        'the server part is at millisecond resolution (ISO timestamps of the job records)',
        'gap parts come from the agent log (job started/ended/report delivered, ms resolution), the job records and the stamps; their medians need not add up exactly to the median gap',
      ],
    };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** One local machine walks the pipeline; returns its job records, the scripts' stamps and the agent's log times. */
async function walkPipeline(ep: Endpoint, tasks: number) {
  const api = adminApi(ep);
  await installPack(api, seqPack({ name: PIPELINE, tasks, description: `${tasks} trivial tasks`, script: () => SCRIPT }));
  const [m] = await createMachines(api, { prefix: 'dispatch', count: 1, broker: 'local' });
  await agentsReady(ep.data, [m!]);
  const watch = new MachineWatch(api);
  await watch.start();
  const stampsFile = join(ep.data, 'machines', m!.id, 'root', 'stamps');
  let wallMs: number;
  try {
    log(`running ${tasks} tasks on one machine…`);
    const stop = progress('dispatch', () => ({ done: countLines(stampsFile) / 2, total: tasks }));
    const t0 = performance.now();
    const timed = profileWindow();
    try {
      await api.patch(`/machines/${m!.id}`, { pipeline: PIPELINE });
      await watch.until([m!.id], (s) => s === 'done', 600_000);
    } finally {
      timed();
      stop();
    }
    wallMs = performance.now() - t0;
  } finally {
    await watch.stop();
  }
  const jobs = (await api.get<{ items: Job[] }>('/jobs', { machine: m!.id, order: 'asc', limit: 1000 })).items;
  if (jobs.length !== tasks || jobs.some((j) => j.state !== 'succeeded')) throw new Error(`expected ${tasks} succeeded jobs, got ${jobs.length}`);
  const stamps = parseStamps(readFileSync(stampsFile, 'utf8'));
  if (stamps.length !== tasks) throw new Error(`expected ${tasks} stamp pairs, got ${stamps.length}`);
  return { jobs, stamps, wallMs, agent: readAgentLog(join(ep.data, 'machines', m!.id, 'agent.log')) };
}

function countLines(file: string): number {
  try {
    return readFileSync(file, 'utf8').split('\n').length - 1;
  } catch {
    return 0;
  }
}

/** Pairs the `s`/`e` stamps into per-task start and end times (ms). */
function parseStamps(text: string): Array<{ start: number; end: number }> {
  const out: Array<{ start: number; end: number }> = [];
  let start: number | null = null;
  for (const line of text.trim().split('\n')) {
    const [kind, t] = line.split(' ');
    const ms = Number(t) * 1000;
    if (kind === 's') start = ms;
    else if (kind === 'e' && start !== null) {
      out.push({ start, end: ms });
      start = null;
    }
  }
  return out;
}

interface AgentTimes {
  started?: number;
  ended?: number;
  delivered?: number;
}

/** The agent's JSON-lines log: when it started each job, saw it end, and had its report answered. */
function readAgentLog(file: string): Map<string, AgentTimes> {
  const out = new Map<string, AgentTimes>();
  const key: Record<string, keyof AgentTimes> = { 'job started': 'started', 'job ended': 'ended', 'job report delivered': 'delivered' };
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const e = JSON.parse(line) as { time: string; msg: string; jobId?: string };
      const k = key[e.msg];
      if (!k || !e.jobId) continue;
      const t = out.get(e.jobId) ?? {};
      t[k] = Date.parse(e.time);
      out.set(e.jobId, t);
    } catch {
      /* not one of the agent's lines */
    }
  }
  return out;
}

/**
 * Splits each gap (job i's script ends → job i+1's script starts) at the moments the agent log and the
 * job records pin down, in the order they happen.
 */
function breakdown(agent: Map<string, AgentTimes>, jobs: Job[], stamps: Array<{ start: number; end: number }>): Array<{ name: string; median: number }> {
  const parts: Array<{ name: string; values: number[] }> = [
    { name: 'bash exits → agent has its result (reap, outputs)', values: [] },
    { name: 'result → server committed the completion (log tail, pending.json, POST complete)', values: [] },
    { name: 'completion committed → next job created (the same transaction)', values: [] },
    { name: 'next job created → agent has the answer (answer, clear pending.json)', values: [] },
    { name: 'answer → agent starts the job', values: [] },
    { name: 'job started → script starts (current.json, work dir, spawn, bash start-up)', values: [] },
  ];
  for (let i = 0; i + 1 < jobs.length && i + 1 < stamps.length; i++) {
    const a = agent.get(jobs[i]!.id);
    const b = agent.get(jobs[i + 1]!.id);
    if (!a?.ended || !a.delivered || !b?.started) return [];
    const points = [stamps[i]!.end, a.ended, Date.parse(jobs[i]!.finishedAt!), Date.parse(jobs[i + 1]!.createdAt), a.delivered, b.started, stamps[i + 1]!.start];
    parts.forEach((p, k) => p.values.push(points[k + 1]! - points[k]!));
  }
  return parts.map((p) => ({ name: p.name, median: median(p.values) }));
}
