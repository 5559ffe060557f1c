/**
 * The endpoint's content: packs and local objects, cached in memory as a ContentSet (the engine reads it
 * on every claim) and written through the store's commit path. A pack with any lint error is refused whole.
 */
import { assertPlainPaths, type PackFiles } from '../content/files.js';
import semver from 'semver';
import { checkContentSet, lintPack, type LintResult } from '../content/lint.js';
import {
  CONTENT_KINDS,
  CONTENT_SCHEMAS,
  emptyContentSet,
  KIND_NOUN,
  LOCAL_LAYER,
  type ContentByKind,
  type ContentKind,
  type ContentObject,
  type ContentSet,
} from '../model/content.js';
import { TaktError } from '../model/errors.js';
import { validateValue } from '../model/validate.js';
import type { PackRecord, Store, Tx } from '../store/store.js';
import { fieldChanges, type FieldChange } from './diff.js';
import { canonicalJson, hashObject } from '../model/hash.js';
import type { Sealer } from '../model/secure.js';
import { fingerprinted, sealDef, sealPack, secureParams, type IsSecure, type SealedPack } from './sealing.js';

export interface ContentEntry<K extends ContentKind = ContentKind> {
  kind: K;
  name: string;
  layer: string;
  def: ContentByKind[K];
}

export interface InstallResult {
  name: string;
  version: string;
  sha256: string;
  objects: number;
  /** False when this exact version was already installed. */
  installed: boolean;
  /** Whether this version is the one the endpoint runs now. */
  active: boolean;
}

export interface PackDiff {
  name: string;
  from: string;
  to: string;
  added: string[];
  removed: string[];
  changed: Array<{ object: string; fields: FieldChange[] }>;
}

export type Pins = Map<string, { version: string; requires: Record<string, string> }>;
interface UsePlan {
  candidate: ContentSet;
  pins: Pins;
}

/** Whether an event's topic is a change of the content in use: a pack pinned or unpinned, a local object written. */
export function isContentTopic(topic: string): boolean {
  const type = topic.slice(0, topic.indexOf('.'));
  return type === 'packs' || (CONTENT_KINDS as readonly string[]).includes(type);
}

/** Reads of one reload at most, when content events keep arriving while it reads (then the last is kept). */
const MAX_RELOAD_READS = 20;

export class ContentService {
  private set: ContentSet = emptyContentSet();
  private pins = new Map<string, { version: string; requires: Record<string, string> }>();
  /** Content events heard so far (a reload that read while one arrived reads again). */
  private heard = 0;
  private reloading: Promise<void> | null = null;
  private readonly unsubscribe: () => void;
  private readonly reloaded = new Set<() => void>();

  /**
   * `sealer` seals secure values set in packs and local objects before they are stored (see sealing.ts).
   * The cache follows the store: a content event (`packs.*`, `<kind>.*`) — from this process or, on
   * PostgreSQL, from another replica (pg-follow.ts) — reloads it from the store (`fresh` awaits that).
   */
  constructor(
    private readonly store: Store,
    private readonly sealer: Sealer,
  ) {
    this.unsubscribe = store.onEvents((events) => {
      if (!events.some((e) => isContentTopic(e.topic))) return;
      this.heard += 1;
      this.reload();
    });
  }

  async load(): Promise<void> {
    const { pins, set } = await this.read();
    this.pins = pins;
    this.set = set;
  }

  /** The content in use as the store has it now. */
  private async read(): Promise<{ pins: Pins; set: ContentSet }> {
    const pins: Pins = new Map();
    for (const p of await this.store.listPacks()) {
      const v = await this.store.getPackVersion(p.name, p.version);
      pins.set(p.name, { version: p.version, requires: v?.requires ?? {} });
    }
    const set = emptyContentSet();
    for (const r of await this.store.listContent()) {
      (set.objects[r.kind] as Map<string, { def: unknown; layer: string }>).set(r.name, { def: r.def, layer: r.layer });
    }
    return { pins, set };
  }

