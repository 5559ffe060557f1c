/**
 * Export and import of the complete desired state as a directory of YAML (packs as their own files, local
 * content, machines), so it can live in git and restore an endpoint. Each machine's file also carries what
 * a restore needs of its observed state, apart from the desired fields: its place (pipeline position and
 * state, never `running`: a restored machine does not start work by itself), the outputs its jobs set, and
 * its build record. An import onto an existing machine changes desired fields only (outputs stay; a changed
 * pipeline takes the export's place there, or holds the machine at its start: restore.ts).
 * Output is deterministic — sorted keys, no timestamps that change, kept ids — so an export, imported
 * elsewhere and exported again, is byte-identical.
 */
import { stringify } from 'yaml';
import { assertPlainPaths, packPathProblem } from '../content/files.js';
import { checkContentSet, lintPack, type LintResult } from '../content/lint.js';
import { schemaProblems } from '../content/schema.js';
import { parseYamlValue } from '../content/yaml.js';
import { CONTENT_KINDS, CONTENT_SCHEMAS, KIND_NOUN, LOCAL_LAYER, NAME_PATTERN, PARAM_NAME_PATTERN, emptyContentSet, type ContentKind, type ContentObject, type ContentSet } from '../model/content.js';
import { attempt, TaktError } from '../model/errors.js';
import { canonicalJson } from '../model/hash.js';
import { MACHINE_STATES, type Job, type Machine, type MachineState } from '../model/machine.js';
import type { MachineBoot } from '../model/boot.js';
import type { MachinePowerConfig } from '../model/power.js';
import { sshSettingsOf, type HostKey, type SshSettings } from '../model/ssh.js';
import type { PackRecord, Store, Tx } from '../store/store.js';
import { assertRequires, type ContentService, type Pins } from './content.js';
import { Pacer } from './pace.js';
import type { IsSecure, SealedPack } from './sealing.js';
import { patchTowards, type Engine, type MachinePatch, type RestoreWrite } from './engine.js';
import { assertEnvironment } from './declared.js';
import type { RecordEntry, Records } from './records.js';
import { placeOnReassign, shadowedParams, type RecordedPlace } from './restore.js';

export const EXPORT_FORMAT = 'takt-export/1';
const MANIFEST = 'takt-export.yaml';

export type ExportFiles = Record<string, string>;

export interface ImportResult {
  /** True when nothing was written (`--dry-run`): the result says what an import would do. */
  dryRun: boolean;
  /** Every change, one line each (`pin basic 1.0.0 → 1.1.0`, `update machines/web-1: params.msg`); empty: nothing to do. */
  changes: string[];
  /**
   * How each created machine's agent gets back in touch: every machine gets a new token (tokens are never
   * exported), so each has a way to re-attach — started by its broker, reached over SSH, or a command.
   */
  reattach: Array<{ machine: string; how: string }>;
  packVersionsInstalled: string[];
  inUse: Record<string, string>;
  content: { created: number; updated: number; deleted: number };
  machines: { created: string[]; updated: string[] };
  /** What the import left as it was (machines not in the export) or could not do after its commit (an agent that did not start). */
  problems: string[];
  /**
   * Per machine, what restoring desired state means beside its observed state (restore.ts): where a machine
   * whose pipeline changes is held, and restored params its outputs still shadow.
   */
  notes: string[];
  /**
   * Machines restored onto a new host: created with a sandbox broker here, so their sandbox is new and
   * empty. Each is held (`paused`) with a reason; `command` recreates what its pipeline built.
   */
  held: Array<{ machine: string; reason: string; command: string }>;
}

/** One thing wrong with an import, found before anything is written: the file and the field in it. */
export interface ImportProblem {
  file: string;
  /** JSON pointer into the file's document, when the problem is a field. */
  path?: string;
  /** Where in the file (1-based), when known. */
  line?: number;
  col?: number;
  message: string;
}

/** How an import reaches brokers: checked before anything is written, used only after the commit. */
export interface MachineStarter {
  /** Whether this endpoint has the broker (an export from elsewhere may name one it does not). */
  has(broker: string): boolean;
  /** Starts a created machine's agent through its broker. */
  start(machine: Machine, token: string): Promise<void>;
  /**
   * Whether the broker makes the machine a sandbox on this host (`local`, `netns`): restored here, the
   * machine's sandbox is new and empty, whatever its export says its pipeline built. Absent: none does.
   */
  sandboxed?(broker: string): boolean;
  /**
   * The power configuration `broker` gives machine `id` on this host when the broker powers its machines
   * itself (qemu: the VM's QMP socket in this data dir), else undefined: the export's is kept.
   */
  powerConfigFor?(broker: string, id: string): MachinePowerConfig | undefined;
}

/** How an import is asked: `dryRun` writes nothing; `allowUndeclared` stores params no content declares (as `machines update`). */
export interface ImportOptions {
  dryRun?: boolean;
  allowUndeclared?: boolean;
}

/** A machine as an export holds it. */
export interface MachineDoc {
  id: string;
  name: string;
  environment: string;
  broker: string | null;
  pipeline: string | null;
  profiles: string[];
  params: Record<string, unknown>;
  /** Left out when empty, so exports made before labels existed stay the same. */
  labels?: Record<string, string>;
  power: Machine['power'];
  /** Agentless machines: how the host is reached and the key pinned for it (the credential is not exported). */
  ssh?: SshSettings & { hostKey: HostKey | null };
  /** Network-booted machines: the MACs and UUID it boots as, its firmware and bootenv (model/boot.ts). */
  boot?: MachineBoot;
  /** Machines a power driver switches: the driver and its settings (model/power.ts; no secrets, only param names). */
  powerConfig?: MachinePowerConfig;
  /**
   * Observed: where the machine stands. Restored when the import creates the machine; for a machine that
   * exists, used only when the import changes its pipeline (restore.ts `placeOnReassign`), else ignored.
   */
  place?: Place;
  /** Observed: the outputs its jobs set (restored on create only). */
  outputs?: Record<string, unknown>;
  /** Observed: its build record (`takt machines record`), restored on create only. */
  built?: RecordEntry[];
}

/** A machine's place as an export holds it. `position`: every position field the machine has, by name. */
export interface Place {
  state: MachineState;
  reason: string | null;
  position: Record<string, unknown>;
}

