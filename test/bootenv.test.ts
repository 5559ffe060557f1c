/**
 * Boot environments in content packs (issue #13): lint reports every problem of a bootenv at
 * file:line:col like any other object, a stage may name the bootenv it needs, and the iPXE script and
 * command line render per machine with the one strict renderer.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PackFiles } from '../src/content/files.js';
import { formatDiagnostic, lintPack } from '../src/content/lint.js';
import type { BootenvDef } from '../src/model/content.js';
import { artifactUrl, renderBoot } from '../src/render/bootscript.js';
import { TemplateError } from '../src/render/template.js';
import { Endpoint, runCli, writePack } from './helpers/endpoint.js';

const H1 = 'a'.repeat(64);
const H2 = 'b'.repeat(64);

const good: PackFiles = {
  'pack.yaml': 'name: t\nversion: 1.0.0\n',
  'params/console.yaml': 'name: console\nschema:\n  type: string\n  default: ttyS0\n',
  'bootenvs/sledge.yaml': [
    'name: sledge',
    'firmware: [bios, uefi]',
    'params:',
    '  optional: [console]',
    `kernel: { name: vmlinuz, path: /var/lib/takt/vmlinuz, sha256: ${H1} }`,
    'initrds:',
    `  - { name: sledge.cpio.gz, url: 'http://mirror.example/sledge.cpio.gz', sha256: ${H2} }`,
    "cmdline: console={{ console }} takt.endpoint={{ boot.endpoint }} takt.mac={{ boot.mac }}",
    '',
  ].join('\n'),
  'tasks/hello.yaml': 'name: hello\nscript: echo hi\n',
  'stages/discover.yaml': 'name: discover\nbootenv: sledge\ntasks: [hello]\n',
  'pipelines/p.yaml': 'name: p\nstages: [discover]\n',
};

function lint(over: Record<string, string | undefined>): string[] {
  const files: PackFiles = {};
  for (const [k, v] of Object.entries({ ...good, ...over })) if (v !== undefined) files[k] = v;
  return lintPack(files).diagnostics.map(formatDiagnostic);
}

describe('bootenv lint', () => {
  it.each<[string, Record<string, string | undefined>, string[]]>([
    ['a good bootenv and the stage that needs it', {}, []],
    ['a stage naming a bootenv that does not exist', { 'stages/discover.yaml': 'name: discover\nbootenv: sledg\ntasks: [hello]\n' }, [
      "stages/discover.yaml:2:10: bootenv 'sledg' not found (did you mean 'sledge'?)",
    ]],
    ['neither kernel nor ipxe', { 'bootenvs/sledge.yaml': 'name: sledge\n' }, [
      'bootenvs/sledge.yaml:1:1: bootenv has neither a kernel nor an ipxe script: add `kernel:` (with initrds and cmdline), or `ipxe:` (e.g. `exit` to boot from disk)',
    ]],
    ['initrds without a kernel', { 'bootenvs/sledge.yaml': `name: sledge\nipxe: "#!ipxe\\nexit"\ninitrds: [{ name: i, url: 'http://x/i', sha256: ${H1} }]\n` }, [
      'bootenvs/sledge.yaml:3:1: initrds and cmdline need a kernel: add `kernel:`',
    ]],
    ['an artifact with both url and path, one with neither, a bad hash, a duplicate name', {
      'bootenvs/sledge.yaml': [
        'name: sledge',
        `kernel: { name: k, path: /k, url: 'http://x/k', sha256: ${H1} }`,
        'initrds:',
        `  - { name: k, sha256: ${H2} }`,
        '  - { name: i2, path: /i2, sha256: ABC }',
        '',
      ].join('\n'),
    }, [
      'bootenvs/sledge.yaml:2:9: give either `url:` or `path:`, not both',
      'bootenvs/sledge.yaml:4:5: give the file a `url:` (http, https, file) or a `path:` on the endpoint host',
      "bootenvs/sledge.yaml:4:13: 'k' is also the name of kernel; each file is served under its own name",
      'bootenvs/sledge.yaml:5:36: must be a the sha256 of the file: 64 lower-case hex digits (got "ABC")',
    ]],
    ['a template using an undeclared param, an unknown boot field, and boot.cmdline in the cmdline', {
      'bootenvs/sledge.yaml': `name: sledge\nkernel: { name: k, path: /k, sha256: ${H1} }\ncmdline: "a={{ nope }} b={{ boot.kernal }} c={{ boot.cmdline }}"\n`,
    }, [
      "bootenvs/sledge.yaml:3:16: template uses 'nope', which the bootenv does not declare in params.required or params.optional",
      "bootenvs/sledge.yaml:3:29: template: boot has no field 'kernal' (it has endpoint, kernel, initrds, files, cmdline, firmware, mac, uuid, api, ca, token)",
      'bootenvs/sledge.yaml:3:49: template: the command line cannot use boot.cmdline (it is what is being rendered)',
    ]],
    ['a secure param in a bootenv', {
      'params/root_pw.yaml': 'name: root_pw\nsecure: true\n',
      'bootenvs/sledge.yaml': `name: sledge\nparams:\n  required: [root_pw]\nkernel: { name: k, path: /k, sha256: ${H1} }\ncmdline: "pw={{ root_pw }}"\n`,
    }, [
      "bootenvs/sledge.yaml:3:14: param 'root_pw' is secure: boot scripts are served to firmware without authentication, so a bootenv cannot use a secret (deliver it to the machine's agent in a task instead)",
    ]],
    ['an ipxe script without its #!ipxe line, and an unknown firmware', {
      'bootenvs/disk.yaml': 'name: disk\nfirmware: [bios, arm]\nipxe: exit\n',
    }, [
      'bootenvs/disk.yaml:2:18: must be "bios" or "uefi" (got a string "arm")',
      'bootenvs/disk.yaml:3:7: an iPXE script starts with `#!ipxe` on its first line',
    ]],
    ['a bootenv named local (built in: machines in it boot from disk without a script)', {
      'bootenvs/local.yaml': 'name: local\nipxe: "#!ipxe\\nexit"\n',
    }, [
      "bootenvs/local.yaml:1:7: bootenv name 'local' is built in (boot from the machine's own disk) and cannot be defined by a pack; choose another name",
    ]],
    ['a stage that boots from disk names the built-in local', { 'stages/ondisk.yaml': 'name: ondisk\nbootenv: local\ntasks: [hello]\n' }, []],
  ])('%s', (_what, over, want) => {
    expect(lint(over)).toEqual(want);
  });
});

describe('renderBoot', () => {
  const sledge: BootenvDef = {
    name: 'sledge',
    kernel: { name: 'vmlinuz', path: '/k', sha256: H1 },
    initrds: [
      { name: 'a.cpio.gz', path: '/a', sha256: H2 },
      { name: 'b.cpio.gz', path: '/b', sha256: H1 },
    ],
    cmdline: 'console={{ console }}\n{% if machine.name %}takt.name={{ machine.name }}{% endif %}  takt.mac={{ boot.mac }}',
  };
  const target = {
    machine: { id: 'm-1', name: 'vm-1', environment: 'metal' },
    params: { console: 'ttyS0' },
    endpoint: 'http://10.0.0.1:8080/',
    firmware: 'bios' as const,
    mac: '52:54:00:AA:BB:CC',
  };

  it('renders the default script: kernel with a one-line command line, each initrd, boot', () => {
    const r = renderBoot(sledge, target);
    expect(r.cmdline).toBe('console=ttyS0 takt.name=vm-1 takt.mac=52:54:00:aa:bb:cc');
    expect(r.script).toBe(
      [
        '#!ipxe',
        `kernel http://10.0.0.1:8080/boot/files/${H1}/vmlinuz console=ttyS0 takt.name=vm-1 takt.mac=52:54:00:aa:bb:cc`,
        `initrd http://10.0.0.1:8080/boot/files/${H2}/a.cpio.gz`,
        `initrd http://10.0.0.1:8080/boot/files/${H1}/b.cpio.gz`,
        'boot',
        '',
      ].join('\n'),
    );
    expect(r.scriptHash).toMatch(/^[0-9a-f]{64}$/);
    // Provenance: the same definition hashes the same whatever its key order; another one differently.
    expect(renderBoot({ cmdline: sledge.cmdline, initrds: sledge.initrds, kernel: sledge.kernel, name: 'sledge' }, target).bootenvHash).toBe(r.bootenvHash);
    expect(renderBoot({ ...sledge, cmdline: 'quiet' }, target).bootenvHash).not.toBe(r.bootenvHash);
  });

  it('renders a custom script per firmware, and files by name', () => {
    const local: BootenvDef = {
      name: 'local',
      ipxe: '#!ipxe\n{% if boot.firmware == "bios" %}exit{% else %}chain {{ boot.files["grub.efi"] }}{% endif %}\n',
      files: [{ name: 'grub.efi', path: '/g', sha256: H2 }],
    };
    expect(renderBoot(local, target).script).toBe('#!ipxe\nexit\n');
    expect(renderBoot(local, { ...target, firmware: 'uefi' }).script).toBe(`#!ipxe\nchain ${artifactUrl('http://10.0.0.1:8080', { sha256: H2, name: 'grub.efi' })}\n`);
  });

  it('fails, rather than boot a wrong command line, when a param has no value', () => {
    expect(() => renderBoot(sledge, { ...target, params: {} })).toThrow(TemplateError);
  });

  it('URL-encodes artifact names', () => {
    expect(artifactUrl('http://e', { sha256: H1, name: 'a+b.img' })).toBe(`http://e/boot/files/${H1}/a%2Bb.img`);
  });
});

describe('bootenvs through the CLI', () => {
  let ep: Endpoint;
  let dir: string;
  beforeAll(async () => {
    ep = await Endpoint.start();
    dir = mkdtempSync(join(tmpdir(), 'takt-bootenv-'));
  });
  afterAll(async () => {
    await ep?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('installs a pack with a bootenv, lists and shows it; a broken one is refused with file:line:col', async () => {
    const pack = join(dir, 'good');
    writePack(pack, good);
    const inst = await ep.cli(['content', 'install', pack]);
    expect(inst.stderr).toBe('');
    expect(inst.code).toBe(0);
    const ls = await ep.cli(['bootenv', 'ls']);
    expect(ls.stdout).toMatch(/^NAME\s+LAYER\s+DESCRIPTION\nsledge\s+t\s+-?\s*$/m);
    const got = JSON.parse((await ep.cli(['bootenvs', 'get', 'sledge', '-o', 'json'])).stdout) as BootenvDef;
    expect(got.kernel?.sha256).toBe(H1);
    expect(JSON.parse((await ep.cli(['stages', 'get', 'discover', '-o', 'json'])).stdout)).toMatchObject({ bootenv: 'sledge' });

    const bad = join(dir, 'bad');
    writePack(bad, { ...good, 'pack.yaml': 'name: t\nversion: 1.0.1\n', 'stages/discover.yaml': 'name: discover\nbootenv: nope\ntasks: [hello]\n' });
    const lint = await runCli(['content', 'lint', bad]);
    expect(lint.code).toBe(1);
    expect(lint.stdout + lint.stderr).toContain("stages/discover.yaml:2:10: bootenv 'nope' not found");
  });
});
