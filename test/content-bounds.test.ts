/**
 * Issue 10 §4, the content side: every input a pack, a template or a duration can carry is bounded and
 * refused where it is written (file:line:col) instead of failing later or silently changing.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readBundle, makeBundle } from '../src/content/bundle.js';
import { packPathProblem, readPackDir, type PackFiles } from '../src/content/files.js';
import { formatDiagnostic, lintPack } from '../src/content/lint.js';
import { parseYamlValue } from '../src/content/yaml.js';
import { DURATION_RANGES, parseDuration, TIMER_MAX_MS } from '../src/model/duration.js';
import { TaktError } from '../src/model/errors.js';
import { validateValue } from '../src/model/validate.js';
import { renderTemplate, TemplateError, templateLoopProblems } from '../src/render/template.js';

const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]', 'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]', 'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]', 'd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]', 'e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]', 'f: [*e,*e,*e,*e,*e,*e,*e,*e,*e]'].join('\n');

describe('durations work exactly as written or are refused with the allowed range', () => {
  const timeout = DURATION_RANGES.taskTimeout;
  const cases: Array<[string | number, number | RegExp]> = [
    ['30s', 30_000],
    ['500ms', RegExp('out of range: allowed from 1s to 24d')],
    ['1.5s', 1500],
    ['1.1s', 1100],
    [90, 90_000],
    ['24d', 24 * 86_400_000],
    [0, /timeout 0 is out of range: allowed from 1s to 24d/],
    ['0', /out of range/],
    ['0s', /out of range/],
    ['25d', /out of range/],
    ['30d', /out of range/], // above 2^31-1 ms: setTimeout would fire at once
    ['99999999999999999999d', /out of range/],
    ['1.0005s', /not a whole number of milliseconds/],
    ['-1s', /not a duration/],
    [-1, /non-negative/],
    ['1e3s', /not a duration/],
    ['5 minutes', /not a duration/],
  ];
  it.each(cases)('task timeout %j → %s', (text, want) => {
    if (typeof want === 'number') expect(parseDuration(text, 'timeout', timeout)).toBe(want);
    else expect(() => parseDuration(text, 'timeout', timeout)).toThrow(want);
  });

  it('every timer-driven range stays within what setTimeout can hold', () => {
    for (const key of ['taskTimeout', 'lease', 'churnCheck', 'wait', 'chaos'] as const) {
      expect(DURATION_RANGES[key].max, key).toBeLessThanOrEqual(TIMER_MAX_MS);
    }
    for (const [key, r] of Object.entries(DURATION_RANGES)) expect(r.min, key).toBeLessThanOrEqual(r.max);
  });

  it('--lease 0, --since 0 and a max-age of 0 are refused', () => {
    expect(() => parseDuration('0', '--lease', DURATION_RANGES.lease)).toThrow(/--lease "0" is out of range: allowed from 1s to 1d/);
    expect(() => parseDuration('0s', 'since', DURATION_RANGES.window)).toThrow(/out of range/);
    expect(() => parseDuration('0d', 'max-age', DURATION_RANGES.maxAge)).toThrow(/allowed from 1s to 3650d/);
    expect(parseDuration('0', 'chaos latency', DURATION_RANGES.chaos)).toBe(0);
  });
});

/** A small valid pack; each lint case below adds or overrides files. */
const good: PackFiles = {
  'pack.yaml': 'name: t\nversion: 1.0.0\n',
  'params/greeting.yaml': 'name: greeting\nschema:\n  type: string\n',
  'params/disk.yaml': 'name: disk\nschema:\n  type: object\n  properties:\n    size: { type: string }\n    dev: { type: string }\n  additionalProperties: false\n',
  'params/opts.yaml': 'name: opts\nschema:\n  type: object\n',
  'params/items.yaml': 'name: items\nschema:\n  type: array\n  items: { type: string }\n',
  'params/big.yaml': 'name: big\nschema:\n  type: integer\n',
  'tasks/hello.yaml': 'name: hello\nparams:\n  required: [greeting]\nscript: echo {{ greeting }}\n',
};

function lint(over: Record<string, string>): string[] {
  return lintPack({ ...good, ...over }).diagnostics.map(formatDiagnostic);
}

const task = (script: string, extra = '') => `name: x\nparams:\n  required: [greeting, disk, opts, items, big]\n${extra}script: "${script}"\n`;

