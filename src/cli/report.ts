/** `takt report cycle-time`: the line's beat per pipeline, stage and task, as tables with a bar per row. */
import type { Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import type { CycleTimeReport, Spread } from '../engine/cycletime.js';
import { formatDuration } from '../model/duration.js';
import type { GlobalOptions } from './client.js';
import { print, renderTable, shown } from './output.js';
import { examples } from './help.js';

export function reportCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
  const report = program
    .command('report')
    .description('reports over what the line did')
    .addHelpText('after', examples('takt report cycle-time --since 24h'));
  report
    .command('cycle-time')
    .summary('queue wait, run and cycle time (p50/p95/max) and failure rate per pipeline, stage and task')
    .description(
      'queue wait, run time and cycle time (p50/p95/max) and failure rate per pipeline, stage and task.\n' +
        'Queue wait runs from the end of the previous task in the same walk (approvals and resumes count);\n' +
        'a pipeline cycle runs from its first claim to its last result.',
    )
    .addHelpText('after', examples('takt report cycle-time --since 7d --pipeline demo', 'takt report cycle-time -o json'))
    .option('--since <duration>', 'jobs created in this window: 30m, 24h, 7d', '24h')
    .option('--pipeline <name>', 'only this pipeline')
    .action(async (o: { since: string; pipeline?: string }) => {
      const r = await api().get<CycleTimeReport>('/reports/cycle-time', { since: o.since, pipeline: o.pipeline });
      print(g().output, r, () => cycleTimeText(r));
    });
}

const d = (s: Spread | null, k: 'p50' | 'p95' | 'max') => (s ? formatDuration(s[k]) : null);
const pct = (x: number) => `${(x * 100).toFixed(x > 0 && x < 0.1 ? 1 : 0)}%`;
const failCell = (failed: number, rate: number) => (failed > 0 ? pc.red(`${pct(rate)} (${failed})`) : pc.green('0%'));

/** A bar scaled to the slowest p50, with the p95 tail drawn lighter: where the time goes at a glance. */
function bar(s: Spread | null, scale: number, width = 20): string {
  if (!s || scale <= 0) return '';
  const body = Math.max(s.p50 > 0 ? 1 : 0, Math.round((s.p50 / scale) * width));
  const tail = Math.max(0, Math.min(width * 2, Math.round((s.p95 / scale) * width)) - body);
  return pc.cyan('█'.repeat(body)) + pc.dim('░'.repeat(tail));
}

export function cycleTimeText(r: CycleTimeReport): string {
  const head = shown(`cycle time from ${r.since} to ${r.until} over ${r.jobs} job(s)`);
  if (r.tasks.length === 0) return `${head}\n${pc.dim('no finished jobs in this window; widen it with --since')}`;
  const pipeScale = Math.max(0, ...r.pipelines.map((p) => p.cycleMs?.p50 ?? 0));
  const stageScale = Math.max(0, ...r.stages.map((s) => s.cycleMs?.p50 ?? 0));
  const taskScale = Math.max(0, ...r.tasks.map((t) => t.cycleMs?.p50 ?? 0));
  return [
    pc.bold(head),
    '',
    pc.bold('pipelines'),
    renderTable(r.pipelines, [
      { header: 'pipeline', get: (p) => p.pipeline },
      { header: 'walks', get: (p) => String(p.walks) },
      { header: 'completed', get: (p) => String(p.completed) },
      { header: 'failed', get: (p) => failCell(p.failed, p.failureRate), styled: true },
      { header: 'cycle p50', get: (p) => d(p.cycleMs, 'p50') },
      { header: 'p95', get: (p) => d(p.cycleMs, 'p95') },
      { header: 'max', get: (p) => d(p.cycleMs, 'max') },
      { header: '', get: (p) => bar(p.cycleMs, pipeScale), styled: true },
    ]),
    '',
    pc.bold('stages'),
    renderTable(r.stages, [
      { header: 'pipeline', get: (s) => s.pipeline },
      { header: 'stage', get: (s) => s.stage },
      { header: 'passes', get: (s) => String(s.passes) },
      { header: 'failed', get: (s) => failCell(s.failed, s.failureRate), styled: true },
      { header: 'cycle p50', get: (s) => d(s.cycleMs, 'p50') },
      { header: 'p95', get: (s) => d(s.cycleMs, 'p95') },
      { header: 'max', get: (s) => d(s.cycleMs, 'max') },
      { header: '', get: (s) => bar(s.cycleMs, stageScale), styled: true },
    ]),
    '',
    pc.bold('tasks'),
    renderTable(r.tasks, [
      { header: 'pipeline', get: (t) => t.pipeline ?? `wo:${t.blueprint ?? '?'}` },
      { header: 'stage', get: (t) => t.stage },
      { header: 'task', get: (t) => t.task },
      { header: 'runs', get: (t) => String(t.runs) },
      { header: 'failed', get: (t) => failCell(t.failed, t.failureRate), styled: true },
      { header: 'queue p50/p95', get: (t) => (t.queueMs ? `${d(t.queueMs, 'p50')} / ${d(t.queueMs, 'p95')}` : null) },
      { header: 'run p50/p95/max', get: (t) => `${d(t.runMs, 'p50')} / ${d(t.runMs, 'p95')} / ${d(t.runMs, 'max')}` },
      { header: 'cycle p50/p95', get: (t) => `${d(t.cycleMs, 'p50')} / ${d(t.cycleMs, 'p95')}` },
      { header: '', get: (t) => bar(t.cycleMs, taskScale), styled: true },
    ]),
    pc.dim('bars: p50 solid, p95 tail light, scaled to the slowest p50 in each table'),
  ].join('\n');
}
