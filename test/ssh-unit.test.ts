/**
 * The pure parts of agentless (SSH) machines, and the remote scripts run for real with the local bash:
 * target parsing, settings checks, quoting, the wrapper (timeouts kill the process group, a job starts
 * once), the byte-exact log decoding, log progress across restarts, session slots, key fingerprints.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describePrivateKey, fingerprintOf, hostKeyOf } from '../src/brokers/ssh/keys.js';
import { COMMAND_TIMEOUT_MS, SshConnection } from '../src/brokers/ssh/connection.js';
import { jobDeadline, OVERDUE_MARGIN_MS, outputsOfProbe } from '../src/brokers/ssh/job.js';
import { LogProgress } from '../src/brokers/ssh/progress.js';
import { bootstrapScript, envFile, followScript, killScript, parseBootstrap, parseProbe, parseStartHeader, probeScript, reportedScript, shq, startScript, stopFollowScript } from '../src/brokers/ssh/remote.js';
import { Slots } from '../src/brokers/ssh/slots.js';
import { ExactUtf8 } from '../src/brokers/ssh/utf8.js';
import { agentCell } from '../src/cli/liveness.js';
import { sshBody } from '../src/cli/ssh.js';
import { TaktError } from '../src/model/errors.js';
import { checkSshSettings, parseSshTarget, patchSsh, sshTargetText, type MachineSsh } from '../src/model/ssh.js';

const tmp = mkdtempSync(join(tmpdir(), 'takt-ssh-unit-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A fresh unencrypted ed25519 private key (OpenSSH format) made by ssh-keygen, as operators make theirs. */
function keygen(name: string): string {
  const f = join(tmp, name);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', f]);
  return readFileSync(f, 'utf8');
}

const errorOf = (f: () => unknown): TaktError => {
  try {
    f();
  } catch (err) {
    return err as TaktError;
  }
  throw new Error('expected an error');
};

describe('USER@HOST[:PORT]', () => {
  it.each([
    ['root@10.0.0.5', { user: 'root', host: '10.0.0.5', port: 22 }],
    ['root@10.0.0.5:2222', { user: 'root', host: '10.0.0.5', port: 2222 }],
    ['deploy@web-1.example.org', { user: 'deploy', host: 'web-1.example.org', port: 22 }],
    ['deploy@web-1.example.org.:65535', { user: 'deploy', host: 'web-1.example.org.', port: 65535 }],
    ['admin@[2001:db8::5]', { user: 'admin', host: '2001:db8::5', port: 22 }],
    ['admin@[2001:db8::5]:2200', { user: 'admin', host: '2001:db8::5', port: 2200 }],
    ['a.b_c-d@[::1]:1', { user: 'a.b_c-d', host: '::1', port: 1 }],
    ['user@weird@host', null],
  ])('%s', (text, want) => {
    if (want) expect(parseSshTarget(text)).toEqual(want);
    else expect(() => parseSshTarget(text)).toThrow(TaktError);
  });

  it.each([
    ['10.0.0.5', 'missing the user'],
    ['@10.0.0.5', 'is not a user name'],
    ['-oProxyCommand=x@host', 'is not a user name'],
    ['root@', 'is not a host name'],
    ['root@host:0', 'port'],
    ['root@host:65536', 'port'],
    ['root@host:22x', 'port'],
    ['root@2001:db8::5', 'put an IPv6 address in brackets'],
    ['root@[2001:db8::5', 'without its ]'],
    ['root@[10.0.0.5]', 'is not an IPv6 address'],
    ['root@[::1]x', "unexpected 'x'"],
    ['root@bad_host', 'is not a host name'],
    ['root@ex ample.org', 'is not a host name'],
  ])('%s is refused: %s', (text, words) => {
    const err = errorOf(() => parseSshTarget(text, '--ssh'));
    expect(err).toBeInstanceOf(TaktError);
    expect(err.message).toContain(words);
    expect(err.message).toContain('--ssh');
    expect(err.path).toBe('--ssh');
  });

  it('prints back as it parses, IPv6 in brackets', () => {
    for (const t of ['root@10.0.0.5:22', 'admin@[2001:db8::5]:2200', 'x@h.example:7']) expect(sshTargetText(parseSshTarget(t))).toBe(t);
  });
});

