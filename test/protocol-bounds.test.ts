/**
 * Issue 10 § 4, the agent protocol: every input a machine token sends is bounded and checked before
 * anything is written, answered with a 4xx in the error shape (never a 5xx); only a task's declared
 * outputs are accepted; a job's log is bounded and closes when the job ends; and a report that does not
 * fit is never dropped — the job ends failed with a reason that names what was refused, never "lost".
 * Against a real endpoint (and real local agents where the agent takes part).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, Machine } from '../src/model/machine.js';
import { Endpoint, until } from './helpers/endpoint.js';

/** Small, so that a test passes it quickly; the default is 64 MiB. */
const MAX_LOG_BYTES = 64 * 1024;

const PACK: Record<string, string> = {
  'pack.yaml': 'name: bounds\nversion: 1.0.0\n',
  'params/count.yaml': 'name: count\nschema: { type: integer }\n',
  // Driven by hand over HTTP (no agent): one declared output.
  'tasks/one-out.yaml': 'name: one-out\noutputs:\n  count: { type: integer }\nscript: takt-set count 3\n',
  'stages/raw.yaml': 'name: raw\ntasks: [one-out]\n',
  'pipelines/raw.yaml': 'name: raw\nstages: [raw]\n',
  // Run by real agents.
  'tasks/blob.yaml': [
    'name: blob',
    'outputs:',
    '  small: { type: string }',
    '  blob: { type: string }',
    'script: |',
    '  takt-set small ok',
    "  head -c 200000 /dev/zero | tr '\\0' '\\1' | takt-set blob",
    '',
  ].join('\n'),
  'tasks/stray.yaml': 'name: stray\noutputs:\n  ip: { type: string }\nscript: |\n  takt-set ip 10.0.0.5\n  takt-set extra x\n  echo not reached\n',
  'tasks/chatty.yaml': "name: chatty\nscript: |\n  head -c 300000 /dev/zero | tr '\\0' x\n  echo\n  echo the end\n",
  ...Object.fromEntries(
    ['blob', 'stray', 'chatty'].flatMap((t) => [
      [`stages/${t}.yaml`, `name: ${t}\ntasks: [${t}]\n`],
      [`pipelines/${t}.yaml`, `name: ${t}\nstages: [${t}]\n`],
    ]),
  ),
};

let ep: Endpoint;

const call = (...args: Parameters<Endpoint['call']>) => ep.call(...args);

interface Claimed {
  machine: { id: string; name: string; token: string };
  job: { id: string; outputs?: string[] };
}

/** A machine on the `raw` pipeline, driven over HTTP with its token, and the job it claimed. */
async function claimed(name: string): Promise<Claimed> {
  const r = await call('POST', '/machines', { name, pipeline: 'raw' });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  const machine = r.body.items[0];
  const c = await call('POST', `/machines/${machine.id}/claim`, undefined, machine.token);
  expect(c.body.job?.task).toBe('one-out');
  return { machine, job: c.body.job };
}

const job = async (id: string) => (await call('GET', `/jobs/${id}`)).body as Job;
const logOf = async (id: string) => (await call('GET', `/jobs/${id}/log`)).body.chunks as Array<{ seq: number; stream: string; data: string }>;
const changes = async () => (await call('GET', '/changes?limit=1000')).body.items.length as number;

/** A machine with a real local agent on `pipeline`, waited for until its line ends. */
async function ranByAgent(name: string, pipeline: string): Promise<{ machine: Machine; job: Job }> {
  const r = await call('POST', '/machines', { name, pipeline, broker: 'local' });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  const machine = await until(async () => {
    const m = (await call('GET', `/machines/${name}`)).body as Machine;
    return m.state === 'stopped' || m.state === 'done' ? m : null;
  }, 60_000, `machine ${name} to finish its pipeline`);
  const jobs = (await call('GET', `/jobs?machine=${machine.id}`)).body.items as Job[];
  expect(jobs).toHaveLength(1);
  return { machine, job: jobs[0]! };
}

beforeAll(async () => {
  ep = await Endpoint.start({ lease: '30s', env: { TAKT_MAX_LOG_BYTES: String(MAX_LOG_BYTES) } });
  const r = await call('POST', '/packs', { files: PACK });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
});
afterAll(async () => ep?.stop());

