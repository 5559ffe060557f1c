/** `takt audit` (issue #16): who did what to the endpoint — writes, reads of secrets, refusals — newest first. */
import type { Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import type { AuditEntry } from '../model/audit.js';
import { pc } from './color.js';
import type { GlobalOptions } from './client.js';
import { examples } from './help.js';
import { print, renderTable } from './output.js';

/** One entry as the API answers it (machines shown by name): the store's entry (model/audit.ts). */
type AuditView = AuditEntry;

const OUTCOME_COLOR = { ok: pc.green, denied: pc.red, failed: pc.yellow } as const;

export const auditColumns = [
  { header: 'WHEN', get: (e: AuditView) => e.at },
  { header: 'WHO', get: (e: AuditView) => e.principal },
  { header: 'FROM', get: (e: AuditView) => e.source },
  { header: 'REQUEST', get: (e: AuditView) => `${e.method} ${e.route}` },
  { header: 'RESOURCE', get: (e: AuditView) => e.resource ?? '' },
  { header: 'OUTCOME', get: (e: AuditView) => `${e.outcome} ${e.status}`, color: (t: string, e: AuditView) => OUTCOME_COLOR[e.outcome](t) },
  { header: 'DETAIL', get: (e: AuditView) => e.detail ?? '', max: 120, wide: true },
  { header: 'TOKEN', get: (e: AuditView) => e.token ?? '', wide: true },
];

interface AuditOptions {
  principal?: string;
  since?: string;
  until?: string;
  route?: string;
  resource?: string;
  outcome?: string;
  limit: string;
  cursor?: string;
}

export function auditCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
  program
    .command('audit')
    .description('the audit log (admins only): every write, every read of secrets, logs and exports, every refused request — who, when, from where, how it ended')
    .option('--principal <who>', 'only this caller: user:NAME, admin, machine:NAME, anonymous (refused authentications)')
    .option('--since <when>', 'from this RFC 3339 time, or this long ago (90m, 1h, 7d)')
    .option('--until <when>', 'before this RFC 3339 time, or this long ago')
    .option('--route <text>', 'only route patterns containing this text (/machines, /login, /export)')
    .option('--resource <name>', 'only requests about this machine (name or id), job, pack, user…')
    .option('--outcome <outcome>', 'ok, denied (401/403) or failed (other errors)')
    .option('--limit <n>', 'how many (newest first, at most 1000)', '100')
    .option('--cursor <n>', 'the page after the one that printed this cursor')
    .addHelpText(
      'after',
      examples('takt audit --since 1h', 'takt audit --outcome denied --since 1d', 'takt audit --principal user:alice --route /machines', 'takt audit --resource web-1 -o json', 'takt audit --route /login --outcome denied   # failed logins'),
    )
    .action(async (o: AuditOptions) => {
      const query: Record<string, string> = { limit: o.limit };
      for (const k of ['principal', 'since', 'until', 'route', 'resource', 'outcome', 'cursor'] as const) if (o[k] !== undefined) query[k] = o[k]!;
      const r = await api().get<{ items: AuditView[]; next: string | null }>('/audit', query);
      print(g().output, r, () => renderTable(r.items, auditColumns) + (r.next ? `\n${pc.dim(`more: takt audit --cursor ${r.next}${o.limit !== '100' ? ` --limit ${o.limit}` : ''} (with the same filters)`)}` : ''));
    });
}
