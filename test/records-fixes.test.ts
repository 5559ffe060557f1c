/**
 * Build records consider the tasks of the machine's CURRENT pipeline (FINDINGS nu12 F22, F5): a task the
 * pipeline no longer has is a leftover (shown, never matched), a task it has but never ran makes the machine
 * stale, and a machine rebuilt end to end with a new version stops matching `--built-with OLD`.
 * Through the CLI against a real endpoint and the local broker.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles, writePack } from './helpers/endpoint.js';

let ep: Endpoint;
let work: string;

async function json<T>(args: string[]): Promise<T> {
  const r = await ep.cli([...args, '-o', 'json']);
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  return JSON.parse(r.stdout) as T;
}

interface Rec {
  entries: Array<{ stage: string; task: string; pack: string }>;
  leftover: Array<{ stage: string; task: string; pack: string }>;
  stale: string[];
}

beforeAll(async () => {
  ep = await Endpoint.start();
  work = mkdtempSync(join(tmpdir(), 'takt-records-'));
  const v1 = await packFiles('seed');
  writePack(join(work, 'v1'), v1);
  // 1.1.0 drops `check` from the pipeline and adds a new task `verify` (a fix shipped as a new task).
  const { 'tasks/check.yaml': _dropped, ...rest } = v1;
  writePack(join(work, 'v2'), {
    ...rest,
    'pack.yaml': v1['pack.yaml']!.replace('1.0.0', '1.1.0'),
    'stages/main.yaml': 'name: main\ntasks: [configure, verify]\n',
    'tasks/verify.yaml': 'name: verify\nscript: |\n  test -f "$TAKT_ROOT/etc/app.conf"\n',
  });
});
afterAll(async () => ep?.stop());

describe('build records follow the current pipeline', () => {
  it('a never-run task is stale, a removed task is a leftover, and a rebuild stops matching the old version', async () => {
    await json(['content', 'install', join(work, 'v1')]);
    const made = await json<Array<{ name: string }>>(['machines', 'create', 'rec-1', '--broker', 'local', '--pipeline', 'seed']);
    expect(made.map((m) => m.name)).toEqual(['rec-1']);
    const w = await ep.cli(['machines', 'wait', 'rec-1', '--timeout', '60s']);
    expect(w.code, w.stdout + w.stderr).toBe(0);
    expect((await json<Rec>(['machines', 'record', 'rec-1'])).stale).toEqual([]);

    await json(['content', 'install', join(work, 'v2')]);
    await json(['content', 'use', 'seed@1.1.0']);

    // F5: the new task never ran → stale; the removed task is not cited.
    const stale = await json<Array<{ name: string; stale: string[] }>>(['machines', 'list', '--stale']);
    expect(stale.map((m) => [m.name, m.stale])).toEqual([['rec-1', ['never ran: main/verify']]]);
    const rec = await json<Rec>(['machines', 'record', 'rec-1']);
    expect(rec.entries.map((e) => `${e.stage}/${e.task}`)).toEqual(['main/configure']);
    expect(rec.leftover.map((e) => [`${e.stage}/${e.task}`, e.pack])).toEqual([['main/check', 'seed@1.0.0']]);
    const text = await ep.cli(['machines', 'record', 'rec-1']);
    expect(text.stdout).toMatch(/no longer in the pipeline[^\n]*\n\s+main\/check\s+seed@1\.0\.0/);
    expect(text.stdout).toMatch(/never ran: main\/verify/);

    // F22: rebuilt end to end with 1.1.0, the machine no longer matches the old version, and is current.
    expect((await json<Array<{ name: string }>>(['machines', 'list', '--built-with', 'seed@<1.1.0'])).map((m) => m.name)).toEqual(['rec-1']);
    expect((await ep.cli(['machines', 'restart', 'rec-1'])).code).toBe(0);
    expect((await ep.cli(['machines', 'wait', 'rec-1', '--timeout', '60s'])).code).toBe(0);
    expect(await json<unknown[]>(['machines', 'list', '--built-with', 'seed@<1.1.0'])).toEqual([]);
    expect((await json<Array<{ name: string }>>(['machines', 'list', '--built-with', 'seed@1.1.0'])).map((m) => m.name)).toEqual(['rec-1']);
    expect(await json<unknown[]>(['machines', 'list', '--stale'])).toEqual([]);
    const after = await json<Rec>(['machines', 'record', 'rec-1']);
    expect(after.entries.map((e) => [`${e.stage}/${e.task}`, e.pack])).toEqual([
      ['main/configure', 'seed@1.1.0'],
      ['main/verify', 'seed@1.1.0'],
    ]);
    expect(after.stale).toEqual([]);
    expect(after.leftover.map((e) => `${e.stage}/${e.task}`)).toEqual(['main/check']);
  }, 300_000); // a ten-task story with rebuilds: ~15 s quiet, 70 s seen at load 20
});
