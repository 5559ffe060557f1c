/**
 * takt vs Ansible: the same five-task pipeline over N hosts (default 50), both already "connected"
 * before the clock starts, alternating in one run. Ansible drives N inventory hosts on
 * ansible_connection=local with forks=N; takt drives N local machines whose agents are already
 * long-polling. Both also get compared with the floor: the same shell work run by plain bash processes.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ApiClient } from '../src/client/http.js';
import { readPackDir } from '../src/content/files.js';
import type { Flags } from './lib/args.js';
import { adminApi, serverPid, withEndpoint } from './lib/endpoint.js';
import { busyCoreSec, cpuMark } from './lib/load.js';
import { cpuOf, cpuOfAll } from './lib/proc.js';
import { agentsReady, createMachines, MachineWatch, type CreatedMachine } from './lib/machines.js';
import { installPack } from './lib/packs.js';
import { profileWindow } from './lib/profile.js';
import { log } from './lib/progress.js';
import { BENCH_DIR, type BenchReport } from './lib/report.js';
import { onPath, run } from './lib/spawn.js';
import { median, round } from './lib/stats.js';

export const TASKS = 5;
export const PIPELINE = 'ansible-compare';
export const PACK_DIR = join(BENCH_DIR, 'packs', 'ansible-compare');
export const PLAYBOOK_DIR = join(BENCH_DIR, 'playbooks', 'ansible-compare');
/** The reference the issue gives: Ansible 7.7 on a 2-core machine. */
const GOAL_RATIO = 30;

