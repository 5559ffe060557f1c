/**
 * Rows and records: how each table's row becomes the model's record and back, the same on both stores.
 */
import semverCompare from 'semver/functions/compare.js';
import type { Selectable } from 'kysely';
import type { Image, ImageFormat, ImageProvenance, PartitionTable } from '../model/image.js';
import type { JoinToken } from '../model/join.js';
import type { Lease } from '../model/lease.js';
import type { AgentLiveness, Change, Job, JobState, Machine, MachineState, WorkOrder, WorkOrderState } from '../model/machine.js';
import type { MachineHold, Rollout, RolloutItem } from '../model/rollout.js';
import type { CredentialRecord, PackRecord } from './store.js';
import type { AuditTable, ChangesTable, CredentialsTable, Database, DhcpLeasesTable, ImagesTable, JobsTable, JoinTokensTable, MachineHoldsTable, MachinesTable, RoleBindingsTable, RolloutItemsTable, RolloutsTable, UserTokensTable, WorkOrdersTable } from './tables.js';
import type { RoleBinding } from '../model/permissions.js';
import type { User, UserToken } from '../model/users.js';
import type { AuditEntry, AuditOutcome } from '../model/audit.js';
import { json, parse } from './queries.js';
/** A machine's open work orders in the order they run: the running one, then the queued by age. */
export function rank(w: WorkOrdersTable): string {
  return `${w.state === 'running' ? 0 : 1}|${w.created_at}|${w.id}`;
}

/** The open work order that runs first (by `rank`), if any. */
export function firstOpen(rows: WorkOrdersTable[]): WorkOrder | undefined {
  let r: WorkOrdersTable | undefined;
  for (const row of rows) {
    if (!r || rank(row) < rank(r)) r = row;
  }
  return r ? workOrderFromRow(r) : undefined;
}

export function leaseFromRow(r: Selectable<DhcpLeasesTable>): Lease {
  const l: Lease = { mac: r.mac, ip: r.ip, state: r.state as Lease['state'], expiresAt: Number(r.expires_at) };
  if (r.client_id !== null) l.clientId = r.client_id;
  if (r.hostname !== null) l.hostname = r.hostname;
  if (r.uuid !== null) l.uuid = r.uuid;
  if (r.arch !== null) l.arch = Number(r.arch);
  return l;
}

export function machineFromRow(r: Selectable<MachinesTable>): Machine {
  return {
    id: r.id,
    name: r.name,
    environment: r.environment,
    broker: r.broker,
    pipeline: r.pipeline,
    stage: r.stage,
    task: r.task,
    passed: r.passed === null ? [] : parse<string[]>(r.passed),
    attempt: Number(r.attempt),
    approvedStage: r.approved_stage_key,
    state: r.state as MachineState,
    reason: r.reason,
    params: parse(r.params),
    outputs: r.outputs ? parse(r.outputs) : {},
    ...(r.restored_place ? { restoredPlace: parse<NonNullable<Machine['restoredPlace']>>(r.restored_place) } : {}),
    profiles: parse(r.profiles),
    labels: parse(r.labels) ?? {},
    currentJob: r.current_job,
    power: r.power as Machine['power'],
    facts: parse(r.facts),
    ...(r.ssh ? { ssh: parse<NonNullable<Machine['ssh']>>(r.ssh) } : {}),
    ...(r.boot ? { boot: parse<NonNullable<Machine['boot']>>(r.boot) } : {}),
    ...(r.classification ? { classification: parse<NonNullable<Machine['classification']>>(r.classification) } : {}),
    ...(r.power_config ? { powerConfig: parse<NonNullable<Machine['powerConfig']>>(r.power_config) } : {}),
    ...(r.host ? { host: r.host } : {}),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    agent: {
      connected: Number(r.agent_connected) === 1,
      lastSeenAt: r.agent_seen_at,
      version: r.agent_version,
      address: r.agent_address,
      via: r.agent_via as AgentLiveness['via'],
      since: r.agent_since ?? r.created_at,
    },
  };
}

/** The liveness columns, written only by `setAgentLiveness` (a machine's other writes leave them be). */
export type AgentColumns = 'agent_connected' | 'agent_seen_at' | 'agent_version' | 'agent_address' | 'agent_via' | 'agent_since';
/** The index position of a machine stored before 0011_resume: read once to upgrade it, never written. */
export type LegacyColumns = 'stage_index' | 'task_index' | 'approved_stage';

/**
 * The row a machine's ordinary writes carry. Facts are left out: they change only when the agent reports
 * them (`setMachineFacts`), so claims and completions do not rewrite them with every job.
 */
