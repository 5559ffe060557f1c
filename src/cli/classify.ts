/** `takt machines classify`, and how a machine's classification reads in `get`, `describe` and `plan`. */
import { type Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import type { ClassifyOutcome } from '../engine/engine.js';
import type { MachineClassification } from '../model/machine.js';
import { type Globals } from './client.js';
import { print, shown } from './output.js';
import { examples } from './help.js';

const enc = encodeURIComponent;

/** `big-vms (classifier site, pack site@1.2.0)`. */
export function ruleName(r: { pack: string; version: string | null; classifier: string; name?: string; rule?: string }): string {
  return `${r.name ?? r.rule} (classifier ${r.classifier}, ${r.pack === 'local' ? 'local' : `pack ${r.pack}@${r.version ?? '?'}`})`;
}

/** What a rule gave, as `pipeline → demo; environment → metal; profiles + big; params greeting`, or `nothing new`. */
export function gaveText(g: MachineClassification['gave']): string {
  const parts = [
    g.pipeline ? `pipeline → ${g.pipeline}` : null,
    g.environment ? `environment → ${g.environment}` : null,
    g.profiles.length ? `profiles + ${g.profiles.join(', ')}` : null,
    g.params.length ? `params ${g.params.join(', ')}` : null,
  ].filter((p): p is string => p !== null);
  return parts.length ? parts.join('; ') : 'nothing new (the machine already had what the rule gives)';
}

/** One line for `get`, `describe` and `plan`: the rule, why, and when. */
export function classificationLine(c: MachineClassification): string {
  return `rule ${ruleName(c)}: ${c.reasons.join('; ')} · ${gaveText(c.gave)} · ${c.at} by ${c.by}`;
}

function outcomeText(o: ClassifyOutcome): string {
  if (!o.rule) return [`${pc.bold(shown(o.machine))}: ${pc.yellow('no rule matched')}; nothing changed`, ...o.reasons.map((r) => `  ${shown(r)}`)].join('\n');
  const lines = [`${pc.bold(shown(o.machine))}: matched rule ${shown(ruleName(o.rule))}: ${shown(o.reasons.join('; '))}`];
  lines.push(`  ${o.dryRun ? pc.dim('dry run, would give: ') : ''}${shown(gaveText(o.gave!))}`);
  return lines.join('\n');
}

export function classifyCommand(machines: Command, g: Globals, api: () => ApiClient) {
  machines
    .command('classify <machine>')
    .description("match the machine's facts against the classification rules (first match wins) and give it the rule's profiles, environment, pipeline and params; a pipeline under way is not replaced without --force")
    .addHelpText('after', examples('takt machines classify rack1-u7 --dry-run', 'takt machines classify rack1-u7', 'takt machines classify rack1-u7 --force -o json'))
    .option('--dry-run', 'say which rule matches, why, and what it would change; change nothing')
    .option('--force', 'replace a pipeline that is under way (running, paused, stopped, awaiting approval); its job is cancelled')
    .action(async (machine: string, o: { dryRun?: boolean; force?: boolean }) => {
      const r = await api().post<ClassifyOutcome>(`/machines/${enc(machine)}/classify`, { dryRun: o.dryRun === true, force: o.force === true });
      print(g().output, r, () => outcomeText(r));
      // No match is an answer, not an error; scripts see it in the exit status.
      if (!r.rule) process.exitCode = 1;
    });
}
