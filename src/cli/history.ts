/** The `history` commands. */
import { type Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import type { ObservedView, RevertResult, RewindResult } from '../engine/history.js';
import { type Change } from '../model/machine.js';
import { type Globals } from './client.js';
import { fetchPage, print, renderTable, shown } from './output.js';
import { examples } from './help.js';
import { UsageError } from './usage.js';

const enc = encodeURIComponent;

/** A change as the API lists it: `name` is its object as people read it (`machines/web-1`). */
type NamedChange = Change & { name: string };

interface ChangeField {
  path: string;
  op: 'added' | 'removed' | 'changed';
  before?: unknown;
  after?: unknown;
}

/** Observed state, one line per machine: what a rewind or revert leaves as it is. */
function observedLines(views: ObservedView[]): string[] {
  return views.map((o) => {
    const outputs = Object.entries(o.outputs).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(' ');
    return pc.dim(shown(`  ${o.machine}: ${o.state}${o.reason ? ` (${o.reason})` : ''}, agent ${o.agentConnected ? 'connected' : 'not connected'}${outputs ? `, outputs ${outputs}` : ''}`));
  });
}

export function historyCommands(program: Command, g: Globals, api: () => ApiClient) {
  const history = program
    .command('history')
    .description('numbered changes to desired state: who, when, what')
    .option('--object <object>', 'only changes to this object, e.g. machines/web-1 or profiles/web')
    .option('--limit <n>', 'how many (newest first)', '50')
    .option('--offset <n>', 'skip this many of the newest', '0')
    .addHelpText('after', examples('takt history --limit 10', 'takt history --offset 50   # the 50 before the newest 50', 'takt history --object machines/web-1', 'takt history show 12', 'takt history rewind --to 12 --dry-run'))
    .action(async (o: { object?: string; limit: string; offset: string }) => {
      const r = await fetchPage((page) => api().get<{ items: NamedChange[] }>('/changes', { ...o, ...page }), o.limit, o.offset);
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: '#', get: (c) => String(c.seq) },
          { header: 'WHEN', get: (c) => c.at },
          { header: 'WHO', get: (c) => c.author },
          { header: 'ACTION', get: (c) => c.action },
          { header: 'OBJECT', get: (c) => c.name ?? c.object },
        ]) + r.note,
      );
    });
  history
    .command('show <seq>')
    .description("one change: who, when, what it changed field by field, and the machine's observed state now")
    .addHelpText('after', examples('takt history show 12', 'takt history show 12 -o json'))
    .action(async (seq: string) => {
      const c = await api().get<NamedChange & { diff: ChangeField[]; observed?: ObservedView }>(`/changes/${enc(seq)}`);
      const field = (f: ChangeField) => {
        const head = shown(`  ${f.path}:${f.op === 'changed' ? '' : ` (${f.op})`}`);
        if (f.op === 'added') return [head, pc.green(shown(`    + ${JSON.stringify(f.after)}`))];
        if (f.op === 'removed') return [head, pc.red(shown(`    - ${JSON.stringify(f.before)}`))];
        return [head, pc.red(shown(`    - ${JSON.stringify(f.before)}`)), pc.green(shown(`    + ${JSON.stringify(f.after)}`))];
      };
      print(g().output, c, () =>
        [
          `${pc.bold(`#${c.seq}`)} ${shown(`${c.action} ${c.name ?? c.object}${c.name && c.name !== c.object ? ` (${c.object})` : ''} by ${c.author} at ${c.at}`)}`,
          ...c.diff.flatMap(field),
          ...(c.observed ? [pc.dim('observed now (not desired state; history leaves it be):'), ...observedLines([c.observed])] : []),
        ].join('\n'),
      );
    });
  history
    .command('revert <seq>')
    .description("undo one change, as a new change (refused if what it changed was changed again since); outputs stay, and a machine put back on another pipeline is held, not started")
    .addHelpText('after', examples('takt history revert 12'))
    .action(async (seq: string) => {
      const r = await api().post<RevertResult>(`/changes/${enc(seq)}/revert`);
      print(g().output, r, () => [`reverted #${r.reverted} (${r.changes} new change${r.changes === 1 ? '' : 's'})`, ...(r.notes ?? []).map((n) => pc.yellow(shown(`  ${n}`)))].join('\n'));
    });
  history
    .command('rewind')
    .description('restore the whole desired state (packs in use, local content, machine params/profiles/pipelines) as of a change, all or nothing; observed state (outputs, position) stays, and a machine put back on another pipeline is held at its place there, not started')
    .requiredOption('--to <seq>', 'the change to go back to (0: before the first)')
    .option('--dry-run', 'print what it would change, change nothing')
    .addHelpText('after', examples('takt history rewind --to 12 --dry-run   # what would change', 'takt history rewind --to 12'))
    .action(async (o: { to: string; dryRun?: boolean }) => {
      const to = Number(o.to);
      if (!/^\d+$/.test(o.to) || !Number.isInteger(to) || to < 0) throw new UsageError('--to must be a change number');
      const r = await api().post<RewindResult>('/changes/rewind', { to, ...(o.dryRun ? { dryRun: true } : {}) });
      print(g().output, r, () =>
        [
          r.dryRun
            ? `dry run: rewinding to #${r.to} would make ${r.changes.length} change(s)${r.changes.length ? ':' : ''}`
            : `rewound to #${r.to}: ${r.changes.length} change(s)${r.applied.length ? ` (#${r.applied[0]!.seq}–#${r.applied[r.applied.length - 1]!.seq})` : ''}`,
          ...r.changes.map((c) => shown(`  ${c}`)),
          ...r.skipped.map((s) => pc.yellow(shown(`  not restored: ${s.name}: ${s.reason}`))),
          ...(r.notes ?? []).map((n) => pc.yellow(shown(`  ${n}`))),
          ...(r.observed.length ? [pc.dim('observed state, left as it is:'), ...observedLines(r.observed)] : []),
        ].join('\n'),
      );
    });
}
