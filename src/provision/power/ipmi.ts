/**
 * The `ipmi` power driver: a server's BMC over IPMI v2.0 LAN (RMCP+, IPMI 2.0 spec §13), through Debian's
 * `ipmitool` — a well-kept client that knows every BMC's quirks; takt does not speak RMCP+ itself (see
 * docs/decisions.md). Every call spawns `ipmitool -I lanplus -C <suite> -H host -p port -U user -E …` with an
 * argv array (never a shell), the password in the environment variable `IPMI_PASSWORD` (`-E`), so `ps`
 * never shows it, and a deadline after which the process is killed.
 *
 *   status   `power status`            "Chassis Power is on|off"             (IPMI Get Chassis Status, §28.2)
 *   on       `power on` unless on       "Chassis Power Control: Up/On"        (Chassis Control, §28.3)
 *   off      `power off`; graceful: `power soft` (ACPI), poll status, then `power off` and say so
 *   cycle    on: `power reset`; off: `power on` (a reset of an off machine does nothing on most BMCs)
 *   boot     `chassis bootdev pxe|disk [options=persistent]`, read back with `chassis bootparam get 5`
 *            (Boot Options parameter 5, boot flags, §28.13)
 *
 * Cipher suite 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128) by default: without `-C`, ipmitool first asks
 * the BMC for its cipher suites, which OpenIPMI's ipmi_sim (and some BMCs) do not answer, costing ~11 s a
 * call. Newer BMCs may offer only suite 17 (SHA-256): set `cipherSuite: 17`.
 */
import { spawn } from 'node:child_process';
import { TaktError } from '../../model/errors.js';
import { ALREADY_OFF, ALREADY_ON, type BootDevice, type BootOutcome, type OffOptions, type PowerDriver, type PowerOutcome, type PowerState } from './driver.js';

/** Configuration of the ipmi driver. */
export interface IpmiPowerOptions {
  /** The BMC's address or host name. */
  host: string;
  /** Its RMCP+ UDP port (default 623). */
  port?: number;
  /** The BMC user (IPMI user names are at most 16 bytes). */
  user: string;
  /** Gives the password when a call needs it (from a secure param); may throw a TaktError saying how to set it. */
  password: () => Promise<string>;
  /** IPMI cipher suite id (default 3; 17 for BMCs that offer only SHA-256). */
  cipherSuite?: number;
  /** Bound on each ipmitool call in ms, after which it is killed (default 30 000). */
  timeoutMs?: number;
  /** ipmitool's own retransmissions: `-R` retries, `-N` seconds between them (default ipmitool's: 4 and 2). */
  retries?: number;
  retryIntervalS?: number;
  /** How often a graceful off polls the power state, in ms (default 2 000). */
  pollMs?: number;
  /** The ipmitool binary (default `ipmitool` on PATH). */
  ipmitool?: string;
}

/** What `chassis bootparam get 5` says about the boot flags. */
export interface IpmiBootFlags {
  /** The boot device selector: `pxe`, `disk`, `none` (no override) or ipmitool's words for another device. */
  device: BootDevice | 'none' | string;
  /** "Options apply to all future boots" (true) or "only next boot" (false); undefined when not printed. */
  persistent?: boolean;
  /** "Boot Flag Valid" (true) or "Invalid"; undefined when not printed. */
  valid?: boolean;
  /** "BIOS EFI boot" (true) or "BIOS PC Compatible (legacy) boot" (false); undefined when not printed. */
  efi?: boolean;
}

/** Most output ipmitool may print per stream before it is cut (its answers here are a few hundred bytes). */
const MAX_OUTPUT_BYTES = 64 * 1024;

/**
 * The power state in `ipmitool power status` output ("Chassis Power is on"), or undefined when the
 * output does not say.
 */
export function parsePowerStatus(stdout: string): 'on' | 'off' | undefined {
  const m = /Chassis Power is (on|off)\b/i.exec(stdout);
  return m ? (m[1]!.toLowerCase() as 'on' | 'off') : undefined;
}