describe('ssh settings', () => {
  it.each([
    [{ user: 'root', host: '10.0.0.5', credential: 'k' }, null],
    [{ user: 'root', host: '10.0.0.5', credential: 'k', port: 0 }, '/ssh/port'],
    [{ user: 'root', host: '10.0.0.5', credential: 'K!' }, '/ssh/credential'],
    [{ user: 'ro ot', host: '10.0.0.5', credential: 'k' }, '/ssh/user'],
    [{ user: 'root', host: '[::1]', credential: 'k' }, '/ssh/host'],
    [{ user: 'root', host: '10.0.0.5', credential: 'k', root: 'relative' }, '/ssh/root'],
    [{ user: 'root', host: '10.0.0.5', credential: 'k', dir: '/a\nb' }, '/ssh/dir'],
    [{ user: 'root', host: '10.0.0.5', credential: 'k', extra: 1 }, '/ssh/extra'],
    [{ host: '10.0.0.5', credential: 'k' }, '/ssh/user'],
  ])('%j → %s', (input, path) => {
    if (path === null) expect(checkSshSettings(input)).toEqual({ ...input, port: 22 });
    else expect(errorOf(() => checkSshSettings(input)).path).toBe(path);
  });

  const pinned: MachineSsh = { user: 'root', host: '10.0.0.5', port: 22, credential: 'k', hostKey: { type: 'ssh-ed25519', fingerprint: 'SHA256:old' } };

  it('a new host or port drops the pin; a new credential keeps it', () => {
    expect(patchSsh(pinned, { host: '10.0.0.6' }).hostKey).toBeNull();
    expect(patchSsh(pinned, { port: 2222 }).hostKey).toBeNull();
    expect(patchSsh(pinned, { credential: 'other' }).hostKey).toEqual(pinned.hostKey);
    expect(patchSsh({ ...pinned, root: '/srv' }, { root: null })).not.toHaveProperty('root');
  });

  it('accepting a new key pins the one the host offered, and only that', () => {
    expect(errorOf(() => patchSsh(pinned, { acceptNewHostKey: true })).code).toBe('conflict');
    const offered = { type: 'ssh-ed25519', fingerprint: 'SHA256:new' };
    const after = patchSsh({ ...pinned, offeredHostKey: offered }, { acceptNewHostKey: true });
    expect(after.hostKey).toEqual(offered);
    expect(after.offeredHostKey).toBeUndefined();
    expect(errorOf(() => patchSsh({ ...pinned, offeredHostKey: offered }, { acceptNewHostKey: true, host: 'elsewhere' })).path).toBe('/ssh/acceptNewHostKey');
  });

  it('the CLI options make the API body, and refuse what does not go together', () => {
    expect(sshBody({ ssh: 'root@[::1]:2', sshKey: 'k', sshRoot: '/srv' }, true)).toEqual({ user: 'root', host: '::1', port: 2, credential: 'k', root: '/srv' });
    expect(sshBody({}, true)).toBeUndefined();
    expect(errorOf(() => sshBody({ ssh: 'root@h' }, true)).path).toBe('--ssh-key');
    expect(errorOf(() => sshBody({ sshKey: 'k' }, true)).path).toBe('--ssh');
    expect(sshBody({ sshAcceptNewKey: true }, false)).toEqual({ acceptNewHostKey: true });
    expect(sshBody({ sshRoot: '' }, false)).toEqual({ root: null });
  });
});

const bash = (script: string, input?: string) => spawnSync('bash', input === undefined ? ['-c', script] : ['-s'], { input, encoding: 'utf8', timeout: 30_000 });

describe('quoting', () => {
  const nasty = ["it's", '"double"', '$HOME `id` $(id)', 'back\\slash', 'new\nline', 'tab\tand *glob* ?', 'ü € 😀', '', "'", "''", '--option', ' leading and trailing '];

  it.each(nasty)('shq(%j) is that text as one word', (text) => {
    expect(bash(`printf '%s' ${shq(text)}`).stdout).toBe(text);
  });

  it('the env file gives the wrapper every value as it was', () => {
    const env = Object.fromEntries(nasty.map((v, i) => [`V${i}`, v]));
    const file = join(tmp, 'env');
    writeFileSync(file, envFile({ ...env, 'BAD-NAME': 'x' }));
    const r = bash(`set -a; . ${shq(file)}; set +a; for i in $(seq 0 ${nasty.length - 1}); do v=V$i; printf '%s\\0' "\${!v}"; done`);
    expect(r.stdout.split('\0').slice(0, -1)).toEqual(nasty);
    expect(readFileSync(file, 'utf8')).not.toContain('BAD-NAME');
  });
});

