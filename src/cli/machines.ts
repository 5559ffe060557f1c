/** The `machines` commands. */
import { Option, type Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import type { MachineDescription } from '../engine/describe.js';
import type { MachineRecord } from '../engine/records.js';
import { TaktError } from '../model/errors.js';
import { parseLabelPairs } from '../model/labels.js';
import { MACHINE_STATES, type Machine } from '../model/machine.js';
import { collect, PARAM_TYPING, parseParamPairs, withParamHint, type Globals } from './client.js';
import { pageNote, print, renderTable, shown, shownErr } from './output.js';
import { factsSection } from './join.js';
import { agentCell, colorStatus, machineText, statusOf, type MachineView } from './liveness.js';
import { machineControlCommands } from './machine-control.js';
import { sshBody } from './ssh.js';
import { powerConfigBody, type PowerFlags } from './power.js';
import { examples } from './help.js';
import { describeText } from './describe.js';
import { classifyCommand, classificationLine } from './classify.js';
import { exitCodeOf, report } from './program.js';
import { EXIT, UsageError } from './usage.js';

const enc = encodeURIComponent;

// ---- machines -----------------------------------------------------------------------------------------

export const machineColumns = [
  { header: 'NAME', get: (m: Machine) => m.name },
  { header: 'ID', get: (m: Machine) => m.id, wide: true },
  { header: 'ENV', get: (m: Machine) => m.environment },
  { header: 'BROKER', get: (m: Machine) => m.broker, wide: true },
  // The replica whose host holds the machine's sandbox or VM (its endpoint id, in its data dir's endpoint-id file).
  { header: 'REPLICA', get: (m: Machine) => m.host ?? null, wide: true },
  { header: 'PIPELINE', get: (m: Machine) => m.pipeline },
  { header: 'STATE', get: statusOf, color: colorStatus },
  { header: 'AGENT', get: (m: Machine) => agentCell(m) },
  { header: 'CREATED', get: (m: Machine) => m.createdAt, wide: true },
  { header: 'UPDATED', get: (m: Machine) => m.updatedAt, wide: true },
  { header: 'LABELS', get: labelsCell, wide: true },
  { header: 'REASON', get: (m: Machine) => m.reason, max: 80 },
];

/** The LABELS cell: `role=web,tier=db` as kubectl's --show-labels prints them; `-` for none. */
function labelsCell(m: Machine): string {
  const pairs = Object.entries(m.labels ?? {}).map(([k, v]) => `${k}=${v}`);
  return pairs.length ? pairs.join(',') : '-';
}

export function machineCommands(program: Command, g: Globals, api: () => ApiClient) {
  const machines = program
    .command('machines')
    .description('managed machines: create, inspect, steer')
    .addHelpText('after', examples('takt machines ls', 'takt machine get demo-1', 'takt machines create web --broker local --count 3 --pipeline demo'));
  machines
    .command('list')
    .description('list machines (filters combine)')
    .addHelpText('after', examples('takt machines ls --state stopped', 'takt machines list -o wide', 'takt machines list --show-labels -l role=web', 'takt machines list -o name | xargs -n1 takt machines get', "takt machines list --built-with 'demo@<1.2.0'", "takt machines list --built-with 'image:debian-min@<2'", 'takt machines list --stale'))
    .addOption(new Option('--state <state>', 'only machines in this state, as the STATE column shows it: waiting-for-agent is a running machine with work and no agent connected (--state running includes those)').choices([...MACHINE_STATES, 'waiting-for-agent']))
    .option('--pipeline <name>')
    .option('--environment <env>')
    .option('--name <substring>')
    .option('-l, --selector <selector>', 'only machines whose labels match, e.g. role=web,env!=prod (key=value, key!=value, key, !key)')
    .option('--built-with <pack@range>', "built with a pack version in this range, or (image:NAME@RANGE) deployed with an image version in it (quote it for the shell), e.g. --built-with 'demo@<1.2.0', --built-with 'image:debian-min@<2'")
    .option('--show-labels', 'add the LABELS column (-o wide has it too)')
    .option('--stale', 'built with an older pack version than the one in use, or with params that changed since')
    .option('--limit <n>', 'page size', '100')
    .option('--offset <n>', 'skip this many', '0')
    .action(async (o: Record<string, string | boolean | undefined>) => {
      const { builtWith, stale, showLabels, ...rest } = o;
      const query = { ...rest, builtWith: builtWith as string | undefined, stale: stale ? 'true' : undefined } as Record<string, string | undefined>;
      const r = await api().get<{ items: Array<Machine & { stale?: string[] }>; total: number }>('/machines', query);
      const columns = stale ? [...machineColumns.filter((c) => ['NAME', 'ID', 'ENV', 'PIPELINE', 'STATE'].includes(c.header)), { header: 'WHY STALE', get: (m: Machine & { stale?: string[] }) => (m.stale ?? []).join('\n'), flex: true }] : machineColumns;
      const shownColumns = showLabels ? columns.map((c) => (c.header === 'LABELS' ? { ...c, wide: false } : c)) : columns;
      print(g().output, r.items, () => renderTable(r.items, shownColumns) + pageNote(r.items.length, Number(o.offset) || 0, r.total));
    });
  machines
    .command('record <machine>')
    .description('what built the machine, task by task: pack@version, task hash, script hash, params')
    .addHelpText('after', examples('takt machines record demo-1', 'takt machines record demo-1 -o json'))
    .action(async (id: string) => {
      const r = await api().get<MachineRecord>(`/machines/${enc(id)}/record`);
      print(g().output, r, () => recordText(r));
    });
  machines
    .command('get <machine>')
    .description('one machine by id or name')
    .addHelpText('after', examples('takt machines get demo-1', 'takt machine get demo-1 -o yaml'))
    .action(async (id: string) => {
      const m = await api().get<MachineView>(`/machines/${enc(id)}`);
      print(g().output, m, () => {
        const { facts, ...rest } = m;
        const classified = m.classification ? `\n\n${pc.bold('Classified')}\n  ${shown(classificationLine(m.classification))}` : '';
        return `${machineText(rest as MachineView)}${classified}\n\n${factsSection(facts)}`;
      });
    });
  machines
    .command('describe <machine>')
    .description('what a machine is doing and waiting for: pipeline position by name, state and reason, agent, last jobs and events')
    .option('--jobs <n>', 'how many of its newest jobs to show', '10')
    .option('--events <n>', 'how many of its recent events to show', '10')
    .addHelpText('after', '\nExamples:\n  $ takt machines describe demo-1\n  $ takt machines describe demo-1 -o json | jq .waitingFor')
    .action(async (id: string, o: { jobs: string; events: string }) => {
      const d = await api().get<MachineDescription>(`/machines/${enc(id)}/describe`, { jobs: o.jobs, events: o.events });
      print(g().output, d, () => describeText(d));
    });
  classifyCommand(machines, g, api);
  machines
    .command('create [name]')
    .description('create machines; with --broker the broker also makes them real (local: a sandbox with a running agent)')
    .addHelpText(
      'after',
      examples(
        'takt machines create web --broker local --count 3 --pipeline demo',
        'takt machines create ns --broker netns --pipeline demo',
        'takt machines create web-1 --ssh root@10.0.0.5 --ssh-key ops --pipeline demo',
        'takt machines create rack1-u7 --environment metal --mac 52:54:00:12:34:56 --uuid 8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d --bootenv sledge',
        'takt machines create rack1-u8 --environment metal --mac 52:54:00:12:34:57 --power-driver ipmi --power-opt host=10.0.0.9 --power-opt user=admin --power-opt password-param=bmc_password',
        'takt machines create rack1-u9 --environment metal --mac 52:54:00:12:34:58 --ip 10.0.0.20   # its DHCP address',
        'takt machines create vm-1 --broker qemu --firmware uefi --memory 1024 --disk-size 8',
      ),
    )
    .option('--broker <broker>', 'e.g. local')
    .option('--count <n>', 'how many (names become NAME-1, NAME-2…)', '1')
    .option('--environment <env>', "environment: picks the tasks' variants (default: the broker's; with --ssh ssh; with --mac metal; else remote)")
    .option('--pipeline <name>', 'start this pipeline right away')
    .option('--param <key=value>', `machine param (repeatable); ${PARAM_TYPING}`, collect)
    .option('--profile <name>', 'profile (repeatable, highest precedence first)', collect)
    .option('--label <key=value>', 'label (repeatable), e.g. --label role=web', collect)
    .option('--ssh <user@host[:port]>', 'agentless: the endpoint runs its jobs over SSH (IPv6 in brackets: root@[2001:db8::5]:22)')
    .option('--ssh-key <credential>', 'with --ssh: the credential that logs in (takt credentials add NAME --ssh-key FILE)')
    .option('--ssh-root <dir>', 'with --ssh: what scripts see as TAKT_ROOT on the host (default /)')
    .option('--ssh-dir <dir>', "with --ssh: takt's dir on the host (default /var/lib/takt-ssh for root, else ~/.takt)")
    .option('--mac <mac>', 'network-booted: a MAC address it boots from (repeatable), e.g. 52:54:00:12:34:56', collect)
    .option('--uuid <uuid>', 'with --mac: its SMBIOS system UUID')
    .option('--firmware <bios|uefi>', 'with --mac: its firmware (default: as the booting firmware says)')
    .option('--bootenv <name>', "with --mac: the boot environment it boots into (default local: its disk)")
    .option('--power-driver <driver>', 'how takt switches its power: qmp, ipmi, redfish or manual (see docs/provisioning.md "Power control")')
    .option('--power-opt <key=value>', 'a setting of the power driver (repeatable), e.g. host=10.0.0.9, password-param=bmc_password (a secure param: never the password itself)', collect)
    .option('--memory <MiB>', 'with --broker qemu: guest memory in MiB (default 512)')
    .option('--disk-size <GiB>', 'with --broker qemu: its qcow2 disk in GiB (default 8)')
    .option('--ip <address>', 'with --mac: an IPv4 address reserved for it (takt serve --dhcp full gives it this address)')
    .option('--allow-undeclared', 'store params no param definition or task declares (refused by default: usually a typo)')
    .action(async (name: string | undefined, o: BootFlags & PowerFlags & VmFlags & { allowUndeclared?: boolean; broker?: string; count: string; environment?: string; pipeline?: string; param?: string[]; profile?: string[]; label?: string[]; ssh?: string; sshKey?: string; sshRoot?: string; sshDir?: string }) => {
      const labels = o.label ? parseLabelPairs(o.label) : undefined;
      if (labels && Object.values(labels).includes(null)) throw new UsageError('--label KEY- removes a label: use it with `machines update`');
      const body = {
        name,
        broker: o.broker,
        count: Number(o.count),
        environment: o.environment,
        pipeline: o.pipeline,
        params: o.param ? parseParamPairs(o.param) : undefined,
        profiles: o.profile,
        labels,
        ssh: sshBody(o, true),
        ...vmAndBootBody(o),
        powerConfig: powerConfigBody(o) ?? undefined,
        allowUndeclared: o.allowUndeclared || undefined,
      };
      const r = await withParamHint(o.param, api().post<{ items: Array<Machine & { token?: string }>; warnings?: string[] }>('/machines', body));
      for (const w of r.warnings ?? []) process.stderr.write(`${pc.yellow('warning:')} ${shownErr(w)}\n`);
      print(g().output, r.items, () =>
        renderTable(r.items, machineColumns) +
        (r.items.some((m) => m.token) ? `\n${pc.yellow('machine tokens (shown once):')}\n${r.items.map((m) => shown(`  ${m.name}: ${m.token}`)).join('\n')}` : ''),
      );
    });
  machines
    .command('update <machine>')
    .description('change a machine: pipeline (restarts it from the top), params, profiles, name, environment')
    .addHelpText('after', examples('takt machines update demo-2 --param fail_verify=true', 'takt machines update demo-2 --unset fail_verify', "takt machines update demo-1 --pipeline ''   # unassign its pipeline"))
    .option('--pipeline <name>', "assign a pipeline ('' to clear)")
    .option('--param <key=value>', `set a param (repeatable); ${PARAM_TYPING}`, collect)
    .option('--unset <key>', 'remove a param (repeatable)', collect)
    .option('--profile <name>', 'replace the profile list (repeatable)', collect)
    .option('--label <key=value>', 'set a label, or remove one with KEY- (repeatable), e.g. --label role=web --label legacy-', collect)
    .option('--name <name>')
    .option('--environment <env>')
    .option('--ssh <user@host[:port]>', 'agentless machines: reach the host here instead (its key is pinned afresh)')
    .option('--ssh-key <credential>', 'agentless machines: log in with this credential instead')
    .option('--ssh-root <dir>', "agentless machines: TAKT_ROOT on the host ('' for /)")
    .option('--ssh-dir <dir>', "agentless machines: takt's dir on the host ('' for the default)")
    .option('--ssh-accept-new-key', 'agentless machines: trust the new host key the host offered (check its fingerprint on the host first)')
    .option('--mac <mac>', 'network-booted machines: replace the MACs it boots from (repeatable)', collect)
    .option('--uuid <uuid>', "network-booted machines: its SMBIOS UUID ('' to forget it)")
    .option('--firmware <bios|uefi>', "network-booted machines: its firmware ('' for: as it says)")
    .option('--bootenv <name>', 'network-booted machines: the boot environment it boots into next (local: its disk)')
    .option('--power-driver <driver>', "replace how takt switches its power: qmp, ipmi, redfish, manual, or none to remove it")
    .option('--power-opt <key=value>', 'a setting of the power driver (repeatable; alone: changes that setting of the current configuration)', collect)
    .option('--ip <address>', "network-booted machines: the IPv4 address reserved for it ('' to free it)")
    .option('--allow-undeclared', 'store params no param definition or task declares (refused by default: usually a typo)')
    .action(async (id: string, o: BootFlags & PowerFlags & { allowUndeclared?: boolean; pipeline?: string; param?: string[]; unset?: string[]; profile?: string[]; label?: string[]; name?: string; environment?: string; ssh?: string; sshKey?: string; sshRoot?: string; sshDir?: string; sshAcceptNewKey?: boolean }) => {
      const params = { ...parseParamPairs(o.param), ...Object.fromEntries((o.unset ?? []).map((k) => [k, null])) };
      const body: Record<string, unknown> = {};
      if (o.pipeline !== undefined) body.pipeline = o.pipeline === '' ? null : o.pipeline;
      if (Object.keys(params).length) body.params = params;
      if (o.profile) body.profiles = o.profile;
      if (o.label) body.labels = parseLabelPairs(o.label);
      if (o.name) body.name = o.name;
      if (o.environment) body.environment = o.environment;
      const ssh = sshBody(o, false);
      if (ssh) body.ssh = ssh;
      const boot = bootBody(o, false);
      if (boot) body.boot = boot;
      // --power-opt alone changes one setting: the rest comes from the machine as it is.
      const current = o.powerOpt?.length && o.powerDriver === undefined ? (await api().get<Machine>(`/machines/${enc(id)}`)).powerConfig ?? null : undefined;
      const powerConfig = powerConfigBody(o, current);
      if (powerConfig !== undefined) body.powerConfig = powerConfig;
      if (Object.keys(body).length === 0) throw new UsageError('nothing to change: give --pipeline, --param, --unset, --profile, --label, --name, --environment, an --ssh option, a boot option (--mac, --uuid, --firmware, --bootenv, --ip) or a power option (--power-driver, --power-opt)');
      if (o.allowUndeclared) body.allowUndeclared = true;
      const m = await withParamHint(o.param, api().patch<Machine>(`/machines/${enc(id)}`, body));
      print(g().output, m, () => renderTable([m], machineColumns));
    });
  machines
    .command('delete <machines...>')
    .description(
      'delete machines (each one\'s broker destroys it; its running job is cancelled), one after another: one that cannot be deleted (not found, refused) is said on stderr and the others are still deleted. Exit 0 when all were deleted, else the code of the failure when every failure was of one kind (4 not found, 5 refused), else 1',
    )
    .addHelpText('after', examples('takt machines rm web-3', 'takt machines delete web-1 web-2 web-3', 'takt machines ls -l env=dev -o name | xargs takt machines rm', 'takt machines delete web-1 web-2 -o json   # [{machine, deleted, id} | {machine, deleted: false, error: {code, message}}]'))
    .action(async (names: string[]) => {
      const client = api();
      const results: Array<{ machine: string; deleted: true; id: string } | { machine: string; deleted: false; error: { code: string; message: string } }> = [];
      const failures: unknown[] = [];
      for (const name of names) {
        try {
          const m = await client.delete<Machine>(`/machines/${enc(name)}`);
          results.push({ machine: m.name, deleted: true, id: m.id });
          // As each goes (a table, or -o name's machines/NAME); -o json|yaml lists them all at the end.
          if (g().output === 'table') print('table', m, () => shown(`deleted ${m.name}`));
        } catch (err) {
          // Not reachable at all: the rest would fail alike.
          if (!(err instanceof TaktError)) throw err;
          failures.push(err);
          results.push({ machine: name, deleted: false, error: { code: err.code, message: err.message } });
          if (g().output === 'table') report(err);
        }
      }
      if (g().output !== 'table') print(g().output, results);
      if (failures.length > 0) {
        const codes = new Set(failures.map((f) => exitCodeOf(f)));
        process.exitCode = codes.size === 1 ? [...codes][0]! : EXIT.failed;
      }
    });
  for (const [verb, what] of [
    ['resume', 'continue a stopped or paused machine: the task it stopped or was paused on (after an exit 16, the next), then every task that has not succeeded since the last restart, in pipeline order; refused, saying why, when a content change makes that ambiguous (`takt plan M` shows it first)'],
    ['restart', 'start the pipeline over from its first task (a powered-off machine stays off: --power-on)'],
    ['rebuild', "re-run a network-booted machine's deploy: it boots the discovery bootenv again (its agent is told to reboot) and its pipeline (e.g. image-deploy) starts over from the top; an OS without an agent needs takt machines power M cycle --next-boot pxe"],
  ] as const) {
    machines
      .command(`${verb} <machine>`)
      .description(what)
      .option('--power-on', 'also power the machine on, if it is powered off (without it, it stays off and goes on when powered on)')
      .addHelpText('after', examples(`takt machines ${verb} demo-2`, `takt machines ${verb} demo-2 --power-on   # it was powered off`))
      .action(async (id: string, o: { powerOn?: boolean }) => {
        const before = o.powerOn ? await api().get<Machine>(`/machines/${enc(id)}`) : null;
        const m = await api().post<Machine>(`/machines/${enc(id)}/${verb}`, o.powerOn ? { powerOn: true } : undefined);
        // Power is its own desired state: say what became of it, never change it silently.
        if (m.power === 'off') process.stderr.write(shownErr(`${m.name} is powered off: it stays off, and runs ${verb === 'restart' ? 'from its first task' : 'on'} when powered on (takt machines power ${m.name} on, or ${verb} with --power-on)`) + '\n');
        else if (before?.power === 'off') process.stderr.write(shownErr(`${m.name} was powered off: powered on (--power-on)`) + '\n');
        print(g().output, m, () => renderTable([m], machineColumns));
      });
  }
  machineControlCommands(machines, g, api);
}

/** The VM options of `machines create --broker qemu`. */
interface VmFlags {
  broker?: string;
  memory?: string;
  diskSize?: string;
}

/**
 * The `vm` and `boot` bodies of `machines create`: with `--broker qemu`, `--firmware`, `--memory` and
 * `--disk-size` describe the VM (the broker chooses its MAC and UUID; `--bootenv` is kept); otherwise the
 * boot flags as `bootBody` reads them.
 */
function vmAndBootBody(o: BootFlags & VmFlags): { vm?: Record<string, unknown>; boot?: Record<string, unknown> } {
  if (o.broker !== 'qemu') {
    if (o.memory !== undefined || o.diskSize !== undefined) throw new UsageError('--memory and --disk-size are for VMs: use them with --broker qemu');
    return { boot: bootBody(o, true) };
  }
  if (o.mac || o.uuid !== undefined) throw new UsageError('the qemu broker chooses the VM\'s MAC and SMBIOS UUID: leave out --mac and --uuid');
  const num = (v: string | undefined, flag: string) => {
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v)) throw new UsageError(`${flag} takes a whole number, got ${JSON.stringify(v)}`, { path: flag });
    return Number(v);
  };
  return { vm: { firmware: o.firmware, memoryMiB: num(o.memory, '--memory'), diskGiB: num(o.diskSize, '--disk-size'), bootenv: o.bootenv } };
}

