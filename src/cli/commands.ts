/** The resource commands: each maps onto one REST call (or a short loop of them for wait/follow/watch). */
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Argument, Option, type Command } from 'commander';
import pc from 'picocolors';
import { followEvents } from '../client/events.js';
import type { ApiClient } from '../client/http.js';
import type { InstallResult, PackDiff } from '../engine/content.js';
import type { MachineRecord } from '../engine/records.js';
import { CONTENT_KINDS, KIND_NOUN } from '../model/content.js';
import { DURATION_RANGES, formatDuration, parseDuration } from '../model/duration.js';
import { TaktError } from '../model/errors.js';
import { JOB_STATES, MACHINE_STATES, WORK_ORDER_STATES, type Change, type Job, type LogChunk, type Machine, type WorkOrder } from '../model/machine.js';
import { clientFrom, collect, parseParamPairs, type GlobalOptions } from './client.js';
import { colorState, print, renderTable, shown, shownErr } from './output.js';
import { exerciseCommand } from './exercise.js';
import { factsSection, joinCommands } from './join.js';
import { agentCell, colorStatus, machineText, statusOf, type MachineView } from './liveness.js';
import { reportCommands } from './report.js';
import { credentialCommands } from './credentials.js';
import { sshBody } from './ssh.js';
import { policyCommands, rolloutCommands } from './rollouts.js';

type Globals = () => GlobalOptions;
const enc = encodeURIComponent;

export function register(program: Command, g: Globals) {
  const api = () => clientFrom(g());
  contentCommands(program, g, api);
  machineCommands(program, g, api);
  joinCommands(program, g, api);
  jobCommands(program, g, api);
  workOrderCommands(program, g, api);
  for (const kind of CONTENT_KINDS) objectCommands(program, g, api, kind);
  historyCommands(program, g, api);
  portableCommands(program, g, api);
  rolloutCommands(program, g, api);
  policyCommands(program, g, api);
  approvalCommands(program, g, api);
  reportCommands(program, g, api);
  exerciseCommand(program, g, api);
  credentialCommands(program, g, api);

  program
    .command('plan <machine>')
    .description("show the machine's remaining tasks and every param each uses: value (secure ones masked) and the layer it came from")
    .action(async (machine: string) => {
      const plan = await api().get<PlanView>(`/machines/${enc(machine)}/plan`);
      print(g().output, plan, () => planTable(plan));
    });

  program
    .command('render <task>')
    .description('print the exact script TASK would run on a machine (secure values masked)')
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

  program
    .command('events')
    .description('the event stream')
    .command('watch')
    .description('print events as they happen (topics like machines.*.*, jobs.update.<id>; default all)')
    .option('--topics <list>', 'comma-separated topic filters: TYPE[.ACTION[.ID]], each part a name or *', '')
    .option('--since <id>', 'replay events after this id first')
    .action(async (o: { topics: string; since?: string }) => {
      // Refused here, before connecting: a filter that matches nothing would wait silently forever.
      const { parseTopics } = await import('../api/topics.js');
      parseTopics(o.topics);
      // Runs until interrupted; resumes after the last event printed when the stream ends or drops.
      await followEvents(
        api(),
        (e) => {
          if (g().output === 'json') process.stdout.write(JSON.stringify(e) + '\n');
          else process.stdout.write(`${pc.dim(shown(e.at.slice(11, 23)))} ${pc.bold(shown(e.topic))} ${shown(summarize(e.data))}\n`);
        },
        {
          topics: o.topics,
          since: o.since,
          onBreak: (why, waitMs) => process.stderr.write(pc.dim(`${why}; ${waitMs ? `reconnecting in ${(waitMs / 1000).toFixed(1)} s` : 'resuming'}\n`)),
        },
      );
    });
}

// ---- content ------------------------------------------------------------------------------------------

