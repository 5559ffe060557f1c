/**
 * `takt login|logout|whoami` (issue #16, part 1): a user exchanges a password for a personal token, kept
 * 0600 in the user's config dir (client.ts loginFile) and used when no --token or TAKT_TOKEN is given.
 * Passwords are read from the terminal (echo off) or with --password-stdin from the first line of
 * standard input, never from the command line.
 */
import type { Command } from 'commander';
import { ApiClient } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import { askHidden, firstLine } from './credentials.js';
import { loginFile, resolveCa, resolveEndpoint, saveLoginToken, type GlobalOptions } from './client.js';
import { examples } from './help.js';
import { print } from './output.js';
import type { TokenView } from './tokens.js';

/** A password: from the first line of stdin with --password-stdin, else asked on the terminal (echo off). */
export async function readPassword(fromStdin: boolean | undefined, prompt: string): Promise<string> {
  if (fromStdin) return firstLine(process.stdin);
  if (!process.stdin.isTTY) throw new TaktError('bad_request', 'no terminal to ask the password on: pass it with --password-stdin');
  return askHidden(prompt);
}


const enc = encodeURIComponent;

export function loginCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
  program
    .command('login [user]')
    .description('log in as a user: exchanges the password for a personal token kept 0600 in your config dir, used when no --token or TAKT_TOKEN is given')
    .addHelpText('after', examples('takt login alice', 'pass show takt/alice | takt login alice --password-stdin', 'takt login alice --ttl 8h'))
    .option('--password-stdin', 'read the password from the first line of standard input (else it is asked on the terminal)')
    .option('--ttl <duration>', "the token's lifetime: 90m, 12h, 30d (default 12h)")
    .action(async (user: string | undefined, o: { passwordStdin?: boolean; ttl?: string }) => {
      const endpoint = resolveEndpoint(g().endpoint);
      const name = user ?? process.env.USER;
      if (!name) throw new TaktError('bad_request', 'which user? takt login NAME');
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
