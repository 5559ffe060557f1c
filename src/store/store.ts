/**
 * The store interface the engine and API use. One implementation (SqlStore) serves SQLite and PostgreSQL
 * through Kysely; the dialect shows only in how a connection is opened (sqlite.ts, postgres.ts; open.ts
 * picks one) and in a few statements inside sql-store.ts (row locks, change numbers, case-insensitive
 * substring matches, byte counts). test/store-conformance.test.ts holds both to the same behaviour.
 *
 * Every write happens inside `transact`, which is the one commit path: a desired-state write records a
 * numbered change with `tx.change(...)`, and every write queues its events with `tx.emit(...)` in the same
 * transaction. Listeners hear about events only after the transaction has committed — on PostgreSQL
 * also those committed by other processes on the database (pg-follow.ts).
 */
import type { ContentKind } from '../model/content.js';
import type { ObservedFacts } from '../model/facts.js';
import type { Image } from '../model/image.js';
import type { JoinToken } from '../model/join.js';
import type { Lease } from '../model/lease.js';
import type { AgentLiveness, Change, Job, JobState, LogChunk, Machine, MachineState, TaktEvent, WorkOrder, WorkOrderState } from '../model/machine.js';
import type { MachineHold, Rollout, RolloutItem, RolloutState } from '../model/rollout.js';
import type { Sealed } from '../model/secure.js';
import type { RoleBinding } from '../model/permissions.js';
import type { Group, User, UserToken } from '../model/users.js';
import type { AuditEntry, AuditFilter, AuditRecord } from '../model/audit.js';

export interface PackRecord {
  name: string;
  version: string;
  description: string | null;
  /** Other packs this one needs: name → semver range (kept with each version). */
  requires?: Record<string, string>;
  files: Record<string, string>;
  sha256: string;
  installedAt: string;
}

/** A credential the endpoint itself uses (an SSH private key), sealed at rest. */
export interface CredentialRecord {
  name: string;
  kind: 'ssh-key';
  /** Key algorithm, e.g. `ssh-ed25519`. */
  keyType: string;
  /** SHA-256 fingerprint of the public key, `SHA256:…` as ssh-keygen prints it. */
  fingerprint: string;
  /** The public key as an authorized_keys line (`type base64 takt:NAME`). */
  publicKey: string;
  /** The private key (and its passphrase), sealed by the endpoint's Sealer. Never leaves the endpoint. */
  secret: Sealed;
  createdAt: string;
}

export interface ContentRecord {
  kind: ContentKind;
  name: string;
  layer: string;
  def: unknown;
  sha256: string;
}

export interface Page {
  limit?: number;
  offset?: number;
}

export interface MachineFilter extends Page {
  state?: MachineState;
  pipeline?: string;
  environment?: string;
  broker?: string;
  /** Substring match on the name. */
  name?: string;
  /** Only machines whose stored agent liveness says connected (true) or not (false). */
  agentConnected?: boolean;
  /** Only machines with these ids (an empty list: none). */
  ids?: readonly string[];
}

export interface JobFilter extends Page {
  machineId?: string;
  state?: JobState;
  task?: string;
  workOrderId?: string;
  /** Only jobs created at or after this ISO time. */
  since?: string;
  /** Newest first by default; `asc` for the order they ran in. */
  order?: 'asc' | 'desc';
}

export interface WorkOrderFilter extends Page {
  machineId?: string;
  state?: WorkOrderState;
}

export interface ChangeFilter extends Page {
  object?: string;
  /** Only changes with seq greater than this. */
  after?: number;
}

