/**
 * A fleet of SSH "hosts" for benches: each host is a Linux network namespace on a private bridge, running
 * Debian's real `/usr/sbin/sshd -D` with a generated config, a generated host key and root login by a
 * generated client key — what Ansible (or any SSH tool) sees on a real server, minus the wire.
 *
 *   this box: bridge tbs<id> 10.252.S.1/24 ── veth ── namespace tbs-<id>-h<i>: eth0 10.252.S.<i+1>/24, sshd on :22
 *
 * The namespaces share this box's filesystem (only the network is separate), so a file a host writes is
 * readable here; each host gets its own directory for that. Addresses are only ever in 10.252.0.0/16.
 * Everything made here (sshd processes and their sessions, namespaces, veths, the bridge) is removed by
 * `close()`, and again, synchronously, when the process exits before that (a failed or interrupted bench).
 * Needs root, iproute2's `ip`, and openssh-server/openssh-client (`sshd`, `ssh`, `ssh-keygen`).
 */
import { execFile, execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

const exec = promisify(execFile);

export const SSHD = '/usr/sbin/sshd';

export interface SshHost {
  /** Inventory name: h1, h2… */
  name: string;
  /** The network namespace it lives in. */
  ns: string;
  /** Its address on the bridge; sshd listens on port 22 there. */
  address: string;
  port: number;
  /** Its own directory on the shared filesystem (sshd config, host key, whatever a bench puts there). */
  dir: string;
  /** `ssh-ed25519 AAAA…`: its public host key, as known_hosts pins it. */
  hostKey: string;
  /** The `sshd -D` process (its pid is sshd's: `ip netns exec` execs it). */
  sshd: ChildProcess;
}

export interface SshFleetOptions {
  /** How many hosts (1–253). */
  count: number;
  /** A fresh directory this fleet owns: keys, configs, one directory per host. */
  dir: string;
  /**
   * Environment sshd sets in every session on that host (sshd_config `SetEnv`), e.g. a per-host root
   * directory, since the hosts share one filesystem.
   */
  env?: (host: { name: string; dir: string }) => Record<string, string>;
}

export interface SshFleet {
  hosts: SshHost[];
  /** This box's address on the bridge (what the hosts reach it at). */
  gateway: string;
  user: 'root';
  /** Private key (OpenSSH format, no passphrase) that every host accepts for root. */
  clientKey: string;
  /** known_hosts pinning every host's key by address. */
  knownHosts: string;
  /**
   * `ssh` arguments that reach `host` with the fleet's key and pinned host keys, strictly (a changed key
   * fails), multiplexed over a ControlMaster socket in `controlDir` when given. The command follows.
   */
  sshArgs(host: SshHost, controlDir?: string): string[];
  /** Stops every sshd and every process left in the namespaces, deletes namespaces and bridge. Idempotent. */
  close(): Promise<void>;
}

async function ip(...args: string[]): Promise<string> {
  try {
    return (await exec('ip', args, { timeout: 10_000 })).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')}: ${(e.stderr || e.message).trim()}`);
  }
}

/** Says plainly what this host lacks to run the fleet; null when it has everything. */
export function sshFleetUnavailable(): string | null {
  if (process.platform !== 'linux') return 'SSH hosts are network namespaces: Linux only';
  if (process.getuid?.() !== 0) return 'SSH hosts are network namespaces: run the bench as root';
  for (const [cmd, pkg] of [
    ['ip', 'iproute2'],
    [SSHD, 'openssh-server'],
    ['ssh', 'openssh-client'],
    ['ssh-keygen', 'openssh-client'],
  ] as const) {
    if (spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status !== 0) return `${cmd} is missing (Debian: apt-get install ${pkg})`;
  }
  return null;
}

/** A free /24 in 10.252.0.0/16: no route on this box covers it yet. Starts at a random one. */
async function freeSubnet(): Promise<string> {
  const routes = await ip('-4', 'route', 'show');
  const start = randomBytes(1)[0]!;
  for (let i = 0; i < 256; i++) {
    const prefix = `10.252.${(start + i) % 256}`;
    if (!routes.includes(`${prefix}.`)) return prefix;
  }
  throw new Error('no free /24 in 10.252.0.0/16 for the SSH hosts');
}

function keygen(file: string, comment: string): string {
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', file], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
  // `ssh-ed25519 AAAA… comment` → the first two fields.
  return readFileSync(`${file}.pub`, 'utf8').trim().split(' ').slice(0, 2).join(' ');
}

/**
 * Debian's shipped sshd_config (PAM, no keyboard-interactive, the packaged sftp-server, LANG/LC_*
 * accepted), plus what a fleet host needs: its own address, host key, pid file and authorized keys, root
 * by key only, no StrictModes (see below). MaxStartups/MaxSessions are raised so a bench's bursts are not throttled by defaults meant
 * for the open internet.
 */
function sshdConfig(o: { address: string; port: number; dir: string; authorizedKeys: string; env: Record<string, string> }): string {
  const quote = (v: string) => `"${v.replace(/(["\\])/g, '\\$1')}"`;
  return [
    `ListenAddress ${o.address}:${o.port}`,
    `HostKey ${join(o.dir, 'ssh_host_ed25519_key')}`,
    `PidFile ${join(o.dir, 'sshd.pid')}`,
    `AuthorizedKeysFile ${o.authorizedKeys}`,
    'PermitRootLogin prohibit-password',
    // The keys file is 0600 in a 0700 directory, but under /tmp, which is world-writable (with the sticky
    // bit): StrictModes refuses every path through such a directory.
    'StrictModes no',
    'PubkeyAuthentication yes',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'UsePAM yes',
    'PrintMotd no',
    'AcceptEnv LANG LC_*',
    'Subsystem sftp /usr/lib/openssh/sftp-server',
    'MaxStartups 100:30:200',
    'MaxSessions 100',
    'LogLevel ERROR',
    ...Object.entries(o.env).map(([k, v]) => `SetEnv ${k}=${quote(v)}`),
    '',
  ].join('\n');
}

/** Resolves when `address:port` accepts a TCP connection; throws after `timeoutMs`. */
async function listening(address: string, port: number, timeoutMs: number, exited: () => string | null): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host: address, port, timeout: 1000 });
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
      s.once('timeout', () => (s.destroy(), resolve(false)));
    });
    if (ok) return;
    const gone = exited();
    if (gone) throw new Error(gone);
    if (Date.now() > deadline) throw new Error(`sshd on ${address}:${port} did not listen within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Builds the fleet: bridge, namespaces, keys, one sshd per host, and checks every host answers a login.
 * On any failure it removes what it made and throws.
 */
export async function startSshHosts(o: SshFleetOptions): Promise<SshFleet> {
  const missing = sshFleetUnavailable();
  if (missing) throw new Error(missing);
  if (!Number.isInteger(o.count) || o.count < 1 || o.count > 253) throw new Error(`SSH hosts: count must be 1–253 (one /24), got ${o.count}`);
  // Unique per run, short: interface names are at most 15 characters (`tbs` + 6 + `h253` = 13).
  const id = randomBytes(3).toString('hex');
  const bridge = `tbs${id}`;
  const names = Array.from({ length: o.count }, (_, i) => ({ name: `h${i + 1}`, ns: `tbs-${id}-h${i + 1}`, veth: `tbs${id}h${i + 1}` }));
  const hosts: SshHost[] = [];
  let closed = false;

  // Order matters: every process in the namespaces must be gone while the bridge is still up, so the
  // peers of their TCP connections (ssh clients, ControlMaster muxes) see the FIN and exit, and no socket
  // keeps a namespace (and its veth) alive after `ip netns del`.
  const killSessions = (): boolean => {
    let left = false;
    for (const n of names) {
      for (const pid of nsPidsSync(n.ns)) {
        left = true;
        killQuietly(pid);
      }
    }
    return left;
  };
  const removeNetwork = () => {
    for (const n of names) {
      spawnSync('ip', ['netns', 'del', n.ns], { stdio: 'ignore', timeout: 10_000 });
      // Deleting our end deletes the pair, even if something still holds the namespace.
      spawnSync('ip', ['link', 'del', n.veth], { stdio: 'ignore', timeout: 10_000 });
    }
    spawnSync('ip', ['link', 'del', bridge], { stdio: 'ignore', timeout: 10_000 });
  };
  const cleanupSync = () => {
    if (closed) return;
    closed = true;
    for (const h of hosts) killQuietly(h.sshd.pid);
    // Bounded: SIGKILL lands at once, but a busy kernel takes a moment to end a process.
    for (let i = 0; i < 50 && killSessions(); i++) spawnSync('sleep', ['0.1']);
    removeNetwork();
  };
  // A bench that fails or is interrupted exits through process.exit: remove the network on the way out.
  process.once('exit', cleanupSync);

  const close = async () => {
    if (closed) return;
    process.removeListener('exit', cleanupSync);
    for (const h of hosts) {
      if (h.sshd.exitCode === null && h.sshd.signalCode === null) {
        const gone = new Promise((r) => h.sshd.once('exit', r));
        killQuietly(h.sshd.pid, 'SIGTERM');
        await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
      }
    }
    // Sessions outlive the listening sshd (ControlPersist keeps them open): end whatever is left in there.
    for (let i = 0; i < 50 && killSessions(); i++) await new Promise((r) => setTimeout(r, 100));
    closed = true;
    removeNetwork();
  };

  try {
    mkdirSync(o.dir, { recursive: true, mode: 0o700 });
    const prefix = await freeSubnet();
    const gateway = `${prefix}.1`;
    await ip('link', 'add', bridge, 'type', 'bridge');
    await ip('addr', 'add', `${gateway}/24`, 'dev', bridge);
    await ip('link', 'set', bridge, 'up');

    const clientKey = join(o.dir, 'client_key');
    const authorizedKeys = join(o.dir, 'authorized_keys');
    writeFileSync(authorizedKeys, `${keygen(clientKey, 'takt-bench-client')}\n`, { mode: 0o600 });
    // sshd refuses to start without its privilege separation directory, which Debian's unit creates.
    mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });

    const knownHosts: string[] = [];
    for (const [i, n] of names.entries()) {
      const address = `${prefix}.${i + 2}`;
      const dir = join(o.dir, n.name);
      mkdirSync(dir, { mode: 0o700 });
      await ip('netns', 'add', n.ns);
      await ip('link', 'add', n.veth, 'type', 'veth', 'peer', 'name', `${n.veth}p`);
      await ip('link', 'set', `${n.veth}p`, 'netns', n.ns);
      await ip('link', 'set', n.veth, 'master', bridge);
      await ip('link', 'set', n.veth, 'up');
      await ip('-n', n.ns, 'link', 'set', `${n.veth}p`, 'name', 'eth0');
      await ip('-n', n.ns, 'addr', 'add', `${address}/24`, 'dev', 'eth0');
      await ip('-n', n.ns, 'link', 'set', 'eth0', 'up');
      await ip('-n', n.ns, 'link', 'set', 'lo', 'up');
      await ip('-n', n.ns, 'route', 'add', 'default', 'via', gateway);
      const hostKey = keygen(join(dir, 'ssh_host_ed25519_key'), `takt-bench-${n.name}`);
      knownHosts.push(`${address} ${hostKey}`);
      const config = join(dir, 'sshd_config');
      // A home of its own, as a separate server has: sessions start with this box's /root otherwise, and
      // bash (run by sshd) sources its .bashrc on every command — here a pyenv set-up costing ~0.2 s a
      // command that a typical server does not have.
      const home = join(dir, 'home');
      mkdirSync(home, { mode: 0o700 });
      writeFileSync(config, sshdConfig({ address, port: 22, dir, authorizedKeys, env: { HOME: home, ...(o.env?.({ name: n.name, dir }) ?? {}) } }), { mode: 0o600 });
      // Check the config first: sshd -D with a bad one exits with a message we want to show.
      const t = spawnSync(SSHD, ['-t', '-f', config], { encoding: 'utf8', timeout: 10_000 });
      if (t.status !== 0) throw new Error(`sshd -t -f ${config}: ${(t.stderr || t.stdout).trim()}`);
      let output = '';
      const sshd = spawn('ip', ['netns', 'exec', n.ns, SSHD, '-D', '-e', '-f', config], { stdio: ['ignore', 'pipe', 'pipe'] });
      sshd.stdout!.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
      sshd.stderr!.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
      hosts.push({ name: n.name, ns: n.ns, address, port: 22, dir, hostKey, sshd });
      await listening(address, 22, 15_000, () => (sshd.exitCode !== null || sshd.signalCode !== null ? `sshd for ${n.name} exited (${sshd.exitCode ?? sshd.signalCode}): ${output.trim()}` : null));
    }
    const knownHostsFile = join(o.dir, 'known_hosts');
    writeFileSync(knownHostsFile, knownHosts.join('\n') + '\n', { mode: 0o600 });

    const fleet: SshFleet = {
      hosts,
      gateway,
      user: 'root',
      clientKey,
      knownHosts: knownHostsFile,
      sshArgs: (h, controlDir) => [
        '-i', clientKey,
        '-o', 'IdentitiesOnly=yes',
        '-o', 'BatchMode=yes',
        '-o', `UserKnownHostsFile=${knownHostsFile}`,
        '-o', 'StrictHostKeyChecking=yes',
        '-o', 'ConnectTimeout=10',
        ...(controlDir ? ['-o', 'ControlMaster=auto', '-o', `ControlPath=${controlDir}/%C`, '-o', 'ControlPersist=60s'] : []),
        '-p', String(h.port),
        `root@${h.address}`,
      ],
      close,
    };
    // Every host lets us in, by key, with its pinned host key.
    await Promise.all(
      hosts.map(async (h) => {
        const r = spawnAsync('ssh', [...fleet.sshArgs(h), 'echo ok']);
        const { code, output } = await r;
        if (code !== 0 || output.trim() !== 'ok') throw new Error(`ssh root@${h.address} (${h.name}) failed (exit ${code}): ${output.trim()}`);
      }),
    );
    return fleet;
  } catch (err) {
    await close();
    throw err;
  }
}

/** Runs a command to its end (bounded by `timeoutMs`): exit code and stdout+stderr. */
export function spawnAsync(cmd: string, args: string[], timeoutMs = 60_000): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
    let output = '';
    p.stdout.on('data', (d: Buffer) => (output += d.toString()));
    p.stderr.on('data', (d: Buffer) => (output += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, output }));
  });
}

/**
 * Asks every ControlMaster whose socket is in `controlDir` to exit (`ssh -O exit`), e.g. the ones
 * ansible-playbook left behind with ControlPersist. Socket names do not matter: ssh is given each path.
 */
export async function closeMasters(controlDir: string): Promise<void> {
  let sockets: string[];
  try {
    sockets = readdirSync(controlDir).map((f) => join(controlDir, f));
  } catch {
    return;
  }
  await Promise.all(sockets.map((s) => spawnAsync('ssh', ['-o', `ControlPath=${s}`, '-O', 'exit', 'bench-host'], 10_000).catch(() => undefined)));
}

function nsPidsSync(ns: string): number[] {
  const r = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', timeout: 10_000 });
  return r.status === 0 ? r.stdout.split('\n').map(Number).filter((n) => Number.isInteger(n) && n > 0) : [];
}

function killQuietly(pid: number | undefined, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (!pid) return;
  try {
    process.kill(pid, signal);
  } catch {
    /* already gone */
  }
}
