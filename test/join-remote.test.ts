/**
 * End to end: three "remote hosts" — network namespaces on a bridge this test makes (10.250.X.0/24), each
 * with its own hostname (UTS namespace), its own /etc/machine-id, its own /opt and no usable `node` (a
 * mount namespace binds /dev/null over it) — reach the endpoint only through its non-loopback HTTPS
 * listener. Each runs the one-liner `takt machines join` printed, as root, then the agent command the
 * script printed (no systemd here), and its machine runs the `joined` pipeline to done. Refused: a wrong
 * key pin, an expired and a used-up join token, a machine token used for another machine. A host that
 * joins twice is one machine, and its first token stops working.
 *
 * Needs root, iproute2's `ip`, util-linux's `unshare` and curl; skipped with the reason otherwise.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient } from '../src/client/http.js';
import { Endpoint, packFiles, until } from './helpers/endpoint.js';
import { BUNDLE_CACHE } from './helpers/join.js';

const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const why = process.getuid?.() !== 0 ? 'needs root' : !has('ip') ? 'needs iproute2 (ip)' : !has('unshare') ? 'needs util-linux (unshare)' : !has('curl') ? 'needs curl' : null;

/** Unique per run: interface names hold at most 15 characters. */
const SUFFIX = `${process.pid.toString(36)}${randomBytes(2).toString('hex')}`.slice(-7);
const BRIDGE = `tjb${SUFFIX}`;
const HOSTS = ['a', 'b', 'c'] as const;
type HostName = (typeof HOSTS)[number];

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

/** A free /24 in 10.250.0.0/16 (not one the host already has). */
function freeSubnet(): number {
  const taken = sh('ip', ['-o', '-4', 'addr', 'show']);
  for (let i = 0; i < 50; i++) {
    const x = 1 + Math.floor(Math.random() * 254);
    if (!taken.includes(`10.250.${x}.`)) return x;
  }
  throw new Error('no free /24 in 10.250.0.0/16');
}

interface Host {
  name: HostName;
  ns: string;
  dir: string;
  hostname: string;
  machineId: string;
  address: string;
  agent?: ChildProcess;
  agentLog: string;
}

