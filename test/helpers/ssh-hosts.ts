/**
 * Agentless "remote hosts" for tests: network namespaces on a bridge this helper creates (10.251.X.0/24,
 * the host side of the bridge at .1), each running Debian's real `/usr/sbin/sshd -D` with a generated
 * host key and an authorized_keys for a generated client key. The endpoint, on loopback, reaches them
 * through the bridge. Needs root, iproute2 and openssh-server; `sshLabSkip()` says why not when missing.
 * Every name carries a random suffix; `destroy()` removes all of it (call it in afterAll).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const SSHD = '/usr/sbin/sshd';

/** Why SSH lab tests cannot run here, or null when they can. */
export function sshLabSkip(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces and sshd)';
  if (!existsSync(SSHD)) return `needs ${SSHD} (apt-get install openssh-server)`;
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
    execFileSync('ssh-keygen', ['-h'], { stdio: 'ignore' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'needs iproute2 and ssh-keygen';
  }
  return null;
}

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();

export interface SshHost {
  ns: string;
  address: string;
  port: number;
  /** This host's private test dir: its sshd config, keys, and the dirs tests give machines (root, dir). */
  dir: string;
  hostKey: string;
  sshd: ChildProcess | null;
}

export class SshLab {
  readonly hosts: SshHost[] = [];
  /** The client's private key (what `takt credentials add --ssh-key` gets). */
  readonly clientKey: string;
  private constructor(
    readonly tmp: string,
    readonly bridge: string,
    readonly prefix: string,
    private readonly tag: string,
  ) {
    this.clientKey = join(tmp, 'client_ed25519');
  }

