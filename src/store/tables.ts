/**
 * Row shapes as stored. JSON travels as TEXT and times as ISO-8601 TEXT in both SQLite and PostgreSQL so
 * that one set of queries serves both dialects.
 */
import type { Generated } from 'kysely';

export interface ChangesTable {
  seq: Generated<number>;
  author: string;
  at: string;
  object: string;
  action: string;
  before: string | null;
  after: string | null;
}

export interface EventsTable {
  id: Generated<number>;
  topic: string;
  at: string;
  data: string;
}

export interface PacksTable {
  name: string;
  version: string;
  description: string | null;
  files: string;
  sha256: string;
  installed_at: string;
}

export interface PackVersionsTable {
  name: string;
  version: string;
  description: string | null;
  requires: string;
  files: string;
  sha256: string;
  installed_at: string;
}

export interface ContentTable {
  kind: string;
  name: string;
  layer: string;
  def: string;
  sha256: string;
}

export interface MachinesTable {
  id: string;
  name: string;
  environment: string;
  broker: string | null;
  pipeline: string | null;
  /** Position by index, before 0011_resume: read once to upgrade a machine (`listLegacyPositions`), never written. */
  stage_index: Generated<number>;
  task_index: Generated<number>;
  attempt: number;
  approved_stage: Generated<number>;
  /** Position by identity (0011_resume): the stage and task the machine stands at. */
  stage: string | null;
  task: string | null;
  /** Step keys that succeeded in this pass, as JSON; null: a machine stored before 0011_resume, not upgraded yet. */
  passed: string | null;
  /** The stage key an approver let the machine into; null when none. */
  approved_stage_key: string | null;
  state: string;
  reason: string | null;
  params: string;
  /** Observed outputs of the machine's jobs as JSON text (migration 0012_observed); null: none. */
  outputs: string | null;
  /** JSON of Machine.restoredPlace; null when none (0018_restore). */
  restored_place: string | null;
  profiles: string;
  /** Labels as JSON text (keys sorted). */
  labels: string;
  current_job: string | null;
  power: string;
  /** Observed facts as JSON text; null until the agent reports them. */
  facts: string | null;
  token_hash: string;
  /** Agentless machines: MachineSsh as JSON; null for machines with an agent. */
  ssh: string | null;
  /** Network-booted machines: MachineBoot as JSON (migration 0020_boot); null for the others. */
  boot: string | null;
  /** MachineClassification as JSON (migration 0023_classification); null: never classified. */
  classification: string | null;
  /** Machines a power driver switches: MachinePowerConfig as JSON (migration 0021_power); null for the others. */
  power_config: string | null;
  /** The endpoint id of the replica that made the machine's host resources (0025_machine_host); null: none, or made before replicas. */
  host: string | null;
  created_at: string;
  updated_at: string;
  /** Agent liveness (observed; written only by `setAgentLiveness`): 1 connected, 0 not. */
  agent_connected: Generated<number>;
  agent_seen_at: string | null;
  agent_version: string | null;
  agent_address: string | null;
  agent_via: string | null;
  agent_since: string | null;
}

export interface JobsTable {
  id: string;
  machine_id: string;
  kind: string;
  work_order_id: string | null;
  pipeline: string | null;
  stage: string | null;
  task: string;
  variant: string;
  state: string;
  exit_code: number | null;
  reason: string | null;
  script: string;
  params: string;
  outputs: string;
  timeout_ms: number;
  lease_expires_at: string | null;
  created_at: string;
  finished_at: string | null;
  /** The agent's completion report, kept so a repeated report can be recognised as the same one. */
  report: string | null;
  /** Build record: `name@version` of the pack the task came from, or `local`. */
  pack: string | null;
  task_sha256: string | null;
  script_sha256: string | null;
  /** What the task asked of its machine's power and what came of it (migration 0024_job_power); null: nothing. */
  power: string | null;
}

export interface JobLogsTable {
  job_id: string;
  seq: number;
  stream: string;
  data: string;
  at: string;
}

export interface WorkOrdersTable {
  id: string;
  machine_id: string;
  blueprint: string;
  /** An ad-hoc command's AdhocCommand as JSON (`takt run`); null for a blueprint's work order. */
  command: string | null;
  state: string;
  task_index: number;
  /** JSON list of the blueprint steps that succeeded (WorkOrder.passed); null before 0014. */
  passed: string | null;
  params: string;
  reason: string | null;
  created_at: string;
  finished_at: string | null;
}

