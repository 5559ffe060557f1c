/**
 * One boot lab for the VM tests that run `takt serve` inside a network namespace (test/provision-e2e,
 * -uefi, -proxy, -discovery, -leases, -qemu-bridge, -broker-discovery): the namespace (by default
 * holding bridge `br0`, or `bridgeName`, at `<prefix>.1/24`), a temporary directory with the endpoint's
 * data directory, `takt serve` spawned under `ip netns exec` with its output captured and waited for (the
 * `boot-url` file), the takt CLI and curl run inside the namespace, and the teardown (serve SIGTERM then
 * SIGKILL, bounded; namespaces deleted; the directory and the VM directories of test/helpers/provision.ts
 * removed; `killBrokerVms` for the qemu broker's VMs, which outlive their endpoint).
 * Each test keeps its own namespace prefix and subnet (`netnsPrefix`, `subnet`); nothing is sent beyond
 * loopback and the lab's own namespaces.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qemuPidOf } from '../../src/brokers/qemu/vm.js';
import { TAKT, type CliResult } from './endpoint.js';
import { bootArtifacts, removeVmDirs } from './provision.js';

/**
 * Polls `f` until it returns a value other than `undefined`, at most `ms` milliseconds (an observable
 * condition, not a sleep); the pause between polls doubles from 20 ms up to `maxStepMs`.
 * Throws `timed out after <ms> ms waiting for <what>` followed by `detail()` (e.g. the captured output).
 */
