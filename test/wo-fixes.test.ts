/**
 * Work-order fixes (rt12): F0 an ad-hoc command's log masks every secure value of its machine, like a
 * task's log masks its own; F1 a work order resumes by task identity (repeats, reorders), like a pipeline;
 * F6 `takt run` is bounded when a machine never claims its command. Real endpoint, agents and CLI.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, WorkOrder } from '../src/model/machine.js';
import { Endpoint, until } from './helpers/endpoint.js';

let ep: Endpoint;
let work: string;

const SECRETS = {
  machine: 'DBPASS-77331',
  profile: 'PROF-SECRET-5521',
  stage: 'STAGE-SECRET-6631',
  pipeline: 'PIPE-SECRET-7741',
  output: 'OUT-SECRET-9911',
};

/** Secure values no current layer of machine `m` holds: a work order's `--param`, another pipeline's stage. */
const WO_SECRET = 'WO-PARAM-SECRET-4242';
const OTHER_STAGE_SECRET = 'OTHER-STAGE-SECRET-3131';

function files(version: string, blueprint: string[]): Record<string, string> {
  const secure = (n: string) => `name: ${n}\nsecure: true\nschema: { type: string }\n`;
  return {
    'pack.yaml': `name: wo\nversion: ${version}\n`,
    'params/key.yaml': secure('key'),
    'params/pkey.yaml': secure('pkey'),
    'params/stkey.yaml': secure('stkey'),
    'params/pipekey.yaml': secure('pipekey'),
    'params/tok.yaml': secure('tok'),
    'params/ok.yaml': 'name: ok\nschema: { type: boolean, default: false }\n',
    'profiles/prof.yaml': `name: prof\nparams: { pkey: ${SECRETS.profile} }\n`,
    'tasks/wa.yaml': 'name: wa\nscript: |\n  echo wa\n',
    'tasks/wc.yaml': 'name: wc\nscript: |\n  echo wc\n',
    'tasks/wb.yaml': 'name: wb\nparams: { required: [ok] }\nscript: |\n  [ "{{ ok }}" = "true" ] || exit 4\n',
    'tasks/writer.yaml': 'name: writer\nparams: { required: [key] }\nscript: |\n  echo "pw={{ key }}" > "$TAKT_ROOT/app.conf"\n',
    'tasks/out.yaml': `name: out\noutputs: { tok: { type: string } }\nscript: |\n  takt-set tok ${SECRETS.output}\n`,
    'stages/s.yaml': `name: s\ntasks: [out]\nparams: { stkey: ${SECRETS.stage} }\n`,
    'pipelines/p.yaml': `name: p\nstages: [s]\nparams: { pipekey: ${SECRETS.pipeline} }\n`,
    'blueprints/fix.yaml': `name: fix\ntasks: [${blueprint.join(', ')}]\n`,
    'blueprints/write.yaml': 'name: write\ntasks: [writer]\n',
    // A pipeline no machine is on now: its stage's secret is one a machine may have been given before.
    'stages/o.yaml': `name: o\ntasks: [wa]\nparams: { stkey: ${OTHER_STAGE_SECRET} }\n`,
    'pipelines/q.yaml': 'name: q\nstages: [o]\n',
    // Holds its job until the test leaves a `go` file, so content can change while a work order runs.
    'tasks/gate.yaml': 'name: gate\nscript: |\n  for i in $(seq 600); do [ -e "$TAKT_ROOT/go" ] && exit 0; sleep 0.1; done; exit 9\n',
  };
}

async function publish(version: string, blueprint: string[]): Promise<void> {
  const dir = join(work, version);
  for (const [p, text] of Object.entries(files(version, blueprint))) {
    mkdirSync(dirname(join(dir, p)), { recursive: true });
    writeFileSync(join(dir, p), text);
  }
  const b = await json<{ file: string }>(['content', 'bundle', dir, '--out', work]);
  await json(['content', 'install', b.file]);
  const r = await ep.cli(['content', 'use', `wo@${version}`]);
  expect(r.code, r.stderr).toBe(0);
}

async function json<T>(args: string[]): Promise<T> {
  const r = await ep.cli([...args, '-o', 'json']);
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  return JSON.parse(r.stdout) as T;
}

const workOrder = (id: string) => ep.api.get<WorkOrder>(`/workorders/${id}`);
const ended = async (id: string) => until(async () => {
  const w = await workOrder(id);
  return w.state !== 'queued' && w.state !== 'running' ? w : undefined;
});

