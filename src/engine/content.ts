/**
 * The endpoint's content: packs and local objects, cached in memory as a ContentSet (the engine reads it
 * on every claim) and written through the store's commit path. A pack with any lint error is refused whole.
 */
import type { PackFiles } from '../content/files.js';
import { checkContentSet, lintPack } from '../content/lint.js';
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
import { canonicalJson, hashObject, sha256 } from './hash.js';

export interface ContentEntry<K extends ContentKind = ContentKind> {
  kind: K;
  name: string;
  layer: string;
  def: ContentByKind[K];
}

export class ContentService {
  private set: ContentSet = emptyContentSet();

  constructor(private readonly store: Store) {}

  async load(): Promise<void> {
    const set = emptyContentSet();
    for (const r of await this.store.listContent()) {
      (set.objects[r.kind] as Map<string, { def: unknown; layer: string }>).set(r.name, { def: r.def, layer: r.layer });
    }
    this.set = set;
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

  /** Lints a pack against everything else on the endpoint; installs it (replacing its old version) only if clean. */
  async installPack(files: PackFiles, author: string): Promise<{ pack: PackRecord; objects: number }> {
    const manifestName = peekPackName(files);
    const base = this.without(manifestName);
    const result = lintPack(files, base);
    // Lint also reports names another pack or a local object already owns, at the offending `name:`.
    if (!result.manifest || result.diagnostics.length > 0) {
      throw new TaktError('invalid', `pack refused: ${result.diagnostics.length} problem(s)`, { details: { diagnostics: result.diagnostics } });
    }
    const manifest = result.manifest;
    const candidate = this.without(manifest.name);
    for (const o of result.objects) {
      (candidate.objects[o.kind] as Map<string, { def: unknown; layer: string }>).set((o.def as { name: string }).name, { def: o.def, layer: manifest.name });
    }
    this.assertConsistent(candidate, `installing pack '${manifest.name}'`);
    await this.assertMachineRefs(candidate, `installing pack '${manifest.name}'`);
    const pack: PackRecord = {
      name: manifest.name,
      version: manifest.version,
      description: manifest.description ?? null,
      files,
      sha256: sha256(canonicalJson(files)),
      installedAt: new Date().toISOString(),
    };
    await this.store.transact(async (tx) => {
      const before = await tx.getPack(manifest.name);
      await this.deleteLayer(tx, manifest.name);
      for (const o of result.objects) {
        await tx.putContent({ kind: o.kind, name: (o.def as { name: string }).name, layer: manifest.name, def: o.def, sha256: hashObject(o.def) });
      }
      await tx.putPack(pack);
      const summary = (p?: PackRecord) => (p ? { version: p.version, sha256: p.sha256 } : null);
      await tx.change(author, `packs/${manifest.name}`, before ? 'update' : 'create', summary(before), summary(pack));
      tx.emit(`packs.${before ? 'update' : 'create'}.${manifest.name}`, { name: pack.name, version: pack.version, sha256: pack.sha256 });
    });
    this.set = candidate;
    return { pack, objects: result.objects.length };
  }

  async removePack(name: string, author: string): Promise<void> {
    const pack = await this.store.getPack(name);
    if (!pack) throw new TaktError('not_found', `pack '${name}' not found`);
    const candidate = this.without(name);
    this.assertConsistent(candidate, `removing pack '${name}'`);
    await this.assertMachineRefs(candidate, `removing pack '${name}'`);
    await this.store.transact(async (tx) => {
      await this.deleteLayer(tx, name);
      await tx.deletePack(name);
      await tx.change(author, `packs/${name}`, 'delete', { version: pack.version, sha256: pack.sha256 }, null);
      tx.emit(`packs.delete.${name}`, { name });
    });
    this.set = candidate;
  }

  /** Creates or replaces a local object (one made through the API rather than shipped in a pack). */
  async putLocal(kind: ContentKind, def: unknown, author: string, mode: 'create' | 'update', name?: string): Promise<ContentEntry> {
    const problems = validateValue(CONTENT_SCHEMAS[kind], def);
    if (problems.length > 0) {
      const p = problems[0]!;
      throw new TaktError('invalid', `${KIND_NOUN[kind]}: ${p.path || '/'} ${p.message}`, { path: p.path, details: { problems } });
    }
    const obj = def as ContentObject;
    if (name !== undefined && obj.name !== name) {
      throw new TaktError('invalid', `name '${obj.name}' in the body does not match '${name}' in the URL`, { path: '/name' });
    }
    const existing = this.set.objects[kind].get(obj.name);
    if (mode === 'create' && existing) {
      throw new TaktError('conflict', `${KIND_NOUN[kind]} '${obj.name}' already exists${existing.layer === LOCAL_LAYER ? '' : ` (from pack '${existing.layer}')`}`);
    }
    if (mode === 'update' && !existing) throw new TaktError('not_found', `${KIND_NOUN[kind]} '${obj.name}' not found`);
    if (existing && existing.layer !== LOCAL_LAYER) {
      throw new TaktError('conflict', `${KIND_NOUN[kind]} '${obj.name}' belongs to pack '${existing.layer}'; change the pack and install it again`);
    }
    const candidate = this.clone();
    (candidate.objects[kind] as Map<string, { def: unknown; layer: string }>).set(obj.name, { def: obj, layer: LOCAL_LAYER });
    this.assertConsistent(candidate, `saving ${KIND_NOUN[kind]} '${obj.name}'`, { kind, name: obj.name });
    await this.store.transact(async (tx) => {
      await tx.putContent({ kind, name: obj.name, layer: LOCAL_LAYER, def: obj, sha256: hashObject(obj) });
      await tx.change(author, `${kind}/${obj.name}`, existing ? 'update' : 'create', existing?.def ?? null, obj);
      tx.emit(`${kind}.${existing ? 'update' : 'create'}.${obj.name}`, obj);
    });
    this.set = candidate;
    return { kind, name: obj.name, layer: LOCAL_LAYER, def: obj };
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
    await this.store.transact(async (tx) => {
      await tx.deleteContent(kind, name);
      await tx.change(author, `${kind}/${name}`, 'delete', existing.def, null);
      tx.emit(`${kind}.delete.${name}`, { name });
    });
    this.set = candidate;
  }

  private async deleteLayer(tx: Tx, layer: string) {
    for (const kind of CONTENT_KINDS) {
      for (const [n, o] of this.set.objects[kind]) if (o.layer === layer) await tx.deleteContent(kind, n);
    }
  }

  private clone(): ContentSet {
    const set = emptyContentSet();
    for (const kind of CONTENT_KINDS) {
      for (const [n, o] of this.set.objects[kind]) (set.objects[kind] as Map<string, unknown>).set(n, o);
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
  private assertConsistent(candidate: ContentSet, doing: string, focus?: { kind: ContentKind; name: string }) {
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
  private async assertMachineRefs(candidate: ContentSet, doing: string) {
    // Content removal is rare; a page-by-page scan keeps this exact for any fleet size.
    for (let offset = 0; ; offset += 1000) {
      const page = await this.store.listMachines({ limit: 1000, offset });
      for (const m of page) {
        if (m.pipeline && !candidate.objects.pipelines.has(m.pipeline)) {
          throw new TaktError('conflict', `${doing} would leave machine '${m.name}' without its pipeline '${m.pipeline}'; reassign the machine first`);
        }
        const missing = m.profiles.find((p) => !candidate.objects.profiles.has(p));
        if (missing) throw new TaktError('conflict', `${doing} would leave machine '${m.name}' without its profile '${missing}'`);
      }
      if (page.length < 1000) return;
    }
  }
}

function peekPackName(files: PackFiles): string | undefined {
  const m = /^name:\s*["']?([a-z0-9][a-z0-9._-]*)["']?\s*$/m.exec(files['pack.yaml'] ?? '');
  return m?.[1];
}
