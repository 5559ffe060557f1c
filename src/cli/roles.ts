/** `takt roles list|bindings|bind|unbind` (issue #16, part 1): the built-in roles and who holds them where. */
import type { Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import type { GlobalOptions } from './client.js';
import { examples } from './help.js';
import { print, renderTable } from './output.js';

interface BindingView {
  id: string;
  role: string;
  subject: string;
  machines?: string;
  pipelines?: string[];
}

const enc = encodeURIComponent;

export function roleCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
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
}
