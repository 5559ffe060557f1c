/**
 * Property-based fuzz of the whole API against a real endpoint: random paths, query strings and bodies
 * for every route of the OpenAPI document, with the admin token, a machine token and no token.
 * Properties: never a 5xx, the endpoint never dies, every error has the one error shape, and a write
 * that is refused (4xx) leaves the store exactly as it was. Bounded by a fixed number of runs and seed.
 */
import { request as httpRequest, Agent } from 'node:http';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles } from './helpers/endpoint.js';

const agent = new Agent({ keepAlive: true, maxSockets: 4 });

interface Res {
  status: number;
  body: string;
}

function call(base: string, method: string, path: string, token: string | null, body?: string, contentType = 'application/json'): Promise<Res> {
  const u = new URL(base);
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) {
    headers['content-type'] = contentType;
    headers['content-length'] = String(Buffer.byteLength(body));
  }
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: u.hostname, port: u.port, method, path, headers, agent }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      res.on('error', reject);
    });
    req.setTimeout(30_000, () => req.destroy(new Error(`${method} ${path}: no answer in 30 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

let ep: Endpoint;
let machine: { id: string; name: string; token: string };
let routes: Array<{ method: string; path: string; params: string[] }>;

/** What a refused write must not change: the newest change, and how many of each object there are. */
async function fingerprint(): Promise<string> {
  const get = async (p: string) => JSON.parse((await call(ep.url, 'GET', `/api/v1${p}`, ep.token)).body);
  const [changes, machines, versions, workorders, rollouts, jobs] = await Promise.all([
    get('/changes?limit=1'),
    get('/machines?limit=1'),
    get('/packs/versions'),
    get('/workorders?limit=1000'),
    get('/rollouts'),
    get('/jobs?limit=1000'),
  ]);
  return JSON.stringify([changes.items[0]?.seq, machines.total, versions.items.length, workorders.items.length, rollouts.items.length, jobs.items.length]);
}

beforeAll(async () => {
  ep = await Endpoint.start();
  const pack = await call(ep.url, 'POST', '/api/v1/packs', ep.token, JSON.stringify({ files: await packFiles('basic') }));
  expect(pack.status, pack.body).toBe(201);
  const made = await call(ep.url, 'POST', '/api/v1/machines', ep.token, JSON.stringify({ name: 'fuzz-m', params: { msg: 'hi' } }));
  expect(made.status, made.body).toBe(201);
  machine = JSON.parse(made.body).items[0];
  const doc = JSON.parse((await call(ep.url, 'GET', '/api/v1/openapi.json', ep.token)).body) as { paths: Record<string, Record<string, unknown>> };
  routes = Object.entries(doc.paths).flatMap(([p, ops]) =>
    Object.keys(ops).map((m) => ({ method: m.toUpperCase(), path: p, params: [...p.matchAll(/\{([^}]+)\}/g)].map((x) => x[1]!) })),
  );
});
afterAll(async () => {
  agent.destroy();
  await ep?.stop();
});

/** encodeURIComponent that also takes lone surrogates (they become U+FFFD; raw bad bytes come from constants). */
const enc = (s: string) => encodeURIComponent(s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd'));

// ---- generators --------------------------------------------------------------------------------------

const weirdString = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 20 }),
  fc.constantFrom('', ' ', '..', '../../etc/passwd', '%00', '\u0000', '__proto__', 'constructor', '*', '%', '_', 'a'.repeat(5000), '-1', '1e309', 'null', '\ud800'),
);
const weirdNumber = fc.oneof(fc.integer(), fc.double(), fc.constantFrom(0, -1, 2 ** 53, 2 ** 64, 1e308, -0));
const leaf = fc.oneof(weirdString, weirdNumber, fc.boolean(), fc.constant(null));
const value = fc.letrec((tie) => ({
  v: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, fc.array(tie('v'), { maxLength: 4 }), fc.dictionary(weirdString, tie('v'), { maxKeys: 4 })),
})).v;

/** Field names the routes know, so random bodies often get past the first check and exercise the handlers. */
const knownField = fc.constantFrom(
  'name', 'environment', 'broker', 'count', 'pipeline', 'params', 'profiles', 'power', 'comment', 'reason', 'files', 'use',
  'to', 'machine', 'blueprint', 'select', 'canary', 'batch', 'maxInFlight', 'maxFailures', 'approveBetweenWaves', 'maxAge',
  'budget', 'exitCode', 'outputs', 'timedOut', 'error', 'log', 'claim', 'seq', 'stream', 'data', 'lastJob', 'msg', 'fail_verify',
);
const body = fc.oneof(
  fc.dictionary(fc.oneof(knownField, weirdString), value, { maxKeys: 6 }).map((o) => JSON.stringify(o)),
  value.map((v) => JSON.stringify(v) ?? 'null'),
  fc.constantFrom('', '{', '[]', 'null', '"x"', '{"__proto__":{"a":1}}', `{"params":${'['.repeat(200)}${']'.repeat(200)}}`, '{"files":{"../x.yaml":"a: 1"}}'),
);
const pathParam = fc.oneof(fc.constantFrom('fuzz-m', 'x', '0', '1', '999999999999', '..', '%2e%2e', '%00', 'j-1', 'w-1', 'r-1', 'basic', '%ff', '%c0%af', '%'), weirdString.map(enc));
const queryString = fc
  .array(fc.tuple(fc.oneof(fc.constantFrom('limit', 'offset', 'state', 'name', 'since', 'after', 'wait', 'task', 'machine', 'topics', 'from', 'to', 'order', 'builtWith', 'stale', 'pipeline'), weirdString), weirdString), { maxLength: 4 })
  .map((pairs) => (pairs.length ? `?${pairs.map(([k, v]) => `${enc(k)}=${enc(v)}`).join('&')}` : ''));
const who = fc.constantFrom<'admin' | 'machine' | 'none'>('admin', 'admin', 'machine', 'none');

// ---- the property ------------------------------------------------------------------------------------

describe('API fuzz', () => {
  it('random requests to every route: no 5xx, the error shape on every 4xx, refused writes change nothing', async () => {
    let requests = 0;
    const statuses = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(
        fc.nat({ max: 10_000 }),
        fc.array(pathParam, { minLength: 3, maxLength: 3 }),
        queryString,
        fc.option(body, { nil: undefined, freq: 3 }),
        who,
        fc.constantFrom('application/json', 'application/json', 'text/plain', 'application/x-www-form-urlencoded'),
        async (pick, params, qs, b, as, ct) => {
          const route = routes[pick % routes.length]!;
          let path = route.path;
          route.params.forEach((p, i) => (path = path.replace(`{${p}}`, p === 'id' && pick % 3 === 0 ? machine.id : params[i]!)));
          const token = as === 'admin' ? ep.token : as === 'machine' ? machine.token : null;
          const write = route.method !== 'GET';
          // Long-polls and streams are fuzzed on their inputs, not left hanging.
          if (path.endsWith('/events')) qs = qs ? `${qs}&since=999999999` : '?since=999999999';
          const before = write ? await fingerprint() : '';
          const res = route.path.endsWith('/events') ? await probeStream(`${path}${qs}`, token) : await call(ep.url, route.method, `${path}${qs}`, token, b, ct);
          requests++;
          statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
          expect(res.status, `${route.method} ${path}${qs} as ${as} body=${b?.slice(0, 300)} → ${res.body.slice(0, 500)}`).toBeLessThan(500);
          if (res.status >= 400) {
            const err = JSON.parse(res.body) as { error?: { code?: string; message?: string } };
            expect(typeof err.error?.code, res.body).toBe('string');
            expect(typeof err.error?.message, res.body).toBe('string');
            if (write) expect(await fingerprint(), `${route.method} ${path} refused (${res.status}) but changed the store`).toBe(before);
          }
        },
      ),
      { numRuns: 3000, seed: 20261130, endOnFailure: true },
    );
    expect(requests).toBe(3000);
    expect((await call(ep.url, 'GET', '/api/v1/health', null)).status).toBe(200);
    // The fuzz reached the handlers, not only the front door.
    expect([...statuses.keys()].some((s) => s < 300)).toBe(true);
    expect(statuses.get(422) ?? 0).toBeGreaterThan(0);
  });
});

/** Opens the event stream, reads its first bytes and closes it: the status and, on error, the body. */
function probeStream(path: string, token: string | null): Promise<Res> {
  const u = new URL(ep.url);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: u.hostname, port: u.port, method: 'GET', path, headers: token ? { authorization: `Bearer ${token}` } : {} }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        text += d;
        if (res.statusCode === 200) {
          req.destroy();
          resolve({ status: 200, body: '' });
        }
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      res.on('error', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.end();
  });
}
