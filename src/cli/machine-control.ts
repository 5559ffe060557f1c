/**
 * `takt machines pause|stop|drain|wait|power`: an operator stops work and keeps each machine's place, and
 * waits for machines (or a rollout) to get somewhere. Kept apart from machines.ts (inspecting and editing
 * machines) because it is the part that steers running work.
 */
import { Argument, type Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import { DURATION_RANGES, parseDuration } from '../model/duration.js';
import { TaktError } from '../model/errors.js';
import { MACHINE_STATES, type Job, type Machine, type MachineState } from '../model/machine.js';
import type { RolloutState } from '../model/rollout.js';
import type { Globals } from './client.js';
import { colorState, print, renderTable, shown, shownErr } from './output.js';
import { EXIT, usage, UsageError } from './usage.js';
import { machineColumns } from './machines.js';

const enc = encodeURIComponent;

/** `machines wait` exit codes (also in its --help and docs/operations.md § Stopping work); usage is every command's (usage.ts). */
export const WAIT_EXIT = { reached: 0, failed: 1, usage: EXIT.usage, timeout: 124 } as const;

/** What POST /machines/:id/pause answers. */
export interface PauseResult {
  machine: Machine;
  /** It was paused already (nothing changed, unless a job was cancelled). */
  already: boolean;
  /** The job that was cancelled (with --cancel), if one was running. */
  cancelled: Job | null;
}

/** What GET /machines/:id/power answers. */
interface PowerStatus {
  machine: string;
  desired: 'on' | 'off';
  driver: string;
  state: 'on' | 'off' | 'unknown';
}

/** One driver answer in POST /machines/:id/power's `result`. */
interface DriverAnswer {
  driver: string;
  done: boolean;
  instruction?: string;
  note?: string;
  persistent?: boolean;
}

/** POST /machines/:id/power's `result` (machines with a power configuration). */
interface PowerResults {
  nextBoot?: DriverAnswer;
  power?: DriverAnswer;
}

function colorPower(state: PowerStatus['state']): string {
  return state === 'on' ? pc.green('on') : state === 'off' ? pc.dim('off') : pc.yellow('unknown (the driver cannot tell)');
}

/** The driver's words under the table: what it did, and what a person must do (manual driver). */
function powerResultText(r: PowerResults | undefined): string {
  if (!r) return '';
  const lines: string[] = [];
  for (const [what, a] of [['next boot', r.nextBoot], ['power', r.power]] as const) {
    if (!a) continue;
    if (!a.done && a.instruction) lines.push(`${pc.yellow(`${what}: do this yourself (driver ${a.driver}):`)} ${shown(a.instruction)}`);
    else lines.push(`${what}: done by ${shown(a.driver)}${a.persistent ? ' (persistent)' : ''}${a.note ? ` — ${shown(a.note)}` : ''}`);
  }
  return lines.length ? `\n${lines.join('\n')}` : '';
}

const LIST_PAGE = 1000;

/**
 * Every machine matching `query` (all pages). With a label selector, an endpoint that does not know
 * selectors would answer every machine: refused instead, since pausing "every machine" by accident is
 * the one mistake a drain must not make.
 */
export async function listAllMachines(client: ApiClient, query: Record<string, string | undefined>): Promise<Machine[]> {
  const out: Machine[] = [];
  for (let offset = 0; offset < 1_000_000; offset += LIST_PAGE) {
    const page = await client.get<{ items: Machine[]; total: number }>('/machines', { ...query, limit: LIST_PAGE, offset });
    if (query.selector !== undefined && page.items.some((m) => !('labels' in m))) {
      throw new TaktError('bad_request', 'this endpoint does not filter machines by labels (it is older than this CLI): name the machines instead');
    }
    out.push(...page.items);
    if (page.items.length < LIST_PAGE || out.length >= page.total) break;
  }
  return out;
}

/** What a pause did to one machine, in words. */
function pauseOutcome(r: PauseResult, runningTask: string | null): string {
  const m = r.machine;
  if (r.cancelled) return `paused on task '${r.cancelled.task}': job ${r.cancelled.id} cancelled (its processes killed); resume re-runs the task`;
  if (r.already) return m.currentJob ? 'already pausing: its running job finishes first' : 'already paused';
  if (m.currentJob) return `pausing: its running job${runningTask ? ` (task '${runningTask}')` : ''} finishes first, then it stays paused`;
  return 'paused';
}

async function taskOf(client: ApiClient, jobId: string | null): Promise<string | null> {
  if (!jobId) return null;
  const j = await client.get<Job>(`/jobs/${enc(jobId)}`).catch(() => null);
  return j ? (j.stage ? `${j.stage}/${j.task}` : j.task) : null;
}

function pauseBody(o: { cancel?: boolean; reason?: string }) {
  return { ...(o.cancel ? { cancel: true } : {}), ...(o.reason !== undefined ? { reason: o.reason } : {}) };
}

/** Registers pause (alias stop), drain, power and wait under `machines`. */
export function machineControlCommands(machines: Command, g: Globals, api: () => ApiClient) {
  machines
    .command('pause <machine>')
    .alias('stop')
    .description("pause a machine's pipeline where it stands: its running job finishes first (or, with --cancel, is cancelled and the machine pauses on that task); `machines resume` continues from there")
    .option('--cancel', "cancel the running job (its script's process group is killed); resume re-runs its task")
    .option('--reason <text>', 'why, recorded in the machine\'s reason and history')
    .addHelpText(
      'after',
      `
Examples:
  $ takt machines pause web-1 --reason "disk swap"      # finish the current task, then hold
  $ takt machines stop web-1 --cancel --reason "wrong image"   # kill the current task now, hold on it
  $ takt machines resume web-1                          # continue from where it was held`,
    )
    .action(async (id: string, o: { cancel?: boolean; reason?: string }) => {
      const client = api();
      const r = await client.post<PauseResult>(`/machines/${enc(id)}/pause`, pauseBody(o));
      const task = r.cancelled ? null : await taskOf(client, r.machine.currentJob);
      print(g().output, r, () => `${pc.bold(shown(r.machine.name))} ${colorState(r.machine.state)}: ${shown(pauseOutcome(r, task))}`);
    });

  machines
    .command('drain [machines...]')
    .description('pause every matching machine (as `machines pause`), printing what happened to each; machines with nothing to pause are left as they are')
    .option('-l, --selector <selector>', 'label selector, e.g. role=web,env!=prod')
    .option('--all', 'every machine (needed when neither names nor a selector are given)')
    .option('--cancel', 'cancel running jobs instead of letting them finish')
    .option('--reason <text>', 'why, recorded on each machine')
    .addHelpText(
      'after',
      `
Examples:
  $ takt machines drain -l role=web --reason "kernel CVE"
  $ takt machines drain web-1 web-2 --cancel
  $ takt machines drain --all --reason "datacenter power work"
  $ takt machines wait -l role=web --until paused      # until every one is held`,
    )
    .action(async (names: string[], o: { selector?: string; all?: boolean; cancel?: boolean; reason?: string }) => {
      const client = api();
      if (names.length > 0 && (o.selector !== undefined || o.all)) throw new UsageError('give machine names, -l SELECTOR or --all, not several');
      if (o.selector !== undefined && o.selector.trim() === '') throw new UsageError('an empty selector would match every machine: give one, or --all to drain every machine');
      if (names.length === 0 && o.selector === undefined && !o.all) {
        throw new UsageError('refusing to drain every machine: give machine names, -l SELECTOR (e.g. -l role=web), or --all');
      }
      const targets = names.length > 0 ? names : (await listAllMachines(client, o.selector !== undefined ? { selector: o.selector } : {})).map((m) => m.name);
      if (targets.length === 0) throw new TaktError('not_found', `no machine matches the selector '${o.selector}'`);
      const rows: Array<{ machine: string; state: string | null; result: string; cancelled: string | null; error: boolean }> = [];
      for (const name of targets) {
        try {
          const r = await client.post<PauseResult>(`/machines/${enc(name)}/pause`, pauseBody(o));
          const task = r.cancelled ? null : await taskOf(client, r.machine.currentJob);
          rows.push({ machine: r.machine.name, state: r.machine.state, result: pauseOutcome(r, task), cancelled: r.cancelled?.id ?? null, error: false });
        } catch (err) {
          if (!(err instanceof TaktError)) throw err;
          // Nothing to pause (idle, done, stopped) is not a failure of the drain: it is said and left.
          const nothing = err.code === 'conflict';
          rows.push({ machine: name, state: null, result: nothing ? `left as is: ${err.message.replace(/^machine '[^']*': /, '')}` : `error: ${err.message}`, cancelled: null, error: !nothing });
        }
      }
      const out = rows.map(({ error: _e, ...r }) => r);
      print(g().output, out, () =>
        renderTable(rows, [
          { header: 'MACHINE', get: (r) => r.machine },
          { header: 'STATE', get: (r) => r.state, color: colorState },
          { header: 'RESULT', get: (r) => r.result },
        ]),
      );
      if (rows.some((r) => r.error)) process.exitCode = 1;
    });

  machines
    .command('power <machine>')
    .addArgument(new Argument('[action]', 'on, off, cycle or status').choices(['on', 'off', 'cycle', 'status']))
    .option('--next-boot <device>', 'boot from pxe (the network) or disk from the next boot on, before the action (machines with a power driver)')
    .option('--persistent', 'with --next-boot: for every later boot too')
    .description(
      'power a machine on or off, cycle it, or ask its power driver how it is; off cancels its running job (the machine keeps its place and runs that task again when powered on). Machines with a power configuration (--power-driver) are switched by their driver; broker machines (local, netns) by their broker',
    )
    .addHelpText(
      'after',
      `
Examples:
  $ takt machines power web-1 off
  $ takt machines power web-1 on
  $ takt machines power rack1-u7 status
  $ takt machines power rack1-u7 cycle --next-boot pxe
  $ takt machines power vm-1 --next-boot disk --persistent -o json`,
    )
    .action(async (id: string, action: string | undefined, o: { nextBoot?: string; persistent?: boolean }) => {
      const client = api();
      if (action === undefined && o.nextBoot === undefined) throw new UsageError('give an action (on, off, cycle, status) or --next-boot pxe|disk');
      if (o.nextBoot !== undefined && o.nextBoot !== 'pxe' && o.nextBoot !== 'disk') throw new UsageError(`--next-boot is pxe or disk, not ${JSON.stringify(o.nextBoot)}`);
      if (o.persistent && o.nextBoot === undefined) throw new UsageError('--persistent goes with --next-boot');
      if (action === 'status') {
        if (o.nextBoot !== undefined) throw new UsageError('status only asks: give --next-boot with on, cycle, or alone');
        const st = await client.get<PowerStatus>(`/machines/${enc(id)}/power`);
        print(g().output, st, () => `${shown(st.machine)}: ${colorPower(st.state)} (driver ${shown(st.driver)}; desired ${st.desired})`);
        return;
      }
      const before = action === 'off' ? await client.get<Machine>(`/machines/${enc(id)}`) : null;
      const body = { ...(action ? { power: action } : {}), ...(o.nextBoot ? { nextBoot: o.nextBoot } : {}), ...(o.persistent ? { persistent: true } : {}) };
      const m = await client.post<Machine & { result?: PowerResults }>(`/machines/${enc(id)}/power`, body);
      const ended = before?.currentJob ? await client.get<Job>(`/jobs/${enc(before.currentJob)}`).catch(() => null) : null;
      const note = ended?.state === 'cancelled' ? `\njob ${ended.id} (task '${ended.task}') ${ended.reason ?? 'cancelled'}` : '';
      const { result, ...machine } = m;
      print(g().output, m, () => renderTable([machine], machineColumns) + shown(note) + powerResultText(result));
    });

  machines
    .command('wait [machines...]')
    .description('wait until machines reach a state (named, or every machine matching -l), or until a rollout ends')
    .option('--until <state>', `the state to wait for: ${MACHINE_STATES.join(', ')}`, 'done')
    .option('-l, --selector <selector>', 'every machine matching this label selector (as it matched when the wait began)')
    .option('--rollout <id>', 'wait until this rollout ends (completed, stopped or aborted)')
    .option('--timeout <duration>', 'give up after this long', '10m')
    .addHelpText(
      'after',
      `
Exit codes:
  0    every machine reached the state (or the rollout completed)
  1    a machine stopped on a failure instead (or the rollout stopped or was aborted)
  2    bad usage (an unknown state, a bad duration, no machines named): nothing was waited for
  4    a named machine or the rollout does not exist
  ${WAIT_EXIT.timeout}  timed out (the machines not there yet are named on stderr)
A paused machine is not a failure: the wait goes on (until a resume, or the timeout) and says so once.

Examples:
  $ takt machines wait web-1                            # until done
  $ takt machines wait -l role=web --until paused --timeout 5m
  $ takt machines wait web-1 web-2 --until running
  $ takt machines wait --rollout r-1a2b3c`,
    )
    .action(async (names: string[], o: { until: string; selector?: string; rollout?: string; timeout: string }) => {
      const deadline = Date.now() + checkWaitUsage(names, o);
      process.exitCode = o.rollout !== undefined ? await waitRollout(api(), g, o.rollout, deadline, o.timeout) : await waitMachines(api(), g, names, o, deadline);
    });
}

/** @returns the timeout in ms. @throws UsageError for anything that cannot be waited for. */
function checkWaitUsage(names: string[], o: { until: string; selector?: string; rollout?: string; timeout: string }): number {
  if (!(MACHINE_STATES as readonly string[]).includes(o.until)) {
    throw new UsageError(`--until '${o.until}' is not a machine state; the states are ${MACHINE_STATES.join(', ')}`);
  }
  const ways = [names.length > 0, o.selector !== undefined, o.rollout !== undefined].filter(Boolean).length;
  if (ways === 0) throw new UsageError('name the machines to wait for, or give -l SELECTOR or --rollout ID');
  if (ways > 1) throw new UsageError('give machine names, -l SELECTOR or --rollout ID, not several');
  if (o.selector !== undefined && o.selector.trim() === '') throw new UsageError('an empty selector matches every machine: give one (e.g. -l role=web)');
  return usage(() => parseDuration(o.timeout, '--timeout', DURATION_RANGES.wait));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const POLL_MS = 250;

/** Waits for machines; answers the exit code. */
async function waitMachines(client: ApiClient, g: Globals, names: string[], o: { until: string; selector?: string; timeout: string }, deadline: number): Promise<number> {
  const until = o.until as MachineState;
  const fetchAll = async (): Promise<Machine[]> =>
    o.selector !== undefined ? listAllMachines(client, { selector: o.selector }) : Promise.all(names.map((n) => client.get<Machine>(`/machines/${enc(n)}`)));
  const first = await fetchAll();
  if (first.length === 0) throw new TaktError('not_found', `no machine matches the selector '${o.selector}'`);
  const ids = first.map((m) => m.id);
  const ended = new Map<string, { machine: Machine; ok: boolean }>();
  const noted = new Map<string, string>();
  const table = g().output === 'table';
  for (let round = 0; round < 10_000_000; round++) {
    const now = round === 0 ? first : await fetchAll();
    const byId = new Map(now.map((m) => [m.id, m]));
    for (const id of ids) {
      if (ended.has(id)) continue;
      const m = byId.get(id);
      if (!m) {
        const gone = first.find((x) => x.id === id)!;
        ended.set(id, { machine: gone, ok: false });
        if (table) process.stdout.write(shown(`${gone.name} no longer matches the selector (deleted or relabelled)`) + '\n');
        continue;
      }
      if (m.state === until) {
        ended.set(id, { machine: m, ok: true });
        if (table) process.stdout.write(`${shown(m.name)} is ${colorState(m.state)}\n`);
      } else if (m.state === 'stopped') {
        ended.set(id, { machine: m, ok: false });
        if (table) process.stdout.write(`${shown(m.name)} ${colorState('stopped')}: ${shown(m.reason ?? '')}\n`);
      } else if ((m.state === 'paused' || m.state === 'idle' || m.state === 'done') && noted.get(id) !== m.state) {
        // Held on purpose, or with nothing to do: not a failure; someone may resume or assign it.
        noted.set(id, m.state);
        const hint = m.state === 'paused' ? '`takt machines resume` continues it' : m.state === 'done' ? 'it has finished its pipeline' : 'it has no pipeline';
        process.stderr.write(pc.dim(shownErr(`${m.name} is ${m.state}${m.reason ? ` (${m.reason})` : ''}; still waiting for ${until}: ${hint}`)) + '\n');
      }
    }
    if (ended.size === ids.length) break;
    if (Date.now() > deadline) {
      const left = ids.filter((id) => !ended.has(id)).map((id) => byId.get(id)!).filter(Boolean);
      const list = left.map((m) => `${m.name} is ${m.state}${m.reason ? ` (${m.reason})` : ''}`).join('; ');
      process.stderr.write(shownErr(`takt: timed out after ${o.timeout} waiting for ${until}: ${list}`) + '\n');
      return WAIT_EXIT.timeout;
    }
    await sleep(POLL_MS);
  }
  const results = ids.map((id) => ended.get(id)!.machine);
  if (!table) print(g().output, names.length === 1 && o.selector === undefined ? results[0] : results);
  return [...ended.values()].every((e) => e.ok) ? WAIT_EXIT.reached : WAIT_EXIT.failed;
}

interface RolloutSummary {
  id: string;
  state: RolloutState;
  reason: string | null;
  counts: Record<string, number>;
}

/** Waits for a rollout to end; answers the exit code. */
async function waitRollout(client: ApiClient, g: Globals, id: string, deadline: number, timeout: string): Promise<number> {
  let noted: string | null = null;
  for (let round = 0; round < 10_000_000; round++) {
    const r = await client.get<RolloutSummary>(`/rollouts/${enc(id)}`);
    if (r.state === 'completed' || r.state === 'stopped' || r.state === 'aborted') {
      const counts = Object.entries(r.counts ?? {}).filter(([, n]) => n > 0).map(([k, n]) => `${n} ${k}`).join(', ');
      print(g().output, r, () => `rollout ${shown(r.id)} ${colorState(r.state)}${r.reason ? `: ${shown(r.reason)}` : ''}${counts ? pc.dim(` (${counts})`) : ''}`);
      return r.state === 'completed' ? WAIT_EXIT.reached : WAIT_EXIT.failed;
    }
    if ((r.state === 'paused' || r.state === 'awaiting-approval') && noted !== r.state) {
      noted = r.state;
      process.stderr.write(pc.dim(shownErr(`rollout ${r.id} is ${r.state}${r.reason ? ` (${r.reason})` : ''}; still waiting for it to end`)) + '\n');
    }
    if (Date.now() > deadline) {
      process.stderr.write(shownErr(`takt: timed out after ${timeout} waiting for rollout ${r.id} to end; it is ${r.state}`) + '\n');
      return WAIT_EXIT.timeout;
    }
    await sleep(POLL_MS);
  }
  return WAIT_EXIT.timeout;
}
