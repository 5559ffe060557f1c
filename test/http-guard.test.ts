/**
 * The endpoint's front door, against a real endpoint: authorisation decided on the matched route (never
 * on the URL text), the Host check, security headers, query and body shapes, bounded request time and
 * connections, 5xx with a request id, event replays that do not hold the event loop, literal filters.
 * Plus table tests of the pure guard rules.
 */
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { allowedHost, checkQuery, hostNames, jsonDepth, MAX_JSON_DEPTH, parseJsonBody, uiCsp } from '../src/api/guard.js';
import { buildServer } from '../src/api/server.js';
import type { ApiContext } from '../src/api/context.js';
import { replay, REPLAY_PAGE, REPLAY_PAUSE_BYTES } from '../src/api/routes/events.js';
import type { TaktEvent } from '../src/model/machine.js';
import { Endpoint, packFiles, until } from './helpers/endpoint.js';
import { raw, type Raw } from './helpers/http.js';

const json = (r: Raw) => JSON.parse(r.body) as { error: { code: string; message: string; path?: string; requestId?: string } };

describe('guard rules (pure)', () => {
  const names = hostNames(['takt.example.org']);
  it.each([
    ['127.0.0.1:8092', true],
    ['127.0.0.1', true],
    ['[::1]:8092', true],
    ['10.201.3.1:8092', true],
    ['localhost:8092', true],
    ['LOCALHOST', true],
    ['takt.example.org:443', true],
    ['takt.example.org.', true],
    ['evil.example:8092', false],
    ['127.0.0.1.nip.io', false],
    ['[not-an-ip]:1', false],
    ['a b', false],
    ['', false],
    [undefined, false],
  ])('Host %s → %s', (host, ok) => {
    expect(allowedHost(host, names)).toBe(ok);
  });

  it.each([
    [{ a: 'x' }, null],
    [{ a: ['x', 'y'] }, "query parameter 'a' is given more than once"],
    [{ name: '' }, "query parameter 'name' is empty"],
    [undefined, null],
  ])('query %j', (q, problem) => {
    if (problem) expect(() => checkQuery(q)).toThrow(problem);
    else expect(() => checkQuery(q)).not.toThrow();
  });

  it.each([
    ['{}', 1],
    ['[[[]]]', 3],
    ['{"a":"{{{{[[["}', 1],
    ['{"a":"\\"{{"}', 1],
    ['1', 0],
  ])('jsonDepth(%s) = %d', (text, depth) => {
    expect(jsonDepth(text)).toBe(depth);
  });

  it('parseJsonBody refuses deep nesting, prototype keys and non-JSON; accepts the rest', () => {
    expect(() => parseJsonBody('['.repeat(MAX_JSON_DEPTH + 1) + ']'.repeat(MAX_JSON_DEPTH + 1))).toThrow(/nested 65 deep/);
    expect(parseJsonBody('['.repeat(MAX_JSON_DEPTH) + ']'.repeat(MAX_JSON_DEPTH))).toBeDefined();
    expect(() => parseJsonBody('{"a":{"__proto__":{"admin":true}}}')).toThrow(/forbidden key '__proto__'/);
    expect(() => parseJsonBody('{"constructor":{"prototype":{"x":1}}}')).toThrow(/forbidden key 'constructor'/);
    expect(parseJsonBody('{"constructor":"ok","text":"__proto__"}')).toEqual({ constructor: 'ok', text: '__proto__' });
    expect(() => parseJsonBody('{')).toThrow(/not valid JSON/);
    expect(() => parseJsonBody('  ')).toThrow(/body is empty/);
  });

  it('the UI CSP allows exactly the page\'s own inline scripts', () => {
    const csp = uiCsp('<script type="module">go()</script><script>x</script>');
    expect(csp).toMatch(/script-src 'sha256-[^']+' 'sha256-[^']+';/);
    expect(csp).toContain("frame-ancestors 'none'");
    expect(uiCsp('<p>no scripts</p>')).toContain("script-src 'none'");
  });
});

