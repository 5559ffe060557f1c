/**
 * Issue #16: every unauthenticated entry that checks a credential or a guessable code is rate limited like
 * `POST /api/v1/login` (api/login-limit.ts). Table-driven: the limiter's scopes and the device-code pacer
 * (RFC 8628 §3.5) with an injected clock; then real endpoints with `--login-max-failures 1` (so each
 * address budget is 10): guessed machine, user, join and unknown tokens (header and the join script's
 * path) are 401 ten times and then 429 with Retry-After from that address only, while the admin token and
 * a machine token already verified keep working from it; with a real OpenID Connect provider, device and
 * browser starts, forged callbacks and guessed device codes hit their limits, and a device code polled
 * sooner than its interval is answered slow_down without a request to the provider. Each of these
 * assertions fails without its limit (the 11th attempt would be another 401/201/302).
 */
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADDRESS_FACTOR, LoginLimiter, type LimitScope } from '../src/api/login-limit.js';
import { DevicePacer } from '../src/api/oidc.js';
import { TaktError } from '../src/model/errors.js';
import { Endpoint } from './helpers/endpoint.js';
import { TestProvider } from './helpers/oidc-provider.js';

const refusal = (f: () => void): TaktError | null => {
  try {
    f();
    return null;
  } catch (err) {
    if (err instanceof TaktError) return err;
    throw err;
  }
};

describe('the limiter scopes (injected clock)', () => {
  const cases: Array<{ scope: LimitScope; how: 'failed' | 'attempt'; message: RegExp }> = [
    { scope: 'token', how: 'failed', message: /^too many failed attempts: tokens this endpoint does not accept, presented from 10\.0\.0\.9, were refused 20 times within 60 s; try again in 60 s$/ },
    { scope: 'sso', how: 'attempt', message: /^too many requests: single sign-on starts and failed callbacks from 10\.0\.0\.9 came 20 times within 60 s; try again in 60 s$/ },
    { scope: 'login', how: 'failed', message: /^too many failed attempts: logins from 10\.0\.0\.9 failed 20 times within 60 s/ },
  ];
  for (const c of cases) {
    it(`${c.scope}: ${ADDRESS_FACTOR}× maxFailures per address, then 429; other addresses and scopes untouched`, () => {
      const l = new LoginLimiter({ maxFailures: 2, windowMs: 60_000, now: () => 0 });
      for (let i = 0; i < 2 * ADDRESS_FACTOR; i++) {
        if (c.how === 'attempt') l.attempt('10.0.0.9', c.scope);
        else {
          l.check(null, '10.0.0.9', c.scope);
          l.failed(null, '10.0.0.9', c.scope);
        }
      }
      const e = refusal(() => l.check(null, '10.0.0.9', c.scope));
      expect(e?.status).toBe(429);
      expect(e?.retryAfter).toBe(60);
      expect(e?.message).toMatch(c.message);
      expect(refusal(() => l.check(null, '10.0.0.10', c.scope))).toBeNull();
      for (const other of (['login', 'token', 'sso'] as const).filter((s) => s !== c.scope)) expect(refusal(() => l.check(null, '10.0.0.9', other)), other).toBeNull();
    });
  }
});

describe('the device-code pacer, RFC 8628 §3.5 (injected clock)', () => {
  // Each step: ms after the previous one, then what the poll is answered.
  const cases: Array<{ name: string; interval: number; steps: Array<[number, ReturnType<DevicePacer['poll']> | 'provider-slow-down']> }> = [
    { name: 'polls at the interval are asked; the first poll is never early', interval: 5, steps: [[0, 'ask'], [5000, 'ask'], [5000, 'ask']] },
    { name: 'a poll sooner than the interval is slow_down, and the interval grows by 5 s each time (5 → 10 → 15)', interval: 5, steps: [[0, 'ask'], [1000, 'slow_down'], [5000, 'slow_down'], [15_000, 'ask'], [15_000, 'ask']] },
    { name: '250 ms early is on time (timers and networks are not exact)', interval: 2, steps: [[0, 'ask'], [1750, 'ask'], [1749, 'slow_down']] },
    { name: "the provider's slow_down grows the pacing too", interval: 1, steps: [[0, 'ask'], [0, 'provider-slow-down'], [1000, 'slow_down'], [11_000, 'ask']] },
    { name: 'past expires_in (600 s) the code is expired, then unknown', interval: 5, steps: [[0, 'ask'], [600_000, 'expired'], [0, 'unknown']] },
  ];
  for (const c of cases) {
    it(c.name, () => {
      let now = 1_000_000;
      const p = new DevicePacer(() => now);
      p.started('dc-1', c.interval, 600);
      c.steps.forEach(([dt, want], i) => {
        now += dt;
        if (want === 'provider-slow-down') p.slowedDown('dc-1');
        else expect(p.poll('dc-1'), `step ${i}`).toBe(want);
      });
    });
  }

  it('a code never started here is unknown (its poll goes to the provider); a finished one is forgotten; the codes are bounded', () => {
    let now = 0;
    const p = new DevicePacer(() => now, 100);
    expect(p.poll('guessed')).toBe('unknown');
    p.started('dc-1', 5, 600);
    p.finished('dc-1');
    expect(p.poll('dc-1')).toBe('unknown');
    for (let i = 0; i < 1000; i++) p.started(`dc-${i}`, 5, 600);
    expect(p.size).toBeLessThanOrEqual(100);
    now += 601_000;
    p.started('late', 5, 600);
    expect(p.size).toBe(1);
  });
});

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