export async function until<T>(f: () => Promise<T | undefined> | T | undefined, ms: number, what: string, detail: () => string = () => '', maxStepMs = 500): Promise<T> {
  const deadline = Date.now() + ms;
  for (let i = 0; ; i++) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}\n${detail()}`);
    await new Promise((r) => setTimeout(r, Math.min(20 * 2 ** i, maxStepMs)));
  }
}

/**
 * Ends a child process: SIGTERM, then SIGKILL if it has not exited within `graceMs` milliseconds.
 * Does nothing for a process that is null or already gone. Never throws.
 */
export async function stopProcess(p: ChildProcess | null | undefined, graceMs = 15_000): Promise<void> {
  if (!p || p.exitCode !== null || p.signalCode !== null) return;
  const gone = new Promise<void>((r) => p.once('exit', () => r()));
  p.kill('SIGTERM');
  await Promise.race([gone, new Promise((r) => setTimeout(r, graceMs))]);
  if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
}

/** How a `BootLab` is named and laid out. */
export interface BootLabOptions {
  /** The namespace name's prefix, e.g. `tkwire-`; a random 6-hex-digit tag follows. */
  netnsPrefix: string;
  /** The first two octets of the lab's /16, e.g. `10.218`; the third comes from the tag (1-250). */
  subnet: string;
  /** The temporary directory's name prefix under the system tmpdir, e.g. `takt-e2e-`. */
  dirPrefix: string;
  /** The data directory's name inside it (default `data`; short names keep QMP socket paths under 108 bytes). */
  dataName?: string;
  /** Make bridge `br0` at `<prefix>.1/24` in the namespace (default true); false leaves the segment to the test. */
  bridge?: boolean;
  /** The bridge's name when one is made (default `br0`), e.g. a name with the test's own prefix. */
  bridgeName?: string;
  /** The default timeout of `cli()` in milliseconds (default 60 000). */
  cliTimeoutMs?: number;
}

/** How `BootLab.serve` starts the endpoint. */
export interface ServeOptions {
  /** Extra environment for `takt serve` (NO_COLOR=1 is always set). */
  env?: Record<string, string>;
  /** How long to wait for the `boot-url` file, in milliseconds (default 60 000). */
  startMs?: number;
}

/**
 * A private network namespace with `takt serve` in it. Constructing one has no side effects (the names are
 * chosen); `open()` makes the directory and namespace, `serve()` starts the endpoint, `stop()` undoes
 * everything that was made, whatever failed in between. Needs root and iproute2 (and curl for `get`).
 */
export class BootLab {
  /** The random 6-hex-digit tag in the namespace's name. */
  readonly tag: string;
  /** The namespace's name: `<netnsPrefix><tag>`. */
  readonly netns: string;
  /** The segment's first three octets, e.g. `10.218.37` (the host is `<prefix>.1`). */
  readonly prefix: string;
  /** The bridge's name in the namespace (`bridgeName`, default `br0`); made by `open()` unless `bridge: false`. */
  readonly bridge: string;
  /** The temporary directory (set by `open()`); removed by `stop()`. */
  dir = '';
  /** The endpoint's data directory, `<dir>/<dataName>` (set by `open()`). */
  data = '';
  /** The API URL `takt serve` wrote to `<data>/endpoint` (inside the namespace: its loopback listener). */
  endpoint = '';
  /** The admin token from `<data>/admin.token`. */
  token = '';
  /** The boot service's URL from `<data>/boot-url`. */
  bootUrl = '';
  /** Everything every `takt serve` of this lab printed, stdout and stderr interleaved. */
  output = '';
  /** The running `takt serve` (null before `serve()` and after `stopServe()`). */
  serveProcess: ChildProcess | null = null;
  private readonly opts: BootLabOptions;
  private readonly namespaces: string[] = [];

  constructor(opts: BootLabOptions) {
    this.opts = opts;
    this.tag = randomBytes(3).toString('hex');
    this.netns = `${opts.netnsPrefix}${this.tag}`;
    this.prefix = `${opts.subnet}.${1 + (parseInt(this.tag, 16) % 250)}`;
    this.bridge = opts.bridgeName ?? 'br0';
  }

  /** Runs `ip ARGS…` (10 s limit); throws with ip's stderr on failure. */
  ip(...a: string[]): void {
    execFileSync('ip', a, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
  }

  /** Adds namespace `name` (with loopback up) and deletes it in `stop()`. */
  addNetns(name: string): void {
    this.ip('netns', 'add', name);
    this.namespaces.push(name);
    this.ip('-n', name, 'link', 'set', 'lo', 'up');
  }

  /** Makes the temporary directory and the namespace (and the bridge at `<prefix>.1/24` unless `bridge: false`). */
  open(): void {
    this.dir = mkdtempSync(join(tmpdir(), this.opts.dirPrefix));
    this.data = join(this.dir, this.opts.dataName ?? 'data');
    this.addNetns(this.netns);
    if (this.opts.bridge === false) return;
    this.ip('-n', this.netns, 'link', 'add', this.bridge, 'type', 'bridge');
    this.ip('-n', this.netns, 'addr', 'add', `${this.prefix}.1/24`, 'dev', this.bridge);
    this.ip('-n', this.netns, 'link', 'set', this.bridge, 'up');
  }

  /**
   * Starts `takt serve --data <data> ARGS…` in the namespace and waits for its boot services (the
   * `boot-url` file; stale `endpoint`/`boot-url` files of an earlier run are removed first), then reads
   * `endpoint`, `token` and `bootUrl`. Throws when serve exits first or does not start in time.
   */
  async serve(args: string[], o: ServeOptions = {}): Promise<void> {
    rmSync(join(this.data, 'endpoint'), { force: true });
    rmSync(join(this.data, 'boot-url'), { force: true });
    const p = spawn('ip', ['netns', 'exec', this.netns, process.execPath, TAKT, 'serve', '--data', this.data, ...args], { env: { ...process.env, NO_COLOR: '1', ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.serveProcess = p;
    p.stdout!.on('data', (d: Buffer) => (this.output += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (this.output += d.toString()));
    await until(() => (existsSync(join(this.data, 'boot-url')) ? true : p.exitCode !== null ? false : undefined), o.startMs ?? 60_000, 'takt serve to start its boot services', () => this.output);
    if (p.exitCode !== null) throw new Error(`takt serve exited with code ${p.exitCode} before its boot services started\n${this.output}`);
    this.endpoint = readFileSync(join(this.data, 'endpoint'), 'utf8').trim();
    this.token = readFileSync(join(this.data, 'admin.token'), 'utf8').trim();
    this.bootUrl = readFileSync(join(this.data, 'boot-url'), 'utf8').trim();
  }

  /**
   * `serve` as the VM tests run it: the API on loopback and on `<prefix>.1:8443`, 10 s leases, boot
   * services for `<prefix>.1/24` with full DHCP on `.100–.150`, and the qemu broker's VMs on the lab's
   * bridge (TCG unless TAKT_QEMU_ACCEL says otherwise). `args`: more serve flags; `env`: more environment.
   */
  async serveVms(o: { args?: string[]; env?: Record<string, string> } = {}): Promise<void> {
    const p = this.prefix;
    await this.serve(['--listen', '127.0.0.1:0', '--listen', `${p}.1:8443`, '--lease', '10s', '--provision', `${p}.1/24`, '--dhcp', 'full', '--dhcp-range', `${p}.100-${p}.150`, '--boot-port', '0', '--qemu-bridge', this.bridge, ...(o.args ?? [])], {
      env: { TAKT_QEMU_ACCEL: process.env.TAKT_QEMU_ACCEL ?? 'tcg', ...o.env },
      startMs: 120_000,
    });
  }

  /**
   * A VM lab from nothing: Debian's kernel in the provisioning cache (fetched on the host: the namespace
   * has no route out), `open()`, then `serveVms(o)`.
   */
  async startVms(o: { args?: string[]; env?: Record<string, string> } = {}): Promise<void> {
    await bootArtifacts();
    this.open();
    await this.serveVms(o);
  }

  /**
   * Ends a VM lab: the endpoint first (its supervisor would start a killed VM again), then the qemu of
   * every VM it left (qemu outlives its endpoint on purpose), then `stop()`. Never throws.
   */
  async close(): Promise<void> {
    await this.stopServe();
    this.killBrokerVms();
    await this.stop();
  }

  /** Ends `takt serve` (SIGTERM, then SIGKILL after `graceMs`); its output stays in `output`. */
  async stopServe(graceMs = 15_000): Promise<void> {
    await stopProcess(this.serveProcess, graceMs);
  }

  /** A takt CLI command inside the namespace against this lab's endpoint and admin token; never rejects. */
  cli(args: string[], timeoutMs = this.opts.cliTimeoutMs ?? 60_000): Promise<CliResult> {
    return new Promise((resolve) => {
      execFile('ip', ['netns', 'exec', this.netns, process.execPath, TAKT, ...args], { env: { ...process.env, NO_COLOR: '1', TAKT_ENDPOINT: this.endpoint, TAKT_TOKEN: this.token }, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
      );
    });
  }

  /** An HTTP GET with curl inside the namespace (30 s limit); status 0 when no answer. Body as latin1 text. */
  get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
    const h = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
    return new Promise((resolve) => {
      execFile('ip', ['netns', 'exec', this.netns, 'curl', '-s', ...h, '-o', '-', '-w', '\n%{http_code}', url], { timeout: 30_000, maxBuffer: 64 << 20, encoding: 'latin1' }, (_err, stdout) => {
        const i = stdout.lastIndexOf('\n');
        resolve({ status: Number(stdout.slice(i + 1)) || 0, body: stdout.slice(0, i) });
      });
    });
  }

  /**
   * Ends (SIGKILL) the qemu of every VM the endpoint's qemu broker made under `<data>/qemu/` that still
   * runs — qemu outlives its endpoint on purpose, so a VM a failed test left is ended by its pid (checked
   * against /proc by `qemuPidOf`). Returns the pids it killed. Never throws.
   */
  killBrokerVms(): number[] {
    const vms = this.data ? join(this.data, 'qemu') : '';
    if (!vms || !existsSync(vms)) return [];
    const killed: number[] = [];
    for (const id of readdirSync(vms)) {
      const pid = qemuPidOf(join(vms, id));
      if (pid === null) continue;
      try {
        process.kill(pid, 'SIGKILL');
        killed.push(pid);
      } catch {
        // gone meanwhile
      }
    }
    return killed;
  }

  /**
   * Tears down what the lab made: `takt serve` (SIGTERM, SIGKILL after `graceMs`), the namespaces, the
   * directory, and the VM directories (`removeVmDirs`). Kill the VMs first. Never throws.
   */
  async stop(graceMs = 15_000): Promise<void> {
    await this.stopServe(graceMs);
    for (const ns of this.namespaces.splice(0)) {
      try {
        this.ip('netns', 'del', ns);
      } catch {
        // already gone
      }
    }
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    removeVmDirs();
  }
}