describe('lint refuses at file:line:col what would fail or change later', () => {
  const cases: Array<[string, Record<string, string>, string[]]> = [
    ['the valid pack', {}, []],
    ['timeout: 0', { 'tasks/hello.yaml': good['tasks/hello.yaml'] + 'timeout: 0\n' }, [
      'tasks/hello.yaml:5:10: timeout 0 is out of range: allowed from 1s to 24d',
    ]],
    ['timeout: 30d (beyond a timer)', { 'tasks/hello.yaml': good['tasks/hello.yaml'] + 'timeout: 30d\n' }, [
      'tasks/hello.yaml:5:10: timeout "30d" is out of range: allowed from 1s to 24d',
    ]],
    ['timeout: 0.0001 (not whole ms)', { 'tasks/hello.yaml': good['tasks/hello.yaml'] + 'timeout: 0.0001\n' }, [
      'tasks/hello.yaml:5:10: timeout 0.0001 is not a whole number of milliseconds',
    ]],
    ['timeout: 10m is fine', { 'tasks/hello.yaml': good['tasks/hello.yaml'] + 'timeout: 10m\n' }, []],
    ['an integer beyond 2^53 in a param default', { 'params/big.yaml': 'name: big\nschema:\n  type: integer\n  default: 12345678901234567891\n' }, [
      'params/big.yaml:4:12: this number cannot be held exactly: integers are exact only up to ±9007199254740991; write it as a string ("...")',
    ]],
    ['an integer beyond 2^53 in profile values', { 'profiles/p.yaml': 'name: p\nparams:\n  big: 9007199254740993\n' }, [
      'profiles/p.yaml:3:8: this number cannot be held exactly: integers are exact only up to ±9007199254740991; write it as a string ("...")',
    ]],
    ['1e400 is not a number JSON can hold', { 'profiles/p.yaml': 'name: p\nparams:\n  big: 1e400\n' }, [
      'profiles/p.yaml:3:8: 1e400 (infinite or not a number) cannot be held in JSON; write it as a string',
    ]],
    ['the largest exact integer is fine', { 'profiles/p.yaml': 'name: p\nparams:\n  big: 9007199254740991\n' }, []],
    ['a YAML alias bomb', { 'profiles/p.yaml': `name: p\n${bomb}\n` }, [
      'profiles/p.yaml:3:8: invalid YAML: aliases expand too far (more than 100 copies); write the values out or use fewer aliases',
    ]],
    ['YAML nested too deeply', { 'profiles/p.yaml': `name: p\nparams:\n  greeting: ${'['.repeat(70)}${']'.repeat(70)}\n` }, [
      'profiles/p.yaml:3:75: nested too deeply: at most 64 levels of mappings and lists',
    ]],
    ['a YAML file over 1 MiB', { 'profiles/p.yaml': `name: p\ndescription: "${'x'.repeat(1024 * 1024)}"\n` }, [
      'profiles/p.yaml:1:1: file is 1048600 bytes; a YAML file may hold at most 1 MiB',
    ]],
    ['field access on a string', { 'tasks/x.yaml': task('{{ greeting.size }}') }, [
      "tasks/x.yaml:4:13: template: 'greeting' is a string: it has no field 'size'; use the filter: | size",
    ]],
    ['.first on a list', { 'tasks/x.yaml': task('{{ items.first }} {{ items[0] }}') }, [
      "tasks/x.yaml:4:13: template: 'items' is a list: it has no field 'first' (use an index, e.g. items[0] or use the filter: | first)",
    ]],
    ['a missing field of a closed mapping', { 'tasks/x.yaml': task('{{ disk.dev }} {{ disk.last }}') }, [
      "tasks/x.yaml:4:28: template: 'disk' has no field 'last'; use the filter: | last",
    ]],
    ['a field of an integer', { 'tasks/x.yaml': task('{{ big.size }}') }, [
      "tasks/x.yaml:4:13: template: 'big' is an integer: it has no field 'size'; use the filter: | size",
    ]],
    ['machine.name.size', { 'tasks/x.yaml': task('{{ machine.name.size }} {{ machine.size }}') }, [
      "tasks/x.yaml:4:13: template: 'machine.name' is a string: it has no field 'size'; use the filter: | size",
      "tasks/x.yaml:4:37: template: machine has no field 'size' (it has id, name, environment); use the filter: | size",
    ]],
    ['an open mapping and the filters are fine', { 'tasks/x.yaml': task('{{ opts.size }} {{ disk.size }} {{ disk | size }} {{ items | first }} {{ items | last }}') }, []],
    ['nested literal loops', { 'tasks/x.yaml': task('{% for i in (1..100000) %}{% for j in (1..100000) %}x{% endfor %}{% endfor %}') }, [
      'tasks/x.yaml:4:10: template: this loop would run 100000 times; a template may loop at most 10000 times',
    ]],
    ['nested loops whose product is too many', { 'tasks/x.yaml': task('{% for i in (1..200) %}{% for j in (1..200) %}x{% endfor %}{% endfor %}') }, [
      'tasks/x.yaml:4:33: template: this loop would run 40000 times; a template may loop at most 10000 times',
    ]],
    ['loops within the bound', { 'tasks/x.yaml': task('{% for i in (1..100) %}{% for j in (1..100) %}x{% endfor %}{% endfor %}') }, []],
  ];
  it.each(cases)('%s', (_name, over, want) => {
    expect(lint(over)).toEqual(want);
  });
});