/** The desired fields of a machine document: what import compares and changes on an existing machine. */
const DESIRED_KEYS = ['id', 'name', 'environment', 'broker', 'pipeline', 'profiles', 'params', 'power', 'ssh', 'labels', 'boot', 'powerConfig'] as const;
/**
 * Machine fields that are not its pipeline position. Every other field is position (stage and task
 * index, attempt, the approved stage, or whatever tracks it), so the export follows the model as it grows.
 */
// `host` (the replica holding a sandbox or VM, api/hosts.ts) is this endpoint's, never an export's: a
// machine restored elsewhere gets the importing replica's.
const NOT_POSITION = new Set<string>([...DESIRED_KEYS, 'state', 'reason', 'outputs', 'currentJob', 'facts', 'createdAt', 'updatedAt', 'agent', 'restoredPlace', 'host']);
/** The state a machine that was running is restored in: it keeps its place and waits for the operator. */
const HELD: MachineState = (MACHINE_STATES as readonly string[]).includes('paused') ? ('paused' as MachineState) : 'stopped';

/** The reason a restored machine that was running (or whose export had no place) carries. */
export function restoredReason(name: string, fromStart = false): string {
  return fromStart
    ? `restored from an export that holds no place; \`takt machines resume ${name}\` starts its pipeline from the beginning`
    : `restored from an export while it was running; \`takt machines resume ${name}\` continues where it was`;
}

/**
 * The reason a machine restored onto a new host is held with: its sandbox broker made it a new, empty
 * sandbox here, so what its pipeline built is not there; a restart runs the pipeline again from its first task.
 */
export function newHostReason(name: string): string {
  return `restored onto a new host: its sandbox here is new and empty; \`takt machines restart ${name}\` runs its pipeline from the first task to recreate it`;
}

/** Whether `m` is still held as an import restored it onto a new host (nothing has happened to it since). */
function heldForNewHost(m: Machine): m is Machine & { restoredPlace: NonNullable<Machine['restoredPlace']> } {
  return !!m.restoredPlace && m.state === HELD && m.reason === newHostReason(m.name);
}

function desiredDoc(d: MachineDoc): Partial<MachineDoc> {
  // No labels and empty labels are the same (an export leaves empty ones out).
  return Object.fromEntries(DESIRED_KEYS.filter((k) => d[k] !== undefined && !(k === 'labels' && Object.keys(d.labels!).length === 0)).map((k) => [k, d[k]]));
}

/** Where a machine stands, as a restore should find it: a running machine is held at its position. */
function placeOf(m: Machine): Place {
  const position = Object.fromEntries(Object.entries(m).filter(([k]) => !NOT_POSITION.has(k)));
  // Held only because this host is new to it: the place is still the one its export gave it.
  if (heldForNewHost(m)) return { state: m.restoredPlace.state, reason: m.restoredPlace.reason, position };
  if (m.state === 'running') return { state: HELD, reason: restoredReason(m.name), position };
  return { state: m.state, reason: m.reason, position };
}

const NameSchema = { type: 'string', pattern: NAME_PATTERN, description: 'lower-case name: letters, digits, . _ -' } as const;
const NullableName = { anyOf: [NameSchema, { type: 'null' }], description: 'a name or null' } as const;

const ManifestSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['format'],
  properties: {
    format: { const: EXPORT_FORMAT },
    inUse: { type: 'object', propertyNames: { pattern: NAME_PATTERN }, additionalProperties: { type: 'string', minLength: 1 } },
  },
} as const;

const MachineDocSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['id', 'name', 'environment', 'broker', 'pipeline', 'profiles', 'params', 'power'],
  properties: {
    id: { type: 'string', pattern: '^m-[a-z0-9]{1,40}$', description: 'machine id like m-1a2b3c' },
    name: NameSchema,
    environment: NameSchema,
    broker: NullableName,
    pipeline: NullableName,
    profiles: { type: 'array', items: NameSchema },
    params: { type: 'object', propertyNames: { pattern: PARAM_NAME_PATTERN } },
    labels: { type: 'object', additionalProperties: { type: 'string' }, description: 'key=value tags (checked like `--label`)' },
    power: { enum: ['on', 'off'] },
    place: {
      type: 'object',
      additionalProperties: false,
      required: ['state', 'reason', 'position'],
      properties: {
        state: { enum: [...MACHINE_STATES] },
        reason: { anyOf: [{ type: 'string' }, { type: 'null' }] },
        position: { type: 'object', description: 'pipeline position fields, e.g. stageIndex, taskIndex' },
      },
      description: "where the machine stands: restored when the import creates it, never 'running'",
    },
    outputs: { type: 'object', propertyNames: { pattern: PARAM_NAME_PATTERN }, description: 'what its jobs set (observed)' },
    built: {
      type: 'array',
      items: {
        type: 'object',
        required: ['job', 'task', 'stage', 'variant', 'pack', 'taskSha256', 'scriptSha256', 'params', 'finishedAt'],
        properties: {
          job: { type: 'string', pattern: '^j-[a-z0-9]{1,60}$' },
          task: NameSchema,
          stage: NullableName,
          variant: { type: 'string' },
          pack: { anyOf: [{ type: 'string' }, { type: 'null' }] },
          taskSha256: { anyOf: [{ type: 'string' }, { type: 'null' }] },
          scriptSha256: { anyOf: [{ type: 'string' }, { type: 'null' }] },
          params: { type: 'object' },
          finishedAt: { anyOf: [{ type: 'string' }, { type: 'null' }] },
        },
      },
      description: "its build record (`takt machines record`): the job that last built each task",
    },
    boot: {
      type: 'object',
      additionalProperties: false,
      required: ['macs', 'uuid', 'firmware', 'bootenv'],
      properties: {
        macs: { type: 'array', minItems: 1, items: { type: 'string' } },
        uuid: { anyOf: [{ type: 'string' }, { type: 'null' }] },
        firmware: { anyOf: [{ enum: ['bios', 'uefi'] }, { type: 'null' }] },
        bootenv: NameSchema,
        ip: { type: 'string' },
      },
      description: 'network-booted machines: macs, uuid, firmware, bootenv, ip (checked like `machines create --mac`)',
    },
    powerConfig: {
      type: 'object',
      required: ['driver'],
      properties: { driver: { type: 'string' } },
      additionalProperties: { anyOf: [{ type: 'string' }, { type: 'number' }, { type: 'boolean' }] },
      description: 'machines a power driver switches: driver and settings (checked like `machines create --power-driver`)',
    },
    ssh: {
      type: 'object',
      required: ['user', 'host', 'port', 'credential', 'hostKey'],
      properties: {
        hostKey: {
          anyOf: [{ type: 'null' }, { type: 'object', additionalProperties: false, required: ['type', 'fingerprint'], properties: { type: { type: 'string' }, fingerprint: { type: 'string', pattern: '^SHA256:' } } }],
        },
      },
      description: 'agentless machines: user, host, port, credential (by name: add it on this endpoint first), root, dir, hostKey',
    },
  },
} as const;