/** The remote side, run with this host's bash in a dir whose name needs quoting. */
describe('the remote scripts, for real', () => {
  const base = join(tmp, "base dir with 'quotes' and $dollar");
  let n = 0;
  const jobDir = () => join(base, 'jobs', `j-${++n}`);
  /** Sets up and starts a job; its output from the start on is what the start command followed. */
  const start = (dir: string, script: string, o: { params?: Record<string, string>; timeoutMs?: number; env?: Record<string, string>; reported?: string[] } = {}) => {
    const r = bash(
      '',
      startScript(
        { jobDir: dir, binDir: join(base, 'bin'), script, params: o.params ?? {}, env: { TAKT_WORK_DIR: dir, TAKT_PARAMS_DIR: join(dir, '.takt/params'), TAKT_OUTPUTS_DIR: join(dir, '.takt/outputs'), PATH: `${join(base, 'bin')}:/usr/bin:/bin`, ...o.env }, timeoutMs: o.timeoutMs ?? 30_000, graceMs: 500, reported: o.reported },
        `t${n}`,
      ),
    );
    const nl = r.stdout.indexOf('\n');
    return { status: r.status, header: parseStartHeader(r.stdout.slice(0, nl)), stdout: r.stdout.slice(nl + 1), stderr: r.stderr };
  };
  /** The same, without waiting: the start follows the job until it ends. */
  const startAsync = (dir: string, script: string, token: string) => {
    const p = spawn('setsid', ['bash', '-s'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const ended = new Promise<number | null>((r) => p.once('close', (code) => r(code)));
    p.stdin.end(startScript({ jobDir: dir, binDir: join(base, 'bin'), script, params: {}, env: { TAKT_OUTPUTS_DIR: join(dir, '.takt/outputs'), PATH: `${join(base, 'bin')}:/usr/bin:/bin` }, timeoutMs: 30_000, graceMs: 300 }, token));
    return { out: () => out, ended };
  };
  const finished = async (dir: string) => {
    for (let i = 0; i < 600 && !existsSync(join(dir, '.takt/run/exit')); i++) await new Promise((r) => setTimeout(r, 50));
    return parseProbe(bash('', probeScript(dir, ['word'], 1000, { stdout: 0, stderr: 0 })).stdout);
  };

  beforeAll(() => {
    bash('', bootstrapScript(base));
  });

  it('bootstrap installs the helpers and says where', () => {
    const r = parseBootstrap(bash('', bootstrapScript(base)).stdout);
    expect(r).toEqual({ base, uid: process.getuid!() });
    for (const f of ['takt-get', 'takt-set', 'takt-ssh-run']) expect(existsSync(join(base, 'bin', f))).toBe(true);
  });

  it('runs the script detached, with its params and env, and reports exit code, output and outputs', async () => {
    const dir = jobDir();
    const params = { greeting: "it's a \"quoted\" $HOME `greeting`\nü", n: '42' };
    const r = start(dir, 'echo "out:$(takt-get greeting)"; echo err >&2; takt-set word "$(takt-get n)"; echo "$EXTRA"; exit 3', { params, env: { EXTRA: "x'y" } });
    expect(r.header).toEqual({ kind: 'started' });
    // The start followed the job: what came with it is the output so far, in order. (A job that ended
    // before the follow began sends nothing here — on a loaded host this short one may — and the probe
    // below brings whatever the follow had not sent, as the broker's does.)
    expect(`out:${params.greeting}\nx'y\n`.startsWith(r.stdout)).toBe(true);
    expect('err\n'.startsWith(r.stderr)).toBe(true);
    const p = await finished(dir);
    expect(p).toMatchObject({ state: 'finished', exitCode: 3, timedOut: false });
    expect(p.rest.stdout.toString()).toBe(`out:${params.greeting}\nx'y\n`);
    expect(p.rest.stderr.toString()).toBe('err\n');
    expect(p.outputs).toEqual([{ name: 'word', size: 2, content: Buffer.from('42') }]);
    // What it was given in the clear is gone once it has run.
    expect(existsSync(join(dir, 'task.sh'))).toBe(false);
    expect(existsSync(join(dir, '.takt/params'))).toBe(false);
  });

  it('never starts a job twice', async () => {
    const dir = jobDir();
    expect(start(dir, 'echo once >> ../count').header).toEqual({ kind: 'started' });
    expect(start(dir, 'echo twice >> ../count').header).toEqual({ kind: 'exists' });
    await finished(dir);
    expect(readFileSync(join(base, 'jobs', 'count'), 'utf8')).toBe('once\n');
  });

  it('the timeout kills the whole process group, background children too', async () => {
    const dir = jobDir();
    start(dir, 'sleep 300 & echo $! > child.pid; echo $$ > self.pid; wait', { timeoutMs: 700 });
    const p = await finished(dir);
    expect(p).toMatchObject({ state: 'finished', timedOut: true });
    for (const f of ['child.pid', 'self.pid']) {
      const pid = Number(readFileSync(join(dir, f), 'utf8'));
      expect(() => process.kill(pid, 0)).toThrow();
    }
  });

  it('what the script leaves in its group goes when it ends; setsid escapes', async () => {
    const dir = jobDir();
    // The escaping child writes its pid once it has its own session; the script waits for that (bounded).
    start(dir, 'sleep 300 & echo $! > left.pid; setsid -f bash -c \'echo $$ > away.tmp; mv away.tmp away.pid; exec sleep 300\'; for i in $(seq 500); do [ -e away.pid ] && break; sleep 0.01; done');
    await finished(dir);
    expect(() => process.kill(Number(readFileSync(join(dir, 'left.pid'), 'utf8')), 0)).toThrow();
    const away = Number(readFileSync(join(dir, 'away.pid'), 'utf8'));
    expect(() => process.kill(away, 0)).not.toThrow();
    process.kill(away, 'SIGKILL');
  });

  it('follows from an offset, ends on the exit file, and a probe says where things stand', async () => {
    const dir = jobDir();
    const f = start(dir, 'printf abc; sleep 0.5; printf def; printf XY >&2');
    expect(f.status).toBe(0);
    const p = parseProbe(bash('', probeScript(dir, [], 1000, { stdout: f.stdout.length, stderr: f.stderr.length })).stdout);
    // Followed plus the rest the probe brings: everything, once.
    expect(f.stdout + p.rest.stdout.toString()).toBe('abcdef');
    expect(f.stderr + p.rest.stderr.toString()).toBe('XY');
    expect(p.size).toEqual({ stdout: 6, stderr: 2 });
    // Reattached later at an offset: a finished job's follower ends at once, the probe brings the rest.
    const again = bash('', followScript(dir, { stdout: 2, stderr: 2 }, 't2'));
    expect(again.stdout).toBe('');
    expect(parseProbe(bash('', probeScript(dir, [], 1000, { stdout: 2, stderr: 2 })).stdout).rest.stdout.toString()).toBe('cdef');
  });

  it('a follower stopped early ends with its tails (sshd would keep it running)', async () => {
    const dir = jobDir();
    const s = startAsync(dir, 'echo begin; sleep 300', 'tok3');
    for (let i = 0; i < 1500 && !s.out().includes('begin'); i++) await new Promise((r) => setTimeout(r, 20));
    expect(s.out()).toBe('takt-ssh: started\nbegin\n');
    // A second follower, from an offset, as after a reconnect.
    const again = spawn('setsid', ['bash', '-s'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    again.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const ended = new Promise<number | null>((r) => again.once('close', (code) => r(code)));
    again.stdin.end(followScript(dir, { stdout: 2, stderr: 0 }, 'tok4'));
    for (let i = 0; i < 300 && !out.includes('gin'); i++) await new Promise((r) => setTimeout(r, 20));
    expect(out).toBe('gin\n');
    bash('', stopFollowScript(dir, 'tok3'));
    await s.ended;
    bash('', stopFollowScript(dir, 'tok4'));
    await ended;
    expect(existsSync(join(dir, '.takt/run/follow.tok3'))).toBe(false);
    expect(existsSync(join(dir, '.takt/run/follow.tok4'))).toBe(false);
    bash('', killScript(dir, 200));
  });

  it('a job dir that does not exist is claimed: a late start finds it taken', () => {
    const dir = jobDir();
    expect(parseProbe(bash('', probeScript(dir, [], 1000, { stdout: 0, stderr: 0 })).stdout).state).toBe('missing');
    expect(start(dir, 'echo ran > ../late').header).toEqual({ kind: 'exists' });
    expect(existsSync(join(base, 'jobs', 'late'))).toBe(false);
    expect(bash('', followScript(dir, { stdout: 0, stderr: 0 }, 't1')).status).toBe(3);
  });

  it('kill marks a job cancelled and ends it; reported clears its log and outputs', async () => {
    const dir = jobDir();
    const s = startAsync(dir, 'echo x; takt-set word w; sleep 300', 'tok5');
    for (let i = 0; i < 300 && !s.out().includes('x'); i++) await new Promise((r) => setTimeout(r, 20));
    expect(parseProbe(bash('', probeScript(dir, [], 1000, { stdout: 0, stderr: 0 })).stdout).state).toBe('running');
    bash('', killScript(dir, 500));
    const p = await finished(dir);
    expect(p).toMatchObject({ state: 'finished', cancelled: true });
    await s.ended;
    bash('', reportedScript(dir));
    for (const f of ['.takt/outputs', '.takt/run/stdout', '.takt/run/env']) expect(existsSync(join(dir, f))).toBe(false);
    expect(existsSync(join(dir, '.takt/run/reported'))).toBe(true);
  });

  it('a setup that fails says why and starts nothing; earlier jobs are marked reported on the way', async () => {
    const before = jobDir();
    start(before, 'true');
    const r = start('/proc/no-such-dir/j-x', 'echo never', { reported: [before] });
    expect(r.status).toBe(90);
    expect(r.header).toMatchObject({ kind: 'failed', message: expect.stringContaining('mkdir') });
    expect(existsSync(join(before, '.takt/run/reported'))).toBe(true);
  });

  it('outputs: undeclared and too large ones are listed by size, not sent', async () => {
    const dir = jobDir();
    start(dir, 'takt-set word ok; head -c 2000 /dev/zero | tr "\\0" a > "$TAKT_OUTPUTS_DIR/big"; echo x > "$TAKT_OUTPUTS_DIR/.hidden"; echo y > "$TAKT_OUTPUTS_DIR/Bad"');
    await finished(dir);
    const p = parseProbe(bash('', probeScript(dir, ['word', 'big'], 1000, { stdout: 0, stderr: 0 })).stdout);
    expect(p.outputs).toEqual([
      { name: 'big', size: 2000, content: null },
      { name: 'word', size: 2, content: Buffer.from('ok') },
    ]);
  });
});

describe('output names from a host are data, never paths', () => {
  const b64 = (t: string) => Buffer.from(t).toString('base64');
  const probe = (...lines: string[]) => parseProbe(['state finished', 'exit 0', ...lines].join('\n'));
  it.each([
    ['..', `output .. 5 ${b64('pwned')}`],
    ['../x', `output ../../../../tmp/x 19 ${b64('pwned by evil sshd')}`],
    ['.', `output . 1 ${b64('a')}`],
    ['a/b', `output a/b 1 ${b64('a')}`],
    ['/abs', `output /etc/cron.d/x 1 ${b64('a')}`],
    ['upper case', `output Word 1 ${b64('a')}`],
    ['too long', `output ${'a'.repeat(65)} 1 ${b64('a')}`],
    ['huge size', 'output word 99999999999999999999 -'],
    ['negative size', 'output word -1 -'],
  ])('parseProbe refuses %s', async (_what, line) => {
    const p = probe(line);
    expect(p.outputs).toEqual([]);
    expect(p.refused).toHaveLength(1);
    // The job fails with a reason instead of anything touching a disk.
    const r = await outputsOfProbe(p, ['word']);
    expect(r.outputs).toEqual({});
    expect(r.problem).toMatch(/output lines that are not valid/);
  });

  it.each([
    ['undeclared', [`output other 2 ${b64('ok')}`], /does not declare.*other/],
    ['huge, unsent', ['output word 9000000000 -'], /too large.*word \(9000000000 bytes\)/],
    ['huge content, size lied about', [`output word 1 ${Buffer.alloc(300 * 1024, 97).toString('base64')}`], /too large.*word \(307200 bytes\)/],
    ['twice', [`output word 1 ${b64('a')}`, `output word 1 ${b64('b')}`], /more than once.*word/],
    ['declared, small, content withheld', ['output word 3 -'], /did not send the content of outputs: word/],
  ])('outputsOfProbe leaves out %s and says why', async (_what, lines, problem) => {
    const r = await outputsOfProbe(probe(...lines), ['word']);
    expect(r.outputs).toEqual({});
    expect(r.problem).toMatch(problem);
  });

  it('valid declared outputs come through in memory, one trailing newline trimmed', async () => {
    const r = await outputsOfProbe(probe(`output word 3 ${b64('ok\n')}`, `output n_2 1 ${b64('7')}`), ['word', 'n_2']);
    expect(r).toEqual({ outputs: { n_2: '7', word: 'ok' }, problem: null });
  });
});

describe('an idle SSH machine is idle, not gone', () => {
  const now = Date.parse('2026-11-30T10:45:00.000Z');
  const seen = { connected: false, lastSeenAt: '2026-11-30T10:42:00.000Z', version: 'ssh', address: '10.0.0.5', via: 'ssh' as const, since: '2026-11-30T10:43:00.000Z' };
  it.each([
    ['closed for want of work', {}, 'idle (ssh)'],
    ['cannot reach the host', { reason: 'cannot reach root@10.0.0.5:22: connect ECONNREFUSED' }, 'gone 3m (ssh)'],
    ['refused the key', { reason: 'cannot log in to root@10.0.0.5:22: the host refused the key' }, 'gone 3m (ssh)'],
    ['a job on it and no connection', { currentJob: 'j-1' }, 'gone 3m (ssh)'],
    ['connected', { agent: { ...seen, connected: true } }, 'connected (ssh)'],
    ['an agent, not ssh', { agent: { ...seen, via: 'agent' as const } }, 'gone 3m'],
  ])('%s', (_what, more, want) => {
    expect(agentCell({ agent: seen, reason: null, currentJob: null, ...more } as never, now)).toBe(want);
  });
});

describe('a hung host holds nothing forever', () => {
  it('a job past its timeout, grace and margin with no end reported is given up on', () => {
    expect(jobDeadline({ timeoutMs: 60_000, startedAtMs: 1000 })).toBe(1000 + 60_000 + 2000 + OVERDUE_MARGIN_MS);
    expect(jobDeadline({ timeoutMs: 60_000 }, 5000)).toBe(5000 + 60_000 + 2000 + OVERDUE_MARGIN_MS);
    expect(jobDeadline({ timeoutMs: 0 })).toBeNull();
    expect(COMMAND_TIMEOUT_MS).toBeLessThanOrEqual(60_000);
  });

  it('a command the host never answers fails within the bound and closes the connection', async () => {
    const { default: ssh2 } = await import('ssh2');
    // Keys from ssh-keygen, not ssh2's generateKeyPairSync: that one drops a leading zero byte of an
    // ed25519 public key (about 1 key in 256) and then cannot parse its own output (mscdex/ssh2#1513).
    const hostKey = keygen('hung-host');
    const userKey = keygen('hung-user');
    let execs = 0;
    // A host that takes the command and never answers (a hung mount, a stopped sshd child).
    const server = new ssh2.Server({ hostKeys: [hostKey] }, (client) => {
      client.on('authentication', (ctx) => ctx.accept());
      client.on('error', () => undefined);
      client.on('ready', () => client.on('session', (accept) => accept().on('exec', (acc) => void (execs++, acc()))));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    try {
      const conn = await SshConnection.open({ user: 'root', host: '127.0.0.1', port, credential: 'k', hostKey: null } as never, { privateKey: userKey } as never, { commandTimeoutMs: 300 });
      const closed = new Promise<string>((resolve) => conn.onClose(resolve));
      await expect(conn.run('echo state finished\n')).rejects.toThrow(/did not answer within 300 ms/);
      expect(await closed).toMatch(/did not answer a command within 300 ms/);
      expect(conn.closed).toBe(true);
      expect(execs).toBe(1);
      // A streamed command (following a job's log) has no such bound: the job's deadline bounds it.
    } finally {
      server.close();
    }
  });
});

describe('byte-exact decoding', () => {
  it.each([
    ['ascii', Buffer.from('hello'), 'hello'],
    ['utf-8', Buffer.from('ü€😀'), 'ü€😀'],
    ['invalid bytes', Buffer.from([0x61, 0xff, 0x62, 0xc0, 0xaf, 0xed, 0xa0, 0x80]), 'a?b?????'],
  ])('%s', (_name, bytes, want) => {
    const d = new ExactUtf8();
    expect(d.push(bytes) + d.end()).toBe(want);
  });

  it('a character cut between reads comes out whole, and text length always equals the bytes consumed', () => {
    const d = new ExactUtf8();
    const euro = Buffer.from('€');
    expect(d.push(euro.subarray(0, 1))).toBe('');
    expect(d.pending).toBe(1);
    expect(d.push(euro.subarray(1))).toBe('€');
    for (let round = 0; round < 200; round++) {
      const dec = new ExactUtf8();
      let text = '';
      let bytes = 0;
      for (let k = 0; k < 5; k++) {
        const b = Buffer.from(Array.from({ length: Math.floor(Math.random() * 40) }, () => (Math.random() < 0.5 ? 0x80 + Math.floor(Math.random() * 0x80) : Math.floor(Math.random() * 0x80))));
        bytes += b.length;
        text += dec.push(b);
        expect(Buffer.byteLength(text)).toBe(bytes - dec.pending);
      }
      text += dec.end();
      expect(Buffer.byteLength(text)).toBe(bytes);
    }
  });
});

describe('log progress', () => {
  it('a chunk the store took before a crash counts; one it did not, does not', () => {
    const dir = join(tmp, 'progress');
    const a = LogProgress.load(dir, 'm-1', 'j-1', 0);
    a.pending(1, 'stdout', 10);
    a.stored(1);
    a.pending(2, 'stderr', 5);
    // crash: the store has seq 2
    let b = LogProgress.load(dir, 'm-1', 'j-1', 2);
    expect(b.sent).toEqual({ stdout: 10, stderr: 5 });
    expect(b.seqBase).toBe(2);
    b.pending(3, 'stdout', 7);
    // crash: the store does not have seq 3
    b = LogProgress.load(dir, 'm-1', 'j-1', 2);
    expect(b.sent).toEqual({ stdout: 10, stderr: 5 });
    // another job on that machine starts from nothing, numbered after what is stored
    expect(LogProgress.load(dir, 'm-1', 'j-2', 4).sent).toEqual({ stdout: 0, stderr: 0 });
  });
});

describe('session slots', () => {
  it('first come, first served; waiters learn their place; an aborted wait leaves the queue', async () => {
    const slots = new Slots(1);
    const first = await slots.acquire();
    const places: number[] = [];
    const second = slots.acquire(undefined, (p) => places.push(p));
    const ac = new AbortController();
    const third = slots.acquire(ac.signal);
    const fourth = slots.acquire();
    ac.abort();
    await expect(third).rejects.toBeDefined();
    expect(slots.waiting).toBe(2);
    first();
    const release2 = await second;
    expect(places.length).toBeGreaterThan(0);
    expect(places.every((p) => p === 0)).toBe(true);
    expect(slots.inUse).toBe(1);
    release2();
    (await fourth)();
    expect(slots.inUse).toBe(0);
    slots.force()();
  });
});

describe('keys', () => {
  it('fingerprints are what ssh-keygen prints, for each key type', () => {
    for (const type of ['ed25519', 'ecdsa', 'rsa']) {
      const f = join(tmp, `key_${type}`);
      execFileSync('ssh-keygen', ['-q', '-t', type, '-N', '', '-f', f]);
      const want = execFileSync('ssh-keygen', ['-lf', `${f}.pub`]).toString().split(' ')[1];
      const info = describePrivateKey(readFileSync(f, 'utf8'), undefined, 'takt:test');
      expect(info.fingerprint).toBe(want);
      const blob = Buffer.from(readFileSync(`${f}.pub`, 'utf8').split(' ')[1]!, 'base64');
      expect(fingerprintOf(blob)).toBe(want);
      expect(hostKeyOf(blob).type).toBe(info.keyType);
    }
  });

  it('an encrypted key needs its passphrase; a public key is not a private key', () => {
    const f = join(tmp, 'key_enc');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', 'open sesame', '-f', f]);
    const text = readFileSync(f, 'utf8');
    expect(errorOf(() => describePrivateKey(text, undefined, 'x')).message).toContain('needs its passphrase');
    expect(errorOf(() => describePrivateKey(text, 'wrong', 'x')).message).toContain('does not open it');
    expect(describePrivateKey(text, 'open sesame', 'x').keyType).toBe('ssh-ed25519');
    expect(errorOf(() => describePrivateKey(readFileSync(`${f}.pub`, 'utf8'), undefined, 'x')).message).toContain('public key');
    const err = errorOf(() => describePrivateKey('-----BEGIN OPENSSH PRIVATE KEY-----\nnot really\n', undefined, 'x'));
    expect(err.message).not.toContain('not really');
  });
});
