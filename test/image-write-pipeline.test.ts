/**
 * The built-in `image-deploy` pipeline (content/image-deploy), without a VM: a real endpoint with the
 * pack pushed as shipped and an image in its catalog, a real agent (its own --root) whose disk is a
 * regular file, and the `manual` power driver standing in for the BMC (a person does the boot-device
 * switch and the power cycle, then resumes the machine). The image is written and verified, the power
 * request waits for the person, and after `resume` the installed-OS stage runs and the machine is done,
 * with the image in its build record. A deploy of an unknown image stops at the write, naming it, and
 * asks for no power.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readPackDir } from '../src/content/files.js';
import { lintPack } from '../src/content/lint.js';
import { IMAGE_JOB_OUTPUT } from '../src/model/image.js';
import type { Job, Machine } from '../src/model/machine.js';
import { Endpoint, ROOT, until } from './helpers/endpoint.js';
import { AgentProcess } from './helpers/liveness.js';

const PACK_DIR = join(ROOT, 'content', 'image-deploy');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const image = randomBytes(2 * 2 ** 20);

let ep: Endpoint;
let files: string;
const agents: AgentProcess[] = [];
const call = (...args: Parameters<Endpoint['call']>) => ep.call(...args);
const machine = async (name: string) => (await call('GET', `/machines/${name}`)).body as Machine;
const jobsOf = async (name: string) => (await call('GET', `/jobs?machine=${name}&order=asc`)).body.items as Job[];

beforeAll(async () => {
  ep = await Endpoint.start();
  files = mkdtempSync(join(tmpdir(), 'takt-image-deploy-'));
  const push = await ep.cli(['content', 'push', PACK_DIR]);
  expect(push.code, push.stderr).toBe(0);
  writeFileSync(join(files, 'tiny.img'), image);
  const imp = await ep.cli(['images', 'import', 'tiny@1.0.0', join(files, 'tiny.img')]);
  expect(imp.code, imp.stderr).toBe(0);
}, 120_000);

afterAll(async () => {
  for (const a of agents) await a.dispose();
  await ep?.stop();
  if (files) rmSync(files, { recursive: true, force: true });
});

/**
 * A local-environment machine with the manual power driver and an agent of this test's, put on the
 * image-deploy pipeline with `image` and its disk: an empty file under the agent's root.
 */
async function deploying(name: string, ref: string): Promise<AgentProcess> {
  const r = await call('POST', '/machines', { name, environment: 'local', powerConfig: { driver: 'manual' } });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  const agent = new AgentProcess(ep.url, r.body.items[0].token as string).start();
  agents.push(agent);
  const disk = join(agent.dir, 'root', 'disk.img');
  writeFileSync(disk, '');
  const u = await ep.cli(['machines', 'update', name, '--param', `image=${ref}`, '--param', `disk=${disk}`, '--pipeline', 'image-deploy']);
  expect(u.code, u.stderr).toBe(0);
  return agent;
}

const waitFor = (name: string, what: string, ok: (m: Machine) => boolean) =>
  until(async () => {
    const m = await machine(name);
    return ok(m) ? m : null;
  }, 90_000, `${name}: ${what}`);

describe('content/image-deploy as shipped', () => {
  it('lints clean', async () => {
    const r = lintPack(await readPackDir(PACK_DIR));
    expect(r.diagnostics).toEqual([]);
    expect(r.manifest).toMatchObject({ name: 'image-deploy' });
  });
});

describe('the image-deploy pipeline', () => {
  it('writes the image, waits for the power cycle, then runs the installed-OS stage to done', async () => {
    const agent = await deploying('dep-1', 'tiny@1.0.0');
    // Paused first while the power driver is asked ("waiting for the power driver: …"), then with what a person must do.
    const paused = await waitFor('dep-1', 'paused for the manual power driver', (m) => (m.state === 'paused' && !/^waiting for the power driver/.test(m.reason ?? '')) || m.state === 'stopped');
    expect(paused.state, paused.reason ?? '').toBe('paused');
    expect(paused.reason).toMatch(/^task 'image-write' \(job \S+\) asked for next-boot disk persistent, cycle, which the manual power driver leaves to you: .* Then: takt machines resume dep-1$/);
    expect(sha(readFileSync(join(agent.dir, 'root', 'disk.img')))).toBe(sha(image));
    const [write] = await jobsOf('dep-1');
    expect(write).toMatchObject({ task: 'image-write', state: 'succeeded' });
    expect(write!.outputs[IMAGE_JOB_OUTPUT]).toMatchObject({ name: 'tiny', version: '1.0.0', sha256: sha(image) });

    const resume = await ep.cli(['machines', 'resume', 'dep-1']);
    expect(resume.code, resume.stderr).toBe(0);
    const done = await waitFor('dep-1', 'done', (m) => m.state === 'done' || m.state === 'stopped');
    expect(done.state, done.reason ?? '').toBe('done');
    const jobs = await jobsOf('dep-1');
    expect(jobs.map((j) => `${j.stage}/${j.task}:${j.state}`)).toEqual(['image-write/image-write:succeeded', 'image-installed/image-booted:succeeded']);
    expect(jobs[1]!.outputs).toEqual({ deployed_os: 'unknown' });
    const rec = await ep.cli(['machines', 'record', 'dep-1']);
    expect(rec.stdout).toMatch(/^dep-1 pipeline image-deploy image tiny@1\.0\.0$/m);
  }, 180_000);

  it('stops at the write naming an unknown image, and asks for no power', async () => {
    const agent = await deploying('dep-2', 'nosuch@1.0.0');
    const m = await waitFor('dep-2', 'stopped', (x) => x.state === 'stopped' || x.state === 'done' || x.state === 'paused');
    expect(m.state).toBe('stopped');
    expect(m.reason).toMatch(/^task 'image-write' failed: image nosuch@1\.0\.0 to \S+disk\.img not written: image unknown: image nosuch@1\.0\.0 not found/);
    const [job] = await jobsOf('dep-2');
    expect(job!.power).toBe('not applied: the job did not succeed (asked: next-boot disk persistent, cycle)');
    expect(readFileSync(join(agent.dir, 'root', 'disk.img')).length).toBe(0);
  }, 120_000);

  it('refuses an image param that is not NAME@VERSION', async () => {
    await call('POST', '/machines', { name: 'dep-3', environment: 'local' });
    const u = await ep.cli(['machines', 'update', 'dep-3', '--param', 'image=debian-min', '--pipeline', 'image-deploy']);
    expect(u.code).not.toBe(0);
    expect(u.stderr).toMatch(/image.*must match pattern/);
  });
});
