/**
 * Classification (issue #13 item 4), without an endpoint: the fact-selector parser and matcher
 * (model/factselect.ts), the classifier (engine/classify.ts: order, first match wins, reasons, the
 * nearest rules on no match, what a rule changes, the in-progress guard), and lint of `classifiers/`
 * at file:line:col.
 */
import { describe, expect, it } from 'vitest';
import type { PackFiles } from '../src/content/files.js';
import { formatDiagnostic, lintPack } from '../src/content/lint.js';
import { assertReplaceable, classificationChange, classify, orderedRules, type OrderedRule } from '../src/engine/classify.js';
import { emptyContentSet, type ClassifierDef } from '../src/model/content.js';
import { TaktError } from '../src/model/errors.js';
import { explainFactTerm, factMatches, factPathProblem, parseFactTerm, parseQuantity } from '../src/model/factselect.js';
import type { Facts } from '../src/model/facts.js';

const GiB = 2 ** 30;

const facts = (over: Partial<Facts> = {}): Facts => ({
  hostname: 'rack1-u7',
  machineId: null,
  productUuid: '8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d',
  macs: ['52:54:00:12:34:56', '52:54:00:12:34:57'],
  addresses: [{ interface: 'eth0', address: '10.0.0.7', family: 'IPv4', prefix: 24 }],
  os: { id: 'debian', versionId: '12', prettyName: 'Debian GNU/Linux 12', idLike: [] },
  kernel: '6.1.0-13-amd64',
  arch: 'x86_64',
  cpu: { model: 'QEMU Virtual CPU', count: 4 },
  memoryBytes: 4 * GiB,
  disks: [
    { name: 'vda', sizeBytes: 20 * GiB, model: null, rotational: false },
    { name: 'vdb', sizeBytes: 200 * GiB, model: 'big', rotational: true },
  ],
  agentVersion: '0.1.0',
  ...over,
});

describe('fact selectors: parse', () => {
  it.each([
    ['memoryBytes>=2GiB', { path: 'memoryBytes', op: 'ge', number: 2 * GiB }],
    ['cpu.count >= 2', { path: 'cpu.count', op: 'ge', number: 2 }],
    ['cpu.count<8', { path: 'cpu.count', op: 'lt', number: 8 }],
    ['memoryBytes>500MB', { path: 'memoryBytes', op: 'gt', number: 500_000_000 }],
    ['os.id=debian', { path: 'os.id', op: 'eq', values: ['debian'] }],
    ['os.id==debian', { path: 'os.id', op: 'eq', values: ['debian'] }],
    ['os.id!=ubuntu', { path: 'os.id', op: 'ne', values: ['ubuntu'] }],
    ['os.id in (debian, ubuntu)', { path: 'os.id', op: 'in', values: ['debian', 'ubuntu'] }],
    ['arch notin (aarch64,riscv64)', { path: 'arch', op: 'notin', values: ['aarch64', 'riscv64'] }],
    ['productUuid', { path: 'productUuid', op: 'exists', values: [] }],
    ['!machineId', { path: 'machineId', op: 'absent', values: [] }],
    ['disks[].sizeBytes>=100GB', { path: 'disks[].sizeBytes', op: 'ge', number: 100e9 }],
    ['macs=52:54:00:12:34:56', { path: 'macs', op: 'eq', values: ['52:54:00:12:34:56'] }],
    ['memoryBytes=4GiB', { path: 'memoryBytes', op: 'eq', values: [String(4 * GiB)] }],
    ['disks[].rotational=false', { path: 'disks[].rotational', op: 'eq', values: ['false'] }],
  ])('%s', (text, want) => {
    expect(parseFactTerm(text)).toMatchObject(want);
  });

  it.each([
    ['', /empty/],
    ['memoryBytes>=lots', /'lots' is not a number/],
    ['os.id>=2', /'os.id' is a string, not a number/],
    ['shoe.size=9', /facts has no field 'shoe'/],
    ['os.name=debian', /'os' has no field 'name'.*it has id, versionId, prettyName, idLike/],
    ['memorybytes>=1', /did you mean 'memoryBytes'/],
    ['os[].id=x', /'os' is not a list/],
    ['os=debian', /'os' is a mapping: compare one of its fields/],
    ['os.id in debian', /a set is written in parentheses/],
    ['os.id in (a,,b)', /a set lists values between commas/],
    ['os.id >', /is not a number/],
    ['a b c', /not understood/],
    ['__proto__=x', /'__proto__' is not a field name/],
    ['constructor=x', /facts has no field 'constructor'/],
    ['memoryBytes>=1constructor', /is not a number/],
  ])('refuses %j', (text, why) => {
    expect(() => parseFactTerm(text)).toThrow(why);
    try {
      parseFactTerm(text);
    } catch (e) {
      expect(e).toBeInstanceOf(TaktError);
      expect((e as TaktError).code).toBe('invalid');
    }
  });

  it.each([
    ['2', 2],
    ['-1', -1],
    ['1.5GiB', 1.5 * GiB],
    ['64M', 64 * 2 ** 20],
    ['1TB', 1e12],
    ['2tib', 2 * 2 ** 40],
    ['2 GiB', 2 * GiB],
    ['2XB', undefined],
    ['', undefined],
  ])('quantity %j is %s', (text, n) => {
    expect(parseQuantity(text)).toBe(n);
  });

  it('checks paths against FactsSchema (rollouts use the same check)', () => {
    expect(factPathProblem('os.id')).toBeUndefined();
    expect(factPathProblem('addresses[].address')).toBeUndefined();
    expect(factPathProblem('addresses.address')).toBeUndefined();
    expect(factPathProblem('kernel.version')).toMatch(/'kernel' has no fields \(it is a string\)/);
  });
});