export function machineToRow(m: Machine): Omit<MachinesTable, 'token_hash' | 'facts' | AgentColumns | LegacyColumns> {
  return {
    id: m.id,
    name: m.name,
    environment: m.environment,
    broker: m.broker,
    pipeline: m.pipeline,
    stage: m.stage,
    task: m.task,
    passed: json(m.passed),
    attempt: m.attempt,
    approved_stage_key: m.approvedStage,
    state: m.state,
    reason: m.reason,
    params: json(m.params),
    outputs: Object.keys(m.outputs ?? {}).length ? json(m.outputs) : null,
    // Kept only while the machine is held; the first write after it moves on (a restart) drops it.
    restored_place: m.restoredPlace && m.state === 'paused' ? json(m.restoredPlace) : null,
    profiles: json(m.profiles),
    labels: json(m.labels ?? {}),
    current_job: m.currentJob,
    power: m.power,
    ssh: m.ssh ? json(m.ssh) : null,
    boot: m.boot ? json(m.boot) : null,
    classification: m.classification ? json(m.classification) : null,
    power_config: m.powerConfig ? json(m.powerConfig) : null,
    host: m.host ?? null,
    created_at: m.createdAt,
    updated_at: m.updatedAt,
  };
}

export function jobFromRow(r: JobsTable): Job {
  return {
    id: r.id,
    machineId: r.machine_id,
    kind: r.kind as Job['kind'],
    workOrderId: r.work_order_id,
    pipeline: r.pipeline,
    stage: r.stage,
    task: r.task,
    variant: r.variant,
    state: r.state as JobState,
    exitCode: r.exit_code === null ? null : Number(r.exit_code),
    reason: r.reason,
    script: r.script,
    params: parse(r.params),
    outputs: parse(r.outputs),
    timeoutMs: Number(r.timeout_ms),
    leaseExpiresAt: r.lease_expires_at,
    createdAt: r.created_at,
    finishedAt: r.finished_at,
    pack: r.pack,
    taskSha256: r.task_sha256,
    scriptSha256: r.script_sha256,
    ...(r.power ? { power: r.power } : {}),
  };
}

export function jobToRow(j: Job): Omit<JobsTable, 'report'> {
  return {
    id: j.id,
    machine_id: j.machineId,
    kind: j.kind,
    work_order_id: j.workOrderId,
    pipeline: j.pipeline,
    stage: j.stage,
    task: j.task,
    variant: j.variant,
    state: j.state,
    exit_code: j.exitCode,
    reason: j.reason,
    script: j.script,
    params: json(j.params),
    outputs: json(j.outputs),
    timeout_ms: j.timeoutMs,
    lease_expires_at: j.leaseExpiresAt,
    created_at: j.createdAt,
    finished_at: j.finishedAt,
    pack: j.pack,
    task_sha256: j.taskSha256,
    script_sha256: j.scriptSha256,
    power: j.power ?? null,
  };
}

export function workOrderFromRow(r: WorkOrdersTable): WorkOrder {
  return {
    id: r.id,
    machineId: r.machine_id,
    blueprint: r.blueprint,
    ...(r.command ? { command: parse(r.command) } : {}),
    state: r.state as WorkOrderState,
    taskIndex: Number(r.task_index),
    ...(r.passed !== null && r.passed !== undefined ? { passed: parse<string[]>(r.passed) } : {}),
    params: parse(r.params),
    reason: r.reason,
    createdAt: r.created_at,
    finishedAt: r.finished_at,
  };
}

export function workOrderToRow(w: WorkOrder): WorkOrdersTable {
  return {
    id: w.id,
    machine_id: w.machineId,
    blueprint: w.blueprint,
    command: w.command ? json(w.command) : null,
    state: w.state,
    task_index: w.taskIndex,
    passed: w.passed ? json(w.passed) : null,
    params: json(w.params),
    reason: w.reason,
    created_at: w.createdAt,
    finished_at: w.finishedAt,
  };
}

export function changeFromRow(r: Selectable<ChangesTable>): Change {
  return {
    seq: Number(r.seq),
    author: r.author,
    at: r.at,
    object: r.object,
    action: r.action as Change['action'],
    before: parse(r.before),
    after: parse(r.after),
  };
}

export function joinTokenFromRow(r: JoinTokensTable): JoinToken {
  return {
    id: r.id,
    name: r.name,
    pipeline: r.pipeline,
    profiles: parse(r.profiles),
    environment: r.environment,
    url: r.url,
    maxUses: Number(r.max_uses),
    uses: Number(r.uses),
    expiresAt: r.expires_at,
    createdBy: r.created_by,
    createdAt: r.created_at,
    revokedAt: r.revoked_at,
    revokedBy: r.revoked_by,
    machines: parse(r.machines),
    machine: r.machine_id ?? null,
  };
}

