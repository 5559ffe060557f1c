/**
 * The discovery credential (model/discovery.ts) and what the discovery agent reads from its kernel
 * command line (agent/discover.ts): pure functions, table-driven.
 */
import { execFileSync } from 'node:child_process';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { normalizeFingerprint, parseDiscoveryCmdline } from '../src/agent/discover.js';
import { bootenvOf } from '../src/agent/inventory.js';
import { checkDiscoveryToken, DISCOVERY_TOKEN_TTL_MS, discoveryToken } from '../src/model/discovery.js';
import { TaktError } from '../src/model/errors.js';
import { Sealer } from '../src/model/secure.js';
import { compressInitrd, DISCOVERY_INIT, parseLddAll } from '../src/provision/discovery-env.js';

const keyA = new Sealer(Buffer.alloc(32, 1)).keyed('discovery');
const keyB = new Sealer(Buffer.alloc(32, 2)).keyed('discovery');
const equal = (a: string, b: string) => a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b));
const NOW = Date.parse('2026-11-30T12:00:00Z');
const MAC = '52:54:00:d1:5c:07';

describe('the discovery credential', () => {
  const token = discoveryToken(keyA, MAC, NOW);

  it('has the documented shape and carries its MAC and expiry', () => {
    expect(token).toMatch(/^tkd\.525400d15c07\.\d+\.[0-9a-f]{64}$/);
    expect(checkDiscoveryToken(keyA, token, NOW, equal)).toEqual({ ok: true, mac: MAC, expiresAt: new Date(NOW + DISCOVERY_TOKEN_TTL_MS).toISOString() });
  });

  const flip = (t: string, i: number) => t.slice(0, i) + (t[i] === '0' ? '1' : '0') + t.slice(i + 1);
  it.each([
    ['expired', () => checkDiscoveryToken(keyA, token, NOW + DISCOVERY_TOKEN_TTL_MS, equal), /expired at 2026-11-30T12:30:00.000Z; boot the machine again/],
    ["another endpoint's key", () => checkDiscoveryToken(keyB, token, NOW, equal), /another endpoint's secret.key/],
    ['another MAC in it', () => checkDiscoveryToken(keyA, token.replace('525400d15c07', '525400d15c08'), NOW, equal), /not a discovery credential/],
    ['a later expiry in it', () => checkDiscoveryToken(keyA, token.replace(/\.(\d+)\./, (_m, e: string) => `.${Number(e) + 3600}.`), NOW, equal), /not a discovery credential/],
    ['a changed signature', () => checkDiscoveryToken(keyA, flip(token, token.length - 1), NOW, equal), /not a discovery credential/],
    ['a join token', () => checkDiscoveryToken(keyA, 'tkj.jt-abc.xxxxxxxxxxxxxxxxxxxxxxxx', NOW, equal), /not a discovery credential of this endpoint$/],
    ['upper-case hex', () => checkDiscoveryToken(keyA, token.toUpperCase(), NOW, equal), /not a discovery credential/],
  ])('is refused with %s', (_what, check, problem) => {
    const r = check();
    expect(r.ok).toBe(false);
    expect((r as { problem: string }).problem).toMatch(problem);
  });

  it("is keyed apart from the endpoint's shown digests", () => {
    const sealer = new Sealer(Buffer.alloc(32, 1));
    expect(sealer.keyed('discovery')('x')).not.toBe(sealer.digest('x'));
    expect(sealer.keyed('discovery')('x')).not.toBe(createHmac('sha256', Buffer.alloc(32, 1)).update('x').digest('hex'));
  });
});

describe('the discovery kernel command line', () => {
  const fp = 'ab'.repeat(32);
  const FP = normalizeFingerprint(fp)!;
  it('reads takt.api, takt.ca (any case, colons optional) and takt.token among other words', () => {
    expect(parseDiscoveryCmdline(`console=ttyS0 quiet takt.bootenv=discovery takt.api=https://10.0.0.1:8443 takt.ca=${fp} takt.token=tkd.x\n`)).toEqual({ api: 'https://10.0.0.1:8443', ca: FP, token: 'tkd.x' });
    expect(FP).toMatch(/^AB(:AB){31}$/);
  });
  it.each([
    ['console=ttyS0', 'has no takt.api=, takt.ca=, takt.token='],
    [`takt.api= takt.ca=${fp} takt.token=t`, 'has no takt.api='],
    [`takt.api=http://10.0.0.1:8080 takt.ca=${fp} takt.token=t`, 'is not an https origin'],
    [`takt.api=https://10.0.0.1:8443/x takt.ca=${fp} takt.token=t`, 'is not an https origin'],
    ['takt.api=https://10.0.0.1:8443 takt.ca=abcd takt.token=t', 'is not a SHA-256 fingerprint'],
  ])('%j is refused: %s', (cmdline, want) => {
    const err = (() => {
      try {
        parseDiscoveryCmdline(cmdline);
      } catch (e) {
        return e as TaktError;
      }
      throw new Error('accepted');
    })();
    expect(err).toBeInstanceOf(TaktError);
    expect(err.message).toContain(want);
  });
  it('knows its bootenv', () => {
    expect(bootenvOf('quiet takt.bootenv=discovery takt.api=https://x')).toBe('discovery');
  });
});

describe('ldd output, glibc and loader included', () => {
  it('keeps every resolved path once, in order, and skips the vDSO', () => {
    const text = [
      '\tlinux-vdso.so.1 (0x00007ffd)',
      '\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f60)',
      '\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f61)',
      '\t/lib64/ld-linux-x86-64.so.2 (0x00007f62)',
      '\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f61)',
      '\tlibmissing.so => not found',
    ].join('\n');
    expect(parseLddAll(text)).toEqual(['/lib/x86_64-linux-gnu/libstdc++.so.6', '/lib/x86_64-linux-gnu/libc.so.6', '/lib64/ld-linux-x86-64.so.2']);
  });
});

describe('the discovery initramfs compression', () => {
  const data = Buffer.from('070701'.repeat(5000) + 'takt discovery initramfs');
  it.each([
    // [compression, the magic the kernel's decompressor recognises, how to get the archive back]
    ['gzip', '1f8b', (b: Buffer) => gunzipSync(b)],
    ['zstd', '28b52ffd', (b: Buffer) => execFileSync('zstd', ['-d', '-q', '-c'], { input: b })],
    ['none', '30373037', (b: Buffer) => b],
  ] as const)('%s: starts with the magic %s and unpacks to the same archive', async (how, magic, unpack) => {
    const packed = await compressInitrd(data, how);
    expect(packed.subarray(0, magic.length / 2).toString('hex')).toBe(magic);
    expect(Buffer.compare(unpack(packed), data)).toBe(0);
  });

  it('/init prints each marker with the guest uptime (the bench and people reading a console time the boot by it)', () => {
    for (const m of ['init started', 'dhcp on', 'agent starting', 'registered with', 'registration failed']) {
      expect(DISCOVERY_INIT).toMatch(new RegExp(`TAKT-DISCOVERY: ${m}[^\\n]*\\$\\(up\\)`));
    }
    expect(DISCOVERY_INIT).toContain('read u _ </proc/uptime');
  });
});
