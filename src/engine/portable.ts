/**
 * Export and import of the complete desired state as a directory of YAML (packs as their own files, local
 * content, machines), so it can live in git. Output is deterministic — sorted keys, no timestamps — so an
 * export, imported elsewhere and exported again, is byte-identical.
 */
import { stringify, parse } from 'yaml';
import { CONTENT_KINDS, LOCAL_LAYER, type ContentKind } from '../model/content.js';
import { TaktError } from '../model/errors.js';
import { canonicalJson } from '../model/hash.js';
import type { Machine } from '../model/machine.js';
import type { Store } from '../store/store.js';
import type { ContentService } from './content.js';
import { patchTowards, type Engine } from './engine.js';

export const EXPORT_FORMAT = 'takt-export/1';
const MANIFEST = 'takt-export.yaml';

export type ExportFiles = Record<string, string>;

export interface ImportResult {
  packVersionsInstalled: string[];
  inUse: Record<string, string>;
  content: { created: number; updated: number; deleted: number };
  machines: { created: string[]; updated: string[] };
  /** What could not be restored, and why; the rest was. */
  problems: string[];
}

/** Creates a machine for real (through its broker) when an import brings one back. */
export type MachineCreator = (m: { id: string; name: string; environment: string; broker: string | null; pipeline: string | null; params: Record<string, unknown>; profiles: string[] }) => Promise<void>;

const sorted = (v: unknown): unknown => JSON.parse(canonicalJson(v));
const yaml = (v: unknown): string => stringify(sorted(v), { lineWidth: 0 });

function machineDoc(m: Machine) {
  return { id: m.id, name: m.name, environment: m.environment, broker: m.broker, pipeline: m.pipeline, profiles: m.profiles, params: m.params, power: m.power };
}

export class Portable {
  constructor(
    private readonly store: Store,
    private readonly engine: Engine,
    private readonly content: ContentService,
  ) {}

  async export(): Promise<ExportFiles> {
    const files: ExportFiles = {};
    const inUse: Record<string, string> = {};
    for (const [name, pin] of this.content.pinned) inUse[name] = pin.version;
    files[MANIFEST] = yaml({ format: EXPORT_FORMAT, inUse });
    for (const v of await this.store.listPackVersions()) {
      const rec = await this.store.getPackVersion(v.name, v.version);
      for (const [path, text] of Object.entries(rec!.files)) files[`packs/${v.name}/${v.version}/${path}`] = text;
    }
    for (const kind of CONTENT_KINDS) {
      for (const e of this.content.list(kind)) if (e.layer === LOCAL_LAYER) files[`local/${kind}/${e.name}.yaml`] = yaml(e.def);
    }
    for (let offset = 0; ; offset += 1000) {
      const page = await this.store.listMachines({ limit: 1000, offset });
      for (const m of page) files[`machines/${m.name}.yaml`] = yaml(machineDoc(m));
      if (page.length < 1000) break;
    }
    return Object.fromEntries(Object.entries(files).sort(([a], [b]) => (a < b ? -1 : 1)));
  }

