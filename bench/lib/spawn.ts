/** Process spawning helpers: run a command to completion, and time bare spawns (the benches' floors). */
import { spawn, spawnSync, type SpawnOptions } from 'node:child_process';

export interface Ran {
  code: number | null;
  ms: number;
  output: string;
}

/** Runs a command, collecting stdout+stderr; `ms` is spawn to exit. */
export function run(cmd: string, args: string[], opts: SpawnOptions = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    p.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, ms: performance.now() - t0, output }));
  });
}

/** Whether a command is on the PATH. */
export function onPath(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/**
 * Spawns `cmd` `n` times one after the other and returns each spawn-to-exit time: what it costs Node to
 * start a process and learn that it ended, on this machine, right now.
 */
export async function spawnTimes(cmd: string, args: string[], n: number, opts: SpawnOptions = {}): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await new Promise<void>((resolve, reject) => {
      const p = spawn(cmd, args, { ...opts, stdio: 'ignore' });
      p.on('error', reject);
      p.on('exit', () => resolve());
    });
    times.push(performance.now() - t0);
  }
  return times;
}
