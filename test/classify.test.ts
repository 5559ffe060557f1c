/**
 * Classification against a real endpoint (issue #13 item 4): a pack with classification rules, machines
 * that registered with their facts through the join path, `takt machines classify` (dry run first, which
 * changes nothing), the rule's profiles and pipeline set through the commit path (history), `takt plan`,
 * `machines get` and `describe` naming the rule and why, no match explained, a pipeline under way kept
 * unless --force, a machine without facts refused, and a pack with a bad rule refused at file:line:col.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Facts } from '../src/model/facts.js';
import { Endpoint, packFiles, writePack } from './helpers/endpoint.js';

const GiB = 2 ** 30;
/** Each test runs several CLI processes: bounded generously for a loaded 2-core machine (4x the quiet time and more). */
const SLOW = 240_000;
let ep: Endpoint;
const call = (...args: Parameters<Endpoint['call']>) => ep.call(...args);
const dirs: string[] = [];

const facts = (over: Partial<Facts> = {}): Facts => ({
  hostname: 'node',
  machineId: null,
  productUuid: null,
  macs: ['52:54:00:00:13:01'],
  addresses: [],
  os: { id: 'debian', versionId: '12', prettyName: 'Debian GNU/Linux 12', idLike: [] },
  kernel: '6.1.0-13-amd64',
  arch: 'x86_64',
  cpu: { model: 'QEMU Virtual CPU', count: 4 },
  memoryBytes: 4 * GiB,
  disks: [{ name: 'vda', sizeBytes: 20 * GiB, model: null, rotational: false }],
  agentVersion: '0.1.0',
  ...over,
});

/** Registers a host through a join token (no pipeline): a machine with facts, as discovery makes one. */
async function register(name: string, f: Facts): Promise<{ id: string; name: string }> {
  const t = await call('POST', '/join-tokens', { url: ep.url, name });
  expect(t.status, JSON.stringify(t.body)).toBe(201);
  const r = await call('POST', '/join', { facts: { ...f, hostname: name } }, t.body.token);
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.machine;
}

