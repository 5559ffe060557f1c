/**
 * Work orders: a blueprint's tasks, or an ad-hoc command, queued on one machine and run between its
 * pipeline's jobs (claim.ts nextWork picks them up). Creating, cancelling and resuming them, as plain
 * functions over an explicit context (WorkOrderContext), as claim.ts and jobs.ts are; Engine delegates.
 */
import { TaktError } from '../model/errors.js';
import { ADHOC_TASK, type WorkOrder } from '../model/machine.js';
import { maskValues } from '../model/secure.js';
import type { ContentSet } from '../model/content.js';
import type { Reads, Store, Tx } from '../store/store.js';
import { adhocCommand } from './adhoc.js';
import type { ClaimContext } from './claim.js';
import { finishWorkOrder, lockedMachine, saveMachine, woPassed } from './complete.js';
import type { ContentService } from './content.js';
import { assertWorkOrderDeclared } from './declared.js';
import type { WorkOrderInput } from './engine.js';
import { newId } from './ids.js';
import { cancelCurrent } from './jobs.js';
import { blueprintShape, locate } from './transitions.js';
import { publicWorkOrder } from './views.js';

/** What work orders need of the engine. */
export interface WorkOrderContext {
  readonly store: Store;
  readonly content: ContentService;
  /** Cancelling a work order's running job ends it as any cancel does (jobs.ts cancelCurrent). */
  readonly run: ClaimContext;
  /** The engine's param check (declared types, bounds, sealing): the params as they will be stored. */
  checkParams(content: ContentSet, current: Record<string, unknown>, patch: Record<string, unknown>): Record<string, unknown>;
}

/** The work orders `createWorkOrders` would queue, checked (machines read through `reads`: a transaction's, inside one), not yet written. @throws as createWorkOrders. */
export async function newWorkOrders(c: WorkOrderContext, inputs: WorkOrderInput[], reads: Reads = c.store): Promise<WorkOrder[]> {
  const content = c.content.current;
  const at = (i: number, path: string) => (inputs.length > 1 ? `/${i}${path}` : path);
  const made: WorkOrder[] = [];
  for (const [i, input] of inputs.entries()) {
    const m = (await reads.getMachine(input.machine)) ?? (await reads.getMachineByName(input.machine));
    if (!m) throw new TaktError('not_found', `machine '${input.machine}' not found`);
    if (!!input.blueprint === !!input.command) throw new TaktError('invalid', 'a work order runs either a blueprint or a command: give exactly one', { path: at(i, '/blueprint') });
    if (input.blueprint && !content.objects.blueprints.has(input.blueprint)) throw new TaktError('not_found', `blueprint '${input.blueprint}' not found`, { path: at(i, '/blueprint') });
    const command = input.command ? adhocCommand(input.command) : null;
    const params = command ? {} : c.checkParams(content, {}, input.params ?? {});
    // After checkParams: a malformed value is refused for that first, it says more.
    if (input.blueprint && !input.allowUndeclared) assertWorkOrderDeclared(content, input.blueprint, input.params, at(i, ''));
    made.push({
      id: newId('w'),
      machineId: m.id,
      blueprint: input.blueprint ?? ADHOC_TASK,
      ...(command ? { command } : { passed: [] }),
      state: 'queued',
      taskIndex: 0,
      params,
      reason: null,
      createdAt: new Date().toISOString(),
      finishedAt: null,
    });
  }
  return made;
}


/** Writes work orders made by `newWorkOrders` inside the caller's transaction (their machines re-checked there). */
export async function insertWorkOrders(tx: Tx, made: WorkOrder[], inputs: Array<Pick<WorkOrderInput, 'machine'>>, author: string): Promise<void> {
  for (const [i, wo] of made.entries()) {
    if (!(await tx.getMachine(wo.machineId))) throw new TaktError('not_found', `machine '${inputs[i]!.machine}' not found`);
    await tx.insertWorkOrder(wo);
    await tx.change(author, `workorders/${wo.id}`, 'create', null, { ...wo, params: maskValues(wo.params) });
    tx.emit(`workorders.create.${wo.id}`, publicWorkOrder(wo));
  }
}


