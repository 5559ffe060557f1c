/** `takt rollouts …` and `takt andon pull`, with live progress: one bar per wave. */
import { Argument, Option, type Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import { BUSY_POLICIES, hint, type RolloutItem, type RolloutPlanItem, type RolloutState } from '../model/rollout.js';
import { collect, PARAM_TYPING, parseParamPairs, type GlobalOptions } from './client.js';
import { colorState, print, renderTable, shown } from './output.js';
import { examples } from './help.js';
import { UsageError } from './usage.js';

interface RolloutView {
  id: string;
  state: RolloutState;
  reason: string | null;
  wave: number;
  waves: number;
  spec: { pipeline?: string; blueprint?: string; select: Record<string, string>; selector?: string; canary: number; batch: number; maxInFlight: number; maxFailures: number; busy?: string; params?: Record<string, unknown> };
  counts: Record<RolloutItem['state'], number>;
  items: RolloutItem[];
  createdAt: string;
}

interface DryRun {
  dryRun: true;
  spec: RolloutView['spec'];
  waves: number;
  items: RolloutPlanItem[];
}

const enc = encodeURIComponent;
const FINAL: RolloutState[] = ['completed', 'stopped', 'aborted'];

export function rolloutCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
  const rollouts = program
    .command('rollouts')
    .description('apply a pipeline or blueprint to many machines in waves, stopped by the andon on failure')
    .addHelpText('after', examples("takt rollouts create --pipeline demo --select 'builtWith=demo@<1.2.0' --canary 1 --batch 5", 'takt rollouts ls'));
  rollouts
    .command('create')
    .description("start a rollout, e.g. --pipeline demo --select 'builtWith=demo@<1.0.1' --canary 1 --batch 5")
    .addHelpText('after', examples("takt rollouts create --pipeline demo --select 'builtWith=demo@<1.2.0' --canary 1 --batch 5", 'takt rollouts create --blueprint inventory --select environment=netns --no-wait', 'takt rollouts create --pipeline demo --select facts.os.id=debian --approve-between-waves'))
    .option('--pipeline <name>', 'run this pipeline on each machine (from the top)')
    .option('--blueprint <name>', 'or queue this blueprint as a work order on each machine')
    .option('--select <filters>', 'comma-separated key=value: state, pipeline, environment, broker, name, builtWith, stale, facts.<path> (e.g. facts.os.id=debian)', '')
    .option('-l, --selector <selector>', 'machines by label, e.g. role=web,env!=prod (key=value, key!=value, key, !key); combines with --select')
    .option('--canary <n>', 'machines in the first wave', '1')
    .option('--batch <n>', 'machines per later wave', '5')
    .option('--max-in-flight <n>', 'machines busy at once (default: the batch size)')
    .option('--max-failures <n>', 'failures tolerated; one more stops the rollout', '0')
    .option('--approve-between-waves', 'wait for `takt rollouts approve` after each wave')
    .option('--approver-role <role>', 'with --approve-between-waves: only holders of this role (viewer, operator, author, admin) and admins may approve the waves')
    .option('--two-person', 'with --approver-role: you (who start the rollout) may not approve its waves; another holder of the role must')
    .addOption(new Option('--busy <policy>', 'machines with a running job, awaiting approval or paused: wait for them, skip them, or cancel their job').choices(BUSY_POLICIES).default('wait'))
    .option('--param <key=value>', `set this machine param on each machine as the rollout starts it (repeatable; pipeline rollouts), e.g. image=debian-min@2.0.0; ${PARAM_TYPING}`, collect)
    .option('--dry-run', 'list what the rollout would do to each machine (wave, current job, action); create nothing')
    .option('--no-wait', 'return at once instead of showing progress until the rollout ends')
    .addHelpText(
      'after',
      `
Busy machines (a running job, awaiting approval, paused) are waited for by default: when the job ends
the machine is reassigned before it starts another. --busy skip leaves them out; --busy cancel cancels
their job ("cancelled by <you> (rollout R)") and reassigns them.

Examples:
  $ takt rollouts create --pipeline demo --select 'builtWith=demo@<1.0.1' --dry-run
  $ takt rollouts create --pipeline web -l role=web,env!=prod --busy wait
  $ takt rollouts create --pipeline demo --select environment=prod --canary 1 --batch 5 --approve-between-waves
  $ takt rollouts create --pipeline web -l env=prod --approve-between-waves --approver-role operator --two-person
  $ takt rollouts create --blueprint scan --select name=web --busy skip
  $ takt rollouts create --pipeline image-deploy --select 'builtWith=image:debian-min@<2' --param image=debian-min@2.0.0

Network-booted machines whose pipeline starts in discovery (image-deploy) are rebuilt: they boot
discovery again and the image is written anew (docs/provisioning.md, "Rebuilding a machine").`,
    )
    .action(async (o: Record<string, string | boolean | string[] | undefined>) => {
      const select: Record<string, string> = {};
      for (const pair of String(o.select ?? '').split(',').filter(Boolean)) {
        const i = pair.indexOf('=');
        if (i <= 0) throw new UsageError(`--select '${pair}' is not key=value`);
        select[pair.slice(0, i).trim()] = pair.slice(i + 1).trim();
      }
      const num = (v: unknown, name: string) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${name} must be a whole number`);
        return n;
      };
      const body = {
        pipeline: o.pipeline,
        blueprint: o.blueprint,
        select,
        ...(o.selector !== undefined ? { selector: o.selector } : {}),
        canary: num(o.canary, 'canary'),
        batch: num(o.batch, 'batch'),
        maxInFlight: o.maxInFlight !== undefined ? num(o.maxInFlight, 'max-in-flight') : undefined,
        maxFailures: num(o.maxFailures, 'max-failures'),
        approveBetweenWaves: o.approveBetweenWaves === true,
        busy: o.busy,
        ...(Array.isArray(o.param) && o.param.length > 0 ? { params: parseParamPairs(o.param) } : {}),
        ...(o.approverRole !== undefined ? { approval: { role: o.approverRole, ...(o.twoPerson === true ? { twoPerson: true } : {}) } } : {}),
      };
      if (o.twoPerson === true && o.approverRole === undefined) throw new UsageError('--two-person needs --approver-role ROLE (who may approve instead)');
      if (o.dryRun === true) {
        const d = await api().post<DryRun>('/rollouts', { ...body, dryRun: true });
        return print(g().output, d, () => dryRunText(d));
      }
      const r = await api().post<RolloutView>('/rollouts', body);
      if (o.wait === false || g().output !== 'table') return print(g().output, r, () => summary(r));
      await watch(api(), r.id);
    });
  rollouts
    .command('list')
    .description('rollouts, newest first: what they run, state, wave, counts, the machines they wait for')
    .addHelpText('after', examples('takt rollouts ls', 'takt rollouts list -o wide'))
    .action(async () => {
      const r = await api().get<{ items: RolloutView[] }>('/rollouts');
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: 'ID', get: (x) => x.id },
          { header: 'RUNS', get: (x) => x.spec.pipeline ?? `blueprint ${x.spec.blueprint}` },
          { header: 'STATE', get: (x) => x.state, color: colorState },
          { header: 'WAVE', get: (x) => `${Math.min(x.wave + 1, x.waves)}/${x.waves}` },
          { header: 'OK/FAIL/TOTAL', get: (x) => `${x.counts.succeeded}/${x.counts.failed}/${x.items.length}` },
          { header: 'CREATED', get: (x) => x.createdAt, wide: true },
          { header: 'REASON', get: (x) => x.reason, flex: true },
          // The machines it waits for (--busy wait), by name: what holds the rollout up.
          { header: 'WAITING FOR', get: (x) => x.items.filter((i) => i.state === 'waiting').map((i) => i.machineName).join(', ') || null, flex: true },
        ]),
      );
    });
  rollouts
    .command('get <id>')
    .description('one rollout with each machine (the ones it waits for say which job)')
    .addHelpText('after', examples('takt rollouts get r-1a2b3c'))
    .action(async (id: string) => {
      const r = await api().get<RolloutView>(`/rollouts/${enc(id)}`);
      print(g().output, r, () => `${summary(r)}\n${renderTable(r.items, [
        { header: 'WAVE', get: (i) => String(i.wave + 1) },
        { header: 'MACHINE', get: (i) => i.machineName },
        { header: 'STATE', get: (i) => i.state, color: colorState },
        { header: 'REASON', get: (i) => i.reason, flex: true },
      ])}`);
    });
  rollouts
    .command('watch <id>')
    .description('live progress until the rollout ends (exits 1 if it stopped or was aborted)')
    .addHelpText('after', examples('takt rollouts watch r-1a2b3c'))
    .action(async (id: string) => watch(api(), id));
  // Verbs that set a rollout going again show its progress as `create` does (--no-wait returns at once).
  for (const [verb, what, follows] of [
    ['pause', 'stop starting machines (those running finish)', false],
    ['resume', 'continue a paused rollout', true],
    ['approve', 'start the next wave of a rollout awaiting approval', true],
    ['abort', 'end the rollout; machines not started are skipped', false],
    ['retry', 're-run only the failed machines, with the same pipeline or blueprint', true],
  ] as const) {
    const cmd = rollouts
      .command(`${verb} <id>`)
      .description(what)
      .addHelpText('after', `\nExamples:\n  $ takt rollouts ${verb} r-1a2b3c${follows ? `\n  $ takt rollouts ${verb} r-1a2b3c --no-wait` : ''}`);
    if (follows) cmd.option('--no-wait', 'return at once instead of showing progress until the rollout ends or holds');
    cmd.action(async (id: string, o: { wait?: boolean }) => {
      const r = await api().post<RolloutView>(`/rollouts/${enc(id)}/${verb}`);
      if (!follows || o.wait === false || g().output !== 'table') return print(g().output, r, () => summary(r));
      await watch(api(), r.id);
    });
  }
  program
    .command('andon')
    .description('the cord anyone can pull')
    .addHelpText('after', examples('takt andon pull'))
    .command('pull')
    .description('pause every running rollout now')
    .addHelpText('after', examples('takt andon pull   # every running rollout pauses; resume each with takt rollouts resume'))
    .action(async () => {
      const r = await api().post<{ paused: string[] }>('/andon/pull');
      print(g().output, r, () => (r.paused.length ? shown(`andon pulled: paused ${r.paused.join(', ')}`) : 'andon pulled: no rollout was running'));
    });
}

interface ChurnView {
  policy: { maxAge: string; budget: string } | null;
  machines: number;
  budget: number;
  ages: Array<{ bucket: string; machines: number }>;
  over: Array<{ name: string; age: string }>;
  rollouts: Array<{ id: string; state: string; reason: string | null; counts: Record<string, number> }>;
}

export function policyCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
  const policy = program
    .command('policy')
    .description('fleet policies: churn (no machine older than a max age)')
    .addHelpText('after', examples('takt policy set max-age 30d --budget 10%', 'takt policy status'));
  policy
    .command('set')
    .addArgument(new Argument('<setting>', 'the policy setting').choices(['max-age']))
    .argument('<value>', 'e.g. 30d')
    .description('takt policy set max-age 30d --budget 10%: rebuild machines older than 30 days, at most 10% of the fleet at once')
    .addHelpText('after', examples('takt policy set max-age 30d --budget 10%', 'takt policy set max-age 7d --budget 2'))
    .option('--budget <budget>', 'how many may rebuild at once: a percentage of the fleet or a number', '10%')
    .addHelpText('after', '\nExamples:\n  $ takt policy set max-age 30d --budget 10%\n  $ takt policy set max-age 7d --budget 2')
    .action(async (setting: string, value: string, o: { budget: string }) => {
      const s = await api().put<ChurnView>('/policies/churn', { maxAge: value, budget: o.budget });
      print(g().output, s, () => churnText(s));
    });
  policy
    .command('status')
    .description("the fleet's age distribution against the max age, and the rebuilds scheduled")
    .addHelpText('after', examples('takt policy status'))
    .action(async () => {
      const s = await api().get<ChurnView>('/policies/churn');
      print(g().output, s, () => churnText(s));
    });
  policy
    .command('clear')
    .addArgument(new Argument('<setting>', 'the policy setting').choices(['max-age']))
    .description('remove the max-age policy')
    .addHelpText('after', examples('takt policy clear max-age'))
    .action(async (_setting: string) => {
      print(g().output, await api().delete('/policies/churn'), () => 'max-age policy removed');
    });
}

function churnText(s: ChurnView): string {
  const lines = [s.policy ? `max-age ${pc.bold(shown(s.policy.maxAge))}, budget ${shown(s.policy.budget)} (${s.budget} at once) over ${s.machines} machine(s)` : pc.dim('no max-age policy set')];
  const most = Math.max(1, ...s.ages.map((a) => a.machines));
  for (const a of s.ages) {
    const bar = '█'.repeat(Math.round((a.machines / most) * 30));
    lines.push(`  ${shown(a.bucket).padEnd(8)} ${a.bucket === 'over' ? pc.red(bar) : pc.green(bar)} ${a.machines}`);
  }
  if (s.over.length) lines.push(pc.yellow(shown(`past the limit: ${s.over.map((o) => `${o.name} (${o.age})`).join(', ')}`)));
  for (const r of s.rollouts) lines.push(`rebuild rollout ${shown(r.id)}: ${colorState(r.state)} ${r.counts.succeeded ?? 0} done, ${r.counts.running ?? 0} running, ${r.counts.pending ?? 0} waiting${r.reason ? shown(` — ${r.reason}`) : ''}`);
  return lines.join('\n');
}

/** "pipeline image-deploy with image=marker@2.0.0": what a rollout runs, and the params it sets. */
function runsText(spec: RolloutView['spec']): string {
  const params = Object.entries(spec.params ?? {}).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
  return shown(`${spec.pipeline ? `pipeline ${spec.pipeline}` : `blueprint ${spec.blueprint}`}${params.length ? ` with ${params.join(', ')}` : ''}`);
}

function summary(r: RolloutView): string {
  const runs = runsText(r.spec);
  const head = `${pc.bold(shown(r.id))} ${runs} on ${r.items.length} machine(s): ${colorState(r.state)}${r.reason ? shown(` — ${r.reason}`) : ''}`;
  const waiting = r.items.filter((i) => i.state === 'waiting');
  // Stopped by the andon: what to do next, where the operator reads why (not only after a wrong verb).
  const next = r.state === 'stopped' ? [pc.yellow(shown(`  ${hint(r)}`))] : [];
  return [head, ...next, ...waiting.map((i) => pc.yellow(shown(`  waiting for ${i.machineName}: ${(i.reason ?? 'busy').replace(/^waiting for /, '')}`)))].join('\n');
}

function dryRunText(d: DryRun): string {
  const runs = runsText(d.spec);
  const head = `dry run: ${runs} on ${d.items.length} machine(s) in ${d.waves} wave(s), busy machines: ${shown(d.spec.busy ?? 'wait')} — nothing was created`;
  const wave = (w: number) => (w === 0 && d.spec.canary > 0 ? 'canary' : `wave ${w + 1}`);
  const color = (a: RolloutPlanItem['action']) => (a === 'cancel' ? pc.red : a === 'skip' ? pc.dim : a === 'wait' ? pc.yellow : (x: string) => x);
  return `${head}\n${renderTable(d.items, [
    { header: 'MACHINE', get: (i) => i.machineName },
    { header: 'PIPELINE', get: (i) => i.pipeline },
    { header: 'STATE', get: (i) => i.state, color: colorState },
    { header: 'JOB', get: (i) => (i.job ? `${i.job.id} (${i.job.task})` : null) },
    { header: 'WAVE', get: (i) => wave(i.wave) },
    { header: 'ACTION', get: (i) => i.action, color: (t, i) => color(i.action)(t) },
    { header: 'DETAIL', get: (i) => i.detail },
  ])}`;
}

function bars(r: RolloutView): string[] {
  // One entry per terminal line: the redraw moves up by the count.
  const lines = summary(r).split('\n');
  for (let w = 0; w < r.waves; w++) {
    const items = r.items.filter((i) => i.wave === w);
    const n = (s: RolloutItem['state']) => items.filter((i) => i.state === s).length;
    const width = 24;
    const ok = Math.round((n('succeeded') / items.length) * width);
    const bad = Math.round((n('failed') / items.length) * width);
    const run = Math.round(((n('running') + n('waiting')) / items.length) * width);
    const bar = pc.green('█'.repeat(ok)) + pc.red('█'.repeat(bad)) + pc.cyan('▒'.repeat(run)) + pc.dim('░'.repeat(Math.max(0, width - ok - bad - run)));
    const label = w === 0 && r.spec.canary > 0 ? 'canary' : `wave ${w + 1}`;
    lines.push(`  ${label.padEnd(8)} ${bar} ${n('succeeded')}/${items.length} ok${n('failed') ? pc.red(` ${n('failed')} failed`) : ''}${n('running') ? pc.cyan(` ${n('running')} running`) : ''}${n('waiting') ? pc.yellow(` ${n('waiting')} waiting`) : ''}${n('skipped') ? pc.dim(` ${n('skipped')} skipped`) : ''}`);
  }
  return lines;
}

async function watch(client: ApiClient, id: string): Promise<void> {
  const tty = process.stdout.isTTY;
  let drawn = 0;
  let last = '';
  for (;;) {
    const r = await client.get<RolloutView>(`/rollouts/${enc(id)}`);
    const lines = bars(r);
    const text = lines.join('\n');
    if (text !== last) {
      if (tty && drawn) process.stdout.write(`\x1b[${drawn}A\x1b[0J`);
      process.stdout.write(text + '\n');
      drawn = lines.length;
      last = text;
    }
    if (FINAL.includes(r.state)) {
      for (const i of r.items.filter((x) => x.state === 'failed')) process.stdout.write(pc.red(shown(`  ${i.machineName}: ${i.reason ?? 'failed'}`)) + '\n');
      if (r.state !== 'completed') process.exitCode = 1;
      return;
    }
    if (r.state === 'awaiting-approval' || r.state === 'paused') {
      process.stdout.write(pc.yellow(shown(`${r.state}: ${r.reason ?? ''} (takt rollouts ${r.state === 'paused' ? 'resume' : 'approve'} ${r.id})`)) + '\n');
      return;
    }
    await new Promise((res) => setTimeout(res, 400));
  }
}
