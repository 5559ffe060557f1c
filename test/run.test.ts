/**
 * `takt run`: an ad-hoc command on many machines as recorded work orders, through real local agents and
 * the real CLI — each machine's output and exit code as it finishes, a summary, exit 1 when any failed.
 */
import { unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Change, Job, Machine, WorkOrder } from '../src/model/machine.js';
import { adhocCommand, MAX_COMMAND_BYTES } from '../src/engine/adhoc.js';
import { TaktError } from '../src/model/errors.js';
import { Endpoint, until } from './helpers/endpoint.js';

let ep: Endpoint;

const machine = (name: string) => ep.api.get<Machine>(`/machines/${name}`);
const rootFile = async (name: string, file: string) => join(ep.data, 'machines', (await machine(name)).id, 'root', file);
const workOrders = async (name: string) => (await ep.api.get<{ items: WorkOrder[] }>('/workorders', { machine: name, limit: 100 })).items;

// Fails (exit 3, on stderr) where the test left a `fail` file; else says which machine it ran on.
const COMMAND = 'if [ -e "$TAKT_ROOT/fail" ]; then echo "boom on $TAKT_MACHINE_ID" >&2; exit 3; fi; echo "hello from $TAKT_MACHINE_ID"';

beforeAll(async () => {
  ep = await Endpoint.start();
  const made = await ep.cli(['machines', 'create', 'web', '--broker', 'local', '--count', '3']);
  expect(made.code, made.stderr).toBe(0);
  writeFileSync(await rootFile('web-2', 'fail'), '');
});
afterAll(async () => ep?.stop());

