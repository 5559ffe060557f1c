/** `takt tokens create|list|rotate|revoke` (issue #16, part 1): personal and service tokens, shown once. */
import type { Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import { pc } from './color.js';
import type { GlobalOptions } from './client.js';
import { examples } from './help.js';
import { print, renderTable, shown } from './output.js';

export interface TokenView {
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

export const tokenColumns = [
  { header: 'ID', get: (t: TokenView) => t.id },
  { header: 'NAME', get: (t: TokenView) => t.name },
  { header: 'KIND', get: (t: TokenView) => t.kind },
  { header: 'OWNER', get: (t: TokenView) => t.owner },
  { header: 'ROLES', get: (t: TokenView) => (t.roles ? t.roles.join(',') : '(owner’s)') },
  { header: 'STATE', get: (t: TokenView) => t.state },
  { header: 'EXPIRES', get: (t: TokenView) => t.expiresAt },
  { header: 'LAST USED', get: (t: TokenView) => t.lastUsedAt },
];

/** The token text, printed once, with what to do with it. */
function showToken(token: string, t: TokenView): string {
  return `${renderTable([t], tokenColumns)}\n${pc.dim('the token (shown once; keep it as you would a password):')}\n${shown(token)}`;
}

const enc = encodeURIComponent;

export function tokenCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
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