const sorted = (v: unknown): unknown => JSON.parse(canonicalJson(v));
/**
 * Export YAML. Core schema with the YAML 1.1 schema as `compat` (as src/cli/output.ts): a string a YAML 1.1
 * reader (Ansible, PyYAML) would take for a boolean or number — `power: "on"` — is quoted, because an export
 * is meant for git and other tools. Import reads with the core schema, so exports written before this (with
 * `power: on` bare) still read `on` as the string it was.
 */
const yaml = (v: unknown): string => stringify(sorted(v), { lineWidth: 0, schema: 'core', compat: 'yaml-1.1' });

/** The desired fields of a machine as an export holds them. */
function machineDoc(m: Machine): MachineDoc {
  const ssh = m.ssh ? { ...sshSettingsOf(m.ssh), hostKey: m.ssh.hostKey } : undefined;
  return { id: m.id, name: m.name, environment: m.environment, broker: m.broker, pipeline: m.pipeline, profiles: m.profiles, params: m.params, ...(Object.keys(m.labels).length ? { labels: m.labels } : {}), power: m.power, ...(ssh ? { ssh } : {}), ...(m.boot ? { boot: m.boot } : {}), ...(m.powerConfig ? { powerConfig: m.powerConfig } : {}) };
}

/** The job a restored build-record entry becomes: succeeded, with its own id, hashes and params. */
function restoredJob(machine: Machine, e: RecordEntry): Job {
  const at = e.finishedAt ?? machine.createdAt;
  return {
    id: e.job,
    machineId: machine.id,
    kind: 'pipeline',
    workOrderId: null,
    pipeline: machine.pipeline,
    stage: e.stage,
    task: e.task,
    variant: e.variant,
    state: 'succeeded',
    exitCode: 0,
    reason: 'restored from an export (build record)',
    script: '',
    params: e.params,
    outputs: {},
    timeoutMs: 0,
    leaseExpiresAt: null,
    createdAt: at,
    finishedAt: e.finishedAt,
    pack: e.pack,
    taskSha256: e.taskSha256,
    scriptSha256: e.scriptSha256,
  };
}

/** How a restored machine's agent gets back in touch with this endpoint. */
function reattachHow(m: Machine): string {
  if (m.ssh) return `reached over SSH as ${m.ssh.user}@${m.ssh.host}:${m.ssh.port} with credential '${m.ssh.credential}' (nothing to run on the host)`;
  if (m.broker) return `its agent was started by broker '${m.broker}' with a new token`;
  return `give its agent a new token: \`(umask 077; takt machines token ${m.name} --rotate > ${m.name}.token)\` (umask 077: the token file is readable by you alone), put it in the agent's token file (a joined host: /opt/takt/etc/token, mode 0600) and restart the agent with --endpoint set to this endpoint (a joined host also needs this endpoint's CA: see docs/remote.md)`;
}

export class Portable {
  constructor(
    private readonly store: Store,
    private readonly engine: Engine,
    private readonly content: ContentService,
    /** Build records to export; without it, exports carry none. */
    private readonly records?: Records,
  ) {}

  async export(): Promise<ExportFiles> {
    const files: ExportFiles = {};
    const inUse: Record<string, string> = {};
    for (const [name, pin] of this.content.pinned) inUse[name] = pin.version;
    files[MANIFEST] = yaml({ format: EXPORT_FORMAT, inUse });
    for (const v of await this.store.listPackVersions()) {
      const rec = await this.store.getPackVersion(v.name, v.version);
      // Versions installed before paths were checked may hold `../x`: such an export would write outside its directory.
      for (const path of Object.keys(rec!.files)) {
        const problem = packPathProblem(path);
        if (problem) throw new TaktError('conflict', `cannot export ${v.name}@${v.version}: its file path ${JSON.stringify(path)} ${problem}; remove that version`, { path: `packs/${v.name}/${v.version}` });
      }
      for (const [path, text] of Object.entries(rec!.files)) files[`packs/${v.name}/${v.version}/${path}`] = text;
    }
    for (const kind of CONTENT_KINDS) {
      for (const e of this.content.list(kind)) if (e.layer === LOCAL_LAYER) files[`local/${kind}/${e.name}.yaml`] = yaml(e.def);
    }
    // A large fleet is written out in slices, letting other requests through in between.
    const pace = new Pacer(1024 * 1024);
    for (let offset = 0; ; offset += 1000) {
      const page = await this.store.listMachines({ limit: 1000, offset });
      for (const m of page) {
        const built = this.records ? await this.records.allEntries(m) : [];
        const text = yaml({ ...machineDoc(m), place: placeOf(m), outputs: m.outputs, built });
        files[`machines/${m.name}.yaml`] = text;
        await pace.step(text.length);
      }
      if (page.length < 1000) break;
    }
    return Object.fromEntries(Object.entries(files).sort(([a], [b]) => (a < b ? -1 : 1)));
  }

  /**
   * Restores the desired state of an export, all or nothing. First every file is parsed and checked, and
   * the content and machines it describes are checked against each other and the store; a problem anywhere
   * refuses the whole import with nothing written. Then one transaction writes pack versions, pins, local
   * content and machines (each with its history entry and events). Only after it commits are created
   * machines' agents started through their brokers.
   * @throws TaktError (4xx) naming the file (`path`: file and field) of the first problem; all of them are in
   *   `details.problems` as { file, path?, message }.
   */
  async import(files: ExportFiles, author: string, starter: MachineStarter, opts: ImportOptions = {}): Promise<ImportResult> {
    const problems = new Problems();
    const { parsed, badMachines } = await this.parseExport(files, problems);
    // A problem in the manifest, a pack or a local object changes the content everything else is checked
    // against: those are answered alone. Machine files stand on their own, so with only their problems the
    // rest is checked too, and one answer names every problem.
    if (problems.list.some((p) => !p.file.startsWith('machines/'))) problems.throwIfAny();
    // The dry run and the import make the same plan, so they find the same problems: every check an import's
    // transaction would make is made here, before it (see Engine.updateProblems).
    const plan = await this.planImport(parsed, starter, { problems, skip: badMachines, allowUndeclared: opts.allowUndeclared });
    for (const { machine } of plan.creates) plan.result.reattach.push({ machine: machine.name, how: reattachHow(machine) });
    if (opts.dryRun) return { ...plan.result, dryRun: true };
    await this.store.transact((tx) => this.writeImport(tx, plan, author));
    this.content.adopt(plan.content, plan.pins);
    for (const { machine, token } of plan.creates) {
      if (!machine.broker) continue;
      try {
        await starter.start(machine, token);
      } catch (err) {
        plan.result.problems.push(`machines/${machine.name}: created, but its agent did not start: ${(err as Error).message}`);
      }
    }
    return plan.result;
  }

