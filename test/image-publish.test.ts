/**
 * Images built by pipelines (issue #14 "Images built by pipelines"): a task builds a file and asks
 * `takt-image publish NAME@VERSION FILE`; the agent uploads it with the machine's token, naming its running
 * job, and the catalog records the job as the image's provenance, with a recipe digest equal for equal
 * inputs. A real endpoint, real agents (their own --root), the real CLI. Refusals: an existing version, a
 * machine token without its running job, a job of another machine, a file outside the machine's root.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../src/client/http.js';
import type { Image } from '../src/model/image.js';
import type { Job, Machine } from '../src/model/machine.js';
import { Endpoint, until } from './helpers/endpoint.js';
import { AgentProcess } from './helpers/liveness.js';

let ep: Endpoint;
let files: string;
const call = (...args: Parameters<Endpoint['call']>) => ep.call(...args);
const agents: AgentProcess[] = [];

const line = (name: string, script: string, params = '') => ({
  [`tasks/${name}.yaml`]: `name: ${name}\n${params}script: |\n${script.split('\n').map((l) => `  ${l}`).join('\n')}\n`,
  [`stages/${name}.yaml`]: `name: ${name}\ntasks: [${name}]\n`,
  [`pipelines/${name}.yaml`]: `name: ${name}\nstages: [${name}]\n`,
});
// A "build": a file made from the params (same params, same bytes here; real builds differ in timestamps).
const build = 'printf "built %s\\n" {{ flavour | shellquote }} > "$TAKT_ROOT/out.img"';
const PACK: Record<string, string> = {
  'pack.yaml': 'name: builder\nversion: 1.2.0\n',
  'params/flavour.yaml': 'name: flavour\nschema: { type: string }\n',
  'params/version.yaml': 'name: version\nschema: { type: string }\n',
  ...line('build-min', `${build}\ntakt-image publish min@{{ version }} "$TAKT_ROOT/out.img"`, 'params:\n  required: [flavour, version]\n'),
  // Versioned by its job (a semver pre-release), so equal inputs can be built twice.
  ...line('build-same', `${build}\ntakt-image publish same@1.0.0-$TAKT_JOB_ID "$TAKT_ROOT/out.img"`, 'params:\n  required: [flavour]\n'),
  ...line('publish-outside', 'echo x > /tmp/takt-publish-outside-$TAKT_JOB_ID\ntakt-image publish outside@1.0.0 /tmp/takt-publish-outside-$TAKT_JOB_ID'),
  ...line('publish-relative', 'echo x > out.img\ntakt-image publish rel@1.0.0 out.img'),
  ...line('hold', 'echo holding; sleep 600'),
};

beforeAll(async () => {
  ep = await Endpoint.start();
  files = mkdtempSync(join(tmpdir(), 'takt-image-publish-'));
  const r = await call('POST', '/packs', { files: PACK });
  expect(r.status, JSON.stringify(r.body)).toBeLessThan(300);
}, 120_000);

afterAll(async () => {
  for (const a of agents) await a.dispose();
  await ep?.stop();
  if (files) rmSync(files, { recursive: true, force: true });
});

async function machineWithAgent(name: string, pipeline: string, params: Record<string, string> = {}): Promise<{ id: string; token: string }> {
  const r = await call('POST', '/machines', { name, pipeline, params });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  const m = r.body.items[0] as { id: string; token: string };
  agents.push(new AgentProcess(ep.url, m.token).start());
  return m;
}
const settled = (name: string) =>
  until(async () => {
    const m = (await call('GET', `/machines/${name}`)).body as Machine;
    return m.state === 'done' || m.state === 'stopped' ? m : null;
  }, 90_000, `${name} to finish`);
const jobsOf = async (name: string) => (await call('GET', `/jobs?machine=${name}`)).body.items as Job[];

describe('takt-image publish', () => {
  it('puts what the job built into the catalog, with the job as provenance and a recipe digest equal for equal inputs', async () => {
    await machineWithAgent('builder-1', 'build-min', { flavour: 'debian', version: '1.0.0' });
    const m = await settled('builder-1');
    expect(m.state, m.reason ?? '').toBe('done');
    const [job] = await jobsOf('builder-1');
    const image = (await call('GET', '/images/min/1.0.0')).body as Image;
    expect(image).toMatchObject({ name: 'min', version: '1.0.0', size: 'built debian\n'.length, sha256: createHash('sha256').update('built debian\n').digest('hex') });
    expect(image.provenance).toMatchObject({ kind: 'build', by: `machine:${m.id}`, machine: { id: m.id, name: 'builder-1' }, job: job!.id, pipeline: 'build-min', stage: 'build-min', task: 'build-min', pack: 'builder@1.2.0', file: 'out.img' });
    expect(image.provenance.kind === 'build' && image.provenance.recipe.params).toEqual({ flavour: 'debian', version: '1.0.0' });
    const log = ((await call('GET', `/jobs/${job!.id}/log`)).body.chunks as Array<{ data: string }>).map((c) => c.data).join('');
    expect(log).toMatch(/takt-image: asked to publish \S+out\.img as min@1\.0\.0/);
    expect(log).toMatch(/takt-image: hashing \S+out\.img/);
    expect(log).toMatch(/takt-image: published min@1\.0\.0: raw, 13 bytes, sha256 [0-9a-f]{64}/);
    // The CLI shows where it came from.
    const wide = await ep.cli(['images', 'list', '-o', 'wide']);
    expect(wide.stdout).toMatch(/build by builder-1, job j-\S+ \(builder@1\.2\.0 build-min\)/);
    // History records it as the machine's change.
    const hist = await ep.cli(['history', '-o', 'json']);
    expect(hist.stdout).toContain(`machine:${m.id}`);

    // The same inputs on two machines: two versions, one recipe; other inputs, another recipe.
    for (const [name, flavour] of [['same-1', 'debian'], ['same-2', 'debian'], ['same-3', 'alpine']]) await machineWithAgent(name!, 'build-same', { flavour: flavour! });
    const recipes: string[] = [];
    for (const name of ['same-1', 'same-2', 'same-3']) {
      expect((await settled(name)).state).toBe('done');
      const job = (await jobsOf(name))[0]!;
      const p = ((await call('GET', `/images/same/1.0.0-${job.id}`)).body as Image).provenance;
      expect(p).toMatchObject({ kind: 'build', job: job.id });
      recipes.push(p.kind === 'build' ? p.recipeSha256 : '');
    }
    expect(recipes[0]).toMatch(/^[0-9a-f]{64}$/);
    expect(recipes[1]).toBe(recipes[0]);
    expect(recipes[2]).not.toBe(recipes[0]);
  }, 240_000);

  it('fails the job when the version exists, and for a file outside the root or a relative path', async () => {
    await machineWithAgent('builder-4', 'build-min', { flavour: 'debian', version: '1.0.0' });
    const m = await settled('builder-4');
    expect(m.state).toBe('stopped');
    expect(m.reason).toMatch(/image min@1\.0\.0 from \S+out\.img not published: image min@1\.0\.0 exists; versions are immutable/);
    // Asked before the file was hashed (client/images.ts): no hashing, no upload.
    const log4 = ((await call('GET', `/jobs/${(await jobsOf('builder-4'))[0]!.id}/log`)).body.chunks as Array<{ data: string }>).map((c) => c.data).join('');
    expect(log4).toMatch(/takt-image: asked to publish/);
    expect(log4).not.toMatch(/takt-image: hashing/);

    await machineWithAgent('builder-5', 'publish-outside');
    const o = await settled('builder-5');
    expect(o.reason).toMatch(/not published: bad target: \/tmp\/takt-publish-outside-\S+ is outside this machine's root/);
    rmSync(`/tmp/takt-publish-outside-${(await jobsOf('builder-5'))[0]!.id}`, { force: true });

    await machineWithAgent('builder-6', 'publish-relative');
    const rel = await settled('builder-6');
    expect(rel.reason).toMatch(/failed with exit code 1/);
    const log = ((await call('GET', `/jobs/${(await jobsOf('builder-6'))[0]!.id}/log`)).body.chunks as Array<{ data: string }>).map((c) => c.data).join('');
    expect(log).toMatch(/takt-image: FILE must be an absolute path/);
  }, 240_000);

  it('refuses a machine token without its running job, with a finished job, or with another machine\'s job; and a person with a job', async () => {
    const holder = await machineWithAgent('holder', 'hold');
    const running = await until(async () => (await jobsOf('holder')).find((j) => j.state === 'running'), 60_000, 'the hold job to run');
    const { token: otherToken } = await machineWithAgent('other', 'publish-relative');
    await settled('other');
    const finished = (await jobsOf('other'))[0]!;
    const put = (token: string, query: Record<string, string>) =>
      new ApiClient({ endpoint: ep.url, token }).upload('PUT', '/images/direct/1.0.0', () => Readable.from([Buffer.from('x')]), 1, { query });
    // The holder's token is the AgentProcess's; the API gave it at create time.
    await expect(put(holder.token, {})).rejects.toMatchObject({ status: 403, message: expect.stringMatching(/only from a running job/) });
    await expect(put(holder.token, { job: finished.id })).rejects.toMatchObject({ status: 403, message: expect.stringMatching(/not a job of this machine/) });
    await expect(put(otherToken, { job: finished.id })).rejects.toMatchObject({ status: 403, message: expect.stringMatching(/is (failed|succeeded): images are published while the job that built them runs/) });
    await expect(put(ep.token, { job: running.id })).rejects.toMatchObject({ status: 400, message: expect.stringMatching(/job is for machine tokens/) });
    expect((await call('GET', '/images/direct/1.0.0')).status).toBe(404);
    // The running job's own machine may.
    const ok = await put(holder.token, { job: running.id });
    expect(ok).toMatchObject({ name: 'direct', provenance: { kind: 'build', job: running.id, machine: { name: 'holder' } } });
  }, 180_000);
});
