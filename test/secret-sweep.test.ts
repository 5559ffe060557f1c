/**
 * Issue 10 §2, the secret sweep: one distinctive secure value set at each layer (machine, profile in a
 * pack, local profile, stage, pipeline, global profile, param default, blueprint, work order) and produced
 * as a secure task output, printed by scripts in every way (template, takt-get, set -x, a value split
 * across log chunks, a later task echoing the output); values refused by lint and validation; a stage
 * precondition and an output check that fail on a secure value. Then every place a person or another
 * system can look — API responses, the event stream, history, the export, the server log, job logs, the
 * database files — is searched for each value: zero hits. Also: the script hash of a 4-digit PIN.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, runCli, until } from './helpers/endpoint.js';

const V = {
  machine: 'SWEEP-machine-Qx7',
  profile: 'SWEEP-profile-Lm2',
  local: 'SWEEP-localprofile-Zr5',
  stage: 'SWEEP-stage-Hb9',
  pipeline: 'SWEEP-pipeline-split-Wc3',
  global: 'SWEEP-global-Kd4',
  default: 'SWEEP-default-Pn8',
  blueprint: 'SWEEP-blueprint-Ty6',
  workorder: 'SWEEP-workorder-Ej1',
  gate: 'SWEEP-gate-Uv0',
  output: 'SWEEP-out-9K4Q',
  badOutput: 'SWEEP-bad-Z',
  patchError: 'SWEEP-patch-err-Aa1',
  lintError: 'SWEEP-lint-err-Bb2',
  packError: 'SWEEP-pack-err-Cc3',
  cliLint: 'SWEEP-cli-lint-Dd4',
};
const PIN = 4821;

const secureParam = (name: string, schema = '{ type: string }') => `name: ${name}\nsecure: true\nschema: ${schema}\n`;

const PACK: Record<string, string> = {
  'pack.yaml': 'name: sweep\nversion: 1.0.0\ndescription: secure values at every layer\n',
  ...Object.fromEntries(
    ['s_machine', 's_profile', 's_local', 's_stage', 's_pipeline', 's_global', 's_blueprint', 's_wo', 's_out'].map((n) => [`params/${n}.yaml`, secureParam(n)]),
  ),
  'params/s_default.yaml': secureParam('s_default', `{ type: string, default: ${V.default} }`),
  'params/s_bad.yaml': secureParam('s_bad', '{ type: string, pattern: "^ok-" }'),
  'params/pin.yaml': secureParam('pin', '{ type: integer, minimum: 1000, maximum: 9999 }'),
  'profiles/sweep.yaml': `name: sweep\n# a comment that stays\nparams:\n  s_profile: ${V.profile}\n`,
  'profiles/global.yaml': `name: global\nparams:\n  s_global: "${V.global}"\n`,
  'stages/s1.yaml': `name: s1\ntasks: [print-all, use-pin, produce, consume]\nparams: { s_stage: ${V.stage} }\n`,
  'stages/gate.yaml': 'name: gate\ntasks: [use-pin]\nexpect:\n  - { param: s_machine, equals: nope }\n',
  'stages/bad.yaml': 'name: bad\ntasks: [bad-out]\n',
  'pipelines/sweep.yaml': `name: sweep\nstages: [s1]\nparams:\n  s_pipeline: |-\n    ${V.pipeline}\n`,
  'pipelines/gated.yaml': 'name: gated\nstages: [gate]\n',
  'pipelines/badout.yaml': 'name: badout\nstages: [bad]\n',
  'blueprints/bp.yaml': `name: bp\ntasks: [print-bp]\nparams:\n  s_blueprint: ${V.blueprint}\n`,
  'tasks/print-all.yaml': [
    'name: print-all',
    'params: { required: [s_machine, s_profile, s_local, s_stage, s_pipeline, s_global, s_default, pin] }',
    'script: |',
    '  echo "template: {{ s_machine }} {{ s_profile }} {{ s_local }} {{ s_stage }} {{ s_pipeline }} {{ s_global }} {{ s_default }}"',
    '  for k in s_machine s_profile s_local s_stage s_pipeline s_global s_default; do echo "takt-get $k: $(takt-get $k)"; takt-get $k >&2; done',
    '  set -x',
    '  v=$(takt-get s_machine)',
    '  echo "$v" > /dev/null',
    '  set +x',
    // One value printed in two writes with a pause between: it reaches the endpoint in two chunks when
    // the agent flushes in between (and in one otherwise); masked either way.
    "  printf '%s' \"$(takt-get s_pipeline | cut -c1-12)\"; sleep 0.5; printf '%s\\n' \"$(takt-get s_pipeline | cut -c13-)\"",
    '',
  ].join('\n'),
  'tasks/use-pin.yaml': 'name: use-pin\nparams: { required: [pin] }\nscript: |\n  echo {{ pin }}\n',
  // The output is built at run time: its value is not in the task's source.
  'tasks/produce.yaml': 'name: produce\noutputs: { s_out: { type: string } }\nscript: |\n  v="SWEEP$(printf %s -out)-$(printf %s 9K4Q)"\n  takt-set s_out "$v"\n',
  'tasks/consume.yaml': 'name: consume\nparams: { required: [s_out] }\nscript: |\n  set -x\n  echo "output via template: {{ s_out }}"\n  takt-get s_out\n  echo "$(takt-get s_out)"\n',
  'tasks/print-bp.yaml': 'name: print-bp\nparams: { required: [s_blueprint, s_wo] }\nscript: |\n  set -x\n  echo "{{ s_blueprint }} {{ s_wo }}"\n  takt-get s_blueprint\n  takt-get s_wo\n',
  'tasks/bad-out.yaml': 'name: bad-out\noutputs: { s_bad: { type: string } }\nscript: |\n  takt-set s_bad "SWEEP$(printf %s -bad)-Z"\n',
};

let ep: Endpoint;
/** Everything read from the endpoint, by where it came from. */
const seen: Array<{ where: string; text: string }> = [];
const work = mkdtempSync(join(tmpdir(), 'takt-sweep-'));