/** Reads available both outside and inside a transaction. */
export interface Reads {
  getMachine(id: string): Promise<Machine | undefined>;
  getMachineByName(name: string): Promise<Machine | undefined>;
  getMachineTokenHash(id: string): Promise<string | undefined>;
  listMachines(filter?: MachineFilter): Promise<Machine[]>;
  /**
   * Machines stored before positions were kept by identity (migration 0011_resume), with their old
   * index positions (`approvedStage` -1: none), for the engine to upgrade once at start.
   */
  listLegacyPositions(): Promise<Array<{ id: string; stageIndex: number; taskIndex: number; approvedStage: number }>>;
  countMachines(filter?: MachineFilter): Promise<number>;
  getJob(id: string): Promise<Job | undefined>;
  /** Whose a job is and its state, without the rest of the row (logs and heartbeats need only this). */
  getJobState(id: string): Promise<Pick<Job, 'id' | 'machineId' | 'state'> | undefined>;
  /** The report an agent made for a job, kept to recognise a repeated report. */
  getJobReport(id: string): Promise<unknown>;
  listJobs(filter?: JobFilter): Promise<Job[]>;
  /** Running jobs whose lease ran out before `now`. */
  listExpiredJobs(now: string): Promise<Job[]>;
  getLogs(jobId: string, afterSeq?: number, limit?: number): Promise<LogChunk[]>;
  lastLogSeq(jobId: string): Promise<number>;
  getWorkOrder(id: string): Promise<WorkOrder | undefined>;
  listWorkOrders(filter?: WorkOrderFilter): Promise<WorkOrder[]>;
  /** The work order a machine runs next: its running one, else its oldest queued one. */
  nextWorkOrder(machineId: string): Promise<WorkOrder | undefined>;
  listContent(): Promise<ContentRecord[]>;
  listPacks(): Promise<PackRecord[]>;
  /** The version a pack runs (its pin). */
  getPack(name: string): Promise<PackRecord | undefined>;
  getPackVersion(name: string, version: string): Promise<PackRecord | undefined>;
  /** Installed versions (all packs, or one), without their files. */
  listPackVersions(name?: string): Promise<Array<Omit<PackRecord, 'files'>>>;
  listChanges(filter?: ChangeFilter): Promise<Change[]>;
  getChange(seq: number): Promise<Change | undefined>;
  listEvents(afterId: number, limit?: number): Promise<TaktEvent[]>;
  getRollout(id: string): Promise<Rollout | undefined>;
  /** Newest first; `states` limits to rollouts in those states. */
  listRollouts(filter?: Page & { states?: RolloutState[] }): Promise<Rollout[]>;
  listRolloutItems(rolloutId: string): Promise<RolloutItem[]>;
  /** The rollout's hold on the machine, if any (claims read it: a held machine starts no new job). */
  getHold(machineId: string): Promise<MachineHold | undefined>;
  /** Every hold, oldest first. */
  listHolds(): Promise<MachineHold[]>;
  getSetting<T>(key: string): Promise<T | undefined>;
  getJoinToken(id: string): Promise<JoinToken | undefined>;
  /** The SHA-256 (hex) of a join token's secret, for authentication only. */
  getJoinTokenHash(id: string): Promise<string | undefined>;
  /** Newest first. */
  listJoinTokens(page?: Page): Promise<JoinToken[]>;
  /**
   * Machines whose stored facts contain `text` (a machine-id, a UUID, a MAC) anywhere: a cheap first pass
   * for recognising a host that joins again; the caller compares the facts field by field.
   */
  listMachinesWithFactText(text: string): Promise<Machine[]>;
  /**
   * Network-booted machines whose boot settings mention one of `texts` (MACs, a UUID), at most a page;
   * the caller checks the exact match (model/boot.ts `bootsAs`).
   */
  listMachinesWithBootText(texts: string[]): Promise<Machine[]>;
  getCredential(name: string): Promise<CredentialRecord | undefined>;
  listCredentials(): Promise<CredentialRecord[]>;
  /** Names of the machines whose SSH settings use credential `name`. */
  credentialUsers(name: string): Promise<string[]>;
  getImage(name: string, version: string): Promise<Image | undefined>;
  /** Every image version (of `name` when given), by name then newest version first. */
  listImages(name?: string): Promise<Image[]>;
  /** The image versions whose bytes have this digest (versions may share bytes). */
  imagesWithSha256(sha256: string): Promise<Image[]>;
  /** Every DHCP lease kept (expired ones too, until the DHCP server replaces or removes them), by address. */
  listLeases(): Promise<Lease[]>;
  getUser(name: string): Promise<User | undefined>;
  /** The user an OpenID Connect identity (issuer, subject) belongs to (User.oidc), if any. */
  getUserByOidc(issuer: string, subject: string): Promise<User | undefined>;
  /** A user's argon2id password hash (PHC form), for login only. */
  getUserPasswordHash(name: string): Promise<string | undefined>;
  /** By name. */
  listUsers(): Promise<User[]>;
  getGroup(name: string): Promise<Group | undefined>;
  /** By name. */
  listGroups(): Promise<Group[]>;
  /** Oldest first. */
  listRoleBindings(): Promise<RoleBinding[]>;
  getUserToken(id: string): Promise<UserToken | undefined>;
  /** The SHA-256 (hex) of a user token's text, for authentication only. */
  getUserTokenHash(id: string): Promise<string | undefined>;
  /** Newest first; `owner` limits to one user's tokens. */
  listUserTokens(owner?: string): Promise<UserToken[]>;
  /** Audit entries matching `filter`, newest (highest number) first, at most `filter.limit` (≤ 1000). */
  listAudit(filter: AuditFilter): Promise<AuditEntry[]>;
}

