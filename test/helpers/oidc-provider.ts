/**
 * A real OpenID Connect provider for tests: panva's `oidc-provider` (the certified implementation) on
 * loopback, with its development sign-in pages, the device flow, a groups claim and accounts the test
 * edits. Not a mock: takt talks to it as to any provider (discovery, JWKS, PKCE, device grant, userinfo).
 *
 * `sign` mints tokens with the provider's own signing key, so a test can present ID tokens that are
 * validly signed but wrong in one claim (issuer, audience, expiry).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT, type JWTPayload } from 'jose';
import Provider, { type Configuration } from 'oidc-provider';

export interface Account {
  /** The subject (`sub`) and the login typed on the sign-in page. */
  id: string;
  preferredUsername: string;
  email?: string;
  groups: string[];
}

export interface ProviderOptions {
  clientId: string;
  /** A confidential client with this secret; absent: a public client. */
  clientSecret?: string;
  /** Redirect URIs registered for the client (the endpoint's callback). */
  redirectUris?: string[];
  /** Seconds the CLI is told to wait between polls (RFC 8628 `interval`); the package itself sends none. */
  deviceInterval?: number;
}

export class TestProvider {
  readonly accounts = new Map<string, Account>();
  /** Token endpoint requests for the device grant, in order (time and what was answered). */
  readonly devicePolls: Array<{ at: number; answered: string }> = [];
  /** Answer slow_down to this many device-grant polls before the next real answer. */
  slowDowns = 0;

  private constructor(
    readonly issuer: string,
    private readonly server: Server,
    private readonly key: Awaited<ReturnType<typeof generateKeyPair>>['privateKey'],
    private readonly kid: string,
  ) {}

  static async start(o: ProviderOptions): Promise<TestProvider> {
    let handler: ((req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => void) | null = null;
    const server = createServer((req, res) => (handler ? handler(req, res) : res.writeHead(503).end()));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const { privateKey } = await generateKeyPair('RS256', { extractable: true });
    const kid = 'test-key-1';
    const jwk = { ...(await exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };
    const p = new TestProvider(issuer, server, privateKey, kid);
    const config: Configuration = {
      clients: [
        {
          client_id: o.clientId,
          ...(o.clientSecret ? { client_secret: o.clientSecret, token_endpoint_auth_method: 'client_secret_basic' } : { token_endpoint_auth_method: 'none' }),
          redirect_uris: o.redirectUris ?? [],
          grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
          response_types: ['code'],
        },
      ],
      jwks: { keys: [jwk] },
      features: { devInteractions: { enabled: true }, deviceFlow: { enabled: true } },
      pkce: { required: () => true },
      ttl: { AccessToken: 600, AuthorizationCode: 60, DeviceCode: 600, Grant: 600, IdToken: 600, Interaction: 600, Session: 600 },
      claims: { openid: ['sub'], profile: ['preferred_username'], email: ['email'], groups: ['groups'] },
      findAccount: (_ctx, sub) => {
        const a = p.accounts.get(sub);
        if (!a) return undefined;
        return { accountId: sub, claims: () => ({ sub, preferred_username: a.preferredUsername, groups: a.groups, ...(a.email ? { email: a.email } : {}) }) };
      },
      // The test user consents once per client without a consent page.
      loadExistingGrant: async (ctx) => {
        const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session!.grantIdFor(ctx.oidc.client!.clientId);
        if (grantId) return ctx.oidc.provider.Grant.find(grantId);
        const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client!.clientId, accountId: ctx.oidc.session!.accountId });
        grant.addOIDCScope('openid profile email groups');
        await grant.save();
        return grant;
      },
      // Keep the package's log quiet about its development defaults.
      renderError: async (ctx, out) => {
        ctx.type = 'html';
        ctx.body = `<p id="error">${String(out.error)}: ${String(out.error_description ?? '')}</p>`;
      },
    };
    const provider = new Provider(issuer, config);
    // RFC 8628 interval, and slow_down on demand, around the package's own device endpoints.
    provider.use(async (ctx, next) => {
      const isDevicePoll = ctx.path === '/token' && ctx.method === 'POST';
      if (isDevicePoll && p.slowDowns > 0) {
        // The body is read only to tell the device grant from others; consumed here, so decide before it is parsed.
        p.slowDowns -= 1;
        p.devicePolls.push({ at: Date.now(), answered: 'slow_down' });
        ctx.status = 400;
        ctx.body = { error: 'slow_down', error_description: 'poll less often' };
        return;
      }
      await next();
      if (ctx.path === '/device/auth' && ctx.status === 200 && o.deviceInterval !== undefined && ctx.body && typeof ctx.body === 'object') {
        (ctx.body as Record<string, unknown>).interval = o.deviceInterval;
      }
      if (isDevicePoll) p.devicePolls.push({ at: Date.now(), answered: ctx.status === 200 ? 'tokens' : String((ctx.body as { error?: string } | undefined)?.error ?? ctx.status) });
    });
    const cb = provider.callback();
    handler = (req, res) => void cb(req, res);
    return p;
  }