function contentCommands(program: Command, g: Globals, api: () => ApiClient) {
  const content = program.command('content').description('content packs: lint, install, list, remove');
  content
    .command('lint <dir>')
    .description('check a pack directory and report every problem as file:line:col: message')
    .action(async (dir: string) => {
      const { readPackDir } = await import('../content/files.js');
      const { lintPack, formatDiagnostic } = await import('../content/lint.js');
      const result = lintPack(await readPackDir(dir));
      if (g().output !== 'table') print(g().output, { ok: result.diagnostics.length === 0, diagnostics: result.diagnostics });
      else for (const d of result.diagnostics) process.stdout.write(shown(formatDiagnostic({ ...d, file: `${dir.replace(/\/$/, '')}/${d.file}` })) + '\n');
      if (result.diagnostics.length > 0) {
        if (g().output === 'table') process.stderr.write(pc.red(`${result.diagnostics.length} problem(s)\n`));
        process.exitCode = 1;
      } else if (g().output === 'table') {
        process.stdout.write(pc.green(shown(`${result.manifest?.name}@${result.manifest?.version}: ${result.objects.length} objects, no problems`)) + '\n');
      }
    });
  content
    .command('bundle <dir>')
    .description('lint a pack directory and write one immutable artifact, name@version.takt.json, with its sha256')
    .option('--out <dir>', 'where to write the artifact', '.')
    .action(async (dir: string, o: { out: string }) => {
      const { readPackDir } = await import('../content/files.js');
      const { lintPack, formatDiagnostic } = await import('../content/lint.js');
      const { makeBundle, bundleFileName } = await import('../content/bundle.js');
      const files = await readPackDir(dir);
      const result = lintPack(files);
      if (!result.manifest || result.diagnostics.length > 0) {
        for (const d of result.diagnostics) process.stderr.write(shownErr(formatDiagnostic({ ...d, file: `${dir.replace(/\/$/, '')}/${d.file}` })) + '\n');
        throw new TaktError('invalid', `not bundled: ${result.diagnostics.length} problem(s)`);
      }
      const bundle = makeBundle(result.manifest.name, result.manifest.version, files);
      const path = join(o.out, bundleFileName(bundle));
      await writeFile(path, JSON.stringify(bundle, null, 1) + '\n');
      print(g().output, { file: path, name: bundle.name, version: bundle.version, sha256: bundle.sha256 }, () => shown(`${path}\nsha256 ${bundle.sha256}`));
    });
  content
    .command('install <artifact>')
    .description('install a pack version (an artifact from `content bundle`, or a directory); versions are kept side by side and never change')
    .option('--use', 'run this version now (the first version of a pack always runs)')
    .action(async (artifact: string, o: { use?: boolean }) => {
      const r = await api().post<InstallResult>('/packs', { files: await loadPack(artifact), use: o.use === true });
      print(g().output, r, () => installLine(r));
    });
  content
    .command('push <dir>')
    .description('install a pack directory and run it (refused whole if it has any problem; a changed pack needs a new version)')
    .action(async (dir: string) => {
      const r = await api().post<InstallResult>('/packs', { files: await loadPack(dir), use: true });
      print(g().output, r, () => installLine(r));
    });
  content
    .command('use <pack@version>')
    .description('pin the version of a pack the endpoint runs (checked like an install: references, requires, machines)')
    .action(async (ref: string) => {
      const { name, version } = parseRef(ref);
      const r = await api().post<InstallResult>(`/packs/${enc(name)}/use`, { version });
      print(g().output, r, () => shown(`${r.name}@${r.version} is in use`));
    });
  content
    .command('versions [pack]')
    .description('installed versions, side by side')
    .action(async (name?: string) => {
      const [versions, pins] = await Promise.all([
        api().get<{ items: Array<{ name: string; version: string; sha256: string; installedAt: string; requires: Record<string, string> }> }>('/packs/versions', { name }),
        api().get<{ items: Array<{ name: string; version: string }> }>('/packs'),
      ]);
      const inUse = new Set(pins.items.map((p) => `${p.name}@${p.version}`));
      const rows = versions.items.map((v) => ({ ...v, inUse: inUse.has(`${v.name}@${v.version}`) }));
      print(g().output, rows, () =>
        renderTable(rows, [
          { header: 'PACK', get: (v) => v.name },
          { header: 'VERSION', get: (v) => v.version },
          { header: 'IN USE', get: (v) => (v.inUse ? 'yes' : ''), color: (t) => pc.green(t) },
          { header: 'SHA256', get: (v) => v.sha256.slice(0, 12) },
          { header: 'REQUIRES', get: (v) => Object.entries(v.requires).map(([k, r]) => `${k} ${r}`).join(', ') || null },
          { header: 'INSTALLED', get: (v) => v.installedAt },
        ]),
      );
    });
  content
    .command('diff <from> <to>')
    .description('what changed between two installed versions, object by object: takt content diff demo@1.0.0 demo@1.1.0')
    .action(async (fromRef: string, toRef: string) => {
      const a = parseRef(fromRef);
      const b = toRef.includes('@') ? parseRef(toRef) : { name: a.name, version: toRef };
      if (a.name !== b.name) throw new TaktError('bad_request', `compare two versions of one pack (got ${a.name} and ${b.name})`);
      const d = await api().get<PackDiff>(`/packs/${enc(a.name)}/diff`, { from: a.version, to: b.version });
      print(g().output, d, () => diffText(d));
    });
  content
    .command('list')
    .description('installed packs')
    .action(async () => {
      const r = await api().get<{ items: Array<{ name: string; version: string; sha256: string; installedAt: string; files: number }> }>('/packs');
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: 'NAME', get: (p) => p.name },
          { header: 'VERSION', get: (p) => p.version },
          { header: 'FILES', get: (p) => p.files },
          { header: 'SHA256', get: (p) => p.sha256.slice(0, 12) },
          { header: 'INSTALLED', get: (p) => p.installedAt },
        ]),
      );
    });
  content
    .command('remove <name>')
    .description('remove an installed pack (refused while machines or other content use it)')
    .action(async (name: string) => {
      const r = await api().delete(`/packs/${enc(name)}`);
      print(g().output, r, () => shown(`removed pack ${name}`));
    });
}