describe('fact selectors: match, with reasons', () => {
  const f = facts();
  it.each([
    ['memoryBytes>=2GiB', true, 'memoryBytes 4294967296 >= 2147483648 (2GiB)'],
    ['memoryBytes>=8GiB', false, 'memoryBytes 4294967296 is not >= 8589934592 (8GiB)'],
    ['cpu.count>=2', true, 'cpu.count 4 >= 2'],
    ['cpu.count<4', false, 'cpu.count 4 is not < 4'],
    ['cpu.count<=4', true, 'cpu.count 4 <= 4'],
    ['os.id=debian', true, 'os.id "debian" = "debian"'],
    ['os.id=ubuntu', false, 'os.id "debian" is not "ubuntu"'],
    ['os.id in (debian, ubuntu)', true, 'os.id "debian" in (debian, ubuntu)'],
    ['os.id notin (debian, ubuntu)', false, 'os.id "debian" in (debian, ubuntu), wanted notin (debian, ubuntu)'],
    ['os.id!=ubuntu', true, 'os.id "debian" != "ubuntu"'],
    ['productUuid', true, 'productUuid is present ("8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d")'],
    ['machineId', false, 'machineId is absent'],
    ['!machineId', true, 'machineId is absent'],
    ['!productUuid', false, 'productUuid is present ("8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d"), wanted absent'],
    ['macs=52:54:00:12:34:57', true, 'macs ["52:54:00:12:34:56", "52:54:00:12:34:57"] = "52:54:00:12:34:57"'],
    ['macs!=52:54:00:12:34:57', false, 'macs ["52:54:00:12:34:56", "52:54:00:12:34:57"] = "52:54:00:12:34:57", wanted != "52:54:00:12:34:57"'],
    ['disks[].sizeBytes>=100GiB', true, 'disks[].sizeBytes [21474836480, 214748364800] >= 107374182400 (100GiB)'],
    ['disks[].sizeBytes>=1TiB', false, 'disks[].sizeBytes [21474836480, 214748364800] is not >= 1099511627776 (1TiB)'],
    ['disks[].rotational=true', true, 'disks[].rotational [false, true] = "true"'],
    ['memoryBytes=4GiB', true, 'memoryBytes 4294967296 = "4294967296"'],
    ['os.idLike', false, 'os.idLike is absent'],
    ['!os.idLike', true, 'os.idLike is absent'],
    ['addresses[].address=10.0.0.7', true, 'addresses[].address "10.0.0.7" = "10.0.0.7"'],
  ])('%s → %s', (text, ok, reason) => {
    expect(explainFactTerm(f, parseFactTerm(text))).toEqual({ ok, reason });
  });

  it('a machine without facts matches only absence', () => {
    expect(explainFactTerm(null, parseFactTerm('cpu.count>=1'))).toEqual({ ok: false, reason: 'cpu.count is absent (wanted >= 1)' });
    expect(explainFactTerm(null, parseFactTerm('os.id=debian'))).toEqual({ ok: false, reason: 'os.id is absent (wanted = "debian")' });
    expect(explainFactTerm(null, parseFactTerm('!os.id')).ok).toBe(true);
    expect(explainFactTerm(null, parseFactTerm('os.id!=debian')).ok).toBe(true);
  });

  it.each([
    ['os.id', 'debian', true],
    ['cpu.count', '4', true],
    ['macs', '52:54:00:12:34:56', true],
    ['macs', '52:54:00:00:00:00', false],
    ['machineId', 'null', false],
    ['os', '[object Object]', false],
  ])('factMatches(%s, %s) is %s (rollout selectors)', (path, want, ok) => {
    expect(factMatches(f, path, want)).toBe(ok);
  });
});