export interface Tx extends Reads {
  /** Reads a machine and locks its row until commit (PostgreSQL); SQLite serialises writers anyway. */
  lockMachine(id: string): Promise<Machine | undefined>;
  insertMachine(m: Machine, tokenHash: string): Promise<void>;
  /** Writes every desired and pipeline field of a machine; never its agent liveness. */
  updateMachine(m: Machine): Promise<void>;
  /**
   * Writes only machines' agent liveness (observed state; no change is recorded), one entry per machine
   * (ids distinct); an entry of a deleted machine is skipped. A `version` or `address` that is null keeps
   * the one stored. On PostgreSQL one statement, whatever the number of entries (a round trip per batch,
   * not per machine).
   */
  setAgentLiveness(entries: ReadonlyArray<{ id: string; agent: AgentLiveness }>): Promise<void>;
  deleteMachine(id: string): Promise<void>;
  insertJob(j: Job): Promise<void>;
  /** Extends one running job's lease (heartbeats and log chunks do this often: it writes one column). */
  renewLease(jobId: string, until: string): Promise<void>;
  /** Gives every running job a fresh lease (at start-up, so agents can reconnect before anything is lost). */
  renewRunningLeases(until: string): Promise<number>;
  updateJob(j: Job, report?: unknown): Promise<void>;
  /** Ends a job: writes only what ending changes (state, reason, exit code, outputs, finish time, lease, report). */
  finishJob(j: Job, report?: unknown): Promise<void>;
  /**
   * Appends log chunks, ignoring any seq already stored (agents resend after network loss); answers how
   * many were stored. `opts.counted: false`: the caller needs no count, and 0 is answered — which lets a
   * row-scoped transaction on PostgreSQL hold the insert back and send it with its next statement or at
   * its end (sql-tx.ts PgRowTx), one round trip less.
   */
  appendLogs(chunks: LogChunk[], opts?: { counted?: boolean }): Promise<number>;
  /** How much of a job's log is stored: its chunks and their data's UTF-8 bytes (for the per-job bound). */
  logSize(jobId: string): Promise<{ chunks: number; bytes: number }>;
  /** Replaces the text of one stored log chunk (masking a secret the job revealed later, e.g. its own output). */
  replaceLogData(jobId: string, seq: number, data: string): Promise<void>;
  insertWorkOrder(w: WorkOrder): Promise<void>;
  updateWorkOrder(w: WorkOrder): Promise<void>;
  putContent(rec: ContentRecord): Promise<void>;
  deleteContent(kind: ContentKind, name: string): Promise<void>;
  /** Pins the version a pack runs. */
  putPack(p: PackRecord): Promise<void>;
  /** Stores an installed version; versions are immutable, so an existing one is never overwritten. */
  putPackVersion(p: PackRecord): Promise<void>;
  deletePack(name: string): Promise<void>;
  /** Deletes one installed version (its files); build records keep their `name@version` text. */
  deletePackVersion(name: string, version: string): Promise<void>;
  insertRollout(r: Rollout, items: RolloutItem[]): Promise<void>;
  updateRollout(r: Rollout): Promise<void>;
  updateRolloutItem(i: RolloutItem): Promise<void>;
  /** Holds a machine for a rollout (replacing any hold it had). */
  putHold(h: MachineHold): Promise<void>;
  /** Ends a machine's hold; answers whether there was one. */
  deleteHold(machineId: string): Promise<boolean>;
  /** Replaces a machine's observed facts (and only them: no history entry, no other column). */
  setMachineFacts(id: string, facts: ObservedFacts | null): Promise<void>;
  /**
   * Records which replica's host holds a machine's sandbox or VM (Machine.host, an endpoint id; observed:
   * no change is recorded, no event). Only that column is written. No-op for a deleted machine.
   */
  setMachineHost(id: string, host: string | null): Promise<void>;
  /** Replaces the digest of a machine's token: the old token stops working. */
  setMachineTokenHash(id: string, tokenHash: string): Promise<void>;
  insertJoinToken(t: JoinToken, tokenHash: string): Promise<void>;
  /**
   * Takes one use of a join token if it is still usable at `now` (not revoked, not expired, uses left),
   * in one conditional write, so concurrent registrations can never take more uses than it has.
   * @returns whether a use was taken.
   */
  takeJoinTokenUse(id: string, now: string): Promise<boolean>;
  /** Writes a join token's revocation and its list of machines. */
  updateJoinToken(t: JoinToken): Promise<void>;
  /** Sets (or with null, clears) an endpoint-wide setting such as a policy. */
  putSetting(key: string, value: unknown): Promise<void>;
  insertCredential(c: CredentialRecord): Promise<void>;
  /** Adds an image version; the caller has checked that `name@version` is free (versions are immutable). */
  insertImage(i: Image): Promise<void>;
  deleteImage(name: string, version: string): Promise<void>;
  deleteCredential(name: string): Promise<void>;
  /** Writes a DHCP lease (keyed by MAC), dropping any other lease on the same address (observed state: no change is recorded). */
  putLease(l: Lease): Promise<void>;
  /** Forgets a client's DHCP lease; no-op when there is none. */
  deleteLease(mac: string): Promise<void>;
  /** Inserts a user (with `u.kind`/`u.oidc` for an SSO user, whose `passwordHash` is ''). */
  insertUser(u: User, passwordHash: string): Promise<void>;
  setUserPasswordHash(name: string, passwordHash: string): Promise<void>;
  /** Deletes a user, their tokens and the role bindings naming them; group memberships are the caller's. */
  deleteUser(name: string): Promise<void>;
  /** Inserts or replaces a group. */
  putGroup(g: Group): Promise<void>;
  /** Deletes a group and the role bindings naming it. */
  deleteGroup(name: string): Promise<void>;
  insertRoleBinding(b: RoleBinding): Promise<void>;
  deleteRoleBinding(id: string): Promise<void>;
  insertUserToken(t: UserToken, tokenHash: string): Promise<void>;
  /** Writes a token's revocation, rotation (a new hash and expiry) and last use. */
  updateUserToken(t: UserToken, tokenHash?: string): Promise<void>;
  /** Records a token's last use (observed: no change, no event). */
  touchUserToken(id: string, at: string): Promise<void>;
  /** Appends audit entries (no change is recorded, no event: the audit log is not desired state). */
  insertAudit(entries: readonly AuditRecord[]): Promise<void>;
  /** Deletes audit entries older than `before` (ISO); returns how many. */
  pruneAudit(before: string): Promise<number>;
  /**
   * Takes the turn of a periodic job named `key` that is due when its last turn was at or before `due`
   * (ISO): records `now` as its last turn and answers true, in one conditional write, so of several
   * replicas asking at once exactly one gets it. False when another took it since `due`.
   */
  takeTurn(key: string, now: string, due: string): Promise<boolean>;
  /**
   * Records a numbered desired-state change; returns its number, or 0 in a row-scoped transaction on
   * PostgreSQL (`TransactOptions.scope`), where the number is drawn at commit.
   */
  change(author: string, object: string, action: Change['action'], before: unknown, after: unknown): Promise<number>;
  /** Queues an event for publication after commit. */
  emit(topic: string, data: unknown): void;
}