export interface RolloutsTable {
  id: string;
  spec: string;
  state: string;
  reason: string | null;
  wave: number;
  waves: number;
  author: string;
  created_at: string;
  updated_at: string;
}

export interface RolloutItemsTable {
  rollout_id: string;
  machine_id: string;
  machine_name: string;
  wave: number;
  state: string;
  reason: string | null;
  work_order_id: string | null;
  started_at: string | null;
  finished_at: string | null;
}

/** A rollout's hold on a machine (model/rollout.ts MachineHold). */
export interface MachineHoldsTable {
  machine_id: string;
  rollout_id: string;
  since: string;
}

export interface CredentialsTable {
  name: string;
  kind: string;
  key_type: string;
  fingerprint: string;
  public_key: string;
  /** Sealed JSON (`{"$secure":…}`) of the private key and its passphrase. */
  secret: string;
  created_at: string;
}

export interface ImagesTable {
  name: string;
  version: string;
  sha256: string;
  /** Bytes (bigint on PostgreSQL: node-pg hands it back as a string). */
  size: number | string;
  format: string;
  partition_table: string | null;
  description: string | null;
  /** JSON of model/image.ts ImageProvenance. */
  provenance: string;
  created_at: string;
}

export interface SettingsTable {
  key: string;
  value: string;
}

export interface JoinTokensTable {
  id: string;
  token_hash: string;
  name: string | null;
  pipeline: string | null;
  profiles: string;
  environment: string;
  url: string;
  max_uses: number;
  uses: number;
  expires_at: string;
  created_by: string;
  created_at: string;
  revoked_at: string | null;
  revoked_by: string | null;
  machines: string;
  /** 0032_join_token_machine: the one machine the token re-registers, or null. */
  machine_id: string | null;
}

/** DHCP leases (model/lease.ts), migration 0022_leases. */
export interface DhcpLeasesTable {
  mac: string;
  ip: string;
  state: string;
  /** Milliseconds since the epoch (bigint: PostgreSQL hands it back as a string, SQLite as a number). */
  expires_at: number | string;
  client_id: string | null;
  hostname: string | null;
  uuid: string | null;
  arch: number | null;
}

export interface Database {
  changes: ChangesTable;
  events: EventsTable;
  packs: PacksTable;
  pack_versions: PackVersionsTable;
  content: ContentTable;
  machines: MachinesTable;
  jobs: JobsTable;
  job_logs: JobLogsTable;
  work_orders: WorkOrdersTable;
  rollouts: RolloutsTable;
  rollout_items: RolloutItemsTable;
  machine_holds: MachineHoldsTable;
  settings: SettingsTable;
  join_tokens: JoinTokensTable;
  credentials: CredentialsTable;
  images: ImagesTable;
  dhcp_leases: DhcpLeasesTable;
  users: UsersTable;
  user_groups: UserGroupsTable;
  role_bindings: RoleBindingsTable;
  user_tokens: UserTokensTable;
  audit: AuditTable;
}

/** One audited request (model/audit.ts AuditEntry). */
export interface AuditTable {
  id: Generated<number>;
  at: string;
  principal: string;
  token: string | null;
  source: string;
  method: string;
  route: string;
  resource: string | null;
  status: number;
  outcome: string;
  detail: string | null;
  request_id: string;
}

export interface UsersTable {
  name: string;
  /** argon2id, PHC string form. */
  password_hash: string;
  created_at: string;
  created_by: string;
  /** 'oidc' for a user of an OpenID Connect provider (0029_oidc); null: a password user. */
  kind: string | null;
  /** The provider's issuer URL and the user's subject there (kind 'oidc'); null otherwise. */
  oidc_issuer: string | null;
  oidc_subject: string | null;
}

export interface UserGroupsTable {
  name: string;
  /** JSON array of user names. */
  members: string;
  created_at: string;
}

export interface RoleBindingsTable {
  id: string;
  role: string;
  /** `user:NAME` or `group:NAME`. */
  subject: string;
  /** Label selector text; null: any machine. */
  machines: string | null;
  /** JSON array of pipeline names; null: any pipeline. */
  pipelines: string | null;
  created_at: string;
  created_by: string;
}

export interface UserTokensTable {
  id: string;
  /** SHA-256 (hex) of the token text. */
  token_hash: string;
  name: string;
  kind: string;
  owner: string;
  /** JSON array of role names; null: all the owner's. */
  roles: string | null;
  expires_at: string;
  created_at: string;
  last_used_at: string | null;
  rotated_at: string | null;
  revoked_at: string | null;
  revoked_by: string | null;
}
