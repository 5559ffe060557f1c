/**
 * What `takt` loads before it runs a command. Every CLI call (and every one the tests make: thousands)
 * pays for the modules its command tree imports; a static import of a layer the command tree does not
 * need (the engine, the store's database drivers, the content schemas) once doubled that to 0.8 CPU-s
 * per call. The command tree must load only the CLI, the client and light model modules; the heavy
 * libraries load inside the actions that use them.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..');

/** A module loader hook (node --import) that prints every module URL resolved, one per line, to stderr. */
const HOOK = `data:text/javascript,${encodeURIComponent(`
import { register } from 'node:module';
register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(
  `const seen = new Set(); export async function resolve(s, c, next) { const r = await next(s, c); if (!seen.has(r.url)) { seen.add(r.url); process.stderr.write('LOADED ' + r.url + '\\n'); } return r; }`,
)}));`)}`;

/**
 * The modules `takt ARGS` loads, as paths relative to dist/ (takt's) or `npm:PACKAGE` (libraries): the
 * compiled CLI run directly, whose module graph is what the bundle's first chunk holds (its lazy imports
 * are the bundle's other chunks).
 */
function loadedBy(args: string[]): string[] {
  const r = spawnSync(process.execPath, ['--import', HOOK, join(ROOT, 'dist', 'cli', 'main.js'), ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, TAKT_ENDPOINT: 'http://127.0.0.1:9' } });
  const urls = r.stderr.split('\n').filter((l) => l.startsWith('LOADED ')).map((l) => l.slice('LOADED '.length));
  expect(urls.length, r.stderr).toBeGreaterThan(0);
  return [
    ...new Set(
      urls.map((u) => {
        const lib = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(u);
        if (lib) return `npm:${lib[1]}`;
        const own = /\/dist\/(.+)$/.exec(u);
        return own ? own[1]! : u;
      }),
    ),
  ];
}

describe('takt start-up', () => {
  it.each([['--version'], ['machines', '--help']])('`takt %s` loads no engine, store, schema or template module', (...args) => {
    const loaded = loadedBy(args);
    expect(loaded).toContain('cli/program.js');
    const heavy = loaded.filter((m) => /^(engine|store\/(?!store-url)|render|content|api|agent\/(?!sandbox))\//.test(m) || /^npm:(typebox|kysely|pg|ajv|ajv-formats|liquidjs|re2js|fastify|better-sqlite3)$/.test(m));
    expect(heavy, 'import these inside the command actions that need them').toEqual([]);
  });

  describe('bin/takt.js', () => {
    /** A copy of bin/takt.js beside a stand-in dist/cli/main.js and dist/bundle/main.js that print which they are. */
    function tree(bundleAgeS: number | null): { dir: string; run: (env?: Record<string, string>) => string } {
      const dir = mkdtempSync(join(tmpdir(), 'takt-bin-'));
      mkdirSync(join(dir, 'bin'));
      mkdirSync(join(dir, 'dist', 'cli'), { recursive: true });
      copyFileSync(join(ROOT, 'bin', 'takt.js'), join(dir, 'bin', 'takt.js'));
      writeFileSync(join(dir, 'package.json'), '{"type":"module"}');
      writeFileSync(join(dir, 'dist', 'cli', 'main.js'), "console.log('compiled');");
      const now = Date.now() / 1000;
      utimesSync(join(dir, 'dist', 'cli', 'main.js'), now, now);
      if (bundleAgeS !== null) {
        mkdirSync(join(dir, 'dist', 'bundle'));
        writeFileSync(join(dir, 'dist', 'bundle', 'main.js'), "console.log('bundle');");
        utimesSync(join(dir, 'dist', 'bundle', 'main.js'), now + bundleAgeS, now + bundleAgeS);
      }
      const run = (env: Record<string, string> = {}) => spawnSync(process.execPath, [join(dir, 'bin', 'takt.js')], { encoding: 'utf8', timeout: 30_000, env: { ...process.env, TAKT_NO_BUNDLE: '', ...env } }).stdout.trim();
      return { dir, run };
    }

    it.each([
      ['a bundle built with the compiled CLI', 'bundle', 0, {}],
      ['a bundle newer than the compiled CLI', 'bundle', 5, {}],
      ['a bundle older than the compiled CLI (tsc ran since)', 'compiled', -5, {}],
      ['no bundle', 'compiled', null, {}],
      ['TAKT_NO_BUNDLE=1', 'compiled', 0, { TAKT_NO_BUNDLE: '1' }],
    ] as const)('%s: runs the %s one', (_name, expected, age, env) => {
      const t = tree(age);
      try {
        expect(t.run(env)).toBe(expected);
      } finally {
        rmSync(t.dir, { recursive: true, force: true });
      }
    });
  });
});
