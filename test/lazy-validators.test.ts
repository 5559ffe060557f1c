/**
 * Validators compiled on first use (api/lazy-validators.ts) behave as fastify's own: the same answers
 * (400 with the field), Ajv's defaults applied to a root value, and nothing compiled until a route is
 * called. Every route's schemas are compiled by test/permissions.test.ts.
 */
import Fastify from 'fastify';
import { describe, expect, it } from 'vitest';
import { lazyValidators, type PendingValidator } from '../src/api/lazy-validators.js';

async function app(pending: PendingValidator[]) {
  const a = Fastify({ schemaController: { compilersFactory: { buildValidator: lazyValidators(pending) as never } }, ajv: { customOptions: { allErrors: false, removeAdditional: false, coerceTypes: false } } });
  a.post('/things', { schema: { body: { type: 'object', required: ['name'], properties: { name: { type: 'string', minLength: 1 }, size: { type: 'integer', default: 3 } }, additionalProperties: false } } }, async (req) => req.body);
  a.get('/q', { schema: { querystring: { type: 'object', properties: { limit: { type: 'string', default: '10' } } } } }, async (req) => req.query);
  await a.ready();
  return a;
}

describe('validators compiled on first use', () => {
  it('are not compiled when the app starts', async () => {
    const pending: PendingValidator[] = [];
    const a = await app(pending);
    expect(pending.map((p) => p.route).sort()).toEqual(['GET /q querystring', 'HEAD /q querystring', 'POST /things body']);
    await a.close();
  });

  it.each([
    ['a valid body, its default filled', { name: 'x' }, 200, { name: 'x', size: 3 }],
    ['a missing field', {}, 400, /must have required property 'name'/],
    ['a wrong type', { name: 'x', size: 'big' }, 400, /body\/size must be integer/],
    ['an unknown field', { name: 'x', colour: 'red' }, 400, /must NOT have additional properties/],
  ])('%s', async (_name, body, status, expected) => {
    const a = await app([]);
    // Twice: the first call compiles, the second uses what it compiled.
    for (let i = 0; i < 2; i++) {
      const r = await a.inject({ method: 'POST', url: '/things', payload: body });
      expect(r.statusCode).toBe(status);
      if (expected instanceof RegExp) expect((r.json() as { message: string }).message).toMatch(expected);
      else expect(r.json()).toEqual(expected);
    }
    await a.close();
  });

  it('fills a default into the query string (a root value Ajv replaces through its parent)', async () => {
    const a = await app([]);
    expect((await a.inject({ method: 'GET', url: '/q' })).json()).toEqual({ limit: '10' });
    expect((await a.inject({ method: 'GET', url: '/q?limit=5' })).json()).toEqual({ limit: '5' });
    await a.close();
  });

  it('a bad schema does not stop the app starting, and its compile call throws (what permissions.test.ts runs for every route)', async () => {
    const pending: PendingValidator[] = [];
    const a = Fastify({ schemaController: { compilersFactory: { buildValidator: lazyValidators(pending) as never } } });
    a.post('/bad', { schema: { body: { type: 'bogus' } } }, async () => 'ok');
    await a.ready();
    expect(() => pending[0]!.compile()).toThrow(/type/);
    await a.close();
  });
});