describe('takt run', () => {
  it('runs on 3 machines, one failing: each output and rc, a summary, exit 1, and the work orders recorded', async () => {
    const ids = Object.fromEntries(await Promise.all(['web-1', 'web-2', 'web-3'].map(async (n) => [n, (await machine(n)).id] as const)));
    const r = await ep.cli(['run', '--machine', 'web-1', '--machine', 'web-2', '--machine', 'web-3', '--', COMMAND]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stdout).toContain(`web-1 | rc=0 >>\nhello from ${ids['web-1']}\n`);
    expect(r.stdout).toContain(`web-3 | rc=0 >>\nhello from ${ids['web-3']}\n`);
    expect(r.stdout).toContain(`web-2 | FAILED | rc=3 >>\nboom on ${ids['web-2']}\n`);
    expect(r.stdout.trim().split('\n').at(-1)).toBe('3 machine(s): 2 succeeded, 1 failed (web-2: rc=3)');
    expect(r.stderr).toMatch(/queued on 3 machine\(s\): web-1 \(w-\S+\), web-2 \(w-\S+\), web-3 \(w-\S+\)/);

    // Recorded: a work order per machine with the command, in the list and in history with its author.
    for (const [name, state] of [['web-1', 'succeeded'], ['web-2', 'failed'], ['web-3', 'succeeded']] as const) {
      const [wo] = await workOrders(name);
      expect(wo).toMatchObject({ blueprint: '(command)', command: { script: COMMAND, timeoutMs: 600_000 }, state });
      const changes = (await ep.api.get<{ items: Change[] }>('/changes', { object: `workorders/${wo!.id}` })).items;
      expect(changes).toHaveLength(1);
      expect(changes[0]).toMatchObject({ author: 'admin', action: 'create', after: { command: { script: COMMAND } } });
      const jobs = (await ep.api.get<{ items: Job[] }>('/jobs', { workorder: wo!.id })).items;
      expect(jobs).toHaveLength(1);
      // The job ran the command as typed, as a work order's job.
      expect(await ep.api.get<Job>(`/jobs/${jobs[0]!.id}`)).toMatchObject({ kind: 'workorder', task: '(command)', script: COMMAND, exitCode: state === 'failed' ? 3 : 0 });
    }
    const listed = await ep.cli(['workorders', 'list', '--machine', 'web-2']);
    expect(listed.stdout).toContain('$ if [ -e');
  });

  it('-o json gives one object per machine', async () => {
    const r = await ep.cli(['run', '--machine', 'web-1', '--machine', 'web-2', '-o', 'json', '--', COMMAND]);
    expect(r.code).toBe(1);
    const out = (JSON.parse(r.stdout) as Array<{ machine: string; state: string; rc: number | null; output: string; job: string }>).sort((a, b) => a.machine.localeCompare(b.machine));
    expect(out.map(({ machine, state, rc }) => ({ machine, state, rc }))).toEqual([
      { machine: 'web-1', state: 'succeeded', rc: 0 },
      { machine: 'web-2', state: 'failed', rc: 3 },
    ]);
    expect(out[0]!.output).toMatch(/^hello from m-/);
    expect(out[1]!.job).toMatch(/^j-/);
    // how its job ended, for a failure without an exit code (lost, cancelled): here it exited 3
    expect((out[1] as unknown as { jobState: string }).jobState).toBe('failed');
  });

  it('queues behind a busy machine and says so; --timeout ends a command that runs too long', async () => {
    const gate = 'until [ -e "$TAKT_ROOT/go" ]; do sleep 0.05; done; echo released';
    const blocker = ep.cli(['run', '--machine', 'web-3', '--', gate]);
    const running = await until(async () => (await workOrders('web-3')).find((w) => w.command?.script === gate && w.state === 'running'), 60_000, 'the gate command to run');
    const second = ep.cli(['run', '--machine', 'web-3', '--', 'echo second']);
    // Queued behind the gate (not started, not cancelled); then the gate opens and both finish.
    await until(async () => (await workOrders('web-3')).find((w) => w.command?.script === 'echo second' && w.state === 'queued'), 60_000, 'the second command to queue');
    writeFileSync(await rootFile('web-3', 'go'), '');
    const [b, s] = await Promise.all([blocker, second]);
    expect(b.code, b.stderr).toBe(0);
    expect(b.stdout).toContain('web-3 | rc=0 >>\nreleased\n');
    expect(s.code, s.stderr).toBe(0);
    expect(s.stderr).toMatch(/web-3: busy with job j-\S+ \(\(command\)\); the command queues behind it/);
    expect(s.stdout).toContain('web-3 | rc=0 >>\nsecond\n');
    expect((await ep.api.get<WorkOrder>(`/workorders/${running.id}`)).state).toBe('succeeded');

    const slow = await ep.cli(['run', '--machine', 'web-1', '--timeout', '1s', '--', 'echo started; sleep 30']);
    expect(slow.code).toBe(1);
    expect(slow.stdout).toMatch(/web-1 \| FAILED \| (failed|rc=\S+) >>\nstarted\n/);
    expect(slow.stdout).toMatch(/timed out|timeout/i);
  }, 150_000);

  it('-l selects machines by label', async () => {
    await ep.api.patch('/machines/web-1', { labels: { role: 'web' } });
    await ep.api.patch('/machines/web-3', { labels: { role: 'web', env: 'prod' } });
    const r = await ep.cli(['run', '-l', 'role=web', '--', 'echo hi']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('web-1 | rc=0 >>\nhi\n');
    expect(r.stdout).toContain('web-3 | rc=0 >>\nhi\n');
    expect(r.stdout).not.toContain('web-2');
    expect(r.stdout.trim().split('\n').at(-1)).toBe('2 machine(s): 2 succeeded');
    const notProd = await ep.cli(['run', '-l', 'role=web,env!=prod', '-o', 'json', '--', 'echo hi']);
    expect((JSON.parse(notProd.stdout) as Array<{ machine: string }>).map((x) => x.machine)).toEqual(['web-1']);
    const nothing = await ep.cli(['run', '-l', 'role=nothing', '--', 'echo hi']);
    expect(nothing.code).toBe(1);
    expect(nothing.stderr).toMatch(/the label selector 'role=nothing' matches no machine/);
  });

  it('refuses an empty selection, an empty or oversized command, and unknown machines — queuing nothing', async () => {
    const before = (await ep.api.get<{ items: WorkOrder[] }>('/workorders', { limit: 1000 })).items.length;
    const none = await ep.cli(['run', '--', 'uptime']);
    expect(none.code).toBe(2); // bad usage
    expect(none.stderr).toMatch(/no machines: give -l <selector> or --machine M/);
    expect((await ep.cli(['run', '-l', ' ', '--', 'uptime'])).stderr).toMatch(/the selector is empty/);
    expect((await ep.call('POST', '/run', { selector: '', command: 'uptime' })).body.error.message).toMatch(/an empty selection is refused/);
    const blank = await ep.cli(['run', '--machine', 'web-1', '--', '  ']);
    expect(blank.stderr).toMatch(/the command is empty/);
    const huge = await ep.call('POST', '/run', { machines: ['web-1'], command: 'x'.repeat(16 * 1024 + 1) });
    expect(huge.status).toBe(422);
    const wide = await ep.call('POST', '/run', { machines: ['web-1'], command: 'é'.repeat(9000) });
    expect(wide.status).toBe(413);
    expect(wide.body.error.message).toMatch(/18000 bytes; at most 16384/);
    const unknown = await ep.cli(['run', '--machine', 'web-1', '--machine', 'nope', '--', 'uptime']);
    expect(unknown.stderr).toMatch(/machine 'nope' not found/);
    expect((await ep.api.get<{ items: WorkOrder[] }>('/workorders', { limit: 1000 })).items.length).toBe(before);
  });
});

describe('an ad-hoc command work order, resumed', () => {
  it('re-runs its command (it is not a blueprint of any content), and the work order records both runs', async () => {
    const failed = await ep.cli(['run', '--machine', 'web-2', '-o', 'json', '--', COMMAND]);
    expect(failed.code).toBe(1);
    const wo = (await workOrders('web-2')).find((w) => w.command?.script === COMMAND && w.state === 'failed');
    expect(wo).toBeDefined();
    unlinkSync(await rootFile('web-2', 'fail'));
    const r = await ep.cli(['workorders', 'resume', wo!.id]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/blueprint/);
    const done = await until(async () => {
      const w = await ep.api.get<WorkOrder>(`/workorders/${wo!.id}`);
      return w.state === 'succeeded' || w.state === 'failed' ? w : undefined;
    }, 60_000, 'the resumed command to end');
    expect(done.state, done.reason ?? '').toBe('succeeded');
    const jobs = (await ep.api.get<{ items: Job[] }>('/jobs', { workorder: wo!.id, order: 'asc', limit: 10 })).items;
    expect(jobs.map((j) => `${j.task}:${j.state}`)).toEqual(['(command):failed', '(command):succeeded']);
    // A succeeded one is refused, in words that read
    const again = await ep.cli(['workorders', 'resume', wo!.id]);
    expect(again.stderr).toMatch(/has succeeded: only a failed or cancelled work order can be resumed/);
  });
});

describe('an ad-hoc command, checked', () => {
  it.each([
    [{ script: 'uptime' }, { script: 'uptime', timeoutMs: 600_000 }],
    [{ script: 'uptime', timeout: '90s' }, { script: 'uptime', timeoutMs: 90_000 }],
    [{ script: 'uptime', timeout: 5 }, { script: 'uptime', timeoutMs: 5_000 }],
    [{ script: 'x'.repeat(MAX_COMMAND_BYTES) }, { script: 'x'.repeat(MAX_COMMAND_BYTES), timeoutMs: 600_000 }],
  ])('%o is %o', (input, want) => expect(adhocCommand(input)).toEqual(want));

  it.each([
    [{ script: '' }, 'invalid', /the command is empty/],
    [{ script: ' \n ' }, 'invalid', /the command is empty/],
    [{ script: 'x'.repeat(MAX_COMMAND_BYTES + 1) }, 'too_large', /16385 bytes; at most 16384/],
    [{ script: 'a\0b' }, 'invalid', /NUL/],
    [{ script: 'uptime', timeout: '0s' }, 'bad_request', /timeout/],
    [{ script: 'uptime', timeout: '30d' }, 'bad_request', /timeout/],
    [{ script: 'uptime', timeout: 'soon' }, 'bad_request', /timeout/],
  ])('%o is refused (%s)', (input, code, message) => {
    let err: unknown;
    try {
      adhocCommand(input);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(TaktError);
    expect((err as TaktError).code).toBe(code);
    expect((err as TaktError).message).toMatch(message);
  });
});

describe("the endpoint's progress log", () => {
  it('names the machine of a command run after a restart (no machine event taught it the name)', async () => {
    await ep.crash();
    ep.output = '';
    await ep.boot();
    const r = await ep.cli(['run', '--machine', 'web-1', '--', 'echo logged']);
    expect(r.code, r.stderr).toBe(0);
    const id = (await machine('web-1')).id;
    await until(async () => /web-1: \(command\) succeeded/.test(ep.output) || undefined, 30_000, 'the progress line of web-1');
    expect(ep.output).not.toContain(`${id}: (command)`);
  }, 120_000);
});
