/**
 * Single sign-on with OpenID Connect (issue #16): the endpoint is the relying party of one provider.
 *
 * - The web UI signs in with the authorisation code flow and PKCE (RFC 7636, S256), with `state` and
 *   `nonce`; the browser comes back to `/api/v1/login/sso/callback`, which hands the UI a takt token.
 * - The CLI signs in with the device authorisation grant (RFC 8628) through the endpoint: the endpoint
 *   asks the provider for a device and user code, and exchanges the device code, one request per poll of
 *   the CLI, for the provider's tokens and then a takt `tku.` token. The CLI never needs the provider's
 *   client credentials, so the endpoint may be a confidential client.
 *
 * The endpoint is a confidential client when `--oidc-client-secret-file` is given (client_secret_basic),
 * else a public one (`none`; PKCE protects the code). Either way every ID token it gets is checked here
 * (verifyIdToken) before a user is made or a token issued: signature against the provider's JWKS, issuer,
 * audience (and `azp` with several audiences), expiry, issue time and, for the browser flow, the nonce.
 *
 * The protocol is `openid-client` v6 (discovery, PKCE, device grant, token requests, userinfo); the ID
 * token is verified with `jose` (its dependency, same author) — docs/decisions.md says why.
 */
import { readFileSync } from 'node:fs';
import * as client from 'openid-client';
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import { TaktError } from '../model/errors.js';
import { isLoopbackHost } from '../model/host.js';

/** What `takt serve --oidc-*` configures. */
export interface OidcSettings {
  /** The provider's issuer URL (https, or http on loopback only); its discovery document is at `/.well-known/openid-configuration` under it. */
  issuer: string;
  /** This endpoint's client id at the provider; ID tokens must be for it (`aud`). */
  clientId: string;
  /** The client secret (a confidential client); absent: a public client (PKCE only). */
  clientSecret?: string;
  /** The claim that lists a user's groups at the provider (default `groups`): strings, or one string. */
  groupsClaim: string;
}

/** Who signed in, as takt needs it: the identity (issuer, subject), a takt user name and the provider's groups. */
export interface SsoIdentity {
  issuer: string;
  subject: string;
  name: string;
  groups: string[];
}

/** What the CLI shows the user (RFC 8628 §3.2), and the device code it polls with. */
export interface DeviceStart {
  deviceCode: string;
  userCode: string;
  verificationUri: string;
  verificationUriComplete?: string;
  /** Seconds the codes are valid. */
  expiresIn: number;
  /** Seconds to wait between polls (RFC 8628 §3.5; 5 when the provider gives none). */
  interval: number;
}

/** The answer to one poll: still waiting (`slow_down`: add 5 s to the interval), or who signed in. */
export type DevicePoll = { status: 'pending' | 'slow_down' } | { status: 'done'; identity: SsoIdentity };

/** The path the provider sends the browser back to (register `<endpoint URL>` + this as a redirect URI). */
export const CALLBACK_PATH = '/api/v1/login/sso/callback';
/** The cookie that ties a browser's callback to the browser that started it (login CSRF). */
export const STATE_COOKIE = 'takt_sso';
/** How long a started browser sign-in may take (ms). */
const PENDING_TTL_MS = 10 * 60_000;
/** Browser sign-ins started and not finished, at most (older ones are dropped first). */
const PENDING_MAX = 10_000;
/** Device sign-ins started and not finished, at most (older ones are forgotten first: their polls then go to the provider unpaced). */
const DEVICES_MAX = 10_000;
/** RFC 8628 §3.5: the interval grows by this much (s) on each slow_down. */
export const SLOW_DOWN_S = 5;
/** A poll this much (ms) early is still on time: the client's timer and the network are not exact. */
const POLL_SLACK_MS = 250;
/** Leeway for clock differences with the provider when checking exp/iat/nbf (seconds). */
const CLOCK_TOLERANCE_S = 30;
/** Seconds each request to the provider may take. */
const PROVIDER_TIMEOUT_S = 10;
const EXPIRED_DEVICE_CODE = 'single sign-on failed: the code expired before the sign-in was finished; run takt login --sso again';
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const SCOPE = 'openid profile email';

