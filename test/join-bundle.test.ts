/**
 * The agent bundle, built for real: two builders racing on one empty cache agree on one bundle (one
 * rename wins, nothing half-made is left), a second request is served from the cache, and the unpacked
 * bundle runs the CLI on its own runtime with the layout the install script expects.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentBundle } from '../src/join/bundle.js';
import { FactsSchema } from '../src/model/facts.js';
import { validateValue } from '../src/model/validate.js';

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
const tmp = (prefix: string) => {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(d);
  return d;
};

describe('agent bundle', () => {
  it('is built once however many ask, and runs the CLI without the host\'s Node.js', async () => {
    const cache = tmp('takt-bundle-cache-');
    const logs: Array<Record<string, unknown> | undefined> = [];
    const opts = { cacheDir: cache, version: '9.9.9-test', log: (_l: string, _m: string, f?: Record<string, unknown>) => logs.push(f) };
    const [a, b] = await Promise.all([new AgentBundle(opts).get(), new AgentBundle(opts).get()]);
    expect(a).toEqual(b);
    expect(a.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(statSync(a.path).size).toBe(a.bytes);
    expect(a.bytes).toBeGreaterThan(20e6);
    // One bundle directory, no build left behind.
    expect(readdirSync(cache)).toEqual([expect.stringMatching(/^takt-9\.9\.9-test-node\d+\.\d+\.\d+-[0-9a-f]{16}$/)]);
    process.stderr.write(`join-bundle: ${(a.bytes / 1e6).toFixed(1)} MB, built in ${logs.map((f) => `${f?.ms} ms`).join(' and ')}\n`);

    const one = new AgentBundle(opts);
    const before = logs.length;
    expect(await one.get()).toEqual(a);
    expect(await one.get()).toEqual(a);
    expect(logs.length).toBe(before); // served from the cache: nothing built

    const root = tmp('takt-bundle-unpacked-');
    mkdirSync(root, { recursive: true });
    expect(spawnSync('tar', ['-xzf', a.path, '-C', root]).status).toBe(0);
    for (const f of ['bin/takt', 'lib/node', 'app/cli/start.js', 'app/cli/main.js', 'package.json', 'BUNDLE.json']) expect(existsSync(join(root, f)), f).toBe(true);
    expect(statSync(join(root, 'bin/takt')).mode & 0o111).toBe(0o111);
    expect(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))).toMatchObject({ version: '9.9.9-test', type: 'module' });
    const manifest = JSON.parse(readFileSync(join(root, 'BUNDLE.json'), 'utf8')) as { libs: string[]; node: string; stripped: boolean };
    expect(manifest.node).toBe(process.version);
    // The runtime ships without its symbol tables (binutils' strip is installed here, as .ci/run makes sure).
    expect(manifest.stripped).toBe(true);
    expect(spawnSync('readelf', ['-S', join(root, 'lib/node')], { encoding: 'utf8' }).stdout).not.toMatch(/\.symtab|\.debug_info/);
    for (const lib of manifest.libs) expect(existsSync(join(root, 'lib', lib)), lib).toBe(true);
    expect(readdirSync(join(root, 'app', 'cli')).some((f) => f.includes('better-sqlite3'))).toBe(false);

    // No node on the PATH (only what the wrapper itself uses): the wrapper runs the bundled runtime.
    const bin = tmp('takt-bundle-path-');
    for (const tool of ['dirname']) symlinkSync(spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim(), join(bin, tool));
    const env = { PATH: bin, HOME: root };
    expect(spawnSync('sh', ['-c', 'command -v node'], { env }).status).not.toBe(0);
    const help = spawnSync(join(root, 'bin/takt'), ['agent', '--help'], { env, encoding: 'utf8' });
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toContain('--report-facts');
    const facts = spawnSync(join(root, 'bin/takt'), ['agent', 'facts'], { env, encoding: 'utf8' });
    expect(facts.status, facts.stderr).toBe(0);
    expect(validateValue(FactsSchema, JSON.parse(facts.stdout))).toEqual([]);
    // The bundled CLI knows its version (read from the bundle's package.json, as from a checkout's).
    expect(JSON.parse(facts.stdout).agentVersion).toBe('9.9.9-test');

    // Another endpoint sharing the cache (another version) keeps this bundle while it is fresh, and a
    // bundle that vanished anyway (pruned, deleted) is built again instead of a 5xx for the host.
    const other = new AgentBundle({ ...opts, version: '9.9.8-test' });
    const o = await other.get();
    expect(existsSync(a.path)).toBe(true);
    expect(existsSync(o.path)).toBe(true);
    rmSync(join(a.path, '..'), { recursive: true, force: true });
    const { bundle, file } = await one.open();
    try {
      expect(bundle.sha256).toMatch(/^[0-9a-f]{64}$/);
      expect((await file.stat()).size).toBe(bundle.bytes);
    } finally {
      await file.close();
    }
    // Two esbuild bundles of ~39 MB each: about 30 s apiece on a loaded 2-core machine, past the default bound.
  }, 300_000);
});