  /**
   * Puts a created machine where its export says it stands. A machine never arrives running: one that was
   * (or an export without a place, whose machine would start its pipeline) is held with a reason that says
   * it was restored, so no job is created until the operator resumes it.
   */
  private restorePlace(m: Machine, place: Place | undefined, file: string, problems: Problems): void {
    if (!place) {
      if (m.state === 'running') Object.assign(m, { state: HELD, reason: restoredReason(m.name, true) });
      return;
    }
    for (const [k, v] of Object.entries(place.position)) {
      const have = (m as unknown as Record<string, unknown>)[k];
      if (NOT_POSITION.has(k) || !Object.hasOwn(m, k) || (have !== null && v !== null && typeof have !== typeof v)) {
        problems.add(file, `'${k}' is not a position field of a machine on this endpoint`, `/place/position/${k}`);
        continue;
      }
      (m as unknown as Record<string, unknown>)[k] = v;
    }
    if (place.state === 'running') Object.assign(m, { state: HELD, reason: restoredReason(m.name) });
    else Object.assign(m, { state: place.state, reason: place.reason });
  }

  /** A machine's desired fields as an export (and `applyDesired`) holds them. */
  desiredOf(m: Machine): MachineDoc {
    return machineDoc(m);
  }

  /**
   * Makes the desired state equal `target`, all or nothing, with every check an import makes: the pins
   * (installed versions only), the local content (all of it: what is absent is deleted) and the desired
   * fields of the machines listed (machines not listed are left as they are, but must still resolve).
   * History's rewind uses it. `dryRun`: answers what it would do and writes nothing.
   * @throws TaktError('invalid') with every problem in details.problems; nothing is written then.
   */
  async applyDesired(target: DesiredState, author: string, opts: { dryRun?: boolean; nothing?: string; by?: string } = {}): Promise<ImportResult> {
    const local = new Map<string, LocalObject>();
    for (const l of target.local) local.set(`${l.kind}/${l.name}`, { ...l, file: `${l.kind}/${l.name}`, def: this.content.checkLocal(l.kind, l.def) });
    const parsed: ParsedExport = { inUse: target.inUse, versions: new Map(), local, machines: target.machines.map((doc) => ({ file: `machines/${doc.name}`, doc })) };
    // Params come back as they were once stored (perhaps with --allow-undeclared then): not refused again.
    const plan = await this.planImport(parsed, { has: () => false, start: async () => undefined }, { partial: true, nothing: opts.nothing, by: opts.by, allowUndeclared: true });
    if (opts.dryRun) return { ...plan.result, dryRun: true };
    await this.store.transact((tx) => this.writeImport(tx, plan, author));
    this.content.adopt(plan.content, plan.pins);
    return plan.result;
  }

  /**
   * Every file of an export parsed and checked on its own; each problem is added to `problems` (none is
   * thrown). `badMachines`: the names of the machine files that had one, left out of `parsed`.
   * @throws TaktError bad_request when `files` is not an export at all (no manifest, a path that is not plain).
   */
  private async parseExport(files: ExportFiles, problems: Problems): Promise<{ parsed: ParsedExport; badMachines: Set<string> }> {
    if (typeof files !== 'object' || files === null) throw new TaktError('bad_request', 'an import is an object of files: path -> text');
    assertPlainPaths(files, 'import');
    if (files[MANIFEST] === undefined) throw new TaktError('bad_request', `${MANIFEST} is missing: not a takt export (made by \`takt export\`)`, { path: MANIFEST });
    const out: ParsedExport = { inUse: {}, versions: new Map(), local: new Map(), machines: [] };
    const badMachines = new Set<string>();

    const manifest = problems.yaml(MANIFEST, files[MANIFEST]);
    if (manifest !== undefined) {
      if (typeof manifest !== 'object' || manifest === null || (manifest as { format?: unknown }).format !== EXPORT_FORMAT) {
        problems.add(MANIFEST, `not a ${EXPORT_FORMAT} export (made by \`takt export\`)`, '/format');
      } else if (problems.schema(MANIFEST, ManifestSchema, manifest)) {
        out.inUse = (manifest as { inUse?: Record<string, string> }).inUse ?? {};
      }
    }

    const names = new Map<string, string>();
    const ids = new Map<string, string>();
    // Parsing is CPU: a large import is parsed in slices, letting other requests through in between.
    const pace = new Pacer(1024 * 1024);
    for (const [file, text] of Object.entries(files)) {
      if (file === MANIFEST) continue;
      await pace.step(typeof text === 'string' ? text.length : 1);
      const pack = /^packs\/([^/]+)\/([^/]+)\/(.+)$/.exec(file);
      const local = /^local\/([^/]+)\/([^/]+)\.yaml$/.exec(file);
      const machine = /^machines\/([^/]+)\.yaml$/.exec(file);
      if (pack) {
        const [, name, version, path] = pack as unknown as [string, string, string, string];
        if (!new RegExp(NAME_PATTERN).test(name)) {
          problems.add(file, `'${name}' is not a pack name (lower-case letters, digits, . _ -)`);
          continue;
        }
        const key = `${name}@${version}`;
        const v = out.versions.get(key) ?? { name, version, files: {} };
        v.files[path] = text;
        out.versions.set(key, v);
      } else if (local) {
        const [, kind, name] = local as unknown as [string, string, string];
        if (!(CONTENT_KINDS as readonly string[]).includes(kind)) {
          problems.add(file, `'${kind}' is not a content kind (${CONTENT_KINDS.join(', ')})`);
          continue;
        }
        const def = problems.yaml(file, text);
        if (def === undefined) continue;
        if (!problems.object(file, def, KIND_NOUN[kind as ContentKind])) continue;
        if (!problems.schema(file, CONTENT_SCHEMAS[kind as ContentKind], def)) continue;
        if ((def as { name: string }).name !== name) {
          problems.add(file, `name '${(def as { name: string }).name}' does not match the file name '${name}'`, '/name');
          continue;
        }
        out.local.set(`${kind}/${name}`, { kind: kind as ContentKind, name, file, def: this.content.checkLocal(kind as ContentKind, def) });
      } else if (machine) {
        const before = problems.list.length;
        this.parseMachine(file, machine[1]!, text, problems, ids, names, out);
        if (problems.list.length > before) badMachines.add(machine[1]!);
      } else {
        problems.add(file, 'not part of an export (takt-export.yaml, packs/NAME/VERSION/…, local/KIND/NAME.yaml, machines/NAME.yaml)');
      }
    }
    return { parsed: out, badMachines };
  }

