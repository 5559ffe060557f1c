/**
 * Issue 10: regular expressions from content (param schemas, task outputs, `matches` expectations,
 * formats) run on RE2 — linear time — so a pack or an admin cannot freeze the endpoint (ReDoS), and
 * patterns RE2 cannot run are refused when the content is pushed, naming where.
 *
 * No timing assertions: 10,000 'a's and a '!' against `^(a+)+$` is ~2^10000 steps for a backtracking
 * engine, so with one these tests never finish and fail on vitest's timeout; with RE2 they are answered.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint } from './helpers/endpoint.js';

const EVIL = `${'a'.repeat(10_000)}!`;
let ep: Endpoint;

beforeAll(async () => {
  ep = await Endpoint.start();
});
afterAll(async () => ep?.stop());

describe('ReDoS: values checked against patterns from content', () => {
  it('a param schema pattern with catastrophic backtracking is checked in linear time: the value is refused, naming the pattern', async () => {
    const p = await ep.call('POST', '/params', { name: 'redos', schema: { type: 'string', pattern: '^(a+)+$' } });
    expect(p.status, JSON.stringify(p.body)).toBe(201);
    const m = await ep.call('POST', '/machines', { name: 'redos-target' });
    expect(m.status, JSON.stringify(m.body)).toBe(201);

    const bad = await ep.call('PATCH', '/machines/redos-target', { params: { redos: EVIL } });
    expect(bad.status).toBe(422);
    expect(bad.body.error.path).toBe('/params/redos');
    expect(bad.body.error.message).toContain('must match pattern "^(a+)+$"');

    const good = await ep.call('PATCH', '/machines/redos-target', { params: { redos: 'a'.repeat(10_000) } });
    expect(good.status, JSON.stringify(good.body)).toBe(200);
  });

  it("a machine reporting an output checked by a pack's `matches` expectation is answered, and the job fails naming the rule", async () => {
    const files = {
      'pack.yaml': 'name: redospack\nversion: 1.0.0\n',
      'tasks/emit.yaml': "name: emit\noutputs:\n  o: { type: string }\nexpect:\n  - { param: o, matches: '^(a+)+$' }\nscript: |\n  takt-set o x\n",
      'blueprints/bp.yaml': 'name: bp\ntasks: [emit]\n',
    };
    const push = await ep.call('POST', '/packs', { files });
    expect(push.status, JSON.stringify(push.body)).toBe(201);
    const mk = await ep.call('POST', '/machines', { name: 'redos-agent' });
    const machine = mk.body.items[0] as { id: string; token: string };
    const wo = await ep.call('POST', '/workorders', { machine: machine.id, blueprint: 'bp' });
    expect(wo.status, JSON.stringify(wo.body)).toBe(201);
    const claim = await ep.call('POST', `/machines/${machine.id}/claim?wait=5`, {}, machine.token);
    const job = claim.body.job as { id: string; task: string };
    expect(job.task).toBe('emit');

    const done = await ep.call('POST', `/jobs/${job.id}/complete`, { exitCode: 0, outputs: { o: EVIL } }, machine.token);
    expect(done.status, JSON.stringify(done.body)).toBeLessThan(300);
    const after = await ep.call('GET', `/jobs/${job.id}`);
    expect(after.body.reason).toContain("expectation 'o matches /^(a+)+$/' failed");
    // The reason quotes the value shortened: it is shown in lists and terminals.
    expect(after.body.reason.length).toBeLessThan(400);
  });

  it('a `format: url` value built to make JavaScript backtrack (quadratic) is checked in linear time', async () => {
    const p = await ep.call('POST', '/params', { name: 'home', schema: { type: 'string', format: 'url' } });
    expect(p.status, JSON.stringify(p.body)).toBe(201);
    await ep.call('POST', '/machines', { name: 'url-target' });
    // ~5 s of event loop at 100,000 characters with ajv-formats' JavaScript regex, ~80 s at 400,000.
    const bad = await ep.call('PATCH', '/machines/url-target', { params: { home: `http://${':'.repeat(400_000)}` } });
    expect(bad.status).toBe(422);
    expect(bad.body.error.message).toContain('must match format "url"');
    const good = await ep.call('PATCH', '/machines/url-target', { params: { home: 'https://example.com/a' } });
    expect(good.status, JSON.stringify(good.body)).toBe(200);
  });
});

describe('patterns RE2 cannot run are refused when content is pushed, naming where', () => {
  it('a param schema with a backreference: POST /params is 422 at /schema/pattern, with the RE2 hint', async () => {
    const r = await ep.call('POST', '/params', { name: 'twice', schema: { type: 'string', pattern: '^(a)\\1$' } });
    expect(r.status).toBe(422);
    expect(JSON.stringify(r.body)).toContain('/schema/pattern');
    expect(JSON.stringify(r.body)).toContain('backreferences are not supported');
    expect(JSON.stringify(r.body)).toContain('RE2 syntax');
  });

  it('a pack whose `matches` uses lookahead, or whose output schema uses lookbehind in patternProperties, is refused', async () => {
    const files = {
      'pack.yaml': 'name: lookpack\nversion: 1.0.0\n',
      'tasks/look.yaml': [
        'name: look',
        'outputs:',
        '  o: { type: object, patternProperties: { "(?<!x)y": { type: string } } }',
        'expect:',
        "  - { param: o, matches: 'a(?=b)' }",
        'script: |',
        '  takt-set o x',
        '',
      ].join('\n'),
    };
    const r = await ep.call('POST', '/packs', { files });
    expect(r.status).toBe(422);
    const text = JSON.stringify(r.body);
    expect(text).toContain('/expect/0/matches');
    expect(text).toContain('/outputs/o/patternProperties/');
    expect(text).toContain('lookahead and lookbehind are not supported');
  });
});
