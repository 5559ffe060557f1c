/**
 * Power from a task (`takt-power`), end to end: a real endpoint, real local agents, and machines whose
 * power configuration is `ipmi` against OpenIPMI's real `ipmi_sim` (through Debian's ipmitool), whose
 * chassis program keeps the power and boot device in files (test/helpers/ipmi-sim.ts). A task's
 * `takt-power next-boot pxe && takt-power cycle` reaches the BMC in that order; a machine without a power
 * configuration is stopped saying how to give one; a failing task's request is not applied; a BMC that
 * refuses the login stops the machine with ipmitool's words. The agent protocol's new field is checked
 * at the route (table-driven). Skipped, saying why, without ipmi_sim/ipmitool.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, Machine } from '../src/model/machine.js';
import { IpmiPower } from '../src/provision/power/ipmi.js';
import { Endpoint, until } from './helpers/endpoint.js';
import { chassisFile, fileChassis, ipmiSimAvailable, IPMI_PASSWORD, IPMI_USER, startIpmiSim, type IpmiSim } from './helpers/ipmi-sim.js';

const available = ipmiSimAvailable();
if (!available) console.warn('[power-tasks] the ipmi_sim part is skipped: ipmi_sim or ipmitool is not installed (apt-get install openipmi ipmitool)');

const line = (name: string, tasks: string[]) => ({ [`stages/${name}.yaml`]: `name: ${name}\ntasks: [${tasks.join(', ')}]\n`, [`pipelines/${name}.yaml`]: `name: ${name}\nstages: [${name}]\n` });

const PACK: Record<string, string> = {
  'pack.yaml': 'name: powertasks\nversion: 1.0.0\n',
  'params/bmc_password.yaml': 'name: bmc_password\nsecure: true\nschema: { type: string }\n',
  'tasks/deploy-image.yaml': 'name: deploy-image\nscript: |\n  echo "image written"\n  takt-power next-boot pxe && takt-power cycle\n',
  'tasks/after.yaml': 'name: after\nscript: echo "booted again"\n',
  'tasks/broken.yaml': 'name: broken\nscript: |\n  takt-power next-boot disk --persistent\n  takt-power off\n  echo "then it fails"\n  exit 3\n',
  'tasks/lone-cycle.yaml': 'name: lone-cycle\nscript: takt-power cycle\n',
  'tasks/pxe-reboot.yaml': 'name: pxe-reboot\nscript: |\n  takt-power next-boot pxe\n  exit 64\n',
  // Driven by hand over HTTP (no agent), for the route's checks.
  'tasks/by-hand.yaml': 'name: by-hand\nscript: "true"\n',
  ...line('deploy', ['deploy-image', 'after']),
  ...line('broken', ['broken']),
  ...line('lone', ['lone-cycle']),
  ...line('pxe-reboot', ['pxe-reboot']),
  ...line('by-hand', ['by-hand']),
};

let ep: Endpoint;
const call = (...args: Parameters<Endpoint['call']>) => ep.call(...args);
const machine = async (name: string) => (await call('GET', `/machines/${name}`)).body as Machine;
const jobsOf = async (name: string) => ((await call('GET', `/jobs?machine=${name}&order=asc`)).body.items as Job[]);

beforeAll(async () => {
  ep = await Endpoint.start();
  const r = await call('POST', '/packs', { files: PACK });
  expect(r.status, JSON.stringify(r.body)).toBeLessThan(300);
}, 120_000);
afterAll(async () => ep?.stop());

/** A local machine on `pipeline` with an ipmi power configuration for `sim` (password: `password`). */
async function ipmiMachine(name: string, pipeline: string, sim: IpmiSim, password = IPMI_PASSWORD): Promise<void> {
  const c = await ep.cli([
    'machines', 'create', name, '--broker', 'local', '--pipeline', pipeline, '--param', `bmc_password=${password}`,
    '--power-driver', 'ipmi', '--power-opt', 'host=127.0.0.1', '--power-opt', `port=${sim.port}`, '--power-opt', `user=${IPMI_USER}`, '--power-opt', 'password-param=bmc_password',
  ]);
  expect(c.code, c.stderr).toBe(0);
}