/** ipmitool's words for the boot device selector (lib/ipmi_chassis.c) and what takt calls them. */
const DEVICE_WORDS: Array<[RegExp, IpmiBootFlags['device']]> = [
  [/^No override/i, 'none'],
  [/^Force PXE/i, 'pxe'],
  [/^Force Boot from default Hard-Drive/i, 'disk'],
];

/**
 * The boot flags in `ipmitool chassis bootparam get 5` output, or undefined when it has no
 * "Boot Device Selector" line. Other lines are optional: BMCs and ipmitool versions differ in what they print.
 */
export function parseBootFlags(stdout: string): IpmiBootFlags | undefined {
  const sel = /Boot Device Selector\s*:\s*(.+?)\s*$/im.exec(stdout);
  if (!sel) return undefined;
  const words = sel[1]!;
  const device = DEVICE_WORDS.find(([re]) => re.test(words))?.[1] ?? words;
  const flags: IpmiBootFlags = { device };
  if (/Options apply to all future boots/i.test(stdout)) flags.persistent = true;
  else if (/Options apply to only next boot/i.test(stdout)) flags.persistent = false;
  if (/Boot Flag Valid/i.test(stdout)) flags.valid = true;
  else if (/Boot Flag Invalid/i.test(stdout)) flags.valid = false;
  if (/BIOS EFI boot/i.test(stdout)) flags.efi = true;
  else if (/BIOS PC Compatible \(legacy\) boot/i.test(stdout)) flags.efi = false;
  return flags;
}

/** Lines that mean no session was made: the BMC is not there, or it refused the user, password or cipher suite. */
const NO_SESSION = /Unable to establish|RAKP|open session|Get Auth Capabilities|Activate Session|Unable to get Channel|timeout|Address lookup/i;

/**
 * The TaktError for a failed ipmitool call on `host`: `unavailable` when no session could be made (with
 * the likely causes), `conflict` when the BMC answered and refused the command; the message carries
 * ipmitool's own words.
 */
export function ipmiError(host: string, output: string, exitCode: number | null): TaktError {
  const words = output
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !/^Loading IANA PEN Registry/i.test(l))
    .join('; ')
    .slice(0, 500) || `ipmitool exited ${exitCode ?? 'on a signal'} and said nothing`;
  if (NO_SESSION.test(words)) {
    return new TaktError('unavailable', `${host}: ${words} (check that the BMC answers there, the user and its password, and the cipher suite: newer BMCs offer only 17)`);
  }
  return new TaktError('conflict', `${host}: ${words}`);
}

/** The ipmi power driver for one BMC. */
export class IpmiPower implements PowerDriver {
  readonly kind = 'ipmi';
  constructor(private readonly opts: IpmiPowerOptions) {}

  /** `host:port` as messages name the BMC. */
  get target(): string {
    return `${this.opts.host}:${this.opts.port ?? 623}`;
  }

