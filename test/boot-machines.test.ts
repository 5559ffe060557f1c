/**
 * Network-booted machines (issue #13): the MACs and SMBIOS UUID the boot service knows a machine by and
 * the bootenv it boots into are desired state (checked, unique, in history), and a booting client gets
 * the script of the machine it is — or, when something is wrong, its disk with the reason on its console.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runningBootenv } from '../src/agent/agent.js';
import { lintPack } from '../src/content/lint.js';
import { BootScripts } from '../src/engine/boot.js';
import { checkBootSettings, patchBoot, type MachineBoot } from '../src/model/boot.js';
import { emptyContentSet, type ContentSet } from '../src/model/content.js';
import type { Machine } from '../src/model/machine.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import type { SqlStore } from '../src/store/sql-store.js';
import { Endpoint, writePack } from './helpers/endpoint.js';

const H = 'c'.repeat(64);
const UUID = '8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d';
const pack = {
  'pack.yaml': 'name: boot\nversion: 1.0.0\n',
  'params/console.yaml': 'name: console\nschema: { type: string, default: ttyS0 }\n',
  'params/token.yaml': 'name: token\nsecure: true\n',
  'bootenvs/sledge.yaml': `name: sledge\nparams: { optional: [console] }\nkernel: { name: vmlinuz, path: /k, sha256: ${H} }\ncmdline: console={{ console }} takt.name={{ machine.name }}\n`,
  'bootenvs/uefi-only.yaml': `name: uefi-only\nfirmware: [uefi]\nipxe: "#!ipxe\\nchain {{ boot.endpoint }}/x.efi\\n"\n`,
  'bootenvs/broken.yaml': `name: broken\nipxe: "#!ipxe\\necho {{ machine.name | upcase }} {{ facts.hostname }}\\n"\n`,
  'bootenvs/discovery.yaml': `name: discovery\nkernel: { name: vmlinuz, path: /k, sha256: ${H} }\ncmdline: takt.discover={{ boot.mac }}\n`,
};

describe('boot settings', () => {
  const base: MachineBoot = { macs: ['52:54:00:00:00:01'], uuid: null, firmware: null, bootenv: 'local' };
  it.each<[string, () => unknown, unknown]>([
    ['normalises MACs and UUIDs', () => checkBootSettings({ macs: ['52-54-00-AA-BB-01'], uuid: UUID.toUpperCase() }), { macs: ['52:54:00:aa:bb:01'], uuid: UUID, firmware: null, bootenv: 'local' }],
    ['needs a MAC', () => checkBootSettings({ uuid: UUID }), 'boot.macs: a network-booted machine needs the MAC address it boots from (--mac)'],
    ['refuses a bad MAC, naming it', () => checkBootSettings({ macs: ['52:54:00:00:00:01', 'zz'] }), 'boot.macs[1]: "zz" is not a MAC address (like 52:54:00:12:34:56)'],
    ['refuses a MAC listed twice', () => checkBootSettings({ macs: ['52:54:00:00:00:01', '52-54-00-00-00-01'] }), 'boot.macs: 52:54:00:00:00:01 is listed twice'],
    ['refuses a bad UUID', () => patchBoot(base, { uuid: 'nope' }), 'boot.uuid: "nope" is not an SMBIOS UUID (like 8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d)'],
    ['refuses a bad firmware', () => patchBoot(base, { firmware: 'arm' as never }), 'boot.firmware: "arm" is not one of bios, uefi'],
    ['forgets a UUID with null', () => patchBoot({ ...base, uuid: UUID }, { uuid: null }), { ...base, uuid: null }],
    ['changes the bootenv and keeps the rest', () => patchBoot(base, { bootenv: 'sledge' }), { ...base, bootenv: 'sledge' }],
  ])('%s', (_what, f, want) => {
    if (typeof want === 'string') expect(f).toThrow(want);
    else expect(f()).toEqual(want);
  });
});

describe('BootScripts', () => {
  let dir: string;
  let store: SqlStore;
  let content: ContentSet;
  const machine = (name: string, boot: MachineBoot | undefined, extra: Partial<Machine> = {}): Machine => ({
    id: `m-${name}`, name, environment: 'metal', broker: null, pipeline: null, stage: null, task: null, passed: [], attempt: 0, approvedStage: null,
    state: 'idle', reason: null, params: {}, outputs: {}, profiles: [], labels: {}, currentJob: null, power: 'on', facts: null,
    ...(boot ? { boot } : {}), createdAt: '2026-11-30T00:00:00Z', updatedAt: '2026-11-30T00:00:00Z',
    agent: { connected: false, lastSeenAt: null, version: null, address: null, via: null, since: '2026-11-30T00:00:00Z' }, ...extra,
  });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'takt-bootscripts-'));
    store = await openSqliteStore(join(dir, 'takt.db'));
    const linted = lintPack(pack);
    expect(linted.diagnostics).toEqual([]);
    content = emptyContentSet();
    for (const o of linted.objects) (content.objects[o.kind] as Map<string, unknown>).set((o.def as { name: string }).name, { def: o.def, layer: 'boot' });
    const b = (macs: string[], bootenv: string, extra: Partial<MachineBoot> = {}): MachineBoot => ({ macs, uuid: null, firmware: null, bootenv, ...extra });
    await store.transact(async (tx) => {
      await tx.insertMachine(machine('vm-1', b(['52:54:00:00:00:01'], 'sledge', { uuid: UUID })), 'h1');
      await tx.insertMachine(machine('vm-2', b(['52:54:00:00:00:02'], 'local')), 'h2');
      await tx.insertMachine(machine('vm-3', b(['52:54:00:00:00:03'], 'uefi-only')), 'h3');
      await tx.insertMachine(machine('vm-4', b(['52:54:00:00:00:04'], 'broken')), 'h4');
      await tx.insertMachine(machine('vm-5', b(['52:54:00:00:00:05'], 'gone')), 'h5');
      await tx.insertMachine(machine('vm-6', b(['52:54:00:00:00:06'], 'sledge'), { params: { console: 'ttyS1' } }), 'h6');
    });
  });
  afterAll(async () => {
    await store?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const scripts = (discovery = false) => new BootScripts({ store, content: () => content, endpoint: () => 'http://10.0.0.1:8080', discovery });

  it.each<[string, { mac: string; uuid?: string; platform: 'pcbios' | 'efi' }, boolean, RegExp, Record<string, unknown>]>([
    ['a machine by its MAC boots its bootenv', { mac: '52:54:00:00:00:01', platform: 'pcbios' }, false, /^#!ipxe\nkernel http:\/\/10\.0\.0\.1:8080\/boot\/files\/c{64}\/vmlinuz console=ttyS0 takt\.name=vm-1\nboot\n$/, { bootenv: 'sledge', machine: { id: 'm-vm-1', name: 'vm-1' } }],
    ['the same machine by its UUID from another NIC', { mac: '52:54:00:99:99:99', uuid: UUID, platform: 'pcbios' }, false, /takt\.name=vm-1/, { bootenv: 'sledge' }],
    ["a machine's own param value", { mac: '52:54:00:00:00:06', platform: 'pcbios' }, false, /console=ttyS1 takt\.name=vm-6/, { bootenv: 'sledge' }],
    ['local: its disk', { mac: '52:54:00:00:00:02', platform: 'efi' }, false, /^#!ipxe\necho takt: vm-2 boots from its disk\nexit\n$/, { bootenv: 'local' }],
    ['a bootenv for other firmware: disk, with the reason', { mac: '52:54:00:00:00:03', platform: 'pcbios' }, false, /echo takt: cannot render bootenv 'uefi-only' for vm-3: bootenv 'uefi-only' boots uefi firmware, and this machine booted bios; booting from disk\nexit/, { bootenv: 'local', problem: expect.stringContaining('boots uefi firmware') }],
    ['a template that fails: disk, with the template position', { mac: '52:54:00:00:00:04', platform: 'pcbios' }, false, /cannot render bootenv 'broken' for vm-4: template line 2, col \d+: .*hostname/, { bootenv: 'local' }],
    ['a bootenv no longer installed', { mac: '52:54:00:00:00:05', platform: 'pcbios' }, false, /bootenv 'gone' is not installed; booting from disk/, { bootenv: 'local' }],
    ['an unknown machine, discovery off', { mac: '52:54:00:77:77:77', platform: 'pcbios' }, false, /echo takt: unknown machine 52:54:00:77:77:77: no machine boots as it, and discovery is off; booting from disk\nexit/, { bootenv: 'local' }],
    ['an unknown machine, discovery on', { mac: '52:54:00:77:77:77', platform: 'pcbios' }, true, /vmlinuz takt\.discover=52:54:00:77:77:77\nboot/, { bootenv: 'discovery' }],
  ])('%s', async (_what, client, discovery, script, more) => {
    const r = await scripts(discovery).script(client);
    expect(r.script).toMatch(script);
    expect(r).toMatchObject(more);
  });

  it('never puts a secure value in a script', async () => {
    const withSecret = structuredClone(content);
    withSecret.objects.bootenvs.set('leaky', { def: { name: 'leaky', params: { required: ['token'] }, ipxe: '#!ipxe\necho {{ token }}\n' }, layer: 'x' });
    await store.transact((tx) => tx.insertMachine(machine('vm-7', { macs: ['52:54:00:00:00:07'], uuid: null, firmware: null, bootenv: 'leaky' }, { params: { token: 'secret-value' } }), 'h7'));
    const r = await new BootScripts({ store, content: () => withSecret, endpoint: () => 'http://e', discovery: false }).script({ mac: '52:54:00:00:00:07', platform: 'pcbios' });
    expect(r.script).not.toContain('secret-value');
    expect(r.problem).toContain("param 'token' is secure, and boot scripts are served without authentication");
  });
});

describe('boot settings through the CLI', () => {
  let ep: Endpoint;
  let dir: string;
  beforeAll(async () => {
    ep = await Endpoint.start();
    dir = mkdtempSync(join(tmpdir(), 'takt-bootcli-'));
    writePack(join(dir, 'p'), pack);
    const r = await ep.cli(['content', 'install', join(dir, 'p')]);
    expect(r.code, r.stderr).toBe(0);
  });
  afterAll(async () => {
    await ep?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('creates a network-booted machine, refuses a MAC another machine boots as, and records changes in history', async () => {
    const c = await ep.cli(['machines', 'create', 'rack-1', '--environment', 'metal', '--mac', '52-54-00-AA-00-01', '--uuid', UUID, '--bootenv', 'sledge', '-o', 'json']);
    expect(c.stderr).toBe('');
    const [m] = JSON.parse(c.stdout) as Machine[];
    expect(m!.boot).toEqual({ macs: ['52:54:00:aa:00:01'], uuid: UUID, firmware: null, bootenv: 'sledge' });

    const dup = await ep.cli(['machines', 'create', 'rack-2', '--environment', 'metal', '--mac', '52:54:00:aa:00:01']);
    expect(dup.code).toBe(1);
    expect(dup.stderr).toContain("MAC 52:54:00:aa:00:01 already boots machine 'rack-1'; a MAC belongs to one machine");

    const nope = await ep.cli(['machines', 'create', 'rack-3', '--environment', 'metal', '--mac', '52:54:00:aa:00:03', '--bootenv', 'sledg']);
    expect(nope.code).toBe(4); // not found
    expect(nope.stderr).toContain("bootenv 'sledg' not found (there are: broken, discovery, local, sledge, uefi-only)");

    const noMac = await ep.cli(['machines', 'create', 'rack-4', '--bootenv', 'sledge']);
    expect(noMac.code).toBe(2); // bad usage
    expect(noMac.stderr).toContain('give the MAC it boots from with --mac');

    const u = await ep.cli(['machines', 'update', 'rack-1', '--bootenv', 'local', '--firmware', 'uefi', '-o', 'json']);
    expect(u.stderr).toBe('');
    expect((JSON.parse(u.stdout) as Machine).boot).toMatchObject({ bootenv: 'local', firmware: 'uefi' });
    const h = JSON.parse((await ep.cli(['history', '-o', 'json'])).stdout) as { items?: Array<{ after: { boot?: MachineBoot } | null }> } | Array<{ after: { boot?: MachineBoot } | null }>;
    const items = Array.isArray(h) ? h : h.items ?? [];
    expect(items.some((c) => c.after?.boot?.bootenv === 'local')).toBe(true);
  }, 180_000);

  it('exports boot settings as desired state, and import puts them back', async () => {
    const out = join(dir, 'export');
    const e = await ep.cli(['export', out]);
    expect(e.code, e.stderr).toBe(0);
    const doc = readFileSync(join(out, 'machines', 'rack-1.yaml'), 'utf8');
    expect(doc).toMatch(/^boot:\n {2}bootenv: local\n {2}firmware: uefi\n {2}macs:\n {4}- 52:54:00:aa:00:01\n {2}uuid: 8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d\n/m);
    // Desired state, not position: the place carries no boot settings.
    expect(doc.slice(doc.indexOf('place:'))).not.toContain('macs');

    expect((await ep.cli(['machines', 'update', 'rack-1', '--bootenv', 'sledge'])).code).toBe(0);
    const dry = await ep.cli(['import', out, '--dry-run']);
    expect(dry.stdout).toContain('update machines/rack-1: boot');
    const i = await ep.cli(['import', out]);
    expect(i.code, i.stderr).toBe(0);
    expect((JSON.parse((await ep.cli(['machines', 'get', 'rack-1', '-o', 'json'])).stdout) as Machine).boot?.bootenv).toBe('local');
  }, 180_000);

  it('reserves an address (--ip): one machine per address, exported, and import sets or frees it', async () => {
    const get = async () => (JSON.parse((await ep.cli(['machines', 'get', 'rack-1', '-o', 'json'])).stdout) as Machine).boot?.ip;
    const set = await ep.cli(['machines', 'update', 'rack-1', '--ip', '10.0.0.20']);
    expect(set.code, set.stderr).toBe(0);
    expect(await get()).toBe('10.0.0.20');
    const dup = await ep.cli(['machines', 'create', 'rack-5', '--environment', 'metal', '--mac', '52:54:00:aa:00:05', '--ip', '10.0.0.20']);
    expect(dup.code).toBe(1);
    expect(dup.stderr).toContain("address 10.0.0.20 is already reserved for machine 'rack-1'; an address belongs to one machine");
    const bad = await ep.cli(['machines', 'update', 'rack-1', '--ip', '10.0.0']);
    expect(bad.stderr).toContain('boot.ip: "10.0.0" is not an IPv4 address (like 10.0.0.20)');

    const withIp = join(dir, 'export-ip');
    expect((await ep.cli(['export', withIp])).code).toBe(0);
    expect(readFileSync(join(withIp, 'machines', 'rack-1.yaml'), 'utf8')).toMatch(/^ {2}ip: 10\.0\.0\.20$/m);
    expect((await ep.cli(['machines', 'update', 'rack-1', '--ip', ''])).code).toBe(0);
    expect(await get()).toBeUndefined();
    expect((await ep.cli(['import', withIp])).code).toBe(0);
    expect(await get()).toBe('10.0.0.20');
    // The first export had no reservation: importing it frees the address.
    expect((await ep.cli(['import', join(dir, 'export')])).code).toBe(0);
    expect(await get()).toBeUndefined();
  }, 180_000);
});

describe('a stage that needs another bootenv', () => {
  let ep: Endpoint;
  let dir: string;
  beforeAll(async () => {
    ep = await Endpoint.start();
    dir = mkdtempSync(join(tmpdir(), 'takt-bootswitch-'));
    writePack(join(dir, 'p'), {
      ...pack,
      'pack.yaml': 'name: boot\nversion: 1.0.1\n',
      'tasks/a.yaml': 'name: a\nscript: echo a\n',
      'tasks/b.yaml': 'name: b\nscript: echo b\n',
      'tasks/c.yaml': 'name: c\nscript: echo c\n',
      'stages/prepare.yaml': 'name: prepare\ntasks: [a]\n',
      'stages/inmem.yaml': 'name: inmem\nbootenv: sledge\ntasks: [b, c]\n',
      'pipelines/p.yaml': 'name: p\nstages: [prepare, inmem]\n',
    });
    const r = await ep.cli(['content', 'install', join(dir, 'p')]);
    expect(r.code, r.stderr).toBe(0);
  });
  afterAll(async () => {
    await ep?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Runs the machine's jobs as its agent would (the agent protocol), until it is told to reboot or has nothing left. */
  async function drive(id: string, token: string): Promise<{ ran: string[]; reboot: boolean }> {
    const ran: string[] = [];
    let next = (await ep.call('POST', `/machines/${id}/claim?wait=0`, {}, token)).body as { job: { id: string; task: string } | null; action?: string };
    for (let i = 0; i < 10; i++) {
      if (next.action === 'reboot') return { ran, reboot: true };
      if (!next.job) return { ran, reboot: false };
      ran.push(next.job.task);
      const done = await ep.call('POST', `/jobs/${next.job.id}/complete`, { exitCode: 0, outputs: {}, claim: true }, token);
      expect(done.status, JSON.stringify(done.body)).toBe(200);
      next = (done.body as { next: typeof next }).next;
    }
    throw new Error('more jobs than the pipeline has');
  }

  it('switches a network-booted machine to it and has it reboot before the stage runs; others just run', async () => {
    const c = await ep.call('POST', '/machines', { name: 'vm-sw', environment: 'metal', pipeline: 'p', boot: { macs: ['52:54:00:bb:00:01'] } });
    expect(c.status, JSON.stringify(c.body)).toBe(201);
    const m = (c.body as { items: Array<Machine & { token: string }> }).items[0]!;
    expect(m.boot?.bootenv).toBe('local');

    expect(await drive(m.id, m.token)).toEqual({ ran: ['a'], reboot: true });
    const after = (await ep.call('GET', `/machines/${m.id}`)).body as Machine;
    expect(after.boot?.bootenv).toBe('sledge');
    expect(after.stage).toBe('inmem');
    // The switch is desired state, made by the pipeline: history says who.
    const h = (await ep.call('GET', `/changes?object=machines/${m.id}`)).body as { items: Array<{ author: string; after: { boot?: MachineBoot } | null }> };
    expect(h.items.some((e) => e.author === 'pipeline:p' && e.after?.boot?.bootenv === 'sledge')).toBe(true);
    // Booted into it, the machine runs the stage, and is not asked to reboot again.
    expect(await drive(m.id, m.token)).toEqual({ ran: ['b', 'c'], reboot: false });
    expect(((await ep.call('GET', `/machines/${m.id}`)).body as Machine).state).toBe('done');

    const plain = (await ep.call('POST', '/machines', { name: 'plain', pipeline: 'p' })).body as { items: Array<Machine & { token: string }> };
    expect(await drive(plain.items[0]!.id, plain.items[0]!.token)).toEqual({ ran: ['a', 'b', 'c'], reboot: false });
  });

  it("does not run a stage in another bootenv than it needs: one more reboot, then a stop with the reason", async () => {
    const c = await ep.call('POST', '/machines', { name: 'vm-mis', environment: 'metal', pipeline: 'p', boot: { macs: ['52:54:00:bb:00:02'] } });
    expect(c.status, JSON.stringify(c.body)).toBe(201);
    const m = (c.body as { items: Array<Machine & { token: string }> }).items[0]!;
    const claim = async (bootenv?: string) => (await ep.call('POST', `/machines/${m.id}/claim?wait=0`, bootenv ? { bootenv } : {}, m.token)).body as { job: { id: string; task: string } | null; action?: string; machine: { state: string; reason: string | null } };
    // Task a runs from disk (its stage needs no bootenv), then the switch to sledge.
    const a = await claim('local');
    expect(a.job?.task).toBe('a');
    expect((await ep.call('POST', `/jobs/${a.job!.id}/complete`, { exitCode: 0, outputs: {} }, m.token)).status).toBe(200);
    expect(await claim('local')).toMatchObject({ job: null, action: 'reboot' });
    // It came back from its disk, not in sledge: rebooted once more, then stopped, and nothing ran.
    expect(await claim('local')).toMatchObject({ job: null, action: 'reboot' });
    const stopped = await claim('local');
    expect(stopped.job).toBeNull();
    expect(stopped.action).toBeUndefined();
    expect(stopped.machine).toEqual({
      state: 'stopped',
      reason: "stage 'inmem' needs bootenv 'sledge', but the agent of vm-mis still runs in 'local' after takt rebooted it into 'sledge': its firmware does not boot takt's script for it. Check that network boot is first in its boot order (takt machines power vm-mis cycle --next-boot pxe), then resume it",
      power: 'on',
    });
    // Resumed and booted right, it runs the stage there. A claim that does not say (an older agent) is not checked.
    expect((await ep.cli(['machines', 'resume', 'vm-mis'])).code).toBe(0);
    const b = await claim('sledge');
    expect(b.job?.task).toBe('b');
    expect((await ep.call('POST', `/jobs/${b.job!.id}/complete`, { exitCode: 0, outputs: {} }, m.token)).status).toBe(200);
    expect((await claim()).job?.task).toBe('c');
    // A bootenv that is not a name is refused with its path.
    const bad = await ep.call('POST', `/machines/${m.id}/claim?wait=0`, { bootenv: 'Bad Name' }, m.token);
    expect(bad.status).toBe(422);
    expect((bad.body as { error: { path: string } }).error.path).toBe('/bootenv');
  });
});

describe('runningBootenv: what the agent says it booted', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'takt-cmdline-'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  it.each<[string, string | null, string | undefined]>([
    ['a takt in-memory environment', 'console=ttyS0 takt.bootenv=discovery takt.api=https://10.0.0.1:8443', 'discovery'],
    ['an OS from disk: local', 'BOOT_IMAGE=/vmlinuz root=UUID=1 ro quiet', 'local'],
    ['a bootenv word that is not a name: local', 'takt.bootenv=../../x', 'local'],
    ['no proc/cmdline (a local sandbox): cannot tell', null, undefined],
  ])('%s', async (_what, cmdline, want) => {
    const dir = mkdtempSync(join(root, 'r-'));
    if (cmdline !== null) {
      mkdirSync(join(dir, 'proc'));
      writeFileSync(join(dir, 'proc', 'cmdline'), `${cmdline}\n`);
    }
    expect(await runningBootenv(dir)).toBe(want);
  });
});
