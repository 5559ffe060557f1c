/**
 * How a machine boots from the network (desired state, set by an operator or a broker): the addresses and
 * firmware identity the boot service knows it by before its agent ever reports, and the boot environment
 * it boots into next. Pure parsing and validation; no I/O.
 *
 * Identity, as firmware presents it: the MAC of the NIC that PXE-boots (DHCP chaddr, iPXE `${net0/mac}`)
 * and the SMBIOS system UUID (DHCP option 97, RFC 4578 §2.3; iPXE `${uuid}`).
 */
import { isIPv4 } from 'node:net';
import { FIRMWARES, NAME_PATTERN, type Firmware } from './content.js';
import { LOCAL_BOOTENV } from './bootenv-names.js';
import { TaktError } from './errors.js';

export { DISCOVERY_BOOTENV, LOCAL_BOOTENV } from './bootenv-names.js';

export interface MachineBoot {
  /** MAC addresses it may network-boot from, lower-case `aa:bb:cc:dd:ee:ff`, at least one. */
  macs: string[];
  /** SMBIOS system UUID, lower-case with dashes; null when not known. */
  uuid: string | null;
  /** Its firmware; null: whatever the booting firmware says it is (DHCP option 93, iPXE `${platform}`). */
  firmware: Firmware | null;
  /** The bootenv it boots into next (a pack's, or `local`): the engine sets it when a stage needs another. */
  bootenv: string;
  /**
   * The IPv4 address reserved for it: `takt serve --dhcp full` gives its MACs this address and never gives
   * it to another client. Absent: an address from the range. Unique across machines.
   */
  ip?: string;
}

/** What an operator gives: `macs` to create; any field to change. */
export interface BootSettings {
  macs?: string[];
  uuid?: string | null;
  firmware?: Firmware | null;
  bootenv?: string;
  /** A reserved IPv4 address; null or '' forgets it. */
  ip?: string | null;
}

export const MAX_BOOT_MACS = 8;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const BOOTENV = new RegExp(NAME_PATTERN);

/** `52-54-00-AA-BB-CC` or `52:54:00:aa:bb:cc` → `52:54:00:aa:bb:cc`; undefined when it is not a MAC. */
export function normalizeMac(s: string): string | undefined {
  const m = s.trim().toLowerCase().replace(/-/g, ':');
  return MAC.test(m) ? m : undefined;
}

/** An SMBIOS UUID, lower-case; undefined when it is not one. */
export function normalizeUuid(s: string): string | undefined {
  const u = s.trim().toLowerCase();
  return UUID.test(u) ? u : undefined;
}

/**
 * The boot settings of a new machine, checked and normalised; `bootenv` defaults to `local`.
 * @throws TaktError('invalid') naming the field (`/boot/macs/1`, `/boot/uuid`, …).
 */
export function checkBootSettings(input: BootSettings): MachineBoot {
  if (!input.macs || input.macs.length === 0) throw new TaktError('invalid', 'boot.macs: a network-booted machine needs the MAC address it boots from (--mac)', { path: '/boot/macs' });
  return patchBoot({ macs: [], uuid: null, firmware: null, bootenv: LOCAL_BOOTENV }, input);
}

/**
 * `cur` with `patch` applied, checked and normalised (a field absent from the patch is kept).
 * @throws TaktError('invalid') naming the field.
 */
export function patchBoot(cur: MachineBoot, patch: BootSettings): MachineBoot {
  const next: MachineBoot = { ...cur, macs: [...cur.macs] };
  if (patch.macs !== undefined) {
    if (patch.macs.length === 0) throw new TaktError('invalid', 'boot.macs: a network-booted machine needs at least one MAC address', { path: '/boot/macs' });
    if (patch.macs.length > MAX_BOOT_MACS) throw new TaktError('invalid', `boot.macs: at most ${MAX_BOOT_MACS} MAC addresses`, { path: '/boot/macs' });
    next.macs = patch.macs.map((raw, i) => {
      const mac = typeof raw === 'string' ? normalizeMac(raw) : undefined;
      if (!mac) throw new TaktError('invalid', `boot.macs[${i}]: ${JSON.stringify(raw)} is not a MAC address (like 52:54:00:12:34:56)`, { path: `/boot/macs/${i}` });
      return mac;
    });
    const dup = next.macs.find((m, i) => next.macs.indexOf(m) !== i);
    if (dup) throw new TaktError('invalid', `boot.macs: ${dup} is listed twice`, { path: '/boot/macs' });
  }
  if (patch.uuid !== undefined) {
    if (patch.uuid === null || patch.uuid === '') next.uuid = null;
    else {
      const uuid = normalizeUuid(patch.uuid);
      if (!uuid) throw new TaktError('invalid', `boot.uuid: ${JSON.stringify(patch.uuid)} is not an SMBIOS UUID (like 8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d)`, { path: '/boot/uuid' });
      next.uuid = uuid;
    }
  }
  if (patch.firmware !== undefined) {
    if (patch.firmware !== null && !(FIRMWARES as readonly string[]).includes(patch.firmware)) {
      throw new TaktError('invalid', `boot.firmware: ${JSON.stringify(patch.firmware)} is not one of ${FIRMWARES.join(', ')}`, { path: '/boot/firmware' });
    }
    next.firmware = patch.firmware;
  }
  if (patch.bootenv !== undefined) {
    if (!BOOTENV.test(patch.bootenv)) throw new TaktError('invalid', `boot.bootenv: ${JSON.stringify(patch.bootenv)} is not a bootenv name`, { path: '/boot/bootenv' });
    next.bootenv = patch.bootenv;
  }
  if (patch.ip !== undefined) {
    if (patch.ip === null || patch.ip === '') delete next.ip;
    else {
      const ip = typeof patch.ip === 'string' ? normalizeIp(patch.ip) : undefined;
      if (!ip) throw new TaktError('invalid', `boot.ip: ${JSON.stringify(patch.ip)} is not an IPv4 address (like 10.0.0.20)`, { path: '/boot/ip' });
      next.ip = ip;
    }
  }
  return next;
}

/** A dotted-quad IPv4 address without leading zeros (`10.0.0.20`); undefined when it is not one. */
export function normalizeIp(s: string): string | undefined {
  const t = s.trim();
  return isIPv4(t) && t.split('.').every((o) => o === String(Number(o))) ? t : undefined;
}

/** Whether a booting client (its MAC, and its UUID when it sent one) is this machine. */
export function bootsAs(boot: MachineBoot, mac: string, uuid?: string): boolean {
  return boot.macs.includes(mac) || (uuid !== undefined && boot.uuid !== null && boot.uuid === uuid);
}
