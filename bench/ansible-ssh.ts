/**
 * Issue #11's comparison: the same five-task pipeline on N hosts (default 20) that are reached over the
 * network, three ways, alternating in one run:
 *
 *   ansible  ansible-playbook over SSH the way most operators run it: pipelining, ControlMaster/
 *            ControlPersist (Ansible's defaults), forks = hosts, host keys pinned in known_hosts
 *   ssh      takt agentless: the endpoint drives the same hosts over SSH (`takt machines create … --ssh`)
 *   agents   takt with an agent on every host, reaching the endpoint over TLS
 *
 * The hosts are network namespaces running Debian's sshd (bench/lib/sshhosts.ts). Goals: agentless ≥ 10×
 * faster than Ansible over SSH, agents ≥ 30×.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import type { ApiClient } from '../src/client/http.js';
import { readPackDir } from '../src/content/files.js';
import { ensureAnsible, FLOOR_STEPS, measureFloor, PACK_DIR, PLAYBOOK_DIR, TASKS, taktRun, verifyTakt, type CpuSplit } from './ansible.js';
import type { Flags } from './lib/args.js';
import { adminApi, serverPid, withEndpoint, type Endpoint } from './lib/endpoint.js';
import { busyCoreSec, cpuMark } from './lib/load.js';
import { agentsReady, createMachines, MachineWatch, type CreatedMachine } from './lib/machines.js';
import { installPack } from './lib/packs.js';
import { log } from './lib/progress.js';
import type { BenchReport, Row } from './lib/report.js';
import { run } from './lib/spawn.js';
import { closeMasters, spawnAsync, sshFleetUnavailable, startSshHosts, type SshFleet } from './lib/sshhosts.js';
import { median, round } from './lib/stats.js';

const SIDES = ['ansible', 'ssh', 'agents'] as const;
type Side = (typeof SIDES)[number];
const GOAL_SSH = 10;
const GOAL_AGENTS = 30;
/** The credential the agentless machines use (`takt credentials add KEYREF --ssh-key FILE`). */
const KEYREF = 'bench-ssh-key';

/** One takt side, ready to run: its machines, and the processes whose CPU it reports. */
interface TaktSide {
  machines: CreatedMachine[];
  pids: { server: number; agents: number[] };
  /** Throws when a run did not do the work. */
  verify: () => Promise<void>;
}

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

