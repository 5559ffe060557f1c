/**
 * Issue 10 §4: every input is bounded, checked before anything is written, and answered with a 4xx.
 * Against real endpoints: an import is all or nothing (a bad last file leaves no pack, machine, agent or
 * history entry behind), every malformed import file is a 4xx naming the file and field, pushed packs hold
 * only plain relative paths, and numbers that cannot be held exactly are refused.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles, until } from './helpers/endpoint.js';

let a: Endpoint;
let b: Endpoint;
let exported: Record<string, string>;

interface ErrorBody {
  error: { code: string; message: string; path?: string; details?: { problems?: Array<{ file: string; path?: string; message: string }> } };
}

/** A raw request, so a body can hold what JSON.stringify would change (12345678901234567891). */
async function raw(ep: Endpoint, method: string, path: string, body: string): Promise<{ status: number; body: ErrorBody & Record<string, unknown> }> {
  const res = await fetch(`${ep.url}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${ep.token}`, 'content-type': 'application/json' },
    body,
  });
  return { status: res.status, body: (await res.json()) as ErrorBody & Record<string, unknown> };
}

/** Everything an import could have changed on `ep`, as the API shows it, plus agent processes on disk. */
async function state(ep: Endpoint) {
  const get = <T>(p: string, q?: Record<string, string | number>) => ep.api.get<T>(p, q);
  const machinesDir = `${ep.data}/machines`;
  return {
    packs: await get<{ items: unknown[] }>('/packs'),
    versions: await get<{ items: unknown[] }>('/packs/versions'),
    machines: await get<{ items: unknown[] }>('/machines'),
    profiles: await get<{ items: unknown[] }>('/profiles'),
    tasks: await get<{ items: unknown[] }>('/tasks'),
    changes: await get<{ items: unknown[] }>('/changes', { limit: 1000 }),
    agentDirs: existsSync(machinesDir) ? readdirSync(machinesDir) : [],
    agentProcesses: agentProcesses(ep.data),
  };
}

/** Processes (other than the endpoint) whose command line names the endpoint's data dir: its agents. */
function agentProcesses(data: string): number {
  let n = 0;
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmd.includes(data) && !cmd.includes('serve')) n++;
    } catch {
      /* gone */
    }
  }
  return n;
}

beforeAll(async () => {
  [a, b] = await Promise.all([Endpoint.start(), Endpoint.start()]);
  await a.api.post('/packs', { files: await packFiles('basic') });
  await a.api.post('/packs', { files: await packFiles('seed') });
  await a.api.post('/profiles', { name: 'web', params: { msg: 'from web' } });
  await a.api.post('/machines', { name: 'plain', params: { msg: 'hi' }, profiles: ['web'], pipeline: 'basic' });
  await a.api.post('/machines', { name: 'sandbox', broker: 'local', pipeline: 'seed', params: { port: 9000 } });
  exported = (await a.api.get<{ files: Record<string, string> }>('/export')).files;
});
afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

const goodMachine = 'id: m-zz1\nname: zz\nenvironment: local\nbroker: null\npipeline: null\nprofiles: []\nparams: {}\npower: "on"\n';
const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]', 'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]', 'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]', 'd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]', 'e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]', 'f: [*e,*e,*e,*e,*e,*e,*e,*e,*e]'].join('\n');