const installLine = (r: InstallResult) =>
  shown(`${r.installed ? 'installed' : 'already installed:'} ${r.name}@${r.version} (${r.objects} objects, sha256 ${r.sha256.slice(0, 12)})${r.active ? ', in use' : '; run it with `takt content use ' + r.name + '@' + r.version + '`'}`);

function parseRef(ref: string): { name: string; version: string } {
  const m = /^([a-z0-9][a-z0-9._-]*)@(.+)$/.exec(ref);
  if (!m) throw new TaktError('bad_request', `'${ref}' is not PACK@VERSION (e.g. demo@1.0.1)`);
  return { name: m[1]!, version: m[2]! };
}

/** A directory is read as a pack; a file must be an artifact from `takt content bundle`. */
async function loadPack(path: string): Promise<Record<string, string>> {
  if ((await stat(path).catch(() => null))?.isDirectory()) {
    const { readPackDir } = await import('../content/files.js');
    return readPackDir(path);
  }
  const { readBundle } = await import('../content/bundle.js');
  const text = await readFile(path, 'utf8').catch(() => {
    throw new TaktError('not_found', `${path}: no such file or directory`);
  });
  return readBundle(text, path).files;
}

function diffText(d: PackDiff): string {
  const lines = [pc.bold(shown(`${d.name} ${d.from} → ${d.to}`))];
  for (const a of d.added) lines.push(pc.green(shown(`+ ${a}`)));
  for (const r of d.removed) lines.push(pc.red(shown(`- ${r}`)));
  for (const c of d.changed) {
    lines.push(pc.yellow(shown(`~ ${c.object}`)));
    for (const f of c.fields) {
      lines.push(shown(`    ${f.path}:`));
      lines.push(pc.red(shown(`      - ${JSON.stringify(f.before)}`)));
      lines.push(pc.green(shown(`      + ${JSON.stringify(f.after)}`)));
    }
  }
  if (lines.length === 1) lines.push(pc.dim('no differences'));
  return lines.join('\n');
}

// ---- machines -----------------------------------------------------------------------------------------

const machineColumns = [
  { header: 'NAME', get: (m: Machine) => m.name },
  { header: 'ID', get: (m: Machine) => m.id },
  { header: 'ENV', get: (m: Machine) => m.environment },
  { header: 'PIPELINE', get: (m: Machine) => m.pipeline },
  { header: 'STATE', get: statusOf, color: colorStatus },
  { header: 'AGENT', get: (m: Machine) => agentCell(m) },
  { header: 'REASON', get: (m: Machine) => m.reason, max: 80 },
];

