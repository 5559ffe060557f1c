/**
 * `takt run -l role=web -- uptime`: an ad-hoc command on many machines, like `ansible -m shell`. Each
 * machine gets a recorded work order (history shows the command and who ran it); each machine's output
 * and exit code are printed as it finishes, then a summary; the exit code is 0 only if all succeeded.
 */
import type { Command } from 'commander';
import pc from 'picocolors';
import type { ApiClient } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import type { Job, LogChunk, WorkOrder } from '../model/machine.js';
import { collect, type Globals } from './client.js';
import { print, shown, shownErr } from './output.js';

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
  workOrder: string;
  job: string | null;
  /** The work order's end: succeeded, failed or cancelled. */
  state: WorkOrder['state'];
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

export function runCommand(program: Command, g: Globals, api: () => ApiClient) {
  program
    .command('run')
    .description('run an ad-hoc command on machines, as a recorded work order per machine; prints each output and exit code')
    .argument('<command...>', 'the command, after -- (run with bash, sandboxed like a task)')
    .option('-l, --selector <selector>', 'machines by label, e.g. role=web,env!=prod')
    .option('--machine <machine>', 'a machine by name (repeatable)', collect)
    .option('--timeout <duration>', 'how long the command may run on each machine, e.g. 90s, 5m (default 10m)')
    .addHelpText(
      'after',
      `
The command runs through each machine's agent as a one-task work order: it queues behind a running job,
it is in \`takt workorders list\` and history with the command and who ran it, and its log is masked like
any job's. Exit code 0 only when it succeeded on every machine.

Examples:
  $ takt run -l role=web -- uptime
  $ takt run --machine web-1 --machine web-2 --timeout 30s -- 'systemctl is-active nginx'
  $ takt run -l role=db -o json -- df -h /var`,
    )
    .action(async (words: string[], o: { selector?: string; machine?: string[]; timeout?: string }) => {
      const command = words.join(' ');
      if (!o.selector && !o.machine?.length) throw new TaktError('bad_request', 'no machines: give -l <selector> or --machine M (an empty selection is refused, so a command never runs everywhere by accident)');
      if (o.selector !== undefined && o.selector.trim() === '') throw new TaktError('bad_request', '-l: the selector is empty; give key=value terms, e.g. -l role=web');
      const client = api();
      const r = await client.post<{ items: RunItem[] }>('/run', {
        command,
        ...(o.machine?.length ? { machines: o.machine } : {}),
        ...(o.selector !== undefined ? { selector: o.selector } : {}),
        ...(o.timeout !== undefined ? { timeout: o.timeout } : {}),
      });
      const table = g().output === 'table';
      if (table) {
        process.stderr.write(pc.dim(shownErr(`queued on ${r.items.length} machine(s): ${r.items.map((i) => `${i.machine} (${i.workOrder.id})`).join(', ')}`)) + '\n');
        for (const i of r.items) {
          if (i.behind) process.stderr.write(pc.yellow(shownErr(`${i.machine}: busy with job ${i.behind.job} (${i.behind.task}); the command queues behind it`)) + '\n');
          if (i.note) process.stderr.write(pc.yellow(shownErr(`${i.machine}: ${i.note}`)) + '\n');
        }
      }
      const results = await follow(client, r.items, (res) => {
        if (table) process.stdout.write(block(res));
      });
      const failed = results.filter((x) => x.state !== 'succeeded');
      if (table) {
        const bad = failed.map((x) => `${x.machine}: ${outcome(x)}`).join(', ');
        const line = `${results.length} machine(s): ${results.length - failed.length} succeeded${failed.length ? `, ${failed.length} failed (${bad})` : ''}`;
        process.stdout.write((failed.length ? pc.red(shown(line)) : pc.green(shown(line))) + '\n');
      } else {
        print(g().output, results);
      }
      if (failed.length) process.exitCode = 1;
    });
}

/** Waits for every work order to end (bounded by the command's own timeout on each machine), in finishing order. */
async function follow(client: ApiClient, items: RunItem[], done: (r: RunResult) => void): Promise<RunResult[]> {
  const open = new Map(items.map((i) => [i.workOrder.id, i]));
  const results: RunResult[] = [];
  while (open.size > 0) {
    for (const [id, item] of [...open]) {
      const wo = await client.get<WorkOrder>(`/workorders/${enc(id)}`);
      if (!TERMINAL.includes(wo.state)) continue;
      open.delete(id);
      const r = await result(client, item.machine, wo);
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
  const head = r.state === 'succeeded' ? pc.green(shown(`${r.machine} | rc=${r.rc ?? 0} >>`)) : pc.red(shown(`${r.machine} | FAILED | ${outcome(r)} >>`));
  const body = shown(r.output) + (r.output && !r.output.endsWith('\n') ? '\n' : '');
  const why = r.state !== 'succeeded' && r.reason ? pc.dim(shown(r.reason)) + '\n' : '';
  return `${head}\n${body}${why}`;
}
