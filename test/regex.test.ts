/**
 * Issue 10: user-supplied regular expressions run on RE2 (src/model/regex.ts), schema formats too
 * (src/model/formats.ts). Pure logic, table-driven. No timing: inputs that a backtracking engine would
 * take ~forever on are answered, so with one these tests fail on vitest's timeout.
 */
import { describe, expect, it } from 'vitest';
import { checkExpectations } from '../src/model/expect.js';
import { compileUserRegex, MAX_PROGRAM_SIZE, maxTextFor, userRegexProblem } from '../src/model/regex.js';
import { validateValue } from '../src/model/validate.js';
import { metaSchemaProblems } from '../src/content/schema.js';
import { formatDiagnostic, lintPack } from '../src/content/lint.js';

const EVIL = `${'a'.repeat(10_000)}!`;

describe('compileUserRegex: RE2, linear time', () => {
  it.each([
    ['^(a+)+$', EVIL, false],
    ['^(a+)+$', 'a'.repeat(10_000), true],
    ['(a|aa)+$', EVIL, false],
    ['^(\\w+\\s?)*$', `${'word '.repeat(2_000)}!`, false],
    ['b', 'abc', true],
    ['^\\d+(\\.\\d+)?$', '3.14', true],
    ['(?i)^ok$', 'OK', true],
    ['^\\p{L}+$', 'héllo', true],
    ['^.$', '😀', true],
  ])('/%s/ on case %# → %s', (pattern, text, want) => {
    expect(compileUserRegex(pattern).test(text)).toBe(want);
  });
});

describe('userRegexProblem: what RE2 cannot run is refused with a hint', () => {
  it.each([
    ['^(a+)+$', null],
    ['(?P<name>x)', null],
    ['(a)\\1', 'backreferences are not supported'],
    ['a(?=b)', 'lookahead and lookbehind are not supported'],
    ['a(?!b)', 'lookahead and lookbehind are not supported'],
    ['(?<=a)b', 'lookahead and lookbehind are not supported'],
    ['(?<!a)b', 'lookahead and lookbehind are not supported'],
    ['\\u0041', 'write \\x{41} for \\u0041'],
    ['[a-', 'missing closing ]'],
    ['(a{1000}){1000}', 'invalid repeat count'],
    [`[a-z]{1000}[a-z]{${MAX_PROGRAM_SIZE - 1000}}x`, 'is too large'],
  ])('%s → %s', (pattern, want) => {
    const got = userRegexProblem(pattern);
    if (want === null) expect(got).toBeNull();
    else {
      expect(got).toContain(want);
      expect(got).toContain('RE2');
    }
  });
});

describe('the per-match budget: (text length) x (program size) is bounded', () => {
  it('a text past the budget is refused by test() and reported, never matched', () => {
    const re = compileUserRegex('[ab]{900}');
    const limit = maxTextFor(re.size);
    expect(re.fits('a'.repeat(limit))).toBe(true);
    expect(() => re.test('a'.repeat(limit + 1))).toThrow(/is too long \(\d+ characters\).*\(limit \d+ for this pattern\)/);
    expect(validateValue({ type: 'string', pattern: '[ab]{900}' }, 'a'.repeat(limit + 1))[0]!.message).toMatch(/is too long \(\d+ characters\) to be checked against pattern/);
  });

  it('a small pattern checks a whole 1 MiB value', () => {
    expect(compileUserRegex('^(a+)+$').fits('a'.repeat(1024 * 1024))).toBe(true);
  });
});

describe('schemas: every pattern keyword runs on RE2', () => {
  it.each([
    ['pattern', { type: 'string', pattern: '^(a+)+$' }, EVIL],
    ['propertyNames', { type: 'object', propertyNames: { pattern: '^(a+)+$' } }, { [EVIL]: 1 }],
    ['patternProperties', { type: 'object', patternProperties: { '^(a+)+$': { type: 'string' } }, additionalProperties: false }, { [EVIL]: 'x' }],
    ['format: url', { type: 'string', format: 'url' }, `http://${':'.repeat(400_000)}`],
    ['format: regex', { type: 'string', format: 'regex' }, 'a(?=b)'],
  ])('%s: the value is refused', (_, schema, value) => {
    expect(validateValue(schema, value).length).toBeGreaterThan(0);
  });

  it.each([
    ['^((a)\\2)$', '/pattern'],
    ['(?=x)', '/pattern'],
  ])('a schema with %s is refused at %s', (pattern, path) => {
    const problems = metaSchemaProblems({ type: 'string', pattern });
    expect(problems[0]!.path).toBe(path);
    expect(problems[0]!.message).toContain('RE2 syntax');
  });

  it('a `pattern` field inside a default is data, not a pattern', () => {
    expect(metaSchemaProblems({ type: 'object', default: { pattern: '(?=x)' } })).toEqual([]);
  });
});

