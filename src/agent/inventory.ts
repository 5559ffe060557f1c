/**
 * The host's inventory, as the agent reports it when it registers and whenever it starts: names and
 * identity (hostname, /etc/machine-id, SMBIOS UUID, MACs), addresses, OS (os-release(5)), kernel, CPU,
 * memory and disks. Read from /proc, /sys and /etc under a root directory (so tests feed sample trees)
 * plus the `os` module for what only the kernel's calls give (addresses, the running kernel). Every value
 * is cut to the bounds model/facts.ts declares, so the endpoint never refuses a report for its size.
 */
import { readdir, readFile, readlink, stat } from 'node:fs/promises';
import os from 'node:os';
import { basename, join } from 'node:path';
import { MAC_PATTERN, MAX_FACT_ITEMS } from '../model/fact-limits.js';
import type { Facts } from '../model/facts.js';

/** Where facts come from; `systemSources` reads this host. */
export interface InventorySources {
  /** Files are read below this directory ('/' on a real host). */
  root: string;
  hostname(): string;
  /** The running kernel's release (uname -r). */
  release(): string;
  /** uname -m. */
  machine(): string;
  cpus(): Array<{ model: string }>;
  totalmem(): number;
  networkInterfaces(): NodeJS.Dict<os.NetworkInterfaceInfo[]>;
}

export const systemSources: InventorySources = {
  root: '/',
  hostname: () => os.hostname(),
  release: () => os.release(),
  machine: () => os.machine(),
  cpus: () => os.cpus(),
  totalmem: () => os.totalmem(),
  networkInterfaces: () => os.networkInterfaces(),
};

/** Block devices that are not disks: loop, RAM, compressed RAM, device-mapper, network block, optical, floppy. */
const NOT_A_DISK = /^(loop|ram|zram|dm-|nbd|sr|fd)\d*/;
const MAC = new RegExp(MAC_PATTERN);

const cut = (s: string, max = 256) => (s.length > max ? s.slice(0, max) : s);
const orNull = (s: string | undefined | null, max = 256) => (s ? cut(s, max) : null);

/** Reads the inventory of the host `src` describes. Never throws for a file that is missing or unreadable. */
export async function collectFacts(src: InventorySources = systemSources, agentVersion: string | null = null): Promise<Facts> {
  const read = (path: string) => readText(join(src.root, path));
  const [osRelease, machineId, dbusId, uuid, hostFile, cpuinfo, meminfo, macs, disks, vendor, product, serial, nics, cmdline] = await Promise.all([
    read('etc/os-release').then((t) => t ?? read('usr/lib/os-release')),
    read('etc/machine-id'),
    read('var/lib/dbus/machine-id'),
    read('sys/class/dmi/id/product_uuid'),
    read('etc/hostname'),
    read('proc/cpuinfo'),
    read('proc/meminfo'),
    hardwareMacs(src.root),
    blockDisks(src.root),
    read('sys/class/dmi/id/sys_vendor'),
    read('sys/class/dmi/id/product_name'),
    read('sys/class/dmi/id/product_serial'),
    hardwareNics(src.root),
    read('proc/cmdline'),
  ]);
  const cpu = parseCpuInfo(cpuinfo ?? '');
  const cpus = src.cpus();
  return {
    hostname: cut(src.hostname() || (hostFile ?? '').trim() || 'localhost', 253),
    machineId: parseMachineId(machineId ?? '') ?? parseMachineId(dbusId ?? ''),
    productUuid: parseProductUuid(uuid ?? ''),
    macs,
    addresses: addressesOf(src.networkInterfaces()),
    os: parseOsRelease(osRelease ?? ''),
    kernel: cut(src.release()),
    arch: cut(src.machine(), 32),
    cpu: { model: orNull(cpu.model ?? cpus[0]?.model?.trim()), count: cpu.count || cpus.length },
    memoryBytes: parseMemTotal(meminfo ?? '') ?? src.totalmem(),
    disks,
    agentVersion: orNull(agentVersion, 64),
    system: { vendor: orNull(vendor?.trim()), product: orNull(product?.trim()), serial: orNull(serial?.trim()) },
    nics,
    bootenv: bootenvOf(cmdline ?? ''),
  };
}

