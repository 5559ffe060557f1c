/** The `jobs` commands. */
import { Option, type Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import { formatDuration } from '../model/duration.js';
import { JOB_STATES, type Job, type LogChunk, type Machine } from '../model/machine.js';
import { type Globals } from './client.js';
import { machineNames } from './names.js';
import { colorState, fetchPage, print, renderTable, shown, shownErr, toYaml } from './output.js';
import { examples } from './help.js';

const enc = encodeURIComponent;

// ---- jobs ---------------------------------------------------------------------------------------------

export function jobCommands(program: Command, g: Globals, api: () => ApiClient) {
  const jobs = program
    .command('jobs')
    .description('job runs: one task on one machine')
    .addHelpText('after', examples('takt jobs ls --machine demo-1', 'takt jobs log JOB_ID -f'));
  jobs
    .command('list')
    .description('recent jobs, newest first')
    .addHelpText('after', examples('takt jobs list --machine demo-2 --state failed', 'takt jobs ls --workorder WORKORDER_ID --order asc', 'takt jobs list -o wide'))
    .option('--machine <machine>')
    .addOption(new Option('--state <state>', 'only jobs in this state').choices(JOB_STATES))
    .option('--task <task>')
    .option('--workorder <id>', 'jobs of one work order')
    .addOption(new Option('--order <order>', 'newest first (desc) or in the order they ran (asc)').choices(['asc', 'desc']).default('desc'))
    .option('--limit <n>', 'page size', '50')
    .option('--offset <n>', 'skip this many', '0')
    .action(async (o: Record<string, string | undefined>) => {
      const r = await fetchPage((page) => api().get<{ items: Job[] }>('/jobs', { ...o, ...page }), o.limit ?? '50', o.offset);
      // Names, not ids, in what people read: one lookup per machine on the page (a deleted one keeps its id).
      const names = g().output === 'table' ? await machineNames(api(), r.items.map((j) => j.machineId)) : new Map<string, string>();
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: 'ID', get: (j) => j.id },
          { header: 'MACHINE', get: (j) => names.get(j.machineId) ?? j.machineId },
          { header: 'MACHINE ID', get: (j) => j.machineId, wide: true },
          { header: 'TASK', get: (j) => (j.stage ? `${j.stage}/${j.task}` : j.task) },
          { header: 'STATE', get: (j) => j.state, color: colorState },
          { header: 'EXIT', get: (j) => j.exitCode },
          { header: 'TIME', get: (j) => (j.finishedAt ? formatDuration(Date.parse(j.finishedAt) - Date.parse(j.createdAt)) : null) },
          { header: 'CREATED', get: (j) => j.createdAt, wide: true },
          { header: 'FINISHED', get: (j) => j.finishedAt, wide: true },
          { header: 'REASON', get: (j) => j.reason, max: 80 },
        ]) + r.note,
      );
    });
  jobs
    .command('get <job>')
    .description('one job with its rendered script (secure values masked) and params')
    .addHelpText('after', examples('takt jobs get JOB_ID', 'takt job get JOB_ID -o json'))
    .action(async (id: string) => {
      const j = await api().get<Job>(`/jobs/${enc(id)}`);
      // For people, the machine's name beside its id (a deleted machine: its id only); scripts get the job as stored.
      const names = g().output === 'table' ? await machineNames(api(), [j.machineId]) : new Map<string, string>();
      print(g().output, j, () => shown(toYaml({ machine: names.get(j.machineId) ?? null, ...j }).trimEnd()));
    });
  jobs
    .command('cancel <job>')
    .description("cancel a running job: its script's whole process group is killed; a pipeline job leaves its machine paused on that task (resume re-runs it), a work-order job cancels its work order")
    .option('--reason <text>', 'why, recorded as "cancelled by <you>: <reason>"')
    .addHelpText(
      'after',
      `
Examples:
  $ takt jobs list --machine web-1 --state running
  $ takt jobs cancel j-1a2b3c --reason "wrong image"
  $ takt machines resume web-1          # runs the cancelled task again`,
    )
    .action(async (id: string, o: { reason?: string }) => {
      const client = api();
      const j = await client.post<Job>(`/jobs/${enc(id)}/cancel`, o.reason !== undefined ? { reason: o.reason } : {});
      const m = await client.get<Machine>(`/machines/${enc(j.machineId)}`).catch(() => null);
      print(g().output, j, () => {
        const head = `job ${shown(j.id)} (task '${shown(j.task)}') on ${shown(m?.name ?? j.machineId)} ${colorState(j.state)}: ${shown(j.reason ?? '')}`;
        if (j.kind === 'workorder') return `${head}
its work order ${shown(j.workOrderId ?? '')} is cancelled`;
        return m ? `${head}
${shown(m.name)} is ${colorState(m.state)}${m.state === 'paused' ? `; \`takt machines resume ${shown(m.name)}\` runs the task again` : ''}` : head;
      });
    });
  jobs
    .command('log <job>')
    .description("print a job's output — the script's stdout and stderr, in order, all on stdout (like kubectl logs), so `> out.txt` and `| grep` get all of it; -o json gives each chunk with its stream; --follow keeps printing until the job ends")
    .addHelpText('after', examples('takt jobs log JOB_ID', 'takt jobs log JOB_ID --follow', 'takt jobs log JOB_ID > out.txt    # stdout and stderr of the script', 'takt jobs log JOB_ID -o json | jq -r \'select(.stream == "stderr") | .data\'   # only its stderr'))
    .option('-f, --follow', 'follow until the job ends')
    .action(async (id: string, o: { follow?: boolean }) => {
      const client = api();
      let after = 0;
      for (;;) {
        const r = await client.get<{ job: { state: string; reason: string | null }; chunks: LogChunk[] }>(`/jobs/${enc(id)}/log`, { after });
        for (const c of r.chunks) {
          if (g().output === 'json') process.stdout.write(JSON.stringify(c) + '\n');
          // The script's stderr is part of the job's output, not the CLI's own message: stdout, in order.
          else process.stdout.write(c.stream === 'system' || c.stream === 'takt' ? pc.dim(shown(c.data)) : shown(c.data));
          after = c.seq;
        }
        if (!o.follow || (r.job.state !== 'running' && r.chunks.length === 0)) {
          if (o.follow && g().output !== 'json') process.stderr.write(pc.dim(shownErr(`-- job ${r.job.state}${r.job.reason ? `: ${r.job.reason}` : ''}`)) + '\n');
          return;
        }
        if (r.chunks.length === 0) await new Promise((res) => setTimeout(res, 300));
      }
    });
}
