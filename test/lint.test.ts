import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { installHelpers } from '../src/agent/helpers.js';
import { readPackDir, type PackFiles } from '../src/content/files.js';
import { checkContentSet, formatDiagnostic, lintPack } from '../src/content/lint.js';
import { taskActionFor } from '../src/content/variants.js';
import { emptyContentSet, type ContentSet, type ParamDef, type TaskDef } from '../src/model/content.js';
import { TaktError } from '../src/model/errors.js';
import { renderTemplate } from '../src/render/template.js';

const DEMO = join(import.meta.dirname, '..', 'content', 'demo');
const BROKEN = join(import.meta.dirname, 'fixtures', 'broken-pack');

/** A small valid pack; each case below overrides or removes (undefined) some of its files. */
const good: PackFiles = {
  'pack.yaml': 'name: t\nversion: 1.0.0\n',
  'params/greeting.yaml': 'name: greeting\nschema:\n  type: string\n  default: hi\n',
  'params/port.yaml': 'name: port\nschema:\n  type: integer\n  minimum: 1\n',
  'tasks/hello.yaml': 'name: hello\nparams:\n  required: [greeting]\nscript: |\n  echo {{ greeting }}\n',
  'stages/s1.yaml': 'name: s1\ntasks: [hello]\n',
  'pipelines/p.yaml': 'name: p\nstages: [s1]\n',
};

function lint(over: Record<string, string | undefined>, base?: ContentSet): string[] {
  const files: PackFiles = {};
  for (const [k, v] of Object.entries({ ...good, ...over })) if (v !== undefined) files[k] = v;
  return lintPack(files, base).diagnostics.map(formatDiagnostic);
}