beforeAll(async () => {
  ep = await Endpoint.start();
  work = mkdtempSync(join(tmpdir(), 'wo-fixes-'));
  await publish('1.0.0', ['wa', 'wc', 'wb']);
  await json(['machines', 'create', 'm', '--broker', 'local', '--pipeline', 'p', '--profile', 'prof', '--param', `key=${SECRETS.machine}`]);
  await until(async () => ((await json<{ state: string }>(['machines', 'get', 'm'])).state === 'done' ? true : undefined));
});
afterAll(async () => ep?.stop());

describe('F0: an ad-hoc command masks every secure value of its machine', () => {
  it('in takt run output, the stored log, jobs log and -o json; the command gets no secret in its environment', async () => {
    const wo = await json<{ id: string }>(['workorders', 'create', '--machine', 'm', '--blueprint', 'write']);
    expect((await ended(wo.id)).state).toBe('succeeded');
    // The file a task rendered the secret into, and each secret of every layer typed out by the command.
    const all = Object.values(SECRETS);
    const command = `cat "$TAKT_ROOT/app.conf"; echo ${all.join(' ')}; echo "env:$(env | grep -c -e 77331 -e 5521 -e 6631 -e 7741 -e 9911)"`;
    const r = await ep.cli(['run', '--machine', 'm', '--', command]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('pw=');
    expect(r.stdout).toContain('env:0');
    for (const s of all) expect(r.stdout, s).not.toContain(s);

    const adhoc = (await ep.api.get<{ items: WorkOrder[] }>('/workorders', { machine: 'm', limit: 100 })).items.find((w) => w.command);
    const [job] = (await ep.api.get<{ items: Job[] }>('/jobs', { workorder: adhoc!.id })).items;
    const log = await ep.cli(['jobs', 'log', job!.id]);
    expect(log.code, log.stderr).toBe(0);
    expect(log.stdout).toContain('pw=');
    for (const s of all) expect(log.stdout, s).not.toContain(s);

    const asJson = await ep.cli(['run', '--machine', 'm', '-o', 'json', '--', `echo ${all.join(' ')} >&2; exit 2`]);
    expect(asJson.code).toBe(1);
    for (const s of all) expect(asJson.stdout, s).not.toContain(s);
    expect(asJson.stdout).toContain('***');
  });
});

describe('an ad-hoc command masks secure values earlier work orders were given', () => {
  it('a --param of an earlier work order (rendered into a file the command reads) and another pipeline\'s stage secret are masked', async () => {
    const wo = await json<{ id: string }>(['workorders', 'create', '--machine', 'm', '--blueprint', 'write', '--param', `key=${WO_SECRET}`]);
    expect((await ended(wo.id)).state).toBe('succeeded');
    const r = await ep.cli(['run', '--machine', 'm', '--', `cat "$TAKT_ROOT/app.conf"; echo ${OTHER_STAGE_SECRET}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('pw=***');
    expect(r.stdout).not.toContain(WO_SECRET);
    expect(r.stdout).not.toContain(OTHER_STAGE_SECRET);
  });
});

describe('F1: a work order resumes by task identity, like a pipeline', () => {
  const jobsOf = async (id: string) => (await ep.api.get<{ items: Job[] }>('/jobs', { workorder: id, order: 'asc', limit: 100 })).items.map((j) => `${j.task}:${j.state}`);

  it('a repeated task that never ran runs on resume; the work order succeeds only after it', async () => {
    await publish('1.0.1', ['wa', 'wc', 'wb']);
    expect((await ep.cli(['machines', 'update', 'm', '--param', 'ok=false'])).code).toBe(0);
    const wo = await json<{ id: string }>(['workorders', 'create', '--machine', 'm', '--blueprint', 'fix']);
    expect((await ended(wo.id)).state).toBe('failed');
    expect((await workOrder(wo.id)).passed).toEqual(['fix/wa', 'fix/wc']);
    await publish('1.0.2', ['wa', 'wa', 'wb']);
    expect((await ep.cli(['machines', 'update', 'm', '--param', 'ok=true'])).code).toBe(0);
    const r = await ep.cli(['workorders', 'resume', wo.id]);
    expect(r.code, r.stderr).toBe(0);
    const done = await ended(wo.id);
    expect(done.state).toBe('succeeded');
    // The second wa (never run before) ran, then wb: not a single wa standing for two steps.
    expect(await jobsOf(wo.id)).toEqual(['wa:succeeded', 'wc:succeeded', 'wb:failed', 'wa:succeeded', 'wb:succeeded']);
    expect(done.passed).toEqual(['fix/wa', 'fix/wc', 'fix/wa#2', 'fix/wb']);
  });

  it.each([
    ['reordered: a task that succeeded now comes after the one it stopped on', ['wb', 'wa', 'wc'], /cannot resume: task 'wa' succeeded before task 'wb', where the work order stopped, but blueprint 'fix' now runs it after; create a new work order .*keeps the tasks in the order they ran/],
    ['vanished: the task it stopped on is gone', ['wa', 'wc'], /cannot resume: task 'wb', where the work order stopped, is no longer in blueprint 'fix'; create a new work order .*has the task/],
  ])('refused, %s', async (_, changed, message) => {
    await publish(`1.1.${changed.length}-${changed.join('')}`, ['wa', 'wc', 'wb']);
    expect((await ep.cli(['machines', 'update', 'm', '--param', 'ok=false'])).code).toBe(0);
    const wo = await json<{ id: string }>(['workorders', 'create', '--machine', 'm', '--blueprint', 'fix']);
    expect((await ended(wo.id)).state).toBe('failed');
    await publish(`1.2.${changed.length}-${changed.join('')}`, changed);
    expect((await ep.cli(['machines', 'update', 'm', '--param', 'ok=true'])).code).toBe(0);
    const r = await ep.cli(['workorders', 'resume', wo.id]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(message);
    expect((await workOrder(wo.id)).state).toBe('failed');
  });
});

describe('F1: a running work order follows blueprint changes by identity, never by index', () => {
  it('a step added before the running one runs next; the running one does not run twice', async () => {
    await publish('1.3.0', ['wa', 'gate', 'wb']);
    const wo = await json<{ id: string }>(['workorders', 'create', '--machine', 'm', '--blueprint', 'fix']);
    await until(async () => ((await ep.api.get<{ items: Job[] }>('/jobs', { workorder: wo.id, limit: 10 })).items.some((j) => j.task === 'gate' && j.state === 'running') ? true : undefined));
    await publish('1.3.1', ['wa', 'wa', 'gate', 'wb']);
    const m = await ep.api.get<{ id: string }>('/machines/m');
    writeFileSync(join(ep.data, 'machines', m.id, 'root', 'go'), '');
    const done = await ended(wo.id);
    expect(done.state).toBe('succeeded');
    // By index the work order would have run `gate` (now step 3) again and never the second wa.
    expect((await ep.api.get<{ items: Job[] }>('/jobs', { workorder: wo.id, order: 'asc', limit: 100 })).items.map((j) => `${j.task}:${j.state}`)).toEqual(['wa:succeeded', 'gate:succeeded', 'wa:succeeded', 'wb:succeeded']);
    expect(done.passed).toEqual(['fix/wa', 'fix/gate', 'fix/wa#2', 'fix/wb']);
  });
});

describe('F6: takt run is bounded when a machine never claims its command', () => {
  it('names a machine with no agent at once; at --wait cancels its queued work order, says so, exits 1', async () => {
    expect((await ep.cli(['machines', 'create', 'away'])).code).toBe(0);
    const r = await ep.cli(['run', '--machine', 'm', '--machine', 'away', '--wait', '3s', '--', 'echo hi']);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain('away: no agent in touch');
    expect(r.stdout).toContain('m | rc=0 >>\nhi\n');
    expect(r.stdout).toContain('away | NOT STARTED | not-started >>');
    expect(r.stdout).toMatch(/not started within --wait 3s \(no agent in touch\): cancelled, it will not run later/);
    expect(r.stdout.trim().split('\n').at(-1)).toBe('2 machine(s): 1 succeeded, 1 failed (away: not-started)');
    const wos = (await ep.api.get<{ items: WorkOrder[] }>('/workorders', { machine: 'away', limit: 10 })).items;
    expect(wos.map((w) => w.state)).toEqual(['cancelled']);
  });

  it('--skip-offline leaves such machines out from the start: no work order, named, exit 1', async () => {
    const r = await ep.cli(['run', '--machine', 'm', '--machine', 'away', '--skip-offline', '-o', 'json', '--', 'echo hi']);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain('away: no agent in touch: left out (--skip-offline)');
    const out = JSON.parse(r.stdout) as Array<{ machine: string; state: string; workOrder: string | null }>;
    expect(out.map((x) => [x.machine, x.state])).toEqual([['m', 'succeeded'], ['away', 'skipped']]);
    expect((await ep.api.get<{ items: WorkOrder[] }>('/workorders', { machine: 'away', limit: 10 })).items).toHaveLength(1);
  });

  it('refuses a bad --wait before queuing anything', async () => {
    const r = await ep.cli(['run', '--machine', 'away', '--wait', 'soon', '--', 'true']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('--wait');
    expect((await ep.api.get<{ items: WorkOrder[] }>('/workorders', { machine: 'away', limit: 10 })).items).toHaveLength(1);
  });
});