  /** One `machines/NAME.yaml` parsed and checked on its own (schema, name, unique id and name), into `out`. */
  private parseMachine(file: string, name: string, text: string, problems: Problems, ids: Map<string, string>, names: Map<string, string>, out: ParsedExport): void {
    const doc = problems.yaml(file, text);
    if (doc === undefined) return;
    if (!problems.object(file, doc, 'machine')) return;
    if (!problems.schema(file, MachineDocSchema, doc)) return;
    const m = doc as MachineDoc;
    if (m.name !== name) problems.add(file, `name '${m.name}' does not match the file name '${name}'`, '/name');
    else if (ids.has(m.id)) problems.add(file, `machine id '${m.id}' is also the id in ${ids.get(m.id)}`, '/id');
    else if (names.has(m.name)) problems.add(file, `machine name '${m.name}' is also in ${names.get(m.name)}`, '/name');
    else {
      ids.set(m.id, file);
      names.set(m.name, file);
      out.machines.push({ file, doc: m });
    }
  }

  /** What the import would change, checked against the store and the content it would make; throws every problem found. */
  private async planImport(
    parsed: ParsedExport,
    starter: MachineStarter,
    opts: { partial?: boolean; nothing?: string; by?: string; problems?: Problems; skip?: Set<string>; allowUndeclared?: boolean } = {},
  ): Promise<ImportPlan> {
    const problems = opts.problems ?? new Problems(opts.nothing);
    const result: ImportResult = { dryRun: false, changes: [], reattach: [], packVersionsInstalled: [], inUse: parsed.inUse, content: { created: 0, updated: 0, deleted: 0 }, machines: { created: [], updated: [] }, problems: [], notes: [], held: [] };
    const now = new Date().toISOString();

    // Secure values are checked clear and stored sealed: a version's identity is its sealed digest (an HMAC
    // of each secure value, as installPack computes it), its files and objects are written sealed below.
    const isSecure = this.content.securePolicy([
      ...[...parsed.versions.values()].flatMap((v) => lintPack(v.files).objects),
      ...[...parsed.local.values()].map((l) => ({ kind: l.kind, def: l.def as unknown })),
    ]);
    const sealedOf = new Map<string, SealedPack>();

    // Pack versions: new ones are linted below against the content as it will be; installed ones must be the same.
    const records = new Map<string, PackRecord>();
    const newVersions: PackRecord[] = [];
    for (const [ref, v] of parsed.versions) {
      const dir = `packs/${v.name}/${v.version}/`;
      let sealed: SealedPack;
      try {
        sealed = this.content.sealVersion(v.files, isSecure);
      } catch (err) {
        if (!(err instanceof TaktError)) throw err;
        problems.add(dir, err.message, err.path);
        continue;
      }
      sealedOf.set(ref, sealed);
      const digest = sealed.sha256;
      // A value sealed by another endpoint cannot be opened here: a job would fail when it renders it.
      let foreign = false;
      for (const o of lintPack(v.files).objects) {
        for (const at of this.engine.foreignSealed(o.def)) {
          foreign = true;
          problems.add(`${dir}${o.file}`, foreignMessage(`install that pack version with the value in clear on this endpoint (\`takt content install\`) and remove packs/${v.name}/${v.version}/ from the export`), at);
        }
      }
      const existing = await this.store.getPackVersion(v.name, v.version);
      if (existing) {
        if (existing.sha256 !== digest && !foreign) {
          problems.add(dir, `${ref} is installed here with different content (sha256 ${existing.sha256.slice(0, 12)}, the export's is ${digest.slice(0, 12)}); a published version never changes`);
        }
        records.set(ref, existing);
        continue;
      }
      const m = lintPack(v.files).manifest;
      if (!m) {
        // Its pack.yaml problems are reported with positions by the lint below.
        records.set(ref, { name: v.name, version: v.version, description: null, requires: {}, files: v.files, sha256: digest, installedAt: now });
        continue;
      }
      if (m.name !== v.name || m.version !== v.version) problems.add(`${dir}pack.yaml`, `says ${m.name}@${m.version}, but the export holds it as ${ref}`);
      const rec: PackRecord = { name: v.name, version: v.version, description: m.description ?? null, requires: m.requires ?? {}, files: v.files, sha256: digest, installedAt: now };
      records.set(ref, rec);
      newVersions.push(rec);
    }

    // The pins the export asks for.
    const pins: Pins = new Map();
    const pinned: PackRecord[] = [];
    for (const [name, version] of Object.entries(parsed.inUse)) {
      const rec = records.get(`${name}@${version}`) ?? (await this.store.getPackVersion(name, version));
      if (!rec) {
        problems.add(MANIFEST, `${name}@${version} is in use in the export, but neither in it nor installed here`, `/inUse/${name}`);
        continue;
      }
      pins.set(name, { version, requires: rec.requires ?? {} });
      pinned.push(rec);
    }

    // The content as it will be: the pinned packs' objects and the local ones, each name owned once.
    const content = emptyContentSet();
    const objectsOf = new Map<string, LintResult['objects']>();
    const owner = new Map<string, string>();
    const claim = (kind: ContentKind, name: string, layer: string, def: ContentObject, file: string) => {
      const key = `${kind}/${name}`;
      const other = owner.get(key);
      if (other) return problems.add(file, `${KIND_NOUN[kind]} '${name}' is also defined by ${other}; names are unique per kind`, '/name');
      owner.set(key, layer === LOCAL_LAYER ? `local/${key}.yaml` : `pack '${layer}'`);
      (content.objects[kind] as Map<string, { def: unknown; layer: string }>).set(name, { def, layer });
    };
    for (const rec of pinned) {
      const objects = lintPack(rec.files).objects;
      objectsOf.set(rec.name, objects);
      for (const o of objects) claim(o.kind, (o.def as { name: string }).name, rec.name, o.def, `packs/${rec.name}/${rec.version}/${o.file}`);
    }
    for (const l of parsed.local.values()) {
      claim(l.kind, l.name, LOCAL_LAYER, l.def, l.file);
      for (const at of this.engine.foreignSealed(l.def)) problems.add(l.file, foreignMessage(`remove the value from ${l.file} and set it after the import (\`takt ${l.kind} update ${l.name} …\`)`), at);
    }

    // Every version the import installs or runs must lint clean against that content.
    const linted = new Set<string>();
    for (const rec of [...newVersions, ...pinned]) {
      const ref = `${rec.name}@${rec.version}`;
      if (linted.has(ref)) continue;
      linted.add(ref);
      for (const d of lintPack(rec.files, content).diagnostics) {
        problems.add(`packs/${rec.name}/${rec.version}/${d.file}`, d.message, d.path, d);
      }
    }
    const localRefs = [...parsed.local.values()].map((l) => ({ kind: l.kind, name: l.name }));
    for (const p of checkContentSet(content, localRefs)) problems.add(`local/${p.kind}/${p.name}.yaml`, p.message, p.path);
    try {
      assertRequires(pins, 'importing');
    } catch (err) {
      if (!(err instanceof TaktError)) throw err;
      problems.add(MANIFEST, err.message, '/inUse');
    }

    // Content changes against what runs now.
    const current = this.content.current;
    const pinChanges = pinned.filter((rec) => this.content.pinned.get(rec.name)?.version !== rec.version);
    const unpins = [...this.content.pinned.keys()].filter((name) => !pins.has(name));
    const localPuts: LocalObject[] = [];
    const localDeletes: Array<{ kind: ContentKind; name: string }> = [];
    for (const l of parsed.local.values()) {
      const have = current.objects[l.kind].get(l.name);
      if (have && have.layer === LOCAL_LAYER && canonicalJson(have.def) === canonicalJson(l.def)) continue;
      localPuts.push(l);
      result.content[have?.layer === LOCAL_LAYER ? 'updated' : 'created'] += 1;
    }
    for (const kind of CONTENT_KINDS) {
      for (const [name, o] of current.objects[kind]) {
        if (o.layer === LOCAL_LAYER && !parsed.local.has(`${kind}/${name}`)) localDeletes.push({ kind, name });
      }
    }
    result.content.deleted = localDeletes.length;

    // Machines: those in the export are created or changed; the others keep theirs and must still resolve.
    const creates: ImportPlan['creates'] = [];
    const updates: ImportPlan['updates'] = [];
    const seen = new Set<string>();
    for (const { file, doc } of parsed.machines) {
      seen.add(doc.id);
      const have = await this.store.getMachine(doc.id);
      // Secure values sealed by another endpoint: its params, and the outputs a created machine gets.
      const fix = (at: string) => `remove it from ${file} and set it after the import: \`takt machines update ${doc.name} --param ${at.split('/')[2] ?? 'NAME'}=VALUE\``;
      for (const at of this.engine.foreignSealed(doc.params, '/params')) problems.add(file, foreignMessage(fix(at)), at);
      if (!have) for (const at of this.engine.foreignSealed(doc.outputs ?? {}, '/outputs')) problems.add(file, foreignMessage(`remove it from ${file} (an output: its task sets it again when it runs)`), at);
      const refs = refProblems(content, doc);
      if (refs.length > 0) {
        for (const r of refs) problems.add(file, r.message, r.path);
        continue;
      }
      try {
        if (!have) {
          // Params no content declares are refused as `machines create` refuses them (unless --allow-undeclared).
          for (const e of this.engine.undeclaredProblems(content, doc.params, opts.allowUndeclared)) problems.add(file, e.message, e.path);
          // The credential an agentless machine names (insertMachine checks it again in the transaction).
          if (doc.ssh && !(await this.store.getCredential(doc.ssh.credential))) {
            problems.add(file, `credential '${doc.ssh.credential}' not found; add it with \`takt credentials add ${doc.ssh.credential} --ssh-key FILE\``, '/ssh/credential');
          }
          const broker = doc.broker && starter.has(doc.broker) ? doc.broker : null;
          if (doc.broker && !broker) result.problems.push(`machines/${doc.name}: broker '${doc.broker}' does not exist here; created without one`);
          const { ssh, ...rest } = doc;
          const settings = ssh ? (({ hostKey: _pinned, ...set }) => set)(ssh) : undefined;
          const { place, outputs, built, ...desired } = rest;
          const made = await this.engine.newMachine({ ...desired, broker, ...(settings ? { ssh: settings } : {}) }, content);
          made.machine.power = doc.power;
          // A broker that powers its machines (qemu) says where this one's controls are here.
          const own = broker ? starter.powerConfigFor?.(broker, made.machine.id) : undefined;
          if (own) made.machine.powerConfig = own;
          this.restorePlace(made.machine, place, file, problems);
          made.machine.outputs = outputs ?? {};
          // A sandbox made here is new and empty: what the pipeline built is not in it. Held, keeping the place
          // its export gave it (for a byte-identical export), until a restart builds it again.
          if (broker && made.machine.pipeline && starter.sandboxed?.(broker)) {
            made.machine.restoredPlace = { state: made.machine.state, reason: made.machine.reason };
            Object.assign(made.machine, { state: HELD, reason: newHostReason(made.machine.name) });
            result.held.push({ machine: doc.name, reason: made.machine.reason!, command: `takt machines restart ${doc.name}` });
          }
          const jobs: Job[] = [];
          for (const [i, e] of (built ?? []).entries()) {
            if (await this.store.getJob(e.job)) problems.add(file, `job id '${e.job}' of its build record is taken on this endpoint`, `/built/${i}/job`);
            else jobs.push(restoredJob(made.machine, e));
          }
          // The pin travels with the machine: the host must present the key it was trusted with.
          if (made.machine.ssh && ssh) made.machine.ssh.hostKey = ssh.hostKey;
          creates.push({ ...made, jobs });
          result.machines.created.push(doc.name);
          result.changes.push(`create machines/${doc.name} (${made.machine.state}${made.machine.pipeline ? ` on ${made.machine.pipeline}` : ''}${jobs.length ? `, build record of ${jobs.length} task${jobs.length === 1 ? '' : 's'}` : ''})`);
        } else if (canonicalJson(desiredDoc(machineDoc(have))) !== canonicalJson(desiredDoc(doc))) {
          const patch: MachinePatch & { power?: Machine['power'] } = patchTowards(have, doc);
          if (have.power !== doc.power) patch.power = doc.power;
          if (have.ssh && doc.ssh && canonicalJson(sshSettingsOf(have.ssh)) !== canonicalJson((({ hostKey: _k, ...set }) => set)(doc.ssh))) {
            const { hostKey: _k, ...set } = doc.ssh;
            patch.ssh = { ...set, root: set.root ?? null, dir: set.dir ?? null };
          }
          // Every check the transaction's updateMachineIn makes, made here: a dry run finds what the import would.
          const found = await this.engine.updateProblems(have, patch, content, { allowUndeclared: opts.allowUndeclared });
          for (const e of found) problems.add(file, e.message, e.path);
          if (found.length > 0) continue;
          // Desired state goes back, observed state stays (restore.ts): outputs are kept, and a machine whose
          // pipeline changes takes the export's place there when it is valid, else it is held at the start.
          const restore: RestoreWrite = {};
          if (patch.pipeline) {
            const shape = this.engine.shapeOf(content, patch.pipeline);
            const decided = placeOnReassign(have.name, have.pipeline, patch.pipeline, shape, recordedOf(doc.place), opts.by ?? 'an import');
            restore.place = decided.place;
            result.notes.push(decided.note);
          }
          if (patch.params) result.notes.push(...shadowedParams(have, patch.params).map((n) => `${have.name}: ${n}`));
          updates.push({ file, id: doc.id, patch, restore });
          result.machines.updated.push(doc.name);
          result.changes.push(`update machines/${have.name}: ${patchFields(patch).join(', ')}`);
        } else {
          // Unchanged, but the content it runs may change under it.
          for (const e of attempt(() => assertEnvironment(content, doc.name, doc.environment, doc.pipeline))) problems.add(file, e.message, e.path);
        }
      } catch (err) {
        if (!(err instanceof TaktError)) throw err;
        problems.add(file, err.message, err.path);
      }
    }
    for (let offset = 0; ; offset += 1000) {
      const page = await this.store.listMachines({ limit: 1000, offset });
      for (const m of page) {
        if (seen.has(m.id) || opts.skip?.has(m.name)) continue;
        const refs = [...refProblems(content, m), ...attempt(() => assertEnvironment(content, m.name, m.environment, m.pipeline)).map((e) => ({ path: e.path ?? '/environment', message: e.message }))];
        if (refs.length > 0) {
          for (const r of refs) problems.add(opts.partial ? `machines/${m.name}` : `machines/${m.name}.yaml`, opts.partial ? `${r.message} once this is applied; change or delete the machine first` : `not in the export, and ${r.message} after the import; change or delete the machine first`, r.path);
        }
        else if (!opts.partial) result.problems.push(`machines/${m.name}: not in the export; left as it is (delete it if it should go)`);
      }
      if (page.length < 1000) break;
    }
    problems.throwIfAny();
    result.packVersionsInstalled = newVersions.map((v) => `${v.name}@${v.version}`);
    result.changes.unshift(
      ...result.packVersionsInstalled.map((v) => `install ${v}`),
      ...pinChanges.map((rec) => `use ${rec.name}@${rec.version}${this.content.pinned.get(rec.name) ? ` (was ${this.content.pinned.get(rec.name)!.version})` : ''}`),
      ...unpins.map((name) => `stop using pack ${name} (was ${this.content.pinned.get(name)!.version})`),
      ...localPuts.map((l) => `${current.objects[l.kind].get(l.name)?.layer === LOCAL_LAYER ? 'update' : 'create'} ${l.kind}/${l.name}`),
      ...localDeletes.map((d) => `delete ${d.kind}/${d.name}`),
    );
    return {
      ...this.sealed({ content, newVersions, objectsOf, localPuts, pins }, sealedOf, isSecure),
      pins,
      pinChanges: pinChanges.map((rec) => ({ rec, objects: objectsOf.get(rec.name) ?? [] })),
      unpins,
      localDeletes,
      creates,
      updates,
      result,
    };
  }