function machineCommands(program: Command, g: Globals, api: () => ApiClient) {
  const machines = program.command('machines').description('managed machines: create, inspect, steer');
  machines
    .command('list')
    .description('list machines (filters combine)')
    .addOption(new Option('--state <state>', 'only machines in this state').choices(MACHINE_STATES))
    .option('--pipeline <name>')
    .option('--environment <env>')
    .option('--name <substring>')
    .option('--built-with <pack@range>', 'built with a pack version in this range, e.g. demo@<1.2.0')
    .option('--stale', 'built with an older pack version than the one in use, or with params that changed since')
    .option('--limit <n>', 'page size', '100')
    .option('--offset <n>', 'skip this many', '0')
    .action(async (o: Record<string, string | boolean | undefined>) => {
      const { builtWith, stale, ...rest } = o;
      const query = { ...rest, builtWith: builtWith as string | undefined, stale: stale ? 'true' : undefined } as Record<string, string | undefined>;
      const r = await api().get<{ items: Array<Machine & { stale?: string[] }>; total: number }>('/machines', query);
      const columns = stale ? [...machineColumns.slice(0, 5), { header: 'WHY STALE', get: (m: Machine & { stale?: string[] }) => (m.stale ?? []).join('\n') }] : machineColumns;
      print(g().output, r.items, () => renderTable(r.items, columns) + (r.total > r.items.length ? pc.dim(`\n${r.items.length} of ${r.total}; use --offset for more`) : ''));
    });
  machines
    .command('record <machine>')
    .description('what built the machine, task by task: pack@version, task hash, script hash, params')
    .action(async (id: string) => {
      const r = await api().get<MachineRecord>(`/machines/${enc(id)}/record`);
      print(g().output, r, () => recordText(r));
    });
  machines
    .command('get <machine>')
    .description('one machine by id or name')
    .action(async (id: string) => {
      const m = await api().get<MachineView>(`/machines/${enc(id)}`);
      print(g().output, m, () => {
        const { facts, ...rest } = m;
        return `${machineText(rest as MachineView)}\n\n${factsSection(facts)}`;
      });
    });
  machines
    .command('create [name]')
    .description('create machines; with --broker the broker also makes them real (local: a sandbox with a running agent)')
    .option('--broker <broker>', 'e.g. local')
    .option('--count <n>', 'how many (names become NAME-1, NAME-2…)', '1')
    .option('--environment <env>', 'environment (default: the broker\'s, else local)')
    .option('--pipeline <name>', 'start this pipeline right away')
    .option('--param <key=value>', 'machine param (repeatable)', collect)
    .option('--profile <name>', 'profile (repeatable, highest precedence first)', collect)
    .option('--ssh <user@host[:port]>', 'agentless: the endpoint runs its jobs over SSH (IPv6 in brackets: root@[2001:db8::5]:22)')
    .option('--ssh-key <credential>', 'with --ssh: the credential that logs in (takt credentials add NAME --ssh-key FILE)')
    .option('--ssh-root <dir>', 'with --ssh: what scripts see as TAKT_ROOT on the host (default /)')
    .option('--ssh-dir <dir>', "with --ssh: takt's dir on the host (default /var/lib/takt-ssh for root, else ~/.takt)")
    .action(async (name: string | undefined, o: { broker?: string; count: string; environment?: string; pipeline?: string; param?: string[]; profile?: string[]; ssh?: string; sshKey?: string; sshRoot?: string; sshDir?: string }) => {
      const body = {
        name,
        broker: o.broker,
        count: Number(o.count),
        environment: o.environment,
        pipeline: o.pipeline,
        params: o.param ? parseParamPairs(o.param) : undefined,
        profiles: o.profile,
        ssh: sshBody(o, true),
      };
      const r = await api().post<{ items: Array<Machine & { token?: string }>; warnings?: string[] }>('/machines', body);
      for (const w of r.warnings ?? []) process.stderr.write(`${pc.yellow('warning:')} ${shownErr(w)}\n`);
      print(g().output, r.items, () =>
        renderTable(r.items, machineColumns) +
        (r.items.some((m) => m.token) ? `\n${pc.yellow('machine tokens (shown once):')}\n${r.items.map((m) => shown(`  ${m.name}: ${m.token}`)).join('\n')}` : ''),
      );
    });
  machines
    .command('update <machine>')
    .description('change a machine: pipeline (restarts it from the top), params, profiles, name, environment')
    .option('--pipeline <name>', "assign a pipeline ('' to clear)")
    .option('--param <key=value>', 'set a param (repeatable)', collect)
    .option('--unset <key>', 'remove a param (repeatable)', collect)
    .option('--profile <name>', 'replace the profile list (repeatable)', collect)
    .option('--name <name>')
    .option('--environment <env>')
    .option('--ssh <user@host[:port]>', 'agentless machines: reach the host here instead (its key is pinned afresh)')
    .option('--ssh-key <credential>', 'agentless machines: log in with this credential instead')
    .option('--ssh-root <dir>', "agentless machines: TAKT_ROOT on the host ('' for /)")
    .option('--ssh-dir <dir>', "agentless machines: takt's dir on the host ('' for the default)")
    .option('--ssh-accept-new-key', 'agentless machines: trust the new host key the host offered (check its fingerprint on the host first)')
    .action(async (id: string, o: { pipeline?: string; param?: string[]; unset?: string[]; profile?: string[]; name?: string; environment?: string; ssh?: string; sshKey?: string; sshRoot?: string; sshDir?: string; sshAcceptNewKey?: boolean }) => {
      const params = { ...parseParamPairs(o.param), ...Object.fromEntries((o.unset ?? []).map((k) => [k, null])) };
      const body: Record<string, unknown> = {};
      if (o.pipeline !== undefined) body.pipeline = o.pipeline === '' ? null : o.pipeline;
      if (Object.keys(params).length) body.params = params;
      if (o.profile) body.profiles = o.profile;
      if (o.name) body.name = o.name;
      if (o.environment) body.environment = o.environment;
      const ssh = sshBody(o, false);
      if (ssh) body.ssh = ssh;
      if (Object.keys(body).length === 0) throw new TaktError('bad_request', 'nothing to change: give --pipeline, --param, --unset, --profile, --name, --environment or an --ssh option');
      const m = await api().patch<Machine>(`/machines/${enc(id)}`, body);
      print(g().output, m, () => renderTable([m], machineColumns));
    });
  machines
    .command('delete <machine>')
    .description('delete a machine (its broker destroys it; its running job is cancelled)')
    .action(async (id: string) => {
      const m = await api().delete<Machine>(`/machines/${enc(id)}`);
      print(g().output, m, () => shown(`deleted ${m.name}`));
    });
  for (const [verb, what] of [
    ['resume', 're-run the task a stopped machine stopped on (or continue after a pause)'],
    ['restart', 'start the pipeline over from its first task'],
  ] as const) {
    machines
      .command(`${verb} <machine>`)
      .description(what)
      .action(async (id: string) => {
        const m = await api().post<Machine>(`/machines/${enc(id)}/${verb}`);
        print(g().output, m, () => renderTable([m], machineColumns));
      });
  }
  machines
    .command('power <machine>')
    .addArgument(new Argument('<state>', 'on or off').choices(['on', 'off']))
    .description('power a machine on or off')
    .action(async (id: string, state: string) => {
      const m = await api().post<Machine>(`/machines/${enc(id)}/power`, { power: state });
      print(g().output, m, () => renderTable([m], machineColumns));
    });
  machines
    .command('wait <machine>')
    .description('wait until the machine reaches a state; exits 1 if it stops instead of finishing, 2 on timeout')
    .addOption(new Option('--until <state>', 'the state to wait for').choices(MACHINE_STATES).default('done'))
    .option('--timeout <duration>', 'give up after this long', '10m')
    .action(async (id: string, o: { until: string; timeout: string }) => {
      const client = api();
      const deadline = Date.now() + parseDuration(o.timeout, '--timeout', DURATION_RANGES.wait);
      for (;;) {
        const m = await client.get<Machine>(`/machines/${enc(id)}`);
        if (m.state === o.until) return print(g().output, m, () => `${shown(m.name)} is ${colorState(m.state)}`);
        if (o.until === 'done' && m.state === 'stopped') {
          print(g().output, m, () => `${shown(m.name)} ${colorState('stopped')}: ${shown(m.reason ?? '')}`);
          process.exitCode = 1;
          return;
        }
        if (Date.now() > deadline) {
          process.stderr.write(shownErr(`takt: timed out after ${o.timeout} waiting for ${m.name} to be ${o.until}; it is ${m.state}${m.reason ? ` (${m.reason})` : ''}`) + '\n');
          process.exitCode = 2;
          return;
        }
        await new Promise((r) => setTimeout(r, 250));
      }
    });
}