// [case, extra files (added last, after the whole valid export), status, error.path, message pattern]
const badImports: Array<[string, Record<string, string>, number, string, RegExp]> = [
  ['empty machine file', { 'machines/zz.yaml': '' }, 422, 'machines/zz.yaml', /expected a machine .* found an empty file/],
  ['scalar machine file', { 'machines/zz.yaml': '42\n' }, 422, 'machines/zz.yaml', /found a number \(42\)/],
  ['list machine file', { 'machines/zz.yaml': '- a\n' }, 422, 'machines/zz.yaml', /found a list/],
  ['machine without power', { 'machines/zz.yaml': goodMachine.replace('power: "on"\n', '') }, 422, 'machines/zz.yaml', /missing required field 'power'/],
  ['machine with a bad field', { 'machines/zz.yaml': goodMachine.replace('environment: local', 'environment: "Not A Name"') }, 422, 'machines/zz.yaml/environment', /lower-case name/],
  ['machine name unlike its file', { 'machines/zz.yaml': goodMachine.replace('name: zz', 'name: other') }, 422, 'machines/zz.yaml/name', /does not match the file name/],
  ['machine with a rounded integer', { 'machines/zz.yaml': goodMachine.replace('params: {}', 'params: { n: 12345678901234567891 }') }, 422, 'machines/zz.yaml', /^machines\/zz\.yaml:7:14: this number cannot be held exactly.*write it as a string/],
  ['machine with an unknown pipeline', { 'machines/zz.yaml': goodMachine.replace('pipeline: null', 'pipeline: nope') }, 422, 'machines/zz.yaml/pipeline', /pipeline 'nope' does not exist/],
  ['YAML alias bomb', { 'local/profiles/boom.yaml': `name: boom\n${bomb}\n` }, 422, 'local/profiles/boom.yaml', /aliases expand too far/],
  ['deeply nested YAML', { 'machines/zz.yaml': '['.repeat(3000) + ']'.repeat(3000) }, 422, 'machines/zz.yaml', /invalid YAML/],
  ['local task with timeout 0', { 'local/tasks/t0.yaml': 'name: t0\nscript: echo\ntimeout: 0\n' }, 422, 'local/tasks/t0.yaml/timeout', /timeout 0 is out of range: allowed from 1s to 24d/],
  ['local task with a timeout a timer cannot hold', { 'local/tasks/t0.yaml': 'name: t0\nscript: echo\ntimeout: 30d\n' }, 422, 'local/tasks/t0.yaml/timeout', /out of range/],
  ['not a content kind', { 'local/widgets/w.yaml': 'name: w\n' }, 422, 'local/widgets/w.yaml', /not a content kind/],
  ['a stray file', { 'notes.txt': 'hi' }, 422, 'notes.txt', /not part of an export/],
  ['a pack file escaping with ..', { 'packs/basic/9.9.9/../../../../tmp/x.yaml': 'x: 1\n' }, 400, 'packs/basic/9.9.9/../../../../tmp/x.yaml', /'\.\.' segment/],
  ['an absolute path', { '/etc/x.yaml': 'x: 1\n' }, 400, '/etc/x.yaml', /is absolute/],
  ['a path with NUL', { 'machines/a\u0000.yaml': goodMachine }, 400, 'machines/a\u0000.yaml', /NUL or control character/],
  ['a broken pack version', { 'packs/extra/1.0.0/pack.yaml': 'name: extra\nversion: 1.0.0\n', 'packs/extra/1.0.0/tasks/t.yaml': 'name: t\nscript: "{{ x }}"\ntimeout: 0\n' }, 422, 'packs/extra/1.0.0/tasks/t.yaml/script', /^packs\/extra\/1\.0\.0\/tasks\/t\.yaml:2:13 \/script: template uses 'x'/],
];

