/**
 * Starts a real endpoint (`takt serve` as a child process, real SQLite file, real local agents) in a temp
 * data dir, and runs the real CLI against it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { qemuPidOf } from '../../src/brokers/qemu/vm.js';
import { ApiClient } from '../../src/client/http.js';
import { bridgeOf } from './netns.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const TAKT = join(ROOT, 'bin', 'takt.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], env: Record<string, string> = {}, input?: string): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [TAKT, ...args], { env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0', ...env }, cwd: ROOT });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    if (input !== undefined) p.stdin.end(input);
    else p.stdin.end();
  });
}

/** A parsed API answer: tests read whatever shape the route answers. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Answer = { status: number; body: any };

export class Endpoint {
  proc: ChildProcess | null = null;
  url = '';
  token = '';
  output = '';

  constructor(
    readonly data: string,
    private readonly args: string[],
    private readonly env: Record<string, string> = {},
    private readonly uid?: number,
  ) {}

  /** `env` reaches the server and, through it, the local agents it starts (e.g. TAKT_AGENT_CHAOS). */
  /** `uid` runs the server as that user (and group of the same number), on a data dir it owns. */
  /** `listen`: more `--listen` addresses (non-loopback ones serve HTTPS); `args`: more serve flags. */
  static async start(opts: { demo?: boolean; lease?: string; data?: string; env?: Record<string, string>; uid?: number; listen?: string[]; args?: string[] } = {}): Promise<Endpoint> {
    const data = opts.data ?? mkdtempSync(join(tmpdir(), 'takt-test-'));
    if (opts.uid !== undefined) chownSync(data, opts.uid, opts.uid);
    const args = ['serve', '--listen', '127.0.0.1:0', '--data', data, '--lease', opts.lease ?? '5s'];
    if (opts.demo) args.push('--demo');
    for (const l of opts.listen ?? []) args.push('--listen', l);
    args.push(...(opts.args ?? []));
    const ep = new Endpoint(data, args, opts.env, opts.uid);
    await ep.boot();
    return ep;
  }

  /**
   * One API call (path under /api/v1) with fetch: the status and the parsed JSON body. `token`: undefined
   * sends the admin token, null none; `raw` sends that text as the JSON body instead of `body`.
   */
  async call(method: string, path: string, body?: unknown, token?: string | null, raw?: string): Promise<Answer> {
    const headers: Record<string, string> = body !== undefined || raw !== undefined ? { 'content-type': 'application/json' } : {};
    const t = token === undefined ? this.token : token;
    if (t) headers.authorization = `Bearer ${t}`;
    const send = () => fetch(`${this.url}/api/v1${path}`, { method, headers, body: raw ?? (body === undefined ? undefined : JSON.stringify(body)) });
    // A test that blocked its event loop for longer than the server's keep-alive timeout (spawnSync of a join
    // one-liner on a loaded machine) sends its next request on a pooled socket the server closed while idle
    // ("other side closed", before any answer). The server closes only idle sockets, so that request was
    // never read: sending it again on a new connection is safe. Once.
    const res = await send().catch((err: unknown) => {
      const code = ((err as Error).cause as { code?: string } | undefined)?.code;
      if (code === 'UND_ERR_SOCKET') return send();
      throw err;
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  }

  /**
   * The boot services' URL (`takt serve --provision`): the `boot-url` file, which serve writes once they
   * listen — after the `endpoint` file `boot()` waits for, so it is waited for too (bounded, 60 s).
   */
  async bootUrl(): Promise<string> {
    const file = join(this.data, 'boot-url');
    return until(async () => (existsSync(file) ? readFileSync(file, 'utf8').trim() : undefined), 60_000, `${file} (the boot services to listen)`);
  }

  /** (Re)starts the server process on the same data dir. */
  async boot(): Promise<void> {
    rmSync(join(this.data, 'endpoint'), { force: true });
    // A restart comes back on the same port, as a real endpoint does: surviving agents know that address.
    const args = this.url ? this.args.map((a) => (a === '127.0.0.1:0' ? new URL(this.url).host : a)) : this.args;
    const as = this.uid === undefined ? {} : { uid: this.uid, gid: this.uid };
    const p = spawn(process.execPath, [TAKT, ...args], { env: { ...process.env, NO_COLOR: '1', ...this.env }, stdio: ['ignore', 'pipe', 'pipe'], ...as });
    this.proc = p;
    const from = this.output.length;
    p.stdout!.on('data', (d: Buffer) => (this.output += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (this.output += d.toString()));
    const deadline = Date.now() + 60_000;
    while (!existsSync(join(this.data, 'endpoint'))) {
      if (p.exitCode !== null) throw new Error(`takt serve exited ${p.exitCode}:\n${this.output}`);
      if (Date.now() > deadline) throw new Error(`takt serve did not start:\n${this.output}`);
      await sleep(50);
    }
    this.url = readFileSync(join(this.data, 'endpoint'), 'utf8').trim();
    this.token = readFileSync(join(this.data, 'admin.token'), 'utf8').trim();
    const started = Date.now();
    let last = '';
    for (let tries = 1; ; tries++) {
      const res = await fetch(`${this.url}/api/v1/health`, { signal: AbortSignal.timeout(5000) }).catch((err: Error) => {
        last = `${err.message}${err.cause ? ` (${(err.cause as Error).message ?? String(err.cause)})` : ''}`;
        return null;
      });
      if (res?.status === 200) break;
      if (res) last = `HTTP ${res.status}`;
      if (p.exitCode !== null) throw new Error(`takt serve exited ${p.exitCode}:\n${this.output}`);
      if (Date.now() > deadline) {
        throw new Error(`takt serve at ${this.url} did not answer /api/v1/health in ${Date.now() - started} ms (${tries} tries; last: ${last}):\n${this.output}`);
      }
      await sleep(50);
    }
    // `--demo` makes its machines after the endpoint listens (and writes `endpoint`): a test that asks for
    // them at once would find none. Its last line says the demo is set up, or why it is not.
    if (this.args.includes('--demo')) {
      await until(async () => /demo: (created |left existing |no demo machines made)/.test(this.output.slice(from)), 60_000, `the demo to be set up:\n${this.output.slice(from)}`);
    }
  }

  /** The URLs the last start listened on, from its log (`listening on http://…, https://…`). */
  get listening(): string[] {
    const lines = [...this.output.matchAll(/listening on (\S.*?)(?: data=|\n)/g)];
    const last = lines.at(-1)?.[1] ?? '';
    return last.split(', ').map((u) => u.trim()).filter(Boolean);
  }

  /** The first HTTPS listener's URL (throws when there is none). */
  get httpsUrl(): string {
    const u = this.listening.find((x) => x.startsWith('https://'));
    if (!u) throw new Error(`no https listener in:\n${this.output}`);
    return u;
  }

  get api(): ApiClient {
    return new ApiClient({ endpoint: this.url, token: this.token });
  }

  cli(args: string[]): Promise<CliResult> {
    return runCli(args, { TAKT_ENDPOINT: this.url, TAKT_TOKEN: this.token });
  }

  /** kill -9: no shutdown hooks run, agents stay up. */
  async crash(): Promise<void> {
    const p = this.proc!;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await exited;
  }

  /**
   * A graceful stop (SIGTERM, the shutdown hooks run) that keeps the data dir, for a test that starts the
   * endpoint again (`boot`) or reads its files; `stop` removes it. Fails after 30 s with the endpoint's output.
   */
  async terminate(): Promise<void> {
    const p = this.proc!;
    if (p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`takt serve did not stop in 30 s:\n${this.output}`)), 30_000);
      p.once('exit', () => {
        clearTimeout(t);
        resolve();
      });
    });
    p.kill('SIGTERM');
    await exited;
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (p && p.exitCode === null && p.signalCode === null) {
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGTERM');
      await Promise.race([exited, sleep(15_000)]);
      if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    }
    // Belt and braces: no agent (and no VM of the qemu broker, which outlives its endpoint) outlives its test.
    killAgents(this.data);
    killVms(this.data);
    removeEmptyBridge(this.data);
    rmSync(this.data, { recursive: true, force: true });
  }
}

