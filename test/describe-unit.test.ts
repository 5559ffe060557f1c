/** The pure decisions behind `machines describe` and machine assignment: what a machine waits for; environments and declared params. */
import { describe, expect, it } from 'vitest';
import { waitingFor, type WaitingInput } from '../src/engine/describe.js';
import { assertDeclared, assertEnvironment, assertWorkOrderDeclared } from '../src/engine/declared.js';
import { emptyContentSet } from '../src/model/content.js';
import { TaktError } from '../src/model/errors.js';

const agent = (connected: boolean, lastSeenAt: string | null = null) => ({ connected, lastSeenAt, version: null, address: null, via: null, since: '2026-01-01T00:00:00Z' });
const base: WaitingInput = {
  machine: { name: 'm1', state: 'running', power: 'on', reason: null, pipeline: 'demo', broker: 'local', agent: agent(true) },
  stage: 'prepare',
  task: 'make-dirs',
  approvalRole: null,
  job: null,
  openWorkOrders: 0,
  rollout: null,
};
const job = { id: 'j-1', task: 'make-dirs', createdAt: '2026-01-01T10:00:00Z', leaseExpiresAt: '2026-01-01T10:00:30Z' };
const rollout = (state: 'running' | 'paused' | 'awaiting-approval', item: 'pending' | 'waiting' | 'running' = 'pending') => ({ rollout: { id: 'r-1', state, wave: 0, reason: null }, item: { wave: 1, state: item } });

describe('waitingFor', () => {
  const cases: Array<[string, Partial<WaitingInput> & { m?: Partial<WaitingInput['machine']> }, string, RegExp]> = [
    ['a running job: its lease', { job }, 'job', /^job j-1 \(make-dirs\) running since 2026-01-01T10:00:00Z, lease until 2026-01-01T10:00:30Z$/],
    ['a running job wins over a missing agent', { job, m: { agent: agent(false) } }, 'job', /^job j-1/],
    ['powered off, even with a job', { job, m: { power: 'off' } }, 'power', /takt machines power m1 on/],
    ['an approval: which stage, who', { m: { state: 'awaiting-approval' }, stage: 'verify', approvalRole: 'operator' }, 'approval', /^an approval of stage verify by operator \(takt approvals approve m1\)$/],
    ['no agent connected, never seen', { m: { agent: agent(false) } }, 'agent', /^an agent: none connected \(never connected\)$/],
    ['no agent connected, seen before', { m: { agent: agent(false, '2026-01-01T09:00:00Z') } }, 'agent', /last seen 2026-01-01T09:00:00Z/],
    ['agentless over SSH', { m: { broker: 'ssh', agent: agent(false) } }, 'agent', /^the endpoint to reach the host over SSH/],
    ['connected: the agent claims the next task', {}, 'agent', /^its agent to claim task prepare\/make-dirs \(connected\)$/],
    ['a done machine with a queued work order and no agent', { m: { state: 'done', agent: agent(false) }, openWorkOrders: 1 }, 'agent', /none connected/],
    ['pending in a running rollout', { m: { state: 'done' }, rollout: rollout('running') }, 'rollout', /^rollout r-1: its wave 1 \(the rollout is on wave 0\)$/],
    ['pending in a paused rollout', { m: { state: 'done' }, rollout: rollout('paused') }, 'rollout', /resumed: it is paused/],
    ['pending in a rollout awaiting approval', { m: { state: 'done' }, rollout: rollout('awaiting-approval') }, 'rollout', /takt rollouts approve r-1/],
    ['held by a running rollout between two jobs (--busy wait)', { rollout: rollout('running', 'waiting') }, 'rollout', /^rollout r-1 to reassign it: the rollout holds it \(--busy wait\), so its next task does not start$/],
    ['waited for by a rollout while its job runs: the job', { job, rollout: rollout('running', 'waiting') }, 'job', /^job j-1/],
    ['waited for while paused: an operator (the rollout holds nothing)', { m: { state: 'paused', reason: 'paused by admin' }, rollout: rollout('running', 'waiting') }, 'operator', /takt machines resume m1/],
    ['waited for by a paused rollout: not held', { rollout: rollout('paused', 'waiting') }, 'agent', /claim/],
    ['running in a rollout: not waiting on the rollout', { rollout: rollout('running', 'running') }, 'agent', /claim/],
    ['stopped: an operator', { m: { state: 'stopped', reason: 'verify-motd failed' } }, 'operator', /resume m1 — verify-motd failed$/],
    // The same verdict as `machines resume` and `plan`: never "resume" when a resume would be refused.
    [
      'stopped, and a resume would be refused: what to do instead',
      { m: { state: 'stopped', reason: 'verify-motd failed' }, resumeRefused: { message: "task 'verify-motd' is gone; run `takt machines restart m1` …", remedies: [] } },
      'operator',
      /^an operator: stopped \(verify-motd failed\), and resume would be refused: task 'verify-motd' is gone; run `takt machines restart m1`/,
    ],
    ['paused while its job runs: the job finishes first', { job, m: { state: 'paused', reason: 'paused by admin' } }, 'job', /^pausing: the current job finishes first, then it holds — job j-1 \(make-dirs\)/],
    ['paused between jobs: resume goes on with its task', { m: { state: 'paused', reason: 'paused by admin' } }, 'operator', /^an operator: it holds where it stands; takt machines resume m1 goes on with task prepare\/make-dirs — paused by admin$/],
    ['paused, and a resume would be refused', { m: { state: 'paused' }, resumeRefused: { message: 'x; run `takt machines restart m1`', remedies: [] } }, 'operator', /^an operator: paused, and resume would be refused: x/],
    ['done: nothing', { m: { state: 'done' } }, 'nothing', /^nothing: pipeline demo is done$/],
    ['idle without a pipeline', { m: { state: 'idle', pipeline: null }, stage: null, task: null }, 'nothing', /no pipeline assigned/],
  ];
  it.each(cases)('%s', (_name, over, kind, text) => {
    const { m, ...rest } = over;
    const w = waitingFor({ ...base, ...rest, machine: { ...base.machine, ...m } });
    expect(w.for).toBe(kind);
    expect(w.text).toMatch(text);
  });
});