export type EventListener = (events: TaktEvent[]) => void;

/** How a transaction is kept from racing others (Store.transact). */
export interface TransactOptions {
  /**
   * `store` (the default): the transaction behaves as if it were the store's only writer, whatever it
   * reads and writes — on SQLite it is (one writer), on PostgreSQL it holds the store-wide write lock
   * from its first statement to COMMIT, across every process on the database.
   *
   * `rows`: the transaction guards each read-modify-write itself by row locks: it locks the machine it
   * works on first (`lockMachine`, `SELECT … FOR UPDATE`) and reads what it then changes only after
   * that, and it changes only rows that every writer changes under that machine's lock (the machine,
   * its jobs, their logs, its work orders). On PostgreSQL such transactions run concurrently with each
   * other (on other connections and replicas), never with a `store` transaction; their change numbers
   * and event ids are drawn at COMMIT (so `change` answers 0), and `fn` may run more than once (a
   * deadlock, or another transaction of its group failing, rolls its group back: sql-store.ts
   * `transact`); only its last run's writes and events commit. On SQLite it is the same as `store`.
   */
  scope?: 'store' | 'rows';
  /**
   * With `scope: 'rows'`: the machine `fn` locks first (`lockMachine`), when the caller knows it. On
   * PostgreSQL a group of row-scoped transactions then locks all its transactions' machines in one round
   * trip before running them, and each one's `lockMachine` of its machine answers from that; without it,
   * each `lockMachine` is a round trip of its own. A hint only: `fn` behaves the same either way.
   */
  lock?: string;
}