  /**
   * Runs `ipmitool <session args> <args>` and returns its stdout.
   * @throws TaktError unavailable (no session, ipmitool missing or killed at the deadline) or conflict (refused).
   */
  async run(args: string[]): Promise<string> {
    const password = await this.opts.password();
    const o = this.opts;
    const argv = ['-I', 'lanplus', '-C', String(o.cipherSuite ?? 3), '-H', o.host, '-p', String(o.port ?? 623), '-U', o.user, '-E'];
    if (o.retries !== undefined) argv.push('-R', String(o.retries));
    if (o.retryIntervalS !== undefined) argv.push('-N', String(o.retryIntervalS));
    argv.push(...args);
    const timeoutMs = o.timeoutMs ?? 30_000;
    const bin = o.ipmitool ?? 'ipmitool';
    // A small environment: the password, a PATH and the C locale (ipmitool's words are parsed).
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C', LC_ALL: 'C', IPMI_PASSWORD: password };
    return new Promise<string>((resolve, reject) => {
      const child = spawn(bin, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let size = 0;
      const keep = (into: Buffer[]) => (c: Buffer) => {
        size += c.length;
        if (size <= MAX_OUTPUT_BYTES) into.push(c);
      };
      child.stdout.on('data', keep(out));
      child.stderr.on('data', keep(err));
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, timeoutMs);
      child.on('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(
          e.code === 'ENOENT'
            ? new TaktError('unavailable', `${this.target}: ${bin} is not installed (apt-get install ipmitool)`)
            : new TaktError('unavailable', `${this.target}: cannot run ${bin}: ${e.message}`),
        );
      });
      child.on('close', (code) => {
        clearTimeout(timer);
        const stdout = Buffer.concat(out).toString('utf8');
        const stderr = Buffer.concat(err).toString('utf8');
        if (timedOut) reject(new TaktError('unavailable', `${this.target}: ipmitool ${args.join(' ')} did not finish within ${timeoutMs} ms (is the BMC reachable on UDP ${o.port ?? 623}?)`));
        else if (code !== 0) reject(ipmiError(this.target, `${stderr}\n${stdout}`, code));
        else resolve(stdout);
      });
    });
  }

  /** on or off from `power status`. @throws TaktError unavailable when the BMC does not answer or says neither. */
  async status(): Promise<PowerState> {
    const out = await this.run(['power', 'status']);
    const s = parsePowerStatus(out);
    if (!s) throw new TaktError('unavailable', `${this.target}: ipmitool power status gave no power state: ${out.trim().slice(0, 200)}`);
    return s;
  }

  async on(): Promise<PowerOutcome> {
    if ((await this.status()) === 'on') return { done: true, note: ALREADY_ON };
    await this.run(['power', 'on']);
    return { done: true };
  }

  async off(opts: OffOptions = {}): Promise<PowerOutcome> {
    if ((await this.status()) === 'off') return { done: true, note: ALREADY_OFF };
    if (opts.graceful) {
      const timeoutMs = opts.timeoutMs ?? 60_000;
      const pollMs = this.opts.pollMs ?? 2_000;
      try {
        await this.run(['power', 'soft']);
      } catch (err) {
        // A BMC that refuses the soft off (ipmi_sim without an OS behind it, some BMCs) still powers off hard.
        if (!(err instanceof TaktError && err.code === 'conflict')) throw err;
        await this.run(['power', 'off']);
        return { done: true, note: `the BMC refused the soft off (${err.message}); powered off hard` };
      }
      // Bounded: at most timeoutMs / pollMs polls, each itself bounded by the call deadline.
      for (let waited = 0; waited < timeoutMs; waited += pollMs) {
        if ((await this.status()) === 'off') return { done: true };
        await new Promise((r) => setTimeout(r, Math.min(pollMs, timeoutMs - waited)));
      }
      if ((await this.status()) === 'off') return { done: true };
      await this.run(['power', 'off']);
      return { done: true, note: `the operating system did not shut down within ${timeoutMs} ms of the ACPI power button; powered off hard` };
    }
    await this.run(['power', 'off']);
    return { done: true };
  }

  async cycle(): Promise<PowerOutcome> {
    if ((await this.status()) === 'off') {
      await this.run(['power', 'on']);
      return { done: true, note: 'it was off: powered on' };
    }
    await this.run(['power', 'reset']);
    return { done: true };
  }

  /**
   * `chassis bootdev pxe|disk` (with `options=persistent` when asked), then reads the boot flags back.
   * @throws TaktError conflict when the BMC kept another device.
   */
  async setNextBoot(device: BootDevice, opts: { persistent?: boolean } = {}): Promise<BootOutcome> {
    const persistent = opts.persistent ?? false;
    await this.run(['chassis', 'bootdev', device, ...(persistent ? ['options=persistent'] : [])]);
    let back: IpmiBootFlags | undefined;
    try {
      back = parseBootFlags(await this.run(['chassis', 'bootparam', 'get', '5']));
    } catch (err) {
      if (!(err instanceof TaktError && err.code === 'conflict')) throw err;
    }
    if (!back) return { done: true, persistent, note: 'the BMC does not report its boot flags (boot parameter 5): not read back' };
    if (back.device !== device) throw new TaktError('conflict', `${this.target}: asked for boot device ${device}, the BMC reports '${back.device}'`);
    return { done: true, persistent };
  }
}