export async function ansibleSshBench(flags: Flags, profileDir?: string): Promise<BenchReport> {
  const reps = flags.int('reps', 3);
  const hosts = flags.int('hosts', 20);
  const only = flags.string('only');
  flags.done();
  if (only !== undefined && !SIDES.includes(only as Side)) throw new Error(`--only takes ${SIDES.join(', ')} (got '${only}')`);
  if (hosts > 253) throw new Error(`--hosts: at most 253 (one /24 of SSH hosts), got ${hosts}`);
  const sides: Side[] = only ? [only as Side] : [...SIDES];
  const unavailable = sshFleetUnavailable();
  if (unavailable) throw new Error(`this bench needs network namespaces and sshd: ${unavailable}`);

  const ansibleVersion = sides.includes('ansible') ? ensureAnsible() : 'not run';
  const work = mkdtempSync(join(tmpdir(), 'takt-bench-ansible-ssh-'));
  let fleet: SshFleet | undefined;
  const agentSweep = new NetnsSweep();
  try {
    const { floorMs, nodeFloors, shellFloors } = await measureFloor(work, hosts);

    log(`starting ${hosts} SSH hosts (network namespaces in 10.252.0.0/16, each running sshd -D)…`);
    // Hosts share this box's filesystem: each gets its own root, which sshd hands to every session as
    // TAKT_ROOT (the takt pack writes under $TAKT_ROOT; the playbook under bench_out/<host>).
    const rootOf = (host: string) => join(work, 'ssh-root', host);
    fleet = await startSshHosts({ count: hosts, dir: join(work, 'hosts'), env: (h) => ({ TAKT_ROOT: rootOf(h.name) }) });
    const fl = fleet;
    log(`  ${hosts} hosts on ${fl.gateway.replace(/\.1$/, '.0/24')}`);
    const sshFloors: number[] = [];
    const floorCp = join(work, 'cp-floor');
    mkdirSync(floorCp);
    await Promise.all(fl.hosts.map((h) => sshOk(fl, h, floorCp, 'true')));
    for (let i = 0; i < 3; i++) sshFloors.push(await sshFloorRun(fl, floorCp, join(work, `floor-ssh-${i}`)));
    log(`  floor ${round(floorMs)} ms (Node spawning bash ${round(median(nodeFloors))} ms, one bash forking ${round(median(shellFloors))} ms); over warm SSH ${round(median(sshFloors))} ms`);

    const ansibleSetup = sides.includes('ansible') ? writeAnsibleSetup(join(work, 'ansible'), fl) : null;
    const ms: Record<Side, number[]> = { ansible: [], ssh: [], agents: [] };
    const boxCpu: Record<Side, number[]> = { ansible: [], ssh: [], agents: [] };
    const taktCpu: Record<'ssh' | 'agents', CpuSplit[]> = { ssh: [], agents: [] };
    const ansibleCold: number[] = [];
    let sshCold = NaN;
    let sshSkipped: string | null = null;

    await withEndpoint({ profileDir, profileAgents: 5 }, async (ep) => {
      const api = adminApi(ep);
      await installPack(api, await readPackDir(PACK_DIR));
      const ready: Partial<Record<'ssh' | 'agents', TaktSide>> = {};
      if (sides.includes('agents')) agentSweep.watch(ep.data);
      try {
        if (sides.includes('agents')) {
          log(`starting ${hosts} agents (netns broker: one namespace each, over TLS), then waiting for each one's first claim to be answered (~25 s)…`);
          ready.agents = await startAgents(ep, api, hosts, agentSweep);
        }
        if (sides.includes('ssh')) {
          const s = await sshMachines(ep, api, fl, rootOf);
          if ('skipped' in s) {
            sshSkipped = s.skipped;
            log(`  takt agentless over SSH: SKIPPED — ${s.skipped}`);
          } else ready.ssh = s;
        }
        const watch = new MachineWatch(api);
        await watch.start();
        try {
          if (ready.ssh) {
            // The first run opens the endpoint's SSH connections and pins the host keys: the cold run.
            log('  takt agentless: first (cold) run, opening the SSH connections…');
            sshCold = (await taktRun(api, watch, ready.ssh.machines, ready.ssh.pids)).ms;
            await ready.ssh.verify();
            log(`  takt agentless cold: ${(sshCold / 1000).toFixed(3)} s`);
          }
          for (let rep = 0; rep < reps; rep++) {
            // Alternate the order, so no side always runs on a machine warmed (or tired) by another.
            const order = rep % 2 === 0 ? sides : [...sides].reverse();
            for (const side of order) {
              if (side === 'ansible') {
                const cp = join(work, `cp-${rep}`);
                mkdirSync(cp);
                // Cold: a fresh ControlPath directory, so every host gets a new SSH connection. It leaves
                // the masters up (ControlPersist=60s): the warm run right after reuses them.
                const cold = await ansibleSshRun(ansibleSetup!, join(work, `ansible-cold-${rep}`), cp);
                ansibleCold.push(cold.ms);
                const masters = readdirSync(cp).length;
                if (masters < hosts) throw new Error(`after the cold run only ${masters} of ${hosts} SSH masters are up in ${cp}`);
                const warm = await ansibleSshRun(ansibleSetup!, join(work, `ansible-warm-${rep}`), cp);
                ms.ansible.push(warm.ms);
                boxCpu.ansible.push(warm.box);
                log(`  rep ${rep + 1}/${reps} ansible: ${(warm.ms / 1000).toFixed(2)} s warm (${(cold.ms / 1000).toFixed(2)} s cold)`);
              } else {
                const s = ready[side];
                if (!s) continue;
                const r = await taktRun(api, watch, s.machines, s.pids);
                await s.verify();
                ms[side].push(r.ms);
                taktCpu[side].push(r.cpu);
                boxCpu[side].push(r.cpu.box);
                log(`  rep ${rep + 1}/${reps} takt ${side === 'ssh' ? 'agentless' : 'agents'}: ${(r.ms / 1000).toFixed(3)} s`);
              }
            }
          }
        } finally {
          await watch.stop();
        }
      } finally {
        // A netns machine's namespace goes with the machine, not with the endpoint: delete them first
        // (all of them, as listed: a create that failed half-way made some that `ready` does not know).
        if (sides.includes('agents')) await deleteNetnsMachines(api, agentSweep);
      }
    });

    return report({ sides, hosts, reps, ansibleVersion, floorMs, nodeFloors, shellFloors, sshFloors, ms, boxCpu, taktCpu, ansibleCold, sshCold, sshSkipped });
  } finally {
    agentSweep.run();
    // The ControlMasters ansible-playbook and the floor left running (ControlPersist), then the hosts.
    for (const d of existsSync(work) ? readdirSync(work).filter((f) => f.startsWith('cp-')) : []) await closeMasters(join(work, d));
    await fleet?.close();
    rmSync(work, { recursive: true, force: true });
  }
}

