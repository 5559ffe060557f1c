/**
 * Shared pieces of the VM tests (test/provision-*.test.ts): the cached kernel and busybox initramfs, a
 * small HTTP file server on loopback that records what it was asked, and a VM directory per test.
 * qemu's user-mode network lets the guest reach this host's loopback as 10.0.2.2, so no traffic leaves
 * the machine.
 */
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { debianKernel, sledgeInitramfs, type BootKernel, type Initramfs } from '../../src/provision/kernel.js';
import type { Vm } from '../../src/brokers/qemu/vm.js';

/** The guest's name for the host under qemu's user-mode network. */
export const HOST_FROM_GUEST = '10.0.2.2';

let cached: Promise<{ kernel: BootKernel; initramfs: Initramfs }> | null = null;

/** Debian's kernel and the busybox initramfs, built once per cache (TAKT_PROVISION_CACHE). */
export function bootArtifacts(): Promise<{ kernel: BootKernel; initramfs: Initramfs }> {
  cached ??= (async () => {
    const kernel = await debianKernel({ log: (m) => console.log(`[provision] ${m}`) });
    return { kernel, initramfs: sledgeInitramfs(kernel) };
  })();
  return cached;
}

export interface FileServer {
  port: number;
  /** Request paths in order of arrival. */
  requests: string[];
  /** Serves `body` (a function of the path's match, or a file path) for paths matching `pattern`. */
  route(pattern: RegExp, body: ((m: RegExpExecArray) => string) | { file: string }): void;
  close(): Promise<void>;
}

/** A plain HTTP server on 127.0.0.1 (any free port). Unknown paths answer 404. */
export async function fileServer(): Promise<FileServer> {
  const routes: Array<{ pattern: RegExp; body: ((m: RegExpExecArray) => string) | { file: string } }> = [];
  const requests: string[] = [];
  const server: Server = createServer((req, res) => {
    const path = req.url ?? '/';
    requests.push(path);
    for (const r of routes) {
      const m = r.pattern.exec(path);
      if (!m) continue;
      if (typeof r.body === 'function') {
        const text = r.body(m);
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(text) });
        res.end(text);
      } else {
        const data = readFileSync(r.body.file);
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': statSync(r.body.file).size });
        res.end(data);
      }
      return;
    }
    res.writeHead(404).end('not found\n');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  if (!addr || typeof addr === 'string') throw new Error('no port');
  return {
    port: addr.port,
    requests,
    route: (pattern, body) => routes.push({ pattern, body }),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

const made: string[] = [];

/** A fresh directory for one VM (removed by `removeVmDirs`). */
export function vmDir(name: string): string {
  const d = mkdtempSync(join(tmpdir(), `takt-vm-${name}-`));
  made.push(d);
  return d;
}

/** Removes the VM directories this file made (after the VMs are killed); TAKT_KEEP_VMS=1 keeps them for a look. */
export function removeVmDirs(): void {
  if (process.env.TAKT_KEEP_VMS) return;
  for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
}

/** Logs how long a milestone took and the VM's vitals (visible in the test output for timing reports). */
export function logMilestone(vm: Vm, what: string, atMs: number): void {
  const v = vm.vitals();
  console.log(`[provision] ${vm.spec.name}: ${what} at ${(atMs / 1000).toFixed(1)} s (qemu ${v.cpuSeconds ?? '?'} CPU-s, load ${v.load.join(' ')}, ${vm.accel})`);
}

/**
 * A 1 MiB qcow2 disk at `<dir>/disk.qcow2` whose MBR boot sector writes `TAKT-DISK-BOOT` to COM1 and halts:
 * proof on the console that the firmware booted the disk (and not the network).
 */
export async function bootSectorDisk(dir: string): Promise<void> {
  const { execFileSync } = await import('node:child_process');
  const { mkdirSync, writeFileSync, rmSync } = await import('node:fs');
  const msg = Buffer.from('TAKT-DISK-BOOT\r\n\0', 'ascii');
  // 16-bit real mode at 0000:7C00. xor ax,ax; mov ds,ax; cld; mov dx,0x3f8; mov si,0x7c17;
  // next: lodsb; test al,al; jz done; out dx,al; jmp next; done: cli; hlt; jmp done; msg at 0x17.
  const code = Buffer.from([0x31, 0xc0, 0x8e, 0xd8, 0xfc, 0xba, 0xf8, 0x03, 0xbe, 0x17, 0x7c, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xfa, 0xf4, 0xeb, 0xfc]);
  const sector = Buffer.alloc(1 << 20);
  code.copy(sector, 0);
  msg.copy(sector, code.length);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  mkdirSync(dir, { recursive: true });
  const raw = join(dir, 'disk.raw');
  writeFileSync(raw, sector);
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, join(dir, 'disk.qcow2')]);
  rmSync(raw);
}

/** A private boot segment: a network namespace `tkvm-…` holding bridge `br0` at `<prefix>.1/24`. */
export interface BootSegment {
  netns: string;
  bridge: string;
  /** `10.217.N` */
  prefix: string;
  /** Starts `argv` inside the namespace; the process is ended by `close()`. */
  spawnIn(argv: string[]): import('node:child_process').ChildProcess;
  /** Ends what `spawnIn` started (by pid) and deletes the namespace. */
  close(): Promise<void>;
}

/** Makes a boot segment in 10.217.0.0/16 (this test suite's range). Needs root and iproute2. */
export async function bootSegment(): Promise<BootSegment> {
  const { execFileSync, spawn } = await import('node:child_process');
  const { randomBytes } = await import('node:crypto');
  const tag = randomBytes(3).toString('hex');
  const netns = `tkvm-${tag}`;
  const prefix = `10.217.${1 + (parseInt(tag, 16) % 250)}`;
  const ip = (...a: string[]) => execFileSync('ip', a, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
  ip('netns', 'add', netns);
  ip('-n', netns, 'link', 'set', 'lo', 'up');
  ip('-n', netns, 'link', 'add', 'br0', 'type', 'bridge');
  ip('-n', netns, 'addr', 'add', `${prefix}.1/24`, 'dev', 'br0');
  ip('-n', netns, 'link', 'set', 'br0', 'up');
  const children: import('node:child_process').ChildProcess[] = [];
  return {
    netns,
    bridge: 'br0',
    prefix,
    spawnIn(argv) {
      const c = spawn('ip', ['netns', 'exec', netns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(c);
      return c;
    },
    async close() {
      for (const c of children) {
        if (c.exitCode !== null || c.signalCode !== null) continue;
        const gone = new Promise<void>((r) => c.once('exit', () => r()));
        c.kill('SIGTERM');
        await Promise.race([gone, new Promise((r) => setTimeout(r, 5_000))]);
        if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      }
      try {
        ip('netns', 'del', netns);
      } catch {
        // already gone
      }
    },
  };
}
