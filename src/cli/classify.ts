/** `takt machines classify`, and how a machine's classification reads in `get`, `describe` and `plan`. */
import { type Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import type { ClassifyOutcome } from '../engine/engine.js';
import type { MachineClassification } from '../model/machine.js';
import { TaktError } from '../model/errors.js';
import { type Globals } from './client.js';
import { print, shown } from './output.js';
import { examples } from './help.js';
import { UsageError } from './usage.js';

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
    .command('classify [machine]')
    .description("match the machine's facts against the classification rules (first match wins) and give it the rule's profiles, environment, pipeline and params; a pipeline under way is not replaced without --force")
    .addHelpText('after', examples('takt machines classify rack1-u7 --dry-run', 'takt machines classify rack1-u7', 'takt machines classify --all -l rack=r1 --dry-run', 'takt machines classify rack1-u7 --force -o json'))
    .option('--dry-run', 'say which rule matches, why, and what it would change; change nothing')
    .option('--force', 'replace a pipeline that is under way (running, paused, stopped, awaiting approval); its job is cancelled')
    .option('--all', 'every machine (narrowed by -l) that has reported facts, one after another; a refusal or no match is reported and the rest go on')
    .option('-l, --selector <selector>', 'with --all: only machines whose labels match, e.g. rack=r1')
    .action(async (machine: string | undefined, o: { dryRun?: boolean; force?: boolean; all?: boolean; selector?: string }) => {
      if ((machine === undefined) === (o.all !== true)) throw new UsageError('name one machine, or give --all (with -l to narrow it), e.g. takt machines classify rack1-u7');
      if (o.selector !== undefined && !o.all) throw new UsageError('-l selects machines for --all; with one machine named, leave it out');
      const client = api();
      const body = { dryRun: o.dryRun === true, force: o.force === true };
      if (machine !== undefined) {
        const r = await client.post<ClassifyOutcome>(`/machines/${enc(machine)}/classify`, body);
        print(g().output, r, () => outcomeText(r));
        // No match is an answer, not an error; scripts see it in the exit status.
        if (!r.rule) process.exitCode = 1;
        return;
      }
      const names: string[] = [];
      for (let offset = 0; ; offset += 1000) {
        const page = await client.get<{ items: Array<{ name: string }>; total: number }>('/machines', { limit: '1000', offset: String(offset), ...(o.selector !== undefined ? { selector: o.selector } : {}) });
        names.push(...page.items.map((m) => m.name));
        if (page.items.length < 1000 || names.length >= page.total) break;
      }
      const results: Array<ClassifyOutcome | { machine: string; error: { code: string; message: string } }> = [];
      for (const name of names) {
        try {
          results.push(await client.post<ClassifyOutcome>(`/machines/${enc(name)}/classify`, body));
        } catch (err) {
          if (!(err instanceof TaktError)) throw err;
          // A machine that has reported no facts has nothing to classify by: not a failure of --all.
          if (err.code === 'conflict' && /has reported no facts/.test(err.message)) continue;
          results.push({ machine: name, error: { code: err.code, message: err.message } });
        }
      }
      print(g().output, results, () =>
        results.length === 0 ? pc.dim('no machine with facts to classify') : results.map((r) => ('error' in r ? `${pc.bold(shown(r.machine))}: ${pc.red(shown(r.error.message))}` : outcomeText(r))).join('\n'),
      );
      if (results.some((r) => 'error' in r || !r.rule)) process.exitCode = 1;
    });
}
