/**
 * A machine's power configuration as desired state, through the CLI against a real endpoint (no VM):
 * set with --power-driver/--power-opt, changed one setting at a time, refused with its field path (a
 * password in the clear among them), recorded in history, exported and put back by an import.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Machine } from '../src/model/machine.js';
import { Endpoint } from './helpers/endpoint.js';

describe('power configuration through the CLI', () => {
  let ep: Endpoint;
  let dir: string;
  const get = async (name: string) => JSON.parse((await ep.cli(['machines', 'get', name, '-o', 'json'])).stdout) as Machine;

  beforeAll(async () => {
    ep = await Endpoint.start();
    dir = mkdtempSync(join(tmpdir(), 'takt-powercfg-'));
  }, 120_000);
  afterAll(async () => {
    await ep?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('sets, changes and removes it, refusing bad settings with the field path', async () => {
    const c = await ep.cli(['machines', 'create', 'rack-1', '--environment', 'metal', '--mac', '52:54:00:bb:00:01', '--power-driver', 'manual', '-o', 'json']);
    expect(c.code, c.stderr).toBe(0);
    expect((JSON.parse(c.stdout) as Machine[])[0]!.powerConfig).toEqual({ driver: 'manual' });

    const u = await ep.cli(['machines', 'update', 'rack-1', '--power-driver', 'qmp', '--power-opt', 'socket=/run/vm/qmp.sock']);
    expect(u.code, u.stderr).toBe(0);
    const o = await ep.cli(['machines', 'update', 'rack-1', '--power-opt', 'disk=disk1']);
    expect(o.code, o.stderr).toBe(0);
    expect((await get('rack-1')).powerConfig).toEqual({ driver: 'qmp', socket: '/run/vm/qmp.sock', disk: 'disk1' });
    const d = await ep.cli(['machines', 'describe', 'rack-1']);
    expect(d.stdout).toMatch(/Power: +on \(desired\) · driver driver=qmp, socket=\/run\/vm\/qmp\.sock, disk=disk1/);
    expect(d.stdout).toMatch(/Boot: +bootenv local · MAC 52:54:00:bb:00:01/);

    const table: Array<[string[], RegExp]> = [
      [['--power-driver', 'qmp', '--power-opt', 'password=hunter2'], /secret is never stored.*password-param.*\(at \/powerConfig\/password\)/],
      [['--power-driver', 'qmp'], /QMP unix socket.*\(at \/powerConfig\/socket\)/],
      [['--power-driver', 'wol'], /unknown power driver 'wol'.*\(at \/powerConfig\/driver\)/],
      [['--power-opt', 'speed=fast'], /has no setting 'speed'.*\(at \/powerConfig\/speed\)/],
      [['--power-opt', 'nonsense'], /KEY=VALUE/],
    ];
    for (const [flags, message] of table) {
      const r = await ep.cli(['machines', 'update', 'rack-1', ...flags]);
      expect(r.code, flags.join(' ')).not.toBe(0);
      expect(r.stderr, flags.join(' ')).toMatch(message);
    }
    // Nothing of a refused update was stored, and no password reached history.
    expect((await get('rack-1')).powerConfig).toEqual({ driver: 'qmp', socket: '/run/vm/qmp.sock', disk: 'disk1' });
    const h = await ep.cli(['history', '-o', 'json']);
    expect(h.stdout).not.toContain('hunter2');
    expect(h.stdout).toContain('/run/vm/qmp.sock');

    const n = await ep.cli(['machines', 'update', 'rack-1', '--power-driver', 'none', '-o', 'json']);
    expect(n.code, n.stderr).toBe(0);
    expect((JSON.parse(n.stdout) as Machine).powerConfig).toBeUndefined();
  }, 120_000);

  it('exports it as desired state, and import puts it back', async () => {
    expect((await ep.cli(['machines', 'update', 'rack-1', '--power-driver', 'manual'])).code).toBe(0);
    const out = join(dir, 'export');
    const e = await ep.cli(['export', out]);
    expect(e.code, e.stderr).toBe(0);
    expect(readFileSync(join(out, 'machines', 'rack-1.yaml'), 'utf8')).toMatch(/^powerConfig:\n {2}driver: manual\n/m);

    expect((await ep.cli(['machines', 'update', 'rack-1', '--power-driver', 'qmp', '--power-opt', 'socket=/x.sock'])).code).toBe(0);
    const dry = await ep.cli(['import', out, '--dry-run']);
    expect(dry.stdout).toContain('update machines/rack-1: powerConfig');
    const i = await ep.cli(['import', out]);
    expect(i.code, i.stderr).toBe(0);
    expect((await get('rack-1')).powerConfig).toEqual({ driver: 'manual' });
  }, 120_000);
});