  async import(files: ExportFiles, author: string, createMachine: MachineCreator): Promise<ImportResult> {
    const manifest = parseDoc(files[MANIFEST], MANIFEST) as { format?: string; inUse?: Record<string, string> } | null;
    if (!manifest || manifest.format !== EXPORT_FORMAT) throw new TaktError('bad_request', `${MANIFEST}: not a ${EXPORT_FORMAT} export (made by \`takt export\`)`);
    const result: ImportResult = { packVersionsInstalled: [], inUse: manifest.inUse ?? {}, content: { created: 0, updated: 0, deleted: 0 }, machines: { created: [], updated: [] }, problems: [] };
    const attempt = async (what: string, fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (err) {
        if (!(err instanceof TaktError)) throw err;
        result.problems.push(`${what}: ${err.message}`);
      }
    };

    // Packs: every version side by side, then the pins.
    const versions = new Map<string, Record<string, string>>();
    const unknown: string[] = [];
    for (const [path, text] of Object.entries(files)) {
      const m = /^packs\/([^/]+)\/([^/]+)\/(.+)$/.exec(path);
      if (m) {
        const key = `${m[1]}@${m[2]}`;
        versions.set(key, { ...versions.get(key), [m[3]!]: text });
      } else if (path !== MANIFEST && !/^(local\/[a-z]+|machines)\/[^/]+\.yaml$/.test(path)) unknown.push(path);
    }
    if (unknown.length) throw new TaktError('bad_request', `not part of an export: ${unknown.slice(0, 5).join(', ')}${unknown.length > 5 ? '…' : ''}`);
    for (const [ref, packFiles] of versions) {
      await attempt(`install ${ref}`, async () => {
        const r = await this.content.installPack(packFiles, author);
        if (r.installed) result.packVersionsInstalled.push(ref);
      });
    }
    for (const [name, version] of Object.entries(result.inUse)) await attempt(`use ${name}@${version}`, async () => void (await this.content.usePack(name, version, author)));
    for (const name of [...this.content.pinned.keys()]) {
      if (!(name in result.inUse)) await attempt(`stop using ${name}`, () => this.content.removePack(name, author));
    }

    // Local content, in dependency order; deletions last and in reverse.
    const wanted = new Map<string, unknown>();
    for (const [path, text] of Object.entries(files)) {
      const m = /^local\/([a-z]+)\/([^/]+)\.yaml$/.exec(path);
      if (!m) continue;
      if (!CONTENT_KINDS.includes(m[1] as ContentKind)) throw new TaktError('bad_request', `${path}: '${m[1]}' is not a content kind`);
      wanted.set(`${m[1]}/${m[2]}`, parseDoc(text, path));
    }
    for (const kind of CONTENT_KINDS) {
      for (const [key, def] of wanted) {
        if (!key.startsWith(`${kind}/`)) continue;
        const name = key.slice(kind.length + 1);
        const have = this.content.current.objects[kind].get(name);
        if (have && have.layer === LOCAL_LAYER && canonicalJson(have.def) === canonicalJson(def)) continue;
        await attempt(`${key}`, async () => {
          await this.content.putLocal(kind, def, author, have ? 'update' : 'create', name);
          result.content[have ? 'updated' : 'created'] += 1;
        });
      }
    }

    // Machines: restored by id, created through their broker when missing.
    const seen = new Set<string>();
    for (const [path, text] of Object.entries(files)) {
      if (!path.startsWith('machines/')) continue;
      const doc = parseDoc(text, path) as ReturnType<typeof machineDoc>;
      seen.add(doc.id);
      await attempt(`machines/${doc.name}`, async () => {
        const have = await this.store.getMachine(doc.id);
        if (!have) {
          await createMachine(doc);
          if (doc.power === 'off') await this.engine.setPower(doc.id, 'off', author);
          result.machines.created.push(doc.name);
          return;
        }
        if (canonicalJson(machineDoc(have)) === canonicalJson(doc)) return;
        const patch = patchTowards(have, doc);
        if (Object.keys(patch).length) await this.engine.updateMachine(doc.id, patch, author);
        if (have.power !== doc.power) await this.engine.setPower(doc.id, doc.power, author);
        result.machines.updated.push(doc.name);
      });
    }
    for (let offset = 0; ; offset += 1000) {
      const page = await this.store.listMachines({ limit: 1000, offset });
      for (const m of page) if (!seen.has(m.id)) result.problems.push(`machines/${m.name}: not in the export; left as it is (delete it if it should go)`);
      if (page.length < 1000) break;
    }
    for (const kind of [...CONTENT_KINDS].reverse()) {
      for (const e of this.content.list(kind)) {
        if (e.layer !== LOCAL_LAYER || wanted.has(`${kind}/${e.name}`)) continue;
        await attempt(`${kind}/${e.name}`, async () => {
          await this.content.deleteLocal(kind, e.name, author);
          result.content.deleted += 1;
        });
      }
    }
    return result;
  }
}

function parseDoc(text: string | undefined, where: string): unknown {
  if (text === undefined) throw new TaktError('bad_request', `${where} is missing: not a takt export`);
  try {
    return parse(text);
  } catch (err) {
    throw new TaktError('bad_request', `${where}: ${(err as Error).message}`);
  }
}