describe('the completion route checks the power request', () => {
  it.each([
    ['an empty request', {}],
    ['an unknown device', { nextBoot: 'usb' }],
    ['an unknown action', { action: 'reboot' }],
    ['persistent without a device', { persistent: true, action: 'cycle' }],
    ['persistent that is not a boolean', { nextBoot: 'pxe', persistent: 'yes' }],
    ['an extra field', { action: 'off', password: 'x' }],
    ['not an object', 'cycle'],
  ])('%s is a 422 at /power, and the job stays running', async (what, power) => {
    const name = `hand-${what.replace(/[^a-z]+/g, '-')}`.slice(0, 40).replace(/-$/, '');
    const r = await call('POST', '/machines', { name, pipeline: 'by-hand' });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const m = r.body.items[0];
    const c = await call('POST', `/machines/${m.id}/claim`, undefined, m.token);
    const job = c.body.job as { id: string };
    const bad = await call('POST', `/jobs/${job.id}/complete`, { exitCode: 0, outputs: {}, power }, m.token);
    expect(bad.status, JSON.stringify(bad.body)).toBe(422);
    expect(bad.body.error.path).toMatch(/^\/power/);
    expect(bad.body.error.message).toMatch(/power|field/);
    expect(((await call('GET', `/jobs/${job.id}`)).body as Job).state).toBe('running');
    // The same report with a good request is taken; without a power configuration the machine stops.
    const good = await call('POST', `/jobs/${job.id}/complete`, { exitCode: 0, outputs: {}, power: { nextBoot: 'pxe', persistent: true } }, m.token);
    expect(good.status, JSON.stringify(good.body)).toBe(200);
    expect(good.body).toMatchObject({ job: { state: 'succeeded' }, action: 'continue' });
    expect(((await call('GET', `/jobs/${job.id}`)).body as Job).power).toBe('not applied: no power configuration (asked: next-boot pxe persistent)');
  });
});

describe('a machine without a power configuration', () => {
  it('completes the job, then stops with a reason that says how to give one', async () => {
    const r = await call('POST', '/machines', { name: 'no-bmc', pipeline: 'lone', broker: 'local' });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const m = await until(async () => {
      const x = await machine('no-bmc');
      return x.state === 'stopped' ? x : null;
    }, 60_000, 'no-bmc to stop');
    expect(m.reason).toMatch(/^task 'lone-cycle' \(job \S+\) asked for power \(cycle\) but no-bmc has no power configuration: give it one with takt machines update no-bmc --power-driver ipmi\|redfish\|qmp\|manual --power-opt KEY=VALUE, then takt machines resume no-bmc$/);
    const [job] = await jobsOf('no-bmc');
    expect(job).toMatchObject({ task: 'lone-cycle', state: 'succeeded', power: 'not applied: no power configuration (asked: cycle)' });
    // Shown by takt jobs get.
    const g = await ep.cli(['jobs', 'get', job!.id]);
    expect(g.stdout).toMatch(/^power: "?not applied: no power configuration \(asked: cycle\)"?$/m);
  }, 90_000);
});

