/** Runtime objects: machines, jobs, work orders, changes and events, as the store and API hold them. */
import type { MachineBoot } from './boot.js';
import type { MachinePowerConfig } from './power.js';
import type { ObservedFacts } from './facts.js';
import type { MachineSsh } from './ssh.js';

/**
 * idle: no pipeline; running: walking its pipeline; paused: held at a task on purpose (an operator's pause
 * or a task's exit 16), resume continues there; stopped: held at a task because something failed;
 * done: finished its pipeline; awaiting-approval: held before a stage that needs an approver.
 */
export const MACHINE_STATES = ['idle', 'running', 'paused', 'stopped', 'done', 'awaiting-approval'] as const;
export type MachineState = (typeof MACHINE_STATES)[number];

/** Environment of a host whose agent an operator starts or joins over the network (`takt join`, `takt agent`). */
export const REMOTE_ENVIRONMENT = 'remote';
/** Environment of hardware (or a VM) booted from the network: discovered, or created with boot settings. */
export const METAL_ENVIRONMENT = 'metal';

/**
 * The environment of a machine created without one, by how its agent comes to run (the environment picks
 * the tasks' variants, so a guess that is wrong runs the wrong script):
 * - a broker's machine: the broker's (`local` sandboxes, `netns`, `ssh`, `metal` VMs), given by the caller;
 * - agentless over SSH: `ssh`;
 * - boot settings (MACs): `metal`, it boots from the network;
 * - otherwise `remote`: its agent is started on some host by the operator, like a joined host's.
 * Never `local`: the sandbox's variants assume a sandbox root that only the local broker makes.
 */
export function defaultEnvironment(m: { brokerEnvironment?: string; ssh?: unknown; boot?: unknown }): string {
  if (m.brokerEnvironment) return m.brokerEnvironment;
  if (m.ssh) return 'ssh';
  if (m.boot) return METAL_ENVIRONMENT;
  return REMOTE_ENVIRONMENT;
}