  /**
   * Reloads the cache from the store (one reload at a time; events during it make it read again). A read
   * during which another content event arrived may predate that change (or a change this process adopted
   * meanwhile), so it is not kept: the next read is. Failures are reported, and the next event retries.
   */
  private reload(): void {
    this.reloading ??= (async () => {
      for (let i = 0; i < MAX_RELOAD_READS; i++) {
        const at = this.heard;
        const got = await this.read();
        if (at === this.heard || i === MAX_RELOAD_READS - 1) {
          this.pins = got.pins;
          this.set = got.set;
          for (const l of this.reloaded) l();
          return;
        }
      }
    })()
      .catch((err: unknown) => process.emitWarning(`reloading content after a change failed: ${(err as Error).message ?? String(err)}`))
      .finally(() => (this.reloading = null));
  }

  /**
   * Resolves once the cache reflects every content event heard so far (at once when no reload is under
   * way). Claims await it, so a machine event that follows a pack event finds the pack's objects.
   */
  fresh(): Promise<void> {
    return this.reloading ?? Promise.resolve();
  }

  /** Calls `listener` after each reload that followed a content event; returns the unsubscribe function. */
  onReload(listener: () => void): () => void {
    this.reloaded.add(listener);
    return () => this.reloaded.delete(listener);
  }

  /** Stops following the store's content events. */
  stop(): void {
    this.unsubscribe();
  }

  get current(): ContentSet {
    return this.set;
  }