interface Measured {
  sides: Side[];
  hosts: number;
  reps: number;
  ansibleVersion: string;
  floorMs: number;
  nodeFloors: number[];
  shellFloors: number[];
  sshFloors: number[];
  ms: Record<Side, number[]>;
  boxCpu: Record<Side, number[]>;
  taktCpu: Record<'ssh' | 'agents', CpuSplit[]>;
  ansibleCold: number[];
  sshCold: number;
  sshSkipped: string | null;
}

function report(m: Measured): BenchReport {
  const jobs = TASKS * m.hosts;
  const med = (v: number[]) => (v.length ? median(v) : NaN);
  const a = med(m.ms.ansible);
  const s = med(m.ms.ssh);
  const g = med(m.ms.agents);
  const perTask = (x: number) => (x - m.floorMs) / jobs;
  const cpuPerTask = (v: number[]) => (med(v) * 1000) / jobs;
  const split = (k: 'ssh' | 'agents') => {
    const c = m.taktCpu[k];
    const one = (f: keyof CpuSplit) => round((med(c.map((x) => x[f])) * 1000) / jobs);
    return `${one('server')} / ${one('agents')} / ${one('scripts')} ms`;
  };
  const sec = (x: number, digits: number) => `${(x / 1000).toFixed(digits)} s`;
  const rows: Row[] = [
    { metric: 'ansible over SSH, warm (median)', value: sec(a, 2) },
    { metric: 'ansible over SSH, cold (median)', value: sec(med(m.ansibleCold), 2) },
    { metric: 'takt agentless over SSH (median)', value: m.sshSkipped ? 'skipped' : sec(s, 3) },
    { metric: 'takt agentless, first run (cold)', value: m.sshSkipped ? 'skipped' : sec(m.sshCold, 3) },
    { metric: 'takt agents over TLS (median)', value: sec(g, 3) },
    { metric: 'speed-up ansible / takt agentless', value: m.sshSkipped ? 'skipped' : `${(a / s).toFixed(1)}×`, goal: `≥ ${GOAL_SSH}×`, met: m.sshSkipped ? null : a / s >= GOAL_SSH },
    { metric: 'speed-up ansible / takt agents', value: `${(a / g).toFixed(1)}×`, goal: `≥ ${GOAL_AGENTS}×`, met: a / g >= GOAL_AGENTS },
    { metric: `floor: ${jobs} bash scripts, ${m.hosts} hosts in parallel`, value: `${round(m.floorMs)} ms` },
    { metric: '  Node spawning them / one bash forking them', value: `${round(med(m.nodeFloors))} / ${round(med(m.shellFloors))} ms` },
    { metric: '  the same as plain ssh commands over warm masters', value: `${round(med(m.sshFloors))} ms` },
    { metric: 'ansible overhead per task', value: `${round(perTask(a))} ms` },
    { metric: 'takt agentless overhead per task', value: m.sshSkipped ? 'skipped' : `${round(perTask(s), 3)} ms` },
    { metric: 'takt agents overhead per task', value: `${round(perTask(g), 3)} ms` },
    { metric: 'box CPU per task: ansible / agentless / agents', value: `${SIDES.map((k) => (m.boxCpu[k].length ? round(cpuPerTask(m.boxCpu[k])) : '-')).join(' / ')} ms` },
    { metric: 'takt agentless CPU per job: endpoint / agents / scripts', value: m.sshSkipped ? 'skipped' : split('ssh') },
    { metric: 'takt agents CPU per job: endpoint / agents / scripts', value: split('agents') },
  ];
  return {
    // A side not run (--only) leaves NaN behind: drop those rows rather than print NaN.
    rows: rows.filter((r) => !/NaN/.test(String(r.value))),
    data: {
      hosts: m.hosts,
      tasks: TASKS,
      reps: m.reps,
      ansibleVersion: m.ansibleVersion,
      ansibleMs: m.ms.ansible,
      ansibleColdMs: m.ansibleCold,
      sshMs: m.ms.ssh,
      sshColdMs: m.sshCold,
      sshSkipped: m.sshSkipped,
      agentsMs: m.ms.agents,
      medianAnsibleMs: a,
      medianSshMs: s,
      medianAgentsMs: g,
      ratioSsh: a / s,
      ratioAgents: a / g,
      floorMs: m.floorMs,
      nodeFloorMs: m.nodeFloors,
      shellFloorMs: m.shellFloors,
      sshFloorMs: m.sshFloors,
      boxCpuSec: m.boxCpu,
      taktCpuSec: m.taktCpu,
    },
    notes: [
      `sides run: ${m.sides.join(', ')}`,
      `hosts: ${m.hosts} network namespaces on one bridge, each running Debian's sshd (PAM, root by key, host keys pinned in known_hosts, a HOME of its own); they share this box's 2 cores and filesystem, so the wire is a veth, not a LAN`,
      ...(m.sides.includes('ansible') ? [`${m.ansibleVersion}: pipelining = True, ssh_args -C -o ControlMaster=auto -o ControlPersist=60s (its defaults), forks = hosts, no fact gathering; "warm" runs start with every host's ControlMaster already connected (the cold run just before opened them, in a fresh ControlPath directory), "cold" runs open a new SSH connection per host`] : []),
      ...(m.sides.includes('ssh') && !m.sshSkipped ? ['takt agentless: the first run opens the endpoint\'s SSH connections and pins host keys (cold); the timed runs reuse them'] : []),
      ...(m.sides.includes('agents') ? ['takt agents: netns-broker machines — a real agent per namespace reaching the endpoint over TLS on a bridge, the protocol a joined host uses; they run scripts as a sandbox user, which a joined agent does not'] : []),
      'per-task overhead = (wall time - floor) / (tasks × hosts), the floor being the same shell work run locally by bash, hosts in parallel',
      'box CPU: core-seconds the whole box was busy during the timed run (SSH servers and clients, endpoint, agents, scripts — and any other work on the box), per task',
      ...(m.sshSkipped ? [`takt agentless over SSH was skipped: ${m.sshSkipped}`] : []),
    ],
  };
}