/** The boot options of `machines create` and `update`. */
interface BootFlags {
  mac?: string[];
  uuid?: string;
  firmware?: string;
  bootenv?: string;
  ip?: string;
}

/**
 * The `boot` body from the flags, or undefined when none was given. On create, the other boot flags
 * need `--mac` (a network-booted machine is known by its MAC); the endpoint checks the values.
 */
function bootBody(o: BootFlags, create: boolean): Record<string, unknown> | undefined {
  const body: Record<string, unknown> = {};
  if (o.mac) body.macs = o.mac;
  if (o.uuid !== undefined) body.uuid = o.uuid === '' ? null : o.uuid;
  if (o.firmware !== undefined) body.firmware = o.firmware === '' ? null : o.firmware;
  if (o.bootenv !== undefined) body.bootenv = o.bootenv;
  if (o.ip !== undefined) body.ip = o.ip === '' ? null : o.ip;
  if (Object.keys(body).length === 0) return undefined;
  if (create && !o.mac) throw new UsageError('--uuid, --firmware, --bootenv and --ip are for network-booted machines: give the MAC it boots from with --mac');
  return body;
}

function recordText(r: MachineRecord): string {
  const table = renderTable(r.entries, [
    { header: 'STAGE/TASK', get: (e) => `${e.stage ?? ''}/${e.task}` },
    { header: 'PACK', get: (e) => e.pack },
    // The image a task wrote to the disk, beside the pack version; only when one did.
    ...(r.entries.some((e) => e.image) ? [{ header: 'IMAGE', get: (e: MachineRecord['entries'][number]) => (e.image ? `${e.image.name}@${e.image.version}` : null) }] : []),
    { header: 'TASK SHA', get: (e) => e.taskSha256?.slice(0, 12) },
    { header: 'SCRIPT SHA', get: (e) => e.scriptSha256?.slice(0, 12) },
    { header: 'PARAMS', get: (e) => Object.entries(e.params).map(([k, p]) => `${k}=${JSON.stringify(p.value)} (${p.from})`).join('\n') || null },
    { header: 'JOB', get: (e) => e.job },
    { header: 'AT', get: (e) => e.finishedAt },
  ]);
  const leftover = r.leftover?.length
    ? `\n${pc.dim('no longer in the pipeline (not used for --built-with/--stale):')}\n${r.leftover.map((e) => shown(`  ${e.stage ?? ''}/${e.task}  ${e.pack ?? ''}  ${e.finishedAt ?? ''}`)).join('\n')}`
    : '';
  const images = r.images?.length ? ` image ${r.images.map((i) => shown(i)).join(', ')}` : '';
  const head = `${pc.bold(shown(r.machine))} pipeline ${r.pipeline ? shown(r.pipeline) : pc.dim('(none)')}${images}`;
  const stale = r.stale.length ? `\n${pc.yellow('stale:')}\n${r.stale.map((s) => shown(`  ${s}`)).join('\n')}` : `\n${pc.green('current: built with what is in use now')}`;
  return `${head}\n${table}${leftover}${stale}`;
}
