/** The `history` commands. */
import { type Command } from 'commander';
import pc from 'picocolors';
import type { ApiClient } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import { type Change } from '../model/machine.js';
import { type Globals } from './client.js';
import { print, renderTable, shown } from './output.js';
import { examples } from './help.js';

const enc = encodeURIComponent;

export function historyCommands(program: Command, g: Globals, api: () => ApiClient) {
  const history = program
    .command('history')
    .description('numbered changes to desired state: who, when, what')
    .addHelpText('after', examples('takt history', 'takt history --object machines/demo-1 --limit 10'))
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
    .addHelpText('after', examples('takt history show 12'))
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
    .addHelpText('after', examples('takt history revert 12'))
    .action(async (seq: string) => {
      const r = await api().post<{ reverted: number; changes: number }>(`/changes/${enc(seq)}/revert`);
      print(g().output, r, () => `reverted #${r.reverted} (${r.changes} new change${r.changes === 1 ? '' : 's'})`);
    });
  history
    .command('rewind')
    .description('restore the whole desired state (packs in use, local content, machine params/profiles/pipelines) as of a change')
    .addHelpText('after', examples('takt history rewind --to 12'))
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