function recordText(r: MachineRecord): string {
  const table = renderTable(r.entries, [
    { header: 'STAGE/TASK', get: (e) => `${e.stage ?? ''}/${e.task}` },
    { header: 'PACK', get: (e) => e.pack },
    { header: 'TASK SHA', get: (e) => e.taskSha256?.slice(0, 12) },
    { header: 'SCRIPT SHA', get: (e) => e.scriptSha256?.slice(0, 12) },
    { header: 'PARAMS', get: (e) => Object.entries(e.params).map(([k, p]) => `${k}=${JSON.stringify(p.value)} (${p.from})`).join('\n') || null },
    { header: 'JOB', get: (e) => e.job },
    { header: 'AT', get: (e) => e.finishedAt },
  ]);
  const head = `${pc.bold(shown(r.machine))} pipeline ${r.pipeline ? shown(r.pipeline) : pc.dim('(none)')}`;
  const stale = r.stale.length ? `\n${pc.yellow('stale:')}\n${r.stale.map((s) => shown(`  ${s}`)).join('\n')}` : `\n${pc.green('current: built with what is in use now')}`;
  return `${head}\n${table}${stale}`;
}

function approvalCommands(program: Command, g: Globals, api: () => ApiClient) {
  const approvals = program.command('approvals').description('stages that wait for a person: list, approve, reject');
  approvals
    .command('list')
    .description('machines waiting for approval, and for which stage')
    .action(async () => {
      const r = await api().get<{ items: Machine[] }>('/machines', { state: 'awaiting-approval', limit: 1000 });
      print(g().output, r.items, () => renderTable(r.items, machineColumns));
    });
  approvals
    .command('approve <machine>')
    .description('let the machine into the stage it waits at (recorded with who and when)')
    .option('--comment <text>')
    .action(async (id: string, o: { comment?: string }) => {
      const m = await api().post<Machine>(`/machines/${enc(id)}/approve`, o.comment ? { comment: o.comment } : {});
      print(g().output, m, () => renderTable([m], machineColumns));
    });
  approvals
    .command('reject <machine>')
    .description('turn the stage down: the machine stops there with your reason')
    .requiredOption('--reason <text>')
    .action(async (id: string, o: { reason: string }) => {
      const m = await api().post<Machine>(`/machines/${enc(id)}/reject`, { reason: o.reason });
      print(g().output, m, () => renderTable([m], machineColumns));
    });
}

// ---- jobs ---------------------------------------------------------------------------------------------

