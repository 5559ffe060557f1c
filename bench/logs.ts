/**
 * Logs: how fast the endpoint takes job output, with 20 secure values in scope (every chunk masked
 * before it is stored) and without (the same 20 values as plain params: nothing to mask), side by side in
 * one run, alternating so both see the same machine load.
 *
 * Simulated agents (plain HTTP with machine tokens) claim one job each and stream their share of the
 * output as the real agent does: numbered 32 KiB chunks, in order, one request at a time per job, several
 * jobs at once. What is measured is the endpoint: wall time of the streaming phase (MB/s) and the
 * endpoint process's CPU per MB (from /proc, so the bench's own HTTP client does not count).
 */
import { createHash } from 'node:crypto';
import type { Flags } from './lib/args.js';
import { adminApi, serverPid, withEndpoint, type Endpoint } from './lib/endpoint.js';
import { cpuOf } from './lib/proc.js';
import { profileWindow } from './lib/profile.js';
import { LogMasks, secretTexts } from '../src/engine/logmask.js';
import { log } from './lib/progress.js';
import type { BenchReport } from './lib/report.js';
import { median, round } from './lib/stats.js';

const SECRETS = 20;
const CHUNK = 32 * 1024;
const GOAL_PCT = 10;
type Mode = 'masked' | 'unmasked';

/** Deterministic token-like values (24 base64url characters), one per param. */
const values = Array.from({ length: SECRETS }, (_, i) => createHash('sha256').update(`bench-secret-${i}`).digest('base64url').slice(0, 24));
const names = (prefix: string) => values.map((_, i) => `${prefix}${String(i + 1).padStart(2, '0')}`);

function pack(): Record<string, string> {
  const files: Record<string, string> = { 'pack.yaml': 'name: logs\nversion: 1.0.0\ndescription: log ingest bench\n' };
  for (const n of names('s')) files[`params/${n}.yaml`] = `name: ${n}\nsecure: true\nschema: { type: string }\n`;
  for (const n of names('p')) files[`params/${n}.yaml`] = `name: ${n}\nschema: { type: string }\n`;
  files['profiles/values.yaml'] = `name: values\nparams:\n${[...names('s'), ...names('p')].map((n, i) => `  ${n}: "${values[i % SECRETS]}"`).join('\n')}\n`;
  for (const [mode, prefix] of [['masked', 's'], ['unmasked', 'p']] as const) {
    files[`tasks/${mode}.yaml`] = `name: ${mode}\nparams: { required: [${names(prefix).join(', ')}] }\nscript: |\n  true\n`;
    files[`stages/${mode}.yaml`] = `name: ${mode}\ntasks: [${mode}]\n`;
    files[`pipelines/${mode}.yaml`] = `name: ${mode}\nstages: [${mode}]\n`;
  }
  return files;
}

/** Log-like 32 KiB chunks; one line in 200 prints one of the values (so masking has work to do). */
function chunks(): string[] {
  const out: string[] = [];
  for (let c = 0; c < 8; c++) {
    let s = '';
    for (let line = 0; s.length < CHUNK; line++) {
      const n = c * 1000 + line;
      s += n % 200 === 0 ? `${new Date(0).toISOString()} INFO token=${values[n % SECRETS]} step ${n}\n` : `${new Date(0).toISOString()} INFO step ${n}: copied 4096 bytes to /var/lib/app/data/${n}.bin (ok)\n`;
    }
    out.push(s.slice(0, CHUNK));
  }
  return out;
}

