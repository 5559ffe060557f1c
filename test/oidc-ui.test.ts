/**
 * Single sign-on in the web UI (issue #16): a real Chromium (playwright-core) completes the authorisation
 * code flow with PKCE through a real OpenID Connect provider's sign-in form (oidc-provider on loopback,
 * the endpoint as a confidential client) and lands in the UI signed in; the password form; a forged
 * callback shows its reason. Chromium may reach loopback only (the provider's pages import web fonts).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint } from './helpers/endpoint.js';
import { TestProvider } from './helpers/oidc-provider.js';
import { haveChromium, launchChromium } from './helpers/browser.js';


let idp: TestProvider;
let ep: Endpoint;
let browser: Browser;
let ui = '';
const secretDir = mkdtempSync(join(tmpdir(), 'takt-oidc-ui-'));

/** A loopback port free a moment ago: the provider must know the redirect URI before the endpoint starts. */
const freePort = () =>
  new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });

/** A page that may reach loopback only, recording what the Content-Security-Policy refused. */
async function loopbackPage(): Promise<{ page: Page; violations: string[] }> {
  const page = await browser.newPage();
  await page.route('**/*', (route) => (/^https?:\/\/127\.0\.0\.1[:/]/.test(route.request().url()) ? route.continue() : route.abort()));
  const violations: string[] = [];
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
  });
  return { page, violations };
}

describe.skipIf(!haveChromium)('single sign-on in the web UI (Chromium, real provider)', () => {
  beforeAll(async () => {
    const port = await freePort();
    ui = `http://127.0.0.1:${port}`;
    idp = await TestProvider.start({ clientId: 'takt-ui', clientSecret: 'a-client-secret-for-tests', redirectUris: [`${ui}/api/v1/login/sso/callback`] });
    idp.accounts.set('sub-alice', { id: 'sub-alice', preferredUsername: 'alice', email: 'alice@example.org', groups: ['ops'] });
    const secretFile = join(secretDir, 'oidc.secret');
    writeFileSync(secretFile, 'a-client-secret-for-tests\n', { mode: 0o600 });
    ep = await Endpoint.start({ listen: [`127.0.0.1:${port}`], args: ['--oidc-issuer', idp.issuer, '--oidc-client-id', 'takt-ui', '--oidc-client-secret-file', secretFile] });
    expect((await ep.call('PUT', '/groups/ops', {})).status).toBe(200);
    expect((await ep.call('POST', '/rolebindings', { role: 'operator', subject: 'group:ops' })).status).toBe(201);
    browser = await launchChromium();
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await ep?.stop();
    await idp?.stop();
    rmSync(secretDir, { recursive: true, force: true });
  });

  it('the sign-in starts with PKCE (S256), state and nonce, and a state cookie that is HttpOnly and SameSite=Lax', async () => {
    const res = await fetch(`${ui}/api/v1/login/sso/start`, { redirect: 'manual' });
    expect(res.status).toBe(302);
    const to = new URL(res.headers.get('location')!);
    expect(to.origin).toBe(idp.issuer);
    expect(to.searchParams.get('client_id')).toBe('takt-ui');
    expect(to.searchParams.get('code_challenge_method')).toBe('S256');
    expect(to.searchParams.get('code_challenge')).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(to.searchParams.get('redirect_uri')).toBe(`${ui}/api/v1/login/sso/callback`);
    expect(to.searchParams.get('nonce')).toBeTruthy();
    const cookie = res.headers.get('set-cookie')!;
    expect(cookie).toBe(`takt_sso=${to.searchParams.get('state')}; Path=/api/v1/login/sso/callback; Max-Age=600; HttpOnly; SameSite=Lax`);
  });

  it('Chromium: "Sign in with single sign-on" → the provider\'s sign-in form → back in the UI, signed in as alice with her group\'s role', async () => {
    const { page, violations } = await loopbackPage();
    await page.goto(`${ui}/`);
    await page.locator('#login').waitFor({ state: 'visible', timeout: 15_000 });
    await page.locator('#ssoBox').waitFor({ state: 'visible', timeout: 10_000 });
    await expect(page.locator('#ssoIssuer').textContent()).resolves.toBe(`(${idp.issuer})`);
    await page.click('#ssoLink');
    // The provider's own sign-in page.
    await page.waitForURL((u) => u.href.startsWith(`${idp.issuer}/interaction/`), { timeout: 15_000 });
    await page.fill('input[name=login]', 'sub-alice');
    await page.fill('input[name=password]', 'anything');
    await page.click('button[type=submit]');
    // Back at the endpoint: the UI took the token from the fragment and shows the app.
    await page.waitForURL((u) => u.origin === ui && u.hash === '', { timeout: 15_000 });
    await page.locator('#app').waitFor({ state: 'visible', timeout: 15_000 });
    await page.getByText('live', { exact: true }).waitFor({ timeout: 15_000 });
    const token = (await page.evaluate('localStorage.getItem("taktToken")')) as string;
    expect(token).toMatch(/^tku\./);
    expect(page.url()).not.toContain('token');
    const who = await ep.call('GET', '/whoami', undefined, token);
    expect(who.body).toMatchObject({ name: 'alice', kind: 'user', roles: [{ role: 'operator' }] });
    expect(violations).toEqual([]);
    // The state cookie was cleared on the way back.
    const cookies = await page.context().cookies(ui);
    expect(cookies.find((c) => c.name === 'takt_sso')).toBeUndefined();
    await page.close();
  }, 90_000);

  it('a callback that this browser did not start goes back to the login page with the reason', async () => {
    const { page } = await loopbackPage();
    await page.goto(`${ui}/api/v1/login/sso/callback?code=stolen&state=forged`);
    await page.locator('#loginError').waitFor({ state: 'visible', timeout: 15_000 });
    await expect(page.locator('#loginError').textContent()).resolves.toMatch(/single sign-on failed: this sign-in is unknown/);
    expect(page.url()).toBe(`${ui}/`);
    await page.close();
  }, 60_000);

  it('the password form signs a takt user in, and says why when it refuses', async () => {
    expect((await ep.call('POST', '/users', { name: 'dave', password: 'daves-password', roles: ['viewer'] })).status).toBe(201);
    const { page, violations } = await loopbackPage();
    await page.goto(`${ui}/`);
    await page.locator('#login').waitFor({ state: 'visible', timeout: 15_000 });
    await page.fill('#userInput', 'dave');
    await page.fill('#passwordInput', 'not-his-password');
    await page.click('#passwordForm button');
    await expect.poll(() => page.locator('#loginError').textContent(), { timeout: 15_000 }).toMatch(/login refused: unknown user or wrong password/);
    await page.fill('#passwordInput', 'daves-password');
    await page.click('#passwordForm button');
    await page.locator('#app').waitFor({ state: 'visible', timeout: 15_000 });
    await page.getByText('live', { exact: true }).waitFor({ timeout: 15_000 });
    const token = (await page.evaluate('localStorage.getItem("taktToken")')) as string;
    expect((await ep.call('GET', '/whoami', undefined, token)).body.name).toBe('dave');
    expect(violations).toEqual([]);
    await page.close();
  }, 60_000);
});
