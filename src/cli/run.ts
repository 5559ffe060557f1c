/**
 * `takt run -l role=web -- uptime`: an ad-hoc command on many machines, like `ansible -m shell`. Each
 * machine gets a recorded work order (history shows the command and who ran it); each machine's output
 * and exit code are printed as it finishes, then a summary; the exit code is 0 only if all succeeded.
 */
import type { Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import { DURATION_RANGES, parseDuration } from '../model/duration.js';
import { TaktError } from '../model/errors.js';
import type { Job, LogChunk, WorkOrder } from '../model/machine.js';
import { collect, type Globals } from './client.js';
import { print, shown, shownErr } from './output.js';
import { UsageError } from './usage.js';

const enc = encodeURIComponent;

interface RunItem {
  machine: string;
  workOrder: WorkOrder;
  behind: { job: string; task: string } | null;
  note: string | null;
}

/** One machine's result, as printed and as `-o json` gives it. */
export interface RunResult {
  machine: string;
  /** Null for a machine left out (--skip-offline). */
  workOrder: string | null;
  job: string | null;
  /**
   * The work order's end: succeeded, failed or cancelled; `not-started` when cancelled at --wait before any
   * machine claimed it; `skipped` when left out by --skip-offline.
   */
  state: WorkOrder['state'] | 'not-started' | 'skipped';
  /** The command's exit code; null when it did not exit (timed out, lost, cancelled, never ran). */
  rc: number | null;
  /** How its job ended (`lost`, `cancelled`, …): what failed means when there is no exit code; null when it never ran. */
  jobState: Job['state'] | null;
  reason: string | null;
  output: string;
}

/** `rc=3`, or how the job ended when it did not exit (`lost`, not the work order's `failed`). */
const outcome = (r: RunResult): string => (r.rc !== null ? `rc=${r.rc}` : (r.jobState ?? r.state));

const TERMINAL: ReadonlyArray<WorkOrder['state']> = ['succeeded', 'failed', 'cancelled'];

/** `--wait` by default: the command's own timeout (10m when not given) plus this for queuing and reporting. */
const WAIT_GRACE_MS = 60_000;
const DEFAULT_TIMEOUT_MS = 10 * 60_000;

export function runCommand(program: Command, g: Globals, api: () => ApiClient) {
  program
    .command('run')
    .description('run an ad-hoc command on machines, as a recorded work order per machine; prints each output and exit code')
    .argument('<command...>', 'the command, after -- (run with bash, sandboxed like a task)')
    .option('-l, --selector <selector>', 'machines by label, e.g. role=web,env!=prod')
    .option('--machine <machine>', 'a machine by name (repeatable)', collect)
    .option('--timeout <duration>', 'how long the command may run on each machine, e.g. 90s, 5m (default 10m)')
    .option('--wait <duration>', 'how long to wait for machines to start it; then the work orders not started are cancelled and named, exit 1 (default: --timeout + 1m)')
    .option('--skip-offline', 'leave out machines powered off or with no agent in touch (named, exit 1) instead of queuing for them')
    .addHelpText(
      'after',
      `
The command runs through each machine's agent as a one-task work order: it queues behind a running job,
it is in \`takt workorders list\` and history with the command and who ran it, and its log is masked like
any job's secure values of the machine. Exit code 0 only when it succeeded on every machine. A machine
with no agent in touch is named at once; a command that has not started by --wait is cancelled there
(never run later) and the machine named; --skip-offline leaves such machines out from the start.

Examples:
  $ takt run -l role=web -- uptime
  $ takt run --machine web-1 --machine web-2 --timeout 30s -- 'systemctl is-active nginx'
  $ takt run -l role=db -o json -- df -h /var
  $ takt run -l role=web --skip-offline --wait 2m -- 'systemctl restart app'`,
    )
    .action(async (words: string[], o: { selector?: string; machine?: string[]; timeout?: string; wait?: string; skipOffline?: boolean }) => {
      const command = words.join(' ');
      const flag = (name: string, text: string) => {
        try {
          return parseDuration(text, name, DURATION_RANGES.taskTimeout);
        } catch (err) {
          throw new UsageError(`--${name}: ${(err as Error).message}`);
        }
      };
      const waitMs = o.wait !== undefined ? flag('wait', o.wait) : (o.timeout !== undefined ? flag('timeout', o.timeout) : DEFAULT_TIMEOUT_MS) + WAIT_GRACE_MS;
      if (!o.selector && !o.machine?.length) throw new UsageError('no machines: give -l <selector> or --machine M (an empty selection is refused, so a command never runs everywhere by accident)');
      if (o.selector !== undefined && o.selector.trim() === '') throw new UsageError('-l: the selector is empty; give key=value terms, e.g. -l role=web');
      const client = api();
      // Ctrl-C from here on: the work orders not started yet are cancelled (they would otherwise run later,
      // behind the operator's back); a second Ctrl-C exits at once.
      const stop = interruptible();
      try {
        await runOn(client, g, o, command, waitMs, stop);
      } finally {
        stop.dispose();
      }
    });
}

/** A Ctrl-C (SIGINT) while `takt run` waits: the first asks for the queued work orders to be cancelled, the second exits. */
interface Interrupt {
  requested: boolean;
  dispose(): void;
}

/** Installs the SIGINT handler `takt run` waits under (see Interrupt); `dispose` removes it. */
function interruptible(): Interrupt {
  const state: Interrupt = {
    requested: false,
    dispose: () => process.off('SIGINT', onSigint),
  };
  function onSigint() {
    if (state.requested) {
      process.stderr.write(pc.yellow('takt run: interrupted again: exiting now; work orders already started run on (takt workorders list)') + '\n');
      process.exit(130);
    }
    state.requested = true;
    process.stderr.write(pc.yellow('takt run: interrupted: cancelling the work orders not started yet (Ctrl-C again to exit at once; commands already started run on)') + '\n');
  }
  process.on('SIGINT', onSigint);
  return state;
}

/** `takt run` once the command is checked: queues the work orders, follows them, prints and sets the exit code (130 when interrupted). */
async function runOn(client: ApiClient, g: Globals, o: { selector?: string; machine?: string[]; timeout?: string; wait?: string; skipOffline?: boolean }, command: string, waitMs: number, stop: Interrupt): Promise<void> {
  const r = await client.post<{ items: RunItem[]; skipped?: Array<{ machine: string; why: string }> }>('/run', {
    command,
    ...(o.skipOffline ? { skipOffline: true } : {}),
    ...(o.machine?.length ? { machines: o.machine } : {}),
    ...(o.selector !== undefined ? { selector: o.selector } : {}),
    ...(o.timeout !== undefined ? { timeout: o.timeout } : {}),
  });
  const table = g().output === 'table';
  const skipped = r.skipped ?? [];
  // Named at once on stderr, whatever the output format: these machines will not run it (or not soon).
  for (const x of skipped) process.stderr.write(pc.yellow(shownErr(`${x.machine}: ${x.why}: left out (--skip-offline)`)) + '\n');
  if (!table) for (const i of r.items) if (i.note) process.stderr.write(shownErr(`${i.machine}: ${i.note}`) + '\n');
  if (table) {
    process.stderr.write(pc.dim(shownErr(`queued on ${r.items.length} machine(s): ${r.items.map((i) => `${i.machine} (${i.workOrder.id})`).join(', ')}`)) + '\n');
    for (const i of r.items) {
      if (i.behind) process.stderr.write(pc.yellow(shownErr(`${i.machine}: busy with job ${i.behind.job} (${i.behind.task}); the command queues behind it`)) + '\n');
      if (i.note) process.stderr.write(pc.yellow(shownErr(`${i.machine}: ${i.note}`)) + '\n');
    }
  }
  const results = await follow(client, r.items, Date.now() + waitMs, o.wait ?? `${Math.round(waitMs / 1000)}s`, stop, (res) => {
    if (table) process.stdout.write(block(res));
  });
  for (const x of skipped) results.push({ machine: x.machine, workOrder: null, job: null, state: 'skipped', rc: null, jobState: null, reason: `${x.why}: left out (--skip-offline)`, output: '' });
  const failed = results.filter((x) => x.state !== 'succeeded');
  if (table) {
    const bad = failed.map((x) => `${x.machine}: ${outcome(x)}`).join(', ');
    const line = `${results.length} machine(s): ${results.length - failed.length} succeeded${failed.length ? `, ${failed.length} failed (${bad})` : ''}`;
    process.stdout.write((failed.length ? pc.red(shown(line)) : pc.green(shown(line))) + '\n');
  } else {
    print(g().output, results);
  }
  if (failed.length) process.exitCode = 1;
  // As a shell reports a command ended by SIGINT (128 + 2).
  if (stop.requested) process.exitCode = 130;
}

/**
 * Waits for every work order to end, in finishing order. At `deadline` (epoch ms) the ones still queued —
 * no machine claimed them — are cancelled, so the command never runs later behind the operator's back;
 * those that started are followed on (their own timeout bounds them).
 */
async function follow(client: ApiClient, items: RunItem[], deadline: number, waitText: string, stop: Interrupt, done: (r: RunResult) => void): Promise<RunResult[]> {
  const open = new Map(items.map((i) => [i.workOrder.id, i]));
  const results: RunResult[] = [];
  const expired = new Set<string>();
  let cancelled = false;
  let interrupted = false;
  while (open.size > 0) {
    if (!cancelled && (Date.now() >= deadline || stop.requested)) {
      cancelled = true;
      interrupted = stop.requested;
      for (const id of open.keys()) {
        const wo = await client.get<WorkOrder>(`/workorders/${enc(id)}`);
        if (wo.state !== 'queued') continue;
        try {
          await client.delete<WorkOrder>(`/workorders/${enc(id)}`);
          expired.add(id);
        } catch (err) {
          // It started (or ended) between the look and the cancel: follow it like the others.
          if (!(err instanceof TaktError)) throw err;
        }
      }
      if (interrupted) {
        const names = [...expired].map((id) => `${open.get(id)!.machine} (${id})`);
        const left = open.size - expired.size;
        process.stderr.write(pc.yellow(shownErr(`takt run: cancelled ${names.length} work order(s) not started${names.length ? `: ${names.join(', ')}` : ''}${left ? `; waiting for the ${left} already started` : ''}`)) + '\n');
      }
    }
    for (const [id, item] of [...open]) {
      const wo = await client.get<WorkOrder>(`/workorders/${enc(id)}`);
      if (!TERMINAL.includes(wo.state)) continue;
      open.delete(id);
      const r = await result(client, item.machine, wo);
      if (expired.has(id) && r.job === null) {
        r.state = 'not-started';
        r.reason = interrupted
          ? 'not started when interrupted (Ctrl-C): cancelled, it will not run later'
          : `not started within --wait ${waitText}${item.note ? ` (${item.note.split(':')[0]})` : ''}: cancelled, it will not run later`;
      }
      results.push(r);
      done(r);
    }
    if (open.size > 0) await new Promise((res) => setTimeout(res, 300));
  }
  return results;
}

async function result(client: ApiClient, machine: string, wo: WorkOrder): Promise<RunResult> {
  const jobs = await client.get<{ items: Job[] }>('/jobs', { workorder: wo.id, limit: '1' });
  const job = jobs.items[0];
  let output = '';
  if (job) {
    // Pages of the log, bounded by the job's own log bound on the endpoint.
    for (let after = 0, page = 0; page < 10_000; page++) {
      const log = await client.get<{ chunks: LogChunk[] }>(`/jobs/${enc(job.id)}/log`, { after: String(after), limit: '10000' });
      for (const c of log.chunks) if (c.stream !== 'system') output += c.data;
      if (log.chunks.length === 0) break;
      after = log.chunks[log.chunks.length - 1]!.seq;
    }
  }
  return { machine, workOrder: wo.id, job: job?.id ?? null, state: wo.state, rc: job?.exitCode ?? null, jobState: job?.state ?? null, reason: wo.state === 'succeeded' ? null : (wo.reason ?? job?.reason ?? null), output };
}

/** `web-1 | rc=0 >>` and the output, as ansible prints it. */
function block(r: RunResult): string {
  const head = r.state === 'succeeded' ? pc.green(shown(`${r.machine} | rc=${r.rc ?? 0} >>`)) : pc.red(shown(`${r.machine} | ${r.state === 'not-started' ? 'NOT STARTED' : 'FAILED'} | ${outcome(r)} >>`));
  const body = shown(r.output) + (r.output && !r.output.endsWith('\n') ? '\n' : '');
  const why = r.state !== 'succeeded' && r.reason ? pc.dim(shown(r.reason)) + '\n' : '';
  return `${head}\n${body}${why}`;
}