/** A content set holding `classifiers` (by layer) for orderedRules. */
function rulesOf(...classifiers: Array<{ def: ClassifierDef; layer?: string }>): OrderedRule[] {
  const set = emptyContentSet();
  for (const c of classifiers) set.objects.classifiers.set(c.def.name, { def: c.def, layer: c.layer ?? 'site' });
  return orderedRules(set, (layer) => (layer === 'site' ? '1.2.0' : '2.0.0'));
}

describe('classify', () => {
  const site: ClassifierDef = {
    name: 'site',
    rules: [
      { name: 'gpu', match: ['cpu.model=GPU box'], pipeline: 'gpu' },
      { name: 'big-vms', match: ['memoryBytes>=2GiB', 'cpu.count>=2'], pipeline: 'demo', profiles: ['big'] },
      { name: 'rest', pipeline: 'small' },
    ],
  };

  it('gives the first rule that matches, with a reason per selector', () => {
    const r = classify(facts(), rulesOf({ def: site }));
    expect(r.rule).toEqual({ pack: 'site', version: '1.2.0', classifier: 'site', name: 'big-vms' });
    expect(r.reasons).toEqual(['memoryBytes 4294967296 >= 2147483648 (2GiB)', 'cpu.count 4 >= 2']);
  });

  it('a rule without selectors matches every machine', () => {
    const r = classify(facts({ memoryBytes: GiB }), rulesOf({ def: site }));
    expect(r.rule?.name).toBe('rest');
    expect(r.reasons).toEqual(['matches every machine (no selectors)']);
  });

  it('tries classifiers by order, then name, across packs; rules in file order', () => {
    const early: ClassifierDef = { name: 'zz-early', order: 10, rules: [{ name: 'debian', match: ['os.id=debian'], pipeline: 'deb' }] };
    const late: ClassifierDef = { name: 'aa-late', order: 200, rules: [{ name: 'all', pipeline: 'x' }] };
    const rules = rulesOf({ def: site }, { def: early, layer: 'other' }, { def: late, layer: 'local' });
    expect(rules.map((r) => `${r.ref.classifier}/${r.ref.name}`)).toEqual(['zz-early/debian', 'site/gpu', 'site/big-vms', 'site/rest', 'aa-late/all']);
    expect(rules[0]!.ref).toEqual({ pack: 'other', version: '2.0.0', classifier: 'zz-early', name: 'debian' });
    expect(rules[4]!.ref.version).toBeNull();
    expect(classify(facts(), rules).rule?.name).toBe('debian');
    const sameOrder = rulesOf({ def: { ...early, order: undefined, name: 'b' } }, { def: { ...late, order: undefined, name: 'a' } });
    expect(sameOrder.map((r) => r.ref.classifier)).toEqual(['a', 'b']);
  });

  it('no match says why the nearest rules failed (fewest failing selectors first), each failure with its value', () => {
    const strict: ClassifierDef = {
      name: 'strict',
      rules: [
        { name: 'far', match: ['arch=aarch64', 'cpu.count>=64', 'memoryBytes>=1TiB'], pipeline: 'p' },
        { name: 'near', match: ['os.id=debian', 'memoryBytes>=8GiB'], pipeline: 'p' },
        { name: 'mid', match: ['os.id=ubuntu', 'cpu.count>=8'], pipeline: 'p' },
        { name: 'midder', match: ['os.id=ubuntu', 'cpu.count>=16'], pipeline: 'p' },
        { name: 'last', match: ['os.id=rocky', 'arch=ppc', 'cpu.count>=99'], pipeline: 'p' },
      ],
    };
    const r = classify(facts(), rulesOf({ def: strict }));
    expect(r.rule).toBeNull();
    expect(r.reasons).toEqual([
      'no rule matched (5 tried); nearest:',
      'near (classifier strict, pack site@1.2.0): memoryBytes 4294967296 is not >= 8589934592 (8GiB)',
      'mid (classifier strict, pack site@1.2.0): os.id "debian" is not "ubuntu"; cpu.count 4 is not >= 8',
      'midder (classifier strict, pack site@1.2.0): os.id "debian" is not "ubuntu"; cpu.count 4 is not >= 16',
    ]);
  });

  it('says when there are no rules, and when the machine has no facts', () => {
    expect(classify(facts(), [])).toEqual({ rule: null, reasons: [expect.stringMatching(/^no classification rules are installed/)] });
    const r = classify(null, rulesOf({ def: { name: 'c', rules: [{ name: 'r', match: ['cpu.count>=1'], pipeline: 'p' }] } }));
    expect(r.reasons[0]).toBe('the machine has reported no facts');
    expect(r.reasons[2]).toBe('r (classifier c, pack site@1.2.0): cpu.count is absent (wanted >= 1)');
  });

  it('a rule whose selector does not parse (past lint) never matches and says why', () => {
    const r = classify(facts(), rulesOf({ def: { name: 'c', rules: [{ name: 'broken', match: ['os.id>=x'], pipeline: 'p' }] } }));
    expect(r.rule).toBeNull();
    expect(r.reasons[1]).toMatch(/^broken .*: selector 'os\.id>=x': 'x' is not a number/);
  });
});

