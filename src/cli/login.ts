/**
 * `takt login|logout|whoami` (issue #16): a user exchanges a password — or, with `--sso`, a sign-in at the
 * endpoint's OpenID Connect provider (device flow, RFC 8628) — for a personal token, kept
 * 0600 in the user's config dir (client.ts loginFile) and used when no --token or TAKT_TOKEN is given.
 * Passwords are read from the terminal (echo off) or with --password-stdin from the first line of
 * standard input, never from the command line.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Command } from 'commander';
import { ApiClient } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import { askHidden, firstLine } from './credentials.js';
import { loginFile, resolveCa, resolveEndpoint, saveLoginToken, type GlobalOptions } from './client.js';
import { examples } from './help.js';
import { print } from './output.js';
import type { TokenView } from './tokens.js';
import { UsageError } from './usage.js';

/** A password: from the first line of stdin with --password-stdin, else asked on the terminal (echo off). */
export async function readPassword(fromStdin: boolean | undefined, prompt: string): Promise<string> {
  if (fromStdin) return firstLine(process.stdin);
  if (!process.stdin.isTTY) throw new TaktError('bad_request', 'no terminal to ask the password on: pass it with --password-stdin');
  return askHidden(prompt);
}


const enc = encodeURIComponent;

/** RFC 8628 §3.5: on slow_down the interval grows by 5 s, for this and every later poll. */
const SLOW_DOWN_S = 5;
/** Longest a device sign-in is waited for, whatever the provider says (s). */
const MAX_WAIT_S = 30 * 60;

/**
 * The device flow (RFC 8628) through the endpoint: shows the verification URL and user code on stderr,
 * then polls every `interval` seconds (5 more after each slow_down) until the user has signed in, the code
 * expires (`expires_in`, at most 30 min) or the provider refuses.
 * @throws TaktError unauthorized when refused or expired, with what to do.
 */
async function deviceLogin(anon: ApiClient, ttl: string | undefined): Promise<{ token: string; user: string; groups: string[]; tokenInfo: TokenView }> {
  const start = await anon.post<{ deviceCode: string; userCode: string; verificationUri: string; verificationUriComplete?: string; expiresIn: number; interval: number }>('/login/sso/device', {});
  const link = start.verificationUriComplete ?? start.verificationUri;
  process.stderr.write(`To sign in, open ${link}
${start.verificationUriComplete ? 'and check that it shows' : 'and enter'} the code: ${start.userCode}
waiting for the sign-in (up to ${Math.round(Math.min(start.expiresIn, MAX_WAIT_S) / 60)} min)…
`);
  let interval = Math.max(1, start.interval);
  const deadline = Date.now() + Math.min(start.expiresIn, MAX_WAIT_S) * 1000;
  // Bounded twice: by the code's lifetime and by a number of polls (a clock jump cannot make it endless).
  for (let polls = 0; polls < MAX_WAIT_S && Date.now() < deadline; polls++) {
    await sleep(interval * 1000);
    const r = await anon.post<{ status: 'pending' | 'slow_down' } | { status: 'done'; token: string; user: string; groups: string[]; tokenInfo: TokenView }>('/login/sso/device/token', { deviceCode: start.deviceCode, ...(ttl ? { ttl } : {}) });
    if (r.status === 'done') return r;
    if (r.status === 'slow_down') interval += SLOW_DOWN_S;
  }
  throw new TaktError('unauthorized', `the sign-in was not finished within ${Math.round(Math.min(start.expiresIn, MAX_WAIT_S) / 60)} min; run takt login --sso again`);
}