describe('the renderer: field access means field access, and work is bounded', () => {
  const vars = { disk: { dev: '/dev/sda' }, sized: { size: '10G' }, items: ['a', 'b', 'c'], s: 'abc', big: 'x'.repeat(100_000) };
  const cases: Array<[string, string | RegExp]> = [
    ['{{ disk.size }}', /^a mapping has no field 'size'; use the filter instead: \| size$/],
    ['{{ disk.first }}', /no field 'first'/],
    ['{{ disk.last }}', /no field 'last'/],
    ['{{ items.first }}', /^a list has no field 'first'/],
    ['{{ items.size }}', /^a list has no field 'size'/],
    ['{{ s.size }}', /^a string has no field 'size'/],
    ['{% if disk.size > 0 %}big{% endif %}', /no field 'size'/],
    ['{{ sized.size }}', '10G'],
    ['{{ disk | size }} {{ items | size }} {{ s | size }}', '1 3 3'],
    ['{{ items | first }}{{ items | last }}{{ items[1] }}', 'acb'],
    ['{% for x in items %}{% if forloop.first %}[{% endif %}{{ x }}{% if forloop.last %}]{% endif %}{% endfor %}', '[abc]'],
    ['{% for i in (1..100000) %}{% for j in (1..100000) %}x{% endfor %}{% endfor %}', /took more than 1000 ms|allocates too much/],
    ['{% assign s = "x" %}{% for i in (1..40) %}{% assign s = s | append: s %}{% endfor %}', /allocates too much/],
    ['{% for i in (1..1000) %}{{ big }}{% endfor %}', /larger than 4 MiB \(the limit\)/],
  ];
  it.each(cases)('%s', (src, want) => {
    if (typeof want === 'string') {
      expect(renderTemplate(src, vars)).toBe(want);
      return;
    }
    try {
      renderTemplate(src, vars);
    } catch (e) {
      expect(e).toBeInstanceOf(TemplateError);
      expect((e as TemplateError).message).toMatch(want);
      return;
    }
    throw new Error('expected a TemplateError');
  });

  it('a template that loops over params too long is stopped, not run for seconds', () => {
    const l = Array.from({ length: 1000 }, (_, i) => i);
    expect(() => renderTemplate('{% for a in l %}{% for b in l %}{% for c in l %}{{ c }}{% endfor %}{% endfor %}{% endfor %}', { l })).toThrow(TemplateError);
  });

  it('templateLoopProblems sizes literal ranges only', () => {
    expect(templateLoopProblems('{% for i in (1..n) %}{% for j in (1..n) %}{% endfor %}{% endfor %}')).toEqual([]);
    expect(templateLoopProblems('{% if x %}{% for i in (1..20000) %}{% endfor %}{% endif %}')).toHaveLength(1);
  });
});

