/**
 * Issue 12, "Desired state is not observed state": an import refuses up front, in one answer, everything
 * its transaction or a later job would fail on, and its dry run finds exactly the same problems. Through the
 * CLI against a real endpoint: a machine's environment its pipeline does not exercise (changed in the
 * export, or by the content the export pins), undeclared params (unless --allow-undeclared), every problem
 * of a bad export directory at once; and `takt content use` refuses a version whose pipelines no longer
 * exercise a machine's environment, listing the machines.
 */
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import type { Machine } from '../src/model/machine.js';
import { Endpoint, packFiles } from './helpers/endpoint.js';

let ep: Endpoint;
const dir = mkdtempSync(join(tmpdir(), 'takt-restore-checks-'));
const base = join(dir, 'base');

/** A copy of the base export, with `edit` applied to each named machine file's document (or raw text). */
function variant(name: string, edits: Record<string, ((doc: Record<string, unknown>) => void) | string>): string {
  const to = join(dir, name);
  cpSync(base, to, { recursive: true });
  for (const [file, edit] of Object.entries(edits)) {
    const path = join(to, file);
    if (typeof edit === 'string') writeFileSync(path, edit);
    else {
      const doc = parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
      edit(doc);
      writeFileSync(path, stringify(doc));
    }
  }
  return to;
}

const changes = async () => (await ep.api.get<{ items: unknown[] }>('/changes', { limit: 1000 })).items.length;

beforeAll(async () => {
  ep = await Endpoint.start();
  const basic = await packFiles('basic');
  await ep.api.post('/packs', { files: basic });
  // 1.1.0's pipeline `basic` runs in netns only.
  await ep.api.post('/packs', { files: { ...basic, 'pack.yaml': basic['pack.yaml']!.replace('1.0.0', '1.1.0'), 'pipelines/basic.yaml': 'name: basic\nstages: [one, two, three]\nenvironments: [netns]\n' } });
  await ep.api.post('/tasks', { name: 't', script: 'true' });
  await ep.api.post('/stages', { name: 's', tasks: ['t'] });
  await ep.api.post('/pipelines', { name: 'p', stages: ['s'], environments: ['local'] });
  await ep.api.post('/machines', { name: 'm1', environment: 'local', pipeline: 'p' });
  await ep.api.post('/machines', { name: 'm2', environment: 'local', pipeline: 'basic' });
  expect((await ep.cli(['export', base])).code).toBe(0);
});
afterAll(async () => {
  await ep?.stop();
});

