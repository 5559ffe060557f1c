/**
 * What the CLI and the API refuse or defuse (issue 10, red-team findings): names shaped like ids, terminal
 * escapes from machines, enumerated options and topic filters that cannot match, messages in words, and
 * param schemas that would recurse without end. Pure rules table-driven; the rest against a real endpoint.
 */
import { spawn, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTopics } from '../src/api/topics.js';
import { forStream } from '../src/cli/output.js';
import { assertMachineName, looksLikeId, newId } from '../src/engine/ids.js';
import { printable } from '../src/model/printable.js';
import { MAX_SCHEMA_DEPTH, schemaShapeProblems, validateValue } from '../src/model/validate.js';
import { Endpoint, ROOT, TAKT } from './helpers/endpoint.js';

const EVIL = '\u001b]0;pwned\u0007\u001b[2Jcleared';

describe('names never look like ids', () => {
  it.each([
    ['m-0a1b2c3d4e', true],
    ['m-1', true],
    [newId('j'), true],
    [newId('w'), true],
    [newId('r'), true],
    ['web-1', false],
    ['m-web-1', false],
    ['mx-1', false],
    ['m', false],
    ['x-1', false],
    ['m.1', false],
  ])('looksLikeId(%j) is %s', (name, idLike) => {
    expect(looksLikeId(name)).toBe(idLike);
  });

  it('the refusal says why and what to do', () => {
    expect(() => assertMachineName('m-abc')).toThrow(/looks like a takt id.*choose a name.*'mx-abc'/);
    expect(() => assertMachineName('web-1')).not.toThrow();
  });
});

describe('text for a terminal', () => {
  it.each([
    ['plain', 'plain'],
    ['lines\n\tand tabs', 'lines\n\tand tabs'],
    [EVIL, '\\u001b]0;pwned\\u0007\\u001b[2Jcleared'],
    ['c1 csi\u009b2J', 'c1 csi\\u009b2J'],
    ['bidi \u202eevil\u2066', 'bidi \\u202eevil\\u2066'],
    ['over\rwrite', 'over\\u000dwrite'],
  ])('printable(%j)', (text, shown) => {
    expect(printable(text)).toBe(shown);
    // Escaping twice changes nothing: a cell escaped once may pass through another escaping helper.
    expect(printable(shown)).toBe(shown);
  });

  it.each([
    [true, 'a\r\nb\u001b', 'a\nb\\u001b'],
    [false, 'a\r\nb\u001b', 'a\r\nb\u001b'],
    [undefined, EVIL, EVIL],
  ])('on a terminal (%s) forStream shows %j as %j; elsewhere byte for byte', (isTTY, text, shown) => {
    expect(forStream({ isTTY }, text)).toBe(shown);
  });
});

describe('topic filters', () => {
  it.each(['', 'machines', '*', 'machines.*.*', 'jobs.update.j-1a2b', '*.delete', 'packversions.create.demo@1.0.0', 'tasks.update.build_x', ' machines , jobs '])(
    '%j is accepted',
    (list) => {
      expect(() => parseTopics(list)).not.toThrow();
    },
  );
  it.each([
    ['**', /\* stands for a whole part/],
    ['machine.create', /'machine' is not a topic type/],
    ['machines.created', /'created' is not a topic action/],
    ['machines..x', /empty part/],
    ['jobs.update.j*', /whole part/],
    [Array.from({ length: 51 }, () => 'jobs').join(','), /more than 50/],
  ])('%j is refused: %s', (list, why) => {
    expect(() => parseTopics(list)).toThrow(why);
    if (list.length < 100) expect(() => parseTopics(list)).toThrow(/TYPE\[\.ACTION\[\.ID\]\]/);
  });
});