/** One request from a chosen loopback source address (the limits are per address). */
function from(url: string, localAddress: string, method: string, path: string, o: { token?: string; body?: unknown; cookie?: string } = {}): Promise<Answer> {
  const u = new URL(`${url}${path}`);
  const payload = o.body === undefined ? undefined : JSON.stringify(o.body);
  const headers: Record<string, string | number> = {};
  if (o.token) headers.authorization = `Bearer ${o.token}`;
  if (o.cookie) headers.cookie = o.cookie;
  if (payload !== undefined) Object.assign(headers, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: Number(u.port), path: `${u.pathname}${u.search}`, method, localAddress, headers, timeout: 60_000 }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.end(payload);
  });
}

const BUDGET = 1 * ADDRESS_FACTOR;

describe('refused tokens on a real endpoint with --login-max-failures 1 (10 per address)', () => {
  let ep: Endpoint;
  let machine: { id: string; token: string };
  beforeAll(async () => {
    ep = await Endpoint.start({ args: ['--login-max-failures', '1', '--login-window', '5m'] });
    const r = await ep.call('POST', '/machines', { name: 'rl', count: 1 });
    expect(r.status).toBe(201);
    machine = r.body.items[0];
  }, 120_000);
  afterAll(async () => {
    await ep?.stop();
  });

  const rows: Array<{ what: string; address: string; path: string; token?: string; refused: RegExp }> = [
    { what: 'a guessed machine token', address: '127.0.0.11', path: '/api/v1/machines/m-guess', token: 'tkm.m-guess.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', refused: /token not accepted/ },
    { what: 'a guessed user token', address: '127.0.0.12', path: '/api/v1/machines', token: `tku.t-0123456789abcdef.${'A'.repeat(43)}`, refused: /not a valid user token/ },
    { what: 'a guessed join token (header)', address: '127.0.0.13', path: '/api/v1/join', token: `tkj.jt-guess.${'A'.repeat(32)}`, refused: /join token not accepted/ },
    { what: 'a guessed join token (the join script\'s path)', address: '127.0.0.14', path: `/join/tkj.jt-guess.${'B'.repeat(32)}`, refused: /join token not accepted/ },
    { what: 'a token of no known kind', address: '127.0.0.15', path: '/api/v1/machines', token: 'not-a-token-at-all', refused: /token not accepted/ },
  ];
  for (const r of rows) {
    it(`${r.what}: ${BUDGET} refusals, then 429 with Retry-After from that address only`, async () => {
      const method = r.path === '/api/v1/join' ? 'POST' : 'GET';
      const body = method === 'POST' ? {} : undefined;
      for (let i = 0; i < BUDGET; i++) {
        const a = await from(ep.url, r.address, method, r.path, { token: r.token, body });
        expect(a.status, a.text).toBe(401);
        expect(a.text).toMatch(r.refused);
      }
      const limited = await from(ep.url, r.address, method, r.path, { token: r.token, body });
      expect(limited.status, limited.text).toBe(429);
      expect(Number(limited.headers['retry-after'])).toBeGreaterThan(250);
      expect(limited.text).toMatch(/too many failed attempts: tokens this endpoint does not accept, presented from 127\.0\.0\.\d+, were refused 10 times within 300 s/);
      // Another address is not touched.
      expect((await from(ep.url, '127.0.0.99', method, r.path, { token: r.token, body })).status).toBe(401);
    }, 60_000);
  }

  it('from a limited address the admin token and a machine token verified before keep working; an unverified one waits', async () => {
    const addr = '127.0.0.20';
    // Verified (and cached) before the address used up its budget.
    expect((await from(ep.url, addr, 'GET', `/api/v1/machines/${machine.id}`, { token: machine.token })).status).toBe(200);
    for (let i = 0; i < BUDGET; i++) expect((await from(ep.url, addr, 'GET', '/api/v1/machines', { token: 'wrong' })).status).toBe(401);
    expect((await from(ep.url, addr, 'GET', '/api/v1/machines', { token: 'wrong' })).status).toBe(429);
    expect((await from(ep.url, addr, 'GET', '/api/v1/machines', { token: ep.token })).status).toBe(200);
    expect((await from(ep.url, addr, 'GET', `/api/v1/machines/${machine.id}`, { token: machine.token })).status).toBe(200);
    // A user token never seen is looked up only while the address has budget left.
    expect((await ep.call('POST', '/users', { name: 'rita', password: 'rita password 1', roles: ['viewer'] })).status).toBe(201);
    const login = await from(ep.url, '127.0.0.21', 'POST', '/api/v1/login', { body: { user: 'rita', password: 'rita password 1' } });
    expect(login.status, login.text).toBe(201);
    const token = (JSON.parse(login.text) as { token: string }).token;
    expect((await from(ep.url, addr, 'GET', '/api/v1/machines', { token })).status).toBe(429);
    expect((await from(ep.url, '127.0.0.21', 'GET', '/api/v1/machines', { token })).status).toBe(200);
  }, 60_000);
});

