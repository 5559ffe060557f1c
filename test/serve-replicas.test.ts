/**
 * Issue 15, serve side: several active `takt serve` replicas on one PostgreSQL database. Three real
 * `takt serve` processes (each with a data dir of its own; secret.key, admin.token and tls/ copied from the
 * first) behind a tiny round-robin TCP proxy in this test (the load balancer), broker-less machines whose
 * `takt agent` processes talk to the proxy:
 * - every pipeline completes and every task ran exactly once (the jobs table, read directly);
 * - kill -9 of one replica mid-run: the machines still finish, nothing ran twice, nothing was lost;
 * - local-broker machines stay with the replica that made them: another replica does not adopt them when
 *   it restarts, and a delete or power change through it is carried out by the owner;
 * - a replica without the shared keys, with another secret.key, with another CA, or with a live replica's
 *   endpoint id (a data dir copied whole) is refused.
 * Real PostgreSQL, a fresh database of its own (test/helpers/postgres.ts); skipped, saying why, only when
 * no PostgreSQL is reachable and CI is not set. Nothing waits on the demo's sleeps: every wait polls
 * state (machines done, jobs succeeded, a directory gone) under a deadline that fails with what it saw.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TlsManager } from '../src/api/tls.js';
import { readPackDir } from '../src/content/files.js';
import { AgentProcess } from './helpers/liveness.js';
import { Endpoint, ROOT, serveRefusal, until } from './helpers/endpoint.js';
import { freshDatabase, pgUnavailable, withClient } from './helpers/postgres.js';

const pgWhy = await pgUnavailable();

/**
 * The load balancer: a TCP proxy on loopback that hands each new connection to the next backend in turn,
 * skipping one that refuses the connection (a dead replica), at most once round all of them.
 */
class RoundRobinProxy {
  private next = 0;
  private readonly sockets = new Set<net.Socket>();
  private readonly server: net.Server;
  port = 0;
  /** Connections handed to each backend (by index). */
  readonly served: number[];

  constructor(private readonly backends: () => Array<{ host: string; port: number }>) {
    this.served = backends().map(() => 0);
    this.server = net.createServer((client) => this.accept(client));
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return `http://127.0.0.1:${this.port}`;
  }