/**
 * Reads and checks the `--oidc-*` options; undefined when no issuer is given.
 * @throws TaktError bad_request naming the flag: an issuer that is not an https URL (http only on
 *   loopback), a missing client id, an unreadable or empty secret file, a malformed claim name.
 */
export function oidcSettings(o: { oidcIssuer?: string; oidcClientId?: string; oidcClientSecretFile?: string; oidcGroupsClaim?: string }): OidcSettings | undefined {
  if (o.oidcIssuer === undefined) {
    for (const [flag, v] of [['--oidc-client-id', o.oidcClientId], ['--oidc-client-secret-file', o.oidcClientSecretFile]] as const) {
      if (v !== undefined) throw new TaktError('bad_request', `${flag} needs --oidc-issuer URL (the OpenID Connect provider to sign in with)`);
    }
    return undefined;
  }
  let u: URL;
  try {
    u = new URL(o.oidcIssuer);
  } catch {
    throw new TaktError('bad_request', `--oidc-issuer '${o.oidcIssuer}' is not a URL (e.g. https://login.example.org/realms/ops)`);
  }
  if (u.protocol !== 'https:' && !(u.protocol === 'http:' && isLoopbackHost(u.hostname))) {
    throw new TaktError('bad_request', `--oidc-issuer '${o.oidcIssuer}' must be an https URL (plain http only on loopback): tokens and codes travel over it`);
  }
  if (u.search || u.hash || u.username) throw new TaktError('bad_request', `--oidc-issuer '${o.oidcIssuer}' must have no query, fragment or user (it is the provider's issuer identifier)`);
  if (!o.oidcClientId) throw new TaktError('bad_request', '--oidc-issuer needs --oidc-client-id ID (this endpoint\'s client id at the provider)');
  if (o.oidcClientId.length > 255 || !/^[\x21-\x7e]+$/.test(o.oidcClientId)) throw new TaktError('bad_request', '--oidc-client-id must be 1 to 255 printable ASCII characters without spaces');
  const groupsClaim = o.oidcGroupsClaim ?? 'groups';
  if (!/^[A-Za-z0-9_:.\-/]{1,128}$/.test(groupsClaim)) throw new TaktError('bad_request', `--oidc-groups-claim '${groupsClaim}' is not a claim name (letters, digits, _ : . - /)`);
  const s: OidcSettings = { issuer: o.oidcIssuer, clientId: o.oidcClientId, groupsClaim };
  if (o.oidcClientSecretFile !== undefined) {
    let secret: string;
    try {
      secret = readFileSync(o.oidcClientSecretFile, 'utf8').trim();
    } catch (err) {
      throw new TaktError('bad_request', `--oidc-client-secret-file ${o.oidcClientSecretFile}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    if (!secret) throw new TaktError('bad_request', `--oidc-client-secret-file ${o.oidcClientSecretFile} is empty`);
    s.clientSecret = secret;
  }
  return s;
}

/** A provider's error or an unreachable provider, in words (never a token or code). */
function providerProblem(err: unknown): string {
  if (err instanceof client.ResponseBodyError) return `${err.error}${err.error_description ? `: ${err.error_description}` : ''}`;
  if (err instanceof client.AuthorizationResponseError) return `${err.error}${err.error_description ? `: ${err.error_description}` : ''}`;
  const e = err as Error & { cause?: { code?: string; message?: string } };
  return e.cause?.code ?? e.cause?.message ?? e.message;
}

/**
 * The device codes this endpoint started (RFC 8628), so their polls are paced here before any reaches the
 * provider: a poll sooner than the code's interval after the previous one is answered `slow_down` (§3.5)
 * and the interval grows by 5 s, as the client's does; a code past its `expires_in` is refused as expired.
 * A code it does not know (started on another replica, forgotten, or guessed) is not paced here: its poll
 * goes to the provider, and a refusal counts against the login limiter (routes/users.ts). Bounded: at most
 * `max` codes, expired ones and then the oldest dropped first. Times from `now` (tests inject a clock).
 */
export class DevicePacer {
  private readonly codes = new Map<string, { intervalS: number; last: number | undefined; until: number }>();

  constructor(
    private readonly now: () => number = Date.now,
    private readonly max = DEVICES_MAX,
  ) {}

  /** A code the provider just issued, polled every `intervalS` seconds at most, valid for `expiresInS`. */
  started(deviceCode: string, intervalS: number, expiresInS: number): void {
    const now = this.now();
    // In the order started: expired ones first out, then the oldest beyond the bound.
    for (const [k, v] of this.codes) {
      if (v.until > now && this.codes.size < this.max) break;
      this.codes.delete(k);
    }
    this.codes.set(deviceCode, { intervalS, last: undefined, until: now + expiresInS * 1000 });
  }

  /**
   * One poll arrived: `unknown` (not started here: ask the provider), `expired`, `slow_down` (too soon:
   * answer without asking the provider) or `ask` (on time). The first poll is never too soon.
   */
  poll(deviceCode: string): 'unknown' | 'expired' | 'slow_down' | 'ask' {
    const c = this.codes.get(deviceCode);
    if (!c) return 'unknown';
    const now = this.now();
    if (c.until <= now) {
      this.codes.delete(deviceCode);
      return 'expired';
    }
    const early = c.last !== undefined && now - c.last < c.intervalS * 1000 - POLL_SLACK_MS;
    c.last = now;
    if (!early) return 'ask';
    c.intervalS += SLOW_DOWN_S;
    return 'slow_down';
  }

  /** The provider answered `slow_down`: the client now waits 5 s more, and so does the pacing. */
  slowedDown(deviceCode: string): void {
    const c = this.codes.get(deviceCode);
    if (c) c.intervalS += SLOW_DOWN_S;
  }

  /** The sign-in ended (tokens issued, refused, expired): forget the code. */
  finished(deviceCode: string): void {
    this.codes.delete(deviceCode);
  }

  /** Codes held (for tests). */
  get size(): number {
    return this.codes.size;
  }
}

/** The relying party of one OpenID Connect provider; made by `Sso.discover` when `takt serve` starts. */
export class Sso {
  private readonly pending = new Map<string, { verifier: string; nonce: string; redirectUri: string; until: number }>();
  private readonly devices: DevicePacer;
  private readonly jwks: ReturnType<typeof createRemoteJWKSet>;
  private readonly algorithms: string[];
  /** The scopes asked for: openid profile email, and the groups claim's name when the provider offers it as a scope. */
  private readonly scope: string;

  private constructor(
    private readonly config: client.Configuration,
    readonly settings: OidcSettings,
    private readonly now: () => number,
  ) {
    this.devices = new DevicePacer(now);
    const meta = config.serverMetadata();
    this.jwks = createRemoteJWKSet(new URL(meta.jwks_uri!), { timeoutDuration: PROVIDER_TIMEOUT_S * 1000 });
    // Asymmetric algorithms only: an HS256 token would be checked against the client secret, and `none` is no signature.
    this.algorithms = (meta.id_token_signing_alg_values_supported ?? ['RS256']).filter((a) => a !== 'none' && !a.startsWith('HS'));
    // Providers that release groups only for a scope of that name (Okta's `groups`, oidc-provider's claims
    // config) announce it; others release the claim with profile, or by their client settings.
    this.scope = meta.scopes_supported?.includes(settings.groupsClaim) ? `${SCOPE} ${settings.groupsClaim}` : SCOPE;
  }

  /**
   * Fetches the provider's discovery document and checks it can serve takt: the issuer it names is the
   * one configured, it has the authorisation, token and JWKS endpoints, and it supports PKCE with S256 (when
   * it says which methods it supports).
   * @throws TaktError bad_request saying what is wrong (unreachable, not a discovery document, issuer mismatch, a missing endpoint).
   */
  static async discover(settings: OidcSettings, opts: { now?: () => number } = {}): Promise<Sso> {
    const url = new URL(settings.issuer);
    const auth = settings.clientSecret ? client.ClientSecretBasic(settings.clientSecret) : client.None();
    let config: client.Configuration;
    try {
      config = await client.discovery(url, settings.clientId, undefined, auth, {
        timeout: PROVIDER_TIMEOUT_S,
        // http only for a loopback issuer (oidcSettings refused any other).
        ...(url.protocol === 'http:' ? { execute: [client.allowInsecureRequests] } : {}),
      });
    } catch (err) {
      throw new TaktError('bad_request', `--oidc-issuer ${settings.issuer}: its discovery document (${settings.issuer.replace(/\/$/, '')}/.well-known/openid-configuration) could not be used: ${providerProblem(err)}`);
    }
    const meta = config.serverMetadata();
    const missing = (['authorization_endpoint', 'token_endpoint', 'jwks_uri'] as const).filter((k) => !meta[k]);
    if (missing.length) throw new TaktError('bad_request', `--oidc-issuer ${settings.issuer}: the provider's discovery document has no ${missing.join(', ')}; takt needs them for sign-in`);
    const pkce = meta.code_challenge_methods_supported;
    if (pkce && !pkce.includes('S256')) throw new TaktError('bad_request', `--oidc-issuer ${settings.issuer}: the provider does not support PKCE with S256 (it lists ${pkce.join(', ') || 'none'}); takt's browser sign-in needs it`);
    config.timeout = PROVIDER_TIMEOUT_S;
    return new Sso(config, settings, opts.now ?? Date.now);
  }

  /** What the UI and CLI may know: the issuer and whether the device flow (CLI) is available. */
  info(): { enabled: true; issuer: string; device: boolean } {
    return { enabled: true, issuer: this.settings.issuer, device: !!this.config.serverMetadata().device_authorization_endpoint };
  }

  /**
   * Starts a browser sign-in: a fresh PKCE verifier, state and nonce, kept here until the callback (10 min).
   * @param redirectUri where the provider sends the browser back (`origin` + CALLBACK_PATH; must be registered).
   * @returns the provider's authorisation URL and the state (for the browser's cookie).
   */
  async startBrowser(redirectUri: string): Promise<{ url: string; state: string }> {
    const verifier = client.randomPKCECodeVerifier();
    const state = client.randomState();
    const nonce = client.randomNonce();
    const now = this.now();
    // The map is in the order sign-ins started: drop from the front what expired, and the oldest beyond the bound.
    for (const [k, v] of this.pending) {
      if (v.until > now && this.pending.size < PENDING_MAX) break;
      this.pending.delete(k);
    }
    this.pending.set(state, { verifier, nonce, redirectUri, until: now + PENDING_TTL_MS });
    const url = client.buildAuthorizationUrl(this.config, {
      redirect_uri: redirectUri,
      scope: this.scope,
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      state,
      nonce,
    });
    return { url: url.href, state };
  }

  /**
   * Finishes a browser sign-in at the callback: the state must be one this endpoint started and the one
   * the browser's cookie carries; the code is exchanged with the PKCE verifier, and the ID token checked
   * (nonce included). A state is used once.
   * @param callbackUrl the full URL the browser came back to.
   * @throws TaktError unauthorized saying what failed (provider's error, unknown or mismatched state, a refused ID token).
   */
  async finishBrowser(callbackUrl: URL, cookieState: string | undefined): Promise<SsoIdentity> {
    const err = callbackUrl.searchParams.get('error');
    if (err) throw new TaktError('unauthorized', `single sign-on refused by the provider: ${err}${callbackUrl.searchParams.get('error_description') ? `: ${callbackUrl.searchParams.get('error_description')}` : ''}`);
    const state = callbackUrl.searchParams.get('state') ?? '';
    const p = this.pending.get(state);
    if (!state || !p || p.until <= this.now()) throw new TaktError('unauthorized', 'single sign-on failed: this sign-in is unknown or older than 10 minutes (or this endpoint restarted); start again from the login page');
    if (cookieState !== state) throw new TaktError('unauthorized', 'single sign-on failed: the sign-in came back to a browser that did not start it (its cookie is missing or different); start again from the login page');
    this.pending.delete(state);
    // The redirect URI must be the one sent with the authorisation request (the provider compares them).
    const current = new URL(p.redirectUri);
    current.search = callbackUrl.search;
    let tokens: Awaited<ReturnType<typeof client.authorizationCodeGrant>>;
    try {
      tokens = await client.authorizationCodeGrant(this.config, current, { pkceCodeVerifier: p.verifier, expectedState: state, expectedNonce: p.nonce, idTokenExpected: true });
    } catch (e) {
      throw this.grantError(e);
    }
    return this.identityOf(tokens, p.nonce);
  }

  /**
   * Starts a device sign-in (RFC 8628 §3.1).
   * @throws TaktError conflict when the provider has no device authorisation endpoint; unavailable when it cannot be reached or refuses.
   */
  async startDevice(): Promise<DeviceStart> {
    if (!this.config.serverMetadata().device_authorization_endpoint) {
      throw new TaktError('conflict', `the identity provider ${this.settings.issuer} offers no device authorisation (RFC 8628), so takt login --sso cannot work; enable the device grant for client ${this.settings.clientId} there, or sign in in the web UI`);
    }
    let r: client.DeviceAuthorizationResponse;
    try {
      r = await client.initiateDeviceAuthorization(this.config, { scope: this.scope });
    } catch (e) {
      throw new TaktError('unavailable', `the identity provider ${this.settings.issuer} did not start a device sign-in: ${providerProblem(e)}`);
    }
    this.devices.started(r.device_code, r.interval ?? 5, r.expires_in);
    return {
      deviceCode: r.device_code,
      userCode: r.user_code,
      verificationUri: r.verification_uri,
      ...(r.verification_uri_complete ? { verificationUriComplete: r.verification_uri_complete } : {}),
      expiresIn: r.expires_in,
      interval: r.interval ?? 5,
    };
  }

  /**
   * One poll of a device sign-in (RFC 8628 §3.4): asks the provider's token endpoint once.
   * @returns pending or slow_down while the user has not finished, else who signed in.
   * @throws TaktError unauthorized when the user refused, the code expired or the ID token is refused.
   */
  async pollDevice(deviceCode: string): Promise<DevicePoll> {
    // Paced here first (RFC 8628 §3.5): a client polling too fast is told slow_down without a provider request.
    const pace = this.devices.poll(deviceCode);
    if (pace === 'slow_down') return { status: 'slow_down' };
    if (pace === 'expired') throw new TaktError('unauthorized', EXPIRED_DEVICE_CODE);
    let tokens: Awaited<ReturnType<typeof client.genericGrantRequest>>;
    try {
      tokens = await client.genericGrantRequest(this.config, DEVICE_GRANT, { device_code: deviceCode });
    } catch (e) {
      if (e instanceof client.ResponseBodyError && e.error === 'authorization_pending') return { status: 'pending' };
      if (e instanceof client.ResponseBodyError && e.error === 'slow_down') {
        this.devices.slowedDown(deviceCode);
        return { status: 'slow_down' };
      }
      // The provider's final word on this code (denied, expired, unknown); an unreachable provider is not.
      if (e instanceof client.ResponseBodyError) this.devices.finished(deviceCode);
      if (e instanceof client.ResponseBodyError && e.error === 'access_denied') throw new TaktError('unauthorized', 'single sign-on refused: the sign-in was denied at the identity provider');
      if (e instanceof client.ResponseBodyError && e.error === 'expired_token') throw new TaktError('unauthorized', EXPIRED_DEVICE_CODE);
      throw this.grantError(e);
    }
    this.devices.finished(deviceCode);
    return { status: 'done', identity: await this.identityOf(tokens) };
  }

  private grantError(e: unknown): TaktError {
    if (e instanceof TaktError) return e;
    if (e instanceof client.ResponseBodyError || e instanceof client.AuthorizationResponseError) return new TaktError('unauthorized', `single sign-on refused by the identity provider: ${providerProblem(e)}`);
    if (e instanceof client.ClientError) return new TaktError('unauthorized', `single sign-on failed: the identity provider's answer was refused: ${e.message}`);
    return new TaktError('unavailable', `single sign-on failed: the identity provider ${this.settings.issuer} could not be reached: ${providerProblem(e)}`);
  }

  /**
   * Verifies an ID token as this endpoint accepts it (OpenID Connect Core 1.0 §3.1.3.7): a JWS signed with
   * an asymmetric algorithm the provider announces, by a key in its JWKS; `iss` is the configured issuer;
   * `aud` contains the client id (and `azp` is it when there are several audiences); `exp` in the
   * future and `iat` present (30 s leeway); `nonce` equal to `expectedNonce` when one was sent.
   * @returns the token's claims.
   * @throws TaktError unauthorized naming the check that failed (never the token).
   */
  async verifyIdToken(idToken: string, expectedNonce?: string): Promise<JWTPayload> {
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(idToken, this.jwks, {
        issuer: this.settings.issuer,
        audience: this.settings.clientId,
        algorithms: this.algorithms,
        clockTolerance: CLOCK_TOLERANCE_S,
        currentDate: new Date(this.now()),
        requiredClaims: ['sub', 'iat', 'exp'],
      }));
    } catch (e) {
      throw new TaktError('unauthorized', `single sign-on refused: the ID token ${idTokenProblem(e, this.settings.issuer)}`);
    }
    const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
    if (aud.length > 1 && payload.azp !== this.settings.clientId) throw new TaktError('unauthorized', `single sign-on refused: the ID token has several audiences and its azp is not this endpoint's client id ${this.settings.clientId}`);
    if (expectedNonce !== undefined && payload.nonce !== expectedNonce) throw new TaktError('unauthorized', 'single sign-on refused: the ID token\'s nonce is not the one this sign-in sent (a replayed or foreign token)');
    return payload;
  }

  /**
   * The identity of a token response: the ID token verified (verifyIdToken), then the user name
   * (`preferred_username`, else the part of `email` before '@', lower-cased) and the groups claim, from the
   * ID token or, when it has not got them, from the userinfo endpoint (for the same subject).
   */
  private async identityOf(tokens: client.TokenEndpointResponse, nonce?: string): Promise<SsoIdentity> {
    if (!tokens.id_token) throw new TaktError('unauthorized', 'single sign-on failed: the identity provider answered without an ID token (is the openid scope allowed for this client?)');
    const claims: Record<string, unknown> = { ...(await this.verifyIdToken(tokens.id_token, nonce)) };
    const subject = String(claims.sub);
    const lacking = (claims.preferred_username === undefined && claims.email === undefined) || claims[this.settings.groupsClaim] === undefined;
    if (lacking && tokens.access_token && this.config.serverMetadata().userinfo_endpoint) {
      try {
        const info = await client.fetchUserInfo(this.config, tokens.access_token, subject);
        for (const [k, v] of Object.entries(info)) if (claims[k] === undefined) claims[k] = v;
      } catch (e) {
        throw new TaktError('unavailable', `single sign-on failed: the identity provider's userinfo endpoint did not answer for this user: ${providerProblem(e)}`);
      }
    }
    const raw = typeof claims.preferred_username === 'string' ? claims.preferred_username : typeof claims.email === 'string' ? claims.email.split('@')[0]! : undefined;
    if (!raw) throw new TaktError('forbidden', 'single sign-on refused: the identity provider gave neither preferred_username nor email for this user, so takt cannot name them (add the profile or email scope to the client)');
    const g = claims[this.settings.groupsClaim];
    const groups = Array.isArray(g) ? g.filter((x): x is string => typeof x === 'string') : typeof g === 'string' ? [g] : [];
    return { issuer: this.settings.issuer, subject, name: raw.toLowerCase(), groups };
  }
}

