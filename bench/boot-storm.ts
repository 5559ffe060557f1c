/**
 * Boot storm: many machines network-boot at once against one `takt serve --provision … --dhcp full`
 * (issue #13). A real endpoint runs inside a network namespace `tkd-b<id>` (a veth pair with both ends
 * there, 10.219.X.1/22, so DHCP's broadcasts stay in it); bench/lib/storm-client.ts runs in the same
 * namespace and plays N iPXE clients with distinct MACs: DISCOVER → OFFER → REQUEST → ACK, GET the
 * per-machine iPXE script (unknown MACs get the pack's `discovery` bootenv), GET the first `--range-kib` of
 * its kernel with a Range header. Clients come in waves of growing size (`--waves 100,200,300,400`: a
 * ramp to 1,000 leases), each wave all at once.
 *
 * Reports leases/s, DISCOVER→ACK and DISCOVER→script percentiles, HTTP throughput, the endpoint's CPU
 * and peak RSS, and checks that every client got a lease, no address went to two clients, and the
 * endpoint lists (and, after a restart, still lists) exactly those leases.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Flags } from './lib/args.js';
import { cpuOf, mib, peakRss } from './lib/proc.js';
import { log } from './lib/progress.js';
import { ROOT_DIR, type BenchReport } from './lib/report.js';
import { round, summarise } from './lib/stats.js';

const TAKT = join(ROOT_DIR, 'bin', 'takt.js');

interface ClientResult {
  mac: string;
  ip?: string;
  offerMs?: number;
  ackMs?: number;
  scriptMs?: number;
  kernelMs?: number;
  bytes?: number;
  naks?: number;
  error?: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function bootStormBench(flags: Flags): Promise<BenchReport> {
  const waves = (flags.string('waves') ?? '100,200,300,400').split(',').map(Number).filter((n) => Number.isInteger(n) && n > 0);
  const rangeKiB = flags.int('range-kib', 1024);
  flags.done();
  const total = waves.reduce((a, b) => a + b, 0);
  if (total > 1000) throw new Error(`--waves adds up to ${total} clients; the range holds 1,000`);

  const tag = randomBytes(3).toString('hex');
  const netns = `tkd-b${tag}`;
  const x = 4 * (1 + (parseInt(tag, 16) % 60)); // 10.219.X.0/22, X a multiple of 4 in 4…240
  const net = `10.219.${x}`;
  const dir = mkdtempSync(join(tmpdir(), 'takt-bench-storm-'));
  const data = join(dir, 'data');
  const ip = (...a: string[]) => execFileSync('ip', a, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
  let serve: ChildProcess | null = null;
  let output = '';
  const start = async () => {
    rmSync(join(data, 'boot-url'), { force: true });
    rmSync(join(data, 'endpoint'), { force: true });
    const args = ['serve', '--listen', '127.0.0.1:0', '--data', data, '--provision', `${net}.1/22`, '--dhcp', 'full', '--dhcp-range', `${net}.10-10.219.${x + 3}.250`, '--boot-port', '0', '--no-router-adverts'];
    // `ip netns exec` execs the program: the child's pid is the endpoint's.
    serve = spawn('ip', ['netns', 'exec', netns, process.execPath, TAKT, ...args], { env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    serve.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    serve.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    for (let i = 0; !existsSync(join(data, 'boot-url')); i++) {
      if (serve.exitCode !== null || i > 1200) throw new Error(`takt serve did not start:\n${output}`);
      await sleep(50);
    }
    return { endpoint: readFileSync(join(data, 'endpoint'), 'utf8').trim(), token: readFileSync(join(data, 'admin.token'), 'utf8').trim() };
  };
  const stop = async () => {
    const p = serve;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill('SIGTERM');
    await Promise.race([gone, sleep(30_000)]);
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  };
  const inNs = (argv: string[], timeoutMs: number): Promise<string> =>
    new Promise((resolve, reject) =>
      execFile('ip', ['netns', 'exec', netns, ...argv], { cwd: ROOT_DIR, timeout: timeoutMs, maxBuffer: 256 << 20 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout))),
    );
  const leases = async (ep: { endpoint: string; token: string }) =>
    (JSON.parse(await inNs(['curl', '-s', '-H', `authorization: Bearer ${ep.token}`, `${ep.endpoint}/api/v1/dhcp/leases`], 60_000)) as { items: Array<{ mac: string; ip: string; state: string }> }).items;

  try {
    ip('netns', 'add', netns);
    ip('-n', netns, 'link', 'set', 'lo', 'up');
    ip('-n', netns, 'link', 'add', 's0', 'type', 'veth', 'peer', 'name', 's1');
    ip('-n', netns, 'addr', 'add', `${net}.1/22`, 'dev', 's0');
    ip('-n', netns, 'link', 'set', 's0', 'up');
    ip('-n', netns, 'link', 'set', 's1', 'up');
    ip('-n', netns, 'route', 'add', 'default', 'dev', 's0');

    // A pack whose discovery bootenv every unknown MAC boots: a 16 MiB "kernel" (random bytes) and a small initrd.
    const kernel = join(dir, 'vmlinuz');
    writeFileSync(kernel, randomBytes(16 << 20));
    const initrd = join(dir, 'initrd');
    writeFileSync(initrd, randomBytes(64 << 10));
    const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
    const pack = join(dir, 'pack');
    execFileSync('mkdir', ['-p', join(pack, 'bootenvs')]);
    writeFileSync(join(pack, 'pack.yaml'), 'name: storm\nversion: 1.0.0\n');
    writeFileSync(join(pack, 'bootenvs', 'discovery.yaml'), `name: discovery\nkernel: { name: vmlinuz, path: ${kernel}, sha256: ${sha(kernel)} }\ninitrds:\n  - { name: initrd, path: ${initrd}, sha256: ${sha(initrd)} }\ncmdline: console=ttyS0 takt.mac={{ boot.mac }}\n`);

    log(`boot storm: takt serve --dhcp full in ${netns} (${net}.1/22), waves ${waves.join(', ')} (${total} clients), ${rangeKiB} KiB of the kernel each`);
    let ep = await start();
    const env = { ...process.env, TAKT_ENDPOINT: ep.endpoint, TAKT_TOKEN: ep.token };
    await new Promise<void>((resolve, reject) =>
      execFile('ip', ['netns', 'exec', netns, process.execPath, TAKT, 'content', 'install', pack], { env, timeout: 120_000 }, (err, _o, stderr) => (err ? reject(new Error(stderr)) : resolve())),
    );
    for (let i = 0; !(output.match(/boot: kept bootenv 'discovery'/g)?.length === 2); i++) {
      if (i > 1200) throw new Error(`the bootenv's files were not kept:\n${output}`);
      await sleep(50);
    }

    const pid = serve!.pid!;
    const results: ClientResult[] = [];
    const perWave: Array<{ clients: number; wallMs: number; cpuS: number; leasesPerS: number; ack: ReturnType<typeof summarise>; script: ReturnType<typeof summarise>; errors: number }> = [];
    let n = 0;
    const cpu0 = cpuOf(pid).self;
    const t0 = performance.now();
    for (const size of waves) {
      const macs = Array.from({ length: size }, () => {
        const i = n++;
        return `52:54:00:b5:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;
      });
      const c0 = cpuOf(pid).self;
      const w0 = performance.now();
      const outText = await inNs([process.execPath, '--import', 'tsx', join(ROOT_DIR, 'bench/lib/storm-client.ts'), JSON.stringify({ macs, rangeBytes: rangeKiB * 1024, deadlineMs: 600_000 })], 660_000);
      const wallMs = performance.now() - w0;
      const got = outText.split('\n').filter(Boolean).map((l) => JSON.parse(l) as ClientResult & { done?: boolean }).filter((r) => !r.done);
      results.push(...got);
      const ok = got.filter((r) => !r.error);
      const lastAck = Math.max(...ok.map((r) => r.ackMs ?? 0));
      perWave.push({
        clients: size,
        wallMs,
        cpuS: cpuOf(pid).self - c0,
        leasesPerS: ok.length / (lastAck / 1000),
        ack: summarise(ok.map((r) => r.ackMs!)),
        script: summarise(ok.map((r) => r.scriptMs!)),
        errors: got.length - ok.length,
      });
      log(`  wave of ${size}: ${ok.length} booted in ${(wallMs / 1000).toFixed(1)} s, DISCOVER→ACK p50 ${round(perWave.at(-1)!.ack.p50)} ms, →script p99 ${round(perWave.at(-1)!.script.p99)} ms, ${got.length - ok.length} errors`);
    }
    const wallS = (performance.now() - t0) / 1000;
    const cpuS = cpuOf(pid).self - cpu0;
    const rss = peakRss(pid);

    // Checks: every client a lease, no address twice, the endpoint lists exactly those — also after a restart.
    const ok = results.filter((r) => !r.error);
    const byIp = new Map<string, string[]>();
    for (const r of ok) byIp.set(r.ip!, [...(byIp.get(r.ip!) ?? []), r.mac]);
    const twice = [...byIp.entries()].filter(([, m]) => m.length > 1);
    const want = new Map(ok.map((r) => [r.mac, r.ip!]));
    const listed = (await leases(ep)).filter((l) => l.state === 'bound');
    const mismatch = (items: Array<{ mac: string; ip: string }>) => items.filter((l) => want.get(l.mac) !== l.ip).length + Math.max(0, want.size - items.length);
    const before = mismatch(listed);
    await stop();
    ep = await start();
    const after = mismatch((await leases(ep)).filter((l) => l.state === 'bound'));
    await stop();

    const all = summarise(ok.map((r) => r.scriptMs!));
    const acks = summarise(ok.map((r) => r.ackMs!));
    const bytes = ok.reduce((a, r) => a + (r.bytes ?? 0), 0);
    const httpSpan = Math.max(...perWave.map((w) => w.wallMs)) / 1000;
    const biggest = perWave.at(-1)!;
    return {
      rows: [
        { metric: `clients (waves ${waves.join(', ')})`, value: `${ok.length} of ${total} booted, ${results.length - ok.length} errors` },
        { metric: 'leases lost / addresses given twice', value: `${total - ok.length} / ${twice.length}`, goal: '0 / 0', met: total === ok.length && twice.length === 0 },
        { metric: 'API lists the same leases, before / after restart', value: `${before === 0 ? 'yes' : `${before} differ`} / ${after === 0 ? 'yes' : `${after} differ`}`, goal: 'yes / yes', met: before === 0 && after === 0 },
        ...perWave.map((w) => ({ metric: `wave ${w.clients}: leases/s, DISCOVER→ACK p50/p99, →script p50/p99`, value: `${round(w.leasesPerS, 0)}/s, ${round(w.ack.p50, 0)}/${round(w.ack.p99, 0)} ms, ${round(w.script.p50, 0)}/${round(w.script.p99, 0)} ms` })),
        { metric: 'DISCOVER→ACK p50 / p99 (all)', value: `${round(acks.p50, 0)} / ${round(acks.p99, 0)} ms` },
        { metric: 'DISCOVER→script p50 / p99 (all)', value: `${round(all.p50, 0)} / ${round(all.p99, 0)} ms` },
        { metric: `HTTP: script + ${rangeKiB} KiB kernel range per client`, value: `${mib(bytes)} MiB; largest wave ${round(biggest.clients * rangeKiB / 1024 / (biggest.wallMs / 1000), 1)} MiB/s over its wall time` },
        { metric: 'endpoint CPU (whole storm) / peak RSS', value: `${round(cpuS, 1)} CPU-s in ${round(wallS, 1)} s wall / ${mib(rss)} MiB` },
      ],
      data: { waves: perWave, total, ok: ok.length, twice: twice.slice(0, 10), listedMismatchBefore: before, listedMismatchAfter: after, cpuS, wallS, peakRssBytes: rss, bytes, httpSpan, errors: results.filter((r) => r.error).slice(0, 20) },
      notes: [`the client runs in the same namespace (and on the same 2 cores) as the endpoint; DHCP replies are broadcast, so every client socket sees every reply`],
    };
  } finally {
    await stop();
    try {
      ip('netns', 'del', netns);
    } catch {
      // not made
    }
    rmSync(dir, { recursive: true, force: true });
  }
}