describe('param schemas that would recurse without end', () => {
  const nested = (n: number): object => (n === 0 ? { type: 'string' } : { not: nested(n - 1) });
  it.each([
    ['$ref to the root', { $ref: '#' }, '/$ref', /refers to itself.*# → #/],
    ['through allOf', { allOf: [{ $ref: '#' }] }, '/allOf/0/$ref', /# → #\/allOf\/0 → #/],
    ['a definition to itself', { definitions: { x: { $ref: '#/definitions/x' } }, $ref: '#/definitions/x' }, '/definitions/x/$ref', /refers to itself/],
    ['two definitions in a loop', { definitions: { a: { $ref: '#/definitions/b' }, b: { anyOf: [{ $ref: '#/definitions/a' }] } } }, expect.stringMatching(/^\/definitions\/.*\$ref$/), /refers to itself/],
    ['too deep', nested(MAX_SCHEMA_DEPTH + 1), expect.any(String), /deeper than 64 levels/],
  ])('%s is refused', (_what, schema, path, message) => {
    const [p] = schemaShapeProblems(schema);
    expect(p?.path).toEqual(path);
    expect(p?.message).toMatch(message);
  });

  it.each([
    ['a tree through properties', { type: 'object', properties: { child: { $ref: '#' } } }],
    ['a list through items', { definitions: { node: { type: 'array', items: { $ref: '#/definitions/node' } } }, $ref: '#/definitions/node' }],
    ['nested to the limit', nested(MAX_SCHEMA_DEPTH / 2 - 1)],
  ])('%s is fine', (_what, schema) => {
    expect(schemaShapeProblems(schema)).toEqual([]);
  });

  it('a value checked against a stored looping schema is a problem, not a crash', () => {
    expect(validateValue({ $ref: '#' }, 1)[0]?.message).toMatch(/refers to itself/);
  });
});

describe('against a real endpoint', () => {
  let ep: Endpoint;
  let machine: { id: string; token: string };
  let other: { id: string; name: string };
  beforeAll(async () => {
    ep = await Endpoint.start();
    machine = (await ep.call('POST', '/machines', { name: 'mine' })).body.items[0];
    other = (await ep.call('POST', '/machines', { name: 'other' })).body.items[0];
    const p = await ep.call('POST', '/packs', { files: { 'pack.yaml': 'name: safety\nversion: 1.0.0\n', 'tasks/t.yaml': 'name: t\nscript: "true"\n', 'blueprints/b.yaml': 'name: b\ntasks: [t]\n' } });
    expect(p.status, JSON.stringify(p.body)).toBe(201);
  });
  afterAll(async () => ep?.stop());

  it("a machine cannot be named like another machine's id, at create, rename or import", async () => {
    for (const body of [{ name: other.id }, { name: 'm-1' }, { name: 'm', count: 2 }]) {
      const r = await ep.call('POST', '/machines', body);
      expect(r.status, JSON.stringify(r.body)).toBe(422);
      expect(r.body.error.message).toMatch(/looks like a takt id/);
    }
    const renamed = await ep.call('PATCH', `/machines/${machine.id}`, { name: other.id });
    expect(renamed.status, JSON.stringify(renamed.body)).toBe(422);
    const cli = await ep.cli(['machines', 'update', 'mine', '--name', 'j-1']);
    expect(cli.code).not.toBe(0);
    expect(cli.stderr).toMatch(/looks like a takt id/);
    const doc = 'id: m-0123456789\nname: m-abc\nenvironment: local\nbroker: null\npipeline: null\nprofiles: []\nparams: {}\npower: "on"\n';
    const exported = (await ep.call('GET', '/export')).body.files as Record<string, string>;
    const imported = await ep.call('POST', '/import', { files: { ...exported, 'machines/m-abc.yaml': doc } });
    expect(imported.status, JSON.stringify(imported.body)).toBe(422);
    expect(imported.body.error.message).toMatch(/machines\/m-abc\.yaml.*looks like a takt id/);
    // The names the id-like ones would have shadowed still find their machines.
    expect((await ep.call('GET', `/machines/${other.id}`)).body.name).toBe('other');
  });

  it("takt jobs log shows a job's terminal escapes as text on a terminal, and passes them byte for byte into a pipe", async () => {
    const wo = await ep.call('POST', '/workorders', { machine: machine.id, blueprint: 'b' });
    expect(wo.status, JSON.stringify(wo.body)).toBe(201);
    const claim = await ep.call('POST', `/machines/${machine.id}/claim?wait=5`, {}, machine.token);
    const job = claim.body.job as { id: string };
    const log = await ep.call('POST', `/jobs/${job.id}/log`, { seq: 1, stream: 'stdout', data: EVIL }, machine.token);
    expect(log.status).toBeLessThan(300);
    await ep.call('POST', `/jobs/${job.id}/complete`, { exitCode: 1, error: `died: ${EVIL}`, outputs: {} }, machine.token);

    const piped = await ep.cli(['jobs', 'log', job.id]);
    expect(piped.stdout).toBe(EVIL);
    for (const args of [['jobs', 'log', job.id], ['jobs', 'log', job.id, '--follow'], ['jobs', 'list', '--machine', machine.id]]) {
      const tty = await onTerminal(args, { TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token });
      if (tty === null) return; // no `script` to give the CLI a terminal here
      expect(tty, `takt ${args.join(' ')}`).not.toContain('\u001b');
      expect(tty, `takt ${args.join(' ')}`).toContain('\\u001b');
    }
  });

  it('takt machines wait --until with a state that does not exist is refused at once, naming the states', async () => {
    const res = await ep.cli(['machines', 'wait', 'mine', '--until', 'bogus', '--timeout', '10m']);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/bogus/);
    expect(res.stderr).toMatch(/idle, running, paused, stopped, done, awaiting-approval/);
    expect(res.stderr).not.toMatch(/\n\s+at /);
  });

  it.each([
    [['machines', 'list', '--state', 'sideways']],
    [['jobs', 'list', '--state', 'sideways']],
    [['workorders', 'list', '--state', 'sideways']],
    [['machines', 'power', 'mine', 'of']],
    [['policy', 'set', 'max-ages', '30d']],
    [['events', 'watch', '--topics', '**']],
  ])('takt %j is refused with the allowed values', async (args) => {
    const res = await ep.cli(args);
    expect(res.code).not.toBe(0);
    expect(res.stderr).toMatch(/Allowed choices are|TYPE\[\.ACTION\[\.ID\]\]/);
  });

  it('validation messages say what is wrong in words and name the key', async () => {
    const name = await ep.call('POST', '/machines', { name: 'Not A Name' });
    expect(name.status).toBe(422);
    expect(name.body.error.message).toBe('/name must be a lower-case name: 1 to 63 letters, digits, dots, underscores or dashes, starting with a letter or digit');
    const key = await ep.call('POST', '/machines', { name: 'keyed', params: { 'Bad-Key': 1 } });
    expect(key.status).toBe(422);
    expect(key.body.error.message).toBe('/params: key "Bad-Key" must be a lower-case identifier: 1 to 63 letters, digits or underscores, starting with a letter');
    expect(key.body.error.path).toBe('/params/Bad-Key');
  });

  it('a topic filter that can match nothing is 400 with the syntax', async () => {
    const r = await ep.call('GET', '/events?topics=machines,**');
    expect(r.status).toBe(400);
    expect(r.body.error.message).toMatch(/"\*\*" can match no event.*TYPE\[\.ACTION\[\.ID\]\]/);
  });

  it('a param schema that refers to itself is refused with a clear message, not a stack overflow', async () => {
    for (const schema of [{ $ref: '#' }, { definitions: { x: { $ref: '#/definitions/x' } }, $ref: '#/definitions/x' }]) {
      const r = await ep.call('POST', '/params', { name: 'loop', schema });
      expect(r.status, JSON.stringify(r.body)).toBe(422);
      expect(r.body.error.message).toMatch(/refers to itself without looking into the value/);
      expect(r.body.error.message).not.toMatch(/call stack/);
    }
  });
});

const hasScript = spawnSync('script', ['--version']).status === 0;

/** Runs the CLI with a pseudo-terminal as its stdout (util-linux `script`); null when there is no `script`. */
function onTerminal(args: string[], env: Record<string, string>): Promise<string | null> {
  if (!hasScript) return Promise.resolve(null);
  const command = [process.execPath, TAKT, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  return new Promise((resolve, reject) => {
    const p = spawn('script', ['-qec', `${command} 2>&1`, '/dev/null'], { cwd: ROOT, env: { ...process.env, NO_COLOR: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', reject);
    p.on('close', () => resolve(out));
  });
}