const cases: Array<[string, Record<string, string | undefined>, string[]]> = [
  // 1. YAML syntax (a file with YAML errors gets no schema errors on top: its value is partial)
  ['YAML syntax error', { 'tasks/bad.yaml': 'name: bad\nscript: [echo\n' }, [
    'tasks/bad.yaml:3:1: invalid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]',
  ]],
  ['YAML duplicate key', { 'tasks/bad.yaml': 'name: bad\nscript: a\nscript: b\n' }, [
    'tasks/bad.yaml:3:1: invalid YAML: Map keys must be unique',
  ]],
  // 2. not a single mapping
  ['not a mapping', { 'tasks/list.yaml': '- a\n- b\n' }, [
    'tasks/list.yaml:1:1: expected a task (a mapping of fields), found a list',
  ]],
  ['empty file', { 'tasks/empty.yaml': '# nothing\n' }, [
    'tasks/empty.yaml:1:1: empty file: expected a task (a mapping of fields)',
  ]],
  ['two documents', { 'tasks/two.yaml': 'name: two\nscript: a\n---\nname: x\n' }, [
    'tasks/two.yaml:3:1: a file holds one task, found 2 YAML documents',
  ]],
  // 3. unknown fields, at the key, listing the allowed ones
  ['unknown field', { 'tasks/x.yaml': 'name: x\nscript: echo\nscirpt: y\n' }, [
    "tasks/x.yaml:3:1: unknown field 'scirpt' (allowed: name, description, params, script, variants, timeout, retries, outputs, expect)",
  ]],
  ['unknown nested fields', { 'tasks/x.yaml': 'name: x\nparams:\n  requried: [greeting]\nscript: echo\nvariants:\n  local:\n    scrpt: x\n' }, [
    "tasks/x.yaml:3:3: unknown field 'requried' (allowed: required, optional)",
    "tasks/x.yaml:7:5: unknown field 'scrpt' (allowed: script, noop)",
  ]],
  // 4. schema violations, at the value
  ['wrong types and limits', {
    'tasks/x.yaml': 'name: x\nscript: echo\ntimeout: 5x\nretries: 20\n',
    'stages/s2.yaml': 'name: s2\ntasks: []\n',
    'stages/s3.yaml': 'name: s3\ntasks: hello\n',
  }, [
    'stages/s2.yaml:2:8: must list at least 1 item',
    'stages/s3.yaml:2:8: must be a list (got a string "hello")',
    'tasks/x.yaml:3:10: must be a duration like 500ms, 30s, 5m, 2h or a number of seconds (got a string "5x")',
    'tasks/x.yaml:4:10: must be <= 10 (got an integer 20)',
  ]],
  ['bad names and keys', {
    'stages/Bad.yaml': 'name: Bad\ntasks: [hello]\n',
    'profiles/pr.yaml': 'name: pr\nparams:\n  Greeting: x\n',
    'tasks/v.yaml': 'name: v\nscript: x\nvariants:\n  Local!: { script: y }\n',
  }, [
    "profiles/pr.yaml:3:3: invalid key 'Greeting': must be a lower-case identifier: letters, digits, _",
    'stages/Bad.yaml:1:7: must be a lower-case name: letters, digits, . _ - (got "Bad")',
    "tasks/v.yaml:4:3: invalid key 'Local!': must be a lower-case name: letters, digits, . _ -",
  ]],
  ['missing required field', { 'stages/s2.yaml': 'tasks: [hello]\n' }, [
    "stages/s2.yaml:1:1: missing required field 'name'",
  ]],
  // 5. name vs file name
  ['name does not match file', { 'tasks/foo.yaml': 'name: bar\nscript: echo\n' }, [
    "tasks/foo.yaml:1:7: name 'bar' does not match the file name: tasks/foo.yaml must say name: foo",
  ]],
  // 6. duplicates within a kind
  ['duplicate name', { 'tasks/hello.yml': 'name: hello\nscript: echo\n' }, [
    "tasks/hello.yml:1:7: duplicate task 'hello' (also defined at tasks/hello.yaml:1:7)",
  ]],
  // 7. unresolved references, at the list item
  ['unresolved references', {
    'stages/s1.yaml': 'name: s1\ntasks: [hello, helo, nope]\n',
    'pipelines/p.yaml': 'name: p\nstages:\n  - s1\n  - s9\n',
    'blueprints/b.yaml': 'name: b\ntasks: [gone]\n',
    'profiles/a.yaml': 'name: a\ninclude: [zzz]\n',
    'tasks/t2.yaml': 'name: t2\nparams:\n  required: [greeting]\n  optional: [colour]\nscript: echo\n',
  }, [
    "blueprints/b.yaml:2:9: task 'gone' not found",
    "pipelines/p.yaml:4:5: stage 's9' not found (did you mean 's1'?)",
    "profiles/a.yaml:2:11: profile 'zzz' not found",
    "stages/s1.yaml:2:16: task 'helo' not found (did you mean 'hello'?)",
    "stages/s1.yaml:2:22: task 'nope' not found",
    "tasks/t2.yaml:4:14: param 'colour' not found",
  ]],
  // 7 + 8. param values: unknown param (at the key), value against the param's schema (at the value)
  ['param values', {
    'profiles/a.yaml': 'name: a\nparams:\n  greeting: 5\n  port: 0\n  colour: red\n',
    'stages/s1.yaml': 'name: s1\ntasks: [hello]\nparams:\n  port: "80"\n',
    'pipelines/p.yaml': 'name: p\nstages: [s1]\nparams:\n  nothere: 1\n',
    'blueprints/b.yaml': 'name: b\ntasks: [hello]\nparams:\n  greeting: [a]\n',
  }, [
    "blueprints/b.yaml:4:13: param 'greeting': must be a string (got a list)",
    "pipelines/p.yaml:4:3: param 'nothere' not found",
    "profiles/a.yaml:3:13: param 'greeting': must be a string (got an integer 5)",
    "profiles/a.yaml:4:9: param 'port': must be >= 1 (got an integer 0)",
    "profiles/a.yaml:5:3: param 'colour' not found",
    "stages/s1.yaml:4:9: param 'port': must be an integer (got a string \"80\")",
  ]],
  // 9. param schema that is not a valid JSON Schema (and a default that does not fit it)
  ['invalid JSON Schema', {
    'params/x.yaml': 'name: x\nschema:\n  type: strnig\n',
    'params/y.yaml': 'name: y\nschema:\n  type: string\n  pattern: "("\n',
    'params/z.yaml': 'name: z\nschema:\n  type: boolean\n  default: "no"\n',
    'params/w.yaml': 'name: w\nschema:\n  minLength: -1\n',
  }, [
    'params/w.yaml:3:14: invalid JSON Schema: must be >= 0 (got an integer -1)',
    'params/x.yaml:3:9: invalid JSON Schema: must be one of "array", "boolean", "integer", "null", "number", "object", "string" or a list (got a string "strnig")',
    'params/y.yaml:4:12: invalid JSON Schema: pattern "(" is not supported: missing closing ): `(` (patterns use RE2 syntax, see docs/content.md)',
    'params/z.yaml:4:12: default does not match the schema: must be a boolean (true or false) (got a string "no")',
  ]],
  // 10. include cycles, each reported once, naming the cycle
  ['include cycles', {
    'profiles/a.yaml': 'name: a\ninclude: [b]\n',
    'profiles/b.yaml': 'name: b\ninclude: [c]\n',
    'profiles/c.yaml': 'name: c\ninclude: [a]\n',
    'profiles/self.yaml': 'name: self\ninclude:\n  - self\n',
  }, [
    'profiles/a.yaml:2:11: include cycle: a -> b -> c -> a',
    'profiles/self.yaml:3:5: include cycle: self -> self',
  ]],
  // 11. template syntax errors at the file position (block scalar, quoted scalar, nested variant)
  ['template syntax errors', {
    'tasks/t1.yaml': 'name: t1\nparams:\n  required: [greeting]\nscript: |\n  echo hi\n  echo {{ greeting | nofilter }}\n',
    'tasks/t2.yaml': 'name: t2\nscript: "echo {% if x %}"\n',
    'tasks/t3.yaml': 'name: t3\nscript: x\nvariants:\n  local:\n    script: |-\n      a\n        {{ oops\n',
    'tasks/t4.yaml': 'name: t4\nscript: |\n  {% include "x" %}\n',
  }, [
    'tasks/t1.yaml:6:8: template: undefined filter: nofilter',
    'tasks/t2.yaml:2:15: template: tag {% if x %} not closed',
    'tasks/t3.yaml:7:9: template: output "{{ oops" not closed',
    'tasks/t4.yaml:3:3: template: tag "include" is not available: templates cannot load other files',
  ]],
  // 12. template variables the task does not declare (locals and loop variables are fine)
  ['undeclared template variables', {
    'tasks/t1.yaml':
      'name: t1\nparams:\n  optional: [port]\nscript: |\n  echo {{ port }} {{ machine.name }} {{ machine.ip }}\n  echo {{ greeting }} {{ greeting }}\n  {% assign x = 1 %}{{ x }}{% for i in (1..2) %}{{ i }}{% endfor %}\n',
  }, [
    "tasks/t1.yaml:5:41: template: machine has no field 'ip' (it has id, name, environment)",
    "tasks/t1.yaml:6:11: template uses 'greeting', which the task does not declare in params.required or params.optional",
  ]],
  // 13. scripts, variants and no-ops
  ['scripts and variants', {
    'tasks/t1.yaml': 'name: t1\ndescription: nothing\n',
    'tasks/t2.yaml': 'name: t2\nvariants:\n  local:\n    script: a\n    noop: b\n  vm: {}\n  metal:\n    noop: not on metal\n',
  }, [
    'tasks/t1.yaml:1:1: task has neither a script nor variants: add `script:` (or `variants:` per environment)',
    "tasks/t2.yaml:3:3: variant 'local' has both a script and a noop; keep one",
    "tasks/t2.yaml:6:3: variant 'vm' needs a script, or a noop that says why the task does nothing there",
  ]],
  // 14. a pipeline's environments are covered by every task (default script, variant or noop)
  ['environment coverage', {
    'tasks/t2.yaml': 'name: t2\nvariants:\n  local:\n    script: a\n  vm:\n    noop: nothing to do on a vm\n',
    'stages/s1.yaml': 'name: s1\ntasks: [hello, t2]\n',
    'pipelines/p.yaml': 'name: p\nstages: [s1]\nenvironments: [local, vm, metal]\n',
  }, [
    "pipelines/p.yaml:3:27: task 't2' has no script for environment 'metal': give it a default script or a 'metal' variant (a noop with a reason if it does not apply)",
  ]],
  // 15. pack.yaml
  ['missing pack.yaml', { 'pack.yaml': undefined }, [
    'pack.yaml:1:1: missing pack.yaml: a pack needs a manifest with name and version (semver)',
  ]],
  ['bad pack.yaml', { 'pack.yaml': 'name: t\nversion: "1.0"\nrequires:\n  base: "not a range"\nauthor: me\n' }, [
    'pack.yaml:2:10: must be a semver version like 1.2.3 (got "1.0")',
    "pack.yaml:4:9: 'not a range' is not a semver range (e.g. ^1.2.0)",
    "pack.yaml:5:1: unknown field 'author' (allowed: name, version, description, requires)",
  ]],
  // 16. the reserved param name
  ['param named machine', { 'params/machine.yaml': 'name: machine\n' }, [
    "params/machine.yaml:1:7: 'machine' is reserved for the machine object in templates; choose another param name",
  ]],
  ['misplaced YAML files', {
    'task/x.yaml': 'name: x\n',
    'tasks/sub/y.yaml': 'name: y\n',
    'readme.yaml': 'a: 1\n',
    'README.md': '# not YAML: ignored\n',
    'pack.yml': 'x: 1\n',
  }, [
    'pack.yml:1:1: the manifest must be named pack.yaml',
    'readme.yaml:1:1: not an object file: each object goes in its own file directly under params/, profiles/, tasks/, stages/, pipelines/, blueprints/, bootenvs/, classifiers/ (e.g. tasks/NAME.yaml)',
    'task/x.yaml:1:1: not an object file: each object goes in its own file directly under params/, profiles/, tasks/, stages/, pipelines/, blueprints/, bootenvs/, classifiers/ (e.g. tasks/NAME.yaml)',
    'tasks/sub/y.yaml:1:1: not an object file: each object goes in its own file directly under params/, profiles/, tasks/, stages/, pipelines/, blueprints/, bootenvs/, classifiers/ (e.g. tasks/NAME.yaml)',
  ]],
];