/** Why jose refused an ID token, in words that name the claim (never the token). */
function idTokenProblem(e: unknown, issuer: string): string {
  if (e instanceof joseErrors.JWTExpired) return 'has expired (exp is in the past)';
  if (e instanceof joseErrors.JWTClaimValidationFailed) {
    if (e.claim === 'iss') return `was not issued by ${issuer} (iss mismatch)`;
    if (e.claim === 'aud') return 'is not for this endpoint (aud does not contain its client id)';
    return `has a bad ${e.claim} claim (${e.reason})`;
  }
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return 'signature does not verify against the provider\'s keys';
  if (e instanceof joseErrors.JWKSNoMatchingKey) return 'is signed with a key the provider does not publish (no matching key in its JWKS)';
  if (e instanceof joseErrors.JOSEAlgNotAllowed) return 'is signed with an algorithm this endpoint does not accept';
  if (e instanceof joseErrors.JWKSTimeout) return 'could not be checked: the provider\'s JWKS did not answer in time';
  if (e instanceof joseErrors.JOSEError) return `is not valid (${e.code})`;
  return `could not be checked (${(e as Error).message})`;
}

/**
 * The origin the browser used (scheme from the connection, host from the validated Host header), for the
 * redirect URI. The Host header was checked against the endpoint's names before routing (guard.ts).
 */
export function requestOrigin(req: { headers: { host?: string }; protocol: string }): string {
  return `${req.protocol === 'https' ? 'https' : 'http'}://${req.headers.host ?? 'localhost'}`;
}
