/**
 * Build records: what produced a machine, task by task (pack@version, task hash, script hash, params),
 * and the questions operators ask of them — which machines were built with a version, which are stale.
 */
import { matchesLabels, type LabelSelector } from '../model/labels.js';
import semver from 'semver';
import { TaktError } from '../model/errors.js';
import { factMatches } from '../model/factselect.js';
import type { Job, Machine, MachineState } from '../model/machine.js';
import { imageRef, jobImage } from '../model/image.js';
import type { Reads } from '../store/store.js';
import type { ContentService } from './content.js';
import { canonicalJson, hashObject } from '../model/hash.js';
import { prepareTask } from './prepare.js';
import { MASK, type Sealer } from '../model/secure.js';

export interface RecordEntry {
  stage: string | null;
  task: string;
  job: string;
  variant: string;
  pack: string | null;
  taskSha256: string | null;
  scriptSha256: string | null;
  params: Job['params'];
  finishedAt: string | null;
  /** The image this job wrote to the machine's disk (`takt-image`), when it wrote one. */
  image?: { name: string; version: string; sha256: string };
}

export interface MachineRecord {
  machine: string;
  pipeline: string | null;
  /** One entry per task of the CURRENT pipeline that has run (by stage/task identity), in pipeline order. */
  entries: RecordEntry[];
  /**
   * Entries of tasks no longer in the machine's pipeline (removed, or moved to another stage): shown so an
   * operator sees what once ran, never used for `--built-with` or `--stale` (else a machine rebuilt end to
   * end with a fixed version would match its old version forever).
   */
  leftover: RecordEntry[];
  /** Why the machine no longer matches what it would be built with now (empty when current). */
  stale: string[];
  /** `name@version` of each image the current pipeline's tasks wrote (the newest write per task), beside the packs. */
  images: string[];
}

/** A `--built-with` selector: a pack version range, or (with `image:`) an image version range. */
export interface BuiltWith {
  kind: 'pack' | 'image';
  /** The pack's or the image's name. */
  pack: string;
  /** A semver range; `*` for any version. */
  range: string;
}

/**
 * Parses a `--built-with` selector: `demo@<1.2.0`, `demo@1.0.0`, `demo` (any version) for a pack;
 * `image:debian-min@<2`, `image:debian-min` for the image a machine's disk was written with.
 * @throws TaktError bad_request naming both forms.
 */
export function parseBuiltWith(sel: string): BuiltWith {
  const kind = sel.startsWith('image:') ? 'image' : 'pack';
  const rest = kind === 'image' ? sel.slice('image:'.length) : sel;
  const at = rest.indexOf('@');
  const pack = at < 0 ? rest : rest.slice(0, at);
  const range = at < 0 ? '*' : rest.slice(at + 1);
  if (!/^[a-z0-9][a-z0-9._-]*$/.test(pack) || semver.validRange(range) === null) {
    throw new TaktError('bad_request', `'${sel}' is not PACK[@RANGE] or image:IMAGE[@RANGE] (e.g. demo@<1.2.0, demo@1.0.0, demo, image:debian-min@<2)`, { path: 'builtWith' });
  }
  return { kind, pack, range };
}

/** Which machines an operator means: the list filters plus build-record ones. */
export interface MachineSelection {
  state?: MachineState;
  pipeline?: string;
  environment?: string;
  broker?: string;
  name?: string;
  /** `demo@<1.2.0`, or `image:debian-min@<2` */
  builtWith?: string;
  stale?: boolean;
  /** Label selector terms (model/labels.ts); all must hold. */
  labels?: LabelSelector;
  /** Observed facts by dotted path, e.g. `{ 'os.id': 'debian' }` (model/factselect.ts factMatches); all must match. */
  facts?: Record<string, string>;
}

/**
 * The outputs a staleness check renders a task with now: only those the task saw when it ran (its record
 * names them `from: outputs`), with the value it saw, and only while the machine still has that output.
 *
 * Staleness asks whether the *desired* inputs of a task changed since it ran; outputs are observed. So:
 * - an output the task saw is no change, whatever value the machine has now (a later run of the task that
 *   sets it made a new one: a value a job set is never a change);
 * - an output the task did not see — set later, e.g. by a later task of the same pass that sets a param an
 *   earlier task reads — is no change either: the task is compared with the desired value beneath it;
 * - an output the task saw that the machine no longer has was replaced by a param the operator set (the
 *   only way an output goes): that desired value is compared with what the task saw.
 * A secure output is recorded masked; the machine's value stands in for it.
 */