beforeAll(async () => {
  ep = await Endpoint.start();
  const r = await call('POST', '/packs', { files: await packFiles('site'), use: true });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
});
afterAll(async () => {
  await ep?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('classify a machine', () => {
  let big: { id: string; name: string };
  beforeAll(async () => {
    big = await register('big-1', facts({ macs: ['52:54:00:00:13:01'] }));
  });

  it('a dry run says which rule matches and why, and changes nothing', async () => {
    const before = await call('GET', `/machines/${big.id}`);
    expect(before.body).toMatchObject({ pipeline: null, profiles: [] });
    const changes = (await call('GET', `/changes?object=machines/${big.id}`)).body.items.length;
    const cli = await ep.cli(['machines', 'classify', 'big-1', '--dry-run']);
    expect(cli.code, cli.stderr).toBe(0);
    expect(cli.stdout).toContain('big-1: matched rule big-vms (classifier site, pack site@1.2.0): memoryBytes 4294967296 >= 2147483648 (2GiB); cpu.count 4 >= 2');
    expect(cli.stdout).toContain('dry run, would give: pipeline → demo; profiles + big');
    const after = await call('GET', `/machines/${big.id}`);
    expect(after.body).toMatchObject({ pipeline: null, profiles: [] });
    expect(after.body.classification).toBeUndefined();
    expect((await call('GET', `/changes?object=machines/${big.id}`)).body.items.length).toBe(changes);
  }, SLOW);

  it('sets the rule\'s profiles and pipeline through the commit path, with the provenance on the machine', async () => {
    const r = await call('POST', `/machines/${big.id}/classify`, {});
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body).toMatchObject({
      machine: 'big-1',
      dryRun: false,
      rule: { pack: 'site', version: '1.2.0', classifier: 'site', name: 'big-vms' },
      reasons: ['memoryBytes 4294967296 >= 2147483648 (2GiB)', 'cpu.count 4 >= 2'],
      gave: { profiles: ['big'], environment: null, pipeline: 'demo', params: [] },
      after: { pipeline: 'demo', profiles: ['big'], state: 'running' },
    });
    const m = (await call('GET', `/machines/${big.id}`)).body;
    expect(m.classification).toMatchObject({ pack: 'site', version: '1.2.0', classifier: 'site', rule: 'big-vms', by: 'admin', reasons: r.body.reasons, at: expect.any(String) });
    const history = (await call('GET', `/changes?object=machines/${big.id}`)).body.items;
    const last = history.find((c: { action: string }) => c.action === 'update');
    expect(last).toMatchObject({ author: 'admin', action: 'update', before: { pipeline: null, profiles: [] }, after: { pipeline: 'demo', profiles: ['big'] } });
  }, SLOW);

  it('takt plan, machines get and describe name the rule and why; plan -o json carries it', async () => {
    const plan = await ep.cli(['plan', 'big-1']);
    expect(plan.code, plan.stderr).toBe(0);
    expect(plan.stdout).toMatch(/classified by rule big-vms \(classifier site, pack site@1\.2\.0\): memoryBytes 4294967296 >= 2147483648 \(2GiB\); cpu\.count 4 >= 2 · pipeline → demo; profiles \+ big · \S+ by admin/);
    expect(plan.stdout).toContain('greeting = "hello from a big machine"');
    const json = JSON.parse((await ep.cli(['plan', 'big-1', '-o', 'json'])).stdout);
    expect(json.classification).toMatchObject({ rule: 'big-vms', classifier: 'site', pack: 'site', version: '1.2.0' });
    const get = await ep.cli(['machines', 'get', 'big-1']);
    expect(get.stdout).toMatch(/Classified\n {2}rule big-vms \(classifier site, pack site@1\.2\.0\): memoryBytes/);
    const desc = await ep.cli(['machines', 'describe', 'big-1']);
    expect(desc.stdout).toMatch(/Classified: +rule big-vms \(classifier site, pack site@1\.2\.0\)/);
  }, SLOW);

  it('classifying again is idempotent: nothing new, no history entry', async () => {
    const n = (await call('GET', `/changes?object=machines/${big.id}`)).body.items.length;
    const r = await call('POST', `/machines/${big.id}/classify`, null);
    expect(r.status).toBe(200);
    expect(r.body.gave).toEqual({ profiles: [], environment: null, pipeline: null, params: [] });
    expect((await call('GET', `/changes?object=machines/${big.id}`)).body.items.length).toBe(n);
    expect((await ep.cli(['machines', 'classify', 'big-1'])).stdout).toContain('nothing new');
  }, SLOW);

  it('does not replace a pipeline under way unless forced', async () => {
    // A local classifier tried first (order 1) that sends this machine elsewhere.
    const c = await call('POST', '/classifiers', { name: 'first', order: 1, rules: [{ name: 'move-big-1', match: ['hostname=big-1'], pipeline: 'other' }] });
    expect(c.status, JSON.stringify(c.body)).toBe(201);
    try {
      const refused = await call('POST', `/machines/${big.id}/classify`, { dryRun: true });
      expect(refused.status).toBe(409);
      expect(refused.body.error.message).toMatch(/machine 'big-1' is running in pipeline demo; rule move-big-1 \(classifier first, local\) would replace it with other and cancel that work\. .*--force/);
      const cli = await ep.cli(['machines', 'classify', 'big-1']);
      expect(cli.code).not.toBe(0);
      expect(cli.stderr).toMatch(/--force/);
      expect((await call('GET', `/machines/${big.id}`)).body.pipeline).toBe('demo');
      const forced = await ep.cli(['machines', 'classify', 'big-1', '--force']);
      expect(forced.code, forced.stderr).toBe(0);
      expect(forced.stdout).toContain('matched rule move-big-1 (classifier first, local): hostname "big-1" = "big-1"');
      expect((await call('GET', `/machines/${big.id}`)).body).toMatchObject({ pipeline: 'other', classification: { pack: 'local', version: null, classifier: 'first', rule: 'move-big-1' } });
    } finally {
      expect((await call('DELETE', '/classifiers/first')).status).toBe(200);
    }
  }, SLOW);

  it('no match changes nothing and says why the nearest rules failed (exit status 1)', async () => {
    const small = await register('small-1', facts({ macs: ['52:54:00:00:13:02'], memoryBytes: 512 * 2 ** 20, cpu: { model: null, count: 1 }, os: { id: 'rocky', versionId: '9', prettyName: 'Rocky', idLike: [] } }));
    const r = await call('POST', `/machines/${small.id}/classify`, {});
    expect(r.status).toBe(200);
    expect(r.body.rule).toBeNull();
    expect(r.body.reasons).toEqual([
      'no rule matched (3 tried); nearest:',
      'gpu (classifier site, pack site@1.2.0): cpu.model is absent (wanted = "GPU box")',
      'big-vms (classifier site, pack site@1.2.0): memoryBytes 536870912 is not >= 2147483648 (2GiB); cpu.count 1 is not >= 2',
      'debian-small (classifier site, pack site@1.2.0): os.id "rocky" is not in (debian, ubuntu); memoryBytes 536870912 is not >= 1073741824 (1GiB)',
    ]);
    const cli = await ep.cli(['machines', 'classify', 'small-1']);
    expect(cli.code).toBe(1);
    expect(cli.stdout).toContain('small-1: no rule matched; nothing changed');
    expect((await call('GET', `/machines/${small.id}`)).body).toMatchObject({ pipeline: null, profiles: [] });
  }, SLOW);

  it('refuses a machine that has reported no facts, and an unknown one', async () => {
    const m = await call('POST', '/machines', { name: 'nofacts-1', environment: 'local' });
    expect(m.status, JSON.stringify(m.body)).toBe(201);
    const r = await call('POST', `/machines/nofacts-1/classify`, {});
    expect(r.status).toBe(409);
    expect(r.body.error.message).toMatch(/machine 'nofacts-1' has reported no facts yet/);
    expect((await call('POST', '/machines/nope/classify', {})).status).toBe(404);
    expect((await call('POST', `/machines/nofacts-1/classify`, { dryrun: true })).status).toBe(422);
  }, SLOW);
});

describe('classify --all', () => {
  it('classifies every machine with facts, reporting each refusal or no match and going on', async () => {
    const r = await ep.cli(['machines', 'classify', '--all', '--dry-run']);
    expect(r.code).toBe(1);
    // big-1 runs pipeline other (forced above), which big-vms would replace: refused, and the rest go on.
    expect(r.stdout).toMatch(/big-1: machine 'big-1' is running in pipeline other; rule big-vms \(classifier site, pack site@1\.2\.0\) would replace it with demo/);
    expect(r.stdout).toContain('small-1: no rule matched; nothing changed');
    expect(r.stdout).not.toContain('nofacts-1');
    const json = JSON.parse((await ep.cli(['machines', 'classify', '--all', '--dry-run', '-o', 'json'])).stdout);
    expect(json.map((x: { machine: string }) => x.machine).sort()).toEqual(['big-1', 'small-1']);
    expect((await call('GET', '/machines/big-1')).body.pipeline).toBe('other');
    const bad = await ep.cli(['machines', 'classify']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/name one machine, or give --all/);
  }, SLOW);
});

describe('a pack with a bad rule', () => {
  it('is refused with file:line:col, by the endpoint and by lint', async () => {
    const files = await packFiles('site');
    files['pack.yaml'] = files['pack.yaml']!.replace('1.2.0', '1.3.0');
    files['classifiers/site.yaml'] = 'name: site\nrules:\n  - name: r\n    match: [memoryBytes>=lots]\n    profiles: [bgi]\n';
    const r = await call('POST', '/packs', { files });
    expect(r.status).toBe(422);
    const diags = r.body.error.details.diagnostics.map((d: { file: string; line: number; col: number; message: string }) => `${d.file}:${d.line}:${d.col}: ${d.message}`);
    expect(diags).toEqual([
      "classifiers/site.yaml:4:13: selector 'memoryBytes>=lots': 'lots' is not a number; >= compares numbers, optionally with a byte unit (2GiB, 512MiB, 500GB)",
      "classifiers/site.yaml:5:16: profile 'bgi' not found (did you mean 'big'?)",
    ]);
    const dir = mkdtempSync(join(tmpdir(), 'takt-classify-'));
    dirs.push(dir);
    writePack(dir, files);
    const lint = await ep.cli(['content', 'lint', dir]);
    expect(lint.code).not.toBe(0);
    expect(lint.stdout + lint.stderr).toContain("classifiers/site.yaml:5:16: profile 'bgi' not found (did you mean 'big'?)");
  }, SLOW);
});
