/**
 * `takt events watch` keeps watching across an endpoint restart: it resumes after the last event it
 * printed, so nothing is skipped and nothing is printed twice.
 */
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Endpoint, TAKT } from './helpers/endpoint.js';

let ep: Endpoint;

beforeAll(async () => {
  ep = await Endpoint.start();
});
afterAll(async () => ep?.stop());

async function until(what: string, ok: () => boolean, ms = 30_000) {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

it('resumes after an endpoint restart without skipping or repeating an event', async () => {
  const watch = spawn(process.execPath, [TAKT, 'events', 'watch', '--topics', 'machines.create', '--since', '0', '-o', 'json'], {
    env: { ...process.env, NO_COLOR: '1', TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token },
  });
  let out = '';
  let err = '';
  watch.stdout.on('data', (d: Buffer) => (out += d.toString()));
  watch.stderr.on('data', (d: Buffer) => (err += d.toString()));
  try {
    const names = () => out.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { data: { name: string } }).data.name);
    await ep.api.post('/machines', { name: 'watched-1' });
    await until('the first event', () => names().includes('watched-1')).catch((e: Error) => {
      throw new Error(`${e.message}; stdout: ${out}; stderr: ${err}`);
    });

    await ep.crash();
    await ep.boot();
    await ep.api.post('/machines', { name: 'watched-2' });
    await until('the event after the restart', () => names().includes('watched-2'));
    expect(names()).toEqual(['watched-1', 'watched-2']);
    expect(err).toMatch(/reconnecting in|resuming/);
    expect(watch.exitCode).toBeNull();
  } finally {
    watch.kill();
  }
}, 120_000);