export function outputsAsRan(ran: RecordEntry['params'], outputs: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, p] of Object.entries(ran)) {
    if (p.from !== 'outputs' || !Object.hasOwn(outputs, name)) continue;
    out[name] = p.value === MASK ? outputs[name] : p.value;
  }
  return out;
}

/** A job's record of the image it wrote, as an entry carries it. */
function imageOf(j: Job): Pick<RecordEntry, 'image'> {
  const i = jobImage(j.outputs);
  return i ? { image: { name: i.name, version: i.version, sha256: i.sha256 } } : {};
}

export class Records {
  constructor(
    /** The store, or a transaction's reads (the image catalog's guard runs in its removal's transaction). */
    private readonly store: Pick<Reads, 'listJobs' | 'listMachines'>,
    private readonly content: ContentService,
    private readonly sealer: Sealer,
  ) {}

  /** The newest successful job for each task of the machine's current pipeline, in pipeline order. */
  async entries(m: Machine): Promise<RecordEntry[]> {
    return (await this.split(m)).entries;
  }

  /** Every task's newest successful job, current pipeline or not (export keeps the whole history). */
  async allEntries(m: Machine): Promise<RecordEntry[]> {
    const { entries, leftover } = await this.split(m);
    return [...entries, ...leftover];
  }

  /**
   * The newest successful job per stage/task, split into the tasks of the current pipeline (in its order)
   * and leftovers of tasks it no longer has. Identity is stage/task, as in `passed` (transitions.ts): a task
   * moved to another stage is a different task.
   */
  async split(m: Machine): Promise<{ entries: RecordEntry[]; leftover: RecordEntry[] }> {
    const jobs = await this.store.listJobs({ machineId: m.id, state: 'succeeded', order: 'desc', limit: 1000 });
    const latest = new Map<string, Job>();
    for (const j of jobs) {
      if (j.kind !== 'pipeline' || j.pipeline !== m.pipeline) continue;
      const key = `${j.stage}/${j.task}`;
      if (!latest.has(key)) latest.set(key, j);
    }
    const order = this.pipelineOrder(m.pipeline);
    const toEntry = (j: Job): RecordEntry => ({
      stage: j.stage,
      task: j.task,
      job: j.id,
      variant: j.variant,
      pack: j.pack,
      taskSha256: j.taskSha256,
      scriptSha256: j.scriptSha256,
      params: j.params,
      finishedAt: j.finishedAt,
      ...imageOf(j),
    });
    const keyOf = (j: Job): string => `${j.stage}/${j.task}`;
    const all = [...latest.values()];
    return {
      entries: all.filter((j) => order.has(keyOf(j))).sort((a, b) => order.get(keyOf(a))! - order.get(keyOf(b))!).map(toEntry),
      leftover: all.filter((j) => !order.has(keyOf(j))).map(toEntry),
    };
  }

  /** Every machine matching the selection, with its stale reasons when `stale` was asked about. */
  async select(sel: MachineSelection): Promise<Array<{ machine: Machine; stale?: string[] }>> {
    const { builtWith, stale, facts, labels, ...filter } = sel;
    const wanted = Object.entries(facts ?? {});
    const range = builtWith ? parseBuiltWith(builtWith) : undefined;
    const out: Array<{ machine: Machine; stale?: string[] }> = [];
    for (let offset = 0; ; offset += 1000) {
      const batch = await this.store.listMachines({ ...filter, limit: 1000, offset });
      for (const m of batch) {
        if (!wanted.every(([path, value]) => factMatches(m.facts, path, value))) continue;
        if (labels && !matchesLabels(m.labels, labels)) continue;
        if (!range && stale === undefined) {
          out.push({ machine: m });
          continue;
        }
        const entries = await this.entries(m);
        if (range && !this.builtWith(entries, range)) continue;
        if (stale === undefined) {
          out.push({ machine: m });
          continue;
        }
        const reasons = this.staleness(m, entries);
        if (reasons.length > 0 === stale) out.push({ machine: m, stale: reasons });
      }
      if (batch.length < 1000) return out;
    }
  }

