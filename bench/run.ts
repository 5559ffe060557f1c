/**
 * `npm run bench -- <name> [flags]`: runs one bench against a real endpoint, prints its table and writes
 * the numbers to bench/results/<name>-<timestamp>.json. `--profile` also records V8 CPU profiles of the
 * endpoint (and of local agents) and prints where they spent their time.
 */
import { cpus } from 'node:os';
import { join } from 'node:path';
import { ansibleBench } from './ansible.js';
import { ansibleSshBench } from './ansible-ssh.js';
import { bootStormBench } from './boot-storm.js';
import { discoverBench } from './discover.js';
import { dispatchBench } from './dispatch.js';
import { fanoutBench } from './fanout.js';
import { fleetBench } from './fleet.js';
import { imagesBench } from './images.js';
import { logsBench } from './logs.js';
import { Flags, parseArgs } from './lib/args.js';
import { stopAllEndpoints, stoppedOutputs } from './lib/endpoint.js';
import { accountLoad, waitQuiet } from './lib/load.js';
import { printProfile, summariseDir, windowed } from './lib/profile.js';
import { BENCH_DIR, printReport, writeReport, type BenchReport } from './lib/report.js';

type Bench = (flags: Flags, profileDir?: string) => Promise<BenchReport>;

const BENCHES: Record<string, { run: Bench; usage: string }> = {
  ansible: { run: ansibleBench, usage: 'ansible [--reps 3] [--hosts 50]          takt vs Ansible, same 5-task pipeline' },
  'ansible-ssh': { run: ansibleSshBench, usage: 'ansible-ssh [--hosts 20] [--reps 3] [--only ansible|ssh|agents]   Ansible over SSH vs takt agentless vs agents (#11)' },
  'boot-storm': { run: bootStormBench, usage: 'boot-storm [--waves 100,200,300,400] [--range-kib 1024]   N iPXE clients DHCP + script + kernel range against serve --dhcp full (root, netns)' },
  discover: { run: discoverBench, usage: 'discover [--variant gzip,zstd] [--reps 1]   one VM boots the discovery bootenv per initrd compression: /init, DHCP, agent, registered (#13)' },
  dispatch: { run: dispatchBench, usage: 'dispatch [--tasks 200]                   gap between jobs on one machine vs spawning /bin/true' },
  fleet: { run: fleetBench, usage: 'fleet [--machines 10000] [--tasks 10] [--inflight 64] [--store postgres://… [--replicas 1,2,3] | --token admin,scoped [--operator-every 4] [--rounds 1] [--no-control]]   simulated agents over HTTP; with --store: SQLite vs PostgreSQL replicas; with --token: admin vs label-scoped operator token' },
  images: { run: imagesBench, usage: 'images [--clients 20] [--size-mib 256] [--rounds 1]   simultaneous image downloads: MB/s, endpoint CPU per GB, API latency meanwhile (#14)' },
  logs: { run: logsBench, usage: 'logs [--mb 100] [--reps 3] [--jobs 4]      job log ingest with 20 secure values masked vs none' },
  fanout: { run: fanoutBench, usage: 'fanout [--subscribers 100] [--machines 2000] [--tasks 10]   event stream under a fleet run' },
};

function usage(): string {
  return [
    'usage: npm run bench -- <name> [flags] [--profile]',
    ...Object.values(BENCHES).map((b) => `  ${b.usage}`),
    '  profile DIR                              summarise the .cpuprofile files in DIR',
    '--profile writes V8 CPU profiles of the endpoint (and local agents) under bench/results/profiles/.',
  ].join('\n');
}

async function main(): Promise<number> {
  if (process.argv[2] === 'profile') {
    const dir = process.argv[3];
    if (!dir) throw new Error('usage: npm run bench -- profile DIR');
    for (const p of summariseDir(dir)) printProfile(p);
    return 0;
  }
  const args = parseArgs(process.argv.slice(2));
  const bench = BENCHES[args.name];
  if (!bench) {
    process.stderr.write(`${args.name ? `unknown bench '${args.name}'\n` : ''}${usage()}\n`);
    return 2;
  }
  const flags = new Flags(args.flags);
  const profileDir = flags.bool('profile') ? join(BENCH_DIR, 'results', 'profiles', `${args.name}-${new Date().toISOString().replace(/[:.]/g, '-')}`) : undefined;
  const busyBefore = await waitQuiet();
  const load = accountLoad(busyBefore, cpus().length);
  const report = await bench.run(flags, profileDir);
  const l = load();
  report.data.load = l;
  if (l.otherShare > 0.05) {
    report.notes = [...(report.notes ?? []), `other work used ${Math.round(l.otherShare * 100)}% of the machine during this run (${l.otherBusySec.toFixed(0)} core-s): these numbers are pessimistic`];
  }
  if (profileDir) {
    const profiles = summariseDir(profileDir);
    for (const p of profiles) printProfile(p);
    report.data.profiles = profiles.map((p) => ({ ...p, functions: p.functions.slice(0, 25), files: p.files.slice(0, 15) }));
    report.notes = [
      ...(report.notes ?? []),
      `CPU profiles in ${profileDir}; the summaries above count ${windowed() ? 'the timed part of the run only' : 'the whole run'} (npm run bench -- profile ${profileDir} counts everything)`,
    ];
  }
  printReport(args.name, report);
  const file = writeReport(args.name, Object.fromEntries(args.flags), report);
  process.stdout.write(`\nresults: ${file}\n`);
  return 0;
}

// Ctrl-C: stop endpoints and their agents before leaving (agents run in their own process groups).
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    process.stderr.write(`\n${sig}: stopping endpoints and agents…\n`);
    void stopAllEndpoints().finally(() => process.exit(130));
  });
}

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    await stopAllEndpoints();
    for (const out of stoppedOutputs) process.stderr.write(`\n${out}\n`);
    process.stderr.write(`\nbench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
