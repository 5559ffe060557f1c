/**
 * Single sign-on (issue #16) against a real OpenID Connect provider (panva's oidc-provider on loopback,
 * test/helpers/oidc-provider.ts): the CLI's device flow end to end (the test plays the user on the
 * provider's pages over HTTP), group mapping to permissions, ID tokens with a bad issuer, audience, expiry,
 * nonce or key refused, and the failure paths (denied, name taken, bad configuration) with clear messages.
 */
import { spawn } from 'node:child_process';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateKeyPair, SignJWT } from 'jose';
import { Sso } from '../src/api/oidc.js';
import { Endpoint, runCli, TAKT, ROOT } from './helpers/endpoint.js';
import { completeDeviceSignIn, TestProvider } from './helpers/oidc-provider.js';

let idp: TestProvider;
let ep: Endpoint;
const dirs: string[] = [];
const configDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'takt-oidc-cfg-'));
  dirs.push(d);
  return d;
};

/**
 * `takt login --sso` as a child process; resolves with the verification URL and code as soon as it prints
 * them, and `done` when it exits.
 */
function cliLogin(env: Record<string, string>, extra: string[] = []) {
  const p = spawn(process.execPath, [TAKT, 'login', '--sso', ...extra], { env: { ...process.env, NO_COLOR: '1', ...env }, cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  const shown = new Promise<{ url: string; code: string }>((resolve, reject) => {
    p.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = /open (\S+)\n.*the code: (\S+)/.exec(stderr);
      if (m) resolve({ url: m[1]!, code: m[2]! });
    });
    p.on('close', () => reject(new Error(`takt login --sso ended before showing a code:\n${stderr}`)));
  });
  const done = new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => p.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr })));
  shown.catch(() => undefined);
  return { shown, done };
}

/** A device sign-in through the API (as the CLI does it), the test playing `login` at the provider. */
async function apiDeviceLogin(login: string): Promise<{ status: number; body: { token: string; user: string; groups: string[] } }> {
  const start = await ep.call('POST', '/login/sso/device', {}, null);
  expect(start.status).toBe(201);
  await completeDeviceSignIn(start.body.verificationUriComplete, login);
  return ep.call('POST', '/login/sso/device/token', { deviceCode: start.body.deviceCode }, null);
}

