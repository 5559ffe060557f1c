/**
 * Approvals that enforce roles and the two-person rule (issue #16), against a real endpoint with local
 * machines: a stage's `approval.role` decides who may approve or reject (403 naming the role); with
 * `twoPerson`, whoever started the run — set the machine's pipeline, or started the rollout that did — may
 * not approve it, someone else with the role may; a rollout's own `approval` gates its waves the same way.
 * The rules themselves (model/permissions.ts approvalRefusal) and the content lint of the field.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkRolloutApprover } from '../src/engine/approvals.js';
import { approvalRefusal, grantOf } from '../src/model/permissions.js';
import type { Rollout } from '../src/model/rollout.js';
import { Endpoint, runCli, until } from './helpers/endpoint.js';

const PW = 'correct horse battery';

const GATE_PACK = {
  'pack.yaml': 'name: gate\nversion: 1.0.0\n',
  'tasks/noop.yaml': 'name: noop\nscript: |\n  true\n',
  'stages/admin-only.yaml': 'name: admin-only\ntasks: [noop]\napproval: { role: admin }\n',
  'stages/twice.yaml': 'name: twice\ntasks: [noop]\napproval: { role: operator, twoPerson: true }\n',
  'pipelines/admin-only.yaml': 'name: admin-only\nstages: [admin-only]\n',
  'pipelines/twice.yaml': 'name: twice\nstages: [twice]\n',
};

let ep: Endpoint;
const tokens: Record<string, string> = {};

const state = async (name: string) => (await ep.call('GET', `/machines/${name}`)).body.state as string;
const waitState = (name: string, want: string) => until(async () => (await state(name)) === want, 120_000, `${name} ${want}`);
const make = async (name: string, pipeline: string | undefined, token: string) => {
  const r = await ep.call('POST', '/machines', { name, broker: 'local', ...(pipeline ? { pipeline } : {}) }, token);
  expect(r.status, JSON.stringify(r.body)).toBe(201);
};

beforeAll(async () => {
  ep = await Endpoint.start();
  expect((await ep.call('POST', '/packs', { files: GATE_PACK })).status).toBe(201);
  for (const [name, roles] of [['alice', ['admin']], ['otto', ['operator']], ['oscar', ['operator']], ['vera', ['viewer']]] as const) {
    expect((await ep.call('POST', '/users', { name, password: PW, roles })).status).toBe(201);
    const r = await ep.call('POST', '/login', { user: name, password: PW }, null);
    expect(r.status).toBe(201);
    tokens[name] = r.body.token;
  }
}, 120_000);

afterAll(async () => {
  await ep?.stop();
});

describe('a stage approval enforces its role', () => {
  it('only admins approve a stage that needs admin: an operator is refused naming the role, for reject too', async () => {
    await make('gated-1', 'admin-only', tokens.alice!);
    await waitState('gated-1', 'awaiting-approval');
    const otto = await ep.call('POST', '/machines/gated-1/approve', {}, tokens.otto);
    expect(otto.status).toBe(403);
    expect(otto.body.error.message).toBe("machine 'gated-1' at stage 'admin-only': this approval needs role admin, and user:otto holds operator");
    const reject = await ep.call('POST', '/machines/gated-1/reject', { reason: 'no' }, tokens.otto);
    expect(reject.status).toBe(403);
    // A viewer never gets as far as the stage: the route needs machines:approve.
    expect((await ep.call('POST', '/machines/gated-1/approve', {}, tokens.vera)).status).toBe(403);
    expect(await state('gated-1')).toBe('awaiting-approval');
    const alice = await ep.call('POST', '/machines/gated-1/approve', { comment: 'ok' }, tokens.alice);
    expect(alice.status, JSON.stringify(alice.body)).toBe(200);
    await waitState('gated-1', 'done');
  }, 150_000);
});

describe('the two-person rule', () => {
  it('whoever set the pipeline cannot approve the run; another operator can', async () => {
    await make('twice-1', 'twice', tokens.alice!);
    await waitState('twice-1', 'awaiting-approval');
    const self = await ep.call('POST', '/machines/twice-1/approve', {}, tokens.alice);
    expect(self.status).toBe(403);
    expect(self.body.error.message).toBe("machine 'twice-1' at stage 'twice': the stage has the two-person rule and user:alice started this run (by setting its pipeline); another holder of role operator must approve it");
    const otto = await ep.call('POST', '/machines/twice-1/approve', {}, tokens.otto);
    expect(otto.status, JSON.stringify(otto.body)).toBe(200);
    await waitState('twice-1', 'done');

    // A restart starts the run again: whoever restarted it is its starter too (from the audit log).
    expect((await ep.call('POST', '/machines/twice-1/restart', {}, tokens.otto)).status).toBe(200);
    await waitState('twice-1', 'awaiting-approval');
    const again = await ep.call('POST', '/machines/twice-1/approve', {}, tokens.otto);
    expect(again.status).toBe(403);
    expect(again.body.error.message).toMatch(/two-person rule and user:otto started this run \(by restarting it\)/);
    expect((await ep.call('POST', '/machines/twice-1/approve', {}, tokens.alice)).status).toBe(403);
    expect((await ep.call('POST', '/machines/twice-1/approve', {}, tokens.oscar)).status).toBe(200);
    await waitState('twice-1', 'done');
  }, 150_000);

  it('a rollout started by otto: otto cannot approve its machines nor its next wave; oscar can', async () => {
    await make('roll-1', undefined, tokens.alice!);
    await make('roll-2', undefined, tokens.alice!);
    const r = await ep.call(
      'POST',
      '/rollouts',
      { pipeline: 'twice', select: { name: 'roll-' }, canary: 1, batch: 1, approveBetweenWaves: true, approval: { role: 'operator', twoPerson: true } },
      tokens.otto,
    );
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const id = r.body.id as string;
    const first = r.body.items.find((i: { wave: number }) => i.wave === 0).machineName as string;
    const second = first === 'roll-1' ? 'roll-2' : 'roll-1';
    await waitState(first, 'awaiting-approval');

    const self = await ep.call('POST', `/machines/${first}/approve`, {}, tokens.otto);
    expect(self.status).toBe(403);
    expect(self.body.error.message).toBe(`machine '${first}' at stage 'twice': the stage has the two-person rule and user:otto started this run (through rollout ${id}); another holder of role operator must approve it`);
    // The CLI says why, and fails.
    const cli = await runCli(['approvals', 'approve', first], { TAKT_ENDPOINT: ep.url, TAKT_TOKEN: tokens.otto! });
    expect(cli.code).not.toBe(0);
    expect(cli.stderr).toMatch(/two-person rule and user:otto started this run/);
    expect((await ep.call('POST', `/machines/${first}/approve`, {}, tokens.oscar)).status).toBe(200);

    await until(async () => (await ep.call('GET', `/rollouts/${id}`)).body.state === 'awaiting-approval', 120_000, 'rollout awaiting approval');
    const wave = await ep.call('POST', `/rollouts/${id}/approve`, {}, tokens.otto);
    expect(wave.status).toBe(403);
    expect(wave.body.error.message).toBe(`rollout ${id} has the two-person rule and user:otto started it; another holder of role operator must approve its next wave`);
    expect((await ep.call('POST', `/rollouts/${id}/approve`, {}, tokens.vera)).status).toBe(403);
    const ok = await ep.call('POST', `/rollouts/${id}/approve`, {}, tokens.oscar);
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);

    await waitState(second, 'awaiting-approval');
    // The starter may turn their own run down: a rejection needs the role, not a second person.
    const rejected = await ep.call('POST', `/machines/${second}/reject`, { reason: 'not today' }, tokens.otto);
    expect(rejected.status, JSON.stringify(rejected.body)).toBe(200);
    expect(await state(second)).toBe('stopped');
    // The decisions are in the history with who made them.
    const changes = (await ep.call('GET', '/changes?limit=200')).body.items as Array<{ author: string; object: string; after: { decision?: string } }>;
    const decisions = changes.filter((c) => c.object.startsWith('approvals/')).map((c) => `${c.author} ${c.after.decision}`);
    expect(decisions).toEqual(expect.arrayContaining(['user:oscar approved', 'user:otto rejected']));
  }, 240_000);

  it('a rollout approval rule is checked when it is made', async () => {
    const bad = await ep.call('POST', '/rollouts', { pipeline: 'twice', select: { name: 'roll-' }, approval: { role: 'boss' } }, tokens.otto);
    expect(bad.status).toBe(422);
    expect(bad.body.error.message).toMatch(/approval\/role must be one of "viewer", "operator", "author", "admin"/);
    const cli = await ep.cli(['rollouts', 'create', '--pipeline', 'twice', '--select', 'name=roll-', '--two-person', '--no-wait']);
    expect(cli.code).not.toBe(0);
    expect(cli.stderr).toMatch(/--two-person needs --approver-role ROLE/);
  });
});

describe('content lint of the approval field', () => {
  it('an unknown role and a twoPerson that is not a boolean are refused at their place', async () => {
    const files = (stage: string) => ({ ...GATE_PACK, 'pack.yaml': 'name: gate2\nversion: 1.0.0\n', 'stages/admin-only.yaml': stage, 'stages/twice.yaml': 'name: twice2\ntasks: [noop]\n', 'pipelines/admin-only.yaml': 'name: a2\nstages: [admin-only2]\n', 'pipelines/twice.yaml': 'name: t2\nstages: [twice2]\n', 'tasks/noop.yaml': 'name: noop2\nscript: |\n  true\n' });
    const role = await ep.call('POST', '/packs', { files: files('name: admin-only2\ntasks: [noop2]\napproval: { role: operatr }\n') });
    expect(role.status).toBe(422);
    expect(JSON.stringify(role.body)).toMatch(/unknown role 'operatr': approvals are given by holders of a built-in role \(viewer, operator, author, admin\) or admins; did you mean 'operator'\?/);
    const two = await ep.call('POST', '/packs', { files: files('name: admin-only2\ntasks: [noop2]\napproval: { role: operator, twoPerson: "yes" }\n') });
    expect(two.status).toBe(422);
    expect(JSON.stringify(two.body)).toMatch(/twoPerson/);
  });
});

describe('rules (pure)', () => {
  const machine = { labels: { env: 'dev' }, pipeline: 'web' };
  it('holders of the role or admin; a scoped binding only on its machines and never fleet-wide', () => {
    expect(approvalRefusal({ author: 'user:o', grants: [grantOf({ role: 'operator' })] }, 'operator', machine)).toBeNull();
    expect(approvalRefusal({ author: 'user:a', grants: [grantOf({ role: 'admin' })] }, 'operator', machine)).toBeNull();
    expect(approvalRefusal({ author: 'admin', grants: 'all' }, 'admin', null)).toBeNull();
    expect(approvalRefusal({ author: 'user:v', grants: [grantOf({ role: 'viewer' })] }, 'operator', machine)).toBe('this approval needs role operator (or admin), and user:v holds viewer');
    const scoped = { author: 'user:s', grants: [grantOf({ role: 'operator', machines: 'env=dev' })] };
    expect(approvalRefusal(scoped, 'operator', machine)).toBeNull();
    expect(approvalRefusal(scoped, 'operator', { labels: { env: 'prod' }, pipeline: 'web' })).toBe('this approval needs role operator (or admin) on this machine, and user:s holds it only on machines matching env=dev');
    expect(approvalRefusal(scoped, 'operator', null)).toMatch(/on every machine, and user:s holds it only on machines matching env=dev/);
  });

  it("a rollout's rule: its role fleet-wide, and not its author with twoPerson", () => {
    const r = { id: 'r-1', author: 'user:otto', spec: { approval: { role: 'admin' } } } as unknown as Rollout;
    expect(() => checkRolloutApprover({ author: 'user:oscar', grants: [grantOf({ role: 'operator' })] }, r)).toThrow('rollout r-1: this approval needs role admin, and user:oscar holds operator');
    expect(() => checkRolloutApprover({ author: 'user:alice', grants: [grantOf({ role: 'admin' })] }, r)).not.toThrow();
    const two = { ...r, spec: { approval: { role: 'operator', twoPerson: true } } } as unknown as Rollout;
    expect(() => checkRolloutApprover({ author: 'user:otto', grants: [grantOf({ role: 'operator' })] }, two)).toThrow(/two-person rule and user:otto started it/);
  });
});
