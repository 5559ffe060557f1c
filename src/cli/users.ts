/**
 * `takt login|logout|whoami`, `takt users …`, `takt groups …`, `takt roles …`, `takt tokens …` (issue #16,
 * part 1). Passwords are read from the terminal (echo off) or with --password-stdin from the first line
 * of standard input, never from the command line. `takt login` keeps its token 0600 in the user's config
 * dir (client.ts loginFile), used when no --token or TAKT_TOKEN is given.
 */
import type { Command } from 'commander';
import { ApiClient } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import { pc } from './color.js';
import { askHidden, firstLine } from './credentials.js';
import { loginFile, resolveCa, resolveEndpoint, saveLoginToken, type GlobalOptions } from './client.js';
import { examples } from './help.js';
import { print, renderTable, shown } from './output.js';

interface TokenView {
  id: string;
  name: string;
  kind: string;
  owner: string;
  roles?: string[];
  expiresAt: string;
  createdAt: string;
  lastUsedAt: string | null;
  state: string;
}
interface UserView {
  name: string;
  roles: string[];
  groups: string[];
  createdAt: string;
}
interface BindingView {
  id: string;
  role: string;
  subject: string;
  machines?: string;
  pipelines?: string[];
}

const enc = encodeURIComponent;

const tokenColumns = [
  { header: 'ID', get: (t: TokenView) => t.id },
  { header: 'NAME', get: (t: TokenView) => t.name },
  { header: 'KIND', get: (t: TokenView) => t.kind },
  { header: 'OWNER', get: (t: TokenView) => t.owner },
  { header: 'ROLES', get: (t: TokenView) => (t.roles ? t.roles.join(',') : '(owner’s)') },
  { header: 'STATE', get: (t: TokenView) => t.state },
  { header: 'EXPIRES', get: (t: TokenView) => t.expiresAt },
  { header: 'LAST USED', get: (t: TokenView) => t.lastUsedAt },
];

async function readPassword(fromStdin: boolean | undefined, prompt: string): Promise<string> {
  if (fromStdin) return firstLine(process.stdin);
  if (!process.stdin.isTTY) throw new TaktError('bad_request', 'no terminal to ask the password on: pass it with --password-stdin');
  return askHidden(prompt);
}

/** The token text, printed once, with what to do with it. */
function showToken(token: string, t: TokenView): string {
  return `${renderTable([t], tokenColumns)}\n${pc.dim('the token (shown once; keep it as you would a password):')}\n${shown(token)}`;
}