describe('the manual driver', () => {
  it('leaves it to a person: the machine is paused with what to do, and the next task waits', async () => {
    const c = await ep.cli(['machines', 'create', 'rack-m', '--broker', 'local', '--pipeline', 'deploy', '--power-driver', 'manual']);
    expect(c.code, c.stderr).toBe(0);
    const m = await until(async () => {
      const x = await machine('rack-m');
      return x.state === 'paused' && /manual/.test(x.reason ?? '') ? x : null;
    }, 60_000, 'rack-m to wait for a person');
    expect(m.reason).toMatch(/^task 'deploy-image' \(job \S+\) asked for next-boot pxe, cycle, which the manual power driver leaves to you: At rack-m's next boot, choose network \(PXE\) boot in its one-time boot menu \(often F11 or F12\)\. Then: Power cycle rack-m: press its reset button, .* Then: takt machines resume rack-m$/);
    const jobs = await jobsOf('rack-m');
    expect(jobs.map((j) => j.task)).toEqual(['deploy-image']);
    expect(jobs[0]!.power).toMatch(/^waiting for a person: At rack-m's next boot/);
  }, 90_000);
});

describe.skipIf(!available)('a machine whose BMC is ipmi_sim', () => {
  let sim: IpmiSim;
  const bmc = () => new IpmiPower({ host: '127.0.0.1', port: sim.port, user: IPMI_USER, password: async () => IPMI_PASSWORD, timeoutMs: 60_000 });

  beforeAll(async () => {
    sim = await startIpmiSim({ chassis: (dir) => fileChassis(dir) });
    await bmc().on(); // a running server: a cycle is then a reset
  }, 180_000);
  afterAll(async () => sim?.stop());

  it('takt-power next-boot pxe && takt-power cycle: the boot device is set, then the machine is reset, once; the line goes on', async () => {
    await ipmiMachine('rack-1', 'deploy', sim);
    expect((await ep.cli(['machines', 'wait', 'rack-1', '--timeout', '90s'])).code).toBe(0);
    const [deploy, after] = await jobsOf('rack-1');
    expect(deploy).toMatchObject({ task: 'deploy-image', state: 'succeeded', power: 'next-boot pxe (ipmi), cycle' });
    expect(after).toMatchObject({ task: 'after', state: 'succeeded' });
    expect(after!.power).toBeUndefined();
    // What the BMC saw, in order: the boot device, then one reset (not a power on: it was on).
    expect(chassisFile(sim.dir, 'boot').trim()).toBe('pxe');
    expect(chassisFile(sim.dir, 'resets').trim().split('\n')).toEqual(['reset']);
    // The next task started only after the reset: the machine was held meanwhile.
    expect(Date.parse(after!.createdAt)).toBeGreaterThanOrEqual(Math.floor(statSync(join(sim.dir, 'resets')).mtimeMs));
    const calls = chassisFile(sim.dir, 'calls').split('\n').filter((l) => l.startsWith('set '));
    expect(calls.findIndex((l) => /boot pxe/.test(l))).toBeLessThan(calls.findIndex((l) => /reset 1/.test(l)));
    // (The driver read the device back from boot parameter 5 before the cycle.) The server is on again.
    expect(await bmc().status()).toBe('on');
    const g = await ep.cli(['jobs', 'get', deploy!.id]);
    expect(g.stdout).toMatch(/^power: next-boot pxe \(ipmi\), cycle$/m);
    expect(ep.output).toMatch(/rack-1: power asked by task deploy-image \(job \S+, next-boot pxe, cycle\): next-boot pxe \(ipmi\), cycle/);
    // The BMC password never reached the job's record.
    expect(JSON.stringify(deploy)).not.toContain(IPMI_PASSWORD);
  }, 120_000);

  it("a failing task's request is not applied, and its job says so", async () => {
    const before = { boot: chassisFile(sim.dir, 'boot'), power: chassisFile(sim.dir, 'power'), calls: chassisFile(sim.dir, 'calls') };
    await ipmiMachine('rack-2', 'broken', sim);
    expect((await ep.cli(['machines', 'wait', 'rack-2', '--timeout', '60s'])).code).toBe(1);
    const m = await machine('rack-2');
    expect(m).toMatchObject({ state: 'stopped', power: 'on' });
    expect(m.reason).toMatch(/exit/);
    const [job] = await jobsOf('rack-2');
    expect(job).toMatchObject({ state: 'failed', exitCode: 3, power: 'not applied: the job did not succeed (asked: next-boot disk persistent, off)' });
    expect({ boot: chassisFile(sim.dir, 'boot'), power: chassisFile(sim.dir, 'power'), calls: chassisFile(sim.dir, 'calls') }).toEqual(before);
  }, 90_000);

  it("a BMC that refuses the login stops the machine with ipmitool's words", async () => {
    const resets = chassisFile(sim.dir, 'resets');
    await ipmiMachine('rack-3', 'lone', sim, 'not-the-password');
    const m = await until(async () => {
      const x = await machine('rack-3');
      return x.state === 'stopped' ? x : null;
    }, 90_000, 'rack-3 to stop');
    expect(m.reason).toMatch(/^task 'lone-cycle' \(job \S+\) asked for cycle; cycle failed: 127\.0\.0\.1:\d+: Error: Unable to establish IPMI v2 \/ RMCP\+ session/);
    const [job] = await jobsOf('rack-3');
    expect(job).toMatchObject({ state: 'succeeded', power: expect.stringMatching(/^failed: cycle: .*Unable to establish IPMI v2/) });
    expect(chassisFile(sim.dir, 'resets')).toBe(resets);
  }, 120_000);

  it('a next boot device that cannot be set: stopped with the words, and the agent does not reboot (exit 64 answered continue)', async () => {
    await ipmiMachine('rack-4', 'pxe-reboot', sim, 'not-the-password');
    const m = await until(async () => {
      const x = await machine('rack-4');
      return x.state === 'stopped' ? x : null;
    }, 90_000, 'rack-4 to stop');
    expect(m.reason).toMatch(/^task 'pxe-reboot' \(job \S+\) asked for next-boot pxe; next-boot pxe failed: 127\.0\.0\.1:\d+: Error: Unable to establish IPMI v2/);
    const [job] = await jobsOf('rack-4');
    expect(job).toMatchObject({ state: 'succeeded', exitCode: 64, power: expect.stringMatching(/^failed: next-boot pxe: /) });
    // The agent was told to go on, not to reboot.
    const log = await until(async () => {
      const text = readFileSync(join(ep.data, 'machines', m.id, 'agent.log'), 'utf8');
      return text.includes('job report delivered') ? text : null;
    }, 30_000, "rack-4's agent to log its report");
    const delivered = log.split('\n').find((l) => l.includes('job report delivered') && l.includes(job!.id));
    expect(delivered).toMatch(/"action":"continue"/);
  }, 120_000);
});