  /**
   * The checked plan's content as it is stored and run: new versions' files and objects, local objects and
   * the content set with their secure values sealed (everything was checked with clear values before).
   * Mutates `objectsOf` to the sealed objects.
   */
  private sealed(
    plan: { content: ContentSet; newVersions: PackRecord[]; objectsOf: Map<string, LintResult['objects']>; localPuts: LocalObject[]; pins: Pins },
    sealedOf: Map<string, SealedPack>,
    isSecure: IsSecure,
  ): Pick<ImportPlan, 'content' | 'newVersions' | 'localPuts'> {
    const newVersions = plan.newVersions.map((rec) => {
      const s = sealedOf.get(`${rec.name}@${rec.version}`);
      return s ? { ...rec, files: s.files, sha256: s.sha256 } : rec;
    });
    const content = emptyContentSet();
    for (const kind of CONTENT_KINDS) {
      for (const [name, o] of plan.content.objects[kind]) {
        const def = o.layer === LOCAL_LAYER ? this.content.sealLocal(kind, o.def, isSecure) : o.def;
        (content.objects[kind] as Map<string, { def: unknown; layer: string }>).set(name, { def, layer: o.layer });
      }
    }
    // Pinned versions new to this endpoint run their sealed objects; installed ones were stored sealed.
    for (const pack of [...plan.objectsOf.keys()]) {
      const rec = newVersions.find((v) => v.name === pack && v.version === plan.pins.get(pack)?.version);
      if (!rec) continue;
      const sealed = lintPack(rec.files).objects;
      plan.objectsOf.set(pack, sealed);
      for (const o of sealed) (content.objects[o.kind] as Map<string, { def: unknown; layer: string }>).set((o.def as { name: string }).name, { def: o.def, layer: pack });
    }
    const localPuts = plan.localPuts.map((l) => ({ ...l, def: (content.objects[l.kind].get(l.name)?.def ?? l.def) as ContentObject }));
    return { content, newVersions, localPuts };
  }

