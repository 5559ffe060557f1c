/**
 * Store records for tests that write the store directly (conformance, replicas, the scope index): one
 * complete, valid record per kind, with what a test cares about given as overrides.
 */
import type { Machine } from '../../src/model/machine.js';

/** The time the records carry unless overridden. */
export const T0 = '2026-01-01T00:00:00.000Z';

/**
 * A machine record `m-<name>`: idle, local, no pipeline position, no labels, an agent never heard from;
 * `over` replaces any field.
 */
export function machineRecord(name: string, over: Partial<Machine> = {}): Machine {
  const at = over.createdAt ?? T0;
  return {
    id: `m-${name}`,
    name,
    environment: 'local',
    broker: 'local',
    pipeline: null,
    stage: null,
    task: null,
    passed: [],
    attempt: 0,
    approvedStage: null,
    state: 'idle',
    reason: null,
    params: {},
    outputs: {},
    profiles: [],
    labels: {},
    currentJob: null,
    power: 'on',
    facts: null,
    createdAt: at,
    updatedAt: at,
    agent: { connected: false, lastSeenAt: null, version: null, address: null, via: null, since: at },
    ...over,
  };
}