  list<K extends ContentKind>(kind: K): ContentEntry<K>[] {
    return [...this.set.objects[kind].entries()]
      .map(([name, o]) => ({ kind, name, layer: o.layer, def: o.def as ContentByKind[K] }))
      .sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  get<K extends ContentKind>(kind: K, name: string): ContentEntry<K> {
    const o = this.set.objects[kind].get(name);
    if (!o) throw new TaktError('not_found', `${KIND_NOUN[kind]} '${name}' not found`);
    return { kind, name, layer: o.layer, def: o.def as ContentByKind[K] };
  }

  /** `name@version` of the pack a layer runs, or `local`. */
  packRef(layer: string): string {
    if (layer === LOCAL_LAYER) return LOCAL_LAYER;
    return `${layer}@${this.pins.get(layer)?.version ?? '?'}`;
  }

  /** The version each pack runs. */
  get pinned(): ReadonlyMap<string, { version: string; requires: Record<string, string> }> {
    return this.pins;
  }

  /**
   * Installs a pack version side by side with the others. A version is immutable: the same name@version
   * with different content is refused. The first version of a pack starts running at once; later ones
   * run when `use` pins them (or with `use: true`).
   */
  async installPack(files: PackFiles, author: string, opts: { use?: boolean } = {}): Promise<InstallResult> {
    // Stored files are written out again by `takt export`: only plain relative paths inside the pack.
    assertPlainPaths(files, 'pack refused');
    const result = lintPack(files, this.without(peekPackName(files)));
    // Lint also reports names another pack or a local object already owns, at the offending `name:`.
    if (!result.manifest || result.diagnostics.length > 0) {
      throw new TaktError('invalid', `pack refused: ${result.diagnostics.length} problem(s)`, { details: { diagnostics: result.diagnostics } });
    }
    const manifest = result.manifest;
    const ref = `${manifest.name}@${manifest.version}`;
    // Secure values are sealed before anything is stored; the digest never hashes a bare secret.
    const sealed = sealPack(files, result.objects, secureParams(this.without(manifest.name), result.objects), this.sealer);
    const digest = sealed.sha256;
    const existing = await this.store.getPackVersion(manifest.name, manifest.version);
    if (existing && existing.sha256 !== digest) {
      throw new TaktError(
        'conflict',
        `${ref} is already installed with different content (sha256 ${existing.sha256.slice(0, 12)}, this is ${digest.slice(0, 12)}); a published version never changes: bump the version in pack.yaml`,
      );
    }
    const version: PackRecord = {
      name: manifest.name,
      version: manifest.version,
      description: manifest.description ?? null,
      requires: manifest.requires ?? {},
      // The same version again keeps the files (and ciphertexts) it was first installed with.
      files: existing?.files ?? sealed.files,
      sha256: digest,
      installedAt: existing?.installedAt ?? new Date().toISOString(),
    };
    const objects = (existing ? lintPack(existing.files, this.without(manifest.name)).objects : sealed.objects) as LintResult['objects'];
    const activate = opts.use === true || !this.pins.has(manifest.name);
    const plan = activate ? this.prepareUse(version, objects) : null;
    if (!existing) await this.store.transact((tx) => this.writeVersion(tx, version, author));
    if (plan && this.pins.get(manifest.name)?.version !== manifest.version) await this.commitUse(version, objects, plan, author);
    return { name: version.name, version: version.version, sha256: digest, objects: objects.length, installed: !existing, active: this.pins.get(manifest.name)?.version === manifest.version };
  }

  /** Pins the version a pack runs: its objects replace the old version's, after the same checks as an install. */
  async usePack(name: string, version: string, author: string): Promise<InstallResult> {
    const rec = await this.store.getPackVersion(name, version);
    if (!rec) {
      const have = (await this.store.listPackVersions(name)).map((v) => v.version);
      throw new TaktError('not_found', `${name}@${version} is not installed${have.length ? ` (installed: ${have.join(', ')})` : ''}; install it with \`takt content install\``);
    }
    const result = lintPack(rec.files, this.without(name));
    if (!result.manifest || result.diagnostics.length > 0) {
      throw new TaktError('invalid', `${name}@${version} no longer fits the content on this endpoint: ${result.diagnostics.length} problem(s)`, {
        details: { diagnostics: result.diagnostics },
      });
    }
    const plan = this.prepareUse(rec, result.objects);
    if (this.pins.get(name)?.version !== version) await this.commitUse(rec, result.objects, plan, author);
    return { name, version, sha256: rec.sha256, objects: result.objects.length, installed: false, active: true };
  }

/**
   * Removes one installed version of a pack (its files), e.g. an old one no machine needs any more.
   * Refused (TaktError conflict, naming what holds it) while it is the version in use, or while a job
   * from it runs on a machine; checked again inside the transaction that deletes it. Build records and
   * history keep their `name@version` text. With `dryRun` it checks and says what it would remove.
   * @throws TaktError not_found when the version is not installed (naming the installed ones).
   */
  async removeVersion(name: string, version: string, author: string, opts: { dryRun?: boolean } = {}): Promise<{ name: string; version: string; sha256: string; removed: boolean; dryRun: boolean }> {
    const ref = `${name}@${version}`;
    return this.store.transact(async (tx) => {
      const rec = await tx.getPackVersion(name, version);
      if (!rec) {
        const have = (await tx.listPackVersions(name)).map((v) => v.version);
        throw new TaktError('not_found', `${ref} is not installed${have.length ? ` (installed: ${have.join(', ')})` : ''}`);
      }
      if ((await tx.getPack(name))?.version === version) {
        throw new TaktError('conflict', `cannot remove ${ref}: it is the version in use; put another in use first (\`takt content use ${name}@VERSION\`)`);
      }
      const running = (await tx.listJobs({ state: 'running', limit: 100_000 })).filter((j) => j.pack === ref);
      if (running.length > 0) {
        const names = await Promise.all([...new Set(running.map((j) => j.machineId))].map(async (id) => (await tx.getMachine(id))?.name ?? id));
        throw new TaktError('conflict', `cannot remove ${ref}: machine${names.length > 1 ? 's' : ''} ${names.join(', ')} ${names.length > 1 ? 'are' : 'is'} running a task from it; try again once ${names.length > 1 ? 'their jobs have' : 'its job has'} ended (\`takt jobs list --machine ${names[0]}\`)`, {
          details: { machines: names },
        });
      }
      if (opts.dryRun) return { name, version, sha256: rec.sha256, removed: false, dryRun: true };
      await tx.deletePackVersion(name, version);
      await tx.change(author, `packversions/${ref}`, 'delete', { sha256: rec.sha256 }, null);
      tx.emit(`packversions.delete.${ref}`, { name, version, sha256: rec.sha256 });
      return { name, version, sha256: rec.sha256, removed: true, dryRun: false };
    });
  }

    /** What changed between two installed versions of a pack, object by object. */
  async diffPack(name: string, from: string, to: string): Promise<PackDiff> {
    const load = async (v: string) => {
      const rec = await this.store.getPackVersion(name, v);
      if (!rec) throw new TaktError('not_found', `${name}@${v} is not installed`);
      const objects = new Map<string, unknown>();
      // Sealed values compare (and show) by fingerprint: the same secret sealed twice differs in ciphertext.
      for (const o of lintPack(rec.files).objects) objects.set(`${o.kind}/${(o.def as { name: string }).name}`, fingerprinted(o.def, this.sealer));
      return objects;
    };
    const [a, b] = [await load(from), await load(to)];
    const diff: PackDiff = { name, from, to, added: [], removed: [], changed: [] };
    for (const [key, def] of b) {
      if (!a.has(key)) diff.added.push(key);
      else if (canonicalJson(a.get(key)) !== canonicalJson(def)) diff.changed.push({ object: key, fields: fieldChanges(a.get(key), def) });
    }
    for (const key of a.keys()) if (!b.has(key)) diff.removed.push(key);
    for (const list of [diff.added, diff.removed]) list.sort();
    diff.changed.sort((x, y) => (x.object < y.object ? -1 : 1));
    return diff;
  }

  /** Checks that `version` can run: content stays consistent, machines keep their references, requires hold. */
  private prepareUse(version: PackRecord, objects: LintResult['objects']): UsePlan {
    const candidate = this.withLayer(version.name, objects);
    const doing = `using ${version.name}@${version.version}`;
    this.assertConsistent(candidate, doing);
    const pins = new Map(this.pins);
    pins.set(version.name, { version: version.version, requires: version.requires ?? {} });
    assertRequires(pins, doing);
    return { candidate, pins };
  }

  private async commitUse(version: PackRecord, objects: LintResult['objects'], { candidate, pins }: UsePlan, author: string) {
    await this.assertMachineRefs(candidate, `using ${version.name}@${version.version}`);
    await this.store.transact((tx) => this.writePin(tx, version, objects, author));
    this.adopt(candidate, pins);
  }

  // ---- the writes, each inside a caller's transaction (an import makes many in one) ----

  /** Records a newly installed pack version. */
  async writeVersion(tx: Tx, version: PackRecord, author: string): Promise<void> {
    const ref = `${version.name}@${version.version}`;
    await tx.putPackVersion(version);
    await tx.change(author, `packversions/${ref}`, 'create', null, { sha256: version.sha256 });
    tx.emit(`packversions.create.${ref}`, { name: version.name, version: version.version, sha256: version.sha256 });
  }

  /** Makes `version` the one its pack runs: its objects replace those of the pack's layer in use now. */
  async writePin(tx: Tx, version: PackRecord, objects: LintResult['objects'], author: string, opts: { cleared?: boolean } = {}): Promise<void> {
    const before = await tx.getPack(version.name);
    if (!opts.cleared) await this.deleteLayer(tx, version.name);
    for (const o of objects) {
      await tx.putContent({ kind: o.kind, name: (o.def as { name: string }).name, layer: version.name, def: o.def, sha256: hashObject(o.def) });
    }
    await tx.putPack(version);
    const summary = (p?: PackRecord) => (p ? { version: p.version, sha256: p.sha256 } : null);
    await tx.change(author, `packs/${version.name}`, before ? 'update' : 'create', summary(before), summary(version));
    tx.emit(`packs.${before ? 'update' : 'create'}.${version.name}`, { name: version.name, version: version.version, sha256: version.sha256 });
  }

  /** Deletes the objects of `layer` in use now; `writePin(…, { cleared: true })` then puts the new ones. */
  async writeClearLayer(tx: Tx, layer: string): Promise<void> {
    await this.deleteLayer(tx, layer);
  }

  /** Stops running pack `name` (its versions stay installed). */
  async writeUnpin(tx: Tx, name: string, author: string): Promise<void> {
    const pack = await tx.getPack(name);
    if (!pack) throw new TaktError('not_found', `pack '${name}' is not in use`);
    await this.deleteLayer(tx, name);
    await tx.deletePack(name);
    await tx.change(author, `packs/${name}`, 'delete', { version: pack.version, sha256: pack.sha256 }, null);
    tx.emit(`packs.delete.${name}`, { name });
  }

  /** Creates or replaces local object `obj` (checked by `checkLocal`). */
  async writeLocal(tx: Tx, kind: ContentKind, obj: ContentObject, author: string): Promise<void> {
    const existing = this.set.objects[kind].get(obj.name);
    await tx.putContent({ kind, name: obj.name, layer: LOCAL_LAYER, def: obj, sha256: hashObject(obj) });
    await tx.change(author, `${kind}/${obj.name}`, existing ? 'update' : 'create', existing?.def ?? null, obj);
    tx.emit(`${kind}.${existing ? 'update' : 'create'}.${obj.name}`, obj);
  }

  /** Deletes local object `name`. */
  async writeDeleteLocal(tx: Tx, kind: ContentKind, name: string, author: string): Promise<void> {
    const existing = this.set.objects[kind].get(name);
    await tx.deleteContent(kind, name);
    await tx.change(author, `${kind}/${name}`, 'delete', existing?.def ?? null, null);
    tx.emit(`${kind}.delete.${name}`, { name });
  }

  /** Makes content written by a committed transaction the content in use. Call only after the commit. */
  adopt(set: ContentSet, pins: Pins): void {
    this.set = set;
    this.pins = pins;
  }

  /** Stops running a pack (its installed versions stay). Refused while machines or other content need it. */
  async removePack(name: string, author: string): Promise<void> {
    const pack = await this.store.getPack(name);
    if (!pack) throw new TaktError('not_found', `pack '${name}' is not in use`);
    const candidate = this.without(name);
    this.assertConsistent(candidate, `removing pack '${name}'`);
    const pins = new Map(this.pins);
    pins.delete(name);
    assertRequires(pins, `removing pack '${name}'`);
    await this.assertMachineRefs(candidate, `removing pack '${name}'`);
    await this.store.transact((tx) => this.writeUnpin(tx, name, author));
    this.adopt(candidate, pins);
  }

  /** Creates or replaces a local object (one made through the API rather than shipped in a pack). */
  async putLocal(kind: ContentKind, def: unknown, author: string, mode: 'create' | 'update', name?: string): Promise<ContentEntry> {
    const clear = this.checkLocal(kind, def, name);
    const existing = this.set.objects[kind].get(clear.name);
    if (mode === 'create' && existing) {
      throw new TaktError('conflict', `${KIND_NOUN[kind]} '${clear.name}' already exists${existing.layer === LOCAL_LAYER ? '' : ` (from pack '${existing.layer}')`}`);
    }
    if (mode === 'update' && !existing) throw new TaktError('not_found', `${KIND_NOUN[kind]} '${clear.name}' not found`);
    if (existing && existing.layer !== LOCAL_LAYER) {
      throw new TaktError('conflict', `${KIND_NOUN[kind]} '${clear.name}' belongs to pack '${existing.layer}'; change the pack and install it again`);
    }
    const candidate = this.clone();
    (candidate.objects[kind] as Map<string, { def: unknown; layer: string }>).set(clear.name, { def: clear, layer: LOCAL_LAYER });
    // Checked with its clear values, stored and run sealed (history and events see only the sealed form).
    this.assertConsistent(candidate, `saving ${KIND_NOUN[kind]} '${clear.name}'`, { kind, name: clear.name });
    // A pipeline's `environments` may change under machines that run it.
    if (kind === 'pipelines' && existing) await this.assertMachineRefs(candidate, `saving ${KIND_NOUN[kind]} '${clear.name}'`);
    const obj = sealDef(kind, clear, secureParams(candidate), this.sealer);
    (candidate.objects[kind] as Map<string, { def: unknown; layer: string }>).set(obj.name, { def: obj, layer: LOCAL_LAYER });
    await this.store.transact((tx) => this.writeLocal(tx, kind, obj, author));
    this.set = candidate;
    return { kind, name: obj.name, layer: LOCAL_LAYER, def: obj };
  }

  /**
   * Which params are secure in this content plus `extra` definitions (an import's packs and local params,
   * whose own params may make values secure).
   */
  securePolicy(extra: Iterable<{ kind: ContentKind; def: unknown }>): IsSecure {
    return secureParams(this.set, extra);
  }

  /** A pack version's files, objects and identity with its secure values sealed (sealing.ts); lint it clear first. */
  sealVersion(files: PackFiles, isSecure: IsSecure): SealedPack {
    return sealPack(files, lintPack(files).objects, isSecure, this.sealer);
  }

  /** A checked local object with its secure values sealed, as it is stored and run. */
  sealLocal<T>(kind: ContentKind, def: T, isSecure: IsSecure): T {
    return sealDef(kind, def, isSecure, this.sealer);
  }

  /**
   * A local object's definition as the API or an import gives it, checked against its kind's schema (and
   * the name in the URL, when there is one). Consistency with the rest of the content is checked apart.
   * @throws TaktError('invalid') at the first problem, all of them in details.problems.
   */
  checkLocal(kind: ContentKind, def: unknown, name?: string): ContentObject {
    const problems = validateValue(CONTENT_SCHEMAS[kind], def);
    if (problems.length > 0) {
      const p = problems[0]!;
      throw new TaktError('invalid', `${KIND_NOUN[kind]}: ${p.path || '/'} ${p.message}`, { path: p.path, details: { problems } });
    }
    const obj = def as ContentObject;
    if (name !== undefined && obj.name !== name) {
      throw new TaktError('invalid', `name '${obj.name}' in the body does not match '${name}' in the URL`, { path: '/name' });
    }
    return obj;
  }

  async deleteLocal(kind: ContentKind, name: string, author: string): Promise<void> {
    const existing = this.get(kind, name);
    if (existing.layer !== LOCAL_LAYER) {
      throw new TaktError('conflict', `${KIND_NOUN[kind]} '${name}' belongs to pack '${existing.layer}'; remove it from the pack instead`);
    }
    const candidate = this.clone();
    candidate.objects[kind].delete(name);
    this.assertConsistent(candidate, `deleting ${KIND_NOUN[kind]} '${name}'`);
    await this.assertMachineRefs(candidate, `deleting ${KIND_NOUN[kind]} '${name}'`);
    await this.store.transact((tx) => this.writeDeleteLocal(tx, kind, name, author));
    this.set = candidate;
  }

  /** Deletes the layer's objects as the store has them (fresh: another replica may have written since this cache). */
  private async deleteLayer(tx: Tx, layer: string) {
    for (const r of await tx.listContent()) if (r.layer === layer) await tx.deleteContent(r.kind, r.name);
  }

  private clone(): ContentSet {
    const set = emptyContentSet();
    for (const kind of CONTENT_KINDS) {
      for (const [n, o] of this.set.objects[kind]) (set.objects[kind] as Map<string, unknown>).set(n, o);
    }
    return set;
  }

  private withLayer(layer: string, objects: LintResult['objects']): ContentSet {
    const set = this.without(layer);
    for (const o of objects) {
      (set.objects[o.kind] as Map<string, { def: unknown; layer: string }>).set((o.def as { name: string }).name, { def: o.def, layer });
    }
    return set;
  }

  private without(layer: string | undefined): ContentSet {
    const set = this.clone();
    if (layer === undefined) return set;
    for (const kind of CONTENT_KINDS) for (const [n, o] of set.objects[kind]) if (o.layer === layer) set.objects[kind].delete(n);
    return set;
  }

  /** Refuses a content change that would leave any object with a dangling reference or a broken template. */
  assertConsistent(candidate: ContentSet, doing: string, focus?: { kind: ContentKind; name: string }) {
    const problems = checkContentSet(candidate);
    if (problems.length === 0) return;
    const first = problems.find((p) => focus && p.kind === focus.kind && p.name === focus.name) ?? problems[0]!;
    const where = `${first.kind}/${first.name}${first.path}`;
    throw new TaktError('invalid', `${doing} would break content: ${where}: ${first.message}`, {
      path: focus && first.kind === focus.kind && first.name === focus.name ? first.path : where,
      details: { problems },
    });
  }

  /** Machines point at pipelines and profiles by name; those names must keep resolving. */
  async assertMachineRefs(candidate: ContentSet, doing: string) {
    // Machines whose pipeline would no longer exercise their environment: all of them, in one answer.
    const misplaced: Array<{ machine: string; environment: string; pipeline: string; environments: string[] }> = [];
    // Content removal is rare; a page-by-page scan keeps this exact for any fleet size.
    for (let offset = 0; ; offset += 1000) {
      const page = await this.store.listMachines({ limit: 1000, offset });
      for (const m of page) {
        if (m.pipeline && !candidate.objects.pipelines.has(m.pipeline)) {
          throw new TaktError('conflict', `${doing} would leave machine '${m.name}' without its pipeline '${m.pipeline}'; reassign the machine first`);
        }
        const missing = m.profiles.find((p) => !candidate.objects.profiles.has(p));
        if (missing) throw new TaktError('conflict', `${doing} would leave machine '${m.name}' without its profile '${missing}'`);
        const envs = m.pipeline ? candidate.objects.pipelines.get(m.pipeline)?.def.environments : undefined;
        if (m.pipeline && envs && !envs.includes(m.environment)) misplaced.push({ machine: m.name, environment: m.environment, pipeline: m.pipeline, environments: envs });
      }
      if (page.length < 1000) break;
    }
    if (misplaced.length === 0) return;
    const shownList = misplaced.slice(0, 20).map((x) => `${x.machine} (${x.environment}; pipeline ${x.pipeline} runs in: ${x.environments.join(', ')})`).join(', ');
    const more = misplaced.length > 20 ? ` and ${misplaced.length - 20} more` : '';
    throw new TaktError(
      'conflict',
      `${doing} would leave ${misplaced.length} machine${misplaced.length === 1 ? '' : 's'} in an environment ${misplaced.length === 1 ? 'its' : 'their'} pipeline no longer exercises: ${shownList}${more}. Assign each a pipeline that runs there (\`takt machines update M --pipeline P\`) or delete it, or use a version whose pipeline still lists that environment`,
      { path: '/environments', details: { machines: misplaced } },
    );
  }
}

/** Every running pack's `requires` must be met by the versions that run. */
export function assertRequires(pins: Map<string, { version: string; requires: Record<string, string> }>, doing: string) {
  for (const [name, pin] of pins) {
    for (const [dep, range] of Object.entries(pin.requires)) {
      const have = pins.get(dep)?.version;
      if (!have) throw new TaktError('conflict', `${doing}: ${name}@${pin.version} requires ${dep} ${range}, which is not in use`);
      if (!semver.satisfies(have, range, { includePrerelease: true })) {
        throw new TaktError('conflict', `${doing}: ${name}@${pin.version} requires ${dep} ${range}, but ${dep}@${have} would run`);
      }
    }
  }
}

function peekPackName(files: PackFiles): string | undefined {
  const m = /^name:\s*["']?([a-z0-9][a-z0-9._-]*)["']?\s*$/m.exec(files['pack.yaml'] ?? '');
  return m?.[1];
}