export interface Machine {
  id: string;
  name: string;
  environment: string;
  broker: string | null;
  pipeline: string | null;
  /**
   * Position in the pipeline, by identity (see docs/operations.md "Resume"): the stage and task the
   * machine stands at — the task running now, the one it stopped on, or the one it runs next. Null when
   * it has no pipeline, has not started it yet, or is done.
   */
  stage: string | null;
  task: string | null;
  /**
   * The tasks that have succeeded in this pass (since the pipeline was assigned or restarted), as step
   * keys `stage/task` in the order they succeeded (`#n` marks a later occurrence of a stage or task a
   * pipeline lists twice; see transitions.ts pipelineOrder). The machine is done when every task of its
   * pipeline is here; a resume runs the first task in pipeline order that is not.
   */
  passed: string[];
  /** How many times the current task has failed and been retried (only for tasks that opt in). */
  attempt: number;
  /** The stage (its step `stageKey`, usually its name) an approver let this machine enter; null when none. */
  approvedStage: string | null;
  state: MachineState;
  /** Why the machine is stopped or paused (or last was), in words an operator can act on. */
  reason: string | null;
  params: Record<string, unknown>;
  profiles: string[];
  /** The operator's key=value tags (desired state), selected with `-l role=web` (model/labels.ts). */
  labels: Record<string, string>;
  /** The job this machine is running now, if any. */
  currentJob: string | null;
  power: 'on' | 'off';
  /**
   * Observed, never desired: the values the machine's jobs set with `takt-set` (a task's declared outputs),
   * by param name; secure ones sealed. Templates see them above the machine's params (src/render/params.ts);
   * history, revert, rewind, import and staleness leave them be, because the machine still has them.
   */
  outputs: Record<string, unknown>;
  /**
   * Observed, set only by an import that restored the machine onto a new host (a sandbox broker, whose
   * sandbox is new and empty here): the state and reason its export gave it. The machine is held
   * (`paused`, engine/portable.ts `newHostReason`) until the operator restarts it; while it is, an export
   * writes this place, so that export is byte-identical to the one it came from. Dropped by the store once
   * the machine is no longer paused (a restart); absent otherwise.
   */
  restoredPlace?: { state: MachineState; reason: string | null } | null;
  /** What the machine's agent observed about its host (observed state: never in history or exports); null until it reports. */
  facts: ObservedFacts | null;
  /** Agentless machines only: how the endpoint reaches the host over SSH (broker `ssh`). */
  ssh?: MachineSsh;
  /** Network-booted machines only (bare metal, VMs): the MACs and UUID it boots as, and its next bootenv (model/boot.ts). */
  boot?: MachineBoot;
  /**
   * Which classification rule last gave the machine its profiles, environment and pipeline, and why
   * (engine/classify.ts; migration 0023_classification). Provenance, not desired state: what the rule set
   * is in the machine's desired fields and its history; this says where it came from. Absent: never classified.
   */
  classification?: MachineClassification;
  /**
   * Machines whose power takt switches through a driver (a VM's QMP, a BMC, or a person: `manual`): the
   * driver and its settings, desired state (model/power.ts; credentials only by secure param name).
   * Absent for broker machines (local, netns), whose `power` the broker acts on itself.
   */
  powerConfig?: MachinePowerConfig;
  /**
   * Observed: the endpoint id (brokers/netns.ts endpointId, 8 hex digits) of the `takt serve` replica whose
   * host-bound broker (local, netns, qemu) made the machine's sandbox, namespace or VM. Only that replica
   * adopts, powers and destroys them; another replica changes the record and the owner acts on the event.
   * Absent for machines without such a broker (agents, SSH) and for machines made before replicas (their
   * endpoint adopts them as it always did). Never in history or exports: a machine restored on another
   * host gets that endpoint's id.
   */
  host?: string;
  createdAt: string;
  updatedAt: string;
  /** Observed, never desired: whether an agent (or the SSH broker) is in touch with the machine. */
  agent: AgentLiveness;
}

/** Provenance of a machine's classification: the rule that matched its facts, and what it gave. */
export interface MachineClassification {
  /** The layer the classifier came from: a pack's name, or `local`. */
  pack: string;
  /** The version of that pack in use when it matched; null for a local classifier. */
  version: string | null;
  classifier: string;
  rule: string;
  /** Why it matched: each selector with the fact value it saw, e.g. `memoryBytes 4294967296 >= 2147483648 (2GiB)`. */
  reasons: string[];
  /** What the rule gave, as applied: profiles added, environment, pipeline, names of params set. */
  gave: { profiles: string[]; environment: string | null; pipeline: string | null; params: string[] };
  /** When it was applied (ISO-8601 UTC) and by whom (the API user, or the caller that classified it). */
  at: string;
  by: string;
}

/**
 * Whether anything is in touch with a machine on its behalf, as the endpoint observed it (see
 * src/engine/liveness.ts for how it is decided). Times are ISO-8601 UTC.
 */
export interface AgentLiveness {
  /** A claim long-poll is open now, or the machine's token was heard within the endpoint's window. */
  connected: boolean;
  /** The last authenticated request made with the machine's token (or SSH contact); null: never. */
  lastSeenAt: string | null;
  /** From the agent's `user-agent: takt-agent/<version>`; null until an agent says. */
  version: string | null;
  /** The address the last request came from (the TCP peer; proxy headers are not trusted). */
  address: string | null;
  /** How the machine is reached: its own agent, or the endpoint over SSH; null: never heard. */
  via: 'agent' | 'ssh' | null;
  /** When the current connected/disconnected state began (for a machine never heard from: its creation). */
  since: string;
}

/**
 * A machine's state as an operator should read it: its `state`, except `waiting-for-agent` when it has
 * work to do (running, power on) and no agent is connected to do it.
 */
export type MachineStatus = MachineState | 'waiting-for-agent';

