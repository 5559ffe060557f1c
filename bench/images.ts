/**
 * Images: N simultaneous downloads of one image from the endpoint (simulated deploying machines over
 * loopback, each with its own machine token), as a rebuild wave would make them. Reports the aggregate
 * MB/s, the endpoint's CPU per GB served, and the API's latency meanwhile (one admin request at a time,
 * `GET /machines?limit=1`, for the whole transfer). Issue #14's goal: serving images is bounded by the
 * disk, not the endpoint's CPU (≥ 500 MB/s aggregate on loopback), and API p99 < 50 ms meanwhile.
 *
 * The image is random bytes (nothing for a compressing layer to win) written to a temp file and
 * imported through `takt images import`'s API path, then read by every client to its end: the page cache
 * holds it after the first reader, so the disk is out of the measurement on purpose — what is left is the
 * endpoint's own cost per byte (send's stream, TLS when not loopback, the event loop).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Flags } from './lib/args.js';
import { adminApi, serverPid, withEndpoint, type Endpoint } from './lib/endpoint.js';
import { Latencies } from './lib/latency.js';
import { createMachines } from './lib/machines.js';
import { cpuOf } from './lib/proc.js';
import { log } from './lib/progress.js';
import type { BenchReport } from './lib/report.js';
import { round } from './lib/stats.js';

const GOAL_MBPS = 500;
const GOAL_P99_MS = 50;

export async function imagesBench(flags: Flags): Promise<BenchReport> {
  const clients = flags.int('clients', 20);
  const sizeMiB = flags.int('size-mib', 256);
  const rounds = flags.int('rounds', 1);
  flags.done();
  return withEndpoint({}, (ep) => run(ep, clients, sizeMiB, rounds));
}

async function run(ep: Endpoint, clients: number, sizeMiB: number, rounds: number): Promise<BenchReport> {
  const scratch = mkdtempSync(join(tmpdir(), 'takt-bench-images-'));
  try {
    const file = join(scratch, 'bench.img');
    log(`writing a ${sizeMiB} MiB image of random bytes…`);
    const chunk = randomBytes(2 ** 20);
    const parts: Buffer[] = [];
    for (let i = 0; i < sizeMiB; i++) parts.push(chunk.map((b) => b ^ i) as Buffer);
    writeFileSync(file, Buffer.concat(parts));
    const size = sizeMiB * 2 ** 20;
    const api = adminApi(ep);
    const t0 = performance.now();
    await api.upload('PUT', '/images/bench/1.0.0', () => createReadStream(file), size, { timeoutMs: 600_000 });
    const importMs = performance.now() - t0;
    log(`imported in ${(importMs / 1000).toFixed(1)} s; creating ${clients} machines for their tokens…`);
    const machines = await createMachines(api, { prefix: 'dl', count: clients, pipeline: null });
    const pid = serverPid(ep);
    // One warm read, so every measured client reads from the page cache.
    await download(ep.url, machines[0]!.token!, size);

    // The API probe runs in a process of its own: in this one it would wait behind the downloads' own
    // event-loop work and report the bench's latency, not the endpoint's.
    const probe = startProbe(ep);
    const cpu0 = cpuOf(pid).self;
    const start = performance.now();
    let bytes = 0;
    for (let r = 0; r < rounds; r++) {
      log(`round ${r + 1}/${rounds}: ${clients} clients downloading ${sizeMiB} MiB each…`);
      const got = await Promise.all(machines.map((m) => download(ep.url, m.token!, size)));
      bytes += got.reduce((a, b) => a + b, 0);
    }
    const seconds = (performance.now() - start) / 1000;
    const cpu = cpuOf(pid).self - cpu0;
    const samples = await probe.stop();
    const lat = new Latencies();
    for (const ms of samples) lat.add('api', ms);
    const mbps = bytes / 1e6 / seconds;
    const l = lat.summaries().api!;
    return {
      rows: [
        { metric: 'clients × image size × rounds', value: `${clients} × ${sizeMiB} MiB × ${rounds} = ${round(bytes / 2 ** 30, 2)} GiB` },
        { metric: 'aggregate throughput', value: `${round(mbps, 0)} MB/s`, goal: `≥ ${GOAL_MBPS} MB/s`, met: mbps >= GOAL_MBPS },
        { metric: 'endpoint CPU per GB served', value: `${round(cpu / (bytes / 1e9), 2)} s` },
        { metric: 'endpoint CPU share over the transfer', value: `${round((cpu / seconds) * 100, 0)} % of one core` },
        { metric: 'API latency meanwhile p50 / p99 / max', value: `${round(l.p50)} / ${round(l.p99)} / ${round(l.max)} ms (${l.n} requests)`, goal: `p99 < ${GOAL_P99_MS} ms`, met: l.p99 < GOAL_P99_MS },
        { metric: 'import (hash + write + record), untimed above', value: `${round((size / 1e6) / (importMs / 1000), 0)} MB/s` },
      ],
      data: { clients, sizeMiB, rounds, bytes, seconds, mbps, endpointCpuSec: cpu, api: l, importMs },
      notes: [
        'loopback HTTP (no TLS), clients in the bench process on the same 2 cores as the endpoint; the image is in the page cache',
        'each client uses its own machine token, as a deploying machine does; a download is read to its end and its length checked',
      ],
    };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** The probe: one `GET /machines?limit=1` at a time until stdin closes, then the samples (ms) as JSON. */
const PROBE = `
const [url, token] = process.argv.slice(1);
const samples = [];
let go = true;
process.stdin.on('end', () => (go = false)).resume();
(async () => {
  for (let i = 0; go && i < 1e6; i++) {
    const t0 = performance.now();
    const r = await fetch(url + '/api/v1/machines?limit=1', { headers: { authorization: 'Bearer ' + token } });
    await r.arrayBuffer();
    samples.push(performance.now() - t0);
  }
  process.stdout.write(JSON.stringify(samples));
})();
`;

function startProbe(ep: Endpoint): { stop(): Promise<number[]> } {
  const p = spawn(process.execPath, ['-e', PROBE, ep.url, ep.token], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  p.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const done = new Promise<number[]>((resolve, reject) => {
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(JSON.parse(out || '[]') as number[]) : reject(new Error(`the API probe exited ${code}`))));
  });
  return {
    stop: () => {
      p.stdin.end();
      return done;
    },
  };
}

/** Reads the image's bytes to their end, counting them; fails on a short read. */
function download(base: string, token: string, size: number): Promise<number> {
  const u = new URL(`${base}/api/v1/images/bench/1.0.0/blob`);
  return new Promise((resolve, reject) => {
    const req = request({ hostname: u.hostname, port: u.port, path: u.pathname, headers: { authorization: `Bearer ${token}` } }, (res) => {
      if (res.statusCode !== 200) {
        reject(new Error(`download answered ${res.statusCode}`));
        res.resume();
        return;
      }
      let n = 0;
      res.on('data', (c: Buffer) => (n += c.length));
      res.on('end', () => (n === size ? resolve(n) : reject(new Error(`short download: ${n} of ${size} bytes`))));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}
