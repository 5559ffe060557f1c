/**
 * Issue 12, "say what is going on": `takt machines describe` against a real endpoint and real agents —
 * a running, an awaiting-approval, an agentless-waiting and a done machine — and the refusals that keep
 * an operator from storing nonsense: an environment the pipeline does not exercise, an undeclared param.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MachineDescription } from '../src/engine/describe.js';
import { Endpoint, packFiles, until } from './helpers/endpoint.js';

let ep: Endpoint;
const describeJson = async (name: string): Promise<MachineDescription> => {
  const r = await ep.cli(['machines', 'describe', name, '-o', 'json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as MachineDescription;
};
const create = async (...args: string[]) => {
  const r = await ep.cli(['machines', 'create', ...args]);
  expect(r.code, r.stderr).toBe(0);
};

beforeAll(async () => {
  ep = await Endpoint.start();
  await ep.api.post('/packs', { files: await packFiles('basic') });
  await ep.api.post('/packs', { files: await packFiles('expect') });
  await ep.api.post('/pipelines', { name: 'labonly', stages: ['three'], environments: ['lab', 'local'] });
});
afterAll(async () => ep?.stop());

describe('machines describe', () => {
  it('a running machine waits for its job, named with its lease', async () => {
    await create('busy', '--broker', 'local', '--pipeline', 'steps', '--param', 'secs=600');
    const d = await until(async () => {
      const x = await describeJson('busy');
      return x.waitingFor.for === 'job' ? x : null;
    });
    expect(d.position).toMatchObject({ stage: 'steps', task: 'step', passed: [] });
    expect(d.status).toBe('running');
    expect(d.agent.connected).toBe(true);
    const job = d.jobs[0]!;
    expect(job).toMatchObject({ task: 'step', stage: 'steps', state: 'running' });
    expect(d.waitingFor).toMatchObject({ for: 'job', job: job.id, task: 'step' });
    expect(d.waitingFor.text).toMatch(new RegExp(`^job ${job.id} \\(step\\) running since \\S+, lease until \\S+$`));
    expect(d.events.map((e) => e.message)).toContain(`job ${job.id} started: steps/step`);
    const text = await ep.cli(['machines', 'describe', 'busy']);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^Name: +busy$/m);
    expect(text.stdout).toMatch(/^Position: +stage steps, task step$/m);
    expect(text.stdout).toMatch(new RegExp(`^Waiting for: +job ${job.id} \\(step\\) running since`, 'm'));
    expect(text.stdout).toMatch(/^Jobs \(newest first\):\n +JOB +STAGE\/TASK +STATE/m);
    expect(text.stdout).toMatch(/^Events:$/m);
    await ep.cli(['machines', 'delete', 'busy']);
  });

  it('a machine at a stage that needs approval says which stage and who approves', async () => {
    await create('rel', '--broker', 'local', '--pipeline', 'release');
    expect((await ep.cli(['machines', 'wait', 'rel', '--until', 'awaiting-approval', '--timeout', '30s'])).code).toBe(0);
    const d = await describeJson('rel');
    expect(d.position).toMatchObject({ stage: 'release', task: 'deploy' });
    expect(d.waitingFor).toEqual({ for: 'approval', stage: 'release', role: 'operator', text: 'an approval of stage release by operator (takt approvals approve rel)' });
    expect(d.jobs.map((j) => [j.task, j.state])).toEqual([['health', 'succeeded']]);
    expect((await ep.cli(['approvals', 'approve', 'rel', '--comment', 'window open'])).code).toBe(0);
    expect((await describeJson('rel')).events).toContainEqual(expect.objectContaining({ type: 'approval', message: 'stage release approved by admin: window open' }));
  });

  it('a machine without a broker waits for an agent that never connected', async () => {
    await create('lonely', '--pipeline', 'basic', '--label', 'role=web');
    const d = await describeJson('lonely');
    expect(d.status).toBe('waiting-for-agent');
    expect(d.position).toMatchObject({ stage: 'one', task: 'hello' });
    expect(d.waitingFor).toEqual({ for: 'agent', text: 'an agent: none connected (never connected)', lastSeenAt: null });
    expect(d.jobs).toEqual([]);
    expect(d.events.map((e) => e.message)).toEqual(['create by admin']);
    const text = await ep.cli(['machines', 'describe', 'lonely']);
    expect(text.stdout).toMatch(/^Waiting for: +an agent: none connected \(never connected\)$/m);
    expect(text.stdout).toMatch(/^Agent: +never$/m);
    expect(text.stdout).toMatch(/^Labels: +role=web$/m);
    expect(d.machine.labels).toEqual({ role: 'web' });
  });

  it('a done machine waits for nothing and lists its jobs with durations', async () => {
    await create('fin', '--broker', 'local', '--pipeline', 'labonly');
    expect((await ep.cli(['machines', 'wait', 'fin', '--timeout', '30s'])).code).toBe(0);
    const d = await describeJson('fin');
    expect(d.waitingFor).toEqual({ for: 'nothing', text: 'nothing: pipeline labonly is done' });
    expect(d.position).toMatchObject({ stage: null, task: null });
    expect(d.jobs.map((j) => [j.stage, j.task, j.state])).toEqual([['three', 'record', 'succeeded']]);
    expect(d.jobs[0]!.durationMs).toBeGreaterThanOrEqual(0);
    const text = await ep.cli(['machines', 'describe', 'fin']);
    expect(text.stdout).toMatch(/^Waiting for: +nothing: pipeline labonly is done$/m);
    expect(text.stdout).toMatch(/three\/record +succeeded +0 +\d/);
  });

  it('an unknown machine is a clear error', async () => {
    const r = await ep.cli(['machines', 'describe', 'nope']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/machine 'nope' not found/);
  });
});

describe('environments a pipeline exercises', () => {
  it('create with an environment the pipeline does not exercise is refused with the list', async () => {
    const r = await ep.cli(['machines', 'create', 'moon', '--pipeline', 'labonly', '--environment', 'moon']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/machine 'moon' is in environment 'moon', which pipeline 'labonly' does not exercise; it runs in: lab, local/);
    expect((await ep.call('GET', '/machines/moon')).status).toBe(404);
  });

  // The environment picks every task's variant: a broker-less machine's agent runs on a host the operator
  // chose, never in a sandbox, so it must not get the `local` (sandbox) variants by default.
  it.each([
    ['without a broker: remote, like a joined host', ['env-plain'], 'remote'],
    ['with boot settings: metal', ['env-mac', '--mac', '52:54:00:e0:00:01'], 'metal'],
    ['by the local broker: the broker\'s', ['env-sandbox', '--broker', 'local'], 'local'],
    ['as said', ['env-said', '--environment', 'lab'], 'lab'],
  ])('a machine created %s', async (_label, args, environment) => {
    const r = await ep.cli(['machines', 'create', ...args, '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    expect((await ep.api.get<{ environment: string }>(`/machines/${args[0]}`)).environment).toBe(environment);
    await ep.cli(['machines', 'delete', args[0]!]);
  });

  it('a broker-less machine on a pipeline that does not run remotely is refused with the list, not put in local', async () => {
    const r = await ep.cli(['machines', 'create', 'env-far', '--pipeline', 'labonly']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/machine 'env-far' is in environment 'remote', which pipeline 'labonly' does not exercise; it runs in: lab, local/);
  });

  it('update of the environment or the pipeline is refused, nothing changes', async () => {
    await create('lab-1', '--environment', 'lab');
    const p = await ep.cli(['machines', 'update', 'lab-1', '--pipeline', 'basic']);
    expect(p.code, p.stdout).toBe(0); // basic declares no environments: it accepts any
    const r = await ep.cli(['machines', 'update', 'lab-1', '--pipeline', 'labonly', '--environment', 'mars']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/environment 'mars', which pipeline 'labonly' does not exercise; it runs in: lab, local/);
    const m = await ep.api.get<{ environment: string; pipeline: string }>('/machines/lab-1');
    expect(m).toMatchObject({ environment: 'lab', pipeline: 'basic' });
    expect((await ep.cli(['machines', 'update', 'lab-1', '--pipeline', 'labonly'])).code).toBe(0);
    const e = await ep.cli(['machines', 'update', 'lab-1', '--environment', 'mars']);
    expect(e.code).toBe(1);
  });

  it('a join token for a pipeline outside its environment is refused when it is made, not when a host registers', async () => {
    const r = await ep.cli(['machines', 'join', 'far-1', '--pipeline', 'labonly', '--url', 'https://127.0.0.1:1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/machine 'far-1' is in environment 'remote', which pipeline 'labonly' does not exercise; it runs in: lab, local/);
  });

  it('a rollout that would reassign a machine to a pipeline outside its environment is refused', async () => {
    await create('mars-1', '--environment', 'mars');
    const r = await ep.cli(['rollouts', 'create', '--pipeline', 'labonly', '--select', 'name=mars-1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/machine 'mars-1' is in environment 'mars', which pipeline 'labonly' does not exercise/);
  });
});

describe('undeclared params', () => {
  it('a typo is refused with a suggestion; --allow-undeclared stores it', async () => {
    await create('typo');
    const r = await ep.cli(['machines', 'update', 'typo', '--param', 'secz=5']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/param 'secz' is not declared by any param definition or task \(did you mean 'secs'\?\); to store it anyway, pass --allow-undeclared/);
    expect((await ep.api.get<{ params: object }>('/machines/typo')).params).toEqual({});
    const ok = await ep.cli(['machines', 'update', 'typo', '--param', 'secz=5', '--allow-undeclared']);
    expect(ok.code, ok.stderr).toBe(0);
    expect((await ep.api.get<{ params: object }>('/machines/typo')).params).toEqual({ secz: 5 });
    // removing it needs no flag
    expect((await ep.cli(['machines', 'update', 'typo', '--unset', 'secz'])).code).toBe(0);
  });

  it('create refuses an undeclared param too, and makes no machine', async () => {
    const r = await ep.cli(['machines', 'create', 'typo-2', '--param', 'msgg=hi']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/param 'msgg' is not declared.*did you mean 'msg'/);
    expect((await ep.call('GET', '/machines/typo-2')).status).toBe(404);
    const ok = await ep.cli(['machines', 'create', 'typo-2', '--param', 'msgg=hi', '--allow-undeclared']);
    expect(ok.code, ok.stderr).toBe(0);
  });
});

describe('names where people read them', () => {
  it('jobs and work order lists show machine names; -o json keeps the ids', async () => {
    const m = await ep.api.get<{ id: string }>('/machines/fin');
    const jobs = await ep.cli(['jobs', 'list', '--machine', 'fin']);
    expect(jobs.stdout).toMatch(/\bfin\b/);
    expect(jobs.stdout).not.toContain(m.id);
    expect(JSON.parse((await ep.cli(['jobs', 'list', '--machine', 'fin', '-o', 'json'])).stdout)[0].machineId).toBe(m.id);
    const w = await ep.cli(['workorders', 'create', '--machine', 'fin', '--blueprint', 'scan']);
    expect(w.code, w.stderr).toBe(0);
    expect(w.stdout).toMatch(/\bfin\b/);
    const list = await ep.cli(['workorders', 'list', '--machine', 'fin']);
    expect(list.stdout).toMatch(/\bfin\b/);
    expect(list.stdout).not.toContain(m.id);
    expect(JSON.parse((await ep.cli(['workorders', 'list', '--machine', 'fin', '-o', 'json'])).stdout)[0].machineId).toBe(m.id);
  });

  it('content diff shows a script change as a line diff', async () => {
    const files = await packFiles('basic');
    files['pack.yaml'] = files['pack.yaml']!.replace('version: 1.0.0', 'version: 1.0.1');
    files['tasks/record.yaml'] = files['tasks/record.yaml']!.replace('sleep 0.2', 'sleep 0.3');
    expect((await ep.call('POST', '/packs', { files })).status).toBeLessThan(300);
    const d = await ep.cli(['content', 'diff', 'basic@1.0.0', 'basic@1.0.1']);
    expect(d.code, d.stderr).toBe(0);
    expect(d.stdout).toContain('~ tasks/record');
    expect(d.stdout).toMatch(/^ +-sleep 0\.2$/m);
    expect(d.stdout).toMatch(/^ +\+sleep 0\.3$/m);
    expect(d.stdout).not.toContain('\\n');
  });
});