  private accept(client: net.Socket): void {
    this.sockets.add(client);
    client.on('close', () => this.sockets.delete(client));
    client.on('error', () => client.destroy());
    client.pause();
    const all = this.backends();
    const attempt = (tries: number) => {
      if (tries >= all.length) return client.destroy();
      const i = this.next++ % all.length;
      const upstream = net.connect(all[i]!);
      this.sockets.add(upstream);
      upstream.on('close', () => this.sockets.delete(upstream));
      let connected = false;
      upstream.on('error', () => {
        upstream.destroy();
        // Refused (a dead replica): the next backend; once connected, an error ends the client's connection.
        if (connected) client.destroy();
        else attempt(tries + 1);
      });
      upstream.once('connect', () => {
        connected = true;
        this.served[i]!++;
        client.on('close', () => upstream.destroy());
        upstream.on('close', () => client.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    attempt(0);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** A data dir for a new replica holding copies of what replicas share: secret.key, admin.token, tls/. */
function replicaDir(from: string, what: { key?: boolean; token?: boolean; tls?: boolean } = { key: true, token: true, tls: true }): string {
  const dir = mkdtempSync(join(tmpdir(), 'takt-replica-'));
  if (what.key) cpSync(join(from, 'secret.key'), join(dir, 'secret.key'));
  if (what.token) cpSync(join(from, 'admin.token'), join(dir, 'admin.token'));
  if (what.tls) cpSync(join(from, 'tls'), join(dir, 'tls'), { recursive: true });
  return dir;
}


/** Whether process `pid` runs (a zombie, exited but not yet reaped by its parent, does not). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

interface JobRow {
  machine_id: string;
  stage: string;
  task: string;
  state: string;
}

describe.skipIf(pgWhy !== null)(pgWhy === null ? 'takt serve replicas on one PostgreSQL' : `takt serve replicas — SKIPPED: ${pgWhy}`, () => {
  let db: Awaited<ReturnType<typeof freshDatabase>>;
  const eps: Endpoint[] = [];
  let proxy: RoundRobinProxy;
  let lb = '';
  let token = '';
  const agents: AgentProcess[] = [];
  /** Steps of the demo pipeline (stage/task), as the first finished machine passed them. */
  let steps = 0;

  beforeAll(async () => {
    db = await freshDatabase();
    const env = { TAKT_STORE: db.url };
    eps.push(await Endpoint.start({ env, lease: '4s' }));
    const a = eps[0]!;
    // The demo pack is installed before the other replicas start, so each loads it at its start.
    const r = await a.call('POST', '/packs', { files: await readPackDir(join(ROOT, 'content', 'demo')) });
    expect(r.status, JSON.stringify(r.body)).toBeLessThan(300);
    for (let i = 0; i < 2; i++) eps.push(await Endpoint.start({ env, lease: '4s', data: replicaDir(a.data) }));
    token = a.token;
    proxy = new RoundRobinProxy(() => eps.map((e) => ({ host: '127.0.0.1', port: Number(new URL(e.url).port) })));
    lb = await proxy.listen();
  }, 180_000);

  afterAll(async () => {
    await Promise.all(agents.map((x) => x.dispose()));
    await proxy?.close();
    for (const e of eps) await e.stop();
    await db?.drop();
  });

  /** One API call through the load balancer, with the shared admin token. */
  const call = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${lb}/api/v1${path}`, { method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  };

  /** Creates `n` broker-less demo machines through the load balancer and starts an agent for each, pointed at it. */
  async function fleet(prefix: string, n: number): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 1; i <= n; i++) {
      const r = await call('POST', '/machines', { name: `${prefix}-${i}`, environment: 'local', pipeline: 'demo' });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      const m = r.body.items[0] as { id: string; token: string; host?: string };
      expect(m.host).toBeUndefined(); // no broker: no replica holds it
      ids.push(m.id);
      agents.push(new AgentProcess(lb, m.token).start()); // its own root: the demo writes etc/ under it
    }
    return ids;
  }

  const jobsOf = (ids: string[]) => withClient(db.url, async (c) => (await c.query<JobRow>("select machine_id, stage, task, state from jobs where machine_id = any($1) and kind = 'pipeline'", [ids])).rows);

  /** Waits (bounded) until every machine is done; fails naming the ones that are not. */
  async function allDone(ids: string[], ms: number): Promise<void> {
    let last: Array<{ name: string; state: string; reason: string | null }> = [];
    await until(
      async () => {
        const r = await call('GET', '/machines?limit=1000');
        last = (r.body.items as Array<{ id: string; name: string; state: string; reason: string | null }>).filter((m) => ids.includes(m.id));
        return last.length === ids.length && last.every((m) => m.state === 'done');
      },
      ms,
      'every machine done',
    ).catch((err: Error) => {
      throw new Error(`${err.message}; not done: ${JSON.stringify(last.filter((m) => m.state !== 'done'))}\n${eps.map((e) => e.output.slice(-3000)).join('\n----\n')}`);
    });
  }

  /** Every task of every machine ran exactly once, and succeeded. */
  function exactlyOnce(ids: string[], jobs: JobRow[]): void {
    const byStep = new Map<string, JobRow[]>();
    for (const j of jobs) byStep.set(`${j.machine_id} ${j.stage}/${j.task}`, [...(byStep.get(`${j.machine_id} ${j.stage}/${j.task}`) ?? []), j]);
    const twice = [...byStep].filter(([, js]) => js.length !== 1).map(([k, js]) => `${k}: ${js.map((j) => j.state).join(',')}`);
    expect(twice, 'tasks with more than one job').toEqual([]);
    expect(jobs.filter((j) => j.state !== 'succeeded').map((j) => `${j.machine_id} ${j.stage}/${j.task} ${j.state}`)).toEqual([]);
    expect(byStep.size).toBe(ids.length * steps);
  }

  it('30 machines whose agents reach the replicas through a load balancer: every pipeline completes, every task once', async () => {
    for (const e of eps) expect(e.output).toMatch(/replica [0-9a-f]{8} \(this data dir's endpoint id\): \d takt serve replicas? live on this database/);
    expect(eps[2]!.output).toContain('3 takt serve replicas live on this database');
    const ids = await fleet('lb', 30);
    await allDone(ids, 150_000);
    const first = await call('GET', `/machines/${ids[0]}`);
    steps = (first.body.passed as string[]).length;
    expect(steps).toBeGreaterThan(5);
    exactlyOnce(ids, await jobsOf(ids));
    // The balancer spread the connections over all three.
    expect(proxy.served.every((n) => n > 0), JSON.stringify(proxy.served)).toBe(true);
  }, 200_000);

  it('kill -9 of one replica mid-run: every machine still finishes, nothing runs twice, nothing is lost', async () => {
    expect(steps).toBeGreaterThan(0);
    const ids = await fleet('kill', 30);
    // Mid-run: some jobs have succeeded and others are running.
    await until(
      async () => {
        const jobs = await jobsOf(ids);
        return jobs.filter((j) => j.state === 'succeeded').length >= 30 && jobs.filter((j) => j.state === 'running').length >= 5;
      },
      90_000,
      'some jobs succeeded while others run',
    );
    await eps[2]!.crash();
    await allDone(ids, 120_000);
    exactlyOnce(ids, await jobsOf(ids));
  }, 200_000);

  it('local-broker machines stay with the replica that made them: not adopted by another on its restart; deleted or powered through another, acted on by their own', async () => {
    const [a, b] = [eps[0]!, eps[1]!];
    const hostA = readFileSync(join(a.data, 'endpoint-id'), 'utf8').trim();
    const r = await a.call('POST', '/machines', { name: 'sandbox', broker: 'local', count: 2 });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const made = r.body.items as Array<{ id: string; name: string; host: string }>;
    expect(made.map((m) => m.host)).toEqual([hostA, hostA]);
    for (const m of made) expect(existsSync(join(a.data, 'machines', m.id))).toBe(true);
    // Their agents connect to A.
    await until(async () => (await b.call('GET', `/machines/${made[0]!.id}`)).body.agent?.connected === true, 60_000, 'the agent on A connected');

    // The second as a machine made before replicas: no host recorded.
    await withClient(db.url, (c) => c.query('update machines set host = null where id = $1', [made[1]!.id]));
    await b.terminate();
    const said = b.output.length;
    await b.boot();
    // B has adopted what it holds (none of A's) once it says so.
    await until(async () => /adopted 0 machines whose sandbox or VM this host holds/.test(b.output.slice(said)), 30_000, 'B adopted its machines');
    for (const m of made) expect(existsSync(join(b.data, 'machines', m.id)), `B adopted ${m.name}`).toBe(false);
    expect((await b.call('GET', `/machines/${made[1]!.id}`)).body.host).toBeUndefined();
    // Its sandbox is in A's data dir: A adopts it at its next start, and records itself as its host.
    await a.terminate();
    await a.boot();
    // (A adopts after it starts to listen, so its start is not the moment to look.)
    await until(async () => (await b.call('GET', `/machines/${made[1]!.id}`)).body.host === hostA, 30_000, 'A recorded itself as the host of the machine it adopted');
    await until(async () => (await a.call('GET', `/machines/${made[1]!.id}`)).body.agent?.connected === true, 60_000, 'the adopted agent on A connected');
    const wide = await b.cli(['machines', 'list', '-o', 'wide']);
    expect(wide.stdout).toMatch(/REPLICA/);
    expect(wide.stdout).toContain(hostA);
    const described = await b.cli(['machines', 'describe', made[0]!.name]);
    expect(described.stdout).toMatch(new RegExp(`Replica:\\s+${hostA} \\(the takt serve that holds its sandbox`));

    // Deleted through B: B does not touch a sandbox it does not have; A destroys its own on the event.
    const pid = Number(readFileSync(join(a.data, 'machines', made[0]!.id, 'agent.pid'), 'utf8'));
    const del = await b.call('DELETE', `/machines/${made[0]!.id}`);
    expect(del.status, JSON.stringify(del.body)).toBe(200);
    await until(async () => !existsSync(join(a.data, 'machines', made[0]!.id)), 30_000, "A removed the deleted machine's sandbox");
    expect(alive(pid)).toBe(false);
    // The other one is untouched and still A's.
    expect(existsSync(join(a.data, 'machines', made[1]!.id))).toBe(true);

    // Its power switched through B: the record changes there, and A stops (then starts) its agent.
    const pidOf = () => Number(readFileSync(join(a.data, 'machines', made[1]!.id, 'agent.pid'), 'utf8'));
    const first = pidOf();
    expect(alive(first)).toBe(true);
    expect((await b.call('POST', `/machines/${made[1]!.id}/power`, { power: 'off' })).status).toBe(200);
    await until(async () => a.output.includes(`${made[1]!.name} powered off: its agent stops`), 30_000, 'A heard the power change made through B');
    await until(async () => !alive(first), 30_000, "A stopped the powered-off machine's agent");
    expect(existsSync(join(b.data, 'machines', made[1]!.id))).toBe(false);
    expect((await b.call('POST', `/machines/${made[1]!.id}/power`, { power: 'on' })).status).toBe(200);
    await until(async () => a.output.includes(`${made[1]!.name} powered on: its agent starts`), 30_000, 'A heard the power change made through B');
    await until(async () => pidOf() !== first && alive(pidOf()), 30_000, "A started the powered-on machine's agent again");
  }, 360_000);

  it('refuses a replica without the shared keys, with another secret.key, with another CA, or with the endpoint id of a live one', async () => {
    const a = eps[0]!;
    const dirs: string[] = [];
    try {
      // An empty data dir: nothing is invented, the message says what to copy.
      const empty = mkdtempSync(join(tmpdir(), 'takt-replica-'));
      dirs.push(empty);
      const e = await serveRefusal(empty, { TAKT_STORE: db.url });
      expect(e.code, e.stderr).toBe(1);
      expect(e.stderr).toContain('has no secret.key, admin.token, tls/ca.pem, tls/ca.key');
      expect(e.stderr).toContain("copy secret.key, admin.token and the tls/ directory from an existing replica's data dir");
      expect(existsSync(join(empty, 'secret.key'))).toBe(false);

      // Another secret.key: it could open none of the sealed values.
      const otherKey = replicaDir(a.data, { token: true, tls: true });
      dirs.push(otherKey);
      writeFileSync(join(otherKey, 'secret.key'), randomBytes(32).toString('base64') + '\n', { mode: 0o600 });
      const k = await serveRefusal(otherKey, { TAKT_STORE: db.url });
      expect(k.code, k.stderr).toBe(1);
      expect(k.stderr).toContain(`${join(otherKey, 'secret.key')} is not the key the other takt serve replicas on`);

      // Another CA: agents that pin the replicas' CA would refuse it.
      const otherCa = replicaDir(a.data, { key: true, token: true });
      dirs.push(otherCa);
      await new TlsManager({ dataDir: otherCa, names: ['localhost'] }).ensure();
      const c = await serveRefusal(otherCa, { TAKT_STORE: db.url });
      expect(c.code, c.stderr).toBe(1);
      expect(c.stderr).toMatch(/the CA in \S+ \(sha256 [0-9A-F:]+\) is not the CA of the other takt serve replicas on postgres:\/\/\S+ \(sha256 [0-9A-F:]+\)/);

      // A data dir copied whole (here: with A's endpoint id): it would adopt and destroy A's machines.
      const twin = replicaDir(a.data);
      dirs.push(twin);
      cpSync(join(a.data, 'endpoint-id'), join(twin, 'endpoint-id'));
      const t = await serveRefusal(twin, { TAKT_STORE: db.url });
      expect(t.code, t.stderr).toBe(1);
      expect(t.stderr).toContain(`runs with endpoint id ${readFileSync(join(a.data, 'endpoint-id'), 'utf8').trim()} (the endpoint-id file of its data dir): each replica needs a data dir of its own`);
    } finally {
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    }
  }, 120_000);
});
