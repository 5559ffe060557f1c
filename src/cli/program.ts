/**
 * The `takt` command tree: the global options, `serve`, `agent` and every resource's commands (each in
 * src/cli/<resource>.ts), built without running anything, so tests and `takt completion` can walk it.
 * The CLI mirrors the REST API one-to-one. Heavy modules load inside the actions so `takt agent` and
 * quick queries start fast.
 */
import { Command, CommanderError, Option } from 'commander';
import { pc } from './color.js';
import { NetworkError } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import { savedLoginHint, type GlobalOptions } from './client.js';
import { addAliases, examples } from './help.js';
import { EXIT, EXIT_CODES_HELP, UsageError } from './usage.js';
import { OUTPUT_FORMATS, setView, shownErr, type OutputFormat } from './view.js';
import { VERSION } from './version.js';

/** Top-level commands whose objects belong to another resource, for `-o name` (`approvals list` lists machines). */
const NAME_RESOURCE: Record<string, string> = { approvals: 'machines' };

interface ServeCliOptions {
  listen: string[];
  tlsCert?: string;
  tlsKey?: string;
  tlsSan: string[];
  advertiseUrl?: string;
  data: string;
  store?: string;
  demo: boolean;
  lease: string;
  churnCheck: string;
  maxLogBytes: string;
  logFormat: 'text' | 'json';
  hostName: string[];
  requestTimeout: string;
  maxConnections: string;
  agentGoneAfter: string;
  sshMaxSessions: string;
  provision?: string;
  bootPort: string;
  discovery: boolean;
  dhcp: string;
  dhcpRange?: string;
  tftpRoot?: string;
  qemuBridge?: string;
  routerAdverts?: boolean;
  bootTimeout?: string;
  auditKeepDays: string;
  loginMaxFailures: string;
  loginWindow: string;
  oidcIssuer?: string;
  oidcClientId?: string;
  oidcClientSecretFile?: string;
  oidcGroupsClaim?: string;
}

/**
 * Builds the `takt` command tree; `program.parseAsync(argv)` runs it.
 * @param opts.only `agent`: the global options, `serve` and `agent` only, without the resource commands
 *   and the libraries they load (content lint, templates, JSON Schema, YAML: about 1.3 MB of the bundle's
 *   1.7 MB). main.ts asks for it when `agent` is the command: an agent starts on every boot of a
 *   discovered machine, where Node runs under the machine's firmware-speed CPU (provisioning.md).
 *   Everything else, `takt --help` and completion build the whole tree.
 */