/**
 * The `takt.bootenv=NAME` word of a kernel command line (what takt's in-memory environments put there),
 * or null. Kernel parameters are space-separated words (Documentation/admin-guide/kernel-parameters).
 */
export function bootenvOf(cmdline: string): string | null {
  for (const word of cmdline.trim().split(/\s+/)) {
    const m = /^takt\.bootenv=([a-z0-9][a-z0-9._-]{0,62})$/.exec(word); // NAME_PATTERN (model/content.ts)
    if (m) return m[1]!;
  }
  return null;
}

/** operstate (Documentation/ABI/testing/sysfs-class-net) as a link state: `up`, `down`, or `unknown`. */
export function linkOf(operstate: string | null): 'up' | 'down' | 'unknown' {
  const s = (operstate ?? '').trim();
  return s === 'up' ? 'up' : s === 'down' || s === 'lowerlayerdown' || s === 'notpresent' ? 'down' : 'unknown';
}

/** Interfaces backed by a device, with MAC, driver (the device's driver link), link state and speed. */
async function hardwareNics(root: string): Promise<NonNullable<Facts['nics']>> {
  const base = join(root, 'sys/class/net');
  const nics: NonNullable<Facts['nics']> = [];
  for (const name of (await readdir(base).catch(() => [] as string[])).sort()) {
    if (name === 'lo' || nics.length >= MAX_FACT_ITEMS || !(await exists(join(base, name, 'device')))) continue;
    const mac = parseMac((await readText(join(base, name, 'address'))) ?? '');
    if (!mac) continue;
    const [driver, operstate, speed] = await Promise.all([
      readlink(join(base, name, 'device/driver')).then((t) => basename(t), () => null),
      readText(join(base, name, 'operstate')),
      readText(join(base, name, 'speed')),
    ]);
    const mbps = Number((speed ?? '').trim());
    nics.push({ name: cut(name, 64), mac, driver: orNull(driver, 64), link: linkOf(operstate), speedMbps: speed !== null && Number.isSafeInteger(mbps) && mbps > 0 ? mbps : null });
  }
  return nics;
}

/**
 * os-release(5): KEY=value lines, values optionally quoted with shell-style escapes; comments and blank
 * lines ignored. Only the fields takt reports are kept.
 */
export function parseOsRelease(text: string): Facts['os'] {
  const v: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^\s*([A-Z0-9_]+)=(.*)$/.exec(line);
    if (!m) continue;
    let value = m[2]!.trim();
    const q = value[0];
    if ((q === '"' || q === "'") && value.endsWith(q) && value.length >= 2) {
      value = value.slice(1, -1);
      if (q === '"') value = value.replace(/\\([$"\\`])/g, '$1');
    }
    v[m[1]!] = value;
  }
  return {
    id: orNull(v.ID?.toLowerCase(), 64),
    versionId: orNull(v.VERSION_ID, 64),
    prettyName: orNull(v.PRETTY_NAME),
    idLike: (v.ID_LIKE ?? '').split(/\s+/).filter(Boolean).slice(0, 16).map((s) => cut(s.toLowerCase(), 64)),
  };
}

/** /etc/machine-id: 32 lower-case hex digits (machine-id(5)); anything else (empty, "uninitialized") is none. */
export function parseMachineId(text: string): string | null {
  const id = text.trim().toLowerCase();
  return /^[0-9a-f]{32}$/.test(id) && !/^0+$/.test(id) ? id : null;
}

/** The SMBIOS system UUID, lower-case; none when absent, all zeros or all F (firmware that sets none). */
export function parseProductUuid(text: string): string | null {
  const id = text.trim().toLowerCase();
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id)) return null;
  const digits = id.replace(/-/g, '');
  return /^0+$/.test(digits) || /^f+$/.test(digits) ? null : id;
}

