/** The `workorders` commands. */
import { Option, type Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import { WORK_ORDER_STATES, type WorkOrder } from '../model/machine.js';
import { collect, parseParamPairs, type Globals } from './client.js';
import { machineNames } from './names.js';
import { colorState, print, renderTable } from './output.js';

const enc = encodeURIComponent;

export function workOrderCommands(program: Command, g: Globals, api: () => ApiClient) {
  const wo = program.command('workorders').description('run a blueprint on a machine without moving its pipeline position');
  // Names, not ids, in what people read (a deleted machine keeps its id); -o json keeps machineId.
  let names = new Map<string, string>();
  const named = async (items: WorkOrder[]) => {
    if (g().output === 'table') names = await machineNames(api(), items.map((w) => w.machineId));
  };
  const columns = [
    { header: 'ID', get: (w: WorkOrder) => w.id },
    { header: 'MACHINE', get: (w: WorkOrder) => names.get(w.machineId) ?? w.machineId },
    { header: 'BLUEPRINT', get: (w: WorkOrder) => w.blueprint },
    { header: 'STATE', get: (w: WorkOrder) => w.state, color: colorState },
    { header: 'REASON', get: (w: WorkOrder) => w.reason },
  ];
  wo.command('list')
    .option('--machine <machine>')
    .addOption(new Option('--state <state>', 'only work orders in this state').choices(WORK_ORDER_STATES))
    .action(async (o: Record<string, string | undefined>) => {
      const r = await api().get<{ items: WorkOrder[] }>('/workorders', o);
      await named(r.items);
      print(g().output, r.items, () => renderTable(r.items, columns));
    });
  wo.command('create')
    .description('queue a work order; work orders run one at a time per machine, between pipeline tasks')
    .requiredOption('--machine <machine>')
    .requiredOption('--blueprint <name>')
    .option('--param <key=value>', 'param for this run (repeatable)', collect)
    .action(async (o: { machine: string; blueprint: string; param?: string[] }) => {
      const w = await api().post<WorkOrder>('/workorders', { machine: o.machine, blueprint: o.blueprint, params: parseParamPairs(o.param) });
      await named([w]);
      print(g().output, w, () => renderTable([w], columns));
    });
  wo.command('get <id>').action(async (id: string) => {
    const w = await api().get<WorkOrder>(`/workorders/${enc(id)}`);
    await named([w]);
    print(g().output, w, () => renderTable([w], columns));
  });
  wo.command('cancel <id>').action(async (id: string) => {
    const w = await api().delete<WorkOrder>(`/workorders/${enc(id)}`);
    await named([w]);
    print(g().output, w, () => renderTable([w], columns));
  });
}
