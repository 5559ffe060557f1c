/**
 * What the API, events and UI show of machines, jobs and work orders: secure values masked, the derived
 * machine status added, bulky or secret fields left out. Re-exported by engine.ts, where callers import
 * them from.
 */
import type { Job, Machine, WorkOrder } from '../model/machine.js';
import { maskValues } from '../model/secure.js';
import { machineStatus } from './liveness.js';

/**
 * A machine as the API, events and UI show it: secure params masked, its derived `status`, and without its
 * facts (observed inventory, kilobytes per machine, shown by GET /machines/:id instead of riding along
 * with every event).
 */
export function publicMachine(m: Machine) {
  const { facts: _facts, ...rest } = m;
  return { ...rest, params: maskValues(m.params), outputs: maskValues(m.outputs), status: machineStatus(m) };
}

/** A job as the API and events show it: without its rendered script (it may hold secure values). */
export function publicJob(j: Job) {
  const { script: _script, ...rest } = j;
  return rest;
}

/** A work order as the API and events show it: secure params masked. */
export function publicWorkOrder(w: WorkOrder) {
  return { ...w, params: maskValues(w.params) };
}