function jobCommands(program: Command, g: Globals, api: () => ApiClient) {
  const jobs = program.command('jobs').description('job runs: one task on one machine');
  jobs
    .command('list')
    .description('recent jobs, newest first')
    .option('--machine <machine>')
    .addOption(new Option('--state <state>', 'only jobs in this state').choices(JOB_STATES))
    .option('--task <task>')
    .option('--workorder <id>', 'jobs of one work order')
    .addOption(new Option('--order <order>', 'newest first (desc) or in the order they ran (asc)').choices(['asc', 'desc']).default('desc'))
    .option('--limit <n>', 'page size', '50')
    .option('--offset <n>', 'skip this many', '0')
    .action(async (o: Record<string, string | undefined>) => {
      const r = await api().get<{ items: Job[] }>('/jobs', o);
      // Names, not ids, in what people read: one lookup per machine on the page (a deleted one keeps its id).
      const names = new Map<string, string>();
      if (g().output === 'table') {
        await Promise.all(
          [...new Set(r.items.map((j) => j.machineId))].map(async (id) => {
            const m = await api().get<Machine>(`/machines/${enc(id)}`).catch(() => null);
            if (m) names.set(id, m.name);
          }),
        );
      }
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: 'ID', get: (j) => j.id },
          { header: 'MACHINE', get: (j) => names.get(j.machineId) ?? j.machineId },
          { header: 'TASK', get: (j) => (j.stage ? `${j.stage}/${j.task}` : j.task) },
          { header: 'STATE', get: (j) => j.state, color: colorState },
          { header: 'EXIT', get: (j) => j.exitCode },
          { header: 'TIME', get: (j) => (j.finishedAt ? formatDuration(Date.parse(j.finishedAt) - Date.parse(j.createdAt)) : null) },
          { header: 'REASON', get: (j) => j.reason, max: 80 },
        ]),
      );
    });
  jobs
    .command('get <job>')
    .description('one job with its rendered script (secure values masked) and params')
    .action(async (id: string) => print(g().output, await api().get<Job>(`/jobs/${enc(id)}`), undefined));
  jobs
    .command('log <job>')
    .description("print a job's output; --follow keeps printing until the job ends")
    .option('-f, --follow', 'follow until the job ends')
    .action(async (id: string, o: { follow?: boolean }) => {
      const client = api();
      let after = 0;
      for (;;) {
        const r = await client.get<{ job: { state: string; reason: string | null }; chunks: LogChunk[] }>(`/jobs/${enc(id)}/log`, { after });
        for (const c of r.chunks) {
          if (g().output === 'json') process.stdout.write(JSON.stringify(c) + '\n');
          else if (c.stream === 'stderr') process.stderr.write(shownErr(c.data));
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

function workOrderCommands(program: Command, g: Globals, api: () => ApiClient) {
  const wo = program.command('workorders').description('run a blueprint on a machine without moving its pipeline position');
  const columns = [
    { header: 'ID', get: (w: WorkOrder) => w.id },
    { header: 'MACHINE', get: (w: WorkOrder) => w.machineId },
    { header: 'BLUEPRINT', get: (w: WorkOrder) => w.blueprint },
    { header: 'STATE', get: (w: WorkOrder) => w.state, color: colorState },
    { header: 'REASON', get: (w: WorkOrder) => w.reason },
  ];
  wo.command('list')
    .option('--machine <machine>')
    .addOption(new Option('--state <state>', 'only work orders in this state').choices(WORK_ORDER_STATES))
    .action(async (o: Record<string, string | undefined>) => {
      const r = await api().get<{ items: WorkOrder[] }>('/workorders', o);
      print(g().output, r.items, () => renderTable(r.items, columns));
    });
  wo.command('create')
    .description('queue a work order; work orders run one at a time per machine, between pipeline tasks')
    .requiredOption('--machine <machine>')
    .requiredOption('--blueprint <name>')
    .option('--param <key=value>', 'param for this run (repeatable)', collect)
    .action(async (o: { machine: string; blueprint: string; param?: string[] }) => {
      const w = await api().post<WorkOrder>('/workorders', { machine: o.machine, blueprint: o.blueprint, params: parseParamPairs(o.param) });
      print(g().output, w, () => renderTable([w], columns));
    });
  wo.command('get <id>').action(async (id: string) => {
    const w = await api().get<WorkOrder>(`/workorders/${enc(id)}`);
    print(g().output, w, () => renderTable([w], columns));
  });
  wo.command('cancel <id>').action(async (id: string) => {
    const w = await api().delete<WorkOrder>(`/workorders/${enc(id)}`);
    print(g().output, w, () => renderTable([w], columns));
  });
}

// ---- content objects (params, profiles, tasks, stages, pipelines, blueprints) --------------------------

function objectCommands(program: Command, g: Globals, api: () => ApiClient, kind: (typeof CONTENT_KINDS)[number]) {
  const noun = KIND_NOUN[kind];
  const cmd = program.command(kind).description(`${noun} definitions (from packs, or local ones made here)`);
  cmd
    .command('list')
    .option('--layer <layer>', "pack name or 'local'")
    .action(async (o: { layer?: string }) => {
      const r = await api().get<{ items: Array<{ name: string; layer: string; description?: string }> }>(`/${kind}`, o);
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: 'NAME', get: (i) => i.name },
          { header: 'LAYER', get: (i) => i.layer },
          { header: 'DESCRIPTION', get: (i) => i.description },
        ]),
      );
    });
  cmd.command('get <name>').action(async (name: string) => print(g().output, await api().get(`/${kind}/${enc(name)}`), undefined));
  cmd
    .command('apply')
    .description(`create or replace a local ${noun} from a YAML or JSON file`)
    .requiredOption('-f, --file <file>')
    .action(async (o: { file: string }) => {
      const { parseYamlValue } = await import('../content/yaml.js');
      const def = parseYamlValue(await readFile(o.file, 'utf8'), o.file) as { name?: string } | null;
      if (!def || typeof def !== 'object' || typeof def.name !== 'string') throw new TaktError('invalid', `${o.file}: expected a ${noun} mapping with a name`);
      const client = api();
      const exists = await client.get(`/${kind}/${enc(def.name)}`).then(
        () => true,
        (err: unknown) => (err instanceof TaktError && err.code === 'not_found' ? false : Promise.reject(err)),
      );
      const r = exists ? await client.put(`/${kind}/${enc(def.name)}`, def) : await client.post(`/${kind}`, def);
      print(g().output, r, () => shown(`${exists ? 'updated' : 'created'} ${noun} ${def.name}`));
    });
  cmd.command('delete <name>').action(async (name: string) => {
    const r = await api().delete(`/${kind}/${enc(name)}`);
    print(g().output, r, () => shown(`deleted ${noun} ${name}`));
  });
}

