/**
 * Micro-benchmark of the JSON client: sequential small POSTs to a local node:http server answering `{}`,
 * ApiClient (node:http, keep-alive agent) against plain fetch (undici) with a timeout signal, as the
 * client used to send them. Prints CPU and wall time per request. Standalone: `npx tsx bench/httpclient.ts [n]`.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ApiClient } from '../src/client/http.js';

const N = Number(process.argv[2] ?? 5000);
const WARMUP = 300;
const body = { state: 'running', at: new Date().toISOString(), seq: 1 };

const server = createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': 2 });
    res.end('{}');
  });
});
await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

async function measure(name: string, one: () => Promise<unknown>): Promise<void> {
  for (let i = 0; i < WARMUP; i++) await one();
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i++) await one();
  const wallUs = Number(process.hrtime.bigint() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  // Client and server share this process: the server's part is the same for both, so the difference is the client's.
  console.log(`${name.padEnd(31)} cpu ${((cpu.user + cpu.system) / N).toFixed(1).padStart(6)} µs/req   wall ${(wallUs / N).toFixed(1).padStart(6)} µs/req`);
}

const client = new ApiClient({ endpoint, token: 'bench' });
const controller = new AbortController();
const headers = { authorization: 'Bearer bench', 'content-type': 'application/json' };
const url = `${endpoint}/api/v1/jobs/x/heartbeat`;
// Plain fetch, no signal at all: the floor for undici.
const plainFetch = async () => JSON.parse(await (await fetch(url, { method: 'POST', headers, body: JSON.stringify(body) })).text()) as unknown;
// What ApiClient did before: fetch with AbortSignal.any([caller's signal, AbortSignal.timeout]).
const oldClient = async () => {
  const signal = AbortSignal.any([controller.signal, AbortSignal.timeout(30_000)]);
  return JSON.parse(await (await fetch(url, { method: 'POST', headers, body: JSON.stringify(body), signal })).text()) as unknown;
};
const newClient = () => client.post('/jobs/x/heartbeat', body, { signal: controller.signal });

console.log(`${N} sequential POSTs to ${endpoint} (server in the same process), Node ${process.version}`);
await measure('plain fetch', plainFetch);
await measure('fetch + AbortSignal.any (old)', oldClient);
await measure('ApiClient.post + signal (new)', newClient);
client.close();
server.closeAllConnections();
server.close();
