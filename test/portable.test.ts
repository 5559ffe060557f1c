/**
 * Issue 3: `takt export DIR` writes the complete desired state as YAML; `takt import DIR` restores it.
 * export → import (fresh endpoint) → export is byte-identical.
 */
import { mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles } from './helpers/endpoint.js';

let a: Endpoint;
let b: Endpoint;
const dir = mkdtempSync(join(tmpdir(), 'takt-export-'));

function readTree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of readdirSync(d)) {
      const p = join(d, e);
      if (statSync(p).isDirectory()) walk(p);
      else out[relative(root, p)] = readFileSync(p, 'utf8');
    }
  };
  walk(root);
  return out;
}

beforeAll(async () => {
  [a, b] = await Promise.all([Endpoint.start(), Endpoint.start()]);
  const basic = await packFiles('basic');
  await a.api.post('/packs', { files: basic });
  await a.api.post('/packs', { files: { ...basic, 'pack.yaml': basic['pack.yaml']!.replace('1.0.0', '1.1.0') } });
  await a.api.post('/packs', { files: await packFiles('seed') });
  await a.api.post('/profiles', { name: 'web', description: 'web tier', params: { msg: 'from web', code: 2 } });
  await a.api.post('/tasks', { name: 'local-hello', params: { required: ['msg'] }, script: 'echo {{ msg }}' });
  await a.api.post('/machines', { name: 'plain', params: { msg: 'hi', api_key: 'k-secret', count: 3 }, profiles: ['web'], pipeline: 'basic' });
  await a.api.post('/machines', { name: 'sandbox', broker: 'local', pipeline: 'seed', params: { port: 9000 } });
});
afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

describe('export and import', () => {
  it('exports a directory of YAML: pack versions as files, pins, local content, machines; secrets stay sealed', async () => {
    const r = await a.cli(['export', join(dir, 'one')]);
    expect(r.code, r.stderr).toBe(0);
    const tree = readTree(join(dir, 'one'));
    expect(Object.keys(tree)).toEqual(
      expect.arrayContaining([
        'takt-export.yaml',
        'packs/basic/1.0.0/pack.yaml',
        'packs/basic/1.1.0/tasks/hello.yaml',
        'packs/seed/1.0.0/tasks/configure.yaml',
        'local/profiles/web.yaml',
        'local/tasks/local-hello.yaml',
        'machines/plain.yaml',
        'machines/sandbox.yaml',
      ]),
    );
    expect(tree['takt-export.yaml']).toBe('format: takt-export/1\ninUse:\n  basic: 1.0.0\n  seed: 1.0.0\n');
    expect(tree['packs/basic/1.0.0/tasks/hello.yaml']).toBe((await packFiles('basic'))['tasks/hello.yaml']);
    expect(tree['machines/plain.yaml']).toMatch(/pipeline: basic/);
    expect(JSON.stringify(tree)).not.toContain('k-secret');
    expect(tree['machines/plain.yaml']).toMatch(/api_key:\n\s+\$secure: v1:/);
  });

  it('import into a fresh endpoint, export again: byte-identical', async () => {
    const imp = await b.cli(['import', join(dir, 'one'), '-o', 'json']);
    expect(imp.code, imp.stdout + imp.stderr).toBe(0);
    const r = JSON.parse(imp.stdout) as { packVersionsInstalled: string[]; machines: { created: string[] }; problems: string[] };
    expect(r.problems).toEqual([]);
    expect(r.packVersionsInstalled.sort()).toEqual(['basic@1.0.0', 'basic@1.1.0', 'seed@1.0.0']);
    expect(r.machines.created.sort()).toEqual(['plain', 'sandbox']);
    expect((await b.cli(['export', join(dir, 'two')])).code).toBe(0);
    expect(readTree(join(dir, 'two'))).toEqual(readTree(join(dir, 'one')));
    // a secure value sealed with the other endpoint's key is reported, not thrown
    const plan = await b.api.get<{ steps: Array<{ task: string; error: string | null }> }>('/machines/plain/plan');
    expect(plan.steps.find((s) => s.task === 'hello')?.error).toMatch(/secure param 'api_key' cannot be decrypted with this endpoint's secret\.key/);
    // the brokered machine is real on the new endpoint: its agent runs the pipeline
    expect((await b.cli(['machines', 'wait', 'sandbox', '--timeout', '60s'])).code).toBe(0);
  });

  it('importing the same state again changes nothing', async () => {
    const before = (await a.api.get<{ items: unknown[] }>('/changes', { limit: 1000 })).items.length;
    const r = await a.cli(['import', join(dir, 'one')]);
    expect(r.code, r.stderr).toBe(0);
    expect((await a.api.get<{ items: unknown[] }>('/changes', { limit: 1000 })).items.length).toBe(before);
  });

  it('import restores what changed since the export, and reports what it leaves', async () => {
    await a.api.patch('/machines/plain', { params: { msg: 'drifted', count: null }, profiles: [] });
    await a.api.put('/profiles/web', { name: 'web', params: { msg: 'drifted' } });
    await a.api.post('/machines', { name: 'newcomer' });
    const r = await a.cli(['import', join(dir, 'one'), '-o', 'json']);
    expect(r.code).toBe(1); // something was left: the newcomer
    const res = JSON.parse(r.stdout) as { problems: string[] };
    expect(res.problems).toEqual([expect.stringMatching(/^machines\/newcomer: not in the export/)]);
    await a.api.delete('/machines/newcomer');
    expect((await a.cli(['export', join(dir, 'three')])).code).toBe(0);
    expect(readTree(join(dir, 'three'))).toEqual(readTree(join(dir, 'one')));
  });

  it('refuses what is not an export', async () => {
    const r = await a.cli(['import', join(dir, 'nope')]);
    expect(r.stderr).toMatch(/no such directory/);
    const notExport = await a.cli(['import', 'test/packs/basic']);
    expect(notExport.stderr).toMatch(/takt-export\.yaml is missing/);
  });
});
