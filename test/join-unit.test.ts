/**
 * The pure parts of joining, table by table: a join token's state over time and uses, machine names from
 * hostnames, the endpoint URL a join command may carry, host identity for re-join, fact selectors, the
 * ldd parse behind the bundle, and the install script (valid sh, every value quoted).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { formatDiagnostic, lintPack } from '../src/content/lint.js';
import { endpointUrl, machineNameFromHost } from '../src/engine/join.js';
import { looksLikeId } from '../src/engine/ids.js';
import { isLoopbackHost as isLoopback } from '../src/model/host.js';
import { joinCommand } from '../src/api/routes/join.js';
import { parseLdd } from '../src/join/bundle.js';
import { failureScript, installScript, shellQuote } from '../src/join/script.js';
import { factAt, identityOf, keepIdentity, sameHost, type Facts } from '../src/model/facts.js';
import { factMatches } from '../src/model/factselect.js';
import { joinTokenIdFromToken, joinTokenProblem, joinTokenState, viewJoinToken, type JoinToken } from '../src/model/join.js';

const T0 = Date.parse('2030-01-01T00:00:00.000Z');
const token = (over: Partial<JoinToken> = {}): JoinToken => ({
  id: 'jt-abc',
  name: null,
  pipeline: null,
  profiles: [],
  environment: 'remote',
  url: 'https://10.0.0.1:8092',
  maxUses: 1,
  uses: 0,
  expiresAt: new Date(T0 + 3_600_000).toISOString(),
  createdBy: 'admin',
  createdAt: new Date(T0).toISOString(),
  revokedAt: null,
  revokedBy: null,
  machines: [],
  machine: null,
  ...over,
});

describe('join token state', () => {
  it.each([
    ['fresh', {}, 0, 'active'],
    ['one ms before expiry', {}, 3_599_999, 'active'],
    ['at expiry', {}, 3_600_000, 'expired'],
    ['after expiry', {}, 7_200_000, 'expired'],
    ['used once of one', { uses: 1 }, 0, 'used'],
    ['used 2 of 3', { uses: 2, maxUses: 3 }, 0, 'active'],
    ['used 3 of 3', { uses: 3, maxUses: 3 }, 0, 'used'],
    ['revoked', { revokedAt: '2030-01-01T00:00:01.000Z' }, 0, 'revoked'],
    ['revoked wins over expired', { revokedAt: '2030-01-01T00:00:01.000Z' }, 9_999_999, 'revoked'],
    ['expired wins over used up', { uses: 1 }, 9_999_999, 'expired'],
  ] as const)('%s → %s', (_what, over, after, state) => {
    const t = token(over);
    expect(joinTokenState(t, T0 + after)).toBe(state);
    const problem = joinTokenProblem(t, T0 + after);
    if (state === 'active') expect(problem).toBeNull();
    else expect(problem).toMatch(new RegExp(`jt-abc (${state === 'used' ? 'is used up' : state === 'expired' ? 'expired at' : 'was revoked at'})`));
  });

  it('a view never carries a secret and counts what is left', () => {
    const v = viewJoinToken(token({ uses: 2, maxUses: 5 }), T0);
    expect(v).toMatchObject({ usesLeft: 3, state: 'active' });
    expect(JSON.stringify(v)).not.toMatch(/tkj\.|hash/i);
  });

  it.each([
    ['tkj.jt-0123456789.abcdefghijklmnopqrstuvwxyzABCDEF', 'jt-0123456789'],
    ['tkj.jt-1.short', null],
    ['tkm.m-1.abcdefghijklmnopqrstuvwxyz', null],
    ['tkj.JT-1.abcdefghijklmnopqrstuvwxyz', null],
    ['tkj.jt-1.abcdefghijklmnop/qrstuvwxyz', null],
    ['', null],
  ])('token %s has id %s', (text, id) => {
    expect(joinTokenIdFromToken(text)).toBe(id);
  });
});

describe('machine names from hostnames', () => {
  it.each([
    ['web-1', 'web-1'],
    ['Web-1.Example.ORG', 'web-1.example.org'],
    ['db_2', 'db_2'],
    ['--odd name!', 'odd-name'],
    ['m-1a2b', 'host-m-1a2b'],
    ['', 'host'],
    ['***', 'host'],
    ['a'.repeat(80), 'a'.repeat(63)],
    ['trailing.', 'trailing'],
  ])('%j → %j', (host, name) => {
    const n = machineNameFromHost(host);
    expect(n).toBe(name);
    expect(n).toMatch(/^[a-z0-9][a-z0-9._-]{0,62}$/);
    expect(looksLikeId(n)).toBe(false);
  });
});

describe('the URL a join command carries', () => {
  it.each([
    ['https://10.0.0.1:8092', 'https://10.0.0.1:8092'],
    ['https://takt.example.org:8092/', 'https://takt.example.org:8092'],
    ['http://127.0.0.1:8092', 'http://127.0.0.1:8092'],
    ['http://[::1]:8092', 'http://[::1]:8092'],
    ['http://127.1.2.3:8092', 'http://127.1.2.3:8092'],
    ['http://localhost:8092', 'http://localhost:8092'],
    ['https://[fd00::1]:8092', 'https://[fd00::1]:8092'],
    ['https://xn--bcher-kva.example:8092', 'https://xn--bcher-kva.example:8092'],
  ])('%s is accepted as %s', (text, url) => {
    expect(endpointUrl(text)).toBe(url);
  });
  it.each([
    ['http://10.0.0.1:8092', /plain HTTP beyond loopback/],
    ['https://10.0.0.1:8092/api', /just scheme, host and port/],
    ['https://u:p@10.0.0.1', /just scheme, host and port/],
    ['ftp://10.0.0.1', /must be https/],
    ['10.0.0.1:8092', /must be https|not a URL/],
    ['not a url', /not a URL/],
    // Hosts go into a shell line and a script: IP literals and RFC 1123 names only (red team F12).
    ["https://$(id):8092", /host must be an IP address or a DNS name/],
    ["https://a'b.test:8092", /host must be an IP address or a DNS name/],
    ['https://a;b.test:8092', /host must be an IP address or a DNS name/],
    ['https://a"b.test', /host must be an IP address or a DNS name/],
    ['https://under_score.test', /host must be an IP address or a DNS name/],
    ['https://-lead.test', /host must be an IP address or a DNS name/],
    // Loopback is an IP literal (or localhost), never a name that looks like one (red team F5).
    ['http://127.evil.test:8092', /plain HTTP beyond loopback/],
    ['http://127.0.0.1.nip.io:8092', /plain HTTP beyond loopback/],
    ['http://localhost.evil.test:8092', /plain HTTP beyond loopback/],
  ])('%s is refused', (text, why) => {
    expect(() => endpointUrl(text)).toThrow(why);
  });
});

describe('loopback for plain HTTP (listeners and join URLs)', () => {
  it.each([
    ['127.0.0.1', true],
    ['127.255.0.9', true],
    ['::1', true],
    ['[::1]', true],
    ['localhost', true],
    ['127.rt.test', false],
    ['127.0.0.1.nip.io', false],
    ['10.0.0.1', false],
    ['0.0.0.0', false],
    ['::', false],
  ])('%s → %s', (host, loopback) => {
    expect(isLoopback(host)).toBe(loopback);
  });
});

const facts = (over: Partial<Facts> = {}): Facts => ({
  hostname: 'web-1',
  machineId: null,
  productUuid: null,
  macs: [],
  addresses: [],
  os: { id: 'debian', versionId: '12', prettyName: 'Debian GNU/Linux 12 (bookworm)', idLike: [] },
  kernel: '6.1.0',
  arch: 'x86_64',
  cpu: { model: 'EPYC', count: 8 },
  memoryBytes: 8 * 2 ** 30,
  disks: [{ name: 'vda', sizeBytes: 10 * 2 ** 30, model: null, rotational: false }],
  agentVersion: '0.1.0',
  ...over,
});
const MID = '0123456789abcdef0123456789abcdef';
const UUID = '12345678-1234-1234-1234-123456789abc';

describe('host identity for re-join', () => {
  it.each([
    ['machine-id first', facts({ machineId: MID, productUuid: UUID, macs: ['52:54:00:00:00:01'] }), { kind: 'machineId', value: MID }],
    ['then the SMBIOS UUID', facts({ productUuid: UUID, macs: ['52:54:00:00:00:01'] }), { kind: 'productUuid', value: UUID }],
    ['then the MACs', facts({ macs: ['52:54:00:00:00:01'] }), { kind: 'macs', values: ['52:54:00:00:00:01'] }],
    ['else none', facts(), null],
  ])('%s', (_what, f, id) => {
    expect(identityOf(f)).toEqual(id);
  });

  const MAC1 = '52:54:00:00:00:01';
  it.each([
    ['same machine-id', facts({ machineId: MID }), facts({ machineId: MID, hostname: 'renamed' }), true],
    ['other machine-id, same UUID (a clone)', facts({ machineId: MID, productUuid: UUID }), facts({ machineId: 'f'.repeat(32), productUuid: UUID }), false],
    ['same UUID, no machine-id', facts({ productUuid: UUID }), facts({ productUuid: UUID }), true],
    ['one MAC in common', facts({ macs: ['52:54:00:00:00:01', '52:54:00:00:00:02'] }), facts({ macs: ['52:54:00:00:00:02'] }), true],
    ['no MAC in common', facts({ macs: ['52:54:00:00:00:01'] }), facts({ macs: ['52:54:00:00:00:03'] }), false],
    // The stored machine's strongest identity decides; a host that leaves it out is nobody (red team F1).
    ['stored has a machine-id, host reports only the MAC', facts({ macs: [MAC1] }), facts({ machineId: MID, macs: [MAC1] }), false],
    ['stored has a machine-id, host reports only the UUID', facts({ productUuid: UUID, macs: [MAC1] }), facts({ machineId: MID, productUuid: UUID, macs: [MAC1] }), false],
    ['stored has a UUID, host reports only the MAC', facts({ macs: [MAC1] }), facts({ productUuid: UUID, macs: [MAC1] }), false],
    ['stored has a UUID only, host reports a machine-id too', facts({ machineId: MID, productUuid: UUID }), facts({ productUuid: UUID }), true],
    ['stored has MACs only, host reports a machine-id and the MAC', facts({ machineId: MID, macs: [MAC1] }), facts({ macs: [MAC1] }), true],
    ['stored has no identity', facts({ macs: [MAC1] }), facts(), false],
  ])('%s', (_what, joining, stored, same) => {
    expect(sameHost(joining, { ...stored })).toBe(same);
  });

  it('a machine without facts is nobody', () => {
    expect(sameHost(facts({ machineId: MID }), null)).toBe(false);
  });

  it.each([
    ['kept from registration', facts({ machineId: MID, productUuid: UUID, macs: [MAC1] }), { machineId: MID, productUuid: UUID, macs: [MAC1] }],
    ['none for a machine that never registered', null, { machineId: null, productUuid: null, macs: [] }],
  ])('a facts report cannot change the identity: %s', (_what, stored, identity) => {
    const reported = facts({ machineId: 'e'.repeat(32), productUuid: null, macs: ['52:54:00:00:00:09'], kernel: '6.9' });
    expect(keepIdentity(reported, stored)).toEqual({ ...reported, ...identity });
  });
});

describe('fact selectors', () => {
  const f = facts({ macs: ['52:54:00:00:00:01', '52:54:00:00:00:02'] });
  it.each([
    ['os.id', 'debian', true],
    ['os.id', 'ubuntu', false],
    ['cpu.count', '8', true],
    ['macs', '52:54:00:00:00:02', true],
    ['macs', '52:54:00:00:00:09', false],
    ['os', 'debian', false],
    ['os.missing', 'x', false],
    ['constructor', 'x', false],
    ['__proto__.x', 'x', false],
    ['disks.0.name', 'vda', true],
  ])('facts.%s=%s → %s', (path, value, match) => {
    expect(factMatches(f, path, value)).toBe(match);
  });
  it('reads own properties only', () => {
    expect(factAt(f, 'toString')).toBeUndefined();
    expect(factAt(null, 'os.id')).toBeUndefined();
  });
});

describe('ldd output', () => {
  const sample = `	linux-vdso.so.1 (0x00007ffd5a1f0000)
	libdl.so.2 => /lib/x86_64-linux-gnu/libdl.so.2 (0x00007f3a1c2d0000)
	libstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f3a1c000000)
	libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f3a1bf20000)
	libgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f3a1c2b0000)
	libpthread.so.0 => /lib/x86_64-linux-gnu/libpthread.so.0 (0x00007f3a1c2a0000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3a1bd3e000)
	libuv.so.1 => /usr/lib/x86_64-linux-gnu/libuv.so.1 (0x00007f3a1bd00000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f3a1c2f0000)`;
  it("keeps only what glibc does not provide", () => {
    expect(parseLdd(sample)).toEqual(['/lib/x86_64-linux-gnu/libstdc++.so.6', '/lib/x86_64-linux-gnu/libgcc_s.so.1', '/usr/lib/x86_64-linux-gnu/libuv.so.1']);
  });
});

describe('install script', () => {
  const nasty = `it's "a" $(rm -rf /) \`x\``;
  const input = { url: 'https://10.0.0.1:8092', pin: 'sha256//AAAA+/=', caPem: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n', token: 'tkj.jt-1.abcdefghijklmnopqrstuvwxyz', bundleSha256: 'a'.repeat(64), version: '0.1.0' };

  it.each([
    ['https with a pin and a CA', input],
    ['plain http on loopback', { ...input, url: 'http://127.0.0.1:8092', pin: null, caPem: null }],
  ])('is valid POSIX sh: %s', (_what, i) => {
    const r = spawnSync('sh', ['-n'], { input: installScript(i) });
    expect(r.status, r.stderr.toString()).toBe(0);
  });

  it('holds the pin, the CA and the token only as quoted words, and runs one function at the end', () => {
    const s = installScript(input);
    expect(s).toContain(`pin='sha256//AAAA+/='`);
    expect(s).toContain(`token='tkj.jt-1.abcdefghijklmnopqrstuvwxyz'`);
    expect(s.trimEnd().split('\n').at(-1)).toBe('takt_join "$@"');
    expect(s).toContain('--pinnedpubkey "$pin" -k');
  });

  it.each([["plain"], [nasty], ["new\nline"]])('quotes %j so sh reads it back unchanged', (text) => {
    const r = spawnSync('sh', ['-c', `printf %s ${shellQuote(text)}`]);
    expect(r.stdout.toString()).toBe(text);
  });

  describe.skipIf(process.getuid?.() !== 0)('run as root (it stops before any download)', () => {
    let dir: string;
    beforeEach(() => {
      dir = mkdtempSync(join(tmpdir(), 'takt-script-'));
    });
    afterEach(() => rmSync(dir, { recursive: true, force: true }));
    // Nothing listens on port 1: the download fails at once, after the prefix checks and the parent dirs.
    const run = (prefix: string) => spawnSync('sh', [], { input: installScript({ ...input, url: 'http://127.0.0.1:1', pin: null, caPem: null }), env: { ...process.env, TAKT_PREFIX: prefix, TAKT_SYSTEMD: 'no' }, timeout: 30_000 });

    it.each([
      ['a non-empty directory that is no takt install', (p: string) => (mkdirSync(join(p, 'share'), { recursive: true }), writeFileSync(join(p, 'share', 'precious'), 'x')), /is not empty and holds no earlier takt install/],
      ['a file', (p: string) => writeFileSync(p, 'x'), /exists and is not a directory/],
    ])('refuses a TAKT_PREFIX that is %s, touching nothing (red team F7a)', (_what, make, why) => {
      const prefix = join(dir, 'usr');
      make(prefix);
      const before = readdirSync(dir);
      const r = run(prefix);
      expect(r.status).toBe(1);
      expect(r.stderr.toString()).toMatch(why);
      expect(readdirSync(dir)).toEqual(before);
      if (statSync(prefix).isDirectory()) expect(readFileSync(join(prefix, 'share', 'precious'), 'utf8')).toBe('x');
    });

    it('accepts an earlier takt install or an empty directory, and makes missing parents 0755 (red team F8)', () => {
      const earlier = join(dir, 'old', 'takt');
      mkdirSync(earlier, { recursive: true });
      writeFileSync(join(earlier, 'BUNDLE.json'), '{}');
      expect(run(earlier).stderr.toString()).toMatch(/could not download the agent bundle/);
      mkdirSync(join(dir, 'empty'));
      expect(run(join(dir, 'empty')).stderr.toString()).toMatch(/could not download the agent bundle/);
      const r = run(join(dir, 'new', 'opt', 'takt'));
      expect(r.stderr.toString()).toMatch(/could not download the agent bundle/);
      expect(statSync(join(dir, 'new')).mode & 0o777).toBe(0o755);
      expect(statSync(join(dir, 'new', 'opt')).mode & 0o777).toBe(0o755);
      expect(readdirSync(join(dir, 'new', 'opt'))).toEqual([]);
    });
  });

  it.each([
    ['http, nothing listening', joinCommand('http://127.0.0.1:1/join/tkj.jt-1.x', null)],
    ['https with a pin, nothing listening', joinCommand('https://127.0.0.1:1/join/tkj.jt-1.x', 'sha256//AAAA')],
  ])('the one-liner fails when curl does (new user F2), under dash and bash: %s', (_what, command) => {
    for (const shell of ['sh', 'dash', 'bash'].filter((x) => spawnSync('sh', ['-c', `command -v ${x}`]).status === 0)) {
      const r = spawnSync(shell, ['-c', command]);
      expect([shell, r.status]).not.toEqual([shell, 0]);
      expect(r.stderr.toString()).toMatch(/curl: \(7\)/);
    }
  });

  it('a refusal is a script that says why and exits 1', () => {
    const r = spawnSync('sh', [], { input: failureScript(`join token jt-1 expired; ${nasty}\n\u001b[31m`) });
    expect(r.status).toBe(1);
    expect(r.stderr.toString()).toBe(`takt join: join token jt-1 expired; ${nasty} [31m\n`);
    expect(r.stdout.toString()).toBe('');
  });
});

describe('facts in templates (lint)', () => {
  const pack = (script: string, extra: Record<string, string> = {}) =>
    lintPack({ 'pack.yaml': 'name: p\nversion: 1.0.0\n', 'tasks/t.yaml': `name: t\nscript: |\n  ${script}\n`, ...extra }).diagnostics.map(formatDiagnostic);
  it.each([
    ['echo {{ facts.os.id }} {{ facts.cpu.count }} {{ facts.addresses[0].address }} {{ facts.observedAt }}', []],
    ['echo {{ facts.shoe }}', [expect.stringMatching(/tasks\/t\.yaml:3:\d+: template: facts has no field 'shoe' \(it has hostname, machineId/)]],
    ['echo {{ facts | size }}', []],
  ])('%s', (script, diagnostics) => {
    expect(pack(script)).toEqual(diagnostics);
  });
  it('facts is not a param name', () => {
    expect(pack('echo hi', { 'params/facts.yaml': 'name: facts\n' })).toEqual([expect.stringMatching(/'facts' is reserved for the machine's observed facts/)]);
  });
});