export async function buildProgram(opts: { only?: 'agent' } = {}): Promise<Command> {
  const program = new Command();
  program
    .name('takt')
    .description('takt drives machines through versioned pipelines of tasks and keeps a record of what ran where.\n\nStart an endpoint with `takt serve --demo`, then try `takt machines list`.')
    .option('--endpoint <url>', 'endpoint URL (env TAKT_ENDPOINT; default: the one DATA/endpoint names, written by takt serve, else http://127.0.0.1:8092; DATA is env TAKT_DATA, the --data of takt serve, else ./data)')
    .option('--token <token>', 'API token (env TAKT_TOKEN; default DATA/admin.token, DATA as for --endpoint)')
    .addOption(new Option('-o, --output <format>', 'output format; wide: the table with ids and times, name: resource/name per line').choices(OUTPUT_FORMATS).default('table'))
    .option('--no-headers', 'tables without their header line (for scripts)')
    .version(VERSION, '-V, --version', 'print the takt version')
    .showHelpAfterError('(run with --help for usage)')
    // Commander's own usage errors (unknown option, missing argument…) are thrown rather than exited on,
    // so report() gives them the one usage exit code (2), as the commands' own usage errors. Every
    // subcommand inherits it (Commander copies it to commands made after this).
    .exitOverride()
    .configureHelp({ sortSubcommands: true })
    .addHelpText('after', examples('takt serve --demo', 'takt machines ls -o wide', 'takt machine get demo-1 -o yaml', 'takt completion bash > /etc/bash_completion.d/takt') + EXIT_CODES_HELP);


  // Commands render `table`, `json` or `yaml`; `wide` and `name` are tables drawn differently, which
  // output.ts learns once here (with --no-headers and the resource) before the command's action runs.
  const globals = (): GlobalOptions => {
    const o = program.opts<Omit<GlobalOptions, 'output'> & { output: OutputFormat }>();
    return { ...o, output: o.output === 'wide' || o.output === 'name' ? 'table' : o.output };
  };
  program.hook('preAction', (_program, action) => {
    const o = program.opts<{ output: OutputFormat; headers: boolean }>();
    let top = action;
    while (top.parent && top.parent !== program) top = top.parent;
    const resource = NAME_RESOURCE[top.name()] ?? top.name();
    setView({ wide: o.output === 'wide', name: o.output === 'name', headers: o.headers, resource });
    stripKinds(action, program, resource);
    running = action;
  });

  program
    .command('serve')
    .description('run an endpoint: API, web UI, embedded SQLite store and the local broker')
    .option(
      '--listen <host:port...>',
      'addresses to listen on (env TAKT_LISTEN, comma-separated): loopback ones serve HTTP, all others HTTPS',
      process.env.TAKT_LISTEN ? process.env.TAKT_LISTEN.split(',').map((s) => s.trim()).filter(Boolean) : ['127.0.0.1:8092'],
    )
    .option('--tls-cert <file>', 'PEM certificate chain for the HTTPS listeners (env TAKT_TLS_CERT); default: one the endpoint\'s own CA issues', process.env.TAKT_TLS_CERT)
    .option('--tls-key <file>', 'PEM private key of --tls-cert (env TAKT_TLS_KEY)', process.env.TAKT_TLS_KEY)
    .option(
      '--tls-san <name...>',
      'another DNS name or IP address for the issued certificate (env TAKT_TLS_SANS, comma-separated); the host name and listen addresses are always in it',
      process.env.TAKT_TLS_SANS ? process.env.TAKT_TLS_SANS.split(',').map((s) => s.trim()).filter(Boolean) : [],
    )
    .option('--advertise-url <url>', 'the https URL remote machines use to reach this endpoint (env TAKT_ADVERTISE_URL); default: the first HTTPS listener', process.env.TAKT_ADVERTISE_URL)
    .option('--data <dir>', 'data directory: database, admin token, machine sandboxes (env TAKT_DATA)', process.env.TAKT_DATA ?? './data')
    .option(
      '--store <url>',
      // No default from TAKT_STORE here: commander would print it (password and all) in --help. serve reads it.
      'where the endpoint keeps its state: postgres://USER@HOST:PORT/DATABASE, or sqlite:FILE (env TAKT_STORE, which keeps a password out of the process list); default: takt.db in the data dir',
    )
    .option('--demo', 'install the demo pack and run its pipeline on three local machines', false)
    .option('--lease <duration>', 'how long a running job may go without word from its agent before it is lost', process.env.TAKT_LEASE ?? '30s')
    .option('--churn-check <duration>', 'how often the churn policy looks for machines past their max age', process.env.TAKT_CHURN_CHECK ?? '1m')
    .option('--max-log-bytes <size>', "log output stored per job (e.g. 64MiB); past it a job's log is cut with a marker (env TAKT_MAX_LOG_BYTES)", process.env.TAKT_MAX_LOG_BYTES ?? '64MiB')
    .addOption(new Option('--log-format <format>', 'log format').choices(['text', 'json']).default(process.env.TAKT_LOG_FORMAT ?? 'text'))
    .option(
      '--host-name <name...>',
      'a DNS name clients use to reach this endpoint (env TAKT_HOST_NAMES, comma-separated); requests for other names are refused (DNS rebinding). IP addresses, localhost and this host\'s name are always accepted',
      process.env.TAKT_HOST_NAMES ? process.env.TAKT_HOST_NAMES.split(',').map((s) => s.trim()).filter(Boolean) : [],
    )
    .option('--request-timeout <duration>', 'a request whose headers and body have not all arrived after this long is answered 408 and closed (env TAKT_REQUEST_TIMEOUT)', process.env.TAKT_REQUEST_TIMEOUT ?? '2m')
    .option('--max-connections <n>', 'open connections beyond this are refused (env TAKT_MAX_CONNECTIONS)', process.env.TAKT_MAX_CONNECTIONS ?? '10000')
    .option('--agent-gone-after <duration>', 'a machine not heard from this long, with no claim long-poll open, shows its agent disconnected (env TAKT_AGENT_GONE_AFTER)', process.env.TAKT_AGENT_GONE_AFTER ?? '135s')
    .option('--provision <addr[/prefix]>', "network boot: serve iPXE scripts and boot files on this IPv4 address of the provisioning network (env TAKT_PROVISION); off by default", process.env.TAKT_PROVISION)
    .option('--boot-port <port>', 'with --provision: TCP port of the boot HTTP service (env TAKT_BOOT_PORT)', process.env.TAKT_BOOT_PORT ?? '8093')
    .option('--no-discovery', 'with --provision: unknown machines boot from disk instead of the discovery bootenv')
    .option('--dhcp <mode>', 'with --provision: answer DHCP — full (hand out addresses; needs --dhcp-range), proxy (PXE boot answers beside the network\'s own DHCP server) or off (env TAKT_DHCP)', process.env.TAKT_DHCP ?? 'off')
    .option('--dhcp-range <first-last>', 'with --dhcp full: the addresses handed out, inside the --provision prefix (env TAKT_DHCP_RANGE)', process.env.TAKT_DHCP_RANGE)
    .option('--qemu-bridge <bridge>', "the bridge the qemu broker's VMs are plugged into (a tap each), on the provisioning network (env TAKT_QEMU_BRIDGE); default: qemu's private user-mode network", process.env.TAKT_QEMU_BRIDGE)
    .option('--router-adverts', 'with --provision: send IPv6 router advertisements on the boot segment (radvd; no prefix, not a default router) so iPXE does not wait 13-16 s for a router; default on with --dhcp full (env TAKT_ROUTER_ADVERTS=on|off)')
    .option('--no-router-adverts', 'with --provision: no router advertisements (the segment has an IPv6 router, or radvd is not wanted)')
    .option('--boot-timeout <duration>', 'with --provision: a network-booted machine takt powers on, cycles or reboots that sends no DHCP or boot script request within this long is reported (its reason says what to check; a running machine stops); one that boots its disk with work waiting there must have its OS\'s agent claim within it (env TAKT_BOOT_TIMEOUT; default 5m: servers take minutes to POST)', process.env.TAKT_BOOT_TIMEOUT)
    .option('--tftp-root <dir>', 'with --dhcp: where TFTP serves the iPXE binaries PXE ROMs get (env TAKT_TFTP_ROOT; default /usr/lib/ipxe, Debian\'s ipxe package)', process.env.TAKT_TFTP_ROOT)
    .option('--audit-keep-days <days>', 'how long the audit log keeps its entries (env TAKT_AUDIT_KEEP_DAYS); older ones are pruned', process.env.TAKT_AUDIT_KEEP_DAYS ?? '90')
    .option('--login-max-failures <n>', 'failed logins allowed per user name and source address within --login-window, then 429 until the oldest ages out; 10× that per address over all names (env TAKT_LOGIN_MAX_FAILURES)', process.env.TAKT_LOGIN_MAX_FAILURES ?? '10')
    .option('--login-window <duration>', 'the window --login-max-failures counts in (env TAKT_LOGIN_WINDOW)', process.env.TAKT_LOGIN_WINDOW ?? '5m')
    .option('--oidc-issuer <url>', 'single sign-on: the OpenID Connect provider\'s issuer URL (env TAKT_OIDC_ISSUER); its discovery document is checked at start', process.env.TAKT_OIDC_ISSUER)
    .option('--oidc-client-id <id>', 'with --oidc-issuer: this endpoint\'s client id at the provider (env TAKT_OIDC_CLIENT_ID)', process.env.TAKT_OIDC_CLIENT_ID)
    .option('--oidc-client-secret-file <file>', 'with --oidc-issuer: a file holding the client secret (a confidential client; env TAKT_OIDC_CLIENT_SECRET_FILE); without it the endpoint is a public client (PKCE)', process.env.TAKT_OIDC_CLIENT_SECRET_FILE)
    .option('--oidc-groups-claim <claim>', 'with --oidc-issuer: the claim listing a user\'s groups; each maps to the takt group of the same name (env TAKT_OIDC_GROUPS_CLAIM)', process.env.TAKT_OIDC_GROUPS_CLAIM ?? 'groups')
    .option('--ssh-max-sessions <n>', 'how many agentless (SSH) machines run jobs at once; the others wait, and say so (env TAKT_SSH_MAX_SESSIONS)', process.env.TAKT_SSH_MAX_SESSIONS ?? '64')
    .addHelpText(
      'after',
      examples(
        'takt serve --demo                          # endpoint on http://127.0.0.1:8092 with three demo machines',
        'takt serve --data /var/lib/takt --log-format json',
        'TAKT_STORE=postgres://takt@db.example.org/takt takt serve   # state in PostgreSQL (password: PGPASSWORD or ~/.pgpass)',
        'takt serve --host-name takt.example.org    # also answer to that name (besides IPs and localhost)',
        'takt serve --listen 127.0.0.1:8092 --listen 0.0.0.0:8443 --tls-san takt.example.org   # local CLI over HTTP; remote agents over HTTPS (own CA)',
        'takt serve --provision 10.0.0.1/24        # network boot: iPXE scripts and boot files on http://10.0.0.1:8093',
        'takt serve --provision 10.0.0.1/24 --dhcp proxy   # ... and PXE answers beside the LAN\'s DHCP server',
        'takt serve --provision 10.0.0.1/24 --dhcp full --dhcp-range 10.0.0.100-10.0.0.200   # ... as the boot network\'s DHCP server',
        'takt serve --oidc-issuer https://login.example.org/realms/ops --oidc-client-id takt --oidc-client-secret-file /etc/takt/oidc.secret   # single sign-on',
      ),
    )
    .action(async (o: ServeCliOptions) => {
      const { serve } = await import('./serve.js');
      let server: Awaited<ReturnType<typeof serve>>;
      try {
        server = await serve(o);
      } catch (err) {
        // A start that fails half-way may have opened sockets or timers: say why, then leave for sure.
        process.exit(report(err));
      }
      let closing = false;
      const shutdown = async () => {
        if (closing) return;
        closing = true;
        process.stderr.write('takt: stopping\n');
        await server.close();
        process.exit(0);
      };
      process.on('SIGINT', () => void shutdown());
      process.on('SIGTERM', () => void shutdown());
    });

  const agent = program
    .command('agent')
    .description('run the agent for one machine: claims its jobs, runs them with bash, reports results')
    .option('--dir <dir>', 'agent home: state, job work dirs, helper commands', '/var/lib/takt-agent')
    .option('--root <dir>', 'what scripts see as $TAKT_ROOT (the machine root; a sandbox dir for local machines)', '/')
    .option('--sandbox <dir>', 'the scripts\' side: job work dirs, helper commands, HOME and TMPDIR (default: --dir)')
    .option('--run-as <uid:gid>', 'run scripts as this user and group, with a clean environment (the agent must be root)')
    .option('--ca <file>', 'PEM CA certificate the https endpoint must chain to; only it is trusted (env TAKT_CA_FILE)', process.env.TAKT_CA_FILE)
    .option('--token-file <file>', 'read the machine token from this file (env TAKT_TOKEN_FILE); keeps it off command lines', process.env.TAKT_TOKEN_FILE)
    .option(
      '--chaos <spec>',
      'inject faults to test a fleet\'s invariants: fail=0.1,latency=200ms,drop=0.05,drop-for=3s,die=0.02,seed=7 (env TAKT_AGENT_CHAOS; local machines inherit it from their endpoint)',
      process.env.TAKT_AGENT_CHAOS,
    )
    .addHelpText(
      'after',
      examples(
        'takt agent --endpoint https://takt.example.org:8443 --token-file /var/lib/takt-agent/token --ca /var/lib/takt-agent/ca.pem',
        'takt agent join --help      # how a host joins (the line `takt machines join` prints runs it)',
      ),
    )
    .option('--report-facts', "report this host's facts (inventory) to the endpoint when the agent starts (joined hosts do)", process.env.TAKT_REPORT_FACTS === '1')
    .action(async (o: { dir: string; root: string; chaos?: string; sandbox?: string; runAs?: string; ca?: string; tokenFile?: string; reportFacts?: boolean }) => {
      // --endpoint and --token are the global options, as for every other command.
      const endpoint = globals().endpoint ?? process.env.TAKT_ENDPOINT;
      const { readFileSync } = await import('node:fs');
      const readFlagFile = (file: string, flag: string) => {
        try {
          return readFileSync(file, 'utf8');
        } catch (err) {
          throw new TaktError('bad_request', `${flag} ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
        }
      };
      const token = o.tokenFile ? readFlagFile(o.tokenFile, '--token-file').trim() : (globals().token ?? process.env.TAKT_TOKEN);
      const ca = o.ca ? readFlagFile(o.ca, '--ca') : undefined;
      if (!endpoint) throw new UsageError('the agent needs the endpoint URL: --endpoint or TAKT_ENDPOINT');
      if (!token) throw new UsageError('the agent needs its machine token: --token-file, --token or TAKT_TOKEN');
      const { runAgent } = await import('../agent/agent.js');
      const { parseChaos } = await import('../agent/chaos.js');
      const chaos = o.chaos ? parseChaos(o.chaos) : undefined;
      const { parseRunAs } = await import('../agent/sandbox.js');
      const runAs = o.runAs ? parseRunAs(o.runAs) : undefined;
      if (runAs && process.getuid?.() !== 0) throw new TaktError('bad_request', '--run-as needs the agent to run as root (it starts scripts as another user)');
      const ac = new AbortController();
      process.on('SIGINT', () => ac.abort());
      process.on('SIGTERM', () => ac.abort());
      const { VERSION } = await import('./version.js');
      if (o.reportFacts) {
        const { reportFacts } = await import('../agent/register.js');
        const { jsonLineLog } = await import('../agent/log.js');
        void reportFacts({ endpoint, ...(ca ? { ca } : {}) }, token, jsonLineLog, ac.signal, undefined, VERSION);
      }
      const code = await runAgent({ endpoint, token, dir: o.dir, ...(ca ? { ca } : {}), ...(o.tokenFile ? { tokenFile: o.tokenFile } : {}), root: o.root, version: VERSION, ...(chaos ? { chaos } : {}), ...(o.sandbox ? { sandbox: o.sandbox } : {}), ...(runAs ? { runAs } : {}) }, ac.signal);
      process.exit(code);
    });

  const { agentJoinCommands } = await import('./agent-join.js');
  agentJoinCommands(agent, globals);

  if (opts.only === 'agent') return program;
  const { register } = await import('./commands.js');
  register(program, globals);
  const { completionCommand } = await import('./completion.js');
  completionCommand(program);

  addAliases(program);
  return program;
}

/** Global options that take a value as the next argument (`--endpoint URL`), for {@link commandOf}. */
export const VALUE_OPTIONS: ReadonlySet<string> = new Set(['--endpoint', '--token', '-o', '--output']);

/**
 * The top-level command `argv` (process.argv: node, script, args…) runs: its first argument that is
 * neither an option nor a global option's value; undefined for none (`takt --help`).
 */
export function commandOf(argv: readonly string[]): string | undefined {
  const args = argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') return args[i + 1];
    if (VALUE_OPTIONS.has(a)) {
      i++;
      continue;
    }
    if (!a.startsWith('-')) return a;
  }
  return undefined;
}

/** The exit code of an error (usage.ts EXIT), for report() and commands that report several outcomes. */
export function exitCodeOf(err: unknown, usage = err instanceof UsageError): number {
  if (usage) return EXIT.usage;
  if (err instanceof NetworkError) return EXIT.network;
  if (!(err instanceof TaktError)) return EXIT.failed;
  return err.code === 'not_found' ? EXIT.notFound : err.code === 'unauthorized' || err.code === 'forbidden' ? EXIT.unauthorized : EXIT.failed;
}

/** What to try for a network failure: TLS trust and names are not "is the endpoint running?". */
function networkHint(message: string): string {
  if (/altnames|does not match certificate/i.test(message)) {
    return 'the endpoint\'s certificate does not name the address you used: use a name or address it has (its log lists them), or add one with `takt serve --tls-san NAME`';
  }
  if (/self[- ]signed|unable to (verify|get local issuer)|certificate/i.test(message)) {
    return 'the endpoint\'s certificate is not trusted: point TAKT_CA_FILE at its CA (`<data>/tls/ca.pem` on the endpoint; compare the fingerprint `takt serve` logs)';
  }
  if (/socket hang up|ECONNRESET/i.test(message)) {
    return 'the connection was dropped: if the endpoint listens with TLS there, use https:// (plain HTTP is served on loopback only)';
  }
  return 'is the endpoint running? start one with `takt serve`, or point --endpoint / TAKT_ENDPOINT at it';
}

/** The argument names that name a machine, whatever the command's resource (`plan <machine>`, `approvals approve <machine>`). */
const MACHINE_ARGS = new Set(['machine', 'machines']);
/** The argument names that name an object of the command's own resource (`jobs get <id>`, `credentials get <name>`). */
const OWN_ARGS = new Set(['name', 'id', 'seq', 'job', 'pack', 'pack@version', 'names']);

/**
 * `-o name` prints `machines/web-1`, and `takt machines list -o name | xargs -n1 takt machines get` must
 * work as it does with kubectl: an argument that names an object takes the `KIND/NAME` form too. The
 * kind is stripped when it is the argument's kind; another kind (`jobs/j-1` given to `machines get`) is
 * refused, naming both, rather than looked up as a name that cannot exist. Mutates the parsed
 * arguments in place, before the action sees them. Throws UsageError on a mismatched kind.
 */
export function stripKinds(action: Command, program: Command, resource: string): void {
  const kinds = new Set(['machines', ...program.commands.map((c) => c.name())]);
  const args = action.registeredArguments;
  const values = action.processedArgs as unknown[];
  args.forEach((arg, i) => {
    const expected = MACHINE_ARGS.has(arg.name()) ? 'machines' : OWN_ARGS.has(arg.name()) ? resource : undefined;
    if (expected === undefined) return;
    const strip = (v: unknown): unknown => {
      if (typeof v !== 'string') return v;
      const m = /^([a-z][a-z-]*)\/(.+)$/.exec(v);
      if (!m || !kinds.has(m[1]!)) return v;
      if (m[1] === expected) return m[2];
      throw new UsageError(`'${v}' names one of ${m[1]}, but \`${commandPath(action)}\` takes ${expected === 'machines' ? 'a machine' : `one of ${expected}`}: give ${expected}/NAME or just NAME`);
    };
    values[i] = Array.isArray(values[i]) ? (values[i] as unknown[]).map(strip) : strip(values[i]);
  });
  // `--machine machines/web-1` (jobs list, workorders create, run) too.
  const v = action.getOptionValue('machine') as unknown;
  if (v !== undefined && action.options.some((o) => o.attributeName() === 'machine')) {
    const strip = (x: unknown): unknown => {
      if (typeof x !== 'string') return x;
      const m = /^([a-z][a-z-]*)\/(.+)$/.exec(x);
      if (!m || !kinds.has(m[1]!)) return x;
      if (m[1] === 'machines') return m[2];
      throw new UsageError(`--machine '${x}' names one of ${m[1]}, not a machine: give machines/NAME or just NAME`);
    };
    action.setOptionValue('machine', Array.isArray(v) ? v.map(strip) : strip(v));
  }
}

/** `takt machines get`, for messages. */
function commandPath(cmd: Command): string {
  const words: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) words.unshift(c.name());
  return words.join(' ');
}

