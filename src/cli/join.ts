/**
 * Joining hosts from the CLI: `takt machines join` prints the one line to run on a host, `takt join-tokens
 * list|get|revoke` manages the tokens, `takt machines token M --rotate` re-issues a machine's token.
 * Also the Facts section `takt machines get` shows.
 */
import type { Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import type { ObservedFacts } from '../model/facts.js';
import type { JoinTokenView } from '../model/join.js';
import type { Machine } from '../model/machine.js';
import { collect, type GlobalOptions } from './client.js';
import { print, renderTable, shown, shownErr } from './output.js';
import { examples } from './help.js';
import { UsageError } from './usage.js';

type Globals = () => GlobalOptions;
const enc = encodeURIComponent;

interface Created extends JoinTokenView {
  token: string;
  joinUrl: string;
  pin: string | null;
  caFingerprint: string | null;
  command: string;
}

export function joinCommands(program: Command, g: Globals, api: () => ApiClient): void {
  const machines = program.commands.find((c) => c.name() === 'machines');
  if (!machines) throw new Error('joinCommands: register the machines command first');

  machines
    .command('join [name]')
    .description('print the one command that joins a host (run it there as root): installs the agent, registers the host with its inventory')
    .option('--pipeline <name>', 'start this pipeline once the host has joined')
    .option('--profile <name>', 'profile (repeatable, highest precedence first)', collect)
    .option('--environment <env>', 'environment of the machine', 'remote')
    .option('--expires <duration>', 'how long the command works (1m to 7d)', '1h')
    .option('--uses <n>', 'how many hosts may join with it (a named machine: 1)', '1')
    .option('--url <url>', "the endpoint's URL as the host reaches it (default: the endpoint's advertised https URL)")
    .addHelpText(
      'after',
      examples(
        'takt machines join web-1 --pipeline demo       # one host, named web-1',
        'takt machines join --uses 20 --expires 2h      # up to 20 hosts, each named after its hostname',
        'takt machines join -o json                     # token id, command, pin and expiry for scripts',
      ),
    )
    .action(async (name: string | undefined, o: { pipeline?: string; profile?: string[]; environment: string; expires: string; uses: string; url?: string }) => {
      const uses = Number(o.uses);
      if (!/^\d+$/.test(o.uses) || uses < 1) throw new UsageError(`--uses must be a whole number from 1 (got '${o.uses}')`);
      const body = { name, pipeline: o.pipeline, profiles: o.profile, environment: o.environment, expires: o.expires, uses, url: o.url };
      const r = await api().post<Created>('/join-tokens', body);
      if (g().output !== 'table') return print(g().output, r);
      // The command alone on stdout (`$(takt machines join)`); what it is, on stderr.
      const what = `${r.name ? `machine ${r.name}` : `up to ${r.maxUses} host${r.maxUses === 1 ? '' : 's'}`}${r.pipeline ? `, pipeline ${r.pipeline}` : ''}`;
      process.stderr.write(pc.dim(shownErr(`join token ${r.id} (${what}; expires ${r.expiresAt}). Run this as root on the host:`)) + '\n');
      process.stdout.write(`${shown(r.command)}\n`);
    });

  machines
    .command('token <machine>')
    .description("re-issue a machine's token (--rotate): the old one stops working at once; the new one is printed once")
    .addHelpText('after', examples('(umask 077; takt machines token web-1 --rotate > web-1.token)   # a token file only you can read'))
    .option('--rotate', 'issue a new token and revoke the old one')
    .action(async (machine: string, o: { rotate?: boolean }) => {
      if (!o.rotate) throw new UsageError('machine tokens are stored only as digests and cannot be shown again; --rotate issues a new one (the old one stops working)');
      const r = await api().post<{ machine: Machine; token: string }>(`/machines/${enc(machine)}/token`, {});
      if (g().output !== 'table') return print(g().output, r);
      // The token alone on stdout (`--rotate > token` writes a token file); the notice on stderr.
      process.stderr.write(pc.dim(shownErr(`new token of ${r.machine.name} (shown once); the old one no longer works`)) + '\n');
      process.stdout.write(`${shown(r.token)}\n`);
    });

  const tokens = program

    .command('join-tokens')

    .description('join tokens: list, show, revoke (make one with `takt machines join`)')

    .addHelpText('after', examples('takt join-tokens ls', 'takt join-tokens revoke jt-1a2b3c'));
  tokens
    .command('list')
    .description('join tokens, newest first: what they create, uses left, expiry, who made them, the machines they made')
    .addHelpText('after', examples('takt join-tokens list', 'takt join-tokens ls -o json'))
    .action(async () => {
      const r = await api().get<{ items: JoinTokenView[] }>('/join-tokens');
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: 'ID', get: (t) => t.id },
          { header: 'STATE', get: (t) => t.state, color: (s) => (s === 'active' ? pc.green(s) : pc.dim(s)) },
          { header: 'NAME', get: (t) => t.name },
          { header: 'PIPELINE', get: (t) => t.pipeline },
          { header: 'USES LEFT', get: (t) => `${t.usesLeft}/${t.maxUses}` },
          { header: 'EXPIRES', get: (t) => t.expiresAt },
          { header: 'CREATED BY', get: (t) => t.createdBy },
          { header: 'MACHINES', get: (t) => t.machines.join(', ') || null },
        ]),
      );
    });
  tokens
    .command('get <id>')
    .description('one join token (never its secret)')
    .addHelpText('after', examples('takt join-tokens get jt-1a2b3c'))
    .action(async (id: string) => {
      const t = await api().get<JoinTokenView>(`/join-tokens/${enc(id)}`);
      print(g().output, t);
    });
  tokens
    .command('revoke <id>')
    .description('revoke a join token at once (hosts that joined with it keep their machine tokens)')
    .addHelpText('after', examples('takt join-tokens revoke jt-1a2b3c'))
    .action(async (id: string) => {
      const t = await api().delete<JoinTokenView>(`/join-tokens/${enc(id)}`);
      print(g().output, t, () => shown(`revoked join token ${t.id} (${t.uses} of ${t.maxUses} uses taken)`));
    });
}

/** The Facts section `takt machines get` shows below the machine: observed, in a section of their own. */
export function factsSection(f: ObservedFacts | null | undefined): string {
  if (!f) return `${pc.bold('Facts')} ${pc.dim('(observed; none reported yet: the agent sends them when it joins or starts with --report-facts)')}`;
  const gib = (n: number) => `${(n / 2 ** 30).toFixed(1)} GiB`;
  const rows: Array<[string, string]> = [
    ['hostname', f.hostname],
    ['machine-id', f.machineId ?? '-'],
    ['os', f.os.prettyName ?? f.os.id ?? '-'],
    ['kernel', `${f.kernel} (${f.arch})`],
    ['cpu', `${f.cpu.count} × ${f.cpu.model ?? 'unknown'}`],
    ['memory', gib(f.memoryBytes)],
    ['addresses', f.addresses.map((a) => `${a.address}/${a.prefix} (${a.interface})`).join(', ') || '-'],
    ['macs', f.macs.join(', ') || '-'],
    ['disks', f.disks.map((d) => `${d.name} ${gib(d.sizeBytes)}${d.model ? ` ${d.model}` : ''}`).join(', ') || '-'],
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  return [`${pc.bold('Facts')} ${pc.dim(shown(`(observed ${f.observedAt}; use as {{ facts.os.id }} in templates, facts.os.id=… in selectors)`))}`, ...rows.map(([k, v]) => `  ${k.padEnd(width)}  ${shown(v)}`)].join('\n');
}
