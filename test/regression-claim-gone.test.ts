/**
 * Regression: a long-poll claim whose agent has given up (its HTTP client timed out and closed the
 * connection) must not take a job. Before the fix the endpoint went on waiting after the client had
 * gone, created the job when work arrived and wrote the answer to a closed socket; the agent's next
 * claim then found that job "running", called it abandoned, marked it lost and stopped the line. Under
 * CPU starvation (the ansible bench with profiling) this showed up as jobs ending "lost".
 */
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles } from './helpers/endpoint.js';

let ep: Endpoint;

async function call(method: string, path: string, body?: unknown, token?: string, signal?: AbortSignal) {
  const headers: Record<string, string> = body !== undefined ? { 'content-type': 'application/json' } : {};
  headers.authorization = `Bearer ${token ?? ep.token}`;
  const res = await fetch(`${ep.url}/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  ep = await Endpoint.start({ lease: '30s' });
  const r = await call('POST', '/packs', { files: await packFiles('basic') });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
});
afterAll(async () => ep?.stop());

describe('a claim whose agent has gone', () => {
  it('a long-poll claim sent the way the agent sends it (a JSON body) really waits for work', async () => {
    // Node emits 'close' on a request as soon as its body has been read; taking that for "the client
    // went away" ended every long-poll at once and turned the agents' claims into 1 s polling.
    const made = await call('POST', '/machines', { name: 'gone-0' });
    const m = made.body.items[0] as { id: string; token: string };
    const started = Date.now();
    const pending = call('POST', `/machines/${m.id}/claim?wait=20`, {}, m.token);
    await sleep(700);
    expect((await call('PATCH', `/machines/${m.id}`, { pipeline: 'basic' })).status).toBe(200);
    const r = await pending;
    expect(r.body.job?.task).toBe('hello');
    expect(Date.now() - started).toBeGreaterThanOrEqual(650);
  });

  it('a long-poll with nothing to do answers after its wait, not at once', async () => {
    const made = await call('POST', '/machines', { name: 'gone-idle' });
    const m = made.body.items[0] as { id: string; token: string };
    const started = Date.now();
    const r = await call('POST', `/machines/${m.id}/claim?wait=1`, {}, m.token);
    expect(r.body.job).toBeNull();
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
  });

  it('takes no job when work arrives after the client gave up, so nothing is lost', async () => {
    const made = await call('POST', '/machines', { name: 'gone-1' });
    const m = made.body.items[0] as { id: string; token: string };
    // The agent long-polls an idle machine, then gives up (its client timeout) and closes the connection.
    const giveUp = new AbortController();
    const pending = call('POST', `/machines/${m.id}/claim?wait=20`, {}, m.token, giveUp.signal).catch((e: unknown) => e);
    await sleep(300);
    giveUp.abort();
    await pending;
    await sleep(300);
    // Work arrives: the abandoned long-poll must not turn it into a job nobody will run.
    expect((await call('PATCH', `/machines/${m.id}`, { pipeline: 'basic' })).status).toBe(200);
    await sleep(500);
    expect((await call('GET', `/jobs?machine=${m.id}`)).body.items).toEqual([]);
    // The agent claims again: it gets the first task, and the line keeps going.
    const c = await call('POST', `/machines/${m.id}/claim`, {}, m.token);
    expect(c.body.job?.task).toBe('hello');
    const done = await call('POST', `/jobs/${c.body.job.id}/complete`, { exitCode: 0, outputs: { count: '3' } }, m.token);
    expect(done.body.job.state).toBe('succeeded');
    const machine = (await call('GET', `/machines/${m.id}`)).body;
    expect(machine.state, machine.reason ?? '').not.toBe('stopped');
    const lost = (await call('GET', `/jobs?machine=${m.id}&state=lost`)).body.items;
    expect(lost).toEqual([]);
  });

  it('a claim whose connection closes before the answer is written leaves no job running', async () => {
    // The agent's client gives up at the moment the endpoint gets to its claim (a starved endpoint
    // reaches a request after the client's timeout): the request arrives, the connection closes at once.
    const url = new URL(ep.url);
    for (let i = 0; i < 10; i++) {
      const made = await call('POST', '/machines', { name: `gone-race-${i}`, pipeline: 'basic' });
      const m = made.body.items[0] as { id: string; token: string };
      await new Promise<void>((resolve) => {
        const s = connect(Number(url.port), url.hostname, () => {
          s.write(`POST /api/v1/machines/${m.id}/claim?wait=5 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${m.token}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`);
          s.destroy();
          resolve();
        });
      });
      await sleep(200);
      // The agent retries and says it has received no job yet (the agent sends this after its first claim).
      const c = await call('POST', `/machines/${m.id}/claim`, { lastJob: null }, m.token);
      expect(c.body.job?.task, JSON.stringify(c.body)).toBe('hello');
      const lost = (await call('GET', `/jobs?machine=${m.id}&state=lost`)).body.items;
      expect(lost).toEqual([]);
      const jobs = (await call('GET', `/jobs?machine=${m.id}`)).body.items as Array<{ state: string; reason: string | null }>;
      // At most the handed-back one besides the running one, and it says why.
      for (const j of jobs.filter((x) => x.state !== 'running')) expect(j).toMatchObject({ state: 'cancelled', reason: expect.stringMatching(/never answered/) });
    }
  });

  it('a claim that names a different last job hands the unreceived one back; one that says nothing still calls it abandoned', async () => {
    const made = await call('POST', '/machines', { name: 'gone-name', pipeline: 'basic' });
    const m = made.body.items[0] as { id: string; token: string };
    const first = (await call('POST', `/machines/${m.id}/claim`, {}, m.token)).body.job;
    expect((await call('POST', `/jobs/${first.id}/complete`, { exitCode: 0, outputs: { count: '3' } }, m.token)).body.job.state).toBe('succeeded');
    // The answer to this claim is "lost in the network": the agent still knows only `first`.
    const unseen = (await call('POST', `/machines/${m.id}/claim`, { lastJob: first.id }, m.token)).body.job;
    const again = (await call('POST', `/machines/${m.id}/claim`, { lastJob: first.id }, m.token)).body.job;
    expect(again.task).toBe(unseen.task);
    expect(again.id).not.toBe(unseen.id);
    expect((await call('GET', `/jobs/${unseen.id}`)).body).toMatchObject({ state: 'cancelled', reason: expect.stringMatching(/never answered/) });
    // An agent that cannot say (restarted without its state) claims while `again` runs: that one is lost.
    const blind = await call('POST', `/machines/${m.id}/claim`, {}, m.token);
    expect(blind.body.machine.state).toBe('stopped');
    expect((await call('GET', `/jobs/${again.id}`)).body.state).toBe('lost');
  });
});