describe('what a rule changes', () => {
  const m = { profiles: ['mine', 'big'], environment: 'metal', pipeline: null, params: { greeting: 'mine' } };
  it.each([
    ['adds profiles after the machine\'s own, once', { profiles: ['big', 'fast'] }, { profiles: ['mine', 'big', 'fast'] }, { profiles: ['fast'], environment: null, pipeline: null, params: [] }],
    ['sets environment and pipeline', { environment: 'vm', pipeline: 'demo' }, { environment: 'vm', pipeline: 'demo' }, { profiles: [], environment: 'vm', pipeline: 'demo', params: [] }],
    ['leaves what is already so', { environment: 'metal', profiles: ['mine'] }, {}, { profiles: [], environment: null, pipeline: null, params: [] }],
    ['sets params the machine has no value for, never overwrites', { params: { greeting: 'rule', size: 3 } }, { params: { size: 3 } }, { profiles: [], environment: null, pipeline: null, params: ['size'] }],
  ])('%s', (_what, rule, patch, gave) => {
    expect(classificationChange(m, { name: 'r', ...rule })).toEqual({ patch, gave });
  });

  const ref = { pack: 'site', version: '1.2.0', classifier: 'site', name: 'big-vms' };
  it.each([
    ['no pipeline yet', null, 'idle', null, false, true],
    ['same pipeline', 'demo', 'running', 'j-1', false, true],
    ['done', 'old', 'done', null, false, true],
    ['idle with a pipeline', 'old', 'idle', null, false, true],
    ['running', 'old', 'running', 'j-1', false, false],
    ['stopped', 'old', 'stopped', null, false, false],
    ['paused', 'old', 'paused', null, false, false],
    ['awaiting approval', 'old', 'awaiting-approval', null, false, false],
    ['running, forced', 'old', 'running', 'j-1', true, true],
  ] as const)('replacing a pipeline: %s', (_what, pipeline, state, currentJob, force, ok) => {
    const run = () => assertReplaceable({ name: 'm1', pipeline, state, currentJob }, ref, 'demo', force);
    if (ok) expect(run).not.toThrow();
    else expect(run).toThrow(/machine 'm1' is .* in pipeline old; rule big-vms \(classifier site, pack site@1\.2\.0\) would replace it with demo .* --force/);
  });
});