  /** The import's writes, in one transaction. Layers are cleared before any object is put, so an object may move between layers. */
  private async writeImport(tx: Tx, plan: ImportPlan, author: string): Promise<void> {
    for (const rec of plan.newVersions) await this.content.writeVersion(tx, rec, author);
    for (const { kind, name } of plan.localDeletes) await this.content.writeDeleteLocal(tx, kind, name, author);
    for (const name of plan.unpins) await this.content.writeUnpin(tx, name, author);
    for (const { rec } of plan.pinChanges) await this.content.writeClearLayer(tx, rec.name);
    for (const { rec, objects } of plan.pinChanges) await this.content.writePin(tx, rec, objects, author, { cleared: true });
    for (const l of plan.localPuts) await this.content.writeLocal(tx, l.kind, l.def, author);
    for (const { machine, token, jobs } of plan.creates) {
      await this.engine.insertMachine(tx, machine, token, author);
      for (const job of jobs) await tx.insertJob(job);
    }
    for (const { file, id, patch, restore } of plan.updates) {
      try {
        await this.engine.updateMachineIn(tx, id, patch, author, plan.content, restore);
      } catch (err) {
        // Checks that need the transaction (a param's schema, a pipeline's required params) roll it all back.
        if (err instanceof TaktError) throw new TaktError(err.code, `${file}: ${err.message}`, { path: `${file}${err.path ?? ''}`, details: { problems: [{ file, path: err.path, message: err.message }] } });
        throw err;
      }
    }
  }
}