describe('outputs: only what the task declares', () => {
  it('the claim tells the agent which outputs the task declares', async () => {
    const { job: j } = await claimed('decl-1');
    expect(j.outputs).toEqual(['count']);
  });

  it.each([
    ['machine', "'machine'"],
    ['constructor', "'constructor'"],
    ['extra', "'extra'"],
    ['Bad-Name\n', '"Bad-Name\\n"'],
  ])('an undeclared or reserved output (%j) fails the job with a reason that names it; nothing is promoted', async (name, shown) => {
    const { machine, job: j } = await claimed(`undeclared-${shown.replace(/\W/g, '').toLowerCase()}`);
    const r = await call('POST', `/jobs/${j.id}/complete`, { exitCode: 0, outputs: { count: '3', [name]: 'x' } }, machine.token);
    expect(r.status).toBe(200);
    expect(r.body.job.state).toBe('failed');
    const done = await job(j.id);
    expect(done.reason).toBe(`task 'one-out' exited 0 but it set an output its task does not declare: ${shown} (it declares 'count'; declare outputs under 'outputs:' in the task)`);
    const m = (await call('GET', `/machines/${machine.id}`)).body as Machine;
    expect(m.state).toBe('stopped');
    expect(m.params).toEqual({});
  });

  it('__proto__ as an output name is refused, not applied', async () => {
    const { machine, job: j } = await claimed('undeclared-proto');
    const r = await call('POST', `/jobs/${j.id}/complete`, undefined, machine.token, '{"exitCode":0,"outputs":{"count":"3","__proto__":"x"}}');
    expect(r.status).toBeGreaterThanOrEqual(400);
    expect(r.status).toBeLessThan(500);
    expect(r.body.error.message).toBeTruthy();
    expect((await job(j.id)).state).toBe('running');
  });

  it('70,000 keys are refused whole with a 422 that names the field, before anything is written', async () => {
    const { machine, job: j } = await claimed('keys-70000');
    const before = await changes();
    const outputs = Object.fromEntries(Array.from({ length: 70_000 }, (_, i) => [`k${i}`, '']));
    const r = await call('POST', `/jobs/${j.id}/complete`, { exitCode: 0, outputs, log: [{ seq: 1, stream: 'stdout', data: 'x' }] }, machine.token);
    expect(r.status).toBe(422);
    expect(r.body.error).toMatchObject({ code: 'invalid', path: '/outputs' });
    expect(r.body.error.message).toMatch(/must have at most 1000 entries/);
    expect((await job(j.id)).state).toBe('running');
    expect(await logOf(j.id)).toEqual([]);
    expect(await changes()).toBe(before);
  });

  it('up to the key bound, undeclared outputs fail the job; the reason lists some and counts the rest', async () => {
    const { machine, job: j } = await claimed('keys-1000');
    const outputs = Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`k${i}`, '']));
    const r = await call('POST', `/jobs/${j.id}/complete`, { exitCode: 0, outputs }, machine.token);
    expect(r.body.job.state).toBe('failed');
    expect((await job(j.id)).reason).toBe(
      "task 'one-out' exited 0 but it set 1000 outputs its task does not declare: 'k0', 'k1', 'k2', 'k3', 'k4' and 995 more (it declares 'count'; declare outputs under 'outputs:' in the task)",
    );
  });

  it('an error with terminal escapes reaches the reason escaped', async () => {
    const { machine, job: j } = await claimed('escapes');
    const r = await call('POST', `/jobs/${j.id}/complete`, { exitCode: 1, outputs: {}, error: 'boom\u001b[2J' }, machine.token);
    expect(r.body.job.state).toBe('failed');
    expect((await job(j.id)).reason).toBe("task 'one-out' failed: boom\\u001b[2J");
  });

  it('an output over the limit as sent (100,000 control bytes = 600,002 bytes of JSON) fails the job, named with its size', async () => {
    const { machine, job: j } = await claimed('big-json');
    const r = await call('POST', `/jobs/${j.id}/complete`, { exitCode: 0, outputs: { count: '\u0001'.repeat(100_000) } }, machine.token);
    expect(r.status).toBe(200);
    expect(r.body.job.state).toBe('failed');
    expect((await job(j.id)).reason).toBe("task 'one-out' exited 0 but its output 'count' is 600002 bytes as sent (JSON), over the limit of 262144 bytes per output");
  });
});