export async function cancelWorkOrder(c: WorkOrderContext, id: string, author: string): Promise<WorkOrder> {
  return c.store.transact(async (tx) => {
    const wo = await tx.getWorkOrder(id);
    if (!wo) throw new TaktError('not_found', `work order '${id}' not found`);
    if (wo.state !== 'queued' && wo.state !== 'running') throw new TaktError('conflict', `work order '${id}' already ${wo.state}`);
    const m = await lockedMachine(tx, wo.machineId);
    if (m.currentJob) {
      const j = await tx.getJob(m.currentJob);
      if (j?.workOrderId === wo.id) await saveMachine(tx, await cancelCurrent(c.run, tx, m, author, 'work order cancelled'));
    }
    // Cancelling its running job has already ended the work order (saying so); a queued one ends here.
    const after = (await tx.getWorkOrder(wo.id)) ?? wo;
    const done = after.state === 'queued' || after.state === 'running' ? await finishWorkOrder(tx, after, 'cancelled', `cancelled by ${author}`) : after;
    await tx.change(author, `workorders/${wo.id}`, 'update', { state: wo.state }, { state: done.state });
    return done;
  });
}


/**
 * Continues a failed or cancelled work order from the task it stopped on (the tasks before it that
 * succeeded do not run again), with its original params: they stay on the work order as given, secure
 * ones sealed, so the resumed tasks get exactly what the first run did. It is queued again and runs
 * when the machine is next between tasks.
 * @throws TaktError not_found (no such work order, or its machine is gone); conflict (409) when it is
 *   not failed or cancelled, or its blueprint no longer exists or changed so that the task it stopped on
 *   is not where it was.
 */
export async function resumeWorkOrder(c: WorkOrderContext, id: string, author: string): Promise<WorkOrder> {
  return c.store.transact(async (tx) => {
    const wo = await tx.getWorkOrder(id);
    if (!wo) throw new TaktError('not_found', `work order '${id}' not found`);
    if (wo.state !== 'failed' && wo.state !== 'cancelled') {
      const why = wo.state === 'succeeded' ? 'it has nothing left to run' : 'it has not ended; cancel it first (`takt workorders cancel ' + id + '`) or let it finish';
      throw new TaktError('conflict', `work order '${id}' ${wo.state === 'succeeded' ? 'has succeeded' : `is ${wo.state}`}: only a failed or cancelled work order can be resumed (${why})`, { details: { state: wo.state } });
    }
    if (!(await tx.getMachine(wo.machineId))) throw new TaktError('not_found', `work order '${id}': its machine no longer exists`);
    if (wo.command) {
      // An ad-hoc command is its own one task, not a blueprint in any content: resuming it runs the
      // command again, as typed (nextWork prepares it from the work order, never from content).
      const queued: WorkOrder = { ...wo, state: 'queued', taskIndex: 0, reason: null, finishedAt: null };
      await tx.updateWorkOrder(queued);
      await tx.change(author, `workorders/${wo.id}`, 'update', { state: wo.state, reason: wo.reason }, { state: queued.state, resumedAt: ADHOC_TASK });
      tx.emit(`workorders.update.${wo.id}`, publicWorkOrder(queued));
      return queued;
    }
    const bp = c.content.current.objects.blueprints.get(wo.blueprint)?.def;
    if (!bp) throw new TaktError('conflict', `work order '${id}': blueprint '${wo.blueprint}' no longer exists in the content in use; put content in use that has it, or create a new work order`);
    // By identity, as for a machine's pipeline (the blueprint as a one-stage pipeline): what has
    // succeeded (`passed`, keys with `#n` for a repeated task); the task it stopped on must still be in the
    // blueprint, and no task that succeeded may now come after it (transitions.ts locate, strict).
    const shape = blueprintShape(bp);
    const passed = woPassed(wo, bp);
    const [last] = (await tx.listJobs({ workOrderId: wo.id, order: 'desc', limit: 1 }));
    const stoppedOn = last && last.state !== 'succeeded' ? last.task : null;
    const at = locate(shape, { stage: stoppedOn === null ? null : bp.name, task: stoppedOn, passed }, true);
    if (at.kind === 'refused') {
      throw new TaktError('conflict', `work order '${id}' cannot resume: ${at.message}; create a new work order (\`takt workorders create --machine M --blueprint ${bp.name}\`), or put content in use that ${at.change === 'vanished' ? 'has the task' : 'keeps the tasks in the order they ran'}`, {
        details: { blueprint: bp.name, change: at.change, stoppedOn, tasks: at.tasks.map((t) => t.task) },
      });
    }
    const queued: WorkOrder = { ...wo, state: 'queued', passed, reason: null, finishedAt: null };
    await tx.updateWorkOrder(queued);
    await tx.change(author, `workorders/${wo.id}`, 'update', { state: wo.state, reason: wo.reason }, { state: queued.state, resumedAt: at.kind === 'at' ? at.step.task : null });
    tx.emit(`workorders.update.${wo.id}`, publicWorkOrder(queued));
    return queued;
  });
}