describe('lintPack', () => {
  it('accepts the small valid pack', () => {
    expect(lint({})).toEqual([]);
  });

  it.each(cases)('%s', (_name, over, expected) => {
    expect(lint(over)).toEqual(expected);
  });

  it('reports every problem of a pack at once, sorted by file and position', async () => {
    const files = await readPackDir(BROKEN);
    expect(Object.keys(files)).not.toContain('docs/example.yaml');
    expect(lintPack(files).diagnostics.map(formatDiagnostic)).toEqual([
      'pack.yaml:2:10: must be a semver version like 1.2.3 (got "1.0")',
      "params/machine.yaml:1:7: 'machine' is reserved for the machine object in templates; choose another param name",
      'params/port.yaml:5:12: default does not match the schema: must be >= 1 (got an integer 0)',
      "pipelines/main.yaml:3:27: task 'migrate' has no script for environment 'vm': give it a default script or a 'vm' variant (a noop with a reason if it does not apply)",
      'pipelines/main.yaml:5:9: param \'port\': must be an integer (got a string "eighty")',
      'profiles/base.yaml:2:11: include cycle: base -> web -> base',
      "profiles/base.yaml:4:3: param 'prot' not found (did you mean 'port'?)",
      "stages/install.yaml:5:5: task 'restart' not found",
      'stray.yaml:1:1: not an object file: each object goes in its own file directly under params/, profiles/, tasks/, stages/, pipelines/, blueprints/, bootenvs/, classifiers/ (e.g. tasks/NAME.yaml)',
      "tasks/deploy.yaml:8:15: template uses 'user', which the task does not declare in params.required or params.optional",
      'tasks/deploy.yaml:12:12: template: undefined filter: nosuchfilter',
      "tasks/deploy.yaml:13:3: variant 'metal' has both a script and a noop; keep one",
      "tasks/deploy.yaml:16:1: unknown field 'retry' (allowed: name, description, params, script, variants, timeout, retries, outputs, expect)",
    ]);
  });

  it('gives each diagnostic the field path too', () => {
    const files = { ...good, 'stages/s1.yaml': 'name: s1\ntasks: [hello, nope]\n' };
    expect(lintPack(files).diagnostics).toEqual([
      { file: 'stages/s1.yaml', line: 2, col: 16, message: "task 'nope' not found", path: '/tasks/1' },
    ]);
  });

  it('returns the manifest and the objects', () => {
    const r = lintPack(good);
    expect(r.manifest).toEqual({ name: 't', version: '1.0.0' });
    expect(r.objects.map((o) => `${o.kind}:${o.def.name}:${o.file}`)).toEqual([
      'params:greeting:params/greeting.yaml',
      'params:port:params/port.yaml',
      'pipelines:p:pipelines/p.yaml',
      'stages:s1:stages/s1.yaml',
      'tasks:hello:tasks/hello.yaml',
    ]);
    expect(lintPack({ ...good, 'pack.yaml': 'name: t\n' }).manifest).toBeUndefined();
  });

  describe('with the content already on the endpoint', () => {
    const base = emptyContentSet();
    base.objects.params.set('region', { def: { name: 'region', schema: { type: 'string', enum: ['eu', 'us'] } }, layer: 'core' });
    base.objects.tasks.set('reboot', { def: { name: 'reboot', script: 'exit 64' }, layer: 'core' });
    base.objects.tasks.set('mine', { def: { name: 'mine', script: 'echo' }, layer: 'local' });
    // The linted pack's own previous version: ignored, so renaming or deleting objects is not a conflict.
    base.objects.tasks.set('hello', { def: { name: 'hello', script: 'old' }, layer: 't' });
    base.objects.stages.set('old-stage', { def: { name: 'old-stage', tasks: ['gone-task'] }, layer: 't' });

    it('resolves references into other packs and checks values against their schemas', () => {
      expect(lint({ 'stages/s1.yaml': 'name: s1\ntasks: [hello, reboot]\nparams:\n  region: asia\n' }, base)).toEqual([
        'stages/s1.yaml:4:11: param \'region\': must be one of "eu", "us" (got a string "asia")',
      ]);
    });

    it('does not check base objects, only the pack', () => {
      expect(lint({}, base)).toEqual([]);
    });

    it('reports a name already taken by another pack or a local object', () => {
      expect(lint({ 'tasks/reboot.yaml': 'name: reboot\nscript: echo\n', 'tasks/mine.yaml': 'name: mine\nscript: echo\n' }, base)).toEqual([
        "tasks/mine.yaml:1:7: task 'mine' is already defined by a local object on the endpoint; names are unique per kind",
        "tasks/reboot.yaml:1:7: task 'reboot' is already defined by pack 'core'; names are unique per kind",
      ]);
    });
  });

  it('lints the demo pack clean', async () => {
    const r = lintPack(await readPackDir(DEMO));
    expect(r.diagnostics.map(formatDiagnostic)).toEqual([]);
    expect(r.manifest).toMatchObject({ name: 'demo', version: '1.3.0' });
    const names = (kind: string) => r.objects.filter((o) => o.kind === kind).map((o) => o.def.name);
    expect(names('pipelines')).toEqual(['demo']);
    expect(names('blueprints')).toEqual(['inventory']);
  });
});

