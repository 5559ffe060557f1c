/** `takt plan` and `takt render`: what a machine would run, and with which params. */
import { type Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import type { Plan, PlanParam, PlanStep } from '../engine/plan.js';
import { TaktError } from '../model/errors.js';
import { type Globals } from './client.js';
import { colorState, print, shown, shownErr } from './output.js';
import { examples } from './help.js';
import { classificationLine } from './classify.js';

const enc = encodeURIComponent;

export function planCommands(program: Command, g: Globals, api: () => ApiClient) {
  program
    .command('plan <machine>')
    .description("show exactly what the machine would run next (what `machines resume` runs, for a stopped one, or why it would be refused) and every param each task uses: value (secure ones masked) and the layer it came from, or the earlier task whose output sets it")
    .addHelpText('after', examples('takt plan web-1', 'takt plan web-1 -o json'))
    .action(async (machine: string) => {
      const plan = await api().get<PlanView>(`/machines/${enc(machine)}/plan`);
      print(g().output, plan, () => planTable(plan));
    });

  program
    .command('render <task>')
    .description('print the exact script TASK would run on a machine (secure values masked)')
    .addHelpText('after', examples('takt render write-motd --machine demo-1'))
    .requiredOption('--machine <machine>', 'machine id or name')
    .action(async (task: string, o: { machine: string }) => {
      const r = await api().get<{ displayScript: string | null; error: string | null; noop: string | null; variant: string; params: PlanParam[] }>(
        `/machines/${enc(o.machine)}/render`,
        { task },
      );
      if (g().output !== 'table') return print(g().output, r);
      if (r.noop) return void process.stdout.write(shown(`# no-op on this machine (variant ${r.variant}): ${r.noop}\n`));
      if (r.error) throw new TaktError('invalid', `${task} cannot be rendered for ${o.machine}: ${r.error}`);
      process.stderr.write(pc.dim(shownErr(`# variant ${r.variant}; ${r.params.map((p) => `${p.name} from ${p.from}`).join(', ') || 'no params'}`)) + '\n');
      process.stdout.write(shown(r.displayScript ?? ''));
    });
}

// ---- plan view ----------------------------------------------------------------------------------------

/** The views are the engine's own (`GET /machines/:id/plan` sends a `Plan`): one definition, no drift. */
type PlanStepView = PlanStep;
type PlanView = Plan;

function planTable(plan: PlanView): string {
  const lines: string[] = [`${pc.bold(shown(plan.machine))} ${colorState(plan.state)} pipeline ${plan.pipeline ? shown(plan.pipeline) : pc.dim('(none)')}`];
  if (plan.classification) lines.push(pc.dim(shown(`classified by ${classificationLine(plan.classification)}`)));
  const step = (s: PlanStepView) => {
    lines.push(`  ${s.stage ? shown(`${s.stage}/`) : ''}${pc.bold(shown(s.task))}${s.variant !== 'default' ? pc.dim(shown(` [variant ${s.variant}]`)) : ''}`);
    if (s.noop) lines.push(`    ${pc.dim(shown(`no-op: ${s.noop}`))}`);
    for (const p of s.params) {
      if (p.promisedBy && p.value === null) lines.push(`    ${shown(`${p.name} = (set by ${p.promisedBy} when it runs)`)}`);
      else lines.push(`    ${shown(`${p.name} = ${JSON.stringify(p.value)}`)} ${pc.dim(shown(`(${p.from}${p.promisedBy ? `; ${p.promisedBy} sets it when it runs` : ''})`))}`);
    }
    for (const m of s.missing) lines.push(`    ${pc.red(shown(`${m} = MISSING (required)`))}`);
    if (s.error && s.missing.length === 0) lines.push(`    ${pc.red(shown(s.error))}`);
  };
  for (const wo of plan.workOrders) {
    lines.push(pc.dim(shown(`work order ${wo.id} (${wo.blueprint}) runs first:`)));
    wo.steps.forEach(step);
  }
  if (plan.refused) lines.push(pc.red(shown(`  resume would be refused: ${plan.refused.message}`)));
  else if (plan.steps.length === 0) lines.push(pc.dim('  nothing left to run'));
  else if (plan.from === 'restart') lines.push(pc.dim('finished; `takt machines restart` would run:'));
  else if (plan.state === 'stopped') lines.push(pc.dim(shown(`stopped; \`takt machines resume ${plan.machine}\` would run:`)));
  plan.steps.forEach(step);
  return lines.join('\n');
}
