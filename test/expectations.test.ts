/**
 * Issue 4 (part): tasks promise outputs and expectations — a task that exits 0 but leaves garbage has
 * failed; stages check preconditions before they start and can wait for an approval.
 */
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Change, Machine } from '../src/model/machine.js';
import { Endpoint, packFiles } from './helpers/endpoint.js';

let ep: Endpoint;
const machine = (name: string) => ep.api.get<Machine>(`/machines/${name}`);
const create = async (name: string, pipeline: string, params: string[] = []) => {
  const r = await ep.cli(['machines', 'create', name, '--broker', 'local', '--pipeline', pipeline, ...params.flatMap((p) => ['--param', p])]);
  expect(r.code, r.stderr).toBe(0);
};

beforeAll(async () => {
  ep = await Endpoint.start();
  await ep.api.post('/packs', { files: await packFiles('expect') });
});
afterAll(async () => ep?.stop());

describe('expectations', () => {
  it('a task that keeps its promises passes; its outputs are typed by their schema', async () => {
    await create('healthy', 'health');
    expect((await ep.cli(['machines', 'wait', 'healthy', '--timeout', '30s'])).code).toBe(0);
    expect((await machine('healthy')).outputs).toMatchObject({ status: 'ok', port: 8080 });
  });

  it('"exits 0 but wrote garbage" is caught by its expectation, naming the rule and the value', async () => {
    await create('garbage', 'health', ['status_text=garbage']);
    const w = await ep.cli(['machines', 'wait', 'garbage', '--timeout', '30s']);
    expect(w.code).toBe(1);
    const m = await machine('garbage');
    expect(m.state).toBe('stopped');
    expect(m.reason).toBe(`task 'health' exited 0 but expectation 'status equals "ok"' failed (got "garbage")`);
    // the garbage is really there, and nothing was promoted to the machine's params
    expect(readFileSync(join(ep.data, 'machines', m.id, 'root', 'status'), 'utf8').trim()).toBe('garbage');
    expect(m.outputs.status).toBeUndefined();
  });

  it('a task that does not set a promised output has failed', async () => {
    await create('forgets', 'forget');
    expect((await ep.cli(['machines', 'wait', 'forgets', '--timeout', '30s'])).code).toBe(1);
    expect((await machine('forgets')).reason).toBe("task 'forgetful' exited 0 but it did not set its promised output 'result' (takt-set result VALUE)");
  });
});

describe('stages: preconditions and approvals', () => {
  it('waits for approval, then runs the stage; the decision is recorded with who and when', async () => {
    await create('rel-1', 'release');
    const w = await ep.cli(['machines', 'wait', 'rel-1', '--until', 'awaiting-approval', '--timeout', '30s']);
    expect(w.code, w.stderr).toBe(0);
    const waiting = await machine('rel-1');
    expect(waiting.reason).toBe("stage 'release' needs approval by operator: takt approvals approve rel-1");
    expect(existsSync(join(ep.data, 'machines', waiting.id, 'root', 'deployed'))).toBe(false);
    const list = await ep.cli(['approvals', 'list', '-o', 'json']);
    expect((JSON.parse(list.stdout) as Machine[]).map((m) => m.name)).toEqual(['rel-1']);

    expect((await ep.cli(['approvals', 'approve', 'rel-1', '--comment', 'change window open'])).code).toBe(0);
    expect((await ep.cli(['machines', 'wait', 'rel-1', '--timeout', '30s'])).code).toBe(0);
    expect(existsSync(join(ep.data, 'machines', waiting.id, 'root', 'deployed'))).toBe(true);
    const rec = (await ep.api.get<{ items: Change[] }>('/changes', { object: `approvals/${waiting.id}` })).items[0]!;
    expect(rec).toMatchObject({ author: 'admin', after: { stage: 'release', decision: 'approved', comment: 'change window open' } });
    // a restart asks again
    await ep.cli(['machines', 'restart', 'rel-1']);
    expect((await ep.cli(['machines', 'wait', 'rel-1', '--until', 'awaiting-approval', '--timeout', '30s'])).code).toBe(0);
  });

  it('reject stops the machine with who and why', async () => {
    await create('rel-2', 'release');
    expect((await ep.cli(['machines', 'wait', 'rel-2', '--until', 'awaiting-approval', '--timeout', '30s'])).code).toBe(0);
    expect((await ep.cli(['approvals', 'reject', 'rel-2', '--reason', 'freeze until Monday'])).code).toBe(0);
    const m = await machine('rel-2');
    expect(m).toMatchObject({ state: 'stopped', reason: "stage 'release' rejected by admin: freeze until Monday" });
    expect((await ep.cli(['approvals', 'approve', 'rel-2'])).stderr).toMatch(/only a machine awaiting approval can be approved/);
  });

  it('a stage whose precondition fails does not start; the reason names the rule', async () => {
    await create('rel-3', 'release', ['mode=unsafe']);
    expect((await ep.cli(['machines', 'wait', 'rel-3', '--until', 'stopped', '--timeout', '30s'])).code).toBe(0);
    const m = await machine('rel-3');
    expect(m.reason).toBe(`stage 'release' precondition: expectation 'mode equals "safe"' failed (got "unsafe")`);
    expect(existsSync(join(ep.data, 'machines', m.id, 'root', 'deployed'))).toBe(false);
    // fixed and resumed, it goes on to the approval
    await ep.cli(['machines', 'update', 'rel-3', '--param', 'mode=safe']);
    await ep.cli(['machines', 'resume', 'rel-3']);
    expect((await ep.cli(['machines', 'wait', 'rel-3', '--until', 'awaiting-approval', '--timeout', '30s'])).code).toBe(0);
  });
});