describe('import checks everything first; the dry run checks the same', () => {
  it('a machine moved to an environment its pipeline does not exercise: the same problem from the dry run and the import', async () => {
    const d = variant('env', { 'machines/m1.yaml': (m) => (m.environment = 'netns') });
    const before = await changes();
    const dry = await ep.cli(['import', d, '--dry-run']);
    const real = await ep.cli(['import', d]);
    for (const r of [dry, real]) {
      expect(r.code, r.stdout).toBe(1);
      expect(r.stderr).toContain("machines/m1.yaml /environment: machine 'm1' is in environment 'netns', which pipeline 'p' does not exercise; it runs in: local");
    }
    expect(dry.stderr).toBe(real.stderr);
    expect((await ep.api.get<Machine>('/machines/m1')).environment).toBe('local');
    expect(await changes()).toBe(before);
  });

  it('content the export pins that no longer exercises an unchanged machine is refused the same way', async () => {
    const d = variant('pin', {});
    writeFileSync(join(d, 'takt-export.yaml'), readFileSync(join(d, 'takt-export.yaml'), 'utf8').replace('basic: 1.0.0', 'basic: 1.1.0'));
    for (const args of [['--dry-run'], []]) {
      const r = await ep.cli(['import', d, ...args]);
      expect(r.code, r.stdout).toBe(1);
      expect(r.stderr).toContain("machines/m2.yaml /environment: machine 'm2' is in environment 'local', which pipeline 'basic' does not exercise; it runs in: netns");
    }
    expect(JSON.parse((await ep.cli(['content', 'list', '-o', 'json'])).stdout)).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'basic', version: '1.0.0' })]));
  });

  it('undeclared params are refused as `machines update --param` refuses them, unless --allow-undeclared', async () => {
    const d = variant('undeclared', { 'machines/m1.yaml': (m) => (m.params = { fail_verfy: true }) });
    for (const args of [['--dry-run'], []]) {
      const r = await ep.cli(['import', d, ...args]);
      expect(r.code, r.stdout).toBe(1);
      expect(r.stderr).toMatch(/machines\/m1\.yaml \/params\/fail_verfy: param 'fail_verfy' is not declared by any param definition or task.*--allow-undeclared/);
    }
    expect((await ep.api.get<Machine>('/machines/m1')).params).toEqual({});
    const ok = await ep.cli(['import', d, '--allow-undeclared']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toContain('update machines/m1: params.fail_verfy');
    expect((await ep.api.get<Machine>('/machines/m1')).params).toEqual({ fail_verfy: true });
    // back as it was, for the cases below
    expect((await ep.cli(['import', base])).code).toBe(0);
    expect((await ep.api.get<Machine>('/machines/m1')).params).toEqual({});
  });

  it('a bad export directory: every problem of every file in one answer (file:line:col, or file and field)', async () => {
    const d = variant('many', {
      'machines/m1.yaml': (m) => (m.environment = 'netns'),
      'machines/m2.yaml': 'id: m-x\nname: m2\nparams: {\n',
      'machines/m3.yaml': 'id: m-new3\nname: m3\nenvironment: local\nbroker: null\npipeline: null\nprofiles: []\nparams:\n  typo_param: 1\npower: "on"\n',
      'machines/m4.yaml': 'id: m-new4\nname: m4\nenvironment: local\nbroker: null\npipeline: null\nprofiles: []\nparams: {}\npower: sideways\n',
    });
    const before = await changes();
    const dry = await ep.cli(['import', d, '--dry-run']);
    const r = await ep.cli(['import', d]);
    expect(dry.stderr).toBe(r.stderr);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines[0], r.stderr).toMatch(/^takt: .*\(and 3 more problems; nothing was imported\)/);
    // one line per problem: m2 cannot be read (line:col) and m4 misfits the schema, and m1 and m3 are still checked
    expect(lines.slice(1).sort()).toEqual([
      expect.stringMatching(/^ {2}machines\/m1\.yaml \/environment: machine 'm1' is in environment 'netns', which pipeline 'p' does not exercise/),
      expect.stringMatching(/^ {2}machines\/m2\.yaml:4:1: invalid YAML/),
      expect.stringMatching(/^ {2}machines\/m3\.yaml \/params\/typo_param: param 'typo_param' is not declared/),
      expect.stringMatching(/^ {2}machines\/m4\.yaml \/power: must be one of/),
    ]);
    expect(await changes()).toBe(before);
    expect((await ep.api.get<{ items: Machine[] }>('/machines')).items.map((m) => m.name).sort()).toEqual(['m1', 'm2']);
  });

  it('bad content files: all of them in one answer', async () => {
    const d = variant('content', {});
    writeFileSync(join(d, 'local', 'tasks', 't.yaml'), 'name: t\nscript: 42\nbogus: 1\n');
    writeFileSync(join(d, 'local', 'stages', 's.yaml'), 'name: s\ntasks: [t\n');
    const r = await ep.cli(['import', d]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^ {2}local\/stages\/s\.yaml:\d+:\d+: /m);
    expect(r.stderr).toMatch(/^ {2}local\/tasks\/t\.yaml \/\S*: /m);
  });
});

describe('takt content use', () => {
  it("refuses a version whose pipeline no longer exercises a machine's environment, listing the machines and how to fix", async () => {
    const before = await changes();
    const r = await ep.cli(['content', 'use', 'basic@1.1.0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('using basic@1.1.0 would leave 1 machine in an environment its pipeline no longer exercises: m2 (local; pipeline basic runs in: netns)');
    expect(r.stderr).toContain('`takt machines update M --pipeline P`');
    expect(await changes()).toBe(before);
    // once the machine runs another pipeline, the version can be used
    expect((await ep.cli(['machines', 'update', 'm2', '--pipeline', 'p'])).code).toBe(0);
    const ok = await ep.cli(['content', 'use', 'basic@1.1.0']);
    expect(ok.code, ok.stderr).toBe(0);
  });

  it("refuses a local pipeline update that drops a machine's environment", async () => {
    const put = await ep.api.put('/pipelines/p', { name: 'p', stages: ['s'], environments: ['netns'] }).then(
      () => null,
      (err: { message: string }) => err.message,
    );
    expect(put).toMatch(/saving pipeline 'p' would leave 2 machines in an environment their pipeline no longer exercises: m1 \(local; pipeline p runs in: netns\), m2/);
  });
});
