/**
 * Rewind: every desired-state change can be reverted (as a new change), and the whole desired state can
 * be taken back to how it stood after any change. Both replay through the same services that made the
 * changes, so every check (schemas, references, requires, machines' references) applies again.
 */
import { CONTENT_KINDS, type ContentKind } from '../model/content.js';
import { TaktError } from '../model/errors.js';
import { canonicalJson } from '../model/hash.js';
import type { Change } from '../model/machine.js';
import type { Store } from '../store/store.js';
import type { ContentService } from './content.js';
import { fieldChanges } from './diff.js';
import { patchTowards, type DesiredView, type Engine, type MachinePatch } from './engine.js';

export interface RewindResult {
  to: number;
  /** The new changes this made, newest last. */
  applied: Array<{ object: string; seq: number | null }>;
  /** Objects rewind could not bring back, and why. */
  skipped: Array<{ object: string; reason: string }>;
}

const same = (a: unknown, b: unknown) => canonicalJson(a) === canonicalJson(b);
const MACHINE_FIELDS = ['name', 'environment', 'pipeline', 'profiles'] as const;

export class History {
  constructor(
    private readonly store: Store,
    private readonly engine: Engine,
    private readonly content: ContentService,
  ) {}

  async show(seq: number) {
    const c = await this.get(seq);
    return { ...c, diff: fieldChanges(c.before ?? null, c.after ?? null) };
  }

  /** Undoes change `seq` as a new change, if what it changed has not been changed again since. */
  async revert(seq: number, author: string): Promise<{ reverted: number; changes: number }> {
    const c = await this.get(seq);
    const by = `${author} (revert #${seq})`;
    const before = await this.latestSeq();
    const [type, ...rest] = c.object.split('/');
    const name = rest.join('/');
    if (type === 'machines') await this.revertMachine(name, c, by);
    else if (type === 'packs') await this.setPack(name, c.after as { version: string } | null, c.before as { version: string } | null, by, true);
    else if (CONTENT_KINDS.includes(type as ContentKind)) await this.setLocal(type as ContentKind, name, c.after, c.before, by, true);
    else if (type === 'packversions') throw new TaktError('conflict', `change #${seq} installed ${name}; installed versions are immutable and kept (use another version with \`takt content use\`)`);
    else throw new TaktError('conflict', `change #${seq} (${c.object}) is run-time work, not desired state; it cannot be reverted`);
    return { reverted: seq, changes: (await this.latestSeq()) - before };
  }

  /** Restores every object changed after `to` to how it stood right after change `to`. */
  async rewind(to: number, author: string): Promise<RewindResult> {
    if (to !== 0) await this.get(to);
    const by = `${author} (rewind to #${to})`;
    // The state of each object as of `to` is the `before` of its first change after `to`.
    const target = new Map<string, Change>();
    for (let after = to; ; ) {
      const page = (await this.store.listChanges({ after, limit: 1000 })).sort((a, b) => a.seq - b.seq);
      for (const c of page) if (!target.has(c.object)) target.set(c.object, c);
      if (page.length < 1000) break;
      after = page[page.length - 1]!.seq;
    }
    const result: RewindResult = { to, applied: [], skipped: [] };
    const objects = [...target.values()];
    // Content first (packs, then local objects that must exist), then machines, then local deletions,
    // so every intermediate state passes the same reference checks.
    const rank = (c: Change) => {
      const type = c.object.split('/')[0]!;
      if (type === 'packs') return 0;
      if (CONTENT_KINDS.includes(type as ContentKind)) return c.before === null ? 3 : 1 + CONTENT_KINDS.indexOf(type as ContentKind) / 10;
      if (type === 'machines') return 2;
      return 4;
    };
    objects.sort((a, b) => rank(a) - rank(b));
    for (const first of objects) {
      const [type, ...rest] = first.object.split('/');
      const name = rest.join('/');
      const seqBefore = await this.latestSeq();
      try {
        if (type === 'packs') await this.setPack(name, undefined, first.before as { version: string } | null, by, false);
        else if (CONTENT_KINDS.includes(type as ContentKind)) await this.setLocal(type as ContentKind, name, undefined, first.before, by, false);
        else if (type === 'machines') {
          if (!(await this.rewindMachine(name, first.before as DesiredView | null, by))) {
            result.skipped.push({ object: first.object, reason: first.before === null ? 'created after the target; delete it if it should go' : 'deleted after the target; create it again if it should come back' });
            continue;
          }
        } else continue;
      } catch (err) {
        if (err instanceof TaktError) {
          result.skipped.push({ object: first.object, reason: err.message });
          continue;
        }
        throw err;
      }
      const seqAfter = await this.latestSeq();
      if (seqAfter > seqBefore) result.applied.push({ object: first.object, seq: seqAfter });
    }
    return result;
  }