describe('single sign-on entries with a real provider and --login-max-failures 1', () => {
  let idp: TestProvider;
  let ep: Endpoint;
  beforeAll(async () => {
    idp = await TestProvider.start({ clientId: 'takt', deviceInterval: 5, redirectUris: ['http://127.0.0.1:1/api/v1/login/sso/callback'] });
    ep = await Endpoint.start({ args: ['--oidc-issuer', idp.issuer, '--oidc-client-id', 'takt', '--login-max-failures', '1'] });
  }, 120_000);
  afterAll(async () => {
    await ep?.stop();
    await idp?.stop();
  });

  const starts: Array<{ what: string; address: string; method: string; path: string; ok: number }> = [
    { what: 'device sign-in starts (each a provider request and a kept code)', address: '127.0.0.31', method: 'POST', path: '/api/v1/login/sso/device', ok: 201 },
    { what: 'browser sign-in starts (each a kept verifier, state and nonce)', address: '127.0.0.32', method: 'GET', path: '/api/v1/login/sso/start', ok: 302 },
  ];
  for (const s of starts) {
    it(`${s.what}: ${BUDGET} per address, then 429`, async () => {
      const body = s.method === 'POST' ? {} : undefined;
      for (let i = 0; i < BUDGET; i++) expect((await from(ep.url, s.address, s.method, s.path, { body })).status).toBe(s.ok);
      const limited = await from(ep.url, s.address, s.method, s.path, { body });
      expect(limited.status, limited.text).toBe(429);
      expect(limited.headers['retry-after']).toBeDefined();
      expect(limited.text).toMatch(/too many requests: single sign-on starts and failed callbacks from 127\.0\.0\.3\d came 10 times/);
      expect((await from(ep.url, '127.0.0.98', s.method, s.path, { body })).status).toBe(s.ok);
    }, 60_000);
  }

  it(`forged browser callbacks: ${BUDGET} refusals, then the UI is told to wait`, async () => {
    const path = '/api/v1/login/sso/callback?code=x&state=forged';
    for (let i = 0; i < BUDGET; i++) {
      const a = await from(ep.url, '127.0.0.33', 'GET', path, { cookie: 'takt_sso=forged' });
      expect(a.status).toBe(302);
      expect(decodeURIComponent(a.headers.location!)).toMatch(/ssoError=single sign-on failed: this sign-in is unknown/);
    }
    const limited = await from(ep.url, '127.0.0.33', 'GET', path, { cookie: 'takt_sso=forged' });
    expect(decodeURIComponent(limited.headers.location!)).toMatch(/ssoError=too many requests: single sign-on starts and failed callbacks/);
  }, 60_000);

  it('a guessed device code: one refusal per name+address (the login budget), then 429 before the provider is asked', async () => {
    const before = idp.devicePolls.length;
    const a = await from(ep.url, '127.0.0.34', 'POST', '/api/v1/login/sso/device/token', { body: { deviceCode: 'guessed-1' } });
    expect(a.status, a.text).toBe(401);
    const b = await from(ep.url, '127.0.0.34', 'POST', '/api/v1/login/sso/device/token', { body: { deviceCode: 'guessed-2' } });
    expect(b.status, b.text).toBe(429);
    expect(idp.devicePolls.length - before).toBe(1);
  }, 60_000);

  it('a device code polled sooner than its interval is answered slow_down here, without a request to the provider', async () => {
    const start = await from(ep.url, '127.0.0.35', 'POST', '/api/v1/login/sso/device', { body: {} });
    expect(start.status).toBe(201);
    const { deviceCode, interval } = JSON.parse(start.text) as { deviceCode: string; interval: number };
    expect(interval).toBe(5);
    const before = idp.devicePolls.length;
    const first = await from(ep.url, '127.0.0.35', 'POST', '/api/v1/login/sso/device/token', { body: { deviceCode } });
    expect(JSON.parse(first.text)).toEqual({ status: 'pending' });
    expect(idp.devicePolls.length - before).toBe(1);
    for (let i = 0; i < 3; i++) {
      const again = await from(ep.url, '127.0.0.35', 'POST', '/api/v1/login/sso/device/token', { body: { deviceCode } });
      expect(again.status).toBe(200);
      expect(JSON.parse(again.text)).toEqual({ status: 'slow_down' });
    }
    expect(idp.devicePolls.length - before).toBe(1);
  }, 60_000);
});