describe('job logs: bounded, and closed when the job ends', () => {
  it(`a log beyond --max-log-bytes (${MAX_LOG_BYTES}) is cut with a visible marker; the job is not failed for it`, async () => {
    const { machine, job: j } = await claimed('log-cap');
    const data = 'x'.repeat(999) + '\n';
    for (let seq = 1; seq <= 100; seq++) {
      const r = await call('POST', `/jobs/${j.id}/log`, { seq, stream: 'stdout', data }, machine.token);
      // from the chunk that hit the bound on, the answer tells the agent to stop sending
      if (seq <= 65) expect(r.status, `chunk ${seq}`).toBe(204);
      else expect(r, `chunk ${seq}`).toEqual({ status: 200, body: { logCut: true } });
    }
    const expectCut = async () => {
      const chunks = await logOf(j.id);
      expect(chunks).toHaveLength(66);
      expect(chunks.slice(0, 65).every((c) => c.data === data)).toBe(true);
      expect(chunks.slice(0, 65).reduce((n, c) => n + c.data.length, 0)).toBe(65_000);
      expect(chunks[65]).toMatchObject({
        seq: 66,
        stream: 'takt',
        data: `takt: this job's log reached its limit of ${MAX_LOG_BYTES} bytes (takt serve --max-log-bytes); the rest of its output was not stored\n`,
      });
    };
    await expectCut();
    // a resend of a stored chunk changes nothing
    expect((await call('POST', `/jobs/${j.id}/log`, { seq: 3, stream: 'stdout', data }, machine.token)).status).toBe(200);
    // the completion's tail is past the bound too; the job succeeds
    const done = await call('POST', `/jobs/${j.id}/complete`, { exitCode: 0, outputs: { count: '3' }, log: [{ seq: 101, stream: 'stdout', data: 'tail\n' }] }, machine.token);
    expect(done.body.job.state).toBe('succeeded');
    await expectCut();
  });

  it('the bound survives an endpoint restart: a cut log stays cut', async () => {
    const { machine, job: j } = await claimed('log-cap-restart');
    const data = 'y'.repeat(40_000);
    expect((await call('POST', `/jobs/${j.id}/log`, { seq: 1, stream: 'stdout', data }, machine.token)).status).toBe(204);
    await ep.crash();
    await ep.boot();
    // 40,000 + 40,000 passes 65,536: the second chunk is the marker, the third is dropped
    expect((await call('POST', `/jobs/${j.id}/log`, { seq: 2, stream: 'stdout', data }, machine.token)).body).toEqual({ logCut: true });
    await ep.crash();
    await ep.boot();
    expect((await call('POST', `/jobs/${j.id}/log`, { seq: 3, stream: 'stdout', data: 'z' }, machine.token)).body).toEqual({ logCut: true });
    const chunks = await logOf(j.id);
    expect(chunks.map((c) => [c.seq, c.stream])).toEqual([
      [1, 'stdout'],
      [2, 'takt'],
    ]);
  });

  it('a chunk for a job that has ended is a 409 with the error shape; a resend of a stored chunk stays a 204', async () => {
    const { machine, job: j } = await claimed('log-closed');
    expect((await call('POST', `/jobs/${j.id}/log`, { seq: 1, stream: 'stdout', data: 'one\n' }, machine.token)).status).toBe(204);
    const done = await call('POST', `/jobs/${j.id}/complete`, { exitCode: 0, outputs: { count: '3' }, log: [{ seq: 2, stream: 'stdout', data: 'two\n' }] }, machine.token);
    expect(done.body.job.state).toBe('succeeded');
    const late = await call('POST', `/jobs/${j.id}/log`, { seq: 3, stream: 'stdout', data: 'late\n' }, machine.token);
    expect(late.status).toBe(409);
    expect(late.body.error).toEqual({ code: 'conflict', message: `job ${j.id} is succeeded; its log is closed`, path: `/api/v1/jobs/${j.id}/log` });
    // the agent resends a chunk whose answer it lost: same answer as the first time, nothing stored twice
    expect((await call('POST', `/jobs/${j.id}/log`, { seq: 1, stream: 'stdout', data: 'one\n' }, machine.token)).status).toBe(204);
    expect((await call('POST', `/jobs/${j.id}/log`, { seq: 2, stream: 'stdout', data: 'two\n' }, machine.token)).status).toBe(204);
    expect((await logOf(j.id)).map((c) => c.data)).toEqual(['one\n', 'two\n']);
    // a failed job's log is closed too
    const { machine: m2, job: j2 } = await claimed('log-closed-failed');
    await call('POST', `/jobs/${j2.id}/complete`, { exitCode: 3, outputs: {} }, m2.token);
    expect((await call('POST', `/jobs/${j2.id}/log`, { seq: 1, stream: 'stdout', data: 'late\n' }, m2.token)).status).toBe(409);
  });
});