// ---- Ansible over SSH ----

interface AnsibleSetup {
  dir: string;
  inventory: string;
  config: string;
  hostNames: string[];
}

/**
 * Inventory and ansible.cfg for the fleet. The connection settings are Ansible's own defaults for SSH
 * (`-C -o ControlMaster=auto -o ControlPersist=60s`) with host keys pinned; pipelining on and forks =
 * hosts are the usual speed settings. The ControlPath directory is chosen per run (cold or warm).
 */
function writeAnsibleSetup(dir: string, fleet: SshFleet): AnsibleSetup {
  mkdirSync(dir, { recursive: true });
  const inventory = join(dir, 'inventory.ini');
  writeFileSync(inventory, `[bench]\n${fleet.hosts.map((h) => `${h.name} ansible_host=${h.address} ansible_port=${h.port}`).join('\n')}\n`);
  const config = join(dir, 'ansible.cfg');
  writeFileSync(
    config,
    [
      '[defaults]',
      `forks = ${fleet.hosts.length}`,
      'remote_user = root',
      `private_key_file = ${fleet.clientKey}`,
      'host_key_checking = True',
      'retry_files_enabled = False',
      'interpreter_python = /usr/bin/python3',
      `remote_tmp = ${join(dir, 'remote-tmp')}`,
      '',
      '[ssh_connection]',
      'pipelining = True',
      `ssh_args = -C -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=${fleet.knownHosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes`,
      '',
    ].join('\n'),
  );
  return { dir, inventory, config, hostNames: fleet.hosts.map((h) => h.name) };
}

/** One timed ansible-playbook run over a fresh output tree, its SSH masters in `controlDir`. */
async function ansibleSshRun(s: AnsibleSetup, runDir: string, controlDir: string): Promise<{ ms: number; box: number }> {
  const out = join(runDir, 'hosts');
  mkdirSync(out, { recursive: true });
  const env = {
    ...process.env,
    ANSIBLE_CONFIG: s.config,
    ANSIBLE_HOME: join(s.dir, 'home'),
    ANSIBLE_LOCAL_TEMP: join(runDir, 'tmp'),
    ANSIBLE_SSH_CONTROL_PATH_DIR: controlDir,
    ANSIBLE_NOCOLOR: '1',
  };
  const box0 = cpuMark();
  const r = await run('ansible-playbook', ['-i', s.inventory, join(PLAYBOOK_DIR, 'playbook.yml'), '-e', `bench_out=${out}`], { env, cwd: s.dir, timeout: 600_000 });
  const box = busyCoreSec(box0);
  if (r.code !== 0) throw new Error(`ansible-playbook exited ${r.code}:\n${r.output.slice(-3000)}`);
  for (const h of s.hostNames) {
    for (const f of ['motd', 'build']) {
      if (!existsSync(join(out, h, 'srv', 'app', f))) throw new Error(`ansible did not write ${h}/srv/app/${f}`);
    }
  }
  return { ms: r.ms, box };
}