/**
 * The netns broker's bridge for this data dir (as src/brokers/netns.ts names it: helpers/netns.ts), when nothing is
 * attached to it any more: an endpoint that was killed, or stopped with machines left, keeps it on purpose
 * for its next start, but a test's endpoint has none.
 */
function removeEmptyBridge(data: string) {
  const bridge = bridgeOf(data);
  const members = join('/sys/class/net', bridge, 'brif');
  if (existsSync(members) && readdirSync(members).length === 0) spawnSync('ip', ['link', 'del', bridge], { stdio: 'ignore' });
}

/** The qemu broker's VMs of this data dir (`<data>/qemu/<id>/qemu.pid`, checked by qemuPidOf), killed. */
function killVms(data: string) {
  const dir = join(data, 'qemu');
  if (!existsSync(dir)) return;
  for (const id of readdirSync(dir)) {
    const pid = qemuPidOf(join(dir, id));
    if (pid) process.kill(pid, 'SIGKILL');
  }
}

function killAgents(data: string) {
  const dir = join(data, 'machines');
  if (!existsSync(dir)) return;
  for (const id of readdirSync(dir)) {
    try {
      const pid = Number(readFileSync(join(dir, id, 'agent.pid'), 'utf8'));
      process.kill(-pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}




export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls until `fn` returns a truthy value (or throws after `ms`). */
export async function until<T>(fn: () => Promise<T | undefined | null | false>, ms = 30_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(100);
  }
}

/** Reads a pack directory under test/packs as the API's `files` body. */
export async function packFiles(name: string): Promise<Record<string, string>> {
  const { readPackDir } = await import('../../src/content/files.js');
  return readPackDir(join(ROOT, 'test', 'packs', name));
}

/** Writes a pack directory from PackFiles (path → text) so the CLI can lint, bundle or push it. */
export function writePack(dir: string, files: Record<string, string>): void {
  for (const [path, text] of Object.entries(files)) {
    const full = join(dir, path);
    mkdirSync(dirname(full), { recursive: true });
    writeFileSync(full, text);
  }
}

/**
 * Runs a `takt serve` on `data` that must refuse to start (a second endpoint on a data dir, a replica
 * without the shared keys…): its exit code and stderr. Killed after 60 s, so a start that was not refused
 * fails the test rather than hanging it. `env`: more environment (TAKT_STORE).
 */
export function serveRefusal(data: string, env: Record<string, string> = {}): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [TAKT, 'serve', '--listen', '127.0.0.1:0', '--data', data], { env: { ...process.env, NO_COLOR: '1', ...env }, cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 60_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stderr });
    });
  });
}
