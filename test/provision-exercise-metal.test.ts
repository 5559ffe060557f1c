/**
 * `takt exercise demo --envs local,netns,metal` (issue #14 "Exercise"): one pipeline walked in every
 * environment. The metal machine is a qemu broker VM that boots the discovery bootenv from takt's own
 * DHCP/TFTP/HTTP in a network namespace and runs the demo there, in memory, with its own token; the local
 * sandbox and the netns host run it beside it. The coverage matrix must show every task passed everywhere
 * (variants named), and every machine is gone afterwards (the VM's qemu too).
 */
import { chmodSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ExerciseResult } from '../src/cli/exercise.js';
import { BootLab, until } from './helpers/boot-lab.js';
import { bootArtifacts } from './helpers/provision.js';

const DEMO = fileURLToPath(new URL('../content/demo', import.meta.url));

describe('exercise: the demo pipeline on a local sandbox, a netns host and a network-booted VM', () => {
  const lab = new BootLab({ netnsPrefix: 'tkex-', subnet: '10.236', dirPrefix: 'tkex-', dataName: 'd', bridgeName: 'tkex0', cliTimeoutMs: 120_000 });
  const cli = (args: string[], timeoutMs?: number) => lab.cli(args, timeoutMs);
  const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');
  const serials = () =>
    existsSync(join(lab.data, 'qemu'))
      ? readdirSync(join(lab.data, 'qemu'))
          .map((id) => join(lab.data, 'qemu', id, 'serial.log'))
          .filter((f) => existsSync(f))
          .map((f) => readFileSync(f, 'utf8').slice(-3000))
          .join('\n')
      : '(no VM)';

  beforeAll(async () => {
    await bootArtifacts();
    lab.open();
    // Local sandboxes run as their own users under the data dir: they must pass through the lab's directory.
    chmodSync(lab.dir, 0o711);
    await lab.serveVms({ env: { TAKT_NETNS_SUBNET: '10.237.0.0/16' } });
  }, 600_000);

  afterAll(() => lab.close(), 60_000);

  it('without the discovery bootenv, a metal exercise is refused before any machine is made, saying how to build it', async () => {
    expect((await cli(['content', 'install', DEMO])).code).toBe(0);
    const r = await cli(['exercise', 'demo', '--envs', 'metal']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("walks the pipeline in the 'discovery' bootenv");
    expect(r.stderr).toContain('takt bootenv build discovery --install');
    const machines = JSON.parse((await cli(['machines', 'list', '-o', 'json'])).stdout) as unknown[];
    expect(machines).toEqual([]);
  }, 300_000);

  it('every task passes in local, netns and metal; the machines are removed afterwards', async () => {
    const built = await cli(['bootenv', 'build', 'discovery', '--install'], 540_000);
    expect(built.code, built.stderr).toBe(0);
    await until(() => ((lab.output.match(/boot: kept bootenv 'discovery'/g) ?? []).length >= 1 ? true : undefined), 180_000, 'the discovery artifacts to be kept', () => lab.output);

    const t0 = Date.now();
    const r = await cli(['exercise', 'demo', '--envs', 'local,netns,metal', '--timeout', '20m', '-o', 'json'], 1_300_000);
    const took = (Date.now() - t0) / 1000;
    expect(r.code, `${r.stdout}${r.stderr}\n${lab.output.slice(-4000)}\n--- serial ---\n${serials()}`).toBe(0);
    const result = JSON.parse(r.stdout) as ExerciseResult;
    expect(result.passed).toBe(true);
    expect(result.envs).toEqual(['local', 'netns', 'metal']);
    for (const env of result.envs) expect(result.machines[env]!.state).toBe('done');
    // Every task ran in every environment; on metal the variant is the default script or a metal one.
    for (const row of result.rows) {
      for (const env of result.envs) expect([row.task, env, row.cells[env]!.status]).toEqual([row.task, env, 'passed']);
      expect(['default', 'metal']).toContain(row.cells.metal!.variant);
    }
    expect(result.rows.length).toBeGreaterThanOrEqual(8);
    console.log(`[provision] exercise demo on local, netns, metal: ${took.toFixed(1)} s; metal done in ${(result.machines.metal!.durationMs / 1000).toFixed(1)} s (load ${load()})`);

    // Nothing is left: the machines are deleted and the VM's qemu ended with them.
    const left = JSON.parse((await cli(['machines', 'list', '-o', 'json'])).stdout) as unknown[];
    expect(left).toEqual([]);
    const vmDirs = () => (existsSync(join(lab.data, 'qemu')) ? readdirSync(join(lab.data, 'qemu')) : []);
    await until(() => (vmDirs().length === 0 ? true : undefined), 60_000, "the VM's files to be removed with it", () => `${vmDirs().join(', ')}\n${lab.output.slice(-2000)}`);
  }, 1_500_000);
});
