/**
 * `npm run bench -- discover [--variant gzip,zstd] [--reps 1]`: the discovery environment's boot to
 * registration (issue #13, goal ≤ 15 s under software emulation). For each initramfs compression it builds
 * the discovery bootenv (src/provision/discovery-env.ts, cached per compression under
 * <provision cache>/bench/), boots one VM straight into its kernel and initrd (qemu -kernel/-initrd, no
 * firmware network boot, qemu's user-mode network and DHCP) with the bootenv's own command line, and
 * times from qemu's start:
 *   - /init: the `init started` marker on the serial console; `up=` is the guest's /proc/uptime then,
 *     so host time minus it is what passed before the kernel's clock started (qemu, firmware, loading);
 *   - DHCP lease, agent start (/init about to run `takt agent discover`): markers with uptime;
 *   - registered: when the registration request reaches the endpoint. The endpoint is a TLS stand-in on
 *     the host (10.0.2.2 in the guest) with a self-signed certificate whose fingerprint is the command
 *     line's `takt.ca`: the agent fetches and pins it, then POSTs its registration, which is timed and
 *     answered 401 so the agent stops there (what a real endpoint does after is not boot time).
 * One VM at a time, TAKT_QEMU_ACCEL as the tests (tcg on this project's machines). Needs root-free qemu
 * only; the Debian kernel and the agent bundle come from the provisioning cache (built when missing).
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultAccel, Vm } from '../src/brokers/qemu/vm.js';
import { VERSION } from '../src/cli/version.js';
import { AgentBundle } from '../src/join/bundle.js';
import { buildDiscoveryEnv, DISCOVERY_CMDLINE, DISCOVERY_MARKER, type InitrdCompression } from '../src/provision/discovery-env.js';
import { debianKernel, provisionCacheDir } from '../src/provision/kernel.js';
import type { Flags } from './lib/args.js';
import { machineInfo, type BenchReport, type Row } from './lib/report.js';

const GOAL_S = 15;

interface Boot {
  variant: InitrdCompression;
  initrdBytes: number;
  buildSec: number;
  /** Seconds from qemu's start (host clock). */
  initSec: number;
  dhcpSec: number;
  agentStartSec: number;
  registeredSec: number;
  /** The guest's /proc/uptime at each marker. */
  up: { init: number; dhcp: number; agentStart: number };
  /** Host seconds before the guest kernel's clock started (initSec - up.init). */
  beforeKernelClockSec: number;
  qemuCpuSec: number | null;
  load: number[];
}

/** Waits (bounded) until no other qemu runs on the machine: the brief and the tests share two cores. */
async function waitNoQemu(maxMs = 20 * 60_000): Promise<void> {
  const deadline = Date.now() + maxMs;
  for (let said = false; ; said = true) {
    let n = 0;
    try {
      n = Number(execFileSync('pgrep', ['-c', 'qemu-system'], { encoding: 'utf8' }).trim());
    } catch {
      n = 0; // pgrep exits 1 when nothing matches
    }
    if (n === 0) return;
    if (Date.now() > deadline) throw new Error(`another qemu still runs after ${maxMs / 60_000} min: one VM at a time`);
    if (!said) process.stderr.write(`waiting for ${n} other qemu process(es) to finish…\n`);
    await new Promise((r) => setTimeout(r, 5_000));
  }
}

const upOf = (line: string): number => Number(/up=([\d.]+)s/.exec(line)?.[1] ?? NaN);

