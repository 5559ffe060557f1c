/**
 * Issue 12: two endpoints on one host. Host resources (network namespaces, veths, bridges) belong to one
 * endpoint and carry its id: an import of the same machines (same ids) into a second endpoint makes its
 * own, and deleting a machine there leaves the first endpoint's namespace and agent alone. Networks come
 * from 10.213.0.0/16 (TAKT_NETNS_SUBNET). The naming rule itself is checked without root below.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetnsPlacement } from '../src/brokers/netns.js';
import type { Machine } from '../src/model/machine.js';
import { Endpoint, packFiles, until } from './helpers/endpoint.js';
import { bridgeOf, namespaceOf, netnsState } from './helpers/netns.js';

function netnsUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'not root';
  if (spawnSync('ip', ['-V']).status !== 0) return "no iproute2 `ip`";
  return null;
}
const skip = netnsUnavailable();
if (skip) console.warn(`two-endpoint netns test skipped: ${skip}`);

const namespaces = () => execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').map((l) => l.split(' ')[0]);
const noLog = () => undefined;

describe('netns names carry the endpoint id', () => {
  it('a new machine gets takt-<endpoint id>-<machine id>; one placed before endpoint ids keeps takt-<machine id>', () => {
    const data = mkdtempSync(join(tmpdir(), 'takt-netns-names-'));
    try {
      writeFileSync(join(data, 'endpoint-id'), '0a1b2c3d\n');
      const fresh = new NetnsPlacement({ dataDir: data, log: noLog, listen: () => Promise.reject(new Error('unused')) });
      expect(fresh.namespace({ id: 'm-new', name: 'n' })).toBe('takt-0a1b2c3d-m-new');
      // A state from before endpoint ids: its machines and bridge keep their names.
      writeFileSync(join(data, 'netns.json'), JSON.stringify({ prefix: '10.213.9', port: 0, hosts: { 'm-old': 2 } }));
      const legacy = new NetnsPlacement({ dataDir: data, log: noLog, listen: () => Promise.reject(new Error('unused')) });
      expect(legacy.namespace({ id: 'm-old', name: 'o' })).toBe('takt-m-old');
      expect(legacy.namespace({ id: 'm-new', name: 'n' })).toBe('takt-0a1b2c3d-m-new');
      expect(readFileSync(join(data, 'endpoint-id'), 'utf8').trim()).toBe('0a1b2c3d');
    } finally {
      rmSync(data, { recursive: true, force: true });
    }
  });

  it('the endpoint id is made once and kept', () => {
    const data = mkdtempSync(join(tmpdir(), 'takt-netns-id-'));
    try {
      new NetnsPlacement({ dataDir: data, log: noLog, listen: () => Promise.reject(new Error('unused')) });
      const id = readFileSync(join(data, 'endpoint-id'), 'utf8').trim();
      expect(id).toMatch(/^[0-9a-f]{8}$/);
      new NetnsPlacement({ dataDir: data, log: noLog, listen: () => Promise.reject(new Error('unused')) });
      expect(readFileSync(join(data, 'endpoint-id'), 'utf8').trim()).toBe(id);
    } finally {
      rmSync(data, { recursive: true, force: true });
    }
  });
});

describe.skipIf(skip !== null)('two endpoints on one host', () => {
  let a: Endpoint;
  let b: Endpoint;
  const env = { TAKT_NETNS_SUBNET: '10.213.0.0/16' };
  const made: string[] = [];

  beforeAll(async () => {
    [a, b] = await Promise.all([Endpoint.start({ env }), Endpoint.start({ env })]);
    await a.api.post('/packs', { files: await packFiles('envs') });
  });
  afterAll(async () => {
    for (const ep of [a, b]) for (const m of (await ep?.api.get<{ items: Machine[] }>('/machines').catch(() => ({ items: [] })))?.items ?? []) await ep.call('DELETE', `/machines/${m.id}`).catch(() => undefined);
    await Promise.all([a?.stop(), b?.stop()]);
    const left = new Set(namespaces());
    for (const ns of made) if (left.has(ns)) spawnSync('ip', ['netns', 'del', ns]);
  });

  it("an import into a second endpoint makes its own namespace; deleting the machine there leaves the first one's", async () => {
    const c = await a.cli(['machines', 'create', 'twin', '--broker', 'netns', '--pipeline', 'envs']);
    expect(c.code, c.stderr).toBe(0);
    expect((await a.cli(['machines', 'wait', 'twin', '--timeout', '60s'])).code).toBe(0);
    const m = await a.api.get<Machine>('/machines/twin');
    const nsA = namespaceOf(a.data, m.id);
    made.push(nsA);
    expect(netnsState(a.data)!.prefix).toMatch(/^10\.213\.\d+$/);

    const dir = mkdtempSync(join(tmpdir(), 'takt-export-'));
    try {
      expect((await a.cli(['export', dir])).code).toBe(0);
      const imp = await b.cli(['import', dir]);
      expect(imp.code, imp.stderr).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect((await b.api.get<Machine>('/machines/twin')).id).toBe(m.id);
    const nsB = await until(async () => netnsState(b.data)?.namespaces?.[m.id], 60_000, "the second endpoint's namespace");
    made.push(nsB);
    expect(nsB).not.toBe(nsA);
    await until(async () => namespaces().includes(nsB), 60_000, `namespace ${nsB}`);
    expect(namespaces()).toContain(nsA);
    // Each endpoint's bridge is its own, and a legal interface name.
    expect(bridgeOf(a.data)).not.toBe(bridgeOf(b.data));
    for (const br of [bridgeOf(a.data), bridgeOf(b.data)]) expect(br.length).toBeLessThanOrEqual(15);
    expect(netnsState(b.data)!.prefix).toMatch(/^10\.213\.\d+$/);
    expect(netnsState(b.data)!.prefix).not.toBe(netnsState(a.data)!.prefix);

    const d = await b.cli(['machines', 'delete', 'twin']);
    expect(d.code, d.stderr).toBe(0);
    expect(namespaces()).not.toContain(nsB);
    // The first endpoint's namespace, and its agent in it, are untouched.
    expect(namespaces()).toContain(nsA);
    const agentPid = readFileSync(join(a.data, 'machines', m.id, 'agent.pid'), 'utf8').trim();
    expect(execFileSync('ip', ['netns', 'pids', nsA], { encoding: 'utf8' }).split('\n')).toContain(agentPid);
    // … and still does work: a restart runs the pipeline to done again.
    expect((await a.cli(['machines', 'restart', 'twin'])).code).toBe(0);
    expect((await a.cli(['machines', 'wait', 'twin', '--timeout', '60s'])).code).toBe(0);

    expect((await a.cli(['machines', 'delete', 'twin'])).code).toBe(0);
    expect(namespaces()).not.toContain(nsA);
  }, 150_000);
});
