/**
 * How `takt machines describe` reads to people: kubectl-describe style sections (fields, then the last
 * jobs and events as plain aligned rows). `-o json|yaml` prints the endpoint's structure instead.
 */
import { classificationLine } from './classify.js';
import { pc } from './color.js';
import type { MachineDescription } from '../engine/describe.js';
import { formatDuration } from '../model/duration.js';
import { colorState, shown } from './output.js';
import { agentCell, clock, colorStatus } from './liveness.js';

/** Rows of cells, left-aligned under their headers, indented by two spaces; cells are already `shown`. */
function rows(headers: string[], body: string[][]): string {
  if (body.length === 0) return '  <none>';
  // eslint-disable-next-line no-control-regex
  const width = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, '').length;
  const widths = headers.map((h, i) => Math.max(h.length, ...body.map((r) => width(r[i] ?? ''))));
  const line = (cells: string[]) => `  ${cells.map((c, i) => (i === cells.length - 1 ? c : c + ' '.repeat(widths[i]! - width(c)))).join('   ')}`.trimEnd();
  return [line(headers.map((h) => pc.bold(h))), ...body.map(line)].join('\n');
}

/** `Key:   value` lines, values aligned. */
function fields(pairs: Array<[string, string]>): string {
  const w = Math.max(...pairs.map(([k]) => k.length)) + 2;
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(w)}${v}`).join('\n');
}

const none = pc.dim('<none>');
const kv = (o: Record<string, unknown> | undefined): string =>
  o && Object.keys(o).length ? shown(Object.entries(o).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(', ')) : none;

/** The whole description as text for a terminal. */
export function describeText(d: MachineDescription, now = new Date()): string {
  const m = d.machine;
  const a = d.agent;
  const position = d.position.stage
    ? `stage ${shown(d.position.stage)}, task ${shown(d.position.task ?? '-')}${d.position.attempt ? ` (attempt ${d.position.attempt + 1})` : ''}`
    : m.pipeline
      ? pc.dim('past the last task')
      : none;
  const agent = [
    agentCell({ ...m, facts: null }),
    a.connected || a.lastSeenAt ? `since ${clock(a.since, now)}` : null,
    a.lastSeenAt ? `last seen ${clock(a.lastSeenAt, now)}` : null,
    a.address ? `from ${shown(a.address)}` : null,
    a.version ? `version ${shown(a.version)}` : null,
  ].filter((p): p is string => p !== null);
  const head = fields([
    ['Name', shown(m.name)],
    ['ID', shown(m.id)],
    ['Environment', shown(m.environment)],
    ['Broker', m.broker ? shown(m.broker) : none],
    // Only machines a host-bound broker made have one: the replica that holds their sandbox or VM.
    ...(m.host ? [['Replica', `${shown(m.host)} (the takt serve that holds its ${m.broker === 'qemu' ? 'VM' : 'sandbox'}: its data dir's endpoint-id file says so)`] as [string, string]] : []),
    ['Pipeline', m.pipeline ? shown(m.pipeline) : none],
    ['Position', position],
    ['State', colorStatus(shown(d.status))],
    ['Reason', m.reason ? shown(m.reason) : none],
    // The power configuration holds no secret (a password is a secure param, named): shown whole.
    ['Power', m.powerConfig ? `${shown(m.power)} (desired) · driver ${kv(m.powerConfig)}` : shown(m.power)],
    ...(m.boot ? [['Boot', `bootenv ${shown(m.boot.bootenv)} · MAC ${shown(m.boot.macs.join(', '))}${m.boot.uuid ? ` · UUID ${shown(m.boot.uuid)}` : ''}${m.boot.firmware ? ` · ${shown(m.boot.firmware)}` : ''}`] as [string, string]] : []),
    ['Labels', kv(m.labels)],
    ['Profiles', m.profiles.length ? shown(m.profiles.join(', ')) : none],
    ['Params', kv(m.params)],
    ['Classified', m.classification ? shown(classificationLine(m.classification)) : none],
    ['Agent', agent.join(' · ')],
    ['Rollout', d.rollout ? shown(`${d.rollout.rollout.id} (${d.rollout.rollout.state}, wave ${d.rollout.item.wave}, this machine ${d.rollout.item.state})`) : none],
    ['Waiting for', pc.bold(shown(d.waitingFor.text))],
  ]);
  const jobs = rows(
    ['JOB', 'STAGE/TASK', 'STATE', 'EXIT', 'DURATION', 'STARTED', 'REASON'],
    d.jobs.map((j) => [
      shown(j.id),
      shown(`${j.stage ? `${j.stage}/` : j.kind === 'workorder' ? '(work order) ' : ''}${j.task}`),
      colorState(j.state),
      j.exitCode === null ? '-' : String(j.exitCode),
      formatDuration(j.durationMs),
      clock(j.createdAt, now),
      j.reason ? shown(j.reason) : '-',
    ]),
  );
  const workOrders = d.workOrders.length
    ? `\n\nWork orders:\n${rows(['ID', 'BLUEPRINT', 'STATE', 'CREATED'], d.workOrders.map((w) => [shown(w.id), shown(w.blueprint), colorState(w.state), clock(w.createdAt, now)]))}`
    : '';
  const events = rows(['AT', 'TYPE', 'MESSAGE'], d.events.map((e) => [clock(e.at, now), e.type, shown(e.message)]));
  return `${head}\n\nJobs (newest first):\n${jobs}${workOrders}\n\nEvents:\n${events}`;
}