describe('import is all or nothing', () => {
  it('a bad last file leaves the store as it was: no pack, machine, agent or history entry', async () => {
    const before = await state(b);
    expect(before.machines.items).toEqual([]);
    const files = { ...exported, 'machines/zz.yaml': '' };
    const r = await raw(b, 'POST', '/import', JSON.stringify({ files }));
    expect(r.status).toBe(422);
    expect(r.body.error.path).toBe('machines/zz.yaml');
    expect(r.body.error.message).toMatch(/nothing was imported/);
    expect(await state(b)).toEqual(before);
    expect(agentProcesses(b.data)).toBe(0);
  });

  it.each(badImports)('%s is a 4xx naming the file and field; nothing changes', async (_name, extra, status, path, message) => {
    const before = await state(b);
    const r = await raw(b, 'POST', '/import', JSON.stringify({ files: { ...exported, ...extra } }));
    expect(r.status, JSON.stringify(r.body)).toBe(status);
    expect(r.body.error.path).toBe(path);
    expect(r.body.error.message).toMatch(message);
    expect(await state(b)).toEqual(before);
  });

  it('the same export without the bad file imports whole, and only then starts the agent', async () => {
    const r = await b.api.post<{ packVersionsInstalled: string[]; machines: { created: string[] }; problems: string[] }>('/import', { files: exported });
    expect(r.packVersionsInstalled.sort()).toEqual(['basic@1.0.0', 'seed@1.0.0']);
    expect(r.machines.created.sort()).toEqual(['plain', 'sandbox']);
    expect(r.problems).toEqual([]);
    // a sandbox machine on a new host arrives held (its sandbox here is new); its agent is up and waits for a restart
    await until(async () => (await b.api.get<{ agent: { connected: boolean } }>('/machines/sandbox')).agent.connected, 60_000, 'sandbox agent');
    expect(await b.api.get('/machines/sandbox')).toMatchObject({ state: 'paused', reason: expect.stringMatching(/^restored onto a new host: .*`takt machines restart sandbox`/) });
    expect((await b.cli(['machines', 'restart', 'sandbox'])).code).toBe(0);
    expect((await b.cli(['machines', 'wait', 'sandbox', '--timeout', '60s'])).code).toBe(0);
  });
});

describe('import onto an existing endpoint is all or nothing', () => {
  /** What an import may change on `a` (its running agent's liveness and progress are not that). */
  const desired = async () => {
    const s = await state(a);
    const machines = (s.machines.items as Array<{ name: string; params: unknown; profiles: unknown; pipeline: unknown }>).map((m) => ({ name: m.name, params: m.params, profiles: m.profiles, pipeline: m.pipeline }));
    return { packs: s.packs, versions: s.versions, profiles: s.profiles, tasks: s.tasks, changes: s.changes, machines };
  };
  /** `exported` changed: a profile, the pin, and one machine's param to a value its schema refuses. */
  const drifted = (bad: boolean) => ({
    ...exported,
    'local/profiles/web.yaml': 'name: web\nparams:\n  msg: changed by the import\n',
    'machines/plain.yaml': exported['machines/plain.yaml']!.replace('msg: hi', `msg: hi\n  code: ${bad ? 'not-a-number' : 7}`),
  });

  it('a param its schema refuses is found before anything is written, by the dry run as by the import', async () => {
    const before = await desired();
    const dry = await raw(a, 'POST', '/import', JSON.stringify({ files: drifted(true), dryRun: true }));
    const r = await raw(a, 'POST', '/import', JSON.stringify({ files: drifted(true) }));
    expect(r.status, JSON.stringify(r.body)).toBe(422);
    expect(r.body.error.message).toMatch(/^machines\/plain\.yaml \/params\/code: param 'code'/);
    expect(dry).toEqual(r);
    // the profile was written before the machine in the same transaction: it is not changed
    expect(await desired()).toEqual(before);
  });

  it('--dry-run lists every change and applies none; without it, all apply', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'takt-import-dry-'));
    for (const [path, text] of Object.entries(drifted(false))) {
      mkdirSync(dirname(join(dir, path)), { recursive: true });
      writeFileSync(join(dir, path), text);
    }
    const before = await desired();
    const dry = await a.cli(['import', dir, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(/^dry run: importing .* would make 2 change\(s\):\n {2}update profiles\/web\n {2}update machines\/plain: params\.code\n/);
    expect(await desired()).toEqual(before);
    const r = JSON.parse((await a.cli(['import', dir, '-o', 'json'])).stdout) as { dryRun: boolean; changes: string[] };
    expect(r).toMatchObject({ dryRun: false, changes: ['update profiles/web', 'update machines/plain: params.code'] });
    expect(await a.api.get('/machines/plain')).toMatchObject({ params: { msg: 'hi', code: 7 } });
    expect(await a.api.get('/profiles/web')).toMatchObject({ params: { msg: 'changed by the import' } });
  });
});