// ---- the SSH floor ----

async function sshOk(fleet: SshFleet, h: SshFleet['hosts'][number], controlDir: string, command: string): Promise<void> {
  const r = await spawnAsync('ssh', [...fleet.sshArgs(h, controlDir), command]);
  if (r.code !== 0) throw new Error(`ssh ${h.name} ${command}: exit ${r.code}: ${r.output.trim()}`);
}

/**
 * What any tool that runs commands over SSH pays at least: the five steps as five `ssh` commands per host
 * over an already connected ControlMaster, one after the other, hosts in parallel.
 */
async function sshFloorRun(fleet: SshFleet, controlDir: string, dir: string): Promise<number> {
  const t0 = performance.now();
  await Promise.all(
    fleet.hosts.map(async (h) => {
      for (const step of FLOOR_STEPS) await sshOk(fleet, h, controlDir, `D=${q(join(dir, h.name))} H=${q(h.name)} bash -e -c ${q(step)}`);
    }),
  );
  const ms = performance.now() - t0;
  const missing = fleet.hosts.filter((h) => !existsSync(join(dir, h.name, 'srv', 'app', 'build')));
  if (missing.length) throw new Error(`ssh floor: ${missing.length} hosts without a build file`);
  return ms;
}

// ---- takt agentless over SSH ----

/** What a CLI or endpoint without agentless SSH answers to its flags and fields. */
const UNKNOWN = /unknown (option|command|field)|additional ?propert|must NOT have additional|not allowed/i;

/**
 * The agentless side: the fleet's key as a credential, one machine per host driven over SSH. Skipped,
 * with the reason, when this takt does not have agentless SSH (no `credentials` command, no `--ssh` on
 * `machines create`, or an endpoint that refuses the fields); any other failure is an error.
 *
 * The hosts share this box's filesystem, so each machine gets its own TAKT_ROOT (`--ssh-root`) and takt
 * directory (`--ssh-dir`) on the host when the CLI offers those flags; without them sshd's `SetEnv
 * TAKT_ROOT` is the fallback, and `verify` checks the files landed in the host's own root either way.
 */
async function sshMachines(ep: Endpoint, api: ApiClient, fleet: SshFleet, rootOf: (host: string) => string): Promise<TaktSide | { skipped: string }> {
  const top = await ep.cli(['--help']);
  if (!/^\s+credentials\b/m.test(top.stdout)) return { skipped: 'this takt has no agentless SSH yet (`takt credentials` is not a command)' };
  const help = (await ep.cli(['machines', 'create', '--help'])).stdout;
  if (!/--ssh\b/.test(help)) return { skipped: 'this takt has no agentless SSH yet (`takt machines create` has no --ssh)' };
  const refused = (what: string, r: { code: number; stdout: string; stderr: string }) => {
    const msg = `${what} exited ${r.code}: ${(r.stderr || r.stdout).trim()}`;
    if (UNKNOWN.test(r.stderr + r.stdout)) return { skipped: `the endpoint does not know agentless SSH: ${msg}` };
    throw new Error(msg);
  };
  const add = await ep.cli(['credentials', 'add', KEYREF, '--ssh-key', fleet.clientKey]);
  if (add.code !== 0) return refused(`takt credentials add ${KEYREF} --ssh-key FILE`, add);
  log(`creating ${fleet.hosts.length} agentless machines (takt machines create NAME --ssh root@ADDR:22 --ssh-key ${KEYREF})…`);
  const machines: Array<CreatedMachine & { host: string }> = [];
  for (const h of fleet.hosts) {
    const name = `ssh-${h.name}`;
    const args = ['machines', 'create', name, '--ssh', `${fleet.user}@${h.address}:${h.port}`, '--ssh-key', KEYREF];
    if (/--ssh-root\b/.test(help)) args.push('--ssh-root', rootOf(h.name));
    if (/--ssh-dir\b/.test(help)) args.push('--ssh-dir', join(h.dir, 'takt-ssh'));
    const r = await ep.cli(args);
    if (r.code !== 0) return refused(`takt machines create ${name} --ssh …`, r);
    machines.push({ ...(await api.get<CreatedMachine>(`/machines/${name}`)), host: h.name });
  }
  return {
    machines,
    // The endpoint does the SSH work itself: no agent processes. The hosts' side is in "box CPU".
    pids: { server: serverPid(ep), agents: [] },
    verify: async () => {
      for (const m of machines) {
        const got = await api.get<{ params: Record<string, unknown> }>(`/machines/${m.id}`);
        const id = String(got.params.build_id ?? '');
        if (!id.startsWith(`build-${m.name}-`)) throw new Error(`agentless machine ${m.name}: build_id is '${id}', not build-${m.name}-…`);
        const app = join(rootOf(m.host), 'srv', 'app');
        const build = existsSync(join(app, 'build')) ? readFileSync(join(app, 'build'), 'utf8').trim() : '';
        if (build !== id) throw new Error(`agentless machine ${m.name}: ${join(app, 'build')} holds '${build}', not its build id '${id}' (did its scripts get this host's TAKT_ROOT?)`);
      }
    },
  };
}