export function loginCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
  program
    .command('login [user]')
    .description('log in as a user: exchanges the password (or, with --sso, a sign-in at the identity provider) for a personal token kept 0600 in your config dir, used when no --token or TAKT_TOKEN is given')
    .addHelpText('after', examples('takt login alice', 'pass show takt/alice | takt login alice --password-stdin', 'takt login alice --ttl 8h', 'takt login --sso            # single sign-on: open the URL shown, enter the code'))
    .option('--password-stdin', 'read the password from the first line of standard input (else it is asked on the terminal)')
    .option('--sso', 'single sign-on with the endpoint\'s OpenID Connect provider (device flow: sign in on any browser with the code shown)')
    .option('--ttl <duration>', "the token's lifetime: 90m, 12h, 30d (default 12h)")
    .action(async (user: string | undefined, o: { passwordStdin?: boolean; ttl?: string; sso?: boolean }) => {
      const endpoint = resolveEndpoint(g().endpoint);
      if (o.sso) {
        if (user !== undefined || o.passwordStdin) throw new UsageError('takt login --sso takes no user name or password: the identity provider says who you are');
        const ca = endpoint.startsWith('https:') ? resolveCa() : undefined;
        const anon = new ApiClient({ endpoint, ...(ca ? { ca } : {}) });
        try {
          const r = await deviceLogin(anon, o.ttl);
          saveLoginToken(endpoint, { token: r.token, user: r.user, expiresAt: r.tokenInfo.expiresAt });
          print(g().output, { user: r.user, groups: r.groups, endpoint, token: r.tokenInfo, file: loginFile() }, () => `logged in to ${endpoint} as ${r.user}${r.groups.length ? ` (groups ${r.groups.join(', ')})` : ''} until ${r.tokenInfo.expiresAt} (token kept in ${loginFile()})`);
        } finally {
          anon.close();
        }
        return;
      }
      const name = user ?? process.env.USER;
      if (!name) throw new UsageError('which user? takt login NAME');
      const password = await readPassword(o.passwordStdin, `password for ${name} at ${endpoint}: `);
      const ca = endpoint.startsWith('https:') ? resolveCa() : undefined;
      const anon = new ApiClient({ endpoint, ...(ca ? { ca } : {}) });
      try {
        const r = await anon.post<{ token: string; tokenInfo: TokenView }>('/login', { user: name, password, ...(o.ttl ? { ttl: o.ttl } : {}) });
        saveLoginToken(endpoint, { token: r.token, user: name, expiresAt: r.tokenInfo.expiresAt });
        print(g().output, { user: name, endpoint, token: r.tokenInfo, file: loginFile() }, () => `logged in to ${endpoint} as ${name} until ${r.tokenInfo.expiresAt} (token kept in ${loginFile()})`);
      } finally {
        anon.close();
      }
    });
  program
    .command('logout')
    .description('revoke the token takt login kept for this endpoint and forget it')
    .addHelpText('after', examples('takt logout'))
    .action(async () => {
      const endpoint = resolveEndpoint(g().endpoint);
      const { loginTokens } = await import('./client.js');
      const kept = loginTokens()[endpoint];
      if (!kept) {
        print(g().output, { endpoint, loggedIn: false }, () => `not logged in to ${endpoint}`);
        return;
      }
      const id = /^tku\.(t-[0-9a-f]+)\./.exec(kept.token)?.[1];
      // Revoked first, then forgotten; a token the endpoint no longer accepts is forgotten anyway.
      if (id) await api().delete(`/tokens/${enc(id)}`).catch(() => undefined);
      saveLoginToken(endpoint, null);
      print(g().output, { endpoint, loggedIn: false, user: kept.user }, () => `logged out of ${endpoint} (${kept.user})`);
    });
  program
    .command('whoami')
    .description('who your token is, its roles and what they permit')
    .addHelpText('after', examples('takt whoami', 'takt whoami -o json'))
    .action(async () => {
      const r = await api().get<{ name: string; kind: string; roles: Array<string | { role: string; machines?: unknown; pipelines?: string[] }>; permissions: string[] }>('/whoami');
      print(g().output, r, () => `${r.kind === 'admin' ? 'admin (the bootstrap admin token)' : `user ${r.name}`}\nroles: ${r.roles.map((x) => (typeof x === 'string' ? x : x.role)).join(', ') || '(none)'}\npermissions: ${r.permissions.join(' ')}`);
    });
}
