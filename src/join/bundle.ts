/**
 * The agent bundle a joining host installs: the takt CLI bundled by esbuild into one ESM tree (no
 * node_modules), this endpoint's own Node runtime with the shared libraries it needs beyond glibc, and a
 * `bin/takt` wrapper that runs one with the other — so a Linux x86_64 host with glibc but no Node.js can
 * run the agent. Built on first use into a cache directory, keyed by takt version, Node version and a
 * hash of the compiled code; never committed. Layout inside the .tar.gz:
 *
 *   bin/takt        sh wrapper: LD_LIBRARY_PATH=lib, exec lib/node app/cli/start.js "$@"
 *   lib/node        the Node runtime (process.execPath), lib/*.so* its non-glibc libraries (ldd)
 *   app/cli/start.js  restores the caller's LD_LIBRARY_PATH for child processes, then imports main.js
 *   app/cli/*.js    the CLI (esbuild: ESM, code splitting, better-sqlite3 left out: agents need no store)
 *   package.json    `type: module` and the version: at the depth dist/cli/ has it, so code that reads
 *                   `new URL('../../package.json', import.meta.url)` finds it here too
 *   BUNDLE.json     what it was built from
 *
 * Packed with the `tar` package (node-tar) on zlib, so building needs no GNU tar on the endpoint and
 * the archive holds no user or group names of the endpoint (docs/decisions.md).
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, copyFile, mkdir, open as fsOpen, readdir, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { basename, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { TaktError } from '../model/errors.js';
import { bundleCli } from '../build/esbuild.js';

const run = promisify(execFile);

/** Moved on when what a bundle holds changes for the same inputs (2: the runtime is stripped), so caches rebuild. */
const BUNDLE_LAYOUT = 2;

/**
 * Strips the symbol tables and debug information from an ELF file in place with binutils' `strip`
 * (Node's release binary carries ~13 MB of them: 99 → 86 MB for Node 20). Every joining host downloads
 * the runtime and every discovered machine unpacks it from its initramfs at boot, so this is time on
 * both; the runtime needs none of it to run.
 * @returns false when `strip` is not installed (the file is left as it was).
 * @throws TaktError unavailable when `strip` runs and fails.
 */
export async function stripSymbols(file: string): Promise<boolean> {
  try {
    await run('strip', ['--strip-all', file]);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new TaktError('unavailable', `cannot build the agent bundle: strip ${file} failed: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`);
  }
}

/** Libraries glibc itself provides: every glibc host has them, and they must match its loader. */
const GLIBC = /^(linux-vdso|linux-gate|ld-linux[\w.-]*|libc|libm|libdl|libpthread|librt|libresolv|libutil|libanl|libnsl|libmvec|libBrokenLocale)\.so/;

export interface BundleOptions {
  /** Where built bundles are kept, one directory per key (e.g. the data dir's `bundles/`). */
  cacheDir: string;
  /** The takt version the bundle carries. */
  version: string;
  /** The takt package whose `dist/cli/main.js` is bundled (default: the one this module belongs to). */
  packageRoot?: string;
  /** The Node runtime shipped (default: the one running the endpoint). */
  nodePath?: string;
  log?: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
}

export interface BuiltBundle {
  /** The .tar.gz file. */
  path: string;
  bytes: number;
  /** SHA-256 of the file, hex. */
  sha256: string;
}

export const WRAPPER = `#!/bin/sh
# takt agent bundle: the takt CLI on the Node runtime shipped beside it (the host needs no Node.js).
here=$(cd "$(dirname "$0")/.." && pwd) || exit 1
# The runtime needs its own C++ libraries first; app/cli/start.js puts the caller's LD_LIBRARY_PATH back
# for the processes takt starts, so task scripts see the host's libraries, not these.
if [ "\${LD_LIBRARY_PATH+set}" = set ]; then TAKT_SAVED_LD_LIBRARY_PATH=$LD_LIBRARY_PATH; export TAKT_SAVED_LD_LIBRARY_PATH; fi
LD_LIBRARY_PATH="$here/lib\${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
TAKT_BUNDLE_LIB="$here/lib"
export LD_LIBRARY_PATH TAKT_BUNDLE_LIB
exec "$here/lib/node" "$here/app/cli/start.js" "$@"
`;

