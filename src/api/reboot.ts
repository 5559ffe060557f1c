/**
 * What the API does beside answering an agent that is about to reboot its network-booted machine: the
 * boot device its bootenv needs goes first through its power driver, and its network boot is waited for
 * (PowerPort.prepareReboot; provision/power/machines.ts, provision/boot-watch.ts).
 */
import type { Machine } from '../model/machine.js';
import type { ApiContext } from './context.js';

/**
 * Readies a network-booted machine for the reboot its agent was just told to do (PowerPort.prepareReboot)
 * and says in the endpoint's log what was set, or why it could not be.
 */
export async function prepareReboot(ctx: ApiContext, m: Machine, cause: string): Promise<void> {
  if (!ctx.power || !m.boot) return;
  const r = await ctx.power.prepareReboot(m, `${cause} (bootenv ${m.boot.bootenv})`);
  if (r.problem) ctx.log?.('warn', `${m.name}: ${r.problem}; it reboots by its own boot order`, { machine: m.name });
  else if (r.nextBoot) ctx.log?.('info', `${m.name}: ${r.nextBoot.device === 'pxe' ? 'network boot' : 'disk'} put first by ${r.nextBoot.driver} for bootenv ${m.boot.bootenv}`, { machine: m.name });
}

