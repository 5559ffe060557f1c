/**
 * Issue #16: login rate limits. The limiter with an injected clock (no sleeps): a name+address past its
 * budget is refused with the seconds to wait, a failure ages out of the sliding window, a success clears
 * its key, other addresses and names are not touched, an address spraying names is stopped at 10× the
 * budget, the keys are bounded. Then a real endpoint with `--login-max-failures 3`: the fourth attempt is a
 * 429 `rate_limited` with `Retry-After` (even with the right password), another source address still logs
 * in, a success resets, the refusals are in the audit log; and `takt serve` refuses bad limits.
 */
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADDRESS_FACTOR, LoginLimiter } from '../src/api/login-limit.js';
import { loginLimits } from '../src/cli/serve.js';
import { TaktError } from '../src/model/errors.js';
import { Endpoint, serveRefusal } from './helpers/endpoint.js';

const refusal = (f: () => void): TaktError => {
  try {
    f();
  } catch (err) {
    if (err instanceof TaktError) return err;
    throw err;
  }
  throw new Error('not refused');
};

describe('the login limiter (injected clock)', () => {
  it('refuses a name+address past its budget until its oldest failure leaves the window', () => {
    let now = 1_000_000;
    const l = new LoginLimiter({ maxFailures: 3, windowMs: 300_000, now: () => now });
    for (let i = 0; i < 3; i++) {
      l.check('vera', '10.0.0.1');
      l.failed('vera', '10.0.0.1');
      now += 10_000;
    }
    const e = refusal(() => l.check('vera', '10.0.0.1'));
    expect(e.code).toBe('rate_limited');
    expect(e.status).toBe(429);
    // The first failure was at 1,000,000; now is 1,030,000: it ages out 270 s from now.
    expect(e.retryAfter).toBe(270);
    expect(e.toBody().error).toMatchObject({ code: 'rate_limited', retryAfter: 270 });
    expect(e.message).toMatch(/login for 'vera' from 10\.0\.0\.1 failed 3 times within 300 s; try again in 270 s/);
    // Other addresses and other names are not touched.
    l.check('vera', '10.0.0.2');
    l.check('otto', '10.0.0.1');
    now += 269_999;
    expect(() => l.check('vera', '10.0.0.1')).toThrow(TaktError);
    now += 1;
    l.check('vera', '10.0.0.1');
    // One more failure: the window again holds three.
    l.failed('vera', '10.0.0.1');
    expect(refusal(() => l.check('vera', '10.0.0.1')).retryAfter).toBe(10);
  });

  it('a success clears its name+address', () => {
    const now = 5_000;
    const l = new LoginLimiter({ maxFailures: 2, windowMs: 60_000, now: () => now });
    l.failed('vera', 'a');
    l.succeeded('vera', 'a');
    l.failed('vera', 'a');
    l.check('vera', 'a');
    l.failed('vera', 'a');
    expect(() => l.check('vera', 'a')).toThrow(/too many failed attempts/);
  });

  it(`an address spraying many names is stopped at ${ADDRESS_FACTOR}× the budget`, () => {
    const l = new LoginLimiter({ maxFailures: 2, windowMs: 60_000, now: () => 0 });
    for (let i = 0; i < 2 * ADDRESS_FACTOR; i++) {
      l.check(`user${i}`, 'x');
      l.failed(`user${i}`, 'x');
    }
    expect(refusal(() => l.check('someone-new', 'x')).message).toMatch(/logins from x failed 20 times/);
    l.check('someone-new', 'y');
  });

  it('keeps a bounded number of keys', () => {
    const l = new LoginLimiter({ maxFailures: 5, windowMs: 60_000, maxKeys: 100, now: () => 0 });
    for (let i = 0; i < 1000; i++) l.failed('vera', `10.0.${i >> 8}.${i & 255}`);
    expect(l.size).toBeLessThanOrEqual(100);
  });

  it('takes its limits from the serve flags, refusing bad ones', () => {
    expect(loginLimits(undefined, undefined)).toEqual({ maxFailures: 10, windowMs: 300_000 });
    expect(loginLimits('3', '90s')).toEqual({ maxFailures: 3, windowMs: 90_000 });
    expect(() => loginLimits('0', undefined)).toThrow(/--login-max-failures must be a whole number from 1/);
    expect(() => loginLimits('ten', undefined)).toThrow(/--login-max-failures/);
    expect(() => loginLimits(undefined, '0s')).toThrow(/--login-window/);
  });
});

