/**
 * `takt agent join` (register this host with a join token; the install script runs it) and `takt agent
 * facts` (print what the agent reports about this host). Subcommands of `takt agent`.
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { TaktError } from '../model/errors.js';
import type { GlobalOptions } from './client.js';
import { examples } from './help.js';
import { UsageError } from './usage.js';

interface JoinOptions {
  joinTokenFile: string;
  tokenFile?: string;
  ca?: string;
}

/** Reads a one-line secret file (a token), refusing an empty one with the file's name. */
async function readSecret(path: string, what: string): Promise<string> {
  const text = await readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new TaktError('bad_request', `cannot read the ${what} from ${path}: ${err.code ?? err.message}`);
  });
  const token = text.trim();
  if (!token) throw new TaktError('bad_request', `${path} is empty; it should hold the ${what}`);
  return token;
}

export function agentJoinCommands(agent: Command, globals: () => GlobalOptions): void {
  agent
    .command('join')
    .description("register this host with a join token: sends its inventory, writes the machine token it gets to --token-file (0600). The install script (`takt machines join`) runs this")
    .addHelpText('after', examples('takt agent join --join-token-file /root/join.token --token-file /var/lib/takt-agent/token --ca ca.pem --endpoint https://takt.example.org:8443'))
    .requiredOption('--join-token-file <file>', 'file holding the join token (a file, so it is not on a command line)')
    .option('--token-file <file>', 'where to write the machine token (mode 0600)')
    .option('--ca <file>', "the endpoint's CA certificate (PEM): the only certificate trusted")
    .action(async (o: JoinOptions) => {
      // `takt agent` may declare --token-file and --ca itself; commander then gives them to it.
      const parent = agent.opts<{ tokenFile?: string; ca?: string }>();
      const tokenFile = o.tokenFile ?? parent.tokenFile;
      const caFile = o.ca ?? parent.ca;
      const endpoint = globals().endpoint ?? process.env.TAKT_ENDPOINT;
      if (!endpoint) throw new UsageError('the endpoint URL is needed: --endpoint or TAKT_ENDPOINT');
      if (!tokenFile) throw new UsageError('say where the machine token goes: --token-file FILE');
      const joinToken = await readSecret(o.joinTokenFile, 'join token');
      const ca = caFile ? await readFile(caFile, 'utf8') : undefined;
      const { registerHost } = await import('../agent/register.js');
      const { VERSION } = await import('./version.js');
      const r = await registerHost({ endpoint, ...(ca ? { ca } : {}) }, joinToken, tokenFile, VERSION);
      const g = globals();
      if (g.output === 'json') process.stdout.write(`${JSON.stringify(r)}\n`);
      else if (!r.rejoined) process.stderr.write(`takt: joined as machine ${r.machine.name} (${r.machine.id}); wrote its token (mode 0600)\n`);
      else {
        // A re-join takes over an existing machine: say so plainly, the operator may not have expected it.
        process.stderr.write(
          `takt: joined again as machine ${r.machine.name} (${r.machine.id}): this host was already that machine (recognised by its machine identity); wrote its new token (mode 0600)\n` +
            `takt: machine ${r.machine.name}'s previous token no longer works: an agent still running with it must be restarted\n`,
        );
      }
    });

  agent
    .command('discover')
    .description(
      'register this machine from a discovery boot: reads takt.api=, takt.ca= and takt.token= from the kernel command line, trusts the CA with that fingerprint, registers, and writes ca.pem and token (0600) to the agent home (takt agent --dir). Prints the API URL, for `takt agent` to use. The discovery environment\'s init runs this',
    )
    .addHelpText('after', examples('api=$(takt agent --dir /run/takt discover) && exec takt agent --endpoint "$api" --token-file /run/takt/token --ca /run/takt/ca.pem --dir /run/takt'))
    .option('--cmdline <file>', 'the kernel command line to read', '/proc/cmdline')
    .option('--wait <seconds>', 'keep trying an endpoint that cannot be reached yet for this long', '120')
    .action(async (o: { cmdline: string; wait: string }) => {
      // `--dir` is `takt agent`'s own (the agent home, default /var/lib/takt-agent): commander gives it to the
      // parent, and ca.pem and token go there, where `takt agent --dir` looks for them.
      const dir = agent.opts<{ dir: string }>().dir;
      const { discoverHost, parseDiscoveryCmdline } = await import('../agent/discover.js');
      const { VERSION } = await import('./version.js');
      const wait = Number(o.wait);
      if (!Number.isFinite(wait) || wait < 0 || wait > 3600) throw new UsageError(`--wait ${o.wait}: give seconds from 0 to 3600`);
      const text = await readFile(o.cmdline, 'utf8').catch((err: NodeJS.ErrnoException) => {
        throw new TaktError('bad_request', `cannot read the kernel command line from ${o.cmdline}: ${err.code ?? err.message}`);
      });
      const p = parseDiscoveryCmdline(text);
      const r = await discoverHost(p, dir, VERSION, wait * 1000, (msg) => process.stderr.write(`takt: ${msg}\n`));
      process.stderr.write(`takt: registered as machine ${r.machine.name} (${r.machine.id})${r.rejoined ? ', which was already known' : ''}; token in ${dir}/token\n`);
      if (globals().output === 'json') process.stdout.write(`${JSON.stringify({ api: p.api, ...r })}\n`);
      else process.stdout.write(`${p.api}\n`);
    });

  agent
    .command('deployed')
    .description(
      "register a deployed OS on its first boot as the machine its disk was deployed to: finds takt's join block at the end of a disk (written by the deploying agent after the image), trusts the CA it pins, registers with its single-use token, writes ca.pem and token (0600) to the agent home (takt agent --dir), then zeroes the block. Prints the API URL, for `takt agent` to use. A deployed image's first-boot step runs this",
    )
    .addHelpText('after', examples('api=$(takt agent --dir /var/lib/takt-agent deployed) && exec takt agent --endpoint "$api" --token-file /var/lib/takt-agent/token --ca /var/lib/takt-agent/ca.pem --dir /var/lib/takt-agent', 'takt agent deployed --device /dev/vda'))
    .option('--device <path>', 'the disk to read (default: every whole disk, in order)')
    .option('--wait <seconds>', 'keep trying an endpoint that cannot be reached yet for this long', '120')
    .action(async (o: { device?: string; wait: string }) => {
      const dir = agent.opts<{ dir: string }>().dir;
      const { joinDeployed } = await import('../agent/deployed.js');
      const { VERSION } = await import('./version.js');
      const wait = Number(o.wait);
      if (!Number.isFinite(wait) || wait < 0 || wait > 3600) throw new UsageError(`--wait ${o.wait}: give seconds from 0 to 3600`);
      const r = await joinDeployed(dir, VERSION, { ...(o.device ? { devices: [o.device] } : {}), deadlineMs: wait * 1000, log: (msg) => process.stderr.write(`takt: ${msg}\n`) });
      process.stderr.write(`takt: joined as machine ${r.registration.machine.name} (${r.registration.machine.id}) with the join block on ${r.device} (now zeroed); token in ${dir}/token\n`);
      if (globals().output === 'json') process.stdout.write(`${JSON.stringify({ api: r.api, device: r.device, ...r.registration })}\n`);
      else process.stdout.write(`${r.api}\n`);
    });

  agent
    .command('facts')
    .description('print the facts (inventory) the agent reports about this host, as JSON')
    .addHelpText('after', examples('takt agent facts | jq .os'))
    .action(async () => {
      const { collectFacts } = await import('../agent/inventory.js');
      const { VERSION } = await import('./version.js');
      process.stdout.write(`${JSON.stringify(await collectFacts(undefined, VERSION), null, 2)}\n`);
    });
}