describe('pack paths: only plain relative paths inside the pack', () => {
  const cases: Array<[string, string | undefined]> = [
    ['tasks/a.yaml', undefined],
    ['pack.yaml', undefined],
    ['a/b/c/d.yaml', undefined],
    ['../../x', "has a '..' segment (it must stay inside the pack: no ., .. or //)"],
    ['tasks/../../x.yaml', "has a '..' segment (it must stay inside the pack: no ., .. or //)"],
    ['./tasks/a.yaml', "has a '.' segment (it must stay inside the pack: no ., .. or //)"],
    ['/abs', 'is absolute (it must be relative to the pack)'],
    ['C:/x.yaml', 'is absolute (it must be relative to the pack)'],
    ['tasks\\a.yaml', 'contains a backslash (use / between directories)'],
    ['tasks/a\u0000.yaml', 'contains a NUL or control character'],
    ['tasks/a\n.yaml', 'contains a NUL or control character'],
    ['tasks//a.yaml', "has a '(empty)' segment (it must stay inside the pack: no ., .. or //)"],
    ['tasks/', "has a '(empty)' segment (it must stay inside the pack: no ., .. or //)"],
    ['', 'is empty'],
    ['x'.repeat(300), 'has a name longer than 255 characters'],
  ];
  it.each(cases)('%j → %s', (path, want) => {
    expect(packPathProblem(path)).toBe(want);
  });

  it('a bundle holding ../ paths is refused by name', () => {
    const b = makeBundle('x', '1.0.0', { 'pack.yaml': 'name: x\nversion: 1.0.0\n', '../../evil.yaml': 'x' });
    expect(() => readBundle(JSON.stringify(b), 'x.takt.json')).toThrow(/x\.takt\.json: file path "\.\.\/\.\.\/evil\.yaml" has a '\.\.' segment/);
  });

  const tmp = mkdtempSync(join(tmpdir(), 'takt-paths-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('a symlink out of the pack (to /proc/self/environ) is refused naming it; one inside is read', async () => {
    const dir = join(tmp, 'pack');
    mkdirSync(join(dir, 'tasks'), { recursive: true });
    mkdirSync(join(dir, 'shared'), { recursive: true });
    writeFileSync(join(dir, 'pack.yaml'), 'name: p\nversion: 1.0.0\n');
    writeFileSync(join(dir, 'shared', 'hello.yaml'), 'name: hello\nscript: echo\n');
    symlinkSync('../shared/hello.yaml', join(dir, 'tasks', 'hello.yaml'));
    expect(Object.keys(await readPackDir(dir)).sort()).toEqual(['pack.yaml', 'shared/hello.yaml', 'tasks/hello.yaml']);

    symlinkSync('/proc/self/environ', join(dir, 'tasks', 'env.yaml'));
    const err = await readPackDir(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TaktError);
    expect((err as TaktError).message).toMatch(/tasks\/env\.yaml: a symbolic link out of the pack \(to \/proc\/(self|\d+)\/environ\)/);
    rmSync(join(dir, 'tasks', 'env.yaml'));
    symlinkSync('../../outside.yaml', join(dir, 'tasks', 'out.yaml'));
    writeFileSync(join(tmp, 'outside.yaml'), 'name: out\nscript: echo\n');
    await expect(readPackDir(dir)).rejects.toThrow(/out of the pack/);
  });
});

describe('numbers and YAML outside packs', () => {
  it('a typed output or param that JSON already rounded is refused with the hint', () => {
    const problems = validateValue({ type: 'integer' }, JSON.parse('12345678901234567891'));
    expect(problems).toEqual([{ path: '', message: expect.stringMatching(/this number \(as received: it may already be rounded\) cannot be held exactly.*write it as a string/) }]);
    expect(validateValue({ type: 'integer' }, Number.MAX_SAFE_INTEGER)).toEqual([]);
    expect(validateValue({ type: 'number' }, 0.1)).toEqual([]);
  });

  it('parseYamlValue bounds aliases, depth and size and says where', () => {
    expect(() => parseYamlValue(bomb, 'x.yaml')).toThrow(/^x\.yaml:2:8: invalid YAML: aliases expand too far/);
    expect(() => parseYamlValue('['.repeat(5000) + ']'.repeat(5000), 'x.yaml')).toThrow(/^x\.yaml:1:\d+: invalid YAML: nested too deeply/);
    expect(() => parseYamlValue('n: 12345678901234567891', 'x.yaml')).toThrow(/^x\.yaml:1:4: this number cannot be held exactly/);
    expect(() => parseYamlValue('a: 1\n---\nb: 2\n', 'x.yaml')).toThrow(/one document/);
    expect(parseYamlValue('a: [1, "12345678901234567891"]', 'x.yaml')).toEqual({ a: [1, '12345678901234567891'] });
  });
});