describe('pushed packs hold only plain relative paths', () => {
  const cases: Array<[string, string, RegExp]> = [
    ['a .. path', '../../x.yaml', /'\.\.' segment/],
    ['an absolute path', '/abs.yaml', /is absolute/],
    ['a NUL', 'tasks/a\u0000.yaml', /NUL or control character/],
    ['a backslash', 'tasks\\..\\..\\x.yaml', /backslash/],
    ['an empty segment', 'tasks//x.yaml', /segment/],
  ];
  it.each(cases)('%s is refused with 400 naming the path, nothing installed', async (_name, path, message) => {
    const files = { ...(await packFiles('seed')), [path]: 'name: x\n' };
    files['pack.yaml'] = files['pack.yaml']!.replace('name: seed', 'name: evil');
    const r = await raw(a, 'POST', '/packs', JSON.stringify({ files }));
    expect(r.status).toBe(400);
    expect(r.body.error.path).toBe(path);
    expect(r.body.error.message).toMatch(message);
    expect((await a.api.get<{ items: Array<{ name: string }> }>('/packs/versions')).items.map((v) => v.name)).not.toContain('evil');
  });

  it('a YAML alias bomb in a pack is a lint error at file:line:col, not a 500', async () => {
    const files = { 'pack.yaml': 'name: boom\nversion: 1.0.0\n', 'profiles/boom.yaml': `name: boom\n${bomb}\n` };
    const r = await raw(a, 'POST', '/packs', JSON.stringify({ files }));
    expect(r.status).toBe(422);
    const diags = (r.body.error.details as { diagnostics: Array<{ file: string; line: number; col: number; message: string }> }).diagnostics;
    expect(diags).toContainEqual(expect.objectContaining({ file: 'profiles/boom.yaml', line: 3, col: 8, message: expect.stringMatching(/aliases expand too far/) }));
  });
});

describe('numbers that cannot be held exactly are refused with a hint', () => {
  it('a machine param 12345678901234567891 through the API is 422, not stored as 12345678901234567000', async () => {
    const r = await raw(a, 'POST', '/machines', '{"name":"big","params":{"n":12345678901234567891}}');
    expect(r.status).toBe(422);
    expect(r.body.error.path).toBe('/params/n');
    expect(r.body.error.message).toMatch(/cannot be held exactly.*write it as a string/);
    const m = await raw(a, 'PATCH', '/machines/plain', '{"params":{"n":[1,12345678901234567891]}}');
    expect(m.status).toBe(422);
    expect(m.body.error.path).toBe('/params/n/1');
  });

  it('a profile value through the API is 422; the same number as a string is kept exactly', async () => {
    const r = await raw(a, 'PUT', '/profiles/web', '{"name":"web","params":{"msg":12345678901234567891}}');
    expect(r.status).toBe(422);
    expect(r.body.error.message).toMatch(/cannot be held exactly/);
    const ok = await raw(a, 'PUT', '/profiles/web', '{"name":"web","params":{"msg":"12345678901234567891"}}');
    expect(ok.status).toBe(200);
    expect((ok.body as unknown as { params: { msg: string } }).params.msg).toBe('12345678901234567891');
  });

  it('the CLI refuses --param n=12345678901234567891 and says how to quote it', async () => {
    const r = await a.cli(['machines', 'create', 'big', '--param', 'n=12345678901234567891']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/this number cannot be held exactly/);
    expect(r.stderr).toContain(`--param 'n="12345678901234567891"'`);
  });
});