describe('checkContentSet', () => {
  function set(): ContentSet {
    const s = emptyContentSet();
    s.objects.params.set('greeting', { def: { name: 'greeting', schema: { type: 'string' } }, layer: 'local' });
    s.objects.tasks.set('hello', {
      def: { name: 'hello', params: { required: ['greeting'] }, script: 'echo {{ greeting }}\necho {{ who }}' },
      layer: 'local',
    });
    s.objects.stages.set('s', { def: { name: 's', tasks: ['hello', 'missing'], params: { greeting: 1 } }, layer: 'local' });
    s.objects.profiles.set('a', { def: { name: 'a', include: ['b'] }, layer: 'local' });
    s.objects.profiles.set('b', { def: { name: 'b', include: ['a'] }, layer: 'local' });
    return s;
  }

  it('reports field paths, with template positions in the message', () => {
    expect(checkContentSet(set())).toEqual([
      { kind: 'profiles', name: 'a', path: '/include/0', message: 'include cycle: a -> b -> a' },
      {
        kind: 'tasks',
        name: 'hello',
        path: '/script',
        message: "template line 2, col 9: template uses 'who', which the task does not declare in params.required or params.optional",
      },
      { kind: 'stages', name: 's', path: '/tasks/1', message: "task 'missing' not found" },
      { kind: 'stages', name: 's', path: '/params/greeting', message: "param 'greeting': must be a string (got an integer 1)" },
    ]);
  });

  it('checks only the objects asked about, against the whole set', () => {
    expect(checkContentSet(set(), [{ kind: 'stages', name: 's' }]).map((p) => p.path)).toEqual(['/tasks/1', '/params/greeting']);
    expect(checkContentSet(set(), [{ kind: 'params', name: 'greeting' }])).toEqual([]);
  });
});