export async function ansibleBench(flags: Flags, profileDir?: string): Promise<BenchReport> {
  const reps = flags.int('reps', 3);
  const hosts = flags.int('hosts', 50);
  // For profiling one side: `--only takt` (no ratio then).
  const only = flags.string('only');
  flags.done();
  if (only !== undefined && only !== 'takt' && only !== 'ansible') throw new Error(`--only takes takt or ansible (got '${only}')`);

  const ansibleVersion = only === 'takt' ? 'not run' : ensureAnsible();
  const work = mkdtempSync(join(tmpdir(), 'takt-bench-ansible-'));
  try {
    const { floorMs, nodeFloors, shellFloors } = await measureFloor(work, hosts);
    log(`  floor ${round(floorMs)} ms (Node spawning bash ${round(median(nodeFloors))} ms, one bash forking ${round(median(shellFloors))} ms)`);

    log('starting the takt endpoint and its machines, then waiting for every agent to have its first claim answered (~25 s)…');
    const ansible: number[] = [];
    const takt: number[] = [];
    const taktCpu: CpuSplit[] = [];
    const ansibleCpu: number[] = [];
    await withEndpoint({ profileDir, profileAgents: 5 }, async (ep) => {
      const api = adminApi(ep);
      await installPack(api, await readPackDir(PACK_DIR));
      const machines = await createMachines(api, { prefix: 'ac', count: hosts, broker: 'local' });
      await agentsReady(ep.data, machines);
      const pids = { server: serverPid(ep), agents: machines.map((m) => Number(readFileSync(join(ep.data, 'machines', m.id, 'agent.pid'), 'utf8'))) };
      const watch = new MachineWatch(api);
      await watch.start();
      try {
        for (let rep = 0; rep < reps; rep++) {
          // Alternate which goes first, so neither always runs on a machine warmed (or tired) by the other.
          const order = rep % 2 === 0 ? (['ansible', 'takt'] as const) : (['takt', 'ansible'] as const);
          for (const which of order.filter((w) => !only || w === only)) {
            if (which === 'ansible') {
              const before = cpuOf(process.pid).children;
              const ms = await ansibleRun(work, hosts, rep);
              ansible.push(ms);
              // ansible-playbook and everything it started, reaped by the time it exits.
              ansibleCpu.push(cpuOf(process.pid).children - before);
              log(`  rep ${rep + 1}/${reps} ansible: ${(ms / 1000).toFixed(2)} s`);
            } else {
              const { ms, cpu } = await taktRun(api, watch, machines, pids);
              verifyTakt(ep.data, machines);
              takt.push(ms);
              taktCpu.push(cpu);
              log(`  rep ${rep + 1}/${reps} takt:    ${(ms / 1000).toFixed(3)} s`);
            }
          }
        }
      } finally {
        await watch.stop();
      }
    });

    const jobs = TASKS * hosts;
    const cpuPerJob = (k: keyof CpuSplit) => (taktCpu.length ? (median(taktCpu.map((c) => c[k])) * 1000) / jobs : NaN);
    const a = ansible.length ? median(ansible) : NaN;
    const t = takt.length ? median(takt) : NaN;
    const perTask = (ms: number) => (ms - floorMs) / (TASKS * hosts);
    const ratio = a / t;
    return {
      rows: [
        { metric: 'ansible wall time (median)', value: `${(a / 1000).toFixed(2)} s` },
        { metric: 'takt wall time (median)', value: `${(t / 1000).toFixed(3)} s` },
        { metric: 'speed-up (ansible / takt)', value: `${ratio.toFixed(1)}×`, goal: `≥ ${GOAL_RATIO}×`, met: ratio >= GOAL_RATIO },
        { metric: `floor: ${TASKS * hosts} bash scripts, ${hosts} hosts in parallel`, value: `${round(floorMs)} ms` },
        { metric: '  Node spawning them / one bash forking them', value: `${round(median(nodeFloors))} / ${round(median(shellFloors))} ms` },
        { metric: 'ansible overhead per task', value: `${round(perTask(a))} ms` },
        { metric: 'takt overhead per task', value: `${round(perTask(t), 3)} ms` },
        { metric: 'ansible CPU per task (all its processes)', value: `${round(ansibleCpu.length ? (median(ansibleCpu) * 1000) / jobs : NaN)} ms` },
        { metric: 'takt CPU per job: endpoint / agents / scripts', value: `${round(cpuPerJob('server'))} / ${round(cpuPerJob('agents'))} / ${round(cpuPerJob('scripts'))} ms` },
      ].filter((r) => !Number.isNaN(Number.parseFloat(r.value))),
      data: { hosts, tasks: TASKS, reps, ansibleVersion, ansibleMs: ansible, taktMs: takt, medianAnsibleMs: a, medianTaktMs: t, ratio, taktCpuSec: taktCpu, ansibleCpuSec: ansibleCpu, floorMs, nodeFloorMs: nodeFloors, shellFloorMs: shellFloors },
      notes: [
        'per-task overhead = (wall time - floor) / (tasks × hosts): orchestration time per task, amortised over the parallel hosts',
        'takt CPU per job: CPU seconds used during the timed runs by the endpoint, by the 50 agent processes, and by the scripts they ran (bash, date, wc…), divided by the jobs',
        'ansible time includes its own start-up (python, loading modules) on each run; takt time starts at the first PATCH to an already running endpoint',
      ],
    };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Installs Debian's ansible when ansible-playbook is missing; returns `ansible --version`'s first line. */
export function ensureAnsible(): string {
  if (!onPath('ansible-playbook')) {
    log('ansible-playbook not found: installing it with apt-get (apt-get update && apt-get install -y ansible)…');
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    for (const args of [['update'], ['install', '-y', '--no-install-recommends', 'ansible']]) {
      const r = spawnSync('apt-get', args, { stdio: ['ignore', 2, 2], env });
      if (r.status !== 0) throw new Error(`apt-get ${args.join(' ')} failed (exit ${r.status}); install ansible and run again`);
    }
  }
  const v = spawnSync('ansible', ['--version'], { encoding: 'utf8' });
  const core = /ansible \[core ([^\]]+)\]/.exec(v.stdout ?? '')?.[1] ?? 'unknown';
  const pkg = spawnSync('dpkg-query', ['-W', '-f=${Version}', 'ansible'], { encoding: 'utf8' }).stdout || 'not from apt';
  return `ansible ${pkg} (core ${core})`;
}

/** One timed ansible-playbook run over a fresh output tree. */
async function ansibleRun(work: string, hosts: number, rep: number): Promise<number> {
  const dir = join(work, `ansible-${rep}`);
  const out = join(dir, 'hosts');
  mkdirSync(out, { recursive: true });
  const hostNames = Array.from({ length: hosts }, (_, i) => `h${i + 1}`);
  writeFileSync(join(dir, 'inventory.ini'), `[bench]\n${hostNames.map((h) => `${h} ansible_connection=local`).join('\n')}\n`);
  // forks = hosts: every host at once, as takt's agents are. Pipelining and no fact gathering are the
  // usual speed settings; this is Ansible at its fastest for this playbook, not at its defaults.
  writeFileSync(
    join(dir, 'ansible.cfg'),
    `[defaults]\nforks = ${hosts}\nhost_key_checking = False\nretry_files_enabled = False\ninterpreter_python = /usr/bin/python3\n\n[connection]\npipelining = True\n`,
  );
  const env = { ...process.env, ANSIBLE_CONFIG: join(dir, 'ansible.cfg'), ANSIBLE_HOME: join(dir, 'home'), ANSIBLE_LOCAL_TEMP: join(dir, 'tmp'), ANSIBLE_NOCOLOR: '1' };
  const r = await run('ansible-playbook', ['-i', join(dir, 'inventory.ini'), join(PLAYBOOK_DIR, 'playbook.yml'), '-e', `bench_out=${out}`], { env, cwd: dir });
  if (r.code !== 0) throw new Error(`ansible-playbook exited ${r.code}:\n${r.output.slice(-3000)}`);
  for (const h of hostNames) {
    for (const f of ['motd', 'build']) {
      if (!existsSync(join(out, h, 'srv', 'app', f))) throw new Error(`ansible did not write ${h}/srv/app/${f}`);
    }
  }
  return r.ms;
}

/**
 * One timed takt run: from the first PATCH that assigns the pipeline until the last machine is done
 * (seen on the event stream). The machines are first taken off the pipeline, untimed, so each run
 * starts from the top.
 */
export interface CpuSplit {
  server: number;
  agents: number;
  scripts: number;
  /** Core-seconds this whole box was busy in the timed window: every process, other people's included. */
  box: number;
}

export async function taktRun(api: ApiClient, watch: MachineWatch, machines: CreatedMachine[], pids: { server: number; agents: number[] }): Promise<{ ms: number; cpu: CpuSplit }> {
  const ids = machines.map((m) => m.id);
  await Promise.all(ids.map((id) => api.patch(`/machines/${id}`, { pipeline: null })));
  await watch.until(ids, (s) => s === 'idle', 30_000);
  // An agent told "nothing to do" claims again at once, but waits out a second if its previous claim was
  // answered within a second; give every agent time to be back in its long-poll.
  await new Promise((r) => setTimeout(r, 1500));
  const server0 = cpuOf(pids.server).self;
  const agents0 = cpuOfAll(pids.agents);
  const box0 = cpuMark();
  const t0 = performance.now();
  const timed = profileWindow();
  await Promise.all(ids.map((id) => api.patch(`/machines/${id}`, { pipeline: PIPELINE })));
  await watch.until(ids, (s) => s === 'done', 120_000);
  timed();
  const ms = performance.now() - t0;
  // The agents' reaped children are the scripts (bash and what they ran); a script still being reaped
  // when the last machine reports done is missed, which is noise at this size.
  const agents1 = cpuOfAll(pids.agents);
  return { ms, cpu: { server: cpuOf(pids.server).self - server0, agents: agents1.self - agents0.self, scripts: agents1.children - agents0.children, box: busyCoreSec(box0) } };
}

/** The work really happened: each sandbox has both files, with this machine's name and a build id. */
export function verifyTakt(data: string, machines: CreatedMachine[]): void {
  for (const m of machines) {
    const app = join(data, 'machines', m.id, 'root', 'srv', 'app');
    const motd = readFileSync(join(app, 'motd'), 'utf8');
    const build = readFileSync(join(app, 'build'), 'utf8');
    if (!motd.includes(`host: ${m.name}`) || !build.startsWith(`build-${m.name}-`)) throw new Error(`takt machine ${m.name} wrote unexpected files`);
  }
}

/** The five steps, as shell; $D is the host's directory and $H its name. */
export const FLOOR_STEPS = [
  'mkdir -p "$D/srv/app"',
  'cat > "$D/srv/app/motd" <<\'MOTD\'\nHello from the bench\nhost: $H\nMOTD',
  'echo "build-$H-$(date +%s)" > "$D/build_id"',
  'read -r id < "$D/build_id"; echo "$id" > "$D/srv/app/build"',
  'wc -l "$D/srv/app/motd" "$D/srv/app/build"',
];

/** The scripts' own cost: the same five steps per host as `bash -e -c` processes Node spawns, hosts in parallel. */
/**
 * The floor both Ansible benches compare with: TASKS bash scripts per host, hosts in parallel, three times
 * each with Node spawning them and with one bash forking them; `floorMs` is the lower median, which makes
 * everybody's overhead look bigger, not smaller.
 */
export async function measureFloor(work: string, hosts: number): Promise<{ floorMs: number; nodeFloors: number[]; shellFloors: number[] }> {
  log(`floor: ${hosts} hosts × ${TASKS} bash scripts, hosts in parallel…`);
  const nodeFloors: number[] = [];
  const shellFloors: number[] = [];
  for (let i = 0; i < 3; i++) {
    nodeFloors.push(await floorRun(join(work, `floor-node-${i}`), hosts));
    shellFloors.push(await shellFloorRun(join(work, `floor-shell-${i}`), hosts));
  }
  return { floorMs: Math.min(median(nodeFloors), median(shellFloors)), nodeFloors, shellFloors };
}

export async function floorRun(dir: string, hosts: number): Promise<number> {
  const steps = FLOOR_STEPS;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: hosts }, async (_, i) => {
      const env = { ...process.env, D: join(dir, `h${i + 1}`), H: `h${i + 1}` };
      for (const s of steps) {
        const r = await run('bash', ['-e', '-c', s], { env });
        if (r.code !== 0) throw new Error(`floor step failed: ${s}: ${r.output}`);
      }
    }),
  );
  return performance.now() - t0;
}

/** The same, with no Node at all: one bash starts a subshell per host, each runs the five steps as `bash -e -c`. */
export async function shellFloorRun(dir: string, hosts: number): Promise<number> {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const perHost = FLOOR_STEPS.map((s) => `bash -e -c ${q(s)}`).join(' && ');
  const script = `for i in $(seq 1 ${hosts}); do ( export D=${q(dir)}/h$i H=h$i; ${perHost} >/dev/null ) & done; wait`;
  const r = await run('bash', ['-e', '-c', script]);
  // `wait` does not report a failed subshell: check the work was done.
  const missing = Array.from({ length: hosts }, (_, i) => join(dir, `h${i + 1}`, 'srv', 'app', 'build')).filter((f) => !existsSync(f));
  if (r.code !== 0 || missing.length) throw new Error(`shell floor failed (${missing.length} hosts without a build file): ${r.output}`);
  return r.ms;
}