export const START = `// Entry point of the takt agent bundle (see bin/takt).
if (process.env.TAKT_BUNDLE_LIB !== undefined) {
  if (process.env.TAKT_SAVED_LD_LIBRARY_PATH !== undefined) process.env.LD_LIBRARY_PATH = process.env.TAKT_SAVED_LD_LIBRARY_PATH;
  else delete process.env.LD_LIBRARY_PATH;
  delete process.env.TAKT_SAVED_LD_LIBRARY_PATH;
  delete process.env.TAKT_BUNDLE_LIB;
}
await import('./main.js');
`;

/** Packages the agent bundle leaves out (see bundleCli). */
const AGENT_EXTERNAL = ['better-sqlite3', 'ssh2', 'cpu-features'];

/** Bundles of other keys are removed once they have not been built for this long. */
const PRUNE_AFTER_MS = 24 * 3600_000;

/** Builds the bundle at most once per key and process; concurrent callers share one build. */
export class AgentBundle {
  private building: Promise<BuiltBundle> | null = null;
  private readonly root: string;
  private readonly node: string;

  constructor(private readonly opts: BundleOptions) {
    this.root = opts.packageRoot ?? fileURLToPath(new URL('../../', import.meta.url));
    this.node = opts.nodePath ?? process.execPath;
  }

  /**
   * The bundle, from the cache or built now (a few seconds: packing the ~100 MB runtime dominates).
   * A failed build is not remembered: the next call tries again.
   * @throws TaktError unavailable when it cannot be built here (no compiled CLI, no ldd), saying why.
   */
  get(): Promise<BuiltBundle> {
    this.building ??= this.load().catch((err: unknown) => {
      this.building = null;
      this.opts.log?.('error', `agent bundle not built: ${(err as Error).message}`);
      throw err;
    });
    return this.building;
  }

  private async load(): Promise<BuiltBundle> {
    const dir = join(this.opts.cacheDir, await this.key());
    const cached = await readBuilt(dir);
    if (cached) return cached;
    await mkdir(this.opts.cacheDir, { recursive: true, mode: 0o700 });
    const tmp = join(this.opts.cacheDir, `.build-${randomBytes(6).toString('hex')}`);
    const started = Date.now();
    try {
      await this.build(tmp);
      // One rename makes the whole directory appear; when another process got there first, its is kept.
      await rename(tmp, dir).catch(async (err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
      });
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
    const built = await readBuilt(dir);
    if (!built) throw new TaktError('unavailable', `the agent bundle was built but ${dir} is incomplete`);
    this.opts.log?.('info', 'agent bundle built', { path: built.path, bytes: built.bytes, ms: Date.now() - started });
    await this.prune(basename(dir));
    return built;
  }

  /** `takt-<version>-node<version>-<hash of the compiled CLI and the runtime file>`. */
  private async key(): Promise<string> {
    const dist = join(this.root, 'dist');
    // dist/bundle is the endpoint's own bundle of the same code (build/esbuild.ts): a derivative, 6 MB to
    // hash for nothing, so the key is of the compiled modules only.
    const files = (await listFiles(dist).catch(() => {
      throw new TaktError('unavailable', `cannot build the agent bundle: the compiled CLI is missing (${dist}); run \`npm run build\` in ${this.root}`);
    })).filter((f) => !relative(dist, f).startsWith(`bundle${sep}`));
    const h = createHash('sha256');
    for (const f of files) h.update(relative(dist, f)).update('\0').update(await readFile(f)).update('\0');
    const n = await stat(this.node);
    h.update(`${this.node}\0${n.size}\0${n.mtimeMs}\0${BUNDLE_LAYOUT}`);
    return `takt-${this.opts.version}-node${process.versions.node}-${h.digest('hex').slice(0, 16)}`;
  }

  private async build(tmp: string): Promise<void> {
    const stage = join(tmp, 'stage');
    await mkdir(join(stage, 'bin'), { recursive: true });
    await mkdir(join(stage, 'lib'), { recursive: true });
    await this.bundleCli(join(stage, 'app', 'cli'));
    await writeFile(join(stage, 'app', 'cli', 'start.js'), START);
    await writeFile(join(stage, 'package.json'), `${JSON.stringify({ name: 'takt-agent-bundle', version: this.opts.version, type: 'module', private: true }, null, 2)}\n`);
    await writeFile(join(stage, 'bin', 'takt'), WRAPPER, { mode: 0o755 });
    await chmod(join(stage, 'bin', 'takt'), 0o755);
    await copyFile(this.node, join(stage, 'lib', 'node'));
    await chmod(join(stage, 'lib', 'node'), 0o755);
    const stripped = await stripSymbols(join(stage, 'lib', 'node'));
    if (!stripped) this.opts.log?.('info', 'agent bundle: `strip` not found (Debian: binutils); the Node runtime is shipped with its symbols (about 13 MB more)');
    const libs = await runtimeLibraries(this.node);
    for (const lib of libs) await copyFile(lib, join(stage, 'lib', basename(lib)));
    const manifest = { takt: this.opts.version, node: process.version, arch: process.arch, libs: libs.map((l) => basename(l)), stripped, builtAt: new Date().toISOString() };
    await writeFile(join(stage, 'BUNDLE.json'), JSON.stringify(manifest, null, 2) + '\n');
    const out = join(tmp, 'agent.tar.gz');
    const tar = await import('tar');
    await tar.create({ gzip: true, cwd: stage, file: out, portable: true }, ['bin', 'lib', 'app', 'package.json', 'BUNDLE.json']);
    await writeFile(join(tmp, 'agent.tar.gz.sha256'), `${await fileSha256(out)}\n`);
    await rm(stage, { recursive: true, force: true });
  }

  /**
   * The CLI bundled as the endpoint's own is (build/esbuild.ts), but with only what an agent host cannot
   * load left out: the store's native addon and the SSH client (native optional parts). Agents never load
   * them; everything else (argon2, esbuild: JS an agent never runs) is bundled, as the host has no node_modules.
   */
  private async bundleCli(outdir: string): Promise<void> {
    try {
      await bundleCli(this.root, outdir, AGENT_EXTERNAL);
    } catch (err) {
      throw new TaktError('unavailable', `cannot build the agent bundle: esbuild failed: ${(err as Error).message}`);
    }
  }

  /**
   * Removes bundles of other keys (an older takt or Node) not built for a day: endpoints sharing the cache
   * (replicas in a rolling upgrade, test endpoints of two checkouts) each keep serving their own meanwhile.
   */
  private async prune(keep: string): Promise<void> {
    const cutoff = Date.now() - PRUNE_AFTER_MS;
    for (const name of await readdir(this.opts.cacheDir).catch(() => [] as string[])) {
      if (name === keep || !name.startsWith('takt-')) continue;
      const dir = join(this.opts.cacheDir, name);
      const st = await stat(dir).catch(() => null);
      if (st && st.mtimeMs < cutoff) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    }
  }

  /**
   * The bundle opened for reading: an open file outlives a prune by another endpoint sharing the cache.
   * A bundle that vanished since it was built is built again, once.
   */
  async open(): Promise<{ bundle: BuiltBundle; file: FileHandle }> {
    for (let attempt = 0; ; attempt++) {
      const bundle = await this.get();
      try {
        return { bundle, file: await fsOpen(bundle.path, 'r') };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt > 0) throw new TaktError('unavailable', `the agent bundle cannot be read: ${(err as Error).message}`);
        this.building = null;
      }
    }
  }
}