export const JOB_STATES = ['running', 'succeeded', 'failed', 'lost', 'cancelled'] as const;
export type JobState = (typeof JOB_STATES)[number];
export const TERMINAL_JOB_STATES: readonly JobState[] = ['succeeded', 'failed', 'lost', 'cancelled'];

export interface Job {
  id: string;
  machineId: string;
  kind: 'pipeline' | 'workorder';
  workOrderId: string | null;
  pipeline: string | null;
  stage: string | null;
  task: string;
  /** Which variant ran: `default` or the environment name. */
  variant: string;
  state: JobState;
  exitCode: number | null;
  reason: string | null;
  /** The rendered script with secure values masked; the agent gets the real one at claim time. */
  script: string;
  /** Resolved params the task uses, secure values masked, with the layer each came from. */
  params: Record<string, { value: unknown; from: string }>;
  outputs: Record<string, unknown>;
  timeoutMs: number;
  leaseExpiresAt: string | null;
  createdAt: string;
  finishedAt: string | null;
  /** Build record: `name@version` of the pack the task came from (`local` for a local task). */
  pack: string | null;
  /** Content hash of the task definition that ran. */
  taskSha256: string | null;
  /** sha256 of the exact script the agent got (secrets included, so it changes when they do). */
  scriptSha256: string | null;
  /**
   * What the task asked of its machine's power with `takt-power` and what came of it, in words
   * (`next-boot pxe (ipmi), cycle`; `not applied: the job did not succeed (asked: cycle)`). Absent: nothing asked.
   */
  power?: string;
}

export const WORK_ORDER_STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type WorkOrderState = (typeof WORK_ORDER_STATES)[number];

/**
 * The task (and blueprint) name of an ad-hoc command's job and work order (`takt run`): not a valid
 * content name, so it never means a task or blueprint of the content.
 */
export const ADHOC_TASK = '(command)';

/** An ad-hoc command run as a work order (`takt run`): bash source, and how long it may run. */
export interface AdhocCommand {
  script: string;
  timeoutMs: number;
}

export interface WorkOrder {
  id: string;
  machineId: string;
  /** The blueprint it runs; ADHOC_TASK for an ad-hoc command. */
  blueprint: string;
  /** Set for an ad-hoc command (`takt run`) instead of a blueprint's tasks. */
  command?: AdhocCommand;
  state: WorkOrderState;
  /** Index of the blueprint task that runs next (for display; the position is `passed`). */
  taskIndex: number;
  /**
   * The blueprint's steps that have succeeded, by identity (transitions.ts pipelineOrder keys of the
   * blueprint as a one-stage pipeline: `bp/task`, `bp/task#2` for a repeat). Absent on work orders stored
   * before 0014: their first `taskIndex` steps count as passed.
   */
  passed?: string[];
  params: Record<string, unknown>;
  reason: string | null;
  createdAt: string;
  finishedAt: string | null;
}

export interface LogChunk {
  jobId: string;
  seq: number;
  /**
   * `stdout`/`stderr`: the script's; `system`: the agent's notes; `takt`: lines the endpoint writes itself
   * (e.g. where it cut a log at its bound). An agent cannot send `takt` lines, so they cannot be forged.
   */
  stream: 'stdout' | 'stderr' | 'system' | 'takt';
  data: string;
  at: string;
}

/** One numbered entry in the desired-state history. */
export interface Change {
  seq: number;
  author: string;
  at: string;
  /** `<kind>/<name-or-id>`, e.g. `machines/m-1a2b`, `profiles/web`, `packs/demo`. */
  object: string;
  action: 'create' | 'update' | 'delete';
  before: unknown;
  after: unknown;
}

export interface TaktEvent {
  id: number;
  /** `<type>.<action>.<id>`, e.g. `machines.update.m-1a2b`, `jobs.create.j-9f`. */
  topic: string;
  at: string;
  data: unknown;
}
