/**
 * Power from a task without an endpoint: the `takt-power` helper's argument parsing (the real bash
 * helper, run with real bash), the agent reading its request back (as the script's own user and as
 * another user, the latter as root), and the engine's pure decisions (engine/taskpower.ts), table-driven.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installHelpers, TAKT_POWER } from '../src/agent/helpers.js';
import { agentPaths, jobPaths } from '../src/agent/paths.js';
import { parsePowerRequest, readPowerRequest } from '../src/agent/power.js';
import { runScript } from '../src/agent/runner.js';
import { prepareSandboxDirs } from '../src/agent/sandbox.js';
import { scriptEnv } from '../src/agent/runner.js';
import { powerOfProbe } from '../src/brokers/ssh/job.js';
import { bootstrapScript, parseProbe, probeScript, reportedScript, startScript } from '../src/brokers/ssh/remote.js';
import { decideTaskPower, describePowerRequest, endOfTaskPower, type TaskPowerPlan } from '../src/engine/taskpower.js';
import type { Machine } from '../src/model/machine.js';
import type { AgentAction, TaskPowerRequest } from '../src/model/protocol.js';

let dir: string;
let helper: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'takt-power-unit-'));
  helper = join(dir, 'takt-power');
  writeFileSync(helper, TAKT_POWER, { mode: 0o755 });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs the helper once per call list in a fresh control dir; the files it left and what the last call said. */
function helperRun(calls: string[][], env: Record<string, string | undefined> = {}) {
  const control = mkdtempSync(join(dir, 'control-'));
  let last = { status: -1, stdout: '', stderr: '' };
  for (const args of calls) {
    const r = spawnSync('bash', [helper, ...args], { env: { PATH: process.env.PATH, TAKT_CONTROL_DIR: control, ...env }, encoding: 'utf8' });
    last = { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  }
  const files = Object.fromEntries(readdirSync(control).map((f) => [f, readFileSync(join(control, f), 'utf8')]));
  return { ...last, files };
}

describe('takt-power (the bash helper)', () => {
  it.each<[string, string[][], Record<string, string>]>([
    ['next-boot pxe', [['next-boot', 'pxe']], { next_boot: 'pxe\n' }],
    ['next-boot disk --persistent', [['next-boot', 'disk', '--persistent']], { next_boot: 'disk persistent\n' }],
    ['--persistent before the device', [['next-boot', '--persistent', 'pxe']], { next_boot: 'pxe persistent\n' }],
    ['cycle', [['cycle']], { action: 'cycle\n' }],
    ['off', [['off']], { action: 'off\n' }],
    ['a next boot and an action', [['next-boot', 'pxe'], ['cycle']], { next_boot: 'pxe\n', action: 'cycle\n' }],
    ['a later action replaces an earlier one', [['cycle'], ['off']], { action: 'off\n' }],
    ['a later next boot replaces an earlier one', [['next-boot', 'pxe', '--persistent'], ['next-boot', 'disk']], { next_boot: 'disk\n' }],
  ])('%s', (_what, calls, files) => {
    const r = helperRun(calls);
    expect(r.status, r.stderr).toBe(0);
    expect(r.files).toEqual(files);
    expect(r.stderr).toMatch(/^takt-power: asked for .*; the endpoint does it when this job has succeeded$/m);
  });

  it('says when a call replaces an earlier, different request', () => {
    expect(helperRun([['cycle'], ['off']]).stderr).toContain("takt-power: replaces the earlier request 'cycle' with 'off'");
    expect(helperRun([['cycle'], ['cycle']]).stderr).not.toContain('replaces');
  });

  it.each<[string, string[], RegExp]>([
    ['nothing', [], /takt-power: say what to do/],
    ['an unknown request', ['reboot'], /unknown request 'reboot' \(next-boot, cycle or off\)/],
    ['next-boot without a device', ['next-boot'], /next-boot needs a device: pxe or disk/],
    ['next-boot with --persistent only', ['next-boot', '--persistent'], /next-boot needs a device/],
    ['an unknown device', ['next-boot', 'usb'], /next-boot takes pxe or disk, not 'usb'/],
    ['two devices', ['next-boot', 'pxe', 'disk'], /one device, got 'pxe' and 'disk'/],
    ['an unknown option', ['next-boot', 'pxe', '--once'], /no option '--once' \(only --persistent\)/],
    ['arguments to cycle', ['cycle', 'now'], /cycle takes no arguments \(got: now\)/],
    ['arguments to off', ['off', '--hard'], /off takes no arguments/],
  ])('refuses %s: exit 1, says why and how, writes nothing', (_what, args, message) => {
    const r = helperRun([args]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toContain('usage: takt-power next-boot pxe|disk [--persistent] | cycle | off');
    expect(r.files).toEqual({});
  });

  it('outside a job, says so', () => {
    const r = helperRun([['cycle']], { TAKT_CONTROL_DIR: undefined });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/TAKT_CONTROL_DIR is not set \(takt-power works inside a takt job\)/);
  });

  it('--help prints the usage on stdout and exits 0', () => {
    const r = helperRun([['--help']]);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^usage: takt-power next-boot pxe\|disk \[--persistent\]\n {7}takt-power cycle\n/);
    expect(r.stdout).toContain('Applied only when the job succeeds');
    expect(helperRun([['cycle', '-h']]).status).toBe(0);
  });
});