/**
 * The shared libraries `node` loads that are not glibc's, as ldd resolves them (symlinks followed when
 * copied). A runtime linked statically has none.
 * @throws TaktError unavailable when ldd cannot be run (an endpoint without glibc's tools).
 */
export async function runtimeLibraries(node: string): Promise<string[]> {
  let out: string;
  try {
    out = (await run('ldd', [node], { timeout: 30_000 })).stdout;
  } catch (err) {
    const e = err as { stdout?: string; code?: string | number; message: string };
    if (e.stdout && /not a dynamic executable/.test(e.stdout + e.message)) return [];
    throw new TaktError('unavailable', `cannot build the agent bundle: \`ldd ${node}\` failed (${e.code === 'ENOENT' ? 'ldd is not installed' : e.message.split('\n')[0]})`);
  }
  return parseLdd(out);
}

/** The paths in ldd's output that are not glibc's own libraries (`name => /path (0x…)` lines). */
export function parseLdd(text: string): string[] {
  const libs: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(\S+)\s+=>\s+(\/\S+)\s+\(0x[0-9a-f]+\)/.exec(line);
    if (!m || GLIBC.test(m[1]!)) continue;
    libs.push(m[2]!);
  }
  return libs;
}

async function readBuilt(dir: string): Promise<BuiltBundle | null> {
  try {
    const path = join(dir, 'agent.tar.gz');
    const [sha, st] = await Promise.all([readFile(`${path}.sha256`, 'utf8'), stat(path)]);
    if (!/^[0-9a-f]{64}$/.test(sha.trim())) return null;
    return { path, bytes: st.size, sha256: sha.trim() };
  } catch {
    return null;
  }
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(p)));
    else if (e.isFile() && e.name.endsWith('.js')) out.push(p);
  }
  return out;
}

function fileSha256(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (d) => h.update(d))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}