  private async revertMachine(id: string, c: Change, by: string) {
    const m = await this.store.getMachine(id);
    if (!m) throw new TaktError('conflict', `machine ${id} no longer exists; change #${c.seq} cannot be reverted`);
    if (c.action !== 'update') throw new TaktError('conflict', `change #${c.seq} ${c.action}d the machine; reverting that is not supported — ${c.action === 'create' ? 'delete' : 'create'} it instead`);
    const before = c.before as DesiredView;
    const after = c.after as DesiredView;
    const patch: MachinePatch = {};
    const conflicts: string[] = [];
    for (const f of MACHINE_FIELDS) {
      if (same(before[f], after[f])) continue;
      if (!same(m[f], after[f])) conflicts.push(f);
      (patch as Record<string, unknown>)[f] = before[f];
    }
    const params: Record<string, unknown> = {};
    for (const k of new Set([...Object.keys(before.params), ...Object.keys(after.params)])) {
      if (same(before.params[k], after.params[k])) continue;
      if (!same(m.params[k], after.params[k])) conflicts.push(`params.${k}`);
      params[k] = before.params[k] ?? null;
    }
    if (Object.keys(params).length) patch.params = params;
    if (conflicts.length) {
      throw new TaktError('conflict', `cannot revert change #${c.seq}: ${conflicts.join(', ')} changed again since; revert the later change first or rewind`);
    }
    const powerChanged = before.power !== after.power;
    if (Object.keys(patch).length === 0 && !powerChanged) {
      throw new TaktError('conflict', `change #${c.seq} changed only the machine's run state (${before.state} → ${after.state}); there is no desired state to revert`);
    }
    if (Object.keys(patch).length) await this.engine.updateMachine(id, patch, by);
    if (powerChanged) await this.engine.setPower(id, before.power, by);
  }

  /** Sets a machine's desired fields to `target`; false when the machine does not exist on one side. */
  private async rewindMachine(id: string, target: DesiredView | null, by: string): Promise<boolean> {
    const m = await this.store.getMachine(id);
    if (!m || !target) return false;
    const patch = patchTowards(m, target);
    if (Object.keys(patch).length) await this.engine.updateMachine(id, patch, by);
    if (m.power !== target.power) await this.engine.setPower(id, target.power, by);
    return true;
  }

  /** Makes a local object equal `target` (null: absent); with `expect`, only if it is still as the change left it. */
  private async setLocal(kind: ContentKind, name: string, expect: unknown, target: unknown, by: string, check: boolean) {
    const current = this.content.current.objects[kind].get(name);
    if (current && current.layer !== 'local') throw new TaktError('conflict', `${kind}/${name} now belongs to pack '${current.layer}'`);
    if (check && !same(current?.def ?? null, expect ?? null)) throw new TaktError('conflict', `${kind}/${name} changed again since; revert the later change first or rewind`);
    if (same(current?.def ?? null, target ?? null)) return;
    if (target === null || target === undefined) await this.content.deleteLocal(kind, name, by);
    else await this.content.putLocal(kind, target, by, current ? 'update' : 'create', name);
  }

  private async setPack(name: string, expect: { version: string } | null | undefined, target: { version: string } | null, by: string, check: boolean) {
    const current = this.content.pinned.get(name)?.version ?? null;
    if (check && current !== (expect?.version ?? null)) throw new TaktError('conflict', `pack ${name} changed again since (now ${current ?? 'not in use'}); revert the later change first or rewind`);
    if (current === (target?.version ?? null)) return;
    if (target === null) await this.content.removePack(name, by);
    else await this.content.usePack(name, target.version, by);
  }

  private async get(seq: number): Promise<Change> {
    const c = await this.store.getChange(seq);
    if (!c) throw new TaktError('not_found', `change #${seq} not found`);
    return c;
  }

  private async latestSeq(): Promise<number> {
    return (await this.store.listChanges({ limit: 1 }))[0]?.seq ?? 0;
  }
}
