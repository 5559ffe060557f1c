/** Rollouts: a pipeline or blueprint applied to a selection of machines in waves, stopped by the andon. */
import type { ApprovalRule } from './permissions.js';

export const ROLLOUT_STATES = ['running', 'paused', 'awaiting-approval', 'stopped', 'aborted', 'completed'] as const;
export type RolloutState = (typeof ROLLOUT_STATES)[number];

/** `waiting`: the machine's turn came while it was busy, and the rollout waits for it (`--busy wait`). */
export const ROLLOUT_ITEM_STATES = ['pending', 'waiting', 'running', 'succeeded', 'failed', 'skipped'] as const;
export type RolloutItemState = (typeof ROLLOUT_ITEM_STATES)[number];

/**
 * What a rollout does to a busy machine (one with a running job, awaiting approval, or paused) when its
 * turn comes: `wait` until it is no longer busy, then reassign it (its next job is held meanwhile);
 * `skip` it (the report says so); `cancel` its job ("cancelled by <author> (rollout R)"), then reassign.
 */
export const BUSY_POLICIES = ['wait', 'skip', 'cancel'] as const;
export type BusyPolicy = (typeof BUSY_POLICIES)[number];

/** One machine in a rollout's dry run: where it stands now and what the rollout would do to it. */
export interface RolloutPlanItem {
  machineName: string;
  pipeline: string | null;
  state: string;
  /** The machine's running job, if any. */
  job: { id: string; task: string } | null;
  wave: number;
  /** `reassign` (or `queue` a blueprint's work order), `wait` for the job or state, `skip`, `cancel` the job. */
  action: 'reassign' | 'queue' | 'wait' | 'skip' | 'cancel';
  /** The action in words, e.g. "wait for job j-1 (task build) to end, then reassign". */
  detail: string;
}

export interface RolloutSpec {
  /** Exactly one of pipeline and blueprint. */
  pipeline?: string;
  blueprint?: string;
  /** The selection as given (machine filters), kept for the record; the machines are fixed at creation. */
  select: Record<string, string>;
  /** The label selector as given (`role=web,env!=prod`), kept for the record; it combines with `select`. */
  selector?: string;
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
  /** What happens to busy machines; absent on rollouts made before it existed (they behave as `cancel`). */
  busy?: BusyPolicy;
  /**
   * Who may approve its waves (with `approveBetweenWaves`): holders of this role (or admins), and with
   * `twoPerson` not its author (issue #16). Absent: anyone with `rollouts:approve`.
   */
  approval?: ApprovalRule;
  /**
   * Machine params a pipeline rollout sets on each machine as its turn comes, in the same transaction as
   * its start (a change by `rollout:<id>`), e.g. `{image: 'debian-min@2.0.0'}` to roll a new image version
   * out with `image-deploy`. Machines the rollout does not reach (andon, abort) keep theirs. Never secure.
   */
  params?: Record<string, unknown>;
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

/**
 * A rollout's hold on a machine: the machine starts no new job while it stands (its running job goes on),
 * so a rollout that waits for a busy machine (`--busy wait`) reassigns it between two jobs. Kept in the
 * store (migration 0015_rollout_hold), so a restarted endpoint, or another replica, honours it at once.
 */
export interface MachineHold {
  machineId: string;
  /** The rollout that holds the machine. */
  rolloutId: string;
  /** When the hold was taken (ISO-8601 UTC). */
  since: string;
}

/** What an operator can do with a rollout in its state, as the commands to type. */
export function hint(r: { id: string; state: RolloutState }): string {
  const t = (verb: string) => `\`takt rollouts ${verb} ${r.id}\``;
  switch (r.state) {
    case 'running':
      return `Follow it with ${t('watch')}, or hold it with ${t('pause')}.`;
    case 'paused':
      return `Continue it with ${t('resume')}, or end it with ${t('abort')}.`;
    case 'awaiting-approval':
      return `Start the next wave with ${t('approve')}, or end it with ${t('abort')}.`;
    case 'stopped':
      return `Fix the cause, then re-run its failed machines with ${t('retry')}, or end it with ${t('abort')}.`;
    case 'aborted':
    case 'completed':
      return `It has ended: ${t('retry')} re-runs its failed machines, or start a new rollout with \`takt rollouts create\`.`;
  }
}
