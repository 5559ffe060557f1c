/**
 * Issue 3, first part: immutable pack versions side by side, pinning with `use`, diffs, `requires`,
 * build records and the stale/built-with queries — through the CLI against a real endpoint and agents.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles, writePack } from './helpers/endpoint.js';

let ep: Endpoint;
let work: string;

const fixed = (files: Record<string, string>) => ({
  ...files,
  'pack.yaml': files['pack.yaml']!.replace('1.0.0', '1.0.1'),
  'tasks/configure.yaml': files['tasks/configure.yaml']!.replace('perms 0777', 'perms 0640'),
});

async function json<T>(args: string[]): Promise<T> {
  const r = await ep.cli([...args, '-o', 'json']);
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  return JSON.parse(r.stdout) as T;
}

beforeAll(async () => {
  ep = await Endpoint.start();
  work = mkdtempSync(join(tmpdir(), 'takt-packs-'));
  const v1 = await packFiles('seed');
  writePack(join(work, 'v1'), v1);
  writePack(join(work, 'v2'), fixed(v1));
});
afterAll(async () => ep?.stop());

describe('pack versions', () => {
  it('bundles an artifact named by name@version with its sha256, and installs it', async () => {
    const b = await json<{ file: string; sha256: string }>(['content', 'bundle', join(work, 'v1'), '--out', work]);
    expect(b.file).toBe(join(work, 'seed@1.0.0.takt.json'));
    expect(b.sha256).toMatch(/^[0-9a-f]{64}$/);
    const r = await json<{ installed: boolean; active: boolean; sha256: string }>(['content', 'install', b.file]);
    expect(r).toMatchObject({ installed: true, active: true, sha256: b.sha256 });
    // installing the same bytes again is a no-op
    expect(await json(['content', 'install', b.file])).toMatchObject({ installed: false, active: true });
  });

  it('the seed story: ten machines built with 1.0.0, 1.0.1 fixes a task, the ten are stale, re-applying brings them to 1.0.1', async () => {
    const made = await json<Array<{ name: string }>>(['machines', 'create', 'seed', '--broker', 'local', '--count', '10', '--pipeline', 'seed']);
    expect(made).toHaveLength(10);
    for (const m of made) expect((await ep.cli(['machines', 'wait', m.name, '--timeout', '60s'])).code).toBe(0);

    const rec = await json<{ entries: Array<{ task: string; pack: string; taskSha256: string; scriptSha256: string; params: Record<string, { value: unknown; from: string }> }>; stale: string[] }>([
      'machines',
      'record',
      'seed-1',
    ]);
    expect(rec.entries.map((e) => [e.task, e.pack])).toEqual([
      ['configure', 'seed@1.0.0'],
      ['check', 'seed@1.0.0'],
    ]);
    expect(rec.entries[0]!.params.port).toEqual({ value: 8080, from: 'default' });
    expect(rec.entries[0]!.taskSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(rec.stale).toEqual([]);
    expect(await json<unknown[]>(['machines', 'list', '--stale'])).toHaveLength(0);

    // the fix is installed beside 1.0.0; nothing changes until it is put in use
    const b2 = await json<{ file: string }>(['content', 'bundle', join(work, 'v2'), '--out', work]);
    expect(await json(['content', 'install', b2.file])).toMatchObject({ installed: true, active: false });
    expect(await json<unknown[]>(['machines', 'list', '--stale'])).toHaveLength(0);
    const versions = await json<Array<{ version: string; inUse: boolean }>>(['content', 'versions', 'seed']);
    expect(versions.map((v) => [v.version, v.inUse])).toEqual([
      ['1.0.0', true],
      ['1.0.1', false],
    ]);

    const diff = await json<{ added: string[]; removed: string[]; changed: Array<{ object: string; fields: Array<{ path: string }> }> }>([
      'content',
      'diff',
      'seed@1.0.0',
      'seed@1.0.1',
    ]);
    expect(diff).toMatchObject({ added: [], removed: [], changed: [{ object: 'tasks/configure', fields: [{ path: '/script' }] }] });

    await json(['content', 'use', 'seed@1.0.1']);
    const stale = await json<Array<{ name: string; stale: string[] }>>(['machines', 'list', '--stale']);
    expect(stale).toHaveLength(10);
    expect(stale[0]!.stale).toContain('configure: built with seed@1.0.0, seed@1.0.1 is in use');
    expect(await json<unknown[]>(['machines', 'list', '--built-with', 'seed@<1.0.1'])).toHaveLength(10);

    // re-apply the fix to every machine built with the broken version, in waves
    const ro = await ep.cli(['rollouts', 'create', '--pipeline', 'seed', '--select', 'builtWith=seed@<1.0.1', '--canary', '1', '--batch', '5']);
    expect(ro.code, ro.stdout + ro.stderr).toBe(0);
    expect(ro.stdout).toMatch(/completed — 10 of 10 succeeded/);
    expect(ro.stdout).toMatch(/canary .* 1\/1 ok\n\s+wave 2 .* 5\/5 ok\n\s+wave 3 .* 4\/4 ok/);
    expect(await json<unknown[]>(['machines', 'list', '--stale'])).toHaveLength(0);
    expect(await json<unknown[]>(['machines', 'list', '--built-with', 'seed@<1.0.1'])).toHaveLength(0);
    expect(await json<unknown[]>(['machines', 'list', '--built-with', 'seed@1.0.1'])).toHaveLength(10);
    const after = await json<{ entries: Array<{ pack: string }> }>(['machines', 'record', 'seed-7']);
    expect(after.entries.every((e) => e.pack === 'seed@1.0.1')).toBe(true);
    const list = await json<Array<{ id: string }>>(['machines', 'list', '--name', 'seed-7']);
    expect(readFileSync(join(ep.data, 'machines', list[0]!.id, 'root', 'etc', 'app.conf'), 'utf8')).toContain('perms 0640');
    // Ten real machines walked twice, with CLI calls between: over a minute on a loaded 2-core machine.
  }, 300_000);

  it('a changed param makes a machine stale with the reason', async () => {
    await ep.cli(['machines', 'update', 'seed-3', '--param', 'port=9090']);
    const stale = await json<Array<{ name: string; stale: string[] }>>(['machines', 'list', '--stale']);
    expect(stale.map((m) => m.name)).toEqual(['seed-3']);
    expect(stale[0]!.stale).toEqual(['configure: param port changed (8080 → 9090)']);
  });

  it('installing a changed artifact under an existing version is refused; the store is unchanged', async () => {
    const before = await ep.api.get<{ items: unknown[] }>('/changes', { limit: 1000 });
    const versionsBefore = await ep.api.get('/packs/versions');
    const files = await packFiles('seed');
    const tampered = { ...files, 'tasks/check.yaml': files['tasks/check.yaml']!.replace('cat', 'head') };
    writePack(join(work, 'tampered'), tampered);
    const r = await ep.cli(['content', 'install', join(work, 'tampered')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/seed@1\.0\.0 is already installed with different content .* bump the version/);
    expect((await ep.api.get<{ items: unknown[] }>('/changes', { limit: 1000 })).items).toEqual(before.items);
    expect(await ep.api.get('/packs/versions')).toEqual(versionsBefore);
    // a corrupt artifact is caught before it is sent
    const bundle = JSON.parse(readFileSync(join(work, 'seed@1.0.0.takt.json'), 'utf8')) as { files: Record<string, string> };
    bundle.files['tasks/check.yaml'] += '\n# edited\n';
    writeFileSync(join(work, 'corrupt.takt.json'), JSON.stringify(bundle));
    const c = await ep.cli(['content', 'install', join(work, 'corrupt.takt.json')]);
    expect(c.stderr).toMatch(/corrupt artifact/);
  });

  it('requires are enforced when a version is put in use', async () => {
    const files = {
      'pack.yaml': 'name: addon\nversion: 1.0.0\nrequires:\n  seed: ">=2.0.0"\n',
      'tasks/extra.yaml': 'name: extra\nscript: "true"\n',
    };
    writePack(join(work, 'addon'), files);
    const r = await ep.cli(['content', 'push', join(work, 'addon')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/addon@1\.0\.0 requires seed >=2\.0\.0, but seed@1\.0\.1 would run/);
    // rolling seed back to 1.0.0 is fine on its own (nothing requires it yet)
    expect((await ep.cli(['content', 'use', 'seed@1.0.0'])).code).toBe(0);
    expect((await ep.cli(['content', 'use', 'seed@9.9.9'])).stderr).toMatch(/seed@9\.9\.9 is not installed \(installed: 1\.0\.0, 1\.0\.1\)/);
  });
});
