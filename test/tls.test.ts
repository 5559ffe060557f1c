/**
 * TLS: the endpoint's own CA and server certificate (files, modes, renewal with the same key), operator
 * certificates, and a real endpoint serving HTTPS beyond loopback to the CLI and to curl-style pinning.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canonicalName, checkSanName, sanEntries, spkiPinOf, TlsManager } from '../src/api/tls.js';
import { Endpoint, runCli } from './helpers/endpoint.js';

const tmp = () => mkdtempSync(join(tmpdir(), 'takt-tls-'));

describe('names', () => {
  it.each([
    ['::1', '0:0:0:0:0:0:0:1'],
    ['[fd00::2]', 'fd00:0:0:0:0:0:0:2'],
    ['FD00:0:0:0:0:0:0:2', 'fd00:0:0:0:0:0:0:2'],
    ['::ffff:1.2.3.4', '0:0:0:0:0:ffff:102:304'],
    ['10.0.0.5', '10.0.0.5'],
    ['Takt.Example.ORG', 'takt.example.org'],
  ])('canonicalName(%s) = %s', (input, want) => expect(canonicalName(input)).toBe(want));

  it('drops wildcards and duplicates, and tells IPs from DNS names', () => {
    expect(sanEntries(['host', '0.0.0.0', '::', '::1', '0:0:0:0:0:0:0:1', 'HOST', '10.1.2.3'])).toEqual([
      { type: 'dns', value: 'host' },
      { type: 'ip', value: '::1' },
      { type: 'ip', value: '10.1.2.3' },
    ]);
  });

  it.each([
    ['takt.example.org', true],
    ['*.example.org', true],
    ['10.0.0.5', true],
    ['[::1]', true],
    ['bad name', false],
    ['-lead.example', false],
    ['a'.repeat(64) + '.example', false],
    ['', false],
  ])('checkSanName(%j) accepts: %s', (name, ok) => {
    if (ok) expect(() => checkSanName(name)).not.toThrow();
    else expect(() => checkSanName(name)).toThrow(/--tls-san .* is not a DNS name or IP address/);
  });
});

describe('TlsManager', () => {
  const dirs: string[] = [];
  afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
  const dir = () => {
    const d = tmp();
    dirs.push(d);
    return d;
  };

  it('creates a CA and a server certificate for every name, kept 0600 in a 0700 dir', async () => {
    const d = dir();
    const m = new TlsManager({ dataDir: d, names: ['box1', '127.0.0.1', '::1'] });
    await m.ensure();
    expect(statSync(join(d, 'tls')).mode & 0o777).toBe(0o700);
    for (const f of ['ca.pem', 'ca.key', 'server.pem', 'server.key']) expect(statSync(join(d, 'tls', f)).mode & 0o777).toBe(0o600);
    const server = new X509Certificate(readFileSync(join(d, 'tls', 'server.pem')));
    const ca = new X509Certificate(readFileSync(join(d, 'tls', 'ca.pem')));
    expect(server.verify(ca.publicKey)).toBe(true);
    expect(ca.ca).toBe(true);
    expect(server.subjectAltName).toContain('DNS:box1');
    expect(server.subjectAltName).toContain('IP Address:127.0.0.1');
    expect(server.checkIP('::1')).toBe('::1');
    expect(m.material.caFingerprint).toBe(ca.fingerprint256);
    expect(m.material.spkiPin).toMatch(/^sha256\/\/[A-Za-z0-9+/]{43}=$/);
    // What openssl says the pin is (the command curl's docs give for --pinnedpubkey).
    const pub = execFileSync('openssl', ['x509', '-pubkey', '-noout'], { input: readFileSync(join(d, 'tls', 'server.pem')) });
    const der = execFileSync('openssl', ['pkey', '-pubin', '-outform', 'der'], { input: pub });
    const b64 = execFileSync('openssl', ['dgst', '-sha256', '-binary'], { input: der }).toString('base64');
    expect(m.material.spkiPin).toBe(`sha256//${b64}`);
  });

  it('reuses what is there; a new name or a near expiry re-issues with the same key, so pins survive', async () => {
    const d = dir();
    let now = new Date('2026-01-01T00:00:00Z');
    const m = new TlsManager({ dataDir: d, names: ['box1'], now: () => now });
    await m.ensure();
    const first = readFileSync(join(d, 'tls', 'server.pem'), 'utf8');
    const pin = m.material.spkiPin;
    const ca = m.material.caFingerprint;
    let changes = 0;
    m.onChange(() => changes++);

    expect(await m.ensure()).toBe(false);
    expect(readFileSync(join(d, 'tls', 'server.pem'), 'utf8')).toBe(first);
    // A second manager on the same dir (an endpoint restart) issues nothing either.
    const again = new TlsManager({ dataDir: d, names: ['box1'], now: () => now });
    expect(await again.ensure()).toBe(false);
    expect(again.material.spkiPin).toBe(pin);

    expect(await m.ensure(['10.200.3.1'])).toBe(true);
    expect(changes).toBe(1);
    expect(m.material.names).toContain('10.200.3.1');
    expect(m.material.spkiPin).toBe(pin);
    expect(m.material.caFingerprint).toBe(ca);

    now = new Date(now.getTime() + 59 * 86400_000); // 31 days left: still fine
    expect(await m.ensure()).toBe(false);
    now = new Date(now.getTime() + 2 * 86400_000); // 29 days left: renew
    expect(await m.ensure()).toBe(true);
    expect(Date.parse(m.material.notAfter)).toBeGreaterThan(now.getTime() + 89 * 86400_000);
    expect(m.material.spkiPin).toBe(pin);
    expect(m.material.names).toContain('10.200.3.1');
  });

  describe('operator certificates', () => {
    let d: string;
    beforeAll(() => {
      d = dir();
      for (const n of ['a', 'b']) {
        spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(d, `${n}.key`), '-out', join(d, `${n}.pem`), '-days', '30', '-subj', '/CN=op.test', '-addext', 'subjectAltName=DNS:op.test,IP:127.0.0.1'], { stdio: 'ignore' });
      }
    });

    it('serves the operator certificate and pins its key; the own CA stays for internal listeners', async () => {
      const m = new TlsManager({ dataDir: d, names: ['box1'], certFile: join(d, 'a.pem'), keyFile: join(d, 'a.key') });
      await m.ensure();
      expect(m.material.cert).toBe(readFileSync(join(d, 'a.pem'), 'utf8'));
      expect(m.material.spkiPin).toBe(spkiPinOf(readFileSync(join(d, 'a.pem'), 'utf8')));
      expect(m.internal.spkiPin).not.toBe(m.material.spkiPin);
      expect(m.internal.names).toContain('box1');
      // Joining agents trust the operator chain's root (here the self-signed certificate itself), not the endpoint's own CA.
      expect(new X509Certificate(m.material.caPem).fingerprint256).toBe(new X509Certificate(readFileSync(join(d, 'a.pem'))).fingerprint256);
      expect(m.material.caFingerprint).toBe(new X509Certificate(readFileSync(join(d, 'a.pem'))).fingerprint256);
    });

    it('an endpoint serving it is trusted by a client holding what joining agents get', async () => {
      const ep = await Endpoint.start({ listen: ['0.0.0.0:0'], args: ['--tls-cert', join(d, 'a.pem'), '--tls-key', join(d, 'a.key')] });
      try {
        const port = new URL(ep.httpsUrl).port;
        const m = new TlsManager({ dataDir: d, names: [], certFile: join(d, 'a.pem'), keyFile: join(d, 'a.key') });
        await m.ensure();
        expect(await httpsGet(`https://127.0.0.1:${port}`, m.material.caPem)).toBe(200);
        expect(ep.output).toContain(`server key pin ${spkiPinOf(readFileSync(join(d, 'a.pem'), 'utf8'))}`);
      } finally {
        await ep.stop();
      }
    });

    it.each([
      [{ certFile: 'a.pem', keyFile: 'b.key' }, /--tls-key .*b\.key is not the key of the certificate/],
      [{ certFile: 'a.pem' }, /--tls-cert and --tls-key go together/],
      [{ certFile: 'missing.pem', keyFile: 'a.key' }, /cannot read the TLS certificate or key/],
      [{ certFile: 'a.key', keyFile: 'a.key' }, /is not a PEM certificate and key/],
    ])('refuses %j', async (files, want) => {
      const opts = Object.fromEntries(Object.entries(files).map(([k, v]) => [k, join(d, v)]));
      await expect((async () => new TlsManager({ dataDir: d, names: [], ...opts }).ensure())()).rejects.toThrow(want);
    });
  });
});

/** GET over HTTPS with exactly this CA; resolves the status or rejects with the TLS error. */
function httpsGet(url: string, ca: string | undefined, path = '/api/v1/health'): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, url), { ca, timeout: 10_000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('an endpoint listening beyond loopback', () => {
  let ep: Endpoint;
  beforeAll(async () => {
    ep = await Endpoint.start({ listen: ['0.0.0.0:0'], args: ['--tls-san', 'takt.test'] });
  });
  afterAll(async () => ep?.stop());

  it('serves plain HTTP on loopback and HTTPS everywhere else, and prints the CA fingerprint', () => {
    expect(ep.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(ep.httpsUrl).toMatch(/^https:\/\/0\.0\.0\.0:\d+$/);
    const fp = new X509Certificate(readFileSync(join(ep.data, 'tls', 'ca.pem'))).fingerprint256;
    expect(ep.output).toContain(`CA fingerprint ${fp}`);
    expect(ep.output).toMatch(/remote machines reach this endpoint at https:\/\//);
  });

  it('the HTTPS listener chains to the CA, and refuses clients that trust only the system CAs', async () => {
    const port = new URL(ep.httpsUrl).port;
    const ca = readFileSync(join(ep.data, 'tls', 'ca.pem'), 'utf8');
    expect(await httpsGet(`https://127.0.0.1:${port}`, ca)).toBe(200);
    await expect(httpsGet(`https://127.0.0.1:${port}`, undefined)).rejects.toThrow(/self-signed|unable to (verify|get local issuer)/i);
  });

  it('never answers plain HTTP beyond loopback', async () => {
    const port = new URL(ep.httpsUrl).port;
    const outcome = await new Promise<string>((resolve) => {
      const req = httpRequest({ host: '127.0.0.1', port, path: '/api/v1/health', timeout: 10_000 }, (res) => resolve(`status ${res.statusCode}`));
      req.on('error', (err) => resolve(`error ${err.message}`));
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.end();
    });
    expect(outcome).toMatch(/^error /);
  });

  it('the CLI talks HTTPS with the data dir\'s CA, and refuses another CA', async () => {
    const endpoint = `https://127.0.0.1:${new URL(ep.httpsUrl).port}`;
    const ok = await runCli(['machines', 'list', '-o', 'json'], { TAKT_ENDPOINT: endpoint, TAKT_TOKEN: ep.token, TAKT_DATA: ep.data });
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    const other = tmp();
    try {
      await new TlsManager({ dataDir: other, names: ['x'] }).ensure();
      const bad = await runCli(['machines', 'list'], { TAKT_ENDPOINT: endpoint, TAKT_TOKEN: ep.token, TAKT_CA_FILE: join(other, 'tls', 'ca.pem') });
      expect(bad.code).toBe(3);
      expect(bad.stderr).toMatch(/cannot reach .*(self-signed|verify|signature)/i);
      expect(bad.stderr).toContain('TAKT_CA_FILE'); // the hint says what to fix, not "is the endpoint running?"
      const missing = await runCli(['machines', 'list'], { TAKT_ENDPOINT: endpoint, TAKT_TOKEN: ep.token, TAKT_CA_FILE: join(other, 'nope.pem') });
      expect(missing.code).toBe(1);
      expect(missing.stderr).toContain('TAKT_CA_FILE');
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });

  it('the event stream works over HTTPS', async () => {
    const endpoint = `https://127.0.0.1:${new URL(ep.httpsUrl).port}`;
    const ac = new AbortController();
    const { ApiClient } = await import('../src/client/http.js');
    const { followEvents } = await import('../src/client/events.js');
    const client = new ApiClient({ endpoint, token: ep.token, ca: readFileSync(join(ep.data, 'tls', 'ca.pem'), 'utf8') });
    // The create is awaited before the test ends: its answer may come after its event, and the next test
    // crashes the endpoint (an answer cut off then was an unhandled rejection).
    let created: Promise<unknown> = Promise.resolve();
    const seen = new Promise<string>((resolve) => {
      void followEvents(client, (e) => { resolve(e.topic); ac.abort(); }, { signal: ac.signal, onOpen: () => { created = ep.call('POST', '/machines', { name: 'tls-ev', environment: 'local' }); } });
    });
    expect(await seen).toMatch(/^machines\.create\./);
    expect(((await created) as { status: number }).status).toBe(201);
  });

  it('keeps its CA and key pin across a restart', async () => {
    const before = ep.output.match(/server key pin (sha256\/\/\S+)/)![1];
    await ep.crash();
    ep.output = '';
    await ep.boot();
    expect(ep.output.match(/server key pin (sha256\/\/\S+)/)![1]).toBe(before);
    expect(ep.output).not.toContain('created the endpoint CA');
  });
});

describe('serve refuses bad TLS settings with the flag that is wrong', () => {
  it.each([
    // 2: a flag refused as bad usage before the start; 1: a file it names that cannot be used
    [['--tls-san', 'bad name'], /--tls-san 'bad name' is not a DNS name or IP address/, 2],
    [['--advertise-url', 'http://10.0.0.1:8092'], /--advertise-url .* must be https/, 2],
    [['--tls-cert', '/nonexistent/c.pem', '--tls-key', '/nonexistent/k.pem'], /cannot read the TLS certificate or key/, 1],
    [['--listen', '127.0.0.1:99999'], /--listen '127.0.0.1:99999' is not HOST:PORT/, 2],
  ])('%j', async (args, want, code) => {
    const d = tmp();
    try {
      writeFileSync(join(d, '.keep'), '');
      const r = await runCli(['serve', '--data', d, '--listen', '127.0.0.1:0', ...args]);
      expect(r.code).toBe(code);
      expect(r.stderr).toMatch(want);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
