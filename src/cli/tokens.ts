/** `takt tokens create|list|rotate|revoke` (issue #16, part 1): personal and service tokens, shown once. */
import type { Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import { pc } from './color.js';
import type { GlobalOptions } from './client.js';
import { examples } from './help.js';
import { print, renderTable, shown } from './output.js';
import { TaktError } from '../model/errors.js';

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
    .command('rotate <token>')
    .description('replace a token’s secret (the old one is refused from now on) and restart its lifetime; TOKEN is its name or id')
    .addHelpText('after', examples('takt tokens rotate ci', 'takt tokens rotate ci --owner ci-bot', 'takt tokens rotate t-0123456789abcdef'))
    .option('--owner <user>', 'whose token named TOKEN, when several users have one of that name')
    .action(async (ref: string, o: { owner?: string }) => {
      const id = await tokenIdOf(api(), ref, o.owner);
      const r = await api().post<{ token: string; tokenInfo: TokenView }>(`/tokens/${enc(id)}/rotate`);
      print(g().output, r, () => showToken(r.token, r.tokenInfo));
    });
  tokens
    .command('revoke <token>')
    .description('end a token now; TOKEN is its name or id')
    .addHelpText('after', examples('takt tokens revoke ci', 'takt tokens revoke laptop --owner alice', 'takt tokens revoke t-0123456789abcdef'))
    .option('--owner <user>', 'whose token named TOKEN, when several users have one of that name')
    .action(async (ref: string, o: { owner?: string }) => {
      const id = await tokenIdOf(api(), ref, o.owner);
      const t = await api().delete<TokenView>(`/tokens/${enc(id)}`);
      print(g().output, t, () => `revoked ${t.id} (${t.name}, ${t.owner})`);
    });
}

/** A token id as the endpoint makes them (src/engine/users.ts): `t-` and 16 hex digits. */
const TOKEN_ID = /^t-[0-9a-f]{16}$/;

/**
 * The id of the token `ref` names: `ref` itself when it is an id, else the one token named `ref` among
 * those the caller may list (its own; a token admin's: everyone's, or `owner`'s). Revoked and expired
 * tokens are passed over when a live one has the name.
 * @throws TaktError not_found (no token of that name), conflict (several: their ids and owners are listed).
 */
export async function tokenIdOf(api: ApiClient, ref: string, owner?: string): Promise<string> {
  if (TOKEN_ID.test(ref)) return ref;
  const { items } = await api.get<{ items: TokenView[] }>('/tokens', owner ? { owner } : undefined);
  const named = items.filter((t) => t.name === ref);
  const live = named.filter((t) => t.state === 'active');
  const candidates = live.length > 0 ? live : named;
  if (candidates.length === 1) return candidates[0]!.id;
  if (candidates.length === 0) throw new TaktError('not_found', `no token named '${ref}'${owner ? ` of ${owner}` : ''} (list them: takt tokens ls${owner ? ` --owner ${owner}` : ''})`);
  throw new TaktError('conflict', `${candidates.length} tokens are named '${ref}': ${candidates.map((t) => `${t.id} (${t.owner})`).join(', ')}; give the id, or --owner`);
}