describe.skipIf(why !== null)(`joining hosts in network namespaces over TLS${why ? ` (skipped: ${why})` : ''}`, () => {
  let ep: Endpoint;
  let subnet: number;
  let https: string;
  let ca: string;
  const hosts = new Map<HostName, Host>();
  let work = '';
  const nodePath = spawnSync('sh', ['-c', 'readlink -f "$(command -v node)"'], { encoding: 'utf8' }).stdout.trim();
  const joinMs: number[] = [];
  /** remote-a's single-use one-liner, kept to run it again. */
  let namedCommand = '';

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'takt-join-remote-'));
    subnet = freeSubnet();
    sh('ip', ['link', 'add', BRIDGE, 'type', 'bridge']);
    sh('ip', ['addr', 'add', `10.250.${subnet}.1/24`, 'dev', BRIDGE]);
    sh('ip', ['link', 'set', BRIDGE, 'up']);
    HOSTS.forEach((name, i) => {
      const ns = `tjn${SUFFIX}${name}`;
      const veth = `tjv${SUFFIX}${name}`;
      const address = `10.250.${subnet}.${i + 2}`;
      const dir = join(work, name);
      const machineId = randomBytes(16).toString('hex');
      const hostname = `jh-${name}-${SUFFIX}`;
      // Known before it exists, so afterAll deletes it whatever fails next.
      hosts.set(name, { name, ns, dir, hostname, machineId, address, agentLog: '' });
      sh('ip', ['netns', 'add', ns]);
      sh('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      sh('ip', ['link', 'set', veth, 'master', BRIDGE, 'up']);
      sh('ip', ['-n', ns, 'addr', 'add', `${address}/24`, 'dev', 'eth0']);
      sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      mkdirSync(join(dir, 'opt'), { recursive: true });
      writeFileSync(join(dir, 'machine-id'), `${machineId}\n`);
      // What every process "on the host" sees: its name, machine-id and /opt, and no Node.js.
      writeFileSync(
        join(dir, 'setup.sh'),
        [
          'set -e',
          `hostname ${hostname}`,
          `mount --bind ${dir}/opt /opt`,
          `mount --bind ${dir}/machine-id /etc/machine-id`,
          `mount --bind /dev/null ${nodePath}`,
          "if node --version >/dev/null 2>&1; then echo 'node still runs on this host' >&2; exit 97; fi",
          'export TAKT_PREFIX=/opt/takt TAKT_SYSTEMD=no',
          '',
        ].join('\n'),
      );
    });
    ep = await Endpoint.start({ listen: [`10.250.${subnet}.1:0`], env: { TAKT_BUNDLE_CACHE: BUNDLE_CACHE } });
    https = ep.httpsUrl;
    ca = readFileSync(join(ep.data, 'tls', 'ca.pem'), 'utf8');
    expect((await ep.call('POST', '/packs', { files: await packFiles('joined'), use: true })).status).toBe(201);
  });

  afterAll(async () => {
    for (const h of hosts.values()) stopAgent(h);
    for (const h of hosts.values()) {
      // Anything still running in the namespace was started by this test.
      for (const pid of spawnSync('ip', ['netns', 'pids', h.ns], { encoding: 'utf8' }).stdout.split(/\s+/).filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      spawnSync('ip', ['netns', 'del', h.ns]);
    }
    spawnSync('ip', ['link', 'del', BRIDGE]);
    await ep?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /** Runs `script` on host `h` (its namespaces, after setup.sh) and returns how it went. */
  function onHost(h: Host, script: string) {
    writeFileSync(join(h.dir, 'run.sh'), `. ${h.dir}/setup.sh\n${script}\n`);
    const started = Date.now();
    const r = spawnSync('ip', ['netns', 'exec', h.ns, 'unshare', '--mount', '--uts', 'sh', join(h.dir, 'run.sh')], { encoding: 'utf8', timeout: 180_000 });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - started };
  }

  function startAgent(h: Host, command: string) {
    writeFileSync(join(h.dir, 'agent.sh'), `. ${h.dir}/setup.sh\nexec ${command}\n`);
    const p = spawn('ip', ['netns', 'exec', h.ns, 'unshare', '--mount', '--uts', 'sh', join(h.dir, 'agent.sh')], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
    p.stderr!.on('data', (d: Buffer) => (h.agentLog += d.toString()));
    h.agent = p;
  }

  function stopAgent(h: Host) {
    if (h.agent?.pid && h.agent.exitCode === null) {
      try {
        process.kill(-h.agent.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    h.agent = undefined;
  }

  async function joinCommand(args: string[]): Promise<{ id: string; command: string; pin: string }> {
    const r = await ep.cli(['-o', 'json', 'machines', 'join', ...args]);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as { id: string; command: string; pin: string };
  }

  const host = (name: HostName) => hosts.get(name)!;
  const tokenOf = (h: Host) => readFileSync(join(h.dir, 'opt', 'takt', 'etc', 'token'), 'utf8').trim();
  const machine = async (name: string) => (await ep.call('GET', `/machines/${name}`)).body;

  it('three hosts without Node.js join with the printed one-liner over TLS and run a pipeline to done', async () => {
    const named = await joinCommand(['remote-a', '--pipeline', 'joined']);
    namedCommand = named.command;
    expect(named.command).toMatch(new RegExp(`^S=\\$\\(curl -sS --pinnedpubkey 'sha256//[A-Za-z0-9+/=]+' -k '${https.replace(/\./g, '\\.')}/join/tkj\\.[^']+'\\) && printf '%s\\\\n' "\\$S" \\| sh$`));
    const shared = await joinCommand(['--pipeline', 'joined', '--uses', '2']);
    const commands: Array<[HostName, string]> = [['a', named.command], ['b', shared.command], ['c', shared.command]];
    for (const [name, command] of commands) {
      const h = host(name);
      const r = onHost(h, command);
      expect(r.code, `${name}: ${r.stderr}`).toBe(0);
      joinMs.push(r.ms);
      expect(r.stderr).toContain('takt join: joined; systemd is not running this host');
      const agentCommand = r.stdout.trim();
      expect(agentCommand).toBe(`/opt/takt/bin/takt agent --endpoint ${https} --ca /opt/takt/etc/ca.pem --token-file /opt/takt/etc/token --dir /opt/takt/var --report-facts`);
      expect(readFileSync(join(h.dir, 'opt', 'takt', 'etc', 'ca.pem'), 'utf8').trim()).toBe(ca.trim());
      startAgent(h, agentCommand);
    }
    const names = { a: 'remote-a', b: `jh-b-${SUFFIX}`, c: `jh-c-${SUFFIX}` };
    for (const name of HOSTS) {
      await until(async () => (await machine(names[name])).state === 'done', 90_000, `${names[name]} done (agent log: ${host(name).agentLog.slice(-2000)})`);
      const m = await machine(names[name]);
      const h = host(name);
      expect(m).toMatchObject({ environment: 'remote', pipeline: 'joined', facts: { hostname: h.hostname, machineId: h.machineId, agentVersion: expect.stringMatching(/^\d+\.\d+\.\d+/) } });
      // Liveness: the joined agent is connected, from its namespace's address.
      expect(m.agent).toMatchObject({ connected: true, address: h.address });
      expect(m.facts.addresses.map((a: { address: string }) => a.address)).toContain(h.address);
      const jobs = (await ep.call('GET', `/jobs?machine=${m.id}`)).body.items as Array<{ id: string; task: string; state: string }>;
      expect(jobs.map((j) => `${j.task}:${j.state}`).sort()).toEqual(['check-runtime:succeeded', 'show-facts:succeeded']);
      const showFacts = jobs.find((j) => j.task === 'show-facts')!;
      const log = (await ep.call('GET', `/jobs/${showFacts.id}/log`)).body;
      expect(JSON.stringify(log)).toContain(`facts: hostname=${h.hostname} machine-id=${h.machineId}`);
      expect(JSON.stringify(log)).toContain(`host now: ${h.hostname} ${h.machineId}`);
    }
    // Each agent reported its facts again when it started.
    for (const name of HOSTS) expect(host(name).agentLog).toContain('host facts reported');
  }, 150_000);

  it('refuses a wrong key pin before anything is sent', async () => {
    const t = await joinCommand(['--pipeline', 'joined']);
    const wrong = t.command.replace(t.pin, `sha256//${Buffer.alloc(32).toString('base64')}`);
    const h = host('b');
    const before = (await ep.call('GET', '/machines')).body.total;
    const installed = tokenOf(h);
    const r = onHost(h, wrong);
    // curl stops at the handshake, so sh gets no script: nothing runs, nothing is installed or used.
    expect(r.stderr).toMatch(/curl: \(90\).*pinned public key/i);
    expect(r.stdout).toBe('');
    expect(tokenOf(h)).toBe(installed);
    expect((await ep.call('GET', `/join-tokens/${t.id}`)).body.uses).toBe(0);
    expect((await ep.call('GET', '/machines')).body.total).toBe(before);
  });

  it('refuses an expired and a used-up join token with a message and a non-zero exit', async () => {
    const t = await joinCommand(['--pipeline', 'joined']);
    const db = new Database(join(ep.data, 'takt.db'));
    try {
      db.pragma('busy_timeout = 5000');
      db.prepare('update join_tokens set expires_at = ? where id = ?').run('2001-01-01T00:00:00.000Z', t.id);
    } finally {
      db.close();
    }
    const expired = onHost(host('c'), t.command);
    expect(expired.code).toBe(1);
    expect(expired.stderr).toMatch(new RegExp(`takt join: join token ${t.id} expired at 2001-01-01T00:00:00.000Z`));

    // remote-a's single-use line, run again (here on host c): used up.
    const usedUp = onHost(host('c'), namedCommand);
    expect(usedUp.code).toBe(1);
    expect(usedUp.stderr).toMatch(/takt join: join token jt-\w+ is used up \(1 of 1 use\)/);
  });

  it("refuses one machine's token for another machine", async () => {
    // Host b's token, used from here (the endpoint's address): b's agent then counts as connected from
    // here, so it is b's and not remote-a's, which joins again from its own address below.
    const tokenB = tokenOf(host('b'));
    const a = await machine('remote-a');
    const client = new ApiClient({ endpoint: https, token: tokenB, ca });
    try {
      await expect(client.get(`/machines/${a.id}`)).rejects.toMatchObject({ code: 'forbidden' });
      await expect(client.post(`/machines/${a.id}/claim`, {})).rejects.toMatchObject({ code: 'forbidden' });
      await expect(client.put(`/machines/${a.id}/facts`, {})).rejects.toMatchObject({ code: 'forbidden' });
      expect((await client.get<{ name: string }>(`/machines/jh-b-${SUFFIX}`)).name).toBe(`jh-b-${SUFFIX}`);
    } finally {
      client.close();
    }
  });

  it('a host that joins twice is one machine with a new token; the old one stops working', async () => {
    const h = host('a');
    const before = await machine('remote-a');
    const total = (await ep.call('GET', '/machines')).body.total;
    const oldToken = tokenOf(h);
    stopAgent(h);
    const again = await joinCommand(['--pipeline', 'joined']);
    const r = onHost(h, again.command);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/joined again as machine remote-a/);
    expect((await ep.call('GET', '/machines')).body.total).toBe(total);
    expect((await machine('remote-a')).id).toBe(before.id);
    const newToken = tokenOf(h);
    expect(newToken).not.toBe(oldToken);
    const call = async (token: string) => {
      const c = new ApiClient({ endpoint: https, token, ca });
      try {
        return await c.get<{ id: string }>('/machines/remote-a');
      } finally {
        c.close();
      }
    };
    await expect(call(oldToken)).rejects.toMatchObject({ code: 'unauthorized' });
    expect((await call(newToken)).id).toBe(before.id);
    // The same printed command runs the agent again, now with the new token.
    startAgent(h, r.stdout.trim());
    expect((await ep.call('POST', '/machines/remote-a/restart')).status).toBe(200);
    await until(async () => (await machine('remote-a')).state === 'done', 90_000, `remote-a done again (agent log: ${h.agentLog.slice(-2000)})`);
  }, 150_000);

  afterAll(() => {
    if (joinMs.length) process.stderr.write(`join-remote: one join (one-liner to exit) took ${joinMs.map((ms) => `${(ms / 1000).toFixed(2)} s`).join(', ')}\n`);
  });
});