describe('readPackDir', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'takt-lint-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('reads pack.yaml and the object files, skipping docs and non-YAML files', async () => {
    const files = await readPackDir(DEMO);
    expect(files['pack.yaml']).toContain('name: demo');
    expect(Object.keys(files).every((f) => f === 'pack.yaml' || /^[a-z]+\/[a-z0-9_.-]+\.yaml$/.test(f))).toBe(true);
    const broken = await readPackDir(BROKEN);
    expect(Object.keys(broken)).toContain('stray.yaml');
    expect(Object.keys(broken)).not.toContain('README.md');
  });

  it('refuses a missing directory', async () => {
    await expect(readPackDir(join(tmp, 'nope'))).rejects.toThrow(/not a directory/);
  });

  it('refuses a directory without pack.yaml', async () => {
    const dir = join(tmp, 'empty');
    mkdirSync(dir);
    const err = await readPackDir(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TaktError);
    expect((err as TaktError).code).toBe('bad_request');
    expect((err as TaktError).message).toMatch(/no pack\.yaml/);
  });

  it('refuses a pack over 8 MiB', async () => {
    const dir = join(tmp, 'big');
    mkdirSync(join(dir, 'tasks'), { recursive: true });
    writeFileSync(join(dir, 'pack.yaml'), 'name: big\nversion: 1.0.0\n');
    writeFileSync(join(dir, 'tasks', 'huge.yaml'), `name: huge\nscript: |\n${'  echo padding\n'.repeat(700_000)}`);
    await expect(readPackDir(dir)).rejects.toThrow(/exceed 8 MiB/);
  });
});

