/**
 * What `takt agent` loads. An agent starts on every boot of a discovered machine, where Node runs under the
 * machine's (or an emulator's) CPU, so every library it loads at start costs seconds there
 * (docs/provisioning.md "Discovery boot time"). The resource commands and the content, template, schema
 * and YAML libraries they use must stay out of its start path: a new static import that pulls them in
 * fails here. The loaded modules are read with a module loader hook in a real `node` process over the
 * compiled CLI (dist/), as the bundle in the discovery initramfs runs it.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { buildProgram, commandOf, VALUE_OPTIONS } from '../src/cli/program.js';

const run = promisify(execFile);
const root = join(import.meta.dirname, '..');

/** Libraries the agent never needs: content lint, templates, regexes, JSON Schema, YAML, diffs, TypeBox. */
const HEAVY = ['ajv', 'ajv-formats', 'liquidjs', 're2js', 'yaml', 'diff', 'typebox'];

/** The packages and takt modules a `node` process loads running `args`, by a loader hook's record. */
async function loaded(args: string[]): Promise<{ packages: Set<string>; modules: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'takt-startup-'));
  writeFileSync(join(dir, 'hook.mjs'), "export async function load(url, context, next) { if (url.startsWith('file:')) process.stderr.write('LOADED ' + url + '\\n'); return next(url, context); }\n");
  writeFileSync(join(dir, 'register.mjs'), `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(join(dir, 'hook.mjs')).href)});\n`);
  const r = await run(process.execPath, ['--import', join(dir, 'register.mjs'), ...args], { cwd: root, env: { ...process.env, NO_COLOR: '1' } }).catch((err: { stdout: string; stderr: string }) => err);
  const urls = r.stderr.split('\n').filter((l) => l.startsWith('LOADED ')).map((l) => l.slice('LOADED '.length));
  expect(urls.length, r.stderr).toBeGreaterThan(0);
  const packages = new Set(urls.map((u) => /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(u)?.[1]).filter((p): p is string => p !== undefined));
  return { packages, modules: urls.filter((u) => u.includes('/dist/')).map((u) => u.slice(u.indexOf('/dist/') + 1)) };
}

describe('takt agent start-up', () => {
  it('`takt agent --help` builds only the agent commands: no resource command, no heavy library', async () => {
    const { packages, modules } = await loaded(['dist/cli/main.js', '--endpoint', 'http://127.0.0.1:9', 'agent', '--help']);
    expect(HEAVY.filter((p) => packages.has(p))).toEqual([]);
    expect(modules).not.toContain('dist/cli/commands.js');
    expect(modules).not.toContain('dist/cli/output.js');
  });

  it('the agent and discovery modules load none of the heavy libraries', async () => {
    const imports = ['agent/agent.js', 'agent/discover.js', 'agent/inventory.js', 'agent/register.js', 'agent/sandbox.js', 'agent/chaos.js', 'agent/log.js']
      .map((m) => `await import(${JSON.stringify(pathToFileURL(join(root, 'dist', m)).href)});`)
      .join(' ');
    const { packages, modules } = await loaded(['--input-type=module', '-e', imports]);
    expect(modules).toContain('dist/agent/agent.js');
    expect(HEAVY.filter((p) => packages.has(p))).toEqual([]);
  });

  it('every other command still builds the whole tree', async () => {
    const { packages } = await loaded(['dist/cli/main.js', 'machines', '--help']);
    expect(packages.has('yaml')).toBe(true);
  });
});

describe('commandOf: the top-level command of an argv', () => {
  const cases: Array<[string[], string | undefined]> = [
    [[], undefined],
    [['--help'], undefined],
    [['agent'], 'agent'],
    [['agent', 'discover'], 'agent'],
    [['--endpoint', 'https://e:8443', 'agent'], 'agent'],
    [['--endpoint=https://e:8443', 'agent'], 'agent'],
    [['-o', 'json', 'machines', 'list'], 'machines'],
    [['--token', 'agent', 'machines'], 'machines'],
    [['--no-headers', 'jobs'], 'jobs'],
    [['--', 'agent'], 'agent'],
  ];
  it.each(cases)('%j → %s', (args, want) => {
    expect(commandOf(['node', 'takt', ...args])).toBe(want);
  });

  it("knows every global option that takes a value (a new one must be added to VALUE_OPTIONS)", async () => {
    const program = await buildProgram();
    const taking = program.options.filter((o) => o.required || o.optional).flatMap((o) => [o.long, o.short]).filter((f): f is string => f !== undefined);
    expect([...VALUE_OPTIONS].sort()).toEqual(taking.sort());
  });
});