async function call(method: string, path: string, body?: unknown, raw?: string): Promise<{ status: number; json: unknown; text: string }> {
  const res = await fetch(`${ep.url}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${ep.token}`, ...(body !== undefined || raw !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: raw ?? (body === undefined ? undefined : JSON.stringify(body)),
  });
  const text = await res.text();
  seen.push({ where: `${method} ${path} → ${res.status}`, text });
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, json, text };
}

const get = async <T>(path: string): Promise<T> => (await call('GET', path)).json as T;

function filesUnder(root: string): string[] {
  if (!existsSync(root)) return [];
  return readdirSync(root).flatMap((e) => {
    const p = join(root, e);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

/** The event stream from the start, read until `topic` shows up. */
async function readEvents(topic: string): Promise<string> {
  const ctl = new AbortController();
  const res = await fetch(`${ep.url}/api/v1/events?since=0`, { headers: { authorization: `Bearer ${ep.token}` }, signal: ctl.signal });
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let text = '';
  while (!text.includes(topic)) {
    const { value, done } = await reader.read();
    if (done) break;
    text += dec.decode(value, { stream: true });
  }
  ctl.abort();
  return text;
}

beforeAll(async () => {
  ep = await Endpoint.start();
  expect((await call('POST', '/packs', { files: PACK })).status).toBe(201);
  expect((await call('POST', '/profiles', { name: 'local-sweep', params: { s_local: V.local } })).status).toBe(201);
  const created = await call('POST', '/machines', { name: 'sweeper', broker: 'local', pipeline: 'sweep', profiles: ['sweep', 'local-sweep'], params: { s_machine: V.machine, pin: PIN } });
  expect(created.status, created.text).toBe(201);
  expect((await ep.cli(['machines', 'wait', 'sweeper', '--timeout', '120s'])).code).toBe(0);
  const wo = await call('POST', '/workorders', { machine: 'sweeper', blueprint: 'bp', params: { s_wo: V.workorder } });
  expect(wo.status, wo.text).toBe(201);
  const woId = (wo.json as { id: string }).id;
  await until(async () => (await get<{ state: string }>(`/workorders/${woId}`)).state === 'succeeded', 60_000, 'the work order');
  await call('POST', '/machines', { name: 'gate', broker: 'local', pipeline: 'gated', params: { s_machine: V.gate, pin: PIN } });
  await call('POST', '/machines', { name: 'badout', broker: 'local', pipeline: 'badout' });
  await until(async () => (await get<{ state: string }>('/machines/gate')).state === 'stopped', 60_000, 'the gate machine to stop');
  await until(async () => (await get<{ state: string }>('/machines/badout')).state === 'stopped', 60_000, 'the badout machine to stop');
}, 240_000);

afterAll(async () => {
  await ep?.stop();
});

describe('secret sweep', () => {
  it('ran: every layer reached the scripts, which printed every value', async () => {
    const jobs = (await get<{ items: Array<{ id: string; task: string; state: string; machineId: string }> }>('/jobs?limit=1000')).items;
    const byTask = new Map(jobs.map((j) => [j.task, j]));
    for (const t of ['print-all', 'use-pin', 'produce', 'consume', 'print-bp']) expect(byTask.get(t)?.state, t).toBe('succeeded');
    const log = async (task: string) => (await get<{ chunks: Array<{ data: string }> }>(`/jobs/${byTask.get(task)!.id}/log?limit=10000`)).chunks.map((c) => c.data).join('');
    // The values were printed (as masks), not silently missing.
    const printAll = await log('print-all');
    expect(printAll).toContain('template: ******** ******** ******** ******** ******** ******** ********');
    expect(printAll).toMatch(/takt-get s_global: \*{8}/);
    expect(printAll).toMatch(/\+ v=\*{8}/);
    expect(await log('consume')).toContain('output via template: ********');
    expect(await log('print-bp')).toMatch(/\*{8} \*{8}/);
    const gate = await get<{ reason: string }>('/machines/gate');
    expect(gate.reason).toMatch(/precondition: expectation 's_machine equals "nope"' failed \(got "\*{8}"\)/);
    const bad = jobs.find((j) => j.task === 'bad-out') as unknown as { reason: string };
    expect(bad.reason).toMatch(/its output s_bad = \(secure value\)/);
  });

  it('lint and validation errors name the problem, never the secure value', async () => {
    const patch = await call('PATCH', '/machines/sweeper', { params: { pin: V.patchError } });
    expect(patch.status).toBe(422);
    expect(patch.text).toMatch(/param 'pin'/);
    const local = await call('POST', '/profiles', { name: 'bad', params: { pin: V.lintError } });
    expect(local.status).toBe(422);
    expect(local.text).toMatch(/param 'pin': must be an integer \(secure value, not shown\)/);
    const pack = await call('POST', '/packs', { files: { ...PACK, 'pack.yaml': PACK['pack.yaml']!.replace('1.0.0', '1.0.1'), 'profiles/bad.yaml': `name: bad\nparams:\n  pin: ${V.packError}\n` } });
    expect(pack.status).toBe(422);
    expect(pack.text).toMatch(/profiles\/bad\.yaml.*param 'pin': must be an integer \(secure value, not shown\)/);
    // The CLI's lint, on a pack directory
    const dir = join(work, 'lintpack');
    for (const [path, text] of Object.entries({ ...PACK, 'profiles/bad.yaml': `name: bad\nparams:\n  pin: ${V.cliLint}\n` })) {
      mkdirSync(dirname(join(dir, path)), { recursive: true });
      writeFileSync(join(dir, path), text);
    }
    const lint = await runCli(['content', 'lint', dir]);
    expect(lint.code).not.toBe(0);
    seen.push({ where: 'takt content lint', text: lint.stdout + lint.stderr });
    expect(lint.stdout + lint.stderr).toMatch(/profiles\/bad\.yaml:3:\d+: param 'pin': must be an integer \(secure value, not shown\)/);
  });

  it("the job's script hash cannot be tested against guesses of a 4-digit PIN", async () => {
    const job = (await get<{ items: Array<{ id: string; task: string }> }>('/jobs?task=use-pin&limit=10')).items.find((j) => j.task === 'use-pin')!;
    const detail = await get<{ script: string; scriptSha256: string }>(`/jobs/${job.id}`);
    expect(detail.script).toBe('echo ********\n');
    expect(detail.scriptSha256).toMatch(/^[0-9a-f]{64}$/);
    const sha = (s: string) => createHash('sha256').update(s).digest('hex');
    for (let pin = 0; pin <= 9999; pin++) {
      for (const candidate of [`echo ${pin}\n`, `echo ${String(pin).padStart(4, '0')}\n`]) expect(sha(candidate)).not.toBe(detail.scriptSha256);
    }
    // Build records and their staleness still work on the keyed hash.
    const rec = await get<{ entries: Array<{ task: string; scriptSha256: string }>; stale: string[] }>('/machines/sweeper/record');
    expect(rec.entries.find((e) => e.task === 'use-pin')?.scriptSha256).toBe(detail.scriptSha256);
    expect(rec.stale).toEqual([]);
    // A changed secret makes the machine stale, without saying what it was or is.
    expect((await call('PATCH', '/machines/sweeper', { params: { pin: 1234 } })).status).toBe(200);
    const stale = await get<{ stale: string[] }>('/machines/sweeper/record');
    expect(stale.stale).toContain('use-pin: a secure param changed since it ran (its script differs; values not shown)');
    expect(stale.stale.join(' ')).not.toMatch(/1234|4821/);
  });

  it('no secure value anywhere: API, events, history, export, server log, job logs, database files', async () => {
    // API reads
    const machines = (await get<{ items: Array<{ id: string; name: string }> }>('/machines')).items;
    await get('/machines?stale=true');
    for (const m of machines) {
      for (const p of ['', '/plan', '/record', '/render?task=print-all', '/render?task=consume', '/render?task=print-bp', '/render?task=use-pin']) await call('GET', `/machines/${m.name}${p}`);
    }
    const jobs = (await get<{ items: Array<{ id: string }> }>('/jobs?limit=1000')).items;
    for (const j of jobs) {
      await call('GET', `/jobs/${j.id}`);
      await call('GET', `/jobs/${j.id}/log?limit=10000`);
    }
    const wos = (await get<{ items: Array<{ id: string }> }>('/workorders')).items;
    for (const w of wos) await call('GET', `/workorders/${w.id}`);
    const changes = (await get<{ items: Array<{ seq: number }> }>('/changes?limit=1000')).items;
    for (const c of changes) await call('GET', `/changes/${c.seq}`);
    for (const kind of ['params', 'profiles', 'stages', 'pipelines', 'blueprints', 'tasks']) await call('GET', `/${kind}?limit=1000`);
    for (const p of ['/packs', '/packs/versions', '/packs/sweep', '/packs/sweep/versions/1.0.0', '/export', '/reports/cycle-time']) await call('GET', p);
    // The export on disk, through the CLI
    const out = join(work, 'export');
    const exp = await ep.cli(['export', out]);
    expect(exp.code, exp.stderr).toBe(0);
    for (const f of filesUnder(out)) seen.push({ where: `export file ${f}`, text: readFileSync(f, 'utf8') });
    // The event stream, replayed from the start up to a marker made last
    const marker = await call('POST', '/machines', { name: 'marker' });
    seen.push({ where: 'events', text: await readEvents(`machines.create.${(marker.json as { items: Array<{ id: string }> }).items[0]!.id}`) });
    // The server's own log, and every file the endpoint and its agents keep, except the job work dirs
    // (the agent must hand the clear values to the script: that is the one place they belong).
    seen.push({ where: 'server log', text: ep.output });
    for (const f of filesUnder(ep.data)) {
      if (/\/jobs\/|\/params\//.test(f) || /secret\.key$/.test(f)) continue;
      seen.push({ where: `data file ${f}`, text: readFileSync(f).toString('latin1') });
    }
    expect(seen.some((s) => s.where.endsWith('takt.db'))).toBe(true);

    const hits: string[] = [];
    for (const s of seen) for (const [layer, value] of Object.entries(V)) if (s.text.includes(value)) hits.push(`${layer} (${value}) in ${s.where}`);
    expect(hits).toEqual([]);
  });

  it('the sealed pack keeps its comments and layout; its hash is keyed, and installing it again is the same version', async () => {
    const pack = await get<{ sha256: string; files: Record<string, string> }>('/packs/sweep');
    expect(pack.files['profiles/sweep.yaml']).toMatch(/^name: sweep\n# a comment that stays\nparams:\n {2}s_profile: \{"\$secure":"v1:[^"]+"\}\n$/);
    expect(pack.files['tasks/use-pin.yaml']).toBe(PACK['tasks/use-pin.yaml']);
    const again = await call('POST', '/packs', { files: PACK });
    expect(again.status).toBe(200);
    expect((again.json as { sha256: string; installed: boolean }).sha256).toBe(pack.sha256);
    // The sealed files (an export coming back) are the same version too.
    const back = await call('POST', '/packs', { files: pack.files });
    expect(back.status).toBe(200);
    // A changed secret is a different version.
    const changed = await call('POST', '/packs', { files: { ...PACK, 'profiles/sweep.yaml': PACK['profiles/sweep.yaml']!.replace(V.profile, 'SWEEP-other') } });
    expect(changed.status).toBe(409);
    // A diff between versions shows a secure value as the mask and a keyed fingerprint, never the value.
    const next = { ...PACK, 'pack.yaml': PACK['pack.yaml']!.replace('1.0.0', '1.1.0'), 'profiles/sweep.yaml': PACK['profiles/sweep.yaml']!.replace(V.profile, 'SWEEP-next-Ff6') };
    expect((await call('POST', '/packs', { files: next })).status).toBe(201);
    const diff = await call('GET', '/packs/sweep/diff?from=1.0.0&to=1.1.0');
    expect(diff.json).toMatchObject({ changed: [{ object: 'profiles/sweep' }] });
    expect(diff.text).toMatch(/\*{8} \(secure, fingerprint [0-9a-f]{12}\)/);
    expect(diff.text).not.toContain('SWEEP-');
  });

  it('a sealed local value survives revert; export → import elsewhere → export is byte-identical', async () => {
    const put = await call('PUT', '/profiles/local-sweep', { name: 'local-sweep', params: { s_local: 'SWEEP-local-two-Gg7' } });
    expect(put.status, put.text).toBe(200);
    const seq = (await get<{ items: Array<{ seq: number; object: string }> }>('/changes?limit=1')).items[0]!.seq;
    expect((await call('POST', `/changes/${seq}/revert`, {})).status).toBeLessThan(300);
    const plan = await get<{ steps: Array<{ task: string; error: string | null }> }>('/machines/sweeper/plan');
    expect(plan.steps.every((st) => st.error === null)).toBe(true);
    const render = await get<{ displayScript: string; error: string | null }>('/machines/sweeper/render?task=print-all');
    expect(render.error).toBeNull();
    expect(render.displayScript).not.toContain('SWEEP-');

    // Elsewhere with this endpoint's secret.key carried (docs/operations.md): without it the import is refused.
    const bData = mkdtempSync(join(tmpdir(), 'takt-test-'));
    writeFileSync(join(bData, 'secret.key'), readFileSync(join(ep.data, 'secret.key')), { mode: 0o600 });
    const b = await Endpoint.start({ data: bData });
    try {
      const one = join(work, 'rt-one');
      const two = join(work, 'rt-two');
      expect((await ep.cli(['export', one])).code).toBe(0);
      const imp = await b.cli(['import', one, '-o', 'json']);
      expect(imp.code === 0 || imp.code === 1, imp.stderr).toBe(true);
      expect((await b.cli(['export', two])).code).toBe(0);
      const tree = (root: string) => Object.fromEntries(filesUnder(root).filter((f) => !f.includes('/machines/')).map((f) => [f.slice(root.length), readFileSync(f, 'utf8')]));
      expect(Object.keys(tree(one)).length).toBeGreaterThan(10);
      expect(tree(two)).toEqual(tree(one));
    } finally {
      await b.stop();
    }
  }, 120_000);
});
