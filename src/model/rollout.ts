/** Rollouts: a pipeline or blueprint applied to a selection of machines in waves, stopped by the andon. */

export const ROLLOUT_STATES = ['running', 'paused', 'awaiting-approval', 'stopped', 'aborted', 'completed'] as const;
export type RolloutState = (typeof ROLLOUT_STATES)[number];

export const ROLLOUT_ITEM_STATES = ['pending', 'running', 'succeeded', 'failed', 'skipped'] as const;
export type RolloutItemState = (typeof ROLLOUT_ITEM_STATES)[number];

export interface RolloutSpec {
  /** Exactly one of pipeline and blueprint. */
  pipeline?: string;
  blueprint?: string;
  /** The selection as given (machine filters), kept for the record; the machines are fixed at creation. */
  select: Record<string, string>;
  /** Machines in the first wave. */
  canary: number;
  /** Machines per wave after the canary. */
  batch: number;
  /** Machines running at once within a wave. */
  maxInFlight: number;
  /** Failures tolerated across the rollout; one more pulls the andon. */
  maxFailures: number;
  /** Wait for `takt rollouts approve` after each wave. */
  approveBetweenWaves: boolean;
}

export interface Rollout {
  id: string;
  spec: RolloutSpec;
  state: RolloutState;
  reason: string | null;
  /** The wave running now (0 is the canary). */
  wave: number;
  waves: number;
  author: string;
  createdAt: string;
  updatedAt: string;
}

export interface RolloutItem {
  rolloutId: string;
  machineId: string;
  machineName: string;
  wave: number;
  state: RolloutItemState;
  reason: string | null;
  /** The work order a blueprint rollout queued for this machine. */
  workOrderId: string | null;
  startedAt: string | null;
  finishedAt: string | null;
}