// ---- takt agents over TLS ----

/**
 * The agents side. For now netns-broker machines: the endpoint makes one namespace per machine and runs a
 * real agent in it that reaches the endpoint over TLS on a bridge address — the protocol a joined host's
 * agent speaks. To switch to real joined agents, replace this function: create the machines with
 * `takt machines join`, run the printed one-liner in each of the fleet's namespaces (`ip netns exec`), and
 * return the same shape (machines, agent pids, a verify over their $TAKT_ROOT).
 */
async function startAgents(ep: Endpoint, api: ApiClient, count: number, sweep: NetnsSweep): Promise<TaktSide> {
  const machines = await createMachines(api, { prefix: 'ag', count, broker: 'netns' });
  sweep.add(machines.map((m) => m.id));
  await agentsReady(ep.data, machines);
  const agents = machines.map((m) => Number(readFileSync(join(ep.data, 'machines', m.id, 'agent.pid'), 'utf8')));
  return { machines, pids: { server: serverPid(ep), agents }, verify: async () => verifyTakt(ep.data, machines) };
}

async function deleteNetnsMachines(api: ApiClient, sweep: NetnsSweep): Promise<void> {
  const listed = await api.get<{ items: CreatedMachine[] }>('/machines', { broker: 'netns', limit: 1000 }).catch(() => ({ items: [] as CreatedMachine[] }));
  sweep.add(listed.items.map((m) => m.id));
  const failed: string[] = [];
  for (const m of listed.items) await api.delete(`/machines/${m.id}`).catch(() => failed.push(m.name));
  if (failed.length) log(`  could not delete ${failed.length} netns machines through the API (${failed.join(', ')}); removing their namespaces directly`);
}

/**
 * Belt and braces for the netns broker's network: when the bench fails or is interrupted before the
 * machines are deleted, their namespaces and the bridge (named with the endpoint's id and recorded in
 * `<data>/netns.json`, see src/brokers/netns.ts) would outlive the endpoint. Removes what is left, on
 * the normal way out and, synchronously, on process exit.
 */
class NetnsSweep {
  private data: string | null = null;
  private readonly ids: string[] = [];
  private readonly onExit = () => this.run();

  watch(data: string): void {
    this.data = resolve(data);
    process.once('exit', this.onExit);
  }

  add(ids: string[]): void {
    this.ids.push(...ids);
  }

  run(): void {
    if (!this.data) return;
    process.removeListener('exit', this.onExit);
    const present = new Set(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8', timeout: 10_000 }).stdout?.split('\n').map((l) => l.split(' ')[0]) ?? []);
    const stateFile = join(this.data, 'netns.json');
    const state = existsSync(stateFile) ? (JSON.parse(readFileSync(stateFile, 'utf8')) as { bridge?: string; namespaces?: Record<string, string> }) : {};
    for (const id of this.ids) {
      const ns = state.namespaces?.[id];
      if (ns && present.has(ns)) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10_000 });
    }
    const bridge = state.bridge ?? `tkb-${createHash('sha256').update(this.data).digest('hex').slice(0, 8)}`;
    spawnSync('ip', ['link', 'del', bridge], { stdio: 'ignore', timeout: 10_000 });
    this.data = null;
  }
}