  /** A JWT signed with the provider's key (an ID token as the test wants it). */
  async sign(claims: JWTPayload, opts: { expiresIn?: string | number } = {}): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ iat: now, ...claims })
      .setProtectedHeader({ alg: 'RS256', kid: this.kid, typ: 'JWT' })
      .setExpirationTime(opts.expiresIn ?? now + 300)
      .sign(this.key);
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Cookies by name, per origin: enough for the provider's sign-in pages. */
class Jar {
  private readonly cookies = new Map<string, string>();
  take(res: Response): void {
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair!.indexOf('=');
      const name = pair!.slice(0, i).trim();
      const value = pair!.slice(i + 1).trim();
      if (/max-age=0|expires=thu, 01 jan 1970/i.test(c) || value === '') this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }
  header(): string {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

/** The first form of a page: its action and hidden fields. */
function formOf(html: string, base: string): { action: string; fields: Record<string, string>; names: string[] } | null {
  const m = /<form[^>]*action="([^"]*)"[^>]*>([\s\S]*?)<\/form>/i.exec(html);
  if (!m) return null;
  const fields: Record<string, string> = {};
  const names: string[] = [];
  for (const input of m[2]!.matchAll(/<input([^>]*)>/gi)) {
    const name = /name="([^"]*)"/.exec(input[1]!)?.[1];
    if (!name) continue;
    names.push(name);
    const value = /value="([^"]*)"/.exec(input[1]!)?.[1];
    if (/type="hidden"/.test(input[1]!) && value !== undefined) fields[name] = value.replace(/&amp;/g, '&').replace(/&quot;/g, '"');
  }
  return { action: new URL(m[1]!.replace(/&amp;/g, '&'), base).href, fields, names };
}

/**
 * Plays the user at the provider's device verification page over HTTP: opens `url` (the complete
 * verification URI, or the plain one with `userCode`), confirms the code, signs in as `login`, and
 * consents or aborts. Bounded: at most 20 requests.
 * @returns the last page's text (the provider's success or failure page).
 */
export async function completeDeviceSignIn(url: string, login: string, opts: { userCode?: string; abort?: boolean } = {}): Promise<string> {
  const jar = new Jar();
  let next: { url: string; method: 'GET' | 'POST'; body?: URLSearchParams } = { url, method: 'GET' };
  let aborted = false;
  for (let step = 0; step < 20; step++) {
    const res = await fetch(next.url, {
      method: next.method,
      redirect: 'manual',
      headers: { cookie: jar.header(), ...(next.body ? { 'content-type': 'application/x-www-form-urlencoded' } : {}) },
      ...(next.body ? { body: next.body.toString() } : {}),
    });
    jar.take(res);
    if (res.status >= 300 && res.status < 400) {
      next = { url: new URL(res.headers.get('location')!, next.url).href, method: 'GET' };
      continue;
    }
    const html = await res.text();
    // After an abort the provider shows its code page again, saying the sign-in was interrupted.
    if (aborted || (/successful|denied|error/i.test(html) && !/<form/i.test(html))) return html;
    const form = formOf(html, next.url);
    if (!form) return html;
    const body = new URLSearchParams(form.fields);
    if (form.names.includes('user_code') && !body.has('user_code')) body.set('user_code', opts.userCode ?? '');
    if (form.names.includes('login')) {
      if (opts.abort) {
        // The sign-in page's "cancel": the provider ends the interaction with access_denied.
        next = { url: `${form.action}/abort`, method: 'GET' };
        aborted = true;
        continue;
      }
      body.set('login', login);
      body.set('password', 'any password: the development sign-in page takes any');
    }
    next = { url: form.action, method: 'POST', body };
  }
  throw new Error(`the device sign-in at ${url} did not finish in 20 requests`);
}
