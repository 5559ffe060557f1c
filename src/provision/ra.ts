/**
 * IPv6 router advertisements on the boot segment, so that iPXE does not wait for a router that is not
 * there: iPXE solicits a router (RFC 4861 §6.3.7) on every boot and, without an answer, waits 13–16 s
 * before it uses the IPv4 address DHCP gave it long before (provisioning facts §1, trap 1). Any router
 * advertisement ends that wait; takt's says as little as possible: no prefix (no address is configured
 * from it), router lifetime 0 (RFC 4861 §4.2: "not a default router", so no host sends traffic through
 * the endpoint), no managed/other flags (no DHCPv6 is started).
 *
 * Node has no raw sockets, and ICMPv6 needs one, so the advertisements come from Debian's `radvd`
 * (https://radvd.litech.org/, `apt-get install radvd`), which `takt serve` writes a configuration for,
 * starts on the interface that holds the `--provision` address, and restarts (bounded, with back-off) when it
 * exits. radvd answers a solicitation within 0.5 s (RFC 4861 §6.2.6 MAX_RA_DELAY_TIME).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { TaktError } from '../model/errors.js';

/** Where Debian's radvd is. */
export const RADVD = '/usr/sbin/radvd';

/** The interface that holds IPv4 `address`, or undefined. */
export function interfaceOf(address: string): string | undefined {
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    if ((addrs ?? []).some((a) => a.family === 'IPv4' && a.address === address)) return name;
  }
  return undefined;
}

/**
 * radvd's configuration for `iface` (radvd.conf(5)): advertise on solicitation and every 30–100 s,
 * router lifetime 0, no prefix; wait for the interface if it is not there yet (a bridge without ports).
 */
export function radvdConfig(iface: string): string {
  if (!/^[A-Za-z0-9._-]{1,15}$/.test(iface)) throw new TaktError('bad_request', `interface name '${iface}' is not one radvd can be configured for`);
  return [
    `# written by takt serve: router advertisements so iPXE stops waiting for an IPv6 router (no prefix, not a default router)`,
    `interface ${iface} {`,
    '  AdvSendAdvert on;',
    '  IgnoreIfMissing on;',
    '  MinRtrAdvInterval 30;',
    '  MaxRtrAdvInterval 100;',
    '  AdvDefaultLifetime 0;',
    '  AdvManagedFlag off;',
    '  AdvOtherConfigFlag off;',
    '};',
    '',
  ].join('\n');
}

export interface RouterAdvertiser {
  /** The interface it advertises on. */
  iface: string;
  /** Stops radvd (SIGTERM to the process takt started, SIGKILL after 5 s) and its restarts. */
  stop(): Promise<void>;
}

/**
 * Starts radvd on the interface holding `address`, supervised: an exit other than by `stop()` restarts it
 * after 1, 2, 4 … 60 s, and after 10 exits within 10 minutes it is left stopped with an error in the log.
 * @throws TaktError('unavailable') when radvd is not installed or no interface holds `address`, saying what to do.
 */
export function startRouterAdvertiser(opts: { address: string; dir: string; log: (level: 'info' | 'warn' | 'error', msg: string) => void; radvd?: string }): RouterAdvertiser {
  const bin = opts.radvd ?? RADVD;
  if (spawnSync(bin, ['--version'], { stdio: 'ignore', timeout: 10_000 }).error) {
    throw new TaktError('unavailable', `router advertisements need radvd (${bin}; Debian: apt-get install radvd); without them iPXE waits 13–16 s per boot for an IPv6 router (--no-router-adverts turns this off)`);
  }
  const iface = interfaceOf(opts.address);
  if (!iface) throw new TaktError('unavailable', `router advertisements: no interface holds ${opts.address}`);
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  const conf = join(opts.dir, 'radvd.conf');
  writeFileSync(conf, radvdConfig(iface), { mode: 0o600 });
  const args = ['--nodaemon', '--logmethod', 'stderr', '--config', conf, '--pidfile', join(opts.dir, 'radvd.pid')];
  let child: ChildProcess | null = null;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const exits: number[] = [];
  const run = () => {
    const c = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    child = c;
    let tail = '';
    c.stderr!.on('data', (d: Buffer) => {
      tail = (tail + d.toString()).slice(-2000);
    });
    c.on('error', (e) => opts.log('error', `ra: radvd: ${e.message}`));
    c.on('exit', (code, signal) => {
      child = null;
      if (stopped) return;
      const now = Date.now();
      exits.push(now);
      while (exits.length && exits[0]! < now - 600_000) exits.shift();
      const why = `radvd exited (${signal ?? `code ${code}`}): ${tail.trim().split('\n').slice(-3).join(' | ')}`;
      if (exits.length >= 10) {
        opts.log('error', `ra: ${why}; stopped after ${exits.length} exits in 10 minutes: iPXE will wait for an IPv6 router on each boot`);
        return;
      }
      const delay = Math.min(60_000, 1000 * 2 ** (exits.length - 1));
      opts.log('warn', `ra: ${why}; restarting in ${delay / 1000} s`);
      timer = setTimeout(run, delay);
    });
  };
  run();
  opts.log('info', `ra: router advertisements on ${iface} (radvd; no prefix, router lifetime 0) so iPXE does not wait for an IPv6 router`);
  return {
    iface,
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      const gone = new Promise<void>((r) => c.once('exit', () => r()));
      c.kill('SIGTERM');
      let t: NodeJS.Timeout | undefined;
      await Promise.race([gone, new Promise<void>((r) => (t = setTimeout(r, 5000)))]);
      clearTimeout(t);
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    },
  };
}