export async function discoverBench(flags: Flags): Promise<BenchReport> {
  const variants = (flags.string('variant') ?? 'gzip,zstd').split(',').map((v) => v.trim()) as InitrdCompression[];
  const reps = flags.int('reps', 1);
  flags.done();
  for (const v of variants) if (!['gzip', 'zstd', 'none'].includes(v)) throw new Error(`--variant ${v}: say gzip, zstd or none`);

  const work = mkdtempSync(join(tmpdir(), 'takt-bench-disc-'));
  // The endpoint stand-in: a self-signed certificate for 10.0.2.2 (qemu's user-mode address of the host).
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=takt-bench', '-addext', 'subjectAltName=IP:10.0.2.2', '-addext', 'basicConstraints=critical,CA:TRUE', '-keyout', join(work, 'key.pem'), '-out', join(work, 'cert.pem')], { stdio: 'ignore', timeout: 30_000 });
  const cert = readFileSync(join(work, 'cert.pem'), 'utf8');
  let registeredAt = 0;
  const server = createServer({ key: readFileSync(join(work, 'key.pem')), cert }, (req, res) => {
    if (req.method === 'POST' && !registeredAt) registeredAt = Date.now();
    req.resume();
    res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'unauthorized', message: 'takt bench: registration timed, not accepted' }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const append = DISCOVERY_CMDLINE.replace('{{ boot.api }}', `https://10.0.2.2:${port}`)
    .replace('{{ boot.ca }}', new X509Certificate(cert).fingerprint256.replace(/:/g, ''))
    .replace('{{ boot.token }}', 'takt-bench');

  const boots: Boot[] = [];
  try {
    const kernel = await debianKernel({ log: (m) => process.stderr.write(`${m}\n`) });
    const bundle = await new AgentBundle({ cacheDir: join(provisionCacheDir(), 'bundles'), version: VERSION }).get();
    const envs = new Map<InitrdCompression, { initrd: string; bytes: number; buildSec: number }>();
    for (const v of variants) {
      const t = Date.now();
      const env = await buildDiscoveryEnv({ out: join(provisionCacheDir(), 'bench', `discovery-${v}`), bundle: bundle.path, version: VERSION, kernel, compression: v });
      envs.set(v, { initrd: env.initrd.path, bytes: env.initrd.bytes, buildSec: (Date.now() - t) / 1000 });
      process.stderr.write(`discovery-${v}: ${(env.initrd.bytes / 2 ** 20).toFixed(1)} MiB (${((Date.now() - t) / 1000).toFixed(1)} s to build or find)\n`);
    }
    for (let rep = 0; rep < reps; rep++) {
      for (const v of variants) {
        const env = envs.get(v)!;
        await waitNoQemu();
        registeredAt = 0;
        const vm = await Vm.start({
          name: `bench-disc-${v}`,
          dir: join(work, `vm-${v}-${rep}`),
          firmware: 'bios',
          memoryMiB: 1024,
          kernel: { path: kernel.vmlinuz, initrd: env.initrd, append },
          nic: { model: 'virtio-net-pci', mac: '52:54:00:d5:00:01', net: { kind: 'user' } },
        });
        try {
          const wait = (what: string, ms = 300_000) => vm.waitForSerial(new RegExp(`${DISCOVERY_MARKER} ${what}.*up=`), ms, { failOn: /Kernel panic/ });
          const init = await wait('init started');
          const dhcp = await wait('dhcp on');
          const agent = await wait('agent starting');
          const end = await wait('(registered with|registration failed)');
          if (!registeredAt) throw new Error(`the agent stopped without registering: ${end.line}\n${vm.serial()}`);
          const s = (ms: number) => Math.round(ms) / 1000;
          const status = vm.vitals();
          boots.push({
            variant: v,
            initrdBytes: env.bytes,
            buildSec: env.buildSec,
            initSec: s(init.atMs),
            dhcpSec: s(dhcp.atMs),
            agentStartSec: s(agent.atMs),
            registeredSec: s(registeredAt - vm.startedAt),
            up: { init: upOf(init.line), dhcp: upOf(dhcp.line), agentStart: upOf(agent.line) },
            beforeKernelClockSec: s(init.atMs - upOf(init.line) * 1000),
            qemuCpuSec: status.cpuSeconds,
            load: loadavg().map((l) => Math.round(l * 100) / 100),
          });
          process.stderr.write(`${v} #${rep + 1}: /init ${s(init.atMs)} s, dhcp ${s(dhcp.atMs)} s, agent ${s(agent.atMs)} s, registered ${s(registeredAt - vm.startedAt)} s (load ${loadavg()[0]!.toFixed(2)})\n`);
        } finally {
          await vm.kill();
        }
      }
    }
  } finally {
    server.close();
    rmSync(work, { recursive: true, force: true });
  }

  const rows: Row[] = [];
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  for (const v of variants) {
    const bs = boots.filter((b) => b.variant === v);
    const f = (k: (b: Boot) => number) => `${med(bs.map(k)).toFixed(1)} s`;
    rows.push(
      { metric: `${v}: initrd size`, value: `${(bs[0]!.initrdBytes / 2 ** 20).toFixed(1)} MiB` },
      { metric: `${v}: before the kernel clock (qemu, loading)`, value: f((b) => b.beforeKernelClockSec) },
      { metric: `${v}: /init (guest uptime)`, value: `${f((b) => b.initSec)} (${f((b) => b.up.init)})` },
      { metric: `${v}: DHCP lease`, value: f((b) => b.dhcpSec) },
      { metric: `${v}: agent start`, value: f((b) => b.agentStartSec) },
      { metric: `${v}: registered (request at the endpoint)`, value: f((b) => b.registeredSec), goal: `≤ ${GOAL_S} s`, met: med(bs.map((b) => b.registeredSec)) <= GOAL_S },
      { metric: `${v}: Node start to registration`, value: f((b) => b.registeredSec - b.agentStartSec) },
    );
  }
  return {
    rows,
    data: { machine: machineInfo(), accel: defaultAccel(), reps, variants, boots },
    notes: [`medians of ${reps} boot(s) per variant, seconds from qemu's start; load average (1 min) at each registration: ${boots.map((b) => b.load[0]).join(', ')}`],
  };
}