describe('the agent reads the request back', () => {
  it.each<[string, { next_boot?: string; action?: string }, TaskPowerRequest | undefined, RegExp | null]>([
    ['nothing', {}, undefined, null],
    ['a device', { next_boot: 'pxe\n' }, { nextBoot: 'pxe' }, null],
    ['a persistent device and an action', { next_boot: 'disk persistent\n', action: 'off\n' }, { nextBoot: 'disk', persistent: true, action: 'off' }, null],
    ['garbage in next_boot', { next_boot: 'usb\n', action: 'cycle\n' }, undefined, /next_boot request "usb\\n" is not 'pxe' or 'disk'.*no power request reported/],
    ['garbage in action', { action: 'reboot' }, undefined, /action request "reboot" is not 'cycle' or 'off'/],
  ])('%s', (_what, files, power, problem) => {
    const r = parsePowerRequest(files);
    expect(r.power).toEqual(power);
    if (problem) expect(r.problem).toMatch(problem);
    else expect(r.problem).toBeNull();
  });

  it('a missing control dir asks nothing; a file that is not small and regular is a problem', async () => {
    expect(await readPowerRequest(join(dir, 'nowhere'))).toEqual({ problem: null });
    const c = mkdtempSync(join(dir, 'odd-'));
    mkdirSync(join(c, 'action'));
    expect((await readPowerRequest(c)).problem).toMatch(/action request is not a small regular file/);
    rmSync(join(c, 'action'), { recursive: true });
    writeFileSync(join(c, 'next_boot'), 'pxe'.repeat(100));
    expect((await readPowerRequest(c)).problem).toMatch(/next_boot request is not a small regular file/);
  });

  it('runScript: the script gets TAKT_CONTROL_DIR and takt-power on its PATH; the request comes back with the result', async () => {
    const home = mkdtempSync(join(dir, 'agent-'));
    const binDir = join(home, 'bin');
    await installHelpers(binDir);
    const run = (id: string, script: string) => runScript({ id, script, params: {}, timeoutMs: 20_000 }, { paths: jobPaths(join(home, 'jobs'), id), binDir, machineId: 'm-1', root: home, killGraceMs: 300 }, () => {});
    const ok = await run('j-1', 'takt-power next-boot pxe && takt-power cycle\nexit 64');
    expect(ok).toMatchObject({ exitCode: 64, power: { nextBoot: 'pxe', action: 'cycle' } });
    expect(ok.error).toBeUndefined();
    expect((await run('j-2', 'echo nothing asked')).power).toBeUndefined();
    // Written around the helper: the job reports why, and no request.
    const odd = await run('j-3', 'echo reboot > "$TAKT_CONTROL_DIR/action"');
    expect(odd.power).toBeUndefined();
    expect(odd.error).toMatch(/takt-power's action request "reboot\\n" is not 'cycle' or 'off'/);
  });
});

const isRoot = process.getuid?.() === 0;
describe.skipIf(!isRoot)('the agent reads the request of a script run as another user', () => {
  it('copies it out without following links the script planted', async () => {
    const base = mkdtempSync(join(tmpdir(), 'takt-power-sandboxed-'));
    chmodSync(base, 0o711);
    mkdirSync(join(base, 'sandbox'), { mode: 0o755 });
    const paths = agentPaths(join(base, 'private'), join(base, 'sandbox'));
    mkdirSync(paths.home, { mode: 0o700 });
    const user = { uid: 1_999_100_007, gid: 1_999_100_007 };
    prepareSandboxDirs(paths, user);
    await installHelpers(paths.binDir);
    writeFileSync(join(paths.home, 'secret'), 'cycle\n', { mode: 0o600 });
    const run = (id: string, script: string) =>
      runScript({ id, script, params: {}, timeoutMs: 20_000 }, { paths: jobPaths(paths.jobsDir, id), binDir: paths.binDir, machineId: 'm-1', root: paths.scriptHome, killGraceMs: 300, user: { ...user, home: paths.scriptHome, tmp: paths.scriptTmp, scratch: paths.scratchDir } }, () => {});
    try {
      const asked = await run('s-1', 'takt-power next-boot disk --persistent; takt-power off');
      expect(asked.exitCode, asked.error).toBe(0);
      expect(asked.power).toEqual({ nextBoot: 'disk', persistent: true, action: 'off' });
      const linked = await run('s-2', `ln -s ${join(paths.home, 'secret')} "$TAKT_CONTROL_DIR/action"`);
      expect(linked.power).toBeUndefined();
      expect(readdirSync(paths.scratchDir)).toEqual([]);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});

describe('agentless (SSH) machines: the same helper, read back by the probe', () => {
  const bash = (script: string) => spawnSync('bash', ['-s'], { input: script, encoding: 'utf8' });
  it('bootstrap installs takt-power; the job gets TAKT_CONTROL_DIR; the probe sends the request; reported drops it', () => {
    const base = mkdtempSync(join(dir, "ssh base 'quoted'-"));
    expect(bash(bootstrapScript(base)).stdout).toContain(`base ${base}`);
    expect(readFileSync(join(base, 'bin', 'takt-power'), 'utf8')).toBe(TAKT_POWER);
    const probe = (id: string, script: string) => {
      const paths = jobPaths(join(base, 'jobs'), id);
      const env = scriptEnv({ id, script, params: {}, timeoutMs: 20_000 }, { paths, binDir: join(base, 'bin'), machineId: 'm-1', root: base, baseEnv: { PATH: '/usr/bin:/bin' } });
      const started = bash(startScript({ jobDir: paths.workDir, binDir: join(base, 'bin'), script, params: {}, env: env as Record<string, string>, timeoutMs: 20_000, graceMs: 300 }, id));
      expect(started.stdout).toMatch(/^takt-ssh: started\n/);
      let text = '';
      for (let i = 0; i < 200 && !/state finished/.test(text); i++) text = bash(`sleep 0.05\n${probeScript(paths.workDir, [], 1000, { stdout: 0, stderr: 0 })}`).stdout;
      return { p: parseProbe(text), workDir: paths.workDir };
    };
    const asked = probe('s-1', 'takt-power next-boot pxe --persistent && takt-power cycle\nexit 64');
    expect(asked.p).toMatchObject({ state: 'finished', exitCode: 64, power: { next_boot: 'pxe persistent\n', action: 'cycle\n' } });
    expect(powerOfProbe(asked.p)).toEqual({ power: { nextBoot: 'pxe', persistent: true, action: 'cycle' }, problem: null });
    bash(reportedScript(asked.workDir));
    expect(parseProbe(bash(probeScript(asked.workDir, [], 1000, { stdout: 0, stderr: 0 })).stdout).power).toEqual({});

    expect(powerOfProbe(probe('s-2', 'echo nothing asked').p)).toEqual({ problem: null });
    const big = probe('s-3', 'head -c 500 /dev/zero | tr "\\0" a > "$TAKT_CONTROL_DIR/action"');
    expect(big.p.power).toEqual({ action: null });
    expect(powerOfProbe(big.p).problem).toMatch(/action request is not a small regular file/);
  });

  it.each<[string, string, Record<string, string | null>]>([
    ['a request', `power action ${Buffer.from('off').toString('base64')}`, { action: 'off' }],
    ['a file too large', 'power next_boot -', { next_boot: null }],
    ['an unknown file name: ignored', `power ../../etc/passwd ${Buffer.from('x').toString('base64')}`, {}],
  ])('parseProbe reads %s', (_what, line, power) => {
    expect(parseProbe(['state finished', 'exit 0', line].join('\n')).power).toEqual(power);
  });
});

const machine = (o: Partial<Machine> = {}): Machine => ({ id: 'm1', name: 'rack-1', state: 'running', reason: null, power: 'on', powerConfig: { driver: 'ipmi', host: 'h', user: 'u', passwordParam: 'p' }, ...o }) as Machine;

describe('what a request does to the job\'s end (engine/taskpower.ts)', () => {
  const job = { id: 'j1', task: 'deploy', succeeded: true };
  it.each<[string, TaskPowerRequest, { succeeded?: boolean; before?: Partial<Machine>; settled?: Partial<Machine>; action?: AgentAction; port?: boolean }, { action: AgentAction; state: Machine['state']; power: Machine['power']; jobPower: RegExp; plan: boolean; reason?: RegExp }]>([
    ['exit 64 + cycle: the driver replaces the reboot; the machine is held', { action: 'cycle' }, { action: 'reboot' }, { action: 'continue', state: 'paused', power: 'on', jobPower: /^asked: cycle; waiting for the driver$/, plan: true, reason: /^waiting for the power driver: task 'deploy' \(job j1\) asked for cycle$/ }],
    ['exit 32 + cycle: a cycle, not an off', { action: 'cycle' }, { action: 'poweroff', settled: { power: 'off' } }, { action: 'continue', state: 'paused', power: 'on', jobPower: /waiting/, plan: true }],
    ['exit 32 + off: the driver replaces the OS power off', { action: 'off' }, { action: 'poweroff', settled: { power: 'off' } }, { action: 'continue', state: 'paused', power: 'on', jobPower: /asked: off/, plan: true }],
    ['exit 64 + next-boot: the agent reboots after the device is set', { nextBoot: 'pxe' }, { action: 'reboot' }, { action: 'reboot', state: 'paused', power: 'on', jobPower: /asked: next-boot pxe;/, plan: true }],
    ['the last task: a done machine is held, then given back', { action: 'cycle' }, { settled: { state: 'done' } }, { action: 'continue', state: 'paused', power: 'on', jobPower: /waiting/, plan: true }],
    ['paused by exit 16: stays paused with its reason', { action: 'cycle' }, { settled: { state: 'paused', reason: 'paused by task' } }, { action: 'continue', state: 'paused', power: 'on', jobPower: /waiting/, plan: true, reason: /^paused by task$/ }],
    ['a failed job: nothing asked', { nextBoot: 'pxe', action: 'cycle' }, { succeeded: false, settled: { state: 'stopped', reason: 'exit 3' }, action: 'continue' }, { action: 'continue', state: 'stopped', power: 'on', jobPower: /^not applied: the job did not succeed \(asked: next-boot pxe, cycle\)$/, plan: false, reason: /^exit 3$/ }],
    ['no power configuration: stopped, no reboot', { nextBoot: 'pxe' }, { before: { powerConfig: undefined }, action: 'reboot' }, { action: 'continue', state: 'stopped', power: 'on', jobPower: /^not applied: no power configuration \(asked: next-boot pxe\)$/, plan: false, reason: /rack-1 has no power configuration: give it one with takt machines update rack-1 --power-driver/ }],
    ['no power drivers in this endpoint', { action: 'off' }, { port: false }, { action: 'continue', state: 'stopped', power: 'on', jobPower: /no power drivers/, plan: false, reason: /this endpoint has no power drivers/ }],
  ])('%s', (_what, request, given, want) => {
    const before = machine(given.before);
    const settled = { machine: { ...before, ...given.settled }, action: given.action ?? 'continue' };
    const d = decideTaskPower(request, { ...job, succeeded: given.succeeded ?? true }, before, settled, given.port ?? true);
    expect({ action: d.action, state: d.machine.state, power: d.machine.power, plan: !!d.plan }).toEqual({ action: want.action, state: want.state, power: want.power, plan: want.plan });
    expect(d.jobPower).toMatch(want.jobPower);
    if (want.reason) expect(d.machine.reason).toMatch(want.reason);
  });

  const plan = (request: TaskPowerRequest, hold: string | null = 'held', restore: Machine['state'] | null = 'running'): TaskPowerPlan => ({ jobId: 'j1', machineId: 'm1', task: 'deploy', request, hold, restore });
  it.each<[string, TaskPowerPlan, Partial<Machine>, Parameters<typeof endOfTaskPower>[2], { jobPower: string | RegExp; state: Machine['state']; power: Machine['power']; reason: string | null | RegExp }]>([
    ['done: the held machine gets its state back', plan({ nextBoot: 'pxe', action: 'cycle' }), { state: 'paused', reason: 'held' }, { kind: 'done', parts: ['next-boot pxe (ipmi)', 'cycle'] }, { jobPower: 'next-boot pxe (ipmi), cycle', state: 'running', power: 'on', reason: null }],
    ['done off: desired power off', plan({ action: 'off' }, 'held', 'done'), { state: 'paused', reason: 'held' }, { kind: 'done', parts: ['off (ipmi)'] }, { jobPower: 'off (ipmi)', state: 'done', power: 'off', reason: null }],
    ['done, but an operator paused it meanwhile: stays paused', plan({ action: 'cycle' }), { state: 'paused', reason: 'paused by admin' }, { kind: 'done', parts: ['cycle (ipmi)'] }, { jobPower: 'cycle (ipmi)', state: 'paused', power: 'on', reason: 'paused by admin' }],
    ['the BMC fails: stopped with its words', plan({ nextBoot: 'pxe', action: 'cycle' }), { state: 'paused', reason: 'held' }, { kind: 'failed', parts: ['next-boot pxe (ipmi)'], failed: 'cycle', message: 'h:623: Error: Unable to establish IPMI v2 / RMCP+ session' }, { jobPower: 'failed: cycle: h:623: Error: Unable to establish IPMI v2 / RMCP+ session (done before: next-boot pxe (ipmi))', state: 'stopped', power: 'on', reason: /^task 'deploy' \(job j1\) asked for next-boot pxe, cycle; cycle failed: h:623: Error: Unable/ }],
    ['the manual driver: paused with what to do', plan({ action: 'cycle' }), { state: 'paused', reason: 'held' }, { kind: 'manual', parts: [], instruction: 'Power cycle rack-1: press its reset button.' }, { jobPower: 'waiting for a person: Power cycle rack-1: press its reset button.', state: 'paused', power: 'on', reason: /manual power driver leaves to you: Power cycle rack-1: press its reset button\. Then: takt machines resume rack-1$/ }],
  ])('%s', (_what, p, now, result, want) => {
    const end = endOfTaskPower(p, machine(now), result);
    expect(end.jobPower).toMatch(want.jobPower instanceof RegExp ? want.jobPower : new RegExp(`^${want.jobPower.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$`));
    expect({ state: end.machine.state, power: end.machine.power }).toEqual({ state: want.state, power: want.power });
    if (want.reason instanceof RegExp) expect(end.machine.reason).toMatch(want.reason);
    else expect(end.machine.reason).toBe(want.reason);
  });

  it('describes a request in takt-power\'s words', () => {
    expect(describePowerRequest({ nextBoot: 'disk', persistent: true, action: 'off' })).toBe('next-boot disk persistent, off');
    expect(describePowerRequest({ action: 'cycle' })).toBe('cycle');
  });
});
