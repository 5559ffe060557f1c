/**
 * What `takt` loads before it runs a command. Every CLI call (and every one the tests make: thousands)
 * pays for the modules its command tree imports; a static import of a layer the command tree does not
 * need (the engine, the store's database drivers, the content schemas) once doubled that to 0.8 CPU-s
 * per call. The command tree must load only the CLI, the client and light model modules; the heavy
 * libraries load inside the actions that use them.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..');

/** A module loader hook (node --import) that prints every module URL resolved, one per line, to stderr. */
const HOOK = `data:text/javascript,${encodeURIComponent(`
import { register } from 'node:module';
register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(
  `const seen = new Set(); export async function resolve(s, c, next) { const r = await next(s, c); if (!seen.has(r.url)) { seen.add(r.url); process.stderr.write('LOADED ' + r.url + '\\n'); } return r; }`,
)}));`)}`;

/** The modules `takt ARGS` loads, as paths relative to dist/ (takt's) or `npm:PACKAGE` (libraries). */
function loadedBy(args: string[]): string[] {
  const r = spawnSync(process.execPath, ['--import', HOOK, join(ROOT, 'bin', 'takt.js'), ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, TAKT_ENDPOINT: 'http://127.0.0.1:9' } });
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
});
