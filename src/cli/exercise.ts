/**
 * `takt exercise PIPELINE --envs local,netns`: one fresh machine per environment walks the whole
 * pipeline, then goes again; the coverage matrix shows, task by task, which variant ran where, what was a
 * declared no-op (and why), what passed and what failed (with its log line). Exercise, don't trim.
 */
import type { Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import { DURATION_RANGES, formatDuration, parseDuration } from '../model/duration.js';
import { TaktError } from '../model/errors.js';
import type { Job, LogChunk, Machine } from '../model/machine.js';
import { collect, PARAM_TYPING, parseParamPairs, type GlobalOptions } from './client.js';
import { print, renderTable, shown, shownErr } from './output.js';
import { examples } from './help.js';
import { UsageError } from './usage.js';

export type CellStatus = 'passed' | 'noop' | 'failed' | 'not-reached';

export interface Cell {
  status: CellStatus;
  variant: string | null;
  /** The no-op's reason, or why the task failed. */
  reason: string | null;
  /** The last line the failing task printed. */
  logLine: string | null;
  jobId: string | null;
}

export interface CoverageRow {
  stage: string;
  task: string;
  cells: Record<string, Cell>;
}

export interface ExerciseResult {
  pipeline: string;
  envs: string[];
  machines: Record<string, { id: string; name: string; state: string; reason: string | null; durationMs: number }>;
  rows: CoverageRow[];
  passed: boolean;
}

const NO_OP = 'no-op: ';


/** Environments whose broker has another name: `metal` machines are the qemu broker's network-booted VMs. */
const ENV_BROKERS: Record<string, string> = { metal: 'qemu' };

/**
 * The bootenv a `metal` machine boots to walk a pipeline: the discovery environment runs takt's agent in
 * memory with the machine's own token (docs/provisioning.md "Discovery"), so no disk and no image is
 * needed. The built environment (node and the agent in an initramfs) needs more than the qemu broker's
 * default 512 MiB.
 */
const METAL_VM = { bootenv: 'discovery', memoryMiB: 1024 } as const;

/** One cell from the jobs a machine ran for one task (the last run decides; earlier ones were resumed). */
export function cellFor(jobs: Job[], logLine: (job: Job) => string | null): Cell {
  const job = jobs[jobs.length - 1];
  if (!job) return { status: 'not-reached', variant: null, reason: null, logLine: null, jobId: null };
  if (job.state === 'succeeded') {
    const noop = job.reason?.startsWith(NO_OP) ? job.reason.slice(NO_OP.length) : null;
    return { status: noop !== null ? 'noop' : 'passed', variant: job.variant, reason: noop, logLine: null, jobId: job.id };
  }
  if (job.state === 'running') return { status: 'not-reached', variant: job.variant, reason: 'still running', logLine: null, jobId: job.id };
  return { status: 'failed', variant: job.variant, reason: job.reason, logLine: logLine(job), jobId: job.id };
}

/** The coverage matrix: pipeline tasks in order × environments. */
export function coverage(order: Array<{ stage: string; task: string }>, jobsByEnv: Record<string, Job[]>, logLine: (job: Job) => string | null): CoverageRow[] {
  return order.map(({ stage, task }) => ({
    stage,
    task,
    cells: Object.fromEntries(
      Object.entries(jobsByEnv).map(([env, jobs]) => [env, cellFor(jobs.filter((j) => j.kind === 'pipeline' && j.stage === stage && j.task === task), logLine)]),
    ),
  }));
}

/** The last non-empty line of a log, without its trailing newline. */
export function lastLine(chunks: LogChunk[]): string | null {
  const text = chunks.map((c) => c.data).join('');
  const lines = text.split('\n').map((l) => l.trimEnd()).filter((l) => l.length > 0);
  return lines.length ? lines[lines.length - 1]!.slice(0, 200) : null;
}

function cellText(c: Cell): string {
  switch (c.status) {
    case 'passed':
      return pc.green(shown(`✓ ${c.variant}`));
    case 'noop':
      return pc.yellow(shown(`– no-op (${c.variant}): ${c.reason}`));
    case 'failed':
      return pc.red(shown(`✗ ${c.variant}: ${c.reason}`)) + (c.logLine ? `\n  ${pc.dim(shown(c.logLine))}` : '');
    case 'not-reached':
      return pc.dim(shown(c.reason ?? 'not reached'));
  }
}

export function exerciseText(r: ExerciseResult): string {
  const head = `exercise ${pc.bold(shown(r.pipeline))} on ${shown(r.envs.join(', '))}`;
  const table = renderTable(r.rows, [
    { header: 'stage', get: (row) => row.stage },
    { header: 'task', get: (row) => row.task },
    ...r.envs.map((env) => ({ header: shown(env), get: (row: CoverageRow) => cellText(row.cells[env]!), styled: true })),
  ]);
  const machines = r.envs.map((env) => {
    const m = r.machines[env]!;
    return `  ${shown(env)}: ${m.state === 'done' ? pc.green('done') : pc.red(shown(m.state))} in ${formatDuration(m.durationMs)}${m.reason ? shown(` — ${m.reason}`) : ''}`;
  });
  return [head, table, ...machines, r.passed ? pc.green('every environment walked the whole pipeline') : pc.red('the pipeline failed in at least one environment')].join('\n');
}

interface Options {
  envs: string;
  param?: string[];
  timeout: string;
  keep?: boolean;
}

export function exerciseCommand(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
  program
    .command('exercise <pipeline>')
    .summary('run a pipeline on a fresh machine per environment; print the task × environment coverage matrix')
    .description(
      'run PIPELINE on one fresh machine per environment, destroy them, and print the coverage matrix:\n' +
        'task × environment → the variant that ran, a no-op (with its reason), passed, or failed (with its log line).\n' +
        'Exits 1 when any environment fails. Environments are broker names (local, netns), or metal: a VM of the qemu broker\n' +
          'that boots the discovery bootenv from the network and walks the pipeline there, in memory (needs takt serve --provision\n' +
          '--dhcp full --qemu-bridge BR and takt bootenv build discovery --install; under software emulation give --timeout 20m).',
    )
    .addHelpText('after', examples('takt exercise demo --envs local,netns', 'takt exercise demo --envs local --keep', 'takt exercise demo --envs local,netns,metal --timeout 20m'))
    .option('--envs <list>', 'comma-separated environments (brokers)', 'local')
    .option('--param <key=value>', `param for the machines (repeatable); ${PARAM_TYPING}`, collect)
    .option('--timeout <duration>', 'give up waiting after this long', '10m')
    .option('--keep', 'keep the machines afterwards, to look at them')
    .action(async (pipeline: string, o: Options) => {
      const r = await exercise(api(), pipeline, o);
      print(g().output, r, () => exerciseText(r));
      if (!r.passed) process.exitCode = 1;
    });
}

async function exercise(client: ApiClient, pipeline: string, o: Options): Promise<ExerciseResult> {
  const envs = [...new Set(o.envs.split(',').map((e) => e.trim()).filter(Boolean))];
  if (envs.length === 0) throw new UsageError('--envs names no environment; e.g. --envs local,netns', { path: 'envs' });
  const timeoutMs = parseDuration(o.timeout, '--timeout', DURATION_RANGES.wait);
  const params = parseParamPairs(o.param);
  const p = await client.get<{ stages: string[] }>(`/pipelines/${encodeURIComponent(pipeline)}`);
  const order: Array<{ stage: string; task: string }> = [];
  for (const stage of p.stages) {
    const s = await client.get<{ tasks: string[] }>(`/stages/${encodeURIComponent(stage)}`);
    for (const task of s.tasks) order.push({ stage, task });
  }
  // How far the machine is: the tasks that succeeded in this pass (its position is kept by name).
  const position = (m: Machine) => Math.min(order.length, m.passed.length);

  const suffix = Math.random().toString(36).slice(2, 6);
  const created: Record<string, Machine> = {};
  const started = Date.now();
  const cleanup = async () => {
    if (o.keep) return;
    for (const m of Object.values(created)) await client.delete(`/machines/${encodeURIComponent(m.id)}`).catch(() => undefined);
  };
  const onSignal = () => void cleanup().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  try {
    for (const env of envs) {
      const vm = env === 'metal' ? { vm: METAL_VM } : {};
      const r = await client
        .post<{ items: Machine[] }>('/machines', { name: `exercise-${pipeline}-${env}-${suffix}`, broker: ENV_BROKERS[env] ?? env, pipeline, ...vm, ...(Object.keys(params).length ? { params } : {}) })
        .catch((err: unknown) => {
          if (env === 'metal' && err instanceof TaktError && err.code === 'not_found' && err.path === '/boot/bootenv') {
            throw new TaktError('conflict', `a metal machine walks the pipeline in the '${METAL_VM.bootenv}' bootenv, which no pack defines here: build and install it with takt bootenv build discovery --install`, { path: 'envs' });
          }
          throw err;
        });
      created[env] = r.items[0]!;
    }
    const finished: Record<string, { machine: Machine; at: number }> = {};
    const progress = new Map<string, string>();
    const deadline = started + timeoutMs;
    while (Object.keys(finished).length < envs.length) {
      for (const env of envs) {
        if (finished[env]) continue;
        const m = await client.get<Machine>(`/machines/${encodeURIComponent(created[env]!.id)}`);
        const at = m.stage !== null && m.task !== null ? { stage: m.stage, task: m.task } : undefined;
        const line = `${env}: ${m.state}${at && m.state !== 'done' ? ` at ${at.stage}/${at.task} (${position(m) + 1}/${order.length})` : ''}`;
        if (progress.get(env) !== line) process.stderr.write(pc.dim(shownErr(line)) + '\n');
        progress.set(env, line);
        // paused (a task's exit 16) is an end too: nothing more runs until someone resumes it.
        if (m.state === 'done' || m.state === 'stopped' || m.state === 'paused') finished[env] = { machine: m, at: Date.now() };
      }
      if (Object.keys(finished).length === envs.length) break;
      if (Date.now() > deadline) {
        const waiting = envs.filter((e) => !finished[e]);
        for (const env of waiting) finished[env] = { machine: { ...created[env]!, state: 'running', reason: `still running after ${o.timeout}` } as Machine, at: Date.now() };
        break;
      }
      await new Promise((r) => setTimeout(r, 300));
    }

    const jobsByEnv: Record<string, Job[]> = {};
    const logs = new Map<string, string | null>();
    for (const env of envs) {
      const jobs = (await client.get<{ items: Job[] }>('/jobs', { machine: created[env]!.id, order: 'asc', limit: 1000 })).items;
      jobsByEnv[env] = jobs;
      for (const j of jobs.filter((x) => x.state === 'failed' || x.state === 'lost')) {
        const log = await client.get<{ chunks: LogChunk[] }>(`/jobs/${encodeURIComponent(j.id)}/log`, { limit: 10_000 });
        logs.set(j.id, lastLine(log.chunks));
      }
    }
    const rows = coverage(order, jobsByEnv, (j) => logs.get(j.id) ?? null);
    const machines = Object.fromEntries(
      envs.map((env) => {
        const { machine, at } = finished[env]!;
        return [env, { id: machine.id, name: machine.name, state: machine.state, reason: machine.reason, durationMs: at - started }];
      }),
    );
    return { pipeline, envs, machines, rows, passed: envs.every((e) => machines[e]!.state === 'done') };
  } finally {
    process.off('SIGINT', onSignal);
    await cleanup();
  }
}