/** /proc/cpuinfo: logical CPUs (`processor` lines) and the first `model name`. */
export function parseCpuInfo(text: string): { model: string | null; count: number } {
  let count = 0;
  let model: string | null = null;
  for (const line of text.split('\n')) {
    const m = /^([^:]+?)\s*:\s*(.*)$/.exec(line);
    if (!m) continue;
    if (m[1] === 'processor') count++;
    else if (m[1] === 'model name' && model === null && m[2]) model = m[2].trim();
  }
  return { model, count };
}

/** /proc/meminfo's MemTotal in bytes (the file says kB, meaning KiB), or null without one. */
export function parseMemTotal(text: string): number | null {
  const m = /^MemTotal:\s+(\d+)\s*kB/m.exec(text);
  return m ? Number(m[1]) * 1024 : null;
}

/** A MAC as /sys/class/net/X/address prints it, lower-cased; none for a malformed or all-zero one. */
export function parseMac(text: string): string | null {
  const mac = text.trim().toLowerCase();
  return MAC.test(mac) && mac !== '00:00:00:00:00:00' ? mac : null;
}

/** Every non-internal address from os.networkInterfaces(), interface by interface. */
export function addressesOf(ifaces: NodeJS.Dict<os.NetworkInterfaceInfo[]>): Facts['addresses'] {
  const out: Facts['addresses'] = [];
  for (const [name, list] of Object.entries(ifaces).sort(([a], [b]) => a.localeCompare(b))) {
    for (const a of list ?? []) {
      if (a.internal || out.length >= MAX_FACT_ITEMS) continue;
      const prefix = a.cidr ? Number(a.cidr.split('/')[1]) : a.family === 'IPv4' ? 32 : 128;
      out.push({ interface: cut(name, 64), address: cut(a.address, 64), family: a.family, prefix });
    }
  }
  return out;
}

/** MACs of interfaces backed by a device (`/sys/class/net/X/device`): bridges, veths and tunnels come and go. */
async function hardwareMacs(root: string): Promise<string[]> {
  const base = join(root, 'sys/class/net');
  const macs = new Set<string>();
  for (const name of await readdir(base).catch(() => [] as string[])) {
    if (name === 'lo' || !(await exists(join(base, name, 'device')))) continue;
    const mac = parseMac((await readText(join(base, name, 'address'))) ?? '');
    if (mac) macs.add(mac);
  }
  return [...macs].sort().slice(0, MAX_FACT_ITEMS);
}

/** Disks from /sys/block: size (512-byte sectors, whatever the device's block size), model, rotational. */
async function blockDisks(root: string): Promise<Facts['disks']> {
  const base = join(root, 'sys/block');
  const disks: Facts['disks'] = [];
  for (const name of (await readdir(base).catch(() => [] as string[])).sort()) {
    if (NOT_A_DISK.test(name) || disks.length >= MAX_FACT_ITEMS) continue;
    const [size, model, rotational] = await Promise.all([
      readText(join(base, name, 'size')),
      readText(join(base, name, 'device/model')),
      readText(join(base, name, 'queue/rotational')),
    ]);
    const sectors = Number((size ?? '').trim());
    const rot = (rotational ?? '').trim();
    disks.push({
      name: cut(name, 64),
      sizeBytes: Number.isSafeInteger(sectors * 512) && sectors >= 0 ? sectors * 512 : 0,
      model: orNull(model?.trim()),
      rotational: rot === '1' ? true : rot === '0' ? false : null,
    });
  }
  return disks;
}

/** A small text file (at most 64 KiB is read), or null when it is missing or unreadable. */
async function readText(path: string): Promise<string | null> {
  try {
    const text = await readFile(path, 'utf8');
    return text.length > 65536 ? text.slice(0, 65536) : text;
  } catch {
    return null;
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
