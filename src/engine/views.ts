/**
 * What the API, events and UI show of machines, jobs and work orders: secure values masked, the derived
 * machine status added, bulky or secret fields left out; and what history records of a machine
 * (desiredView). Re-exported by engine.ts, where callers import them from.
 */
import type { Job, Machine, WorkOrder } from '../model/machine.js';
import { maskValues } from '../model/secure.js';
import { sshDesired } from '../model/ssh.js';
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

/**
 * A machine's desired state, as history records it: what the operator set. Its run state (`state`:
 * running, done, paused…) is observed, not desired — it is in events (`takt events`), never in a change,
 * so a restart, pause or a machine finishing writes no history entry unless a desired field changed.
 */
export function desiredView(m: Machine) {
  return { name: m.name, environment: m.environment, pipeline: m.pipeline, params: m.params, profiles: m.profiles, labels: m.labels, power: m.power, ...(m.ssh ? { ssh: sshDesired(m.ssh) } : {}), ...(m.boot ? { boot: m.boot } : {}), ...(m.powerConfig ? { powerConfig: m.powerConfig } : {}) };
}

/** A machine's desired state as history records it (desiredView). */
export type DesiredView = ReturnType<typeof desiredView>;