export function imageFromRow(r: ImagesTable): Image {
  return {
    name: r.name,
    version: r.version,
    sha256: r.sha256,
    size: Number(r.size),
    format: r.format as ImageFormat,
    partitionTable: r.partition_table as PartitionTable,
    description: r.description,
    provenance: JSON.parse(r.provenance) as ImageProvenance,
    createdAt: r.created_at,
  };
}

/** Newest version first: by semantic version precedence would need semver in SQL; the caller sorts. */
export function byNameThenNewest(a: Image, b: Image): number {
  if (a.name !== b.name) return a.name < b.name ? -1 : 1;
  return semverCompare(b.version, a.version);
}

export function bindingFromRow(r: RoleBindingsTable): RoleBinding {
  const b: RoleBinding = { id: r.id, role: r.role, subject: r.subject, createdAt: r.created_at, createdBy: r.created_by };
  if (r.machines !== null) b.machines = r.machines;
  if (r.pipelines !== null) b.pipelines = parse<string[]>(r.pipelines);
  return b;
}

export function auditFromRow(r: Selectable<AuditTable>): AuditEntry {
  return {
    id: Number(r.id),
    at: r.at,
    principal: r.principal,
    token: r.token,
    source: r.source,
    method: r.method,
    route: r.route,
    resource: r.resource,
    status: Number(r.status),
    outcome: r.outcome as AuditOutcome,
    detail: r.detail,
    requestId: r.request_id,
  };
}

export function userTokenFromRow(r: UserTokensTable): UserToken {
  const t: UserToken = {
    id: r.id,
    name: r.name,
    kind: r.kind as UserToken['kind'],
    owner: r.owner,
    expiresAt: r.expires_at,
    createdAt: r.created_at,
    lastUsedAt: r.last_used_at,
    rotatedAt: r.rotated_at,
    revokedAt: r.revoked_at,
    revokedBy: r.revoked_by,
  };
  if (r.roles !== null) t.roles = parse<string[]>(r.roles);
  return t;
}

export function credentialFromRow(r: CredentialsTable): CredentialRecord {
  return {
    name: r.name,
    kind: r.kind as CredentialRecord['kind'],
    keyType: r.key_type,
    fingerprint: r.fingerprint,
    publicKey: r.public_key,
    secret: parse(r.secret),
    createdAt: r.created_at,
  };
}

export function rolloutFromRow(r: RolloutsTable): Rollout {
  return {
    id: r.id,
    spec: parse(r.spec),
    state: r.state as Rollout['state'],
    reason: r.reason,
    wave: Number(r.wave),
    waves: Number(r.waves),
    author: r.author,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

export function rolloutToRow(r: Rollout): RolloutsTable {
  return {
    id: r.id,
    spec: json(r.spec),
    state: r.state,
    reason: r.reason,
    wave: r.wave,
    waves: r.waves,
    author: r.author,
    created_at: r.createdAt,
    updated_at: r.updatedAt,
  };
}

export function itemToRow(i: RolloutItem): RolloutItemsTable {
  return {
    rollout_id: i.rolloutId,
    machine_id: i.machineId,
    machine_name: i.machineName,
    wave: i.wave,
    state: i.state,
    reason: i.reason,
    work_order_id: i.workOrderId,
    started_at: i.startedAt,
    finished_at: i.finishedAt,
  };
}

export function holdFromRow(r: Selectable<MachineHoldsTable>): MachineHold {
  return { machineId: r.machine_id, rolloutId: r.rollout_id, since: r.since };
}

export function packFromRow(r: Omit<Database['packs'], never>): PackRecord {
  return {
    name: r.name,
    version: r.version,
    description: r.description,
    files: parse(r.files),
    sha256: r.sha256,
    installedAt: r.installed_at,
  };
}

/** The columns a User is read from (never the password hash). */
export const USER_COLUMNS = ['name', 'created_at', 'created_by', 'kind', 'oidc_issuer', 'oidc_subject'] as const;

export function userFromRow(r: { name: string; created_at: string; created_by: string; kind: string | null; oidc_issuer: string | null; oidc_subject: string | null }): User {
  const u: User = { name: r.name, createdAt: r.created_at, createdBy: r.created_by };
  if (r.kind === 'oidc' && r.oidc_issuer !== null && r.oidc_subject !== null) {
    u.kind = 'oidc';
    u.oidc = { issuer: r.oidc_issuer, subject: r.oidc_subject };
  }
  return u;
}