  static async create(count: number): Promise<SshLab> {
    // sshd refuses to start without its privilege separation directory ("Missing privilege separation
    // directory: /run/sshd"). Debian's service start makes it; a machine where sshd was installed but never
    // started as a service (CI, containers) has none, and /run is emptied at every boot.
    mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
    const tag = randomBytes(3).toString('hex');
    const tmp = mkdtempSync(join(tmpdir(), `takt-ssh-lab-`));
    const used = ip('-4', 'route').split('\n');
    let third = -1;
    for (let tries = 0; tries < 256 && third < 0; tries++) {
      const x = (randomBytes(1)[0]! + tries) % 256;
      if (!used.some((l) => l.startsWith(`10.251.${x}.`))) third = x;
    }
    if (third < 0) throw new Error('no free /24 in 10.251.0.0/16');
    const lab = new SshLab(tmp, `tksb-${tag}`, `10.251.${third}`, tag);
    try {
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'takt-test-client', '-f', lab.clientKey]);
      ip('link', 'add', lab.bridge, 'type', 'bridge');
      ip('addr', 'add', `${lab.prefix}.1/24`, 'dev', lab.bridge);
      ip('link', 'set', lab.bridge, 'up');
      for (let i = 0; i < count; i++) await lab.addHost(i);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
    return lab;
  }

  private async addHost(i: number): Promise<void> {
    const ns = `tks-${this.tag}-${i}`;
    const host = `tksh${this.tag}${i}`;
    const peer = `tksp${this.tag}${i}`;
    const address = `${this.prefix}.${10 + i}`;
    const dir = join(this.tmp, `host${i}`);
    mkdirSync(dir, { mode: 0o700 });
    ip('netns', 'add', ns);
    const h: SshHost = { ns, address, port: 22, dir, hostKey: join(dir, 'host_ed25519'), sshd: null };
    this.hosts.push(h);
    ip('link', 'add', host, 'type', 'veth', 'peer', 'name', peer);
    ip('link', 'set', host, 'master', this.bridge);
    ip('link', 'set', host, 'up');
    ip('link', 'set', peer, 'netns', ns);
    ip('-n', ns, 'link', 'set', peer, 'name', 'eth0');
    ip('-n', ns, 'addr', 'add', `${address}/24`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    writeFileSync(join(dir, 'authorized_keys'), readFileSync(`${this.clientKey}.pub`), { mode: 0o600 });
    this.newHostKey(i);
    await this.startSshd(i);
  }

  /** Replaces host `i`'s host key with a new one (restart sshd to use it). */
  newHostKey(i: number): void {
    const h = this.hosts[i]!;
    rmSync(h.hostKey, { force: true });
    rmSync(`${h.hostKey}.pub`, { force: true });
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `takt-test-host${i}`, '-f', h.hostKey]);
  }

  /** `SHA256:…` of host `i`'s key as ssh-keygen prints it. */
  fingerprint(i: number): string {
    return execFileSync('ssh-keygen', ['-lf', `${this.hosts[i]!.hostKey}.pub`]).toString().split(' ')[1]!;
  }

  async startSshd(i: number): Promise<void> {
    const h = this.hosts[i]!;
    const config = join(h.dir, 'sshd_config');
    writeFileSync(
      config,
      [
        'Port 22',
        `ListenAddress ${h.address}`,
        `HostKey ${h.hostKey}`,
        `PidFile ${join(h.dir, 'sshd.pid')}`,
        `AuthorizedKeysFile ${join(h.dir, 'authorized_keys')}`,
        'PermitRootLogin prohibit-password',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'StrictModes no',
        'PrintMotd no',
        'MaxStartups 100',
        'MaxSessions 50',
        'LogLevel INFO',
        '',
      ].join('\n'),
    );
    // A clean host: sessions run `bash -c` as root, and Debian's bash then reads root's ~/.bashrc (sshd's
    // SSH_CLIENT), which on a developer or CI machine may take seconds (pyenv init, ~0.5 s quiet): more than
    // a command may take with the tests' short leases. The lab's sshd gets its own mount namespace with an
    // empty /root, as a fresh host has.
    const cmd = `mount -t tmpfs -o mode=0700 takt-lab-root /root && exec ${SSHD} -D -f ${config} -E ${join(h.dir, 'sshd.log')}`;
    const p = spawn('ip', ['netns', 'exec', h.ns, 'unshare', '--mount', '--propagation', 'private', 'sh', '-c', cmd], { stdio: 'ignore' });
    h.sshd = p;
    // Up when it accepts TCP on port 22 in its namespace (bounded).
    for (let t = 0; t < 100; t++) {
      if (p.exitCode !== null) throw new Error(`sshd exited ${p.exitCode}: ${readFileSync(join(h.dir, 'sshd.log'), 'utf8').slice(-500)}`);
      try {
        execFileSync('ip', ['netns', 'exec', h.ns, 'bash', '-c', `exec 3<>/dev/tcp/${h.address}/22`], { stdio: 'ignore', timeout: 2000 });
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    throw new Error(`sshd in ${h.ns} did not come up`);
  }

  /**
   * Stops host `i`'s sshd listener. Sessions it already forked live on, as with a real restart of sshd;
   * with `sessions`, they go too (the host rebooted or was reinstalled).
   */
  async stopSshd(i: number, sessions = false): Promise<void> {
    const p = this.hosts[i]!.sshd;
    this.hosts[i]!.sshd = null;
    if (!p || p.exitCode !== null || p.pid === undefined) return;
    const children = sessions ? childrenOf(p.pid) : [];
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await exited;
    for (const c of children) {
      try {
        process.kill(c, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }

  /** SSH logins host `i`'s sshd has accepted (each is one connection). */
  logins(i: number): number {
    const log = join(this.hosts[i]!.dir, 'sshd.log');
    return existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter((l) => l.includes('Accepted publickey')).length : 0;
  }

  /**
   * Kills (by pid) what the tests left running on the hosts: the process groups the job wrappers recorded
   * under this lab's dir, and processes whose command line names that dir.
   */
  killLeftovers(): number {
    let n = 0;
    const walk = (d: string): string[] =>
      readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(d, e.name)) : e.name === 'pgid' ? [join(d, e.name)] : []));
    for (const f of existsSync(this.tmp) ? walk(this.tmp) : []) {
      const pgid = Number(readFileSync(f, 'utf8'));
      try {
        if (pgid > 1) process.kill(-pgid, 'SIGKILL');
        n++;
      } catch {
        /* gone */
      }
    }
    for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
      let cmd = '';
      try {
        cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      } catch {
        continue;
      }
      if (!cmd.includes(this.tmp) || Number(pid) === process.pid) continue;
      try {
        process.kill(Number(pid), 'SIGKILL');
        n++;
      } catch {
        /* gone */
      }
    }
    return n;
  }

  /** Runs a command in host `i`'s namespace (its files are this host's: the namespace is only a network). */
  sh(i: number, script: string): string {
    return execFileSync('ip', ['netns', 'exec', this.hosts[i]!.ns, 'bash', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 }).toString();
  }

  async destroy(): Promise<void> {
    for (let i = 0; i < this.hosts.length; i++) await this.stopSshd(i).catch(() => undefined);
    this.killLeftovers();
    for (const h of this.hosts) {
      try {
        ip('netns', 'del', h.ns);
      } catch {
        /* gone */
      }
    }
    try {
      ip('link', 'del', this.bridge);
    } catch {
      /* gone */
    }
    rmSync(this.tmp, { recursive: true, force: true });
  }
}

/** Pids whose parent is `pid` (from /proc). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return out;
}
