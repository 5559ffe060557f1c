/**
 * Agentless machines against real hosts: two network namespaces on a bridge, each running Debian's sshd
 * (test/helpers/ssh-hosts.ts); a real endpoint on loopback reaches them through the bridge and runs their
 * jobs over SSH. Proves the agent's contract over SSH (the demo pipeline to done; streamed logs; exit codes
 * as an agent gets them; a timeout that kills the remote process group; takt-set/takt-get; undeclared
 * outputs refused; expectations; secure values masked), host key pinning (a changed key stops the machine
 * until it is accepted), connection reuse, and exactly-once across `kill -9` of the endpoint (the task ran
 * once and is reported; with its job dir deleted on the host it is visibly lost, never run again).
 * Skipped, with the reason, when not root or sshd is missing.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readPackDir } from '../src/content/files.js';
import { Endpoint, packFiles, ROOT, until, type Answer } from './helpers/endpoint.js';
import { SshLab, sshLabSkip } from './helpers/ssh-hosts.js';

const skip = sshLabSkip();
if (skip) console.warn(`ssh.test.ts skipped: ${skip}`);

interface Chunk {
  seq: number;
  stream: string;
  data: string;
}

describe.skipIf(skip !== null)('agentless machines over SSH (real sshd in network namespaces)', () => {
  let lab: SshLab;
  let ep: Endpoint;
  const call = (method: string, path: string, body?: unknown): Promise<Answer> => ep.call(method, path, body);
  const get = async (path: string) => (await call('GET', path)).body;

  /** Where a machine's TAKT_ROOT and takt dir are on host `i` (inside the lab's dir, so nothing leaks onto this host). */
  const dirs = (i: number, name: string) => ({ root: join(lab.hosts[i]!.dir, `${name}-root`), dir: join(lab.hosts[i]!.dir, `${name}-takt`) });

  async function create(name: string, i: number, extra: string[] = []): Promise<{ id: string; root: string; dir: string }> {
    const d = dirs(i, name);
    mkdirSync(d.root, { recursive: true });
    const r = await ep.cli(['machines', 'create', name, '--ssh', `root@${lab.hosts[i]!.address}:22`, '--ssh-key', 'lab', '--ssh-root', d.root, '--ssh-dir', d.dir, '--environment', 'netns', '-o', 'json', ...extra]);
    expect(r.code, r.stderr).toBe(0);
    return { id: JSON.parse(r.stdout)[0].id as string, ...d };
  }

  async function waitState(name: string, state: string, ms = 60_000) {
    return until(async () => {
      const m = await get(`/machines/${name}`);
      return m.state === state ? m : null;
    }, ms, `${name} to be ${state}`);
  }

  const jobsOf = async (name: string, order: 'asc' | 'desc' = 'asc') => (await get(`/jobs?machine=${name}&order=${order}&limit=1000`)).items as Array<Record<string, unknown> & { id: string; task: string; state: string }>;
  const logOf = async (jobId: string) => (await get(`/jobs/${jobId}/log?limit=10000`)).chunks as Chunk[];
  const text = (chunks: Chunk[], stream?: string) => chunks.filter((c) => !stream || c.stream === stream).map((c) => c.data).join('');

  /** Queues blueprint `run-<task>` and waits for its job to end. */
  async function runOnce(machine: string, task: string) {
    const wo = await call('POST', '/workorders', { machine, blueprint: `run-${task}` });
    expect(wo.status, JSON.stringify(wo.body)).toBe(201);
    const done = await until(async () => {
      const w = await get(`/workorders/${wo.body.id}`);
      return w.state !== 'queued' && w.state !== 'running' ? w : null;
    }, 60_000, `work order run-${task}`);
    const job = (await get(`/jobs?workorder=${wo.body.id}`)).items[0];
    return { wo: done, job, log: await logOf(job.id) };
  }

  beforeAll(async () => {
    lab = await SshLab.create(2);
    ep = await Endpoint.start({ lease: '5s' });
    for (const files of [await readPackDir(join(ROOT, 'content', 'demo')), await packFiles('ssh')]) {
      const r = await call('POST', '/packs', { files });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
    }
    const r = await ep.cli(['credentials', 'add', 'lab', '--ssh-key', lab.clientKey]);
    expect(r.code, r.stderr).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await ep?.stop();
    await lab?.destroy();
  });

  it('runs the demo pipeline to done on two hosts, one connection each, with the host keys pinned', async () => {
    const started = Date.now();
    const machines = await Promise.all([create('web-1', 0, ['--pipeline', 'demo']), create('web-2', 1, ['--pipeline', 'demo'])]);
    const times: number[] = [];
    for (const name of ['web-1', 'web-2']) {
      await waitState(name, 'done');
      times.push(Date.now() - started);
    }
    console.log(`demo pipeline over SSH: ${times.map((t) => `${t} ms`).join(', ')} (two machines at once); logins: ${lab.logins(0)}, ${lab.logins(1)}`);
    for (const [i, name] of ['web-1', 'web-2'].entries()) {
      const m = await get(`/machines/${name}`);
      expect(m.ssh.hostKey).toEqual({ type: 'ssh-ed25519', fingerprint: lab.fingerprint(i) });
      // Liveness as for an agent: heard over SSH, from the host's address.
      expect(m.agent).toMatchObject({ via: 'ssh', version: 'ssh', address: m.ssh.host });
      expect(m.agent.lastSeenAt).not.toBeNull();
      const jobs = await jobsOf(name);
      expect(jobs.map((j) => j.state)).toEqual(Array(jobs.length).fill('succeeded'));
      expect(jobs.length).toBe(8);
      expect(text(await logOf(jobs[0]!.id))).toContain('found mkdir');
      // The pipeline wrote under the machine's root on the host; the record says who built it.
      expect(readFileSync(join(machines[i]!.root, 'etc', 'hostname'), 'utf8').trim()).toBe(name);
      expect(readFileSync(join(machines[i]!.root, 'etc', 'motd'), 'utf8')).toContain(name);
      expect(m.outputs.build_id).toMatch(/^demo-\d+-\d+$/);
    }
    // Connections are reused: one login per machine for all eight jobs.
    expect([lab.logins(0), lab.logins(1)]).toEqual([1, 1]);
    // First contact is in the history, by `ssh`.
    const changes = (await get('/changes?object=machines/' + machines[0]!.id)).items as Array<{ author: string }>;
    expect(changes.some((c) => c.author === 'ssh')).toBe(true);
  });

  it('streams the log as the script prints it, stdout and stderr apart', async () => {
    const wo = await call('POST', '/workorders', { machine: 'web-1', blueprint: 'run-stream' });
    const seen = await until(async () => {
      const job = (await get(`/jobs?workorder=${wo.body.id}`)).items[0];
      if (!job) return null;
      const log = await logOf(job.id);
      const state = (await get(`/jobs/${job.id}`)).state;
      return text(log).includes('tick 1') ? { state, log } : null;
    }, 30_000, 'the first tick');
    // Seen while the script still runs (it prints for three seconds).
    expect(seen.state).toBe('running');
    expect(text(seen.log)).not.toContain('tick 8');
    const done = await until(async () => ((await get(`/workorders/${wo.body.id}`)).state === 'succeeded' ? true : null), 30_000, 'stream to finish');
    expect(done).toBe(true);
    const job = (await get(`/jobs?workorder=${wo.body.id}`)).items[0];
    const log = await logOf(job.id);
    expect(text(log, 'stdout')).toBe(Array.from({ length: 8 }, (_, i) => `tick ${i + 1}\n`).join(''));
    expect(text(log, 'stderr')).toBe('to stderr\n');
    expect(log.map((c) => c.seq)).toEqual(log.map((_, i) => i + 1));
  });

  it('exit codes 16 and 128+16 do what they do for an agent (same pipeline on a local machine, same jobs)', async () => {
    await create('contract-ssh', 0);
    expect((await call('POST', '/machines', { name: 'contract-agent', broker: 'local' })).status).toBe(201);
    const steps: Record<string, unknown[]> = {};
    for (const name of ['contract-ssh', 'contract-agent']) {
      expect((await call('PATCH', `/machines/${name}`, { pipeline: 'contract' })).status).toBe(200);
      const reasons: unknown[] = [];
      for (let k = 0; k < 2; k++) {
        const m = await waitState(name, 'paused');
        reasons.push(m.reason);
        expect((await call('POST', `/machines/${name}/resume`)).status).toBe(200);
      }
      await waitState(name, 'done');
      steps[name] = [reasons, (await jobsOf(name)).map((j) => [j.task, j.state, j.exitCode, j.reason])];
    }
    expect(steps['contract-ssh']).toEqual(steps['contract-agent']);
    expect(steps['contract-ssh']![1]).toEqual([
      ['pause-once', 'succeeded', 16, null],
      ['incomplete-once', 'succeeded', 144, null],
      ['incomplete-once', 'succeeded', 0, null],
      ['after', 'succeeded', 0, null],
    ]);
    expect((steps['contract-ssh']![0] as string[])[0]).toBe("paused by task 'pause-once' (exit code 16); resume to continue");
  });

  it("jobs cancel kills the remote process group at once and cancels the work order, with who and why", async () => {
    const root = dirs(0, 'web-1').root;
    for (const f of ['cancel.pid', 'cancel-child.pid']) rmSync(join(root, f), { force: true });
    const wo = await call('POST', '/workorders', { machine: 'web-1', blueprint: 'run-slow-cancel' });
    expect(wo.status, JSON.stringify(wo.body)).toBe(201);
    const pids = await until(async () => {
      const read = ['cancel.pid', 'cancel-child.pid'].map((f) => (existsSync(join(root, f)) ? Number(readFileSync(join(root, f), 'utf8')) : 0));
      return read.every((p) => p > 0) ? read : null;
    }, 60_000, 'the job to start on the host');
    const job = (await get(`/jobs?workorder=${wo.body.id}`)).items[0];
    const r = await ep.cli(['jobs', 'cancel', job.id, '--reason', 'not on this host']);
    expect(r.code, r.stderr).toBe(0);
    const gone = (pid: number) => !existsSync(`/proc/${pid}`) || readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.startsWith('Z');
    await until(async () => pids.every(gone), 30_000, 'the remote processes to be killed');
    expect(await get(`/jobs/${job.id}`)).toMatchObject({ state: 'cancelled', reason: expect.stringMatching(/^cancelled by \S+: not on this host$/) });
    expect(await get(`/workorders/${wo.body.id}`)).toMatchObject({ state: 'cancelled' });
  }, 120_000);

  it('a failing exit code fails the job with it', async () => {
    const r = await runOnce('web-1', 'fail-7');
    expect(r.job).toMatchObject({ state: 'failed', exitCode: 7, reason: "task 'fail-7' failed with exit code 7" });
    expect(text(r.log, 'stderr')).toBe('failing with 7\n');
  });

  it('the timeout kills the remote process group, children included', async () => {
    const root = dirs(0, 'web-1').root;
    const r = await runOnce('web-1', 'slow-kill');
    expect(r.job).toMatchObject({ state: 'failed', exitCode: null, reason: "task 'slow-kill' timed out after 2s and was killed" });
    expect(text(r.log)).toContain('the task timed out after 2 s');
    for (const f of ['slow.pid', 'child.pid']) {
      const pid = Number(readFileSync(join(root, f), 'utf8'));
      expect(() => process.kill(pid, 0), `${f} ${pid} still runs`).toThrow();
    }
  });

  it('takt-set and takt-get round trip (quotes, $, backticks, UTF-8) and expectations hold', async () => {
    const r = await runOnce('web-1', 'set-get');
    expect(r.job.state, r.job.reason).toBe('succeeded');
    const greeting = 'it\'s a "quoted" $HOME `greeting` ü';
    expect(r.job.outputs).toEqual({ word: greeting, size: Buffer.byteLength(greeting) });
    expect((await get('/machines/web-1')).outputs).toMatchObject({ word: greeting, size: Buffer.byteLength(greeting) });
    const bad = await runOnce('web-1', 'bad-expect');
    expect(bad.job.state).toBe('failed');
    expect(bad.job.reason).toMatch(/size/);
  });

  it('an undeclared output is refused, whether set past takt-set or with it', async () => {
    const past = await runOnce('web-1', 'undeclared');
    expect(past.job.state).toBe('failed');
    expect(past.job.reason).toContain('bogus');
    const withSet = await runOnce('web-1', 'undeclared-set');
    expect(withSet.job).toMatchObject({ state: 'failed', exitCode: 1 });
    expect(text(withSet.log, 'stderr')).toContain("task does not declare output 'nope'");
    expect(text(withSet.log)).not.toContain('not reached');
  });

  it('a secure param never reaches the log in the clear', async () => {
    const secret = 'sekrit-Zq93-hunter2';
    expect((await call('PATCH', '/machines/web-1', { params: { secret_word: secret } })).status).toBe(200);
    const r = await runOnce('web-1', 'secret');
    expect(r.job.state).toBe('succeeded');
    const t = text(r.log);
    expect(t).toContain('via takt-get: ********');
    expect(t).toContain('via template: ********');
    expect(t).not.toContain(secret);
    expect(ep.output).not.toContain(secret);
  });

  it('a changed host key stops the machine, nothing runs, and accepting the new key lets it go on', async () => {
    const m = await create('keyed', 1, ['--pipeline', 'once']);
    await waitState('keyed', 'done');
    const old = lab.fingerprint(1);
    expect((await get('/machines/keyed')).ssh.hostKey.fingerprint).toBe(old);
    // The host is reinstalled: sshd comes back with a new key (and the old sessions are gone).
    await lab.stopSshd(1, true);
    lab.newHostKey(1);
    await lab.startSshd(1);
    const fresh = lab.fingerprint(1);
    expect(fresh).not.toBe(old);
    expect((await call('POST', '/machines/keyed/restart')).status).toBe(200);
    const stopped = await waitState('keyed', 'stopped', 30_000);
    expect(stopped.reason).toContain(`the host key of root@${lab.hosts[1]!.address}:22 has changed: takt pinned ${old}`);
    expect(stopped.reason).toContain(fresh);
    expect(stopped.reason).toContain('takt machines update keyed --ssh-accept-new-key');
    expect(stopped.ssh.offeredHostKey.fingerprint).toBe(fresh);
    expect((await jobsOf('keyed')).length).toBe(1);
    expect(readFileSync(join(m.root, 'markers'), 'utf8').split('\n').filter(Boolean).length).toBe(1);

    const accepted = await ep.cli(['machines', 'update', 'keyed', '--ssh-accept-new-key', '-o', 'json']);
    expect(accepted.code, accepted.stderr).toBe(0);
    expect(JSON.parse(accepted.stdout).ssh.hostKey.fingerprint).toBe(fresh);
    expect((await ep.cli(['machines', 'resume', 'keyed'])).code).toBe(0);
    await waitState('keyed', 'done');
    expect(readFileSync(join(m.root, 'markers'), 'utf8').split('\n').filter(Boolean).length).toBe(2);
  });

  it('kill -9 of the endpoint mid-job: the task ran once and is reported; with its job dir gone it is visibly lost, never repeated', async () => {
    const kept = await create('crash-kept', 0, ['--param', 'wait_s=4']);
    const gone = await create('crash-gone', 1, ['--param', 'wait_s=4']);
    for (const name of ['crash-kept', 'crash-gone']) expect((await call('PATCH', `/machines/${name}`, { pipeline: 'once' })).status).toBe(200);
    // Both jobs have started on their hosts (their first line is in the log).
    const jobs: Record<string, string> = {};
    for (const name of ['crash-kept', 'crash-gone']) {
      jobs[name] = await until(async () => {
        const j = (await jobsOf(name))[0];
        return j && text(await logOf(j.id)).includes('started') ? j.id : null;
      }, 30_000, `${name}'s job to start`);
    }
    await ep.crash();
    // While the endpoint is down: one host loses the job's record (the dir the endpoint reattaches with).
    rmSync(join(gone.dir, 'jobs', jobs['crash-gone']!), { recursive: true, force: true });
    await ep.boot();

    await waitState('crash-kept', 'done');
    const keptJobs = await jobsOf('crash-kept');
    expect(keptJobs.map((j) => [j.task, j.state])).toEqual([['marker', 'succeeded']]);
    expect(readFileSync(join(kept.root, 'markers'), 'utf8')).toBe(`ran ${jobs['crash-kept']}\n`);
    // The log goes on where it stopped: every line once, in order.
    const log = await logOf(jobs['crash-kept']!);
    expect(text(log, 'stdout')).toBe(`marker job ${jobs['crash-kept']} started\nmarker written\n`);
    expect(log.map((c) => c.seq)).toEqual(log.map((_, i) => i + 1));

    const stopped = await waitState('crash-gone', 'stopped', 30_000);
    const goneJobs = await jobsOf('crash-gone');
    expect(goneJobs.map((j) => [j.task, j.state])).toEqual([['marker', 'lost']]);
    expect(goneJobs[0]!.reason).toContain('no trace of it on root@');
    expect(stopped.reason).toContain('lost');
    // The script itself ran on, once: its marker appears once, and nothing started it again.
    await until(async () => existsSync(join(gone.root, 'markers')), 30_000, 'the orphaned run to finish');
    expect(readFileSync(join(gone.root, 'markers'), 'utf8').split('\n').filter(Boolean)).toEqual([`ran ${jobs['crash-gone']}`]);
    expect((await jobsOf('crash-gone')).length).toBe(1);
  });

  it("an operator's restart mid-job kills the job on the host; the new job runs", async () => {
    const m = await create('restarted', 0, ['--param', 'wait_s=300']);
    expect((await call('PATCH', '/machines/restarted', { pipeline: 'once' })).status).toBe(200);
    const first = await until(async () => {
      const j = (await jobsOf('restarted'))[0];
      return j && text(await logOf(j.id)).includes('started') ? j.id : null;
    }, 30_000, 'the long job to start');
    const pgid = Number(readFileSync(join(m.dir, 'jobs', first, '.takt', 'run', 'pgid'), 'utf8'));
    expect((await call('PATCH', '/machines/restarted', { params: { wait_s: 0 } })).status).toBe(200);
    expect((await call('POST', '/machines/restarted/restart')).status).toBe(200);
    await waitState('restarted', 'done');
    const jobs = await jobsOf('restarted');
    expect(jobs.map((j) => [j.state, j.reason])).toEqual([
      ['cancelled', 'cancelled by admin: machine restarted'],
      ['succeeded', null],
    ]);
    // The cancelled one was killed on its host (its process group is gone) and never wrote its marker.
    await until(async () => {
      try {
        process.kill(-pgid, 0);
        return false;
      } catch {
        return true;
      }
    }, 30_000, 'the cancelled job to be killed');
    expect(readFileSync(join(m.root, 'markers'), 'utf8')).toBe(`ran ${jobs[1]!.id}\n`);
  });

  it('a host cut off longer than the lease: its job is lost, and killed on the host once it is back', async () => {
    const m = await create('cut', 1, ['--param', 'wait_s=300']);
    expect((await call('PATCH', '/machines/cut', { pipeline: 'once' })).status).toBe(200);
    const job = await until(async () => {
      const j = (await jobsOf('cut'))[0];
      return j && text(await logOf(j.id)).includes('started') ? j.id : null;
    }, 30_000, 'the long job to start');
    const pgid = Number(readFileSync(join(m.dir, 'jobs', job, '.takt', 'run', 'pgid'), 'utf8'));
    const alive = () => {
      try {
        process.kill(-pgid, 0);
        return true;
      } catch {
        return false;
      }
    };
    lab.sh(1, 'ip link set eth0 down');
    try {
      const stopped = await waitState('cut', 'stopped', 60_000);
      expect(stopped.reason).toContain('lost');
      expect((await jobsOf('cut'))[0]).toMatchObject({ id: job, state: 'lost' });
      // Cut off, the host still runs the job: nobody could tell it to stop.
      expect(alive()).toBe(true);
    } finally {
      lab.sh(1, 'ip link set eth0 up');
    }
    await until(async () => !alive(), 90_000, 'the lost job to be killed on the host');
    expect(existsSync(join(m.root, 'markers'))).toBe(false);
    expect((await jobsOf('cut')).length).toBe(1);
  }, 150_000);

  it('--ssh-max-sessions bounds how many machines run jobs at once; the others wait and say so', async () => {
    const one = await Endpoint.start({ lease: '5s', env: { TAKT_SSH_MAX_SESSIONS: '1' } });
    try {
      expect((await one.call('POST', '/packs', { files: await packFiles('ssh') })).status).toBe(201);
      expect((await one.cli(['credentials', 'add', 'lab', '--ssh-key', lab.clientKey])).code).toBe(0);
      for (const [i, name] of ['q-1', 'q-2'].entries()) {
        const d = dirs(i, name);
        mkdirSync(d.root, { recursive: true });
        const r = await one.cli(['machines', 'create', name, '--ssh', `root@${lab.hosts[i]!.address}`, '--ssh-key', 'lab', '--ssh-root', d.root, '--ssh-dir', d.dir, '--param', 'wait_s=2', '--pipeline', 'once']);
        expect(r.code, r.stderr).toBe(0);
      }
      const waiting = await until(async () => {
        const ms = (await one.call('GET', '/machines?name=q-')).body.items as Array<{ name: string; reason: string | null }>;
        return ms.find((m) => m.reason?.startsWith('waiting for an SSH session')) ?? null;
      }, 30_000, 'a machine waiting for its session');
      expect(waiting.reason).toContain('at most 1 SSH machines run jobs at once; --ssh-max-sessions');
      const jobs = [];
      for (const name of ['q-1', 'q-2']) {
        await until(async () => ((await one.call('GET', `/machines/${name}`)).body.state === 'done' ? true : null), 60_000, `${name} done`);
        jobs.push(...((await one.call('GET', `/jobs?machine=${name}`)).body.items as Array<{ createdAt: string; finishedAt: string }>));
        expect((await one.call('GET', `/machines/${name}`)).body.reason).toBeNull();
      }
      // One at a time: the second job was claimed only after the first had ended.
      const [a, b] = jobs.sort((x, y) => x.createdAt.localeCompare(y.createdAt));
      expect(b!.createdAt >= a!.finishedAt).toBe(true);
    } finally {
      await one.stop();
    }
  }, 240_000);

  it('a key the host does not accept: the reason says so, it keeps trying, and nothing is pinned or run', async () => {
    const stranger = join(lab.tmp, 'stranger_ed25519');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', stranger]);
    expect((await ep.cli(['credentials', 'add', 'stranger', '--ssh-key', stranger])).code).toBe(0);
    const d = dirs(0, 'refused');
    mkdirSync(d.root, { recursive: true });
    const r = await ep.cli(['machines', 'create', 'refused', '--ssh', `root@${lab.hosts[0]!.address}`, '--ssh-key', 'stranger', '--ssh-root', d.root, '--ssh-dir', d.dir, '--pipeline', 'once']);
    expect(r.code, r.stderr).toBe(0);
    const m = await until(async () => {
      const g = await get('/machines/refused');
      return g.reason?.startsWith('cannot log in to ') ? g : null;
    }, 30_000, 'the login refusal in the reason');
    expect(m.reason).toContain(`cannot log in to root@${lab.hosts[0]!.address}:22: the host refused the key`);
    expect(m.state).toBe('running');
    expect(m.ssh.hostKey).toBeNull();
    expect(await jobsOf('refused')).toEqual([]);
    // Given a key the host accepts, it goes on by itself.
    expect((await ep.cli(['machines', 'update', 'refused', '--ssh-key', 'lab'])).code).toBe(0);
    const done = await waitState('refused', 'done');
    expect(done.reason).toBeNull();
    expect(done.ssh.hostKey.fingerprint).toBe(lab.fingerprint(0));
  });

  it('machines get shows the SSH settings and the pinned fingerprint; deleting the machine stops driving it', async () => {
    const r = await ep.cli(['machines', 'get', 'web-1']);
    expect(r.stdout).toContain(`fingerprint: ${lab.fingerprint(0)}`);
    expect(r.stdout).toContain(`host: ${lab.hosts[0]!.address}`);
    expect(r.stdout).toContain('credential: lab');
    for (const name of ['web-1', 'keyed', 'crash-gone']) expect((await call('DELETE', `/machines/${name}`)).status).toBe(200);
    expect((await ep.cli(['credentials', 'list', '-o', 'json'])).stdout).not.toContain('web-1');
  });
});