  async record(m: Machine): Promise<MachineRecord> {
    const { entries, leftover } = await this.split(m);
    return { machine: m.name, pipeline: m.pipeline, entries, leftover, stale: this.staleness(m, entries), images: [...new Set(entries.flatMap((e) => (e.image ? [imageRef(e.image)] : [])))] };
  }

  /** Whether a machine's current entries match the selector: a pack version, or an image version its disk was written with. */
  builtWith(entries: RecordEntry[], sel: BuiltWith): boolean {
    return entries.some((e) => {
      const [name, version] = sel.kind === 'image' ? [e.image?.name, e.image?.version] : (e.pack ?? '').split('@');
      return name === sel.pack && version !== undefined && semver.satisfies(version, sel.range, { includePrerelease: true });
    });
  }

  /**
   * The machines whose current build record names image `name@version` (what removing it would orphan),
   * by name. Reads every machine's record: for a removal, which is rare, not for a hot path.
   */
  async machinesUsingImage(name: string, version: string): Promise<string[]> {
    const found = await this.select({ builtWith: `image:${name}@${version}` });
    return found.map((f) => f.machine.name).sort();
  }

  /**
   * Reasons the machine would be built differently now: a task whose definition changed (by its content
   * hash, whichever way the pack version moved: a roll back to an older version counts too), a task that
   * is gone, changed params, and a task of the current pipeline that never ran on it (a fix shipped as a
   * new task). `entries` must be those of the current pipeline (split().entries). A new pack version whose
   * task is unchanged is not a reason.
   */
  staleness(m: Machine, entries: RecordEntry[]): string[] {
    const reasons: string[] = [];
    const content = this.content.current;
    const ran = new Set(entries.map((e) => `${e.stage}/${e.task}`));
    for (const key of this.pipelineOrder(m.pipeline).keys()) if (!ran.has(key)) reasons.push(`never ran: ${key}`);
    for (const e of entries) {
      const def = content.objects.tasks.get(e.task)?.def;
      if (!def) {
        reasons.push(`${e.task}: the task no longer exists`);
        continue;
      }
      if (e.taskSha256 && hashObject(def) !== e.taskSha256) {
        const [name, version] = (e.pack ?? '').split('@');
        const inUse = name ? this.content.pinned.get(name)?.version : undefined;
        reasons.push(version && inUse && version !== inUse ? `${e.task}: built with ${name}@${version}, ${name}@${inUse} is in use` : `${e.task}: the task changed since it ran`);
        continue;
      }
      const stage = e.stage ? content.objects.stages.get(e.stage)?.def : undefined;
      const pipeline = m.pipeline ? content.objects.pipelines.get(m.pipeline)?.def : undefined;
      // Desired inputs then against desired inputs now (see outputsAsRan): outputs are observed.
      const now = prepareTask(content, this.sealer, { ...m, outputs: outputsAsRan(e.params, m.outputs) }, e.task, {
        stage: stage ? { name: stage.name, params: stage.params } : undefined,
        pipeline: pipeline ? { name: pipeline.name, params: pipeline.params } : undefined,
      });
      const before = reasons.length;
      for (const p of now.params) {
        // Secure values are masked on both sides, so a changed secret shows only in the script hash.
        const then = e.params[p.name]?.value;
        if (canonicalJson(then) !== canonicalJson(p.value)) {
          reasons.push(`${e.task}: param ${p.name} changed (${JSON.stringify(then)} → ${JSON.stringify(p.value)})`);
        }
      }
      if (reasons.length === before && now.script !== null && e.scriptSha256 && now.params.some((p) => p.secure) && this.sealer.digest(now.script) !== e.scriptSha256) {
        // The script hash is keyed by the endpoint, so comparing it says "changed" without saying what to.
        reasons.push(`${e.task}: a secure param changed since it ran (its script differs; values not shown)`);
      }
    }
    return reasons;
  }

  private pipelineOrder(pipeline: string | null): Map<string, number> {
    const order = new Map<string, number>();
    const content = this.content.current;
    const p = pipeline ? content.objects.pipelines.get(pipeline)?.def : undefined;
    let i = 0;
    // Keyed by stage/task identity; a stage or task listed twice keeps its first position.
    for (const s of p?.stages ?? []) for (const t of content.objects.stages.get(s)?.def.tasks ?? []) if (!order.has(`${s}/${t}`)) order.set(`${s}/${t}`, i++);
    return order;
  }
}