function content() {
  const c = emptyContentSet();
  c.objects.pipelines.set('demo', { def: { name: 'demo', stages: ['s'], environments: ['local', 'netns'] }, layer: 'demo' });
  c.objects.pipelines.set('any', { def: { name: 'any', stages: ['s'] }, layer: 'demo' });
  c.objects.params.set('fail_verify', { def: { name: 'fail_verify' }, layer: 'demo' } as never);
  c.objects.tasks.set('t', { def: { name: 't', script: 'true', params: { required: ['greeting'] }, outputs: { build_id: {} } }, layer: 'demo' });
  return c;
}

const refusal = (f: () => void): TaktError | undefined => {
  try {
    f();
    return undefined;
  } catch (err) {
    return err as TaktError;
  }
};

describe('assertEnvironment', () => {
  it.each([
    ['a declared environment', 'local', 'demo', undefined],
    ['another declared one', 'netns', 'demo', undefined],
    ['no pipeline', 'moon', null, undefined],
    ['a pipeline without environments accepts any', 'moon', 'any', undefined],
    ['an undeclared environment is refused with the list', 'remote', 'demo', "machine 'm1' is in environment 'remote', which pipeline 'demo' does not exercise; it runs in: local, netns."],
  ] as const)('%s', (_n, env, pipeline, message) => {
    const err = refusal(() => assertEnvironment(content(), 'm1', env, pipeline));
    if (message === undefined) expect(err).toBeUndefined();
    else {
      expect(err?.message.startsWith(message)).toBe(true);
      expect(err?.path).toBe('/environment');
    }
  });
});

describe('assertDeclared', () => {
  it.each([
    ['a param definition', { fail_verify: true }, undefined],
    ["a task's required param", { greeting: 'hi' }, undefined],
    ["a task's output", { build_id: '7' }, undefined],
    ['removing an undeclared param is allowed', { fail_verfy: null }, undefined],
    ['a typo, with a suggestion', { fail_verfy: true }, "param 'fail_verfy' is not declared by any param definition or task (did you mean 'fail_verify'?)"],
    ['a name far from any, without one', { zzzzzzzz: 1 }, "param 'zzzzzzzz' is not declared by any param definition or task;"],
  ] as const)('%s', (_n, params, message) => {
    const err = refusal(() => assertDeclared(content(), params));
    if (message === undefined) expect(err).toBeUndefined();
    else expect(err?.message.startsWith(message)).toBe(true);
  });
});

describe('assertWorkOrderDeclared: a work order gives params only to its blueprint\'s tasks', () => {
  const c = () => {
    const x = content();
    x.objects.blueprints.set('bp', { def: { name: 'bp', tasks: ['t'], params: { region: 'eu' } }, layer: 'demo' });
    x.objects.blueprints.set('none', { def: { name: 'none', tasks: ['u'] }, layer: 'demo' });
    x.objects.tasks.set('u', { def: { name: 'u', script: 'true' }, layer: 'demo' });
    return x;
  };
  it.each([
    ["a task's required param", 'bp', { greeting: 'hi' }, undefined],
    ["a task's output", 'bp', { build_id: '7' }, undefined],
    ["the blueprint's own param", 'bp', { region: 'us' }, undefined],
    ['a typo, with a suggestion', 'bp', { greting: 'hi' }, "param 'greting' is not declared by any task of blueprint 'bp' (did you mean 'greeting'?)"],
    ['declared by a param definition, but read by no task of it', 'bp', { fail_verify: true }, "param 'fail_verify' is not declared by any task of blueprint 'bp'; they declare: build_id, greeting, region;"],
    ['a blueprint whose tasks declare none', 'none', { verbose: true }, "param 'verbose' is not declared by any task of blueprint 'none'; they declare none;"],
  ] as const)('%s', (_n, bp, params, message) => {
    const err = refusal(() => assertWorkOrderDeclared(c(), bp, params, '/0'));
    if (message === undefined) expect(err).toBeUndefined();
    else {
      expect(err?.message.startsWith(message), err?.message).toBe(true);
      expect(err?.path).toBe(`/0/params/${Object.keys(params)[0]}`);
    }
  });
});

describe('content diff: one changed field', () => {
  it.each([
    ['scalars as JSON', 1, 2, ['- 1', '+ 2']],
    ['one-line strings as JSON', 'a', 'b', ['- "a"', '+ "b"']],
    ['a script as a unified line diff', 'echo a\necho b\necho c\n', 'echo a\necho B\necho c\n', ['@@ -1,3 +1,3 @@', ' echo a', '-echo b', '+echo B', ' echo c']],
    ['a script that was added', undefined, 'one\ntwo\n', ['@@ -0,0 +1,2 @@', '+one', '+two']],
  ] as const)('%s', async (_n, before, after, lines) => {
    const { fieldDiff } = await import('../src/cli/content.js');
    expect(fieldDiff(before, after)).toEqual(lines);
  });
});
