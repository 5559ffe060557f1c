/**
 * The API over real HTTP against a real endpoint process and SQLite file: auth scoping, the agent
 * protocol's edge cases, and bad input (always a precise 4xx with the one error shape; store unchanged).
 */
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles, runCli } from './helpers/endpoint.js';
import { readSse } from './helpers/sse.js';

let ep: Endpoint;

const call = (...args: Parameters<Endpoint['call']>) => ep.call(...args);

/**
 * Writes `head` on a raw socket, then keeps calling `more` (while it returns true and no answer has come)
 * and resolves with the first answer's status and body. Write errors after the answer are expected.
 */
function rawExchange(head: string, more?: (write: (s: string) => boolean, i: number) => boolean): Promise<{ status: number; body: string }> {
  const u = new URL(ep.url);
  return new Promise((resolve, reject) => {
    const sock = connect(Number(u.port), u.hostname);
    let got = '';
    let answered = false;
    const finish = () => {
      const m = /^HTTP\/1\.1 (\d{3})[^]*?\r\n\r\n([^]*)$/.exec(got);
      if (!m) return false;
      const len = /content-length: (\d+)/i.exec(got);
      if (len && Buffer.byteLength(m[2]!) < Number(len[1])) return false;
      answered = true;
      sock.destroy();
      resolve({ status: Number(m[1]), body: m[2]! });
      return true;
    };
    sock.on('data', (d) => {
      got += d.toString();
      finish();
    });
    sock.on('error', (err) => (answered ? undefined : finish() || reject(err)));
    sock.on('close', () => answered || finish() || reject(new Error(`connection closed without an answer: ${got}`)));
    sock.write(head);
    let i = 0;
    const pump = () => {
      if (answered || !more) return;
      if (more((s) => sock.write(s), i++)) setImmediate(pump);
      else sock.once('drain', pump);
    };
    pump();
  });
}

async function changeCount() {
  return (await call('GET', '/changes?limit=1000')).body.items.length as number;
}

interface Made {
  id: string;
  name: string;
  token: string;
}

async function makeMachine(name: string, pipeline = 'basic', params?: Record<string, unknown>): Promise<Made> {
  const r = await call('POST', '/machines', { name, pipeline, params });
  expect(r.status).toBe(201);
  return r.body.items[0];
}

beforeAll(async () => {
  ep = await Endpoint.start({ lease: '2s' });
  const r = await call('POST', '/packs', { files: await packFiles('basic') });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
});
afterAll(async () => ep?.stop());

describe('auth', () => {
  it('health needs no token; everything else does', async () => {
    expect((await call('GET', '/health', undefined, null)).status).toBe(200);
    const r = await call('GET', '/machines', undefined, null);
    expect(r.status).toBe(401);
    expect(r.body.error.code).toBe('unauthorized');
    expect((await call('GET', '/openapi.json', undefined, null)).status).toBe(401);
  });

  it('a wrong token is 401 with the error shape', async () => {
    const r = await call('GET', '/machines', undefined, 'tka.nope');
    expect(r).toMatchObject({ status: 401, body: { error: { code: 'unauthorized' } } });
    const forged = await call('GET', '/machines', undefined, 'tkm.m-0000000000.forged');
    expect(forged.status).toBe(401);
  });

  it('a machine token reads only its own machine and jobs (403 otherwise)', async () => {
    const a = await makeMachine('auth-a');
    const b = await makeMachine('auth-b');
    expect((await call('GET', `/machines/${a.id}`, undefined, a.token)).status).toBe(200);
    const other = await call('GET', `/machines/${b.id}`, undefined, a.token);
    expect(other.status).toBe(403);
    expect(other.body.error.message).toMatch(/own machine/);
    expect((await call('GET', '/machines', undefined, a.token)).status).toBe(403);
    expect((await call('POST', `/machines/${b.id}/claim`, undefined, a.token)).status).toBe(403);
    expect((await call('GET', '/changes', undefined, a.token)).status).toBe(403);
    expect((await call('POST', '/packs', { files: {} }, a.token)).status).toBe(403);

    const claimed = await call('POST', `/machines/${b.id}/claim`, undefined, b.token);
    expect(claimed.status).toBe(200);
    const jobId = claimed.body.job.id;
    expect((await call('GET', `/jobs/${jobId}`, undefined, a.token)).status).toBe(403);
    expect((await call('GET', `/jobs/${jobId}/log`, undefined, a.token)).status).toBe(403);
    // an agent reporting on a job it does not own
    const foreign = await call('POST', `/jobs/${jobId}/complete`, { exitCode: 0, outputs: {} }, a.token);
    expect(foreign.status).toBe(403);
    expect((await call('GET', `/jobs/${jobId}`, undefined, b.token)).body.state).toBe('running');
    // a's job list is scoped to a, even when it asks for b's
    expect((await call('GET', `/jobs?machine=${b.id}`, undefined, a.token)).status).toBe(403);
    const own = await call('GET', '/jobs', undefined, b.token);
    expect(own.body.items.every((j: { machineId: string }) => j.machineId === b.id)).toBe(true);
    // a machine token does not see the admin's views
    expect((await call('GET', `/machines/${b.id}/plan`, undefined, b.token)).status).toBe(403);
  });
});