export function userCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
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

  const users = program
    .command('users')
    .description('people who log in: name, password (argon2id), roles and groups')
    .addHelpText('after', examples('takt users create alice --role operator', 'takt users ls', 'takt users passwd alice', 'takt users bootstrap disable'));
  users
    .command('create <name>')
    .description('make a user (the password is asked, or read with --password-stdin)')
    .addHelpText('after', examples('takt users create alice --role admin', 'echo "$PW" | takt users create ci --password-stdin --role operator'))
    .option('--password-stdin', 'read the password from the first line of standard input')
    .option('--role <role...>', 'bind these roles to the user on every machine (viewer, operator, author, admin)')
    .action(async (name: string, o: { passwordStdin?: boolean; role?: string[] }) => {
      const password = await readPassword(o.passwordStdin, `password for new user ${name}: `);
      const u = await api().post<UserView>('/users', { name, password, ...(o.role ? { roles: o.role } : {}) });
      print(g().output, u, () => `created user ${u.name}${o.role ? ` with ${o.role.join(', ')}` : ''}`);
    });
  users
    .command('list')
    .description('users with their role bindings and groups')
    .addHelpText('after', examples('takt users ls', 'takt users ls -o json'))
    .action(async () => {
      const r = await api().get<{ items: UserView[] }>('/users');
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: 'NAME', get: (u: UserView) => u.name },
          { header: 'ROLES', get: (u: UserView) => u.roles.join('; ') || null },
          { header: 'GROUPS', get: (u: UserView) => u.groups.join(',') || null },
          { header: 'CREATED', get: (u: UserView) => u.createdAt },
        ]),
      );
    });
  users
    .command('delete <name>')
    .description('delete a user, their tokens and role bindings')
    .addHelpText('after', examples('takt users rm bob'))
    .action(async (name: string) => {
      const u = await api().delete<UserView>(`/users/${enc(name)}`);
      print(g().output, u, () => `deleted user ${u.name}`);
    });
  users
    .command('passwd <name>')
    .description("set a user's password (your own, or anyone's with users:admin)")
    .addHelpText('after', examples('takt users passwd alice', 'echo "$PW" | takt users passwd alice --password-stdin'))
    .option('--password-stdin', 'read the new password from the first line of standard input')
    .action(async (name: string, o: { passwordStdin?: boolean }) => {
      const password = await readPassword(o.passwordStdin, `new password for ${name}: `);
      const r = await api().put<{ name: string }>(`/users/${enc(name)}/password`, { password });
      print(g().output, r, () => `password of ${name} changed`);
    });
  users
    .command('bootstrap <action>')
    .description('the data dir admin token: status, disable (once a user holds admin) or enable')
    .addHelpText('after', examples('takt users bootstrap status', 'takt users bootstrap disable   # refused until a user holds the admin role'))
    .action(async (action: string) => {
      if (!['status', 'enable', 'disable'].includes(action)) throw new TaktError('bad_request', `bootstrap takes status, enable or disable, not '${action}'`);
      const r = action === 'status' ? await api().get<{ enabled: boolean }>('/auth/bootstrap') : await api().put<{ enabled: boolean }>('/auth/bootstrap', { enabled: action === 'enable' });
      print(g().output, r, () => `the bootstrap admin token is ${r.enabled ? 'on' : 'off'}`);
    });

  const groups = program
    .command('groups')
    .description('named sets of users that roles can be bound to')
    .addHelpText('after', examples('takt groups set ops --add alice --add bob', 'takt roles bind operator group:ops'));
  groups
    .command('set <name>')
    .description('create a group or change its members')
    .addHelpText('after', examples('takt groups set ops --add alice', 'takt groups set ops --remove bob'))
    .option('--add <user...>', 'add these users')
    .option('--remove <user...>', 'remove these users')
    .action(async (name: string, o: { add?: string[]; remove?: string[] }) => {
      const r = await api().put<{ name: string; members: string[] }>(`/groups/${enc(name)}`, { ...(o.add ? { add: o.add } : {}), ...(o.remove ? { remove: o.remove } : {}) });
      print(g().output, r, () => `group ${r.name}: ${r.members.join(', ') || '(no members)'}`);
    });
  groups
    .command('list')
    .description('groups and their members')
    .addHelpText('after', examples('takt groups ls'))
    .action(async () => {
      const r = await api().get<{ items: Array<{ name: string; members: string[] }> }>('/groups');
      print(g().output, r.items, () => renderTable(r.items, [{ header: 'NAME', get: (x) => x.name }, { header: 'MEMBERS', get: (x) => x.members.join(',') || null }]));
    });
  groups
    .command('delete <name>')
    .description('delete a group and the role bindings naming it')
    .addHelpText('after', examples('takt groups rm ops'))
    .action(async (name: string) => {
      const r = await api().delete<{ deleted: string }>(`/groups/${enc(name)}`);
      print(g().output, r, () => `deleted group ${name}`);
    });

  const roles = program
    .command('roles')
    .description('built-in roles and who holds them (bindings, optionally limited to machines by label and to pipelines)')
    .addHelpText('after', examples('takt roles ls', 'takt roles bind operator user:alice --machines env=dev', 'takt roles bindings', 'takt roles unbind rb-1a2b3c4d5e'));
  roles
    .command('list')
    .description('the built-in roles and the permissions each grants')
    .addHelpText('after', examples('takt roles ls', 'takt roles ls -o json'))
    .action(async () => {
      const r = await api().get<{ items: Array<{ name: string; description: string; grants: string[] }> }>('/roles');
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: 'ROLE', get: (x) => x.name },
          { header: 'GRANTS', get: (x) => x.grants.join(' ') },
          { header: 'DESCRIPTION', get: (x) => x.description },
        ]),
      );
    });
  roles
    .command('bindings')
    .description('who holds which role, and where')
    .addHelpText('after', examples('takt roles bindings'))
    .action(async () => {
      const r = await api().get<{ items: BindingView[] }>('/rolebindings');
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: 'ID', get: (b: BindingView) => b.id },
          { header: 'ROLE', get: (b: BindingView) => b.role },
          { header: 'SUBJECT', get: (b: BindingView) => b.subject },
          { header: 'MACHINES', get: (b: BindingView) => b.machines ?? '(all)' },
          { header: 'PIPELINES', get: (b: BindingView) => b.pipelines?.join(',') ?? '(all)' },
        ]),
      );
    });
  roles
    .command('bind <role> <subject>')
    .description('give a role to user:NAME or group:NAME, optionally only on some machines')
    .addHelpText('after', examples('takt roles bind admin user:alice', 'takt roles bind operator group:ops --machines env=prod --pipeline web'))
    .option('--machines <selector>', 'only machines matching this label selector (env=prod,team!=db)')
    .option('--pipeline <name...>', 'only machines on these pipelines')
    .action(async (role: string, subject: string, o: { machines?: string; pipeline?: string[] }) => {
      const b = await api().post<BindingView>('/rolebindings', { role, subject, ...(o.machines ? { machines: o.machines } : {}), ...(o.pipeline ? { pipelines: o.pipeline } : {}) });
      print(g().output, b, () => `bound ${b.role} to ${b.subject}${b.machines ? ` on ${b.machines}` : ''} (${b.id})`);
    });
  roles
    .command('unbind <id>')
    .description('remove a role binding (its id from takt roles bindings)')
    .addHelpText('after', examples('takt roles unbind rb-1a2b3c4d5e'))
    .action(async (id: string) => {
      const b = await api().delete<BindingView>(`/rolebindings/${enc(id)}`);
      print(g().output, b, () => `removed ${b.role} from ${b.subject}`);
    });

  const tokens = program
    .command('tokens')
    .description('personal and service tokens: a subset of their owner’s roles, with an expiry; stored as SHA-256, shown once')
    .addHelpText('after', examples('takt tokens create ci --kind service --role operator --ttl 30d', 'takt tokens ls', 'takt tokens rotate t-0123456789abcdef', 'takt tokens revoke t-0123456789abcdef'));
  tokens
    .command('create <name>')
    .description('make a token for yourself (or, with tokens:admin, for --owner)')
    .addHelpText('after', examples('takt tokens create laptop --ttl 7d', 'takt tokens create ci --kind service --role operator --owner ci-bot'))
    .option('--kind <kind>', 'personal (default) or service')
    .option('--role <role...>', "roles it carries, each one its owner holds (default: all the owner's)")
    .option('--ttl <duration>', 'lifetime: 90m, 12h, 30d (default 30d, at most 365d)')
    .option('--owner <user>', 'whose token (default: yours)')
    .action(async (name: string, o: { kind?: string; role?: string[]; ttl?: string; owner?: string }) => {
      const r = await api().post<{ token: string; tokenInfo: TokenView }>('/tokens', { name, ...(o.kind ? { kind: o.kind } : {}), ...(o.role ? { roles: o.role } : {}), ...(o.ttl ? { ttl: o.ttl } : {}), ...(o.owner ? { owner: o.owner } : {}) });
      print(g().output, r, () => showToken(r.token, r.tokenInfo));
    });
  tokens
    .command('list')
    .description("your tokens (a token admin sees everyone's; --owner for one user's)")
    .addHelpText('after', examples('takt tokens ls', 'takt tokens ls --owner alice'))
    .option('--owner <user>', "only this user's tokens")
    .action(async (o: { owner?: string }) => {
      const r = await api().get<{ items: TokenView[] }>('/tokens', o.owner ? { owner: o.owner } : undefined);
      print(g().output, r.items, () => renderTable(r.items, tokenColumns));
    });
  tokens
    .command('rotate <id>')
    .description('replace a token’s secret (the old one is refused from now on) and restart its lifetime')
    .addHelpText('after', examples('takt tokens rotate t-0123456789abcdef'))
    .action(async (id: string) => {
      const r = await api().post<{ token: string; tokenInfo: TokenView }>(`/tokens/${enc(id)}/rotate`);
      print(g().output, r, () => showToken(r.token, r.tokenInfo));
    });
  tokens
    .command('revoke <id>')
    .description('end a token now')
    .addHelpText('after', examples('takt tokens revoke t-0123456789abcdef'))
    .action(async (id: string) => {
      const t = await api().delete<TokenView>(`/tokens/${enc(id)}`);
      print(g().output, t, () => `revoked ${t.id} (${t.name}, ${t.owner})`);
    });
}