describe('a real endpoint', () => {
  let ep: Endpoint;
  let openapi: { paths: Record<string, Record<string, unknown>> };

  beforeAll(async () => {
    ep = await Endpoint.start({ env: { TAKT_REQUEST_TIMEOUT: '1s', TAKT_MAX_CONNECTIONS: '64', TAKT_HOST_NAMES: 'takt.example.org' } });
    const r = await raw(ep.url, 'POST', '/api/v1/packs', { token: ep.token, body: JSON.stringify({ files: await packFiles('basic') }) });
    expect(r.status, r.body).toBe(201);
    openapi = JSON.parse((await raw(ep.url, 'GET', '/api/v1/openapi.json', { token: ep.token })).body);
  });
  afterAll(async () => ep?.stop());

  /** Every way to spell a path that a prefix check on the raw URL would miss, or that a router may treat alike. */
  function variants(path: string): string[] {
    const segs = path.split('/').filter(Boolean);
    const enc = (s: string) => [...s].map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join('');
    const out = new Set<string>([path]);
    segs.forEach((seg, i) => {
      const with_ = (f: (s: string) => string) => '/' + segs.map((s, j) => (j === i ? f(s) : s)).join('/');
      out.add(with_(enc));
      out.add(with_((s) => enc(s).replace(/%/g, '%25'))); // double-encoded
      out.add(with_((s) => `%${s.charCodeAt(0).toString(16).toUpperCase()}${s.slice(1)}`));
      out.add(with_((s) => s.toUpperCase()));
      out.add(with_((s) => `${s};x=1`));
      out.add(with_((s) => `./${s}`));
      out.add(with_((s) => `${s}/`));
    });
    out.add(`/${path}`);
    out.add(path.replace(/\//g, '//'));
    out.add(`/./${path.slice(1)}`);
    out.add(`${path}/.`);
    out.add(`${path}?x=1#frag`);
    return [...out];
  }

  it('every route of the OpenAPI document, however its path is spelled, is 401 or 404 without a token — never 2xx, never 5xx', async () => {
    // A route declared public (login) needs no token: without one it still reads nothing and changes
    // nothing, but it may refuse the empty body (422) rather than the missing token.
    const publicOps = new Set<string>();
    const routes = Object.entries(openapi.paths).flatMap(([p, ops]) =>
      Object.entries(ops).map(([m, op]) => {
        const r = [m.toUpperCase(), p.replace(/\{[^}]+\}/g, 'x-1')] as const;
        if ((op as { 'x-takt-permission'?: string })['x-takt-permission'] === 'public') publicOps.add(`${r[0]} ${r[1]}`);
        return r;
      }),
    );
    expect(routes.length).toBeGreaterThan(30);
    routes.push(['GET', '/metrics'], ['GET', '/api/v1/openapi.json'], ['GET', '/api/v1/events']);
    const seen = new Map<number, number>();
    for (const [method, path] of routes) {
      for (const v of variants(path)) {
        const r = await raw(ep.url, method, v, method === 'GET' || method === 'DELETE' ? {} : { body: '{}' });
        seen.set(r.status, (seen.get(r.status) ?? 0) + 1);
        // Never 405 without a token: a path's methods are told only to a caller the route would hear (401 first).
        const allowed = publicOps.has(`${method} ${path}`) ? [400, 401, 404, 422] : [400, 401, 404];
        expect(allowed, `${method} ${v} → ${r.status} ${r.body.slice(0, 200)}`).toContain(r.status);
        expect(json(r).error.code, `${method} ${v}`).toBeTruthy();
        expect(json(r).error.path, `${method} ${v}`).toBeTruthy();
      }
    }
    expect(seen.get(401)).toBeGreaterThan(100);
  });

  it('every 4xx body has the one shape, with path: the field or parameter at fault, else the request path (never its query)', async () => {
    // [method, target, token, body, status, code, path]
    const cases: Array<[string, string, boolean, string | undefined, number, string, string]> = [
      ['GET', '/api/v1/nope', true, undefined, 404, 'not_found', '/api/v1/nope'],
      ['GET', '/api/v1/nope?token=hunter2', false, undefined, 404, 'not_found', '/api/v1/nope'],
      ['GET', '/api/v1/machines/nope', true, undefined, 404, 'not_found', '/api/v1/machines/nope'],
      ['POST', '/api/v1/machines/nope/resume', true, '{}', 404, 'not_found', '/api/v1/machines/nope/resume'],
      ['GET', '/api/v1/changes/999999', true, undefined, 404, 'not_found', '/api/v1/changes/999999'],
      ['POST', '/api/v1/machines', true, '{', 400, 'bad_request', '/api/v1/machines'],
      ['POST', '/api/v1/machines', true, '{"name":"ok-1","colour":1}', 422, 'invalid', '/colour'],
      ['POST', '/api/v1/machines', true, '{"name":"Not A Name"}', 422, 'invalid', '/name'],
      ['GET', '/api/v1/machines?state=sideways', true, undefined, 400, 'bad_request', 'state'],
      ['GET', '/api/v1/machines?name=', true, undefined, 400, 'bad_request', 'name'],
      ['GET', '/api/v1/machines/%ff', true, undefined, 400, 'bad_request', '/api/v1/machines/%ff'],
      ['GET', '/api/v1/machines', false, undefined, 401, 'unauthorized', '/api/v1/machines'],
      ['PUT', '/api/v1/machines', true, '{}', 405, 'method_not_allowed', '/api/v1/machines'],
      // a token in the path is never echoed
      ['GET', '/join/tkj.abc.secret/agent.tar.gz', false, undefined, 401, 'unauthorized', '/join/tkj.…/agent.tar.gz'],
    ];
    for (const [method, target, token, body, status, code, path] of cases) {
      const r = await raw(ep.url, method, target, { ...(token ? { token: ep.token } : {}), ...(body !== undefined ? { body } : {}) });
      const what = `${method} ${target} → ${r.status} ${r.body.slice(0, 300)}`;
      expect(r.status, what).toBe(status);
      expect(r.headers['content-type'], what).toMatch(/^application\/json/);
      const e = json(r).error;
      expect(Object.keys(e).filter((k) => k !== 'details').sort(), what).toEqual(['code', 'message', 'path']);
      expect(e.code, what).toBe(code);
      expect(e.path, what).toBe(path);
      expect(r.body, what).not.toContain('hunter2');
      expect(r.body, what).not.toContain('secret');
    }
  });

  it('a method a path does not take is 405 with Allow (RFC 9110 §15.5.6) — after the token is checked; unknown paths stay 404', async () => {
    const put = await raw(ep.url, 'PUT', '/api/v1/machines', { token: ep.token, body: '{}' });
    expect(put.status, put.body).toBe(405);
    expect(put.headers.allow).toBe('GET, HEAD, POST');
    expect(json(put).error).toEqual({ code: 'method_not_allowed', message: 'PUT is not a method of /api/v1/machines: it takes GET, HEAD, POST', path: '/api/v1/machines' });
    const one = await raw(ep.url, 'PUT', '/api/v1/machines/anything', { token: ep.token, body: '{}' });
    expect(one.status).toBe(405);
    expect(one.headers.allow).toBe('GET, HEAD, PATCH, DELETE');
    // The route as the router matches it, however it is spelled.
    expect((await raw(ep.url, 'DELETE', '/%61pi/v1/machines?x=1', { token: ep.token })).headers.allow).toBe('GET, HEAD, POST');
    expect((await raw(ep.url, 'POST', '/api/v1/health', { token: ep.token, body: '{}' })).headers.allow).toBe('GET, HEAD');
    // Deny by default: without a valid token the route's methods are not told (401, no Allow).
    for (const token of [undefined, 'tka.not-the-token']) {
      const anon = await raw(ep.url, 'PUT', '/api/v1/machines', { ...(token ? { token } : {}), body: '{}' });
      expect(anon.status).toBe(401);
      expect(anon.headers.allow).toBeUndefined();
      expect(json(anon).error.code).toBe('unauthorized');
    }
    // …and every refused token is in the audit log, there too (route: the request's path).
    expect((await raw(ep.url, 'PUT', '/api/v1/machines/audit-405?x=1', { token: 'tka.not-the-token', body: '{}' })).status).toBe(401);
    const entry = await until(async () => {
      const r = await raw(ep.url, 'GET', '/api/v1/audit?route=%2Fapi%2Fv1%2Fmachines%2Faudit-405', { token: ep.token });
      return (JSON.parse(r.body) as { items: Array<{ route: string; status: number; outcome: string }> }).items[0];
    }, 10_000, 'the refused token in the audit log');
    expect(entry).toMatchObject({ route: '/api/v1/machines/audit-405', status: 401, outcome: 'denied' });
    // A path no route has is 404 whatever the method, with or without a token.
    for (const token of [ep.token, undefined]) {
      const nope = await raw(ep.url, 'PUT', '/api/v1/nope', { ...(token ? { token } : {}), body: '{}' });
      expect(nope.status).toBe(404);
      expect(nope.headers.allow).toBeUndefined();
    }
  });

  it('the encoded examples of the audit: /%61pi/v1/export and the event stream answer 401', async () => {
    for (const p of ['/%61pi/v1/export', '/%61pi/v1/events?since=0', '/api/v1/%65xport', '/api/%76%31/export']) {
      const r = await raw(ep.url, 'GET', p);
      expect(r.status, p).toBe(401);
    }
    const write = await raw(ep.url, 'POST', '/%61pi/v1/machines', { body: '{"name":"sneak"}' });
    expect(write.status).toBe(401);
  });

  it('a request that matches no route is 404 without its body being read', async () => {
    const sock = connect(Number(new URL(ep.url).port), '127.0.0.1');
    const answer = await new Promise<string>((resolve, reject) => {
      let got = '';
      sock.on('data', (d) => {
        got += d.toString();
        if (got.includes('\r\n\r\n')) resolve(got);
      });
      sock.on('error', reject);
      // Announces a gigabyte and sends none of it: the answer must not wait for it.
      sock.write(`POST /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n`);
    });
    sock.destroy();
    expect(answer).toMatch(/^HTTP\/1\.1 404/);
  });

  it('a body of a content-type the route does not take is 415 in the error shape, saying to send JSON', async () => {
    const r = await fetch(`${ep.url}/api/v1/machines`, { method: 'POST', headers: { authorization: `Bearer ${ep.token}`, 'content-type': 'text/csv' }, body: 'name\nweb-1\n' });
    expect(r.status).toBe(415);
    const body = (await r.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('bad_request');
    expect(body.error.message).toBe("the body's content-type text/csv is not one this route takes: send JSON with content-type: application/json");
  });

  it('a path that is not valid percent-encoding is 400 in the error shape (not the framework\'s)', async () => {
    for (const p of ['/api/v1/machines/%c0%af', '/api/v1/machines/%ff/restart', '/api/v1/jobs/%']) {
      const r = await raw(ep.url, 'GET', p, { token: ep.token });
      expect(r.status, p).toBe(400);
      expect(json(r).error.code, p).toBe('bad_request');
      expect(r.headers['x-content-type-options']).toBe('nosniff');
    }
  });

  it('a request target that is not a path (absolute-form, asterisk) or a request without Host is 400', async () => {
    const port = Number(new URL(ep.url).port);
    const exchange = (text: string) =>
      new Promise<string>((resolve) => {
        const s = connect(port, '127.0.0.1');
        let got = '';
        s.on('data', (d) => (got += d.toString()));
        s.on('close', () => resolve(got));
        s.on('error', () => resolve(got));
        s.write(text);
      });
    for (const text of [
      `GET http://evil.example/api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`,
      `OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`,
      `GET /api/v1/health HTTP/1.1\r\nConnection: close\r\n\r\n`,
    ]) {
      const got = await exchange(text);
      expect(got, text).toMatch(/^HTTP\/1\.1 400 /);
      expect(got).toContain('"code":"bad_request"');
    }
  });

  it('a Host the endpoint does not serve is 421 (DNS rebinding); its own names are accepted', async () => {
    const evil = await raw(ep.url, 'GET', '/api/v1/machines', { token: ep.token, host: 'attacker.example:8092' });
    expect(evil.status).toBe(421);
    expect(json(evil).error.code).toBe('misdirected');
    expect((await raw(ep.url, 'GET', '/api/v1/health', { host: 'attacker.example' })).status).toBe(421);
    expect((await raw(ep.url, 'GET', '/', { host: 'attacker.example' })).status).toBe(421);
    for (const host of ['takt.example.org:8092', 'localhost:1', '127.0.0.1']) {
      expect((await raw(ep.url, 'GET', '/api/v1/health', { host })).status, host).toBe(200);
    }
  });

  it('the UI carries a CSP and anti-framing headers; the API says nosniff and carries a request id', async () => {
    const ui = await raw(ep.url, 'GET', '/');
    expect(ui.status).toBe(200);
    expect(ui.headers['content-security-policy']).toMatch(/script-src 'sha256-/);
    expect(ui.headers['content-security-policy']).toContain("frame-ancestors 'none'");
    expect(ui.headers['x-frame-options']).toBe('DENY');
    expect(ui.headers['referrer-policy']).toBe('no-referrer');
    const api = await raw(ep.url, 'GET', '/api/v1/machines', { token: ep.token });
    expect(api.headers['x-content-type-options']).toBe('nosniff');
    expect(api.headers['x-request-id']).toMatch(/^r-[0-9a-f]{8}-[0-9a-z]+$/);
  });

  it('repeated, empty and malformed query parameters are 400 with the error shape', async () => {
    const cases: Array<[string, string]> = [
      ['/api/v1/machines?state=done&state=stopped', 'state'],
      ['/api/v1/machines?name=', 'name'],
      ['/api/v1/jobs?limit=1&limit=2', 'limit'],
      ['/api/v1/changes?limit=1e3', 'limit'],
      ['/api/v1/changes?offset=-1', 'offset'],
      ['/api/v1/changes?after=99999999999999999999', 'after'],
      ['/api/v1/events?topics=a&topics=b', 'topics'],
    ];
    for (const [path, param] of cases) {
      const r = await raw(ep.url, 'GET', path, { token: ep.token });
      expect(r.status, path).toBe(400);
      expect(json(r).error.path, path).toBe(param);
    }
  });

  it('ids past 1,000,000 are accepted where ids are expected', async () => {
    const r = await raw(ep.url, 'GET', '/api/v1/changes?after=1000001', { token: ep.token });
    expect(r.status, r.body).toBe(200);
    const change = await raw(ep.url, 'GET', '/api/v1/changes/123456789012', { token: ep.token });
    expect(change.status, change.body).toBe(404);
  });

  it('a filter value is literal: ?name=_ and ?name=% match no machine unless one has that name', async () => {
    const made = await raw(ep.url, 'POST', '/api/v1/machines', { token: ep.token, body: JSON.stringify({ name: 'lit-a' }) });
    expect(made.status).toBe(201);
    for (const q of ['_', '%', '%25', '\\']) {
      const r = await raw(ep.url, 'GET', `/api/v1/machines?name=${encodeURIComponent(q)}`, { token: ep.token });
      expect(r.status, q).toBe(200);
      expect(JSON.parse(r.body).total, q).toBe(0);
    }
    const r = await raw(ep.url, 'GET', '/api/v1/machines?name=lit-', { token: ep.token });
    expect(JSON.parse(r.body).total).toBe(1);
  });

  it('params nested 10,000 deep and prototype keys are 400, and nothing is written', async () => {
    const before = JSON.parse((await raw(ep.url, 'GET', '/api/v1/changes?limit=1000', { token: ep.token })).body).items.length;
    const deep = `{"name":"deep","params":${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}}`;
    const r = await raw(ep.url, 'POST', '/api/v1/machines', { token: ep.token, body: deep });
    expect(r.status).toBe(400);
    expect(json(r).error.message).toContain('nested 10001 deep');
    const arrays = await raw(ep.url, 'PATCH', '/api/v1/machines/lit-a', { token: ep.token, body: `{"params":{"x":${'['.repeat(10_000)}${']'.repeat(10_000)}}}` });
    expect(arrays.status).toBe(400);
    const poison = await raw(ep.url, 'PATCH', '/api/v1/machines/lit-a', { token: ep.token, body: '{"params":{"__proto__":{"polluted":1}}}' });
    expect(poison.status).toBe(400);
    const after = JSON.parse((await raw(ep.url, 'GET', '/api/v1/changes?limit=1000', { token: ep.token })).body).items.length;
    expect(after).toBe(before);
  });

  it('a body that drips in slower than the request timeout is cut off with 408, while a long-poll answering later is not', async () => {
    const sock: Socket = connect(Number(new URL(ep.url).port), '127.0.0.1');
    const closed = new Promise<string>((resolve) => {
      let got = '';
      sock.on('data', (d) => (got += d.toString()));
      sock.on('close', () => resolve(got));
      sock.on('error', () => undefined);
    });
    sock.write(`POST /api/v1/machines HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${ep.token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{`);
    // One byte now and then, never the whole body: the endpoint ends it (the test's own deadline is 60 s).
    const drip = setInterval(() => sock.writable && sock.write(' '), 200);
    const got = await closed;
    clearInterval(drip);
    expect(got === '' || /^HTTP\/1\.1 408/.test(got), got).toBe(true);

    // A machine's long-poll outlives the 1 s request timeout: it has fully arrived and is only waiting.
    const m = JSON.parse((await raw(ep.url, 'POST', '/api/v1/machines', { token: ep.token, body: JSON.stringify({ name: 'poller' }) })).body).items[0];
    const claim = await raw(ep.url, 'POST', `/api/v1/machines/${m.id}/claim?wait=3`, { token: m.token, body: '{}' });
    expect(claim.status, claim.body).toBe(200);
  });

  it('connections beyond the cap are refused; the endpoint serves again once they close', async () => {
    const port = Number(new URL(ep.url).port);
    const socks: Socket[] = [];
    const refused = new Set<number>();
    // The cap is 64; 80 idle connections: the ones past the cap are closed by the endpoint at accept.
    await Promise.all(
      Array.from({ length: 80 }, (_, i) => new Promise<void>((resolve) => {
        const s = connect(port, '127.0.0.1');
        socks.push(s);
        s.on('error', () => undefined);
        s.on('close', () => {
          refused.add(i);
          resolve();
        });
        // A connection the endpoint keeps answers this probe; one it refused closes instead.
        s.on('connect', () => s.write('GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'));
        s.on('data', () => resolve());
      })),
    );
    expect(refused.size).toBeGreaterThan(0);
    socks.forEach((s) => s.destroy());
    await Promise.all(socks.map((s) => (s.closed ? null : new Promise((r) => s.once('close', r)))));
    // The endpoint learns of the closes on its own time: until it has, a new connection may still be
    // over the cap and be reset. It serves again once it has (bounded wait, no fixed sleep).
    const health = await until(async () => (await raw(ep.url, 'GET', '/api/v1/health').catch(() => null))?.status === 200 || null, 30_000, 'the endpoint to accept connections again');
    expect(health).toBe(true);
  });

  it('the endpoint answers /health while ten event replays from 0 run', async () => {
    // Enough events that a replay takes many pages.
    for (let i = 0; i < 4; i++) {
      const r = await raw(ep.url, 'POST', '/api/v1/machines', { token: ep.token, body: JSON.stringify({ name: `ev${i}`, count: 1000 }) });
      expect(r.status, r.body).toBe(201);
    }
    const controllers: AbortController[] = [];
    let finished = 0;
    const readers = Array.from({ length: 10 }, async () => {
      const ac = new AbortController();
      controllers.push(ac);
      const res = await fetch(`${ep.url}/api/v1/events?since=0&topics=machines.create`, { headers: { authorization: `Bearer ${ep.token}` }, signal: ac.signal });
      const reader = res.body!.getReader();
      let text = '';
      let count = 0;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += Buffer.from(value).toString();
        const frames = text.split('\n\n');
        text = frames.pop()!;
        count += frames.filter((f) => f.includes('event: machines.create')).length;
        if (count >= 4000) break;
      }
      finished++;
      ac.abort();
    });
    const health = await raw(ep.url, 'GET', '/api/v1/health');
    const finishedAtHealth = finished;
    await Promise.all(readers.map((r) => r.catch(() => undefined)));
    expect(health.status).toBe(200);
    // Answered while replays were still going: before the fix it waited for all ten to finish.
    expect(finishedAtHealth).toBeLessThan(10);
  });
});

describe('event replay', () => {
  it('pauses for the event loop before every page and reads no page larger than REPLAY_PAGE', async () => {
    const total = REPLAY_PAGE * 3 + 7;
    const events = Array.from({ length: total }, (_, i) => ({ id: i + 1, topic: 'machines.update.m', time: '', data: null }) as unknown as TaktEvent);
    const trace: string[] = [];
    let last = 0;
    await replay({
      list: async (after, limit) => {
        trace.push(`list ${after} ${limit}`);
        return events.filter((e) => e.id > after).slice(0, limit);
      },
      after: () => last,
      send: (e) => {
        last = e.id;
        return 10;
      },
      closed: () => false,
      backpressure: () => null,
      pause: async () => void trace.push('pause'),
    });
    expect(last).toBe(total);
    expect(trace).toEqual([0, 1, 2, 3].flatMap((p) => ['pause', `list ${p * REPLAY_PAGE} ${REPLAY_PAGE}`]));
  });
});

describe('event replay by bytes', () => {
  it('pauses whenever it has written REPLAY_PAUSE_BYTES, even inside a page of a few large events', async () => {
    const big = Math.ceil(REPLAY_PAUSE_BYTES / 4);
    const events = Array.from({ length: 10 }, (_, i) => ({ id: i + 1, topic: 'machines.update.m', time: '', data: null }) as unknown as TaktEvent);
    const trace: string[] = [];
    let last = 0;
    await replay({
      list: async (after, limit) => events.filter((e) => e.id > after).slice(0, limit),
      after: () => last,
      send: (e) => {
        last = e.id;
        trace.push(`send ${e.id}`);
        return big;
      },
      closed: () => false,
      backpressure: () => null,
      pause: async () => void trace.push('pause'),
    });
    // one pause before the page, then one after every fourth event (4 × a quarter of the bound)
    expect(trace.filter((t) => t === 'pause')).toHaveLength(1 + 2);
    expect(trace.slice(0, 6)).toEqual(['pause', 'send 1', 'send 2', 'send 3', 'send 4', 'pause']);
  });
});

describe('a 5xx', () => {
  it('is logged with a request id that the error body carries, and says nothing of the cause', async () => {
    const failing = new Proxy(
      {},
      {
        get: (_t, prop) => (prop === 'onEvents' || prop === 'onOwnEvents' ? () => () => undefined : () => Promise.reject(new Error('disk on fire at /secret/path'))),
      },
    );
    const logged: Array<{ msg: string; fields?: Record<string, unknown> }> = [];
    const app = await buildServer({
      store: failing,
      brokers: new Map(),
      version: 'test',
      adminToken: 'tka.test',
      log: (_level: string, msg: string, fields?: Record<string, unknown>) => logged.push({ msg, fields }),
    } as unknown as ApiContext & { adminToken: string });
    try {
      const r = await app.inject({ method: 'GET', url: '/api/v1/machines', headers: { authorization: 'Bearer tka.test', host: '127.0.0.1' } });
      expect(r.statusCode).toBe(500);
      const body = r.json() as { error: { code: string; message: string; requestId: string } };
      expect(body.error.code).toBe('internal');
      expect(body.error.message).not.toContain('disk on fire');
      expect(body.error.requestId).toBe(r.headers['x-request-id']);
      expect(logged).toHaveLength(1);
      expect(logged[0]!.fields!.requestId).toBe(body.error.requestId);
      expect(logged[0]!.msg).toContain('disk on fire');
    } finally {
      await app.close();
    }
  });
});