describe('the demo pack', () => {
  /**
   * Runs the demo pipeline's scripts with bash the way the agent does: the real helper commands, the
   * declared params written to TAKT_PARAMS_DIR, outputs read back from TAKT_OUTPUTS_DIR into the machine's
   * params. A stand-in for the engine's param resolution: machine params, then the schema default.
   */
  it('runs on a local machine, records build_id for later tasks, and fails verify on fail_verify', async () => {
    const r = lintPack(await readPackDir(DEMO));
    const get = <T>(kind: string, name: string) => r.objects.find((o) => o.kind === kind && o.def.name === name)!.def as T;
    const tmp = mkdtempSync(join(tmpdir(), 'takt-demo-'));
    try {
      const root = join(tmp, 'root');
      const bin = join(tmp, 'bin');
      mkdirSync(root);
      await installHelpers(bin);
      const machine = { id: 'm-1', name: 'web-1', environment: 'local' };
      const machineParams: Record<string, unknown> = {};

      const run = (taskName: string, override: Record<string, unknown> = {}): { status: number; out: string } => {
        const task = get<TaskDef>('tasks', taskName);
        const action = taskActionFor(task, 'local');
        if (!action || !('script' in action)) throw new Error(`${taskName}: no script for local`);
        const job = mkdtempSync(join(tmp, 'job-'));
        const [work, params, outputs] = ['work', 'params', 'outputs'].map((d) => join(job, d)) as [string, string, string];
        for (const d of [work, params, outputs]) mkdirSync(d);
        const vars: Record<string, unknown> = { machine };
        for (const p of [...(task.params?.required ?? []), ...(task.params?.optional ?? [])]) {
          const def = get<ParamDef>('params', p);
          const value = override[p] ?? machineParams[p] ?? (def.schema as { default?: unknown } | undefined)?.default ?? null;
          vars[p] = value;
          if (value !== null) writeFileSync(join(params, p), typeof value === 'string' ? value : JSON.stringify(value));
        }
        writeFileSync(join(work, 'script.sh'), renderTemplate(action.script, vars));
        let result: { status: number; out: string };
        try {
          const out = execFileSync('bash', ['script.sh'], {
            cwd: work,
            env: { ...process.env, TAKT_ROOT: root, TAKT_PARAMS_DIR: params, TAKT_OUTPUTS_DIR: outputs, PATH: `${bin}:${process.env.PATH ?? ''}` },
            encoding: 'utf8',
            stdio: ['ignore', 'pipe', 'pipe'],
          });
          result = { status: 0, out };
        } catch (e) {
          const x = e as { status: number; stdout: string; stderr: string };
          result = { status: x.status, out: x.stdout + x.stderr };
        }
        for (const key of readdirSync(outputs)) machineParams[key] = readFileSync(join(outputs, key), 'utf8');
        return result;
      };

      const pipeline = get<{ stages: string[]; environments: string[] }>('pipelines', 'demo');
      expect(pipeline.environments).toEqual(['local', 'netns', 'remote', 'ssh', 'metal']);
      for (const stage of pipeline.stages) {
        for (const t of get<{ tasks: string[] }>('stages', stage).tasks) {
          const res = run(t);
          expect(res, `${t}: ${res.out}`).toMatchObject({ status: 0 });
        }
      }
      expect(machineParams.build_id).toMatch(/^demo-\d+-\d+$/);
      const motd = readFileSync(join(root, 'etc', 'motd'), 'utf8');
      expect(motd).toMatch(/^Hello from takt\n/);
      expect(motd).toContain('This is web-1 (local)');
      expect(motd).toContain(`Build: ${String(machineParams.build_id)}`);
      expect(readFileSync(join(root, 'var', 'lib', 'takt-demo', 'build'), 'utf8')).toBe(`build_id=${String(machineParams.build_id)}\nmachine=m-1\n`);
      expect(readFileSync(join(root, 'etc', 'hostname'), 'utf8')).toBe('web-1\n');

      const failed = run('verify-motd', { fail_verify: true });
      expect(failed.status).toBe(1);
      expect(failed.out).toContain('fail_verify is true for this machine: failing on purpose.');

      for (const t of get<{ tasks: string[] }>('blueprints', 'inventory').tasks) {
        const res = run(t);
        expect(res, `${t}: ${res.out}`).toMatchObject({ status: 0 });
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
