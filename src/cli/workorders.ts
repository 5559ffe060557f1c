/** The `workorders` commands. */
import { Option, type Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import { WORK_ORDER_STATES, type WorkOrder } from '../model/machine.js';
import { collect, PARAM_TYPING, parseParamPairs, withParamHint, type Globals } from './client.js';
import { machineNames } from './names.js';
import { colorState, fetchPage, print, renderTable } from './output.js';
import { examples } from './help.js';

const enc = encodeURIComponent;

export function workOrderCommands(program: Command, g: Globals, api: () => ApiClient) {
  const wo = program
    .command('workorders')
    .description('run a blueprint on a machine without moving its pipeline position')
    .addHelpText('after', examples('takt workorders create --machine demo-1 --blueprint inventory', 'takt wo ls --machine demo-1'));
  // Names, not ids, in what people read (a deleted machine keeps its id); -o json keeps machineId.
  let names = new Map<string, string>();
  const named = async (items: WorkOrder[]) => {
    if (g().output === 'table') names = await machineNames(api(), items.map((w) => w.machineId));
  };
  const columns = [
    { header: 'ID', get: (w: WorkOrder) => w.id },
    { header: 'MACHINE', get: (w: WorkOrder) => names.get(w.machineId) ?? w.machineId },
    // An ad-hoc command (`takt run`) shows as the command itself.
    { header: 'BLUEPRINT', get: (w: WorkOrder) => (w.command ? `$ ${w.command.script}` : w.blueprint), max: 60 },
    { header: 'STATE', get: (w: WorkOrder) => w.state, color: colorState },
    { header: 'CREATED', get: (w: WorkOrder) => w.createdAt, wide: true },
    { header: 'REASON', get: (w: WorkOrder) => w.reason, flex: true },
  ];
  wo.command('list')
    .description('work orders: machine, blueprint, state and reason')
    .addHelpText('after', examples('takt workorders ls --machine demo-1', 'takt wo list --state failed'))
    .option('--machine <machine>')
    .addOption(new Option('--state <state>', 'only work orders in this state').choices(WORK_ORDER_STATES))
    .option('--limit <n>', 'page size', '100')
    .option('--offset <n>', 'skip this many', '0')
    .action(async (o: Record<string, string | undefined>) => {
      const r = await fetchPage((page) => api().get<{ items: WorkOrder[] }>('/workorders', { ...o, ...page }), o.limit ?? '100', o.offset);
      await named(r.items);
      print(g().output, r.items, () => renderTable(r.items, columns) + r.note);
    });
  wo.command('create')
    .description('queue a work order; work orders run one at a time per machine, between pipeline tasks')
    .addHelpText(
      'after',
      `
A --param must be one a task of the blueprint declares (required, optional or an output): a name no task
reads is refused with the closest declared one ("did you mean …?"); --allow-undeclared stores it anyway.

Examples:
  $ takt workorders create --machine demo-1 --blueprint inventory
  $ takt workorders create --machine web-1 --blueprint deploy --param build_id=42   # build_id: declared by a task of deploy`,
    )
    .requiredOption('--machine <machine>')
    .requiredOption('--blueprint <name>')
    .option('--param <key=value>', `param for this run, one its tasks declare (repeatable); ${PARAM_TYPING}`, collect)
    .option('--allow-undeclared', 'store params no task of the blueprint declares (refused by default: usually a typo)')
    .action(async (o: { machine: string; blueprint: string; param?: string[]; allowUndeclared?: boolean }) => {
      const w = await withParamHint(o.param, api().post<WorkOrder>('/workorders', { machine: o.machine, blueprint: o.blueprint, params: parseParamPairs(o.param), ...(o.allowUndeclared ? { allowUndeclared: true } : {}) }));
      await named([w]);
      print(g().output, w, () => renderTable([w], columns));
    });
  wo.command('get <id>')
    .description('one work order')
    .addHelpText('after', examples('takt workorders get WORKORDER_ID -o yaml'))
    .action(async (id: string) => {
      const w = await api().get<WorkOrder>(`/workorders/${enc(id)}`);
      await named([w]);
      print(g().output, w, () => renderTable([w], columns));
    });
  wo.command('cancel <id>')
    .description('cancel a work order that has not finished')
    .addHelpText('after', examples('takt workorders cancel WORKORDER_ID'))
    .action(async (id: string) => {
      const w = await api().delete<WorkOrder>(`/workorders/${enc(id)}`);
      await named([w]);
      print(g().output, w, () => renderTable([w], columns));
    });
  wo.command('resume <id>')
    .description('continue a failed or cancelled work order from the task it stopped on, with the params it was created with (secure ones included); tasks that succeeded do not run again')
    .addHelpText('after', examples('takt workorders resume w-1a2b3c', "takt plan web-1        # shows the resumed work order's remaining tasks"))
    .action(async (id: string) => {
      const w = await api().post<WorkOrder>(`/workorders/${enc(id)}/resume`);
      await named([w]);
      print(g().output, w, () => renderTable([w], columns));
    });
}