function portableCommands(program: Command, g: Globals, api: () => ApiClient) {
  program
    .command('export <dir>')
    .description('write the complete desired state (pack versions, local content, machines) as a directory of YAML, e.g. to keep it in git')
    .action(async (dir: string) => {
      const { files } = await api().get<{ files: Record<string, string> }>('/export');
      // Every path must stay inside DIR, whatever the endpoint sends: checked before anything is written.
      const { assertPlainPaths } = await import('../content/files.js');
      assertPlainPaths(files, 'export');
      const existing = await readdir(dir).catch(() => null);
      if (existing && existing.length > 0 && !existing.includes('takt-export.yaml')) {
        throw new TaktError('conflict', `${dir} is not empty and holds no takt export; choose an empty or new directory`);
      }
      // Replace an earlier export whole, so files of deleted objects do not linger.
      if (existing) for (const e of existing) if (['packs', 'local', 'machines', 'takt-export.yaml'].includes(e)) await rm(join(dir, e), { recursive: true, force: true });
      for (const [path, text] of Object.entries(files)) {
        await mkdir(dirname(join(dir, path)), { recursive: true });
        await writeFile(join(dir, path), text);
      }
      print(g().output, { dir, files: Object.keys(files).length }, () => shown(`exported ${Object.keys(files).length} files to ${dir}`));
    });
  program
    .command('import <dir>')
    .description('restore the desired state from a `takt export` directory (machines not in it are reported, not deleted)')
    .action(async (dir: string) => {
      const files: Record<string, string> = {};
      const walk = async (rel: string) => {
        for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
          const p = rel ? `${rel}/${e.name}` : e.name;
          if (e.isDirectory()) await walk(p);
          else if (e.isFile() && !e.name.startsWith('.')) files[p] = await readFile(join(dir, p), 'utf8');
        }
      };
      await walk('').catch((err: NodeJS.ErrnoException) => {
        throw new TaktError('not_found', `${dir}: ${err.code === 'ENOENT' ? 'no such directory' : err.message}`);
      });
      const r = await api().post<{ packVersionsInstalled: string[]; content: Record<string, number>; machines: { created: string[]; updated: string[] }; problems: string[] }>('/import', { files });
      print(g().output, r, () =>
        [
          shown(`imported ${dir}: ${r.packVersionsInstalled.length} pack version(s) installed, content ${r.content.created} created / ${r.content.updated} updated / ${r.content.deleted} deleted, machines ${r.machines.created.length} created / ${r.machines.updated.length} updated`),
          ...r.problems.map((p) => pc.yellow(shown(`  ${p}`))),
        ].join('\n'),
      );
      if (r.problems.length) process.exitCode = 1;
    });
}