describe('formats keep their meaning on RE2', () => {
  it.each([
    ['url', 'https://example.com/a?b=c', true],
    ['url', 'http://8.8.8.8:8080/x', true],
    ['url', 'http://user:pw@host.example/x', true],
    ['url', 'http://10.0.0.1/', false],
    ['url', 'http://192.168.1.1', false],
    ['url', 'http://172.16.0.1', false],
    ['url', 'http://localhost/', false],
    ['url', 'http://exa mple.com', false],
    ['url', 'http://example.com/\u00a0', false],
    ['email', 'ops@example.com', true],
    ['email', 'not an email', false],
    ['ipv4', '10.1.2.3', true],
    ['ipv4', '10.1.2.256', false],
    ['ipv6', '::1', true],
    ['uuid', '123e4567-e89b-12d3-a456-426614174000', true],
    ['hostname', 'db-1.example.com', true],
    ['hostname', '-bad', false],
    ['duration', 'P1DT2H', true],
    ['uri-reference', '../a/b#c', true],
    ['json-pointer', '/a/b~1c', true],
    ['regex', '^[a-z]+$', true],
    ['regex', '(a)\\1', false],
  ])('%s: %j → %s', (format, value, valid) => {
    expect(validateValue({ type: 'string', format }, value).length === 0).toBe(valid);
  });
});

describe('expectations: `matches` runs on RE2', () => {
  it('10,000 a\'s and a ! against ^(a+)+$ is answered, naming the rule, the value shortened', () => {
    const got = checkExpectations([{ param: 'o', matches: '^(a+)+$' }], { o: EVIL });
    expect(got).toMatch(/^expectation 'o matches \/\^\(a\+\)\+\$\/' failed \(got "a{199}… \(10003 characters\)\)$/);
  });

  it('a pattern RE2 cannot run (stored before RE2) fails the rule, saying why, instead of throwing', () => {
    expect(checkExpectations([{ param: 'o', matches: 'a(?=b)' }], { o: 'ab' })).toContain('cannot be checked');
  });

  it('a matching value passes', () => {
    expect(checkExpectations([{ param: 'o', matches: '^ok' }], { o: 'okay' })).toBeNull();
  });
});

describe('lint: patterns RE2 cannot run are refused at file:line:col', () => {
  it('in a param schema, a task output schema, a task `matches`, a stage `matches` and an expectation schema', () => {
    const files = {
      'pack.yaml': 'name: t\nversion: 1.0.0\n',
      'params/p.yaml': 'name: p\nschema:\n  type: string\n  pattern: "(a)\\\\1"\n',
      'tasks/t.yaml': [
        'name: t',
        'script: x',
        'outputs:',
        '  o:',
        '    type: object',
        '    propertyNames: { pattern: "(?=a)" }',
        'expect:',
        "  - { param: o, matches: '(?<!x)y' }",
        '  - param: o',
        '    schema: { type: string, pattern: "a(?!b)" }',
        '',
      ].join('\n'),
      'stages/s.yaml': "name: s\ntasks: [t]\nexpect:\n  - { param: p, matches: '^(a+)+$' }\n  - { param: p, matches: '\\u0041' }\n",
    };
    const got = lintPack(files).diagnostics.map(formatDiagnostic);
    expect(got.map((d) => d.split(': ')[0])).toEqual([
      'params/p.yaml:4:12',
      'stages/s.yaml:5:26',
      'tasks/t.yaml:6:31',
      'tasks/t.yaml:8:26',
      'tasks/t.yaml:10:38',
    ]);
    expect(got.every((d) => d.includes('RE2'))).toBe(true);
  });
});