describe('lint of classifiers/', () => {
  const base: PackFiles = {
    'pack.yaml': 'name: site\nversion: 1.2.0\n',
    'params/greeting.yaml': 'name: greeting\nschema: { type: string }\n',
    'params/pin.yaml': 'name: pin\nsecure: true\nschema: { type: string }\n',
    'profiles/big.yaml': 'name: big\n',
    'tasks/hello.yaml': 'name: hello\nscript: echo hi\n',
    'stages/one.yaml': 'name: one\ntasks: [hello]\n',
    'pipelines/demo.yaml': 'name: demo\nstages: [one]\nenvironments: [metal, vm]\n',
  };
  const lint = (classifier: string) => lintPack({ ...base, 'classifiers/site.yaml': classifier }).diagnostics.map(formatDiagnostic);

  it('accepts a good classifier', () => {
    expect(
      lint(
        [
          'name: site',
          'order: 50',
          'rules:',
          '  - name: big-vms',
          '    match: [memoryBytes>=2GiB, "cpu.count>=2", "os.id in (debian, ubuntu)"]',
          '    profiles: [big]',
          '    environment: metal',
          '    pipeline: demo',
          '    params: { greeting: hi }',
          '  - name: rest',
          '    pipeline: demo',
          '',
        ].join('\n'),
      ),
    ).toEqual([]);
  });

  it.each([
    ['unknown key', 'name: site\nrules:\n  - name: r\n    pipeline: demo\n    matches: [a]\n', 'classifiers/site.yaml:5:5: unknown field \'matches\' (allowed: name, description, match, profiles, environment, pipeline, params)'],
    ['unknown top-level key', 'name: site\nrule: []\nrules:\n  - { name: r, pipeline: demo }\n', "classifiers/site.yaml:2:1: unknown field 'rule' (allowed: name, description, order, rules)"],
    ['bad selector syntax', 'name: site\nrules:\n  - name: r\n    match: ["memoryBytes>=lots"]\n    pipeline: demo\n', "classifiers/site.yaml:4:13: selector 'memoryBytes>=lots': 'lots' is not a number; >= compares numbers, optionally with a byte unit (2GiB, 512MiB, 500GB)"],
    ['unknown fact', 'name: site\nrules:\n  - name: r\n    match: [os.version=12]\n    pipeline: demo\n', "classifiers/site.yaml:4:13: selector 'os.version=12': 'os' has no field 'version' (did you mean 'versionId'?); it has id, versionId, prettyName, idLike"],
    ['unknown profile', 'name: site\nrules:\n  - name: r\n    profiles: [bgi]\n', "classifiers/site.yaml:4:16: profile 'bgi' not found (did you mean 'big'?)"],
    ['unknown pipeline', 'name: site\nrules:\n  - name: r\n    pipeline: dmeo\n', "classifiers/site.yaml:4:15: pipeline 'dmeo' not found (did you mean 'demo'?)"],
    ['environment the pipeline does not run in', 'name: site\nrules:\n  - name: r\n    pipeline: demo\n    environment: local\n', "classifiers/site.yaml:5:18: pipeline 'demo' does not run in environment 'local'; it runs in: metal, vm"],
    ['undeclared param', 'name: site\nrules:\n  - name: r\n    params: { colour: red }\n', "classifiers/site.yaml:4:15: param 'colour' not found"],
    ['param breaking its schema', 'name: site\nrules:\n  - name: r\n    params: { greeting: 3 }\n', "classifiers/site.yaml:4:25: param 'greeting': must be a string (got an integer 3)"],
    ['secure param', 'name: site\nrules:\n  - name: r\n    params: { pin: "1234" }\n', "classifiers/site.yaml:4:15: param 'pin' is secure: a classification rule cannot set a secret; set it in a profile and give the rule that profile"],
    ['gives nothing', 'name: site\nrules:\n  - name: r\n    match: [cpu.count>=1]\n', 'classifiers/site.yaml:3:5: the rule gives nothing: add profiles, environment, pipeline or params'],
    ['duplicate rule name', 'name: site\nrules:\n  - { name: r, match: [cpu.count>=1], pipeline: demo }\n  - { name: r, match: [cpu.count>=2], pipeline: demo }\n', "classifiers/site.yaml:4:13: rule 'r' is also the name of rule 1; rule names are unique within a classifier"],
    ['unreachable behind a catch-all', 'name: site\nrules:\n  - { name: all, pipeline: demo }\n  - { name: big, match: [cpu.count>=2], pipeline: demo }\n', "classifiers/site.yaml:4:13: rule 'big' can never match: rule 'all' before it matches every machine, and the first match wins; move this rule up or remove it"],
    ['unreachable behind a subset', 'name: site\nrules:\n  - { name: a, match: ["os.id in (debian,ubuntu)"], pipeline: demo }\n  - { name: b, match: ["cpu.count >= 2", "os.id in (ubuntu, debian)"], pipeline: demo }\n', "classifiers/site.yaml:4:13: rule 'b' can never match: rule 'a' before it matches every machine this one does (its selectors are a subset: os.id in (debian, ubuntu)), and the first match wins; move this rule up or remove it"],
    ['no rules', 'name: site\nrules: []\n', 'classifiers/site.yaml:2:8: must list at least 1 item'],
  ])('%s', (_what, text, want) => {
    expect(lint(text)).toEqual([want]);
  });
});