function historyCommands(program: Command, g: Globals, api: () => ApiClient) {
  const history = program
    .command('history')
    .description('numbered changes to desired state: who, when, what')
    .option('--object <object>', 'only changes to this object, e.g. machines/m-1a2b or profiles/web')
    .option('--limit <n>', 'how many', '50')
    .action(async (o: { object?: string; limit: string }) => {
      const r = await api().get<{ items: Change[] }>('/changes', o);
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: '#', get: (c) => String(c.seq) },
          { header: 'WHEN', get: (c) => c.at },
          { header: 'WHO', get: (c) => c.author },
          { header: 'ACTION', get: (c) => c.action },
          { header: 'OBJECT', get: (c) => c.object },
        ]),
      );
    });
  history
    .command('show <seq>')
    .description('one change: who, when, and what it changed field by field')
    .action(async (seq: string) => {
      const c = await api().get<Change & { diff: Array<{ path: string; before: unknown; after: unknown }> }>(`/changes/${enc(seq)}`);
      print(g().output, c, () =>
        [
          `${pc.bold(`#${c.seq}`)} ${shown(`${c.action} ${c.object} by ${c.author} at ${c.at}`)}`,
          ...c.diff.flatMap((f) => [shown(`  ${f.path}:`), pc.red(shown(`    - ${JSON.stringify(f.before)}`)), pc.green(shown(`    + ${JSON.stringify(f.after)}`))]),
        ].join('\n'),
      );
    });
  history
    .command('revert <seq>')
    .description('undo one change, as a new change (refused if what it changed was changed again since)')
    .action(async (seq: string) => {
      const r = await api().post<{ reverted: number; changes: number }>(`/changes/${enc(seq)}/revert`);
      print(g().output, r, () => `reverted #${r.reverted} (${r.changes} new change${r.changes === 1 ? '' : 's'})`);
    });
  history
    .command('rewind')
    .description('restore the whole desired state (packs in use, local content, machine params/profiles/pipelines) as of a change')
    .requiredOption('--to <seq>', 'the change to go back to (0: before the first)')
    .action(async (o: { to: string }) => {
      const to = Number(o.to);
      if (!Number.isInteger(to) || to < 0) throw new TaktError('bad_request', '--to must be a change number');
      const r = await api().post<{ to: number; applied: Array<{ object: string; seq: number }>; skipped: Array<{ object: string; reason: string }> }>('/changes/rewind', { to });
      print(g().output, r, () =>
        [
          `rewound to #${r.to}: ${r.applied.length} object(s) restored`,
          ...r.applied.map((a) => shown(`  ${a.object} (#${a.seq})`)),
          ...r.skipped.map((s) => pc.yellow(shown(`  not restored: ${s.object}: ${s.reason}`))),
        ].join('\n'),
      );
    });
}

// ---- plan view ----------------------------------------------------------------------------------------

interface PlanParam {
  name: string;
  value: unknown;
  from: string;
  secure: boolean;
  required: boolean;
}
interface PlanStepView {
  stage: string | null;
  task: string;
  variant: string;
  noop: string | null;
  params: PlanParam[];
  missing: string[];
  error: string | null;
}
interface PlanView {
  machine: string;
  pipeline: string | null;
  state: string;
  workOrders: Array<{ id: string; blueprint: string; steps: PlanStepView[] }>;
  from: 'continue' | 'restart';
  steps: PlanStepView[];
}

function planTable(plan: PlanView): string {
  const lines: string[] = [`${pc.bold(shown(plan.machine))} ${colorState(plan.state)} pipeline ${plan.pipeline ? shown(plan.pipeline) : pc.dim('(none)')}`];
  const step = (s: PlanStepView) => {
    lines.push(`  ${s.stage ? shown(`${s.stage}/`) : ''}${pc.bold(shown(s.task))}${s.variant !== 'default' ? pc.dim(shown(` [variant ${s.variant}]`)) : ''}`);
    if (s.noop) lines.push(`    ${pc.dim(shown(`no-op: ${s.noop}`))}`);
    for (const p of s.params) lines.push(`    ${shown(`${p.name} = ${JSON.stringify(p.value)}`)} ${pc.dim(shown(`(${p.from})`))}`);
    for (const m of s.missing) lines.push(`    ${pc.red(shown(`${m} = MISSING (required)`))}`);
    if (s.error && s.missing.length === 0) lines.push(`    ${pc.red(shown(s.error))}`);
  };
  for (const wo of plan.workOrders) {
    lines.push(pc.dim(shown(`work order ${wo.id} (${wo.blueprint}) runs first:`)));
    wo.steps.forEach(step);
  }
  if (plan.steps.length === 0) lines.push(pc.dim('  nothing left to run'));
  else if (plan.from === 'restart') lines.push(pc.dim('finished; `takt machines restart` would run:'));
  plan.steps.forEach(step);
  return lines.join('\n');
}

function summarize(data: unknown): string {
  if (!data || typeof data !== 'object') return '';
  const d = data as Record<string, unknown>;
  const agent = d.agent && typeof d.agent === 'object' ? ` agent=${(d.agent as { connected?: boolean }).connected ? 'connected' : 'disconnected'}` : '';
  return ['name', 'task', 'state', 'reason'].filter((k) => d[k] !== undefined && d[k] !== null).map((k) => `${k}=${String(d[k])}`).join(' ') + agent;
}
