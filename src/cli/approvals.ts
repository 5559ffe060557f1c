/** The `approvals` commands. */
import { type Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import { type Machine } from '../model/machine.js';
import { machineColumns } from './machines.js';
import { type Globals } from './client.js';
import { print, renderTable } from './output.js';
import { examples } from './help.js';

const enc = encodeURIComponent;

export function approvalCommands(program: Command, g: Globals, api: () => ApiClient) {
  const approvals = program
    .command('approvals')
    .description('stages that wait for a person: list, approve, reject')
    .addHelpText('after', examples('takt approvals ls', 'takt approvals approve demo-1 --comment "change 4711 approved"'));
  approvals
    .command('list')
    .description('machines waiting for approval, and for which stage')
    .addHelpText('after', examples('takt approvals ls'))
    .action(async () => {
      const r = await api().get<{ items: Machine[] }>('/machines', { state: 'awaiting-approval', limit: 1000 });
      print(g().output, r.items, () => renderTable(r.items, machineColumns));
    });
  approvals
    .command('approve <machine>')
    .description('let the machine into the stage it waits at (recorded with who and when)')
    .addHelpText('after', examples('takt approvals approve demo-1 --comment "change 4711 approved"'))
    .option('--comment <text>')
    .action(async (id: string, o: { comment?: string }) => {
      const m = await api().post<Machine>(`/machines/${enc(id)}/approve`, o.comment ? { comment: o.comment } : {});
      print(g().output, m, () => renderTable([m], machineColumns));
    });
  approvals
    .command('reject <machine>')
    .description('turn the stage down: the machine stops there with your reason')
    .addHelpText('after', examples('takt approvals reject demo-1 --reason "not in the maintenance window"'))
    .requiredOption('--reason <text>')
    .action(async (id: string, o: { reason: string }) => {
      const m = await api().post<Machine>(`/machines/${enc(id)}/reject`, { reason: o.reason });
      print(g().output, m, () => renderTable([m], machineColumns));
    });
}