export interface Store extends Reads {
  readonly dialect: 'sqlite' | 'postgres';
  migrate(): Promise<void>;
  /**
   * Runs `fn` in a transaction and commits it (the one commit path; see the header). `opts.scope` says
   * what `fn` relies on to be alone (TransactOptions).
   */
  transact<T>(fn: (tx: Tx) => Promise<T>, opts?: TransactOptions): Promise<T>;
  /**
   * Calls `listener` with each committed batch of events, in id order, each event once; returns the
   * unsubscribe function. On PostgreSQL this includes the events other processes on the same database
   * commit (pg-follow.ts), from when the store was opened.
   */
  onEvents(listener: EventListener): () => void;
  /**
   * As `onEvents`, but only the events this store's own transactions committed (each once, in id order),
   * never those of other processes on the database. For what must be counted once across replicas
   * (metrics: a sum over replicas then counts every event once). On SQLite (one process) it is every event.
   */
  onOwnEvents(listener: EventListener): () => void;
  /**
   * Round trips this store made to its database since it opened, by statement label (the compiled
   * query's name in sql-store.ts, or `begin+lock`, `notify+commit`…): what a job costs on the wire.
   * PostgreSQL only; empty on SQLite, whose statements run in-process. Exported as a metric
   * (`takt_store_round_trips_total`).
   */
  roundTrips(): ReadonlyMap<string, number>;
  /** Deletes events older than the newest `keep` (the stream's catch-up window). */
  pruneEvents(keep: number): Promise<void>;
  close(): Promise<void>;
}