describe('every field is bounded: a 4xx in the error shape, never a 5xx, nothing written', () => {
  it('log chunks, completions, heartbeats and claims out of bounds', async () => {
    const { machine, job: j } = await claimed('fields');
    const before = await changes();
    const log = `/jobs/${j.id}/log`;
    const complete = `/jobs/${j.id}/complete`;
    const chunk = (seq: string, data = '"x"', stream = '"stdout"') => `{"seq":${seq},"stream":${stream},"data":${data}}`;
    const cases: Array<[string, string, string, number]> = [
      ['seq 0', log, chunk('0'), 422],
      ['seq 2^31', log, chunk(String(2 ** 31)), 422],
      ['seq 1e20', log, chunk('1e20'), 422],
      ['seq 2^53+1', log, chunk('9007199254740993'), 422],
      ['seq 1.5', log, chunk('1.5'), 422],
      ['empty data', log, chunk('1', '""'), 422],
      ['unknown stream', log, chunk('1', '"x"', '"stdin"'), 422],
      ['data over the body limit', log, chunk('1', JSON.stringify('x'.repeat(1024 * 1024 + 1))), 413],
      ['extra field', log, '{"seq":1,"stream":"stdout","data":"x","job":"other"}', 422],
      ['exit code 256', complete, '{"exitCode":256,"outputs":{}}', 422],
      ['exit code -1', complete, '{"exitCode":-1,"outputs":{}}', 422],
      ['exit code 1e300', complete, '{"exitCode":1e300,"outputs":{}}', 422],
      ['non-string output', complete, '{"exitCode":0,"outputs":{"count":3}}', 422],
      ['error of 4097 characters', complete, JSON.stringify({ exitCode: 1, outputs: {}, error: 'e'.repeat(4097) }), 422],
      ['65 tail chunks', complete, JSON.stringify({ exitCode: 0, outputs: {}, log: Array.from({ length: 65 }, (_, i) => ({ seq: i + 1, stream: 'stdout', data: 'x' })) }), 422],
      ['tail chunk seq 1e20', complete, `{"exitCode":0,"outputs":{},"log":[${chunk('1e20')}]}`, 422],
      ['heartbeat with a body', `/jobs/${j.id}/heartbeat`, '{"a":1}', 422],
      ['claim with an object as lastJob', `/machines/${machine.id}/claim`, '{"lastJob":{"x":1}}', 422],
      ['claim with a long lastJob', `/machines/${machine.id}/claim`, JSON.stringify({ lastJob: 'j'.repeat(65) }), 422],
      ['claim with an unknown field', `/machines/${machine.id}/claim`, '{"wait":1}', 422],
      ['deeply nested body', `/jobs/${j.id}/heartbeat`, `{"a":${'['.repeat(10_000)}${']'.repeat(10_000)}}`, 400],
    ];
    for (const [what, path, raw, status] of cases) {
      const r = await call('POST', path, undefined, machine.token, raw);
      expect(r.status, what).toBe(status);
      expect(r.body?.error?.code, what).toBeTruthy();
    }
    // nothing was written: the job runs on (no claim abandoned it), with no log and no change recorded
    expect((await job(j.id)).state).toBe('running');
    expect(await logOf(j.id)).toEqual([]);
    expect(await changes()).toBe(before);
    // the well-formed requests work
    expect((await call('POST', `/jobs/${j.id}/heartbeat`, undefined, machine.token)).body).toEqual({ running: true });
    expect((await call('POST', `/jobs/${j.id}/heartbeat`, {}, machine.token)).body).toEqual({ running: true });
    expect((await call('POST', log, { seq: 2 ** 31 - 1, stream: 'stdout', data: 'x' }, machine.token)).status).toBe(204);
    const c = await call('POST', `/machines/${machine.id}/claim`, { lastJob: j.id }, machine.token);
    expect(c.status).toBe(200);
  });
});

describe('with a real agent', () => {
  it('an output of 200 KB of control bytes (1.2 MB as sent) fails the job with a reason naming it — never "lost"', async () => {
    const { machine, job: j } = await ranByAgent('agent-blob', 'blob');
    expect(j.state).toBe('failed');
    expect(j.reason).toContain("task 'blob' failed: outputs too large to report");
    expect(j.reason).toContain('blob (200000 bytes, 1200002 as sent)');
    expect(machine.state).toBe('stopped');
    expect(machine.reason).toBe(j.reason);
  });

  it('takt-set of an undeclared name fails the script at that line, and the log says why', async () => {
    const { job: j } = await ranByAgent('agent-stray', 'stray');
    expect(j).toMatchObject({ state: 'failed', exitCode: 1 });
    const text = (await logOf(j.id)).map((c) => c.data).join('');
    expect(text).toContain("takt-set: task does not declare output 'extra' (it declares: ip); add it under 'outputs:' in the task");
    expect(text).not.toContain('not reached');
  });

  it('a chatty job is cut at the log bound with the marker and still succeeds', async () => {
    const { job: j } = await ranByAgent('agent-chatty', 'chatty');
    expect(j.state).toBe('succeeded');
    const chunks = await logOf(j.id);
    const last = chunks[chunks.length - 1]!;
    expect(last.stream).toBe('takt');
    expect(last.data).toMatch(/^takt: this job's log reached its limit of 65536 bytes/);
    expect(chunks.slice(0, -1).reduce((n, c) => n + Buffer.byteLength(c.data), 0)).toBeLessThanOrEqual(MAX_LOG_BYTES);
  });
});