describe('agent protocol', () => {
  it('walks a pipeline by claim/log/complete, types outputs, and answers a duplicate completion the same', async () => {
    const m = await makeMachine('proto-1', 'basic', { api_key: 's3cret' });
    const c1 = await call('POST', `/machines/${m.id}/claim`, undefined, m.token);
    expect(c1.body.job).toMatchObject({ task: 'hello', params: { msg: 'hello', api_key: 's3cret' } });
    expect(c1.body.job.script).toContain('key=s3cret');
    const jobId = c1.body.job.id;
    // the record masks the secret everywhere a person looks
    const view = await call('GET', `/jobs/${jobId}`);
    expect(view.body.script).toContain('key=********');
    expect(JSON.stringify(view.body)).not.toContain('s3cret');
    expect(JSON.stringify((await call('GET', `/machines/${m.id}`)).body)).not.toContain('s3cret');
    expect(JSON.stringify((await call('GET', '/changes?limit=1000')).body)).not.toContain('s3cret');

    expect((await call('POST', `/jobs/${jobId}/log`, { seq: 1, stream: 'stdout', data: 'one\n' }, m.token)).status).toBe(204);
    expect((await call('POST', `/jobs/${jobId}/log`, { seq: 1, stream: 'stdout', data: 'one\n' }, m.token)).status).toBe(204);
    expect((await call('POST', `/jobs/${jobId}/log`, { seq: 2, stream: 'stderr', data: 'two\n' }, m.token)).status).toBe(204);
    const log = await call('GET', `/jobs/${jobId}/log`);
    expect(log.body.chunks.map((c: { data: string }) => c.data)).toEqual(['one\n', 'two\n']);

    const report = { exitCode: 0, outputs: { count: '3' } };
    const done = await call('POST', `/jobs/${jobId}/complete`, report, m.token);
    expect(done.body).toEqual({ job: { id: jobId, state: 'succeeded' }, action: 'continue' });
    // exactly once: the same report again gets the same answer and changes nothing
    const before = await changeCount();
    expect((await call('POST', `/jobs/${jobId}/complete`, report, m.token)).body).toEqual(done.body);
    expect(await changeCount()).toBe(before);
    // a different second report is refused
    const other = await call('POST', `/jobs/${jobId}/complete`, { exitCode: 1, outputs: {} }, m.token);
    expect(other.status).toBe(409);
    expect(other.body.error.message).toMatch(/already ended as succeeded/);
    // the output became a typed (integer, per its schema) observed output of the machine: not a param the
    // operator set, so not a desired-state change in history
    const machine = (await call('GET', `/machines/${m.id}`)).body;
    expect(machine.outputs.count).toBe(3);
    expect(machine.params.count).toBeUndefined();
    expect(machine.currentJob, 'a machine whose job ended has no current job').toBeNull();
    const hist = (await call('GET', `/changes?object=machines/${m.id}`)).body.items;
    expect(hist.map((c: { author: string }) => c.author)).not.toContain(`job:${jobId}`);

    const c2 = await call('POST', `/machines/${m.id}/claim`, undefined, m.token);
    expect(c2.body.job).toMatchObject({ task: 'use-count', params: { count: 3 } });
    expect(c2.body.job.script).toContain('count=3');
  });

  it('a completion carries the end of the log and answers with the next job; a resend stores nothing twice', async () => {
    const m = await makeMachine('proto-next');
    const c1 = await call('POST', `/machines/${m.id}/claim`, undefined, m.token);
    const j1 = c1.body.job.id;
    expect((await call('POST', `/jobs/${j1}/log`, { seq: 1, stream: 'stdout', data: 'one\n' }, m.token)).status).toBe(204);
    const report = {
      exitCode: 0,
      outputs: { count: '2' },
      log: [{ seq: 2, stream: 'stdout', data: 'two\n' }, { seq: 3, stream: 'stderr', data: 'three\n' }],
      claim: true,
    };
    const done = await call('POST', `/jobs/${j1}/complete`, report, m.token);
    expect(done.status).toBe(200);
    expect(done.body).toMatchObject({ job: { id: j1, state: 'succeeded' }, action: 'continue', next: { machine: { state: 'running' } } });
    // the next job was claimed in the same step: it runs, with the output the first one set
    const j2 = done.body.next.job;
    expect(j2).toMatchObject({ task: 'use-count', params: { count: 2 } });
    expect((await call('GET', `/jobs/${j2.id}`)).body.state).toBe('running');
    expect((await call('GET', `/machines/${m.id}`)).body.currentJob).toBe(j2.id);
    const logOf = async (id: string) => (await call('GET', `/jobs/${id}/log`)).body.chunks.map((c: { seq: number; data: string }) => `${c.seq}:${c.data}`);
    expect(await logOf(j1)).toEqual(['1:one\n', '2:two\n', '3:three\n']);

    // a resend (its answer was lost), with or without log and claim, is the same report: same answer,
    // no second next job, no log chunk twice, no change
    const before = await changeCount();
    const again = await call('POST', `/jobs/${j1}/complete`, report, m.token);
    expect(again.body).toEqual({ job: { id: j1, state: 'succeeded' }, action: 'continue' });
    expect((await call('POST', `/jobs/${j1}/complete`, { exitCode: 0, outputs: { count: '2' } }, m.token)).body).toEqual(again.body);
    expect(await changeCount()).toBe(before);
    expect(await logOf(j1)).toEqual(['1:one\n', '2:two\n', '3:three\n']);
    expect((await call('GET', `/jobs/${j2.id}`)).body.state).toBe('running');

    // the agent never saw j2 (the first answer was lost): its claim says its last job was j1, so j2 is
    // handed back and the same task runs on this claim — not lost, not run twice
    const c3 = await call('POST', `/machines/${m.id}/claim`, { lastJob: j1 }, m.token);
    expect(c3.body.job).toMatchObject({ task: 'use-count' });
    expect(c3.body.job.id).not.toBe(j2.id);
    const handedBack = (await call('GET', `/jobs/${j2.id}`)).body;
    expect(handedBack).toMatchObject({ state: 'cancelled' });
    expect(handedBack.reason).toMatch(/never answered/);

    // the last task's completion has no next job; the machine is done
    let job = c3.body.job;
    for (let i = 0; i < 10 && job; i++) {
      const r = await call('POST', `/jobs/${job.id}/complete`, { exitCode: 0, outputs: {}, claim: true }, m.token);
      expect(r.body.job.state).toBe('succeeded');
      job = r.body.next.job;
      if (!job) expect(r.body.next.machine.state).toBe('done');
    }
    expect((await call('GET', `/machines/${m.id}`)).body.state).toBe('done');
  });

  it('a failing completion that asks for the next job stops the machine, with its reason, and hands nothing out', async () => {
    const m = await makeMachine('proto-next-fail', 'basic', { code: 3 });
    let job = (await call('POST', `/machines/${m.id}/claim`, undefined, m.token)).body.job;
    const outputs: Record<string, Record<string, string>> = { hello: { count: '3' } };
    // a completion that hands out the next job writes the machine once: one event, already on the next job
    type MachineEvent = { data: { state: string; currentJob: string | null } };
    let open!: () => void;
    let opened = new Promise<void>((r) => (open = r));
    const first = readEvents(`topics=machines.update.${m.id}`, (ev) => ev.some((e) => (e as unknown as MachineEvent).data.currentJob !== job.id), open);
    await opened;
    const done1 = await call('POST', `/jobs/${job.id}/complete`, { exitCode: 0, outputs: outputs.hello, claim: true }, m.token);
    const firstSeen = (await first) as unknown as MachineEvent[];
    expect(firstSeen.map((e) => e.data.currentJob)).toEqual([done1.body.next.job.id]);
    job = done1.body.next.job;
    for (let i = 0; i < 3 && job.task !== 'fail-if'; i++) {
      job = (await call('POST', `/jobs/${job.id}/complete`, { exitCode: 0, outputs: outputs[job.task] ?? {}, claim: true }, m.token)).body.next.job;
    }
    expect(job.task).toBe('fail-if');
    // one machine event for the completion, with the machine as it ends up
    opened = new Promise<void>((r) => (open = r));
    const watching = readEvents(`topics=machines.update.${m.id}`, (ev) => ev.some((e) => (e as unknown as MachineEvent).data.state === 'stopped'), open);
    await opened;
    const r = await call('POST', `/jobs/${job.id}/complete`, { exitCode: 3, outputs: {}, claim: true }, m.token);
    expect(r.body).toMatchObject({ job: { state: 'failed' }, action: 'continue', next: { job: null, machine: { state: 'stopped' } } });
    const seen = (await watching) as unknown as MachineEvent[];
    expect(seen.map((e) => [e.data.state, e.data.currentJob])).toEqual([['stopped', null]]);
    const machine = (await call('GET', `/machines/${m.id}`)).body;
    expect(machine).toMatchObject({ state: 'stopped', currentJob: null });
    expect(machine.reason).toMatch(/fail-if/);
  });

  it('a completion with a bad log chunk is refused whole', async () => {
    const m = await makeMachine('proto-next-bad');
    const c1 = await call('POST', `/machines/${m.id}/claim`, undefined, m.token);
    const j1 = c1.body.job.id;
    const bad = await call('POST', `/jobs/${j1}/complete`, { exitCode: 0, outputs: {}, log: [{ seq: 0, stream: 'stdout', data: 'x' }] }, m.token);
    expect(bad.status).toBe(422);
    expect(bad.body.error.path).toMatch(/log/);
    expect((await call('GET', `/jobs/${j1}`)).body.state).toBe('running');
    expect((await call('GET', `/jobs/${j1}/log`)).body.chunks).toEqual([]);
  });

  it('an output that breaks its schema fails the task even with exit 0', async () => {
    const m = await makeMachine('proto-2');
    const c = await call('POST', `/machines/${m.id}/claim`, undefined, m.token);
    const r = await call('POST', `/jobs/${c.body.job.id}/complete`, { exitCode: 0, outputs: { count: 'many' } }, m.token);
    expect(r.body.job.state).toBe('failed');
    const machine = (await call('GET', `/machines/${m.id}`)).body;
    expect(machine.state).toBe('stopped');
    expect(machine.reason).toMatch(/output count = 'many' must be an integer/);
  });

  it('a job whose agent goes quiet is marked lost after its lease and the machine stops with the reason', async () => {
    const m = await makeMachine('proto-lost');
    const c = await call('POST', `/machines/${m.id}/claim`, undefined, m.token);
    const jobId = c.body.job.id;
    let machine;
    for (let i = 0; i < 100; i++) {
      machine = (await call('GET', `/machines/${m.id}`)).body;
      if (machine.state === 'stopped') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(machine.state).toBe('stopped');
    expect(machine.reason).toMatch(/task 'hello' lost: no word from the agent for 2s/);
    expect((await call('GET', `/jobs/${jobId}`)).body.state).toBe('lost');
    // the late report is refused, not applied
    const late = await call('POST', `/jobs/${jobId}/complete`, { exitCode: 0, outputs: {} }, m.token);
    expect(late.status).toBe(409);
    expect((await call('POST', `/jobs/${jobId}/heartbeat`, undefined, m.token)).body).toEqual({ running: false });
    // resume re-runs the lost task
    await call('POST', `/machines/${m.id}/resume`);
    const again = await call('POST', `/machines/${m.id}/claim`, undefined, m.token);
    expect(again.body.job.task).toBe('hello');
    expect(again.body.job.id).not.toBe(jobId);
  });

  it('a long-poll claim wakes up when work arrives', async () => {
    const m = await makeMachine('proto-wait', null as never);
    const started = Date.now();
    const pending = call('POST', `/machines/${m.id}/claim?wait=20`, undefined, m.token);
    await new Promise((r) => setTimeout(r, 300));
    await call('PATCH', `/machines/${m.id}`, { pipeline: 'basic' });
    const r = await pending;
    expect(r.body.job.task).toBe('hello');
    expect(Date.now() - started).toBeLessThan(10_000);
  });
});

describe('bad input', () => {
  it.each([
    ['malformed JSON', 'POST', '/machines', undefined, '{"name": ', 400, 'bad_request'],
    ['unknown field', 'POST', '/machines', { name: 'x1', colour: 'red' }, undefined, 422, 'invalid'],
    ['wrong type', 'POST', '/machines', { name: 42 }, undefined, 422, 'invalid'],
    ['bad name pattern', 'POST', '/machines', { name: 'Bad Name!' }, undefined, 422, 'invalid'],
    ['unknown pipeline', 'POST', '/machines', { name: 'x2', pipeline: 'nope' }, undefined, 404, 'not_found'],
    ['unknown profile', 'POST', '/machines', { name: 'x3', profiles: ['nope'] }, undefined, 404, 'not_found'],
    ['param violating its schema', 'POST', '/machines', { name: 'x4', params: { code: 'seven' } }, undefined, 422, 'invalid'],
    ['unknown broker', 'POST', '/machines', { broker: 'cloud9' }, undefined, 422, 'invalid'],
    ['unknown machine', 'GET', '/machines/nope', undefined, undefined, 404, 'not_found'],
    ['unknown job', 'GET', '/jobs/j-nope', undefined, undefined, 404, 'not_found'],
    ['unknown route', 'GET', '/nothing-here', undefined, undefined, 404, 'not_found'],
    ['bad query', 'GET', '/machines?limit=lots', undefined, undefined, 400, 'bad_request'],
    ['bad state filter', 'GET', '/machines?state=happy', undefined, undefined, 400, 'bad_request'],
    ['bad log chunk', 'POST', '/jobs/j-x/log', { seq: 0, stream: 'stdout', data: '' }, undefined, 422, 'invalid'],
    ['unknown blueprint', 'POST', '/workorders', { machine: 'auth-a', blueprint: 'nope' }, undefined, 404, 'not_found'],
    ['local task with an unknown field', 'POST', '/tasks', { name: 't1', script: 'true', colour: 1 }, undefined, 422, 'invalid'],
    ['local stage naming a missing task', 'POST', '/stages', { name: 's1', tasks: ['ghost'] }, undefined, 422, 'invalid'],
    ['local task using an undeclared param', 'POST', '/tasks', { name: 't2', script: 'echo {{ msg }}' }, undefined, 422, 'invalid'],
    ['changing a pack object locally', 'PUT', '/tasks/hello', { name: 'hello', script: 'true' }, undefined, 409, 'conflict'],
  ])('%s → %i', async (_name, method, path, body, raw, status, code) => {
    const before = await changeCount();
    const r = await call(method, path, body, undefined, raw);
    expect(r.status).toBe(status);
    expect(r.body.error.code).toBe(code);
    expect(typeof r.body.error.message).toBe('string');
    expect(r.body.error.message).not.toMatch(/\n\s+at /); // no stack traces
    expect(await changeCount()).toBe(before);
  });

  it('names the field: unknown field and schema violation carry a path', async () => {
    const r = await call('POST', '/machines', { name: 'x5', colour: 'red' });
    expect(r.body.error).toMatchObject({ path: '/colour', message: "unknown field 'colour'" });
    const p = await call('POST', '/machines', { name: 'x6', params: { code: 300 } });
    expect(p.body.error.path).toBe('/params/code');
    expect(p.body.error.message).toMatch(/must be <= 255/);
    const s = await call('POST', '/stages', { name: 's2', tasks: ['ghost'] });
    expect(s.body.error.message).toMatch(/ghost/);
  });

  it('an oversized body is 413, answered from its headers before the body is sent', async () => {
    // The client sends headers only and reads the answer: the endpoint must not wait for (or need) the
    // body. (Sending the 2 MiB body at once raced the answer: the client could get EPIPE instead.)
    const answer = await rawExchange(`POST /api/v1/machines HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${ep.token}\r\nContent-Type: application/json\r\nContent-Length: ${2 * 1024 * 1024}\r\n\r\n{"name":"big"`);
    expect(answer.status).toBe(413);
    expect(JSON.parse(answer.body).error.code).toBe('too_large');
    expect((await call('GET', '/machines?name=big')).body.total).toBe(0);
  });

  it('a chunked body that grows past the limit is 413, and nothing is written', async () => {
    const chunk = 'x'.repeat(256 * 1024);
    const head = `POST /api/v1/machines HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${ep.token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`;
    // Exactly 1 MiB in four chunks, then 16 bytes more cross the limit with the last bytes sent; then the client
    // waits. Bytes still arriving after the endpoint closed would be answered with a reset, which can discard
    // the 413 before the client reads it.
    const tail = 'y'.repeat(16);
    const answer = await rawExchange(head, (write, i) =>
      i < 4 ? write(`${chunk.length.toString(16)}\r\n${chunk}\r\n`) : i === 4 ? (write(`${tail.length.toString(16)}\r\n${tail}\r\n`), false) : false,
    );
    expect(answer.status).toBe(413);
    expect(JSON.parse(answer.body).error.code).toBe('too_large');
  });

  it('a pack with errors is refused whole with file:line:col diagnostics, and the store is unchanged', async () => {
    const before = await changeCount();
    const packsBefore = (await call('GET', '/packs')).body;
    const files = await packFiles('basic');
    files['pack.yaml'] = 'name: basic\nversion: 1.0.1\n';
    files['tasks/hello.yaml'] = 'name: hello\nscript: echo {{ nope }}\ncolour: red\n';
    const r = await call('POST', '/packs', { files });
    expect(r.status).toBe(422);
    const diags = r.body.error.details.diagnostics as Array<{ file: string; line: number; col: number; message: string }>;
    expect(diags.length).toBeGreaterThanOrEqual(2);
    expect(diags.find((d) => d.file === 'tasks/hello.yaml' && d.line === 3 && d.col === 1)?.message).toMatch(/colour/);
    expect(await changeCount()).toBe(before);
    expect((await call('GET', '/packs')).body).toEqual(packsBefore);
    expect((await call('GET', '/tasks/hello')).body.script).toContain('api_key');
  });

  it('deleting a pipeline a machine uses is refused', async () => {
    const r = await call('DELETE', '/packs/basic');
    expect(r.status).toBe(409);
    expect(r.body.error.message).toMatch(/reassign the machine first|without its pipeline/);
  });

  it('a pipeline whose required params cannot be resolved does not start, and every missing one is listed', async () => {
    expect((await call('POST', '/tasks', { name: 'needs-count', params: { required: ['count', 'api_key'] }, script: 'echo {{ count }} {{ api_key }}' })).status).toBe(201);
    expect((await call('POST', '/stages', { name: 'needs', tasks: ['needs-count', 'use-count'] })).status).toBe(201);
    expect((await call('POST', '/pipelines', { name: 'needy', stages: ['needs'] })).status).toBe(201);
    const before = await changeCount();
    const r = await call('POST', '/machines', { name: 'needy-1', pipeline: 'needy' });
    expect(r.status).toBe(422);
    expect(r.body.error.message).toBe(
      "pipeline 'needy' cannot start on 'needy-1': required params have no value — needs/needs-count: count, api_key; needs/use-count: count. Set them on the machine, a profile, the stage or pipeline, give them defaults, or have an earlier task promise them as outputs",
    );
    expect(await changeCount()).toBe(before);
    // with the values set, it starts; a param an earlier task promises as an output counts as resolvable
    expect((await call('POST', '/machines', { name: 'needy-2', pipeline: 'needy', params: { count: 1, api_key: 'k' } })).status).toBe(201);
    expect((await call('POST', '/machines', { name: 'needy-3', pipeline: 'basic' })).status).toBe(201);
    // assigning the pipeline later is refused the same way
    const idle = await makeMachine('needy-4', null as never);
    expect((await call('PATCH', `/machines/${idle.id}`, { pipeline: 'needy' })).status).toBe(422);
  });

  it('the OpenAPI document describes the routes', async () => {
    const r = await call('GET', '/openapi.json');
    expect(r.status).toBe(200);
    expect(r.body.openapi).toMatch(/^3\./);
    expect(Object.keys(r.body.paths)).toEqual(expect.arrayContaining(['/api/v1/machines', '/api/v1/jobs/{id}/complete', '/api/v1/events']));
  });
});

/**
 * Reads the event stream until `stop` says so (or `ms` pass, 8 s by default), through the one test reader (helpers/sse.ts).
 * `opened` is called once the answer's headers are in: the endpoint subscribes before it writes them
 * (routes/events.ts), so from then on no live event can be missed — the synchronisation a test needs,
 * instead of a pause.
 */
async function readEvents(query: string, stop: (events: Array<{ id: number; topic: string }>) => boolean, opened?: () => void, ms = 8000) {
  const r = readSse(ep.url, ep.token, query, stop, ms);
  void r.open.then((status) => {
    expect(status).toBe(200);
    opened?.();
  });
  return (await r.events) as Array<{ id: number; topic: string; data: Record<string, unknown> }>;
}

describe('event stream', () => {
  it('delivers live events that match the topic filter, and replays from an id', async () => {
    let open!: () => void;
    const opened = new Promise<void>((r) => (open = r));
    const live = readEvents('topics=machines.create.*', (ev) => ev.some((e) => (e as unknown as { data: { name?: string } }).data?.name === 'ev-2'), open);
    await opened;
    const one = await makeMachine('ev-1');
    await call('PATCH', `/machines/${one.id}`, { params: { msg: 'x' } });
    await makeMachine('ev-2');
    const got = await live;
    expect(got.map((e) => e.topic)).toEqual([expect.stringMatching(/^machines\.create\./), expect.stringMatching(/^machines\.create\./)]);
    // replay: everything after the first event, including the update the filter above left out
    const replay = await readEvents(`since=${got[0]!.id}&topics=machines`, (ev) => ev.length >= 3);
    expect(replay[0]!.id).toBeGreaterThan(got[0]!.id);
    expect(replay.some((e) => e.topic === `machines.update.${one.id}`)).toBe(true);
  });

  it('cuts off a subscriber that stops reading, which then resumes from its last id without a gap', async () => {
    const m = await makeMachine('ev-slow', null as never);
    const topic = `machines.update.${m.id}`;
    // A client that connects and then reads nothing: the kernel's buffers fill, then the endpoint's.
    const { hostname, port } = new URL(ep.url);
    const sock = connect(Number(port), hostname);
    await new Promise((r) => sock.once('connect', r));
    const chunks: Buffer[] = [];
    // Subscribed once ': connected' arrives (the endpoint subscribes before it writes it); then it stops reading.
    let subscribed!: () => void;
    let isSubscribed = false;
    const connected = new Promise<void>((r) => (subscribed = r));
    // The endpoint ends the response (the chunked stream's last, empty chunk); the connection may stay.
    const ended = new Promise<void>((r) =>
      sock.on('data', (d: Buffer) => {
        chunks.push(d);
        if (!isSubscribed && Buffer.concat(chunks).toString('latin1').includes(': connected')) {
          isSubscribed = true;
          sock.pause();
          subscribed();
        }
        if (Buffer.concat(chunks.slice(-2)).includes('\r\n0\r\n\r\n')) r();
      }),
    );
    sock.write(`GET /api/v1/events?topics=${topic} HTTP/1.1\r\nHost: ${hostname}\r\nAuthorization: Bearer ${ep.token}\r\n\r\n`);
    await connected;

    // ~40 MiB of events for it: far more than socket buffers and the endpoint's 8 MiB allowance
    // (each under the 64 KiB a machine's params may hold)
    const big = 'x'.repeat(60 * 1024);
    const patches = 700;
    for (let i = 0; i < patches; i++) expect((await call('PATCH', `/machines/${m.id}`, { params: { msg: `${i}:${big}` } })).status).toBe(200);

    // reading again, it finds its stream ended early by the endpoint (not by the test)
    sock.resume();
    await ended;
    const text = Buffer.concat(chunks).toString('utf8');
    const ids = [...text.matchAll(/^id: (\d+)$/gm)].map((x) => Number(x[1]));
    const complete = ids.filter((id) => text.includes(`id: ${id}\nevent: ${topic}\ndata: `) && text.indexOf('\n\n', text.indexOf(`id: ${id}\n`)) > 0);
    expect(complete.length).toBeGreaterThan(0);
    expect(complete.length).toBeLessThan(patches);
    sock.destroy();

    // resuming from the last whole event brings the rest, in order, up to the last patch
    const last = complete[complete.length - 1]!;
    // Up to ~40 MiB to read: bounded generously (it ends as soon as the last patch arrives), as a loaded host reads it slowly.
    const rest = await readEvents(`since=${last}&topics=${topic}`, (ev) => (ev.at(-1) as unknown as { data: { params: { msg: string } } } | undefined)?.data.params.msg.startsWith(`${patches - 1}:`) ?? false, undefined, 90_000);
    expect(rest.length).toBe(patches - complete.length);
    expect(rest[0]!.id).toBeGreaterThan(last);
    const msgs = rest.map((e) => Number((e as unknown as { data: { params: { msg: string } } }).data.params.msg.split(':')[0]));
    expect(msgs).toEqual(Array.from({ length: rest.length }, (_, i) => complete.length + i));
  }, 180_000);
});

describe('jobs log --follow', () => {
  it('prints chunks as they arrive and ends with the job', async () => {
    const m = await makeMachine('follow-1');
    const job = (await call('POST', `/machines/${m.id}/claim`, undefined, m.token)).body.job;
    const follow = runCli(['jobs', 'log', job.id, '--follow'], { TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token });
    await call('POST', `/jobs/${job.id}/log`, { seq: 1, stream: 'stdout', data: 'first\n' }, m.token);
    await new Promise((r) => setTimeout(r, 500));
    await call('POST', `/jobs/${job.id}/log`, { seq: 2, stream: 'stdout', data: 'second\n' }, m.token);
    await call('POST', `/jobs/${job.id}/complete`, { exitCode: 3, outputs: {} }, m.token);
    const r = await follow;
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('first\nsecond\n');
    expect(r.stderr).toMatch(/job failed: task 'hello' failed with exit code 3/);
  });
});