/** POST /api/v1/login from a chosen loopback source address. */
function loginFrom(url: string, localAddress: string, user: string, password: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: { error?: { code: string; message: string; retryAfter?: number }; token?: string } }> {
  const u = new URL(`${url}/api/v1/login`);
  const payload = JSON.stringify({ user, password });
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: Number(u.port), path: u.pathname, method: 'POST', localAddress, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }, timeout: 60_000 }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.end(payload);
  });
}

describe('POST /login on a real endpoint with --login-max-failures 3', () => {
  const PW = 'correct horse battery';
  let ep: Endpoint;
  beforeAll(async () => {
    ep = await Endpoint.start({ args: ['--login-max-failures', '3', '--login-window', '5m'] });
    for (const name of ['vera', 'otto']) expect((await ep.call('POST', '/users', { name, password: PW, roles: ['viewer'] })).status).toBe(201);
  }, 120_000);
  afterAll(async () => {
    await ep?.stop();
  });

  it('the fourth attempt is 429 with Retry-After, even with the right password; another address still logs in', async () => {
    for (let i = 0; i < 3; i++) expect((await loginFrom(ep.url, '127.0.0.1', 'vera', 'wrong password!')).status).toBe(401);
    const r = await loginFrom(ep.url, '127.0.0.1', 'vera', PW);
    expect(r.status).toBe(429);
    expect(r.body.error?.code).toBe('rate_limited');
    expect(r.body.error?.retryAfter).toBeGreaterThan(250);
    expect(r.body.error?.retryAfter).toBeLessThanOrEqual(300);
    expect(r.headers['retry-after']).toBe(String(r.body.error?.retryAfter));
    expect(r.body.error?.message).toMatch(/^too many failed attempts: login for 'vera' from 127\.0\.0\.1 failed 3 times within 300 s; try again in \d+ s$/);
    const other = await loginFrom(ep.url, '127.0.0.2', 'vera', PW);
    expect(other.status, JSON.stringify(other.body)).toBe(201);
  }, 60_000);

  it('a success resets the name+address', async () => {
    for (let i = 0; i < 2; i++) expect((await loginFrom(ep.url, '127.0.0.3', 'otto', 'wrong password!')).status).toBe(401);
    expect((await loginFrom(ep.url, '127.0.0.3', 'otto', PW)).status).toBe(201);
    for (let i = 0; i < 3; i++) expect((await loginFrom(ep.url, '127.0.0.3', 'otto', 'wrong password!')).status).toBe(401);
    expect((await loginFrom(ep.url, '127.0.0.3', 'otto', PW)).status).toBe(429);
  }, 60_000);

  it('the refusals are in the audit log, with the name and the address', async () => {
    const entries = await (async () => {
      // Refusals are written within a second (buffered): poll, bounded.
      for (let i = 0; i < 100; i++) {
        const r = await ep.call('GET', '/audit?route=login&limit=1000');
        const hits = (r.body.items as Array<{ status: number; resource: string; source: string }>).filter((e) => e.status === 429);
        if (hits.length >= 2) return hits;
        await new Promise((res) => setTimeout(res, 200));
      }
      throw new Error('no 429 entries in the audit log');
    })();
    expect(entries.map((e) => `${e.resource} ${e.source}`).sort()).toEqual(['user:otto 127.0.0.3', 'user:vera 127.0.0.1']);
  }, 60_000);

  it('takt serve refuses a bad --login-window', async () => {
    const data = mkdtempSync(join(tmpdir(), 'takt-limit-'));
    try {
      const r = await serveRefusal(data, { TAKT_LOGIN_WINDOW: '0s' });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/--login-window/);
    } finally {
      rmSync(data, { recursive: true, force: true });
    }
  }, 90_000);
});