interface LocalObject {
  kind: ContentKind;
  name: string;
  file: string;
  def: ContentObject;
}

/** The desired state `applyDesired` makes: pins, every local object, and the machines it changes. */
export interface DesiredState {
  inUse: Record<string, string>;
  local: Array<{ kind: ContentKind; name: string; def: unknown }>;
  machines: MachineDoc[];
}

interface ParsedExport {
  inUse: Record<string, string>;
  versions: Map<string, { name: string; version: string; files: Record<string, string> }>;
  local: Map<string, LocalObject>;
  machines: Array<{ file: string; doc: MachineDoc }>;
}

interface ImportPlan {
  content: ContentSet;
  pins: Pins;
  newVersions: PackRecord[];
  pinChanges: Array<{ rec: PackRecord; objects: LintResult['objects'] }>;
  unpins: string[];
  localPuts: LocalObject[];
  localDeletes: Array<{ kind: ContentKind; name: string }>;
  creates: Array<{ machine: Machine; token: string; jobs: Job[] }>;
  updates: Array<{ file: string; id: string; patch: MachinePatch & { power?: Machine['power'] }; restore: RestoreWrite }>;
  result: ImportResult;
}

/** An export's place as restore.ts reads it; an export's position without identity fields (older takt) is none. */
export function recordedOf(place: Place | undefined): RecordedPlace | null {
  const p = place?.position;
  if (!place || !p || !Array.isArray(p.passed)) return null;
  const str = (v: unknown) => (typeof v === 'string' ? v : null);
  return { state: place.state, reason: place.reason, stage: str(p.stage), task: str(p.task), passed: p.passed.filter((k): k is string => typeof k === 'string'), approvedStage: str(p.approvedStage) };
}

/**
 * The problem of a secure value sealed with another endpoint's key, and how to fix it: carry that
 * endpoint's secret.key, or `otherwise` (set the value again after the import).
 */
export function foreignMessage(otherwise: string): string {
  return `this secure value was sealed with another endpoint's key (its data/secret.key) and cannot be opened here; a job would fail when it renders it. Put that endpoint's secret.key in this endpoint's data dir (stop it, copy the file with mode 0600, start it) and import again, or ${otherwise}`;
}

/** A machine's references into content (pipeline, profiles) that `content` cannot resolve. */
function refProblems(content: ContentSet, m: Pick<Machine, 'pipeline' | 'profiles'>): Array<{ path: string; message: string }> {
  const out: Array<{ path: string; message: string }> = [];
  if (m.pipeline && !content.objects.pipelines.has(m.pipeline)) out.push({ path: '/pipeline', message: `pipeline '${m.pipeline}' does not exist` });
  m.profiles.forEach((p, i) => {
    if (!content.objects.profiles.has(p)) out.push({ path: `/profiles/${i}`, message: `profile '${p}' does not exist` });
  });
  return out;
}

/** The problems of an import, collected so one answer names all of them. */
class Problems {
  readonly list: ImportProblem[] = [];

  /** `nothing`: what the refusal says was done, e.g. `nothing was imported`. */
  constructor(private readonly nothing = 'nothing was imported') {}

  add(file: string, message: string, path?: string, pos?: { line: number; col: number }): void {
    this.list.push({ file, ...(path ? { path } : {}), ...(pos ? { line: pos.line, col: pos.col } : {}), message });
  }

  /** The document of a YAML file, or undefined (with the problem recorded) when it cannot be read. */
  yaml(file: string, text: string): unknown {
    try {
      return parseYamlValue(text, file);
    } catch (err) {
      if (!(err instanceof TaktError)) throw err;
      // parseYamlValue says `file:line:col: message`; keep the position as fields.
      const m = /^.*?:(\d+):(\d+): (.*)$/s.exec(err.message);
      if (m) this.add(file, m[3]!, undefined, { line: Number(m[1]), col: Number(m[2]) });
      else this.add(file, err.message);
      return undefined;
    }
  }

  /** Whether `doc` is a mapping; an empty file or a scalar is a problem naming what the file should hold. */
  object(file: string, doc: unknown, noun: string): boolean {
    if (typeof doc === 'object' && doc !== null && !Array.isArray(doc)) return true;
    const got = doc === null ? 'an empty file' : Array.isArray(doc) ? 'a list' : `a ${typeof doc} (${JSON.stringify(doc)})`;
    this.add(file, `expected a ${noun} (a mapping of fields), found ${got}`);
    return false;
  }

  /** Whether `doc` fits `schema`; each misfit is a problem at its field. */
  schema(file: string, schema: object, doc: unknown): boolean {
    const found = schemaProblems(schema, doc);
    for (const p of found) this.add(file, p.message, p.path);
    return found.length === 0;
  }

  /** Refuses the import with every problem; the message and `path` name the first (file and field). */
  throwIfAny(): void {
    const first = this.list[0];
    if (!first) return;
    const more = this.list.length > 1 ? ` (and ${this.list.length - 1} more problem${this.list.length > 2 ? 's' : ''}; ${this.nothing})` : ` (${this.nothing})`;
    const at = first.line !== undefined ? `:${first.line}:${first.col}` : '';
    throw new TaktError('invalid', `${first.file}${at}${first.path ? ` ${first.path}` : ''}: ${first.message}${more}`, {
      path: `${first.file}${first.path ?? ''}`,
      details: { problems: this.list },
    });
  }
}

/** The fields a machine patch changes, for the changes an import lists. */
function patchFields(patch: MachinePatch & { power?: Machine['power'] }): string[] {
  return Object.entries(patch).flatMap(([k, v]) => (k === 'params' && v ? Object.keys(v as object).map((p) => `params.${p}`) : [k]));
}