describe('single sign-on with a real OpenID Connect provider', () => {
  beforeAll(async () => {
    // The browser flow is test/oidc-ui.test.ts's; the client needs a redirect URI all the same.
    idp = await TestProvider.start({ clientId: 'takt', deviceInterval: 1, redirectUris: ['http://127.0.0.1:1/api/v1/login/sso/callback'] });
    idp.accounts.set('sub-alice', { id: 'sub-alice', preferredUsername: 'alice', groups: ['ops', 'idp-only'] });
    idp.accounts.set('sub-bob', { id: 'sub-bob', preferredUsername: 'Bob', groups: ['viewers'] });
    idp.accounts.set('sub-carol', { id: 'sub-carol', preferredUsername: 'carol', groups: [] });
    idp.accounts.set('sub-nameless', { id: 'sub-nameless', preferredUsername: 'not a name!', groups: [] });
    ep = await Endpoint.start({ args: ['--oidc-issuer', idp.issuer, '--oidc-client-id', 'takt'] });
    // takt groups named after the provider's groups, each bound to a role.
    for (const [group, role] of [['ops', 'operator'], ['viewers', 'viewer']] as const) {
      expect((await ep.call('PUT', `/groups/${group}`, {})).status).toBe(200);
      expect((await ep.call('POST', '/rolebindings', { role, subject: `group:${group}` })).status).toBe(201);
    }
  }, 120_000);

  afterAll(async () => {
    await ep?.stop();
    await idp?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('serve checked the provider at start and says so; the UI and CLI can ask', async () => {
    expect(ep.output).toMatch(new RegExp(`single sign-on: ${idp.issuer} as public client takt; redirect URI .*/api/v1/login/sso/callback; device flow \\(takt login --sso\\) available`));
    const info = await ep.call('GET', '/login/sso', undefined, null);
    expect(info).toEqual({ status: 200, body: { enabled: true, issuer: idp.issuer, device: true } });
  });

  it('takt login --sso: device flow end to end — code shown, the user signs in at the provider, token kept 0600, groups mapped to roles', async () => {
    const cfg = configDir();
    const env = { TAKT_ENDPOINT: ep.url, TAKT_CONFIG_DIR: cfg, TAKT_TOKEN: '' };
    const login = cliLogin(env, ['-o', 'json']);
    const { url, code } = await login.shown;
    expect(url.startsWith(`${idp.issuer}/device?user_code=`)).toBe(true);
    expect(code).toMatch(/^[A-Z]{4}-[A-Z]{4}$/);
    const page = await completeDeviceSignIn(url, 'sub-alice');
    expect(page).toMatch(/successful/);
    const r = await login.done;
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { user: string; groups: string[]; token: { name: string; expiresAt: string }; file: string };
    expect(out).toMatchObject({ user: 'alice', groups: ['ops'], token: { name: 'sso' } });
    // The provider's group without a takt group is ignored; no token text in the output.
    expect(r.stdout + r.stderr).not.toMatch(/tku\./);
    expect(statSync(out.file).mode & 0o777).toBe(0o600);
    // The kept token works as alice, with the operator role her provider group gives.
    const who = await runCli(['whoami', '-o', 'json'], env);
    expect(who.code, who.stderr).toBe(0);
    const me = JSON.parse(who.stdout) as { name: string; roles: Array<{ role: string }>; permissions: string[] };
    expect(me.name).toBe('alice');
    expect(me.roles.map((x) => x.role)).toEqual(['operator']);
    // The user was made on this first login: kind oidc, issuer and subject recorded, no password.
    const users = await ep.call('GET', '/users');
    expect(users.body.items.find((u: { name: string }) => u.name === 'alice')).toMatchObject({ kind: 'oidc', oidc: { issuer: idp.issuer, subject: 'sub-alice' }, groups: ['ops'] });
    // It polled at the interval the provider gave, and the provider answered pending before the sign-in.
    expect(idp.devicePolls.at(-1)!.answered).toBe('tokens');
    // Password login is no way in for an SSO user, and takt keeps no password for them.
    expect((await ep.call('POST', '/login', { user: 'alice', password: 'whatever-password' }, null)).status).toBe(401);
    const pw = await ep.call('PUT', '/users/alice/password', { password: 'a-new-password' });
    expect(pw.status).toBe(409);
    expect(pw.body.error.message).toMatch(/signs in through single sign-on/);
  }, 120_000);

  it('group mapping → permissions: a viewer group user reads but gets 403 on a write; membership follows the provider at each login', async () => {
    const first = await apiDeviceLogin('sub-bob');
    expect(first.status).toBe(201);
    // preferred_username is lower-cased into the takt name.
    expect(first.body).toMatchObject({ user: 'bob', groups: ['viewers'] });
    const bob = first.body.token;
    expect((await ep.call('GET', '/machines', undefined, bob)).status).toBe(200);
    const write = await ep.call('POST', '/machines', { name: 'bobs-box' }, bob);
    expect(write.status).toBe(403);
    expect(write.body.error.message).toMatch(/user bob: needs permission machines:write/);
    // The provider moves bob to ops: his next login takes him out of viewers and into ops.
    idp.accounts.get('sub-bob')!.groups = ['ops'];
    const again = await apiDeviceLogin('sub-bob');
    expect(again.status).toBe(201);
    expect(again.body.groups).toEqual(['ops']);
    const groups = (await ep.call('GET', '/groups')).body.items as Array<{ name: string; members: string[] }>;
    expect(groups.find((g) => g.name === 'viewers')!.members).not.toContain('bob');
    expect(groups.find((g) => g.name === 'ops')!.members).toEqual(['alice', 'bob']);
    // Same subject, same user: no second account.
    expect(((await ep.call('GET', '/users')).body.items as Array<{ name: string }>).filter((u) => u.name === 'bob')).toHaveLength(1);
  }, 120_000);

  it('honours slow_down: the next poll comes at least 5 s later than the interval', async () => {
    const cfg = configDir();
    const login = cliLogin({ TAKT_ENDPOINT: ep.url, TAKT_CONFIG_DIR: cfg, TAKT_TOKEN: '' });
    const { url } = await login.shown;
    const before = idp.devicePolls.length;
    idp.slowDowns = 1;
    await completeDeviceSignIn(url, 'sub-alice');
    const r = await login.done;
    expect(r.code, r.stderr).toBe(0);
    const polls = idp.devicePolls.slice(before);
    const slow = polls.findIndex((p) => p.answered === 'slow_down');
    expect(slow).toBeGreaterThanOrEqual(0);
    // interval 1 s + 5 s (RFC 8628 §3.5): a lower bound, which the CLI's wait guarantees.
    expect(polls[slow + 1]!.at - polls[slow]!.at).toBeGreaterThanOrEqual(5_900);
  }, 120_000);

  it('login failure paths: denied at the provider, a name that belongs to a password user, a name takt cannot use', async () => {
    // The user cancels at the provider: the CLI says so and exits non-zero, keeping nothing.
    const cfg = configDir();
    const login = cliLogin({ TAKT_ENDPOINT: ep.url, TAKT_CONFIG_DIR: cfg, TAKT_TOKEN: '' });
    const { url } = await login.shown;
    await completeDeviceSignIn(url, 'sub-alice', { abort: true });
    const r = await login.done;
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/single sign-on refused: the sign-in was denied at the identity provider/);
    expect(r.stderr).not.toMatch(/at .*\.js:\d+/);
    // carol is a password user: the provider's carol does not get her account.
    expect((await ep.call('POST', '/users', { name: 'carol', password: 'carols-password' })).status).toBe(201);
    const taken = await apiDeviceLogin('sub-carol');
    expect(taken.status).toBe(403);
    expect((taken.body as unknown as { error: { message: string } }).error.message).toMatch(/the takt user name 'carol' belongs to a password user/);
    // A preferred_username that is no takt name is refused naming the claim.
    const bad = await apiDeviceLogin('sub-nameless');
    expect(bad.status).toBe(422);
    expect((bad.body as unknown as { error: { message: string; path: string } }).error).toMatchObject({ path: '/preferred_username' });
    // A device code the provider never issued.
    const bogus = await ep.call('POST', '/login/sso/device/token', { deviceCode: 'not-a-device-code' }, null);
    expect(bogus.status).toBe(401);
    expect(bogus.body.error.message).toMatch(/refused by the identity provider: invalid_grant/);
    // The browser callback with a state this endpoint never started goes back to the UI with the reason.
    const cb = await fetch(`${ep.url}/api/v1/login/sso/callback?code=x&state=forged`, { redirect: 'manual' });
    expect(cb.status).toBe(302);
    expect(decodeURIComponent(cb.headers.get('location')!)).toMatch(/^\/#ssoError=single sign-on failed: this sign-in is unknown/);
  }, 120_000);

  it('ID tokens: signed by the provider but with a bad issuer, audience, expiry or nonce — or signed by another key — are refused saying which', async () => {
    const sso = await Sso.discover({ issuer: idp.issuer, clientId: 'takt', groupsClaim: 'groups' });
    const now = Math.floor(Date.now() / 1000);
    const good = { iss: idp.issuer, aud: 'takt', sub: 'sub-alice', nonce: 'n-1' };
    await expect(sso.verifyIdToken(await idp.sign(good), 'n-1')).resolves.toMatchObject({ sub: 'sub-alice' });
    const refused = async (token: string, nonce?: string) => {
      const err = await sso.verifyIdToken(token, nonce).then(() => null, (e: Error & { code?: string }) => e);
      expect(err, 'accepted').not.toBeNull();
      expect(err!.code).toBe('unauthorized');
      return err!.message;
    };
    expect(await refused(await idp.sign({ ...good, iss: 'http://127.0.0.1:1/other' }))).toMatch(/was not issued by http:\/\/127\.0\.0\.1:\d+ \(iss mismatch\)/);
    expect(await refused(await idp.sign({ ...good, aud: 'another-client' }))).toMatch(/is not for this endpoint \(aud/);
    expect(await refused(await idp.sign(good, { expiresIn: now - 120 }))).toMatch(/has expired/);
    expect(await refused(await idp.sign(good), 'n-2')).toMatch(/nonce is not the one this sign-in sent/);
    expect(await refused(await idp.sign({ ...good, aud: ['takt', 'other'] }))).toMatch(/several audiences and its azp/);
    // Same kid, another key: the signature does not verify against the provider's JWKS.
    const { privateKey } = await generateKeyPair('RS256');
    const forged = await new SignJWT({ ...good, iat: now }).setProtectedHeader({ alg: 'RS256', kid: 'test-key-1' }).setExpirationTime(now + 300).sign(privateKey);
    expect(await refused(forged)).toMatch(/signature does not verify/);
    // An unsigned token (alg none) and an HMAC one keyed with anything are never accepted.
    const unsigned = `${Buffer.from(JSON.stringify({ alg: 'none' })).toString('base64url')}.${Buffer.from(JSON.stringify({ ...good, iat: now, exp: now + 300 })).toString('base64url')}.`;
    expect(await refused(unsigned)).toMatch(/not valid|algorithm/);
  }, 60_000);

  it('serve refuses a provider it cannot use, naming what is wrong, before starting anything', async () => {
    const data = mkdtempSync(join(tmpdir(), 'takt-oidc-bad-'));
    dirs.push(data);
    const serve = (args: string[]) => runCli(['serve', '--listen', '127.0.0.1:0', '--data', data, ...args]);
    // The provider's discovery document names another issuer (127.0.0.1 vs localhost): refused.
    const other = await serve(['--oidc-issuer', idp.issuer.replace('127.0.0.1', 'localhost'), '--oidc-client-id', 'takt']);
    expect(other.code).not.toBe(0);
    expect(other.stderr).toMatch(/--oidc-issuer http:\/\/localhost:\d+: its discovery document .* could not be used: .*issuer/i);
    // Nothing listens there (a port just freed).
    const port = await new Promise<number>((resolve) => {
      const srv = createNetServer().listen(0, '127.0.0.1', () => {
        const p = (srv.address() as AddressInfo).port;
        srv.close(() => resolve(p));
      });
    });
    const closed = await serve(['--oidc-issuer', `http://127.0.0.1:${port}`, '--oidc-client-id', 'takt']);
    expect(closed.code).not.toBe(0);
    expect(closed.stderr).toMatch(new RegExp(`--oidc-issuer http://127\\.0\\.0\\.1:${port}: its discovery document .* could not be used: ECONNREFUSED`));
    // Plain http beyond loopback, a missing client id, a secret file that is not there, a client id without an issuer.
    expect((await serve(['--oidc-issuer', 'http://login.example.org', '--oidc-client-id', 'takt'])).stderr).toMatch(/must be an https URL \(plain http only on loopback\)/);
    expect((await serve(['--oidc-issuer', idp.issuer])).stderr).toMatch(/--oidc-issuer needs --oidc-client-id ID/);
    expect((await serve(['--oidc-issuer', idp.issuer, '--oidc-client-id', 'takt', '--oidc-client-secret-file', join(data, 'nope')])).stderr).toMatch(/--oidc-client-secret-file .*nope: cannot read it \(ENOENT\)/);
    writeFileSync(join(data, 'empty'), '\n');
    expect((await serve(['--oidc-issuer', idp.issuer, '--oidc-client-id', 'takt', '--oidc-client-secret-file', join(data, 'empty')])).stderr).toMatch(/is empty/);
    expect((await serve(['--oidc-client-id', 'takt'])).stderr).toMatch(/--oidc-client-id needs --oidc-issuer URL/);
  }, 120_000);

  it('takt login --sso against an endpoint without single sign-on says how to log in instead', async () => {
    const plain = await Endpoint.start();
    try {
      const r = await runCli(['login', '--sso'], { TAKT_ENDPOINT: plain.url, TAKT_CONFIG_DIR: configDir(), TAKT_TOKEN: '' });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/single sign-on is not set up on this endpoint .*takt login NAME/);
    } finally {
      await plain.stop();
    }
  }, 120_000);
});