async function post(url: string, token: string, body: unknown): Promise<unknown> {
  const res = await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${await res.text()}`);
  return res.status === 204 ? null : res.json();
}

/** One round: `jobs` simulated agents stream `mb` MB between them. Returns seconds and endpoint CPU seconds. */
async function round1(ep: Endpoint, mode: Mode, mb: number, jobs: number, tag: string) {
  const api = adminApi(ep);
  const created = await api.post<{ items: Array<{ id: string; token: string }> }>('/machines', { name: `${mode}-${tag}`, count: jobs, pipeline: mode, profiles: ['values'] });
  const claimed = await Promise.all(
    created.items.map(async (m) => {
      const r = (await post(`${ep.url}/api/v1/machines/${m.id}/claim?wait=0`, m.token, {})) as { job: { id: string } | null };
      if (!r.job) throw new Error(`machine ${m.id} got no job`);
      return { token: m.token, job: r.job.id };
    }),
  );
  const data = chunks();
  const perJob = Math.ceil((mb * 1e6) / CHUNK / jobs);
  const pid = serverPid(ep);
  const cpu0 = cpuOf(pid).self;
  const t0 = performance.now();
  await Promise.all(
    claimed.map(async ({ token, job }) => {
      for (let seq = 1; seq <= perJob; seq++) await post(`${ep.url}/api/v1/jobs/${job}/log`, token, { seq, stream: 'stdout', data: data[seq % data.length] });
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const cpu = cpuOf(pid).self - cpu0;
  await Promise.all(claimed.map(({ token, job }) => post(`${ep.url}/api/v1/jobs/${job}/complete`, token, { exitCode: 0, outputs: {} })));
  // The masking did its work: a value printed by the job is not in its stored log.
  const first = await api.get<{ chunks: Array<{ data: string }> }>(`/jobs/${claimed[0]!.job}/log`, { limit: 5 });
  const shown = first.chunks.some((c) => values.some((v) => c.data.includes(v)));
  if (shown !== (mode === 'unmasked')) throw new Error(`${mode}: the stored log ${shown ? 'shows' : 'does not show'} the values`);
  const bytes = perJob * jobs * CHUNK;
  return { seconds, cpu, mbps: bytes / 1e6 / seconds, cpuMsPerMb: (cpu * 1000) / (bytes / 1e6) };
}

export async function logsBench(flags: Flags, profileDir?: string): Promise<BenchReport> {
  const mb = flags.int('mb', 100, 1);
  const reps = flags.int('reps', 3, 1);
  const jobs = flags.int('jobs', 4, 1);
  flags.done();
  const results: Record<Mode, Array<Awaited<ReturnType<typeof round1>>>> = { masked: [], unmasked: [] };
  await withEndpoint({ profileDir }, async (ep) => {
    await adminApi(ep).post('/packs', { files: pack() });
    // Warm-up: JIT and SQLite caches, not counted.
    await round1(ep, 'unmasked', Math.min(10, mb), jobs, 'warm');
    await round1(ep, 'masked', Math.min(10, mb), jobs, 'warm');
    const timed = profileWindow();
    try {
      for (let r = 0; r < reps; r++) {
        // Alternate which mode goes first, so a slow phase of the machine does not always hit one.
        const order: Mode[] = r % 2 === 0 ? ['unmasked', 'masked'] : ['masked', 'unmasked'];
        for (const mode of order) {
          const res = await round1(ep, mode, mb, jobs, `r${r}`);
          results[mode].push(res);
          log(`  ${mode.padEnd(8)} rep ${r + 1}: ${round(res.mbps, 1)} MB/s, endpoint CPU ${round(res.cpuMsPerMb, 2)} ms/MB`);
        }
      }
    } finally {
      timed();
    }
  });
  // The masker alone, in this process: what masking adds per MB, without HTTP and SQLite around it.
  const masks = new LogMasks();
  masks.begin('bench', secretTexts(values));
  const data = chunks();
  const n = Math.ceil((mb * 1e6) / CHUNK);
  const m0 = performance.now();
  for (let seq = 1; seq <= n; seq++) masks.chunks('bench', [{ seq, stream: 'stdout', data: data[seq % data.length]! }]);
  const maskerMbps = (n * CHUNK) / 1e6 / ((performance.now() - m0) / 1000);
  const med = (mode: Mode, k: 'mbps' | 'cpuMsPerMb') => median(results[mode].map((x) => x[k]));
  const slower = (med('unmasked', 'mbps') / med('masked', 'mbps') - 1) * 100;
  const cpuMore = (med('masked', 'cpuMsPerMb') / med('unmasked', 'cpuMsPerMb') - 1) * 100;
  return {
    rows: [
      { metric: `unmasked: MB/s (median of ${reps} × ${mb} MB, ${jobs} jobs)`, value: round(med('unmasked', 'mbps'), 1) },
      { metric: `masked, ${SECRETS} secure values: MB/s`, value: round(med('masked', 'mbps'), 1) },
      { metric: 'masked throughput cost', value: `${round(slower, 1)} %`, goal: `≤ ${GOAL_PCT} %`, met: slower <= GOAL_PCT },
      { metric: 'unmasked: endpoint CPU per MB', value: `${round(med('unmasked', 'cpuMsPerMb'), 2)} ms` },
      { metric: 'masked: endpoint CPU per MB', value: `${round(med('masked', 'cpuMsPerMb'), 2)} ms` },
      { metric: 'masked CPU cost', value: `${round(cpuMore, 1)} %` },
      { metric: `the masker alone (${SECRETS} values, in-process): MB/s`, value: `${round(maskerMbps, 0)} (${round(1000 / maskerMbps, 2)} ms CPU per MB)` },
    ],
    data: { mb, reps, jobs, secrets: SECRETS, chunkBytes: CHUNK, results, maskerMbps },
    notes: [
      'unmasked = the same 20 values as plain (non-secure) params: the same requests and code path with nothing to mask',
      'one line in 200 prints a value; chunks are 32 KiB (the agent maximum), one request at a time per job',
      'CPU is the endpoint process only (utime+stime from /proc), over the streaming phase',
    ],
  };
}
