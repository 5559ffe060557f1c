/** `takt users …` and `takt groups …` (issue #16, part 1): people who log in, and the groups roles are bound to. */
import type { Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import type { GlobalOptions } from './client.js';
import { examples } from './help.js';
import { print, renderTable } from './output.js';
import { readPassword } from './login.js';
import { UsageError } from './usage.js';

interface UserView {
  name: string;
  roles: string[];
  groups: string[];
  createdAt: string;
  /** `oidc`: signs in through single sign-on (no password); absent: a password user. */
  kind?: 'oidc';
  oidc?: { issuer: string; subject: string };
}

const enc = encodeURIComponent;

export function userCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
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
          { header: 'SIGN-IN', get: (u: UserView) => (u.kind === 'oidc' ? 'sso' : 'password') },
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
      if (!['status', 'enable', 'disable'].includes(action)) throw new UsageError(`bootstrap takes status, enable or disable, not '${action}'`);
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
}