/** The command whose action runs (set before it runs), so an error can be said in its flags' words. */
let running: Command | undefined;

/**
 * The endpoint names a bad field by its API path (`/count`, query parameter `seq`); the operator typed a
 * flag or an argument. When the running command has an option (`--count`) or argument (`<seq>`) of that
 * name, the message says that instead. Other errors are returned as they are.
 */
export function inFlagWords(err: TaktError, cmd: Command | undefined = running): TaktError {
  const field = err.path?.replace(/^\//, '');
  if (!cmd || !field || field.includes('/')) return err;
  const option = cmd.options.find((o) => o.long && o.attributeName() === field.replace(/_(\w)/g, (_, c: string) => c.toUpperCase()));
  const arg = cmd.registeredArguments.find((a) => a.name() === field);
  const flag = option?.long ?? (arg ? `<${arg.name()}>` : undefined);
  if (!flag) return err;
  const message = err.message
    .replace(new RegExp(`query parameter '${field}'`, 'g'), flag)
    .replace(new RegExp(`^/?${field}\\b`), flag)
    .replace(new RegExp(`field '${field}'`, 'g'), flag);
  return new TaktError(err.code, message.includes(flag) ? message : `${flag}: ${message}`, err.details !== undefined ? { details: err.details } : {});
}

/**
 * The problems of a refused import or rewind (`details.problems`, see engine/portable.ts ImportProblem), one
 * line each: `file:line:col: message` when the position is known, else `file /json/pointer: message`.
 */
export function problemLines(details: unknown): string[] {
  const list = (details as { problems?: unknown } | undefined)?.problems;
  // One problem is the error's message already.
  if (!Array.isArray(list) || list.length < 2) return [];
  return list
    .filter((p): p is { file: string; path?: string; line?: number; col?: number; message: string } => typeof p === 'object' && p !== null && typeof (p as { file?: unknown }).file === 'string' && typeof (p as { message?: unknown }).message === 'string')
    .map((p) => `  ${p.file}${p.line !== undefined ? `:${p.line}:${p.col}` : ''}${p.path ? ` ${p.path}` : ''}: ${p.message}`);
}

/**
 * Says `err` on stderr (one line that says what to fix, with hints) and answers the exit code
 * (usage.ts EXIT: 2 for bad usage, Commander's included; 3 network; 4 not found; 5 refused; else 1).
 */
export function report(err: unknown): number {
  // Commander has said it already (or printed the help or version asked for).
  if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
  const usage = err instanceof UsageError;
  if (err instanceof TaktError) err = inFlagWords(err);
  if (err instanceof TaktError) {
    process.stderr.write(`${pc.red('takt:')} ${shownErr(err.message)}${err.path && !err.message.includes(err.path) ? pc.dim(shownErr(` (at ${err.path})`)) : ''}\n`);
    const diags = (err.details as { diagnostics?: Array<{ file: string; line: number; col: number; message: string }> } | undefined)?.diagnostics;
    for (const d of diags ?? []) process.stderr.write(shownErr(`${d.file}:${d.line}:${d.col}: ${d.message}`) + '\n');
    // An all-or-nothing refusal (import, rewind) names every problem: one line each, as lint's diagnostics.
    for (const line of problemLines(err.details)) process.stderr.write(shownErr(line) + '\n');
    const hint = err.code === 'unauthorized' ? savedLoginHint() : undefined;
    if (hint) process.stderr.write(`  ${shownErr(hint)}\n`);
    return exitCodeOf(err, usage);
  }
  if (err instanceof NetworkError) {
    process.stderr.write(`${pc.red('takt:')} ${shownErr(err.message)}\n  ${networkHint(err.message)}\n`);
    return EXIT.network;
  }
  process.stderr.write(`${pc.red('takt: unexpected error:')} ${shownErr((err as Error)?.message ?? String(err))}\n`);
  return EXIT.failed;
}
