/**
 * Discovery registration against a real endpoint (issue #13 item 3): the discovery bootenv's script
 * carries a MAC-bound discovery credential; with it, the machine booting from that MAC — and only it, and
 * only while it is in discovery — registers and gets its machine token. What crosses a real network (a VM
 * that boots the built environment and pins the CA) is in test/provision-discovery.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Facts } from '../src/model/facts.js';
import { Endpoint, writePack } from './helpers/endpoint.js';

const MAC = '52:54:00:0d:15:c0';
const UUID = '0b7e3a55-1c2d-4e5f-8a9b-0c1d2e3f4a5b';

function facts(over: Partial<Facts> = {}): Facts {
  return {
    hostname: 'discovery',
    machineId: null,
    productUuid: UUID,
    macs: [MAC],
    addresses: [{ interface: 'eth0', address: '10.9.0.100', family: 'IPv4', prefix: 24 }],
    os: { id: null, versionId: null, prettyName: null, idLike: [] },
    kernel: '6.1.0-57-amd64',
    arch: 'x86_64',
    cpu: { model: 'QEMU Virtual CPU', count: 1 },
    memoryBytes: 1024 * 1048576,
    disks: [{ name: 'vda', sizeBytes: 8 * 2 ** 30, model: null, rotational: false }],
    agentVersion: '0.1.0',
    system: { vendor: 'QEMU', product: 'Standard PC', serial: 'S-1' },
    nics: [{ name: 'eth0', mac: MAC, driver: 'virtio_net', link: 'up', speedMbps: null }],
    bootenv: 'discovery',
    ...over,
  };
}

describe('registering a machine booted into discovery', () => {
  let ep: Endpoint;
  let dir: string;
  let boot: string;

  const scriptToken = async (mac: string): Promise<string> => {
    const text = await (await fetch(`${boot}/boot/ipxe?mac=${mac}&platform=pcbios`)).text();
    const m = /token=(\S*)/.exec(text);
    if (!m) throw new Error(`no token in the script:\n${text}`);
    return m[1]!;
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'takt-discovery-'));
    ep = await Endpoint.start({ args: ['--provision', '127.0.0.1/8', '--boot-port', '0'] });
    boot = await ep.bootUrl();
    writePack(join(dir, 'p'), {
      'pack.yaml': 'name: disco\nversion: 1.0.0\n',
      'bootenvs/discovery.yaml': "name: discovery\nipxe: |\n  #!ipxe\n  echo token={{ boot.token }} api={{ boot.api }} ca={{ boot.ca }}\n  exit\n",
      'bootenvs/installed.yaml': "name: installed\nipxe: |\n  #!ipxe\n  echo token={{ boot.token }}\n  exit\n",
      'tasks/burn.yaml': 'name: burn\nscript: echo burn\n',
      'stages/burn.yaml': 'name: burn\ntasks: [burn]\n',
      'pipelines/burn-in.yaml': 'name: burn-in\nstages: [burn]\nenvironments: [metal]\n',
      'classifiers/site.yaml': 'name: site\nrules:\n  - name: big-disks\n    match: ["disks[].sizeBytes>=1TB"]\n    pipeline: burn-in\n  - name: qemu-vms\n    match: [system.vendor=QEMU, "nics[].driver=virtio_net"]\n    pipeline: burn-in\n',
    });
    const r = await ep.cli(['content', 'install', join(dir, 'p')]);
    expect(r.code, r.stderr).toBe(0);
  }, 120_000);
  afterAll(async () => {
    await ep?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('an unknown MAC gets the discovery bootenv with a credential bound to its MAC', async () => {
    const token = await scriptToken(MAC);
    expect(token).toMatch(/^tkd\.5254000d15c0\.\d+\.[0-9a-f]{64}$/);
    // Another MAC, another credential.
    expect(await scriptToken('52:54:00:0d:15:c1')).toMatch(/^tkd\.5254000d15c1\./);
  });

  it('registers as metal-<mac> with its inventory, and again as the same machine with a new token', async () => {
    const token = await scriptToken(MAC);
    const first = await ep.call('POST', '/join', { facts: facts() }, token);
    expect(first.status, JSON.stringify(first.body)).toBe(201);
    expect(first.body.rejoined).toBe(false);
    expect(first.body.machine).toEqual(expect.objectContaining({ name: 'metal-5254000d15c0', environment: 'metal', boot: expect.objectContaining({ macs: [MAC], uuid: UUID, bootenv: 'discovery' }) }));
    expect(first.body.machine.facts.system).toEqual({ vendor: 'QEMU', product: 'Standard PC', serial: 'S-1' });
    // Classified as it registered: the first rule that holds gives it its pipeline, and says why.
    expect(first.body.classification).toEqual(expect.objectContaining({ rule: expect.objectContaining({ name: 'qemu-vms', pack: 'disco' }) }));
    expect(first.body.classification.reasons.join(' ')).toContain('system.vendor');
    expect(first.body.machine.pipeline).toBe('burn-in');
    const plan = await ep.cli(['plan', 'metal-5254000d15c0']);
    expect(plan.stdout).toContain('qemu-vms');
    const id = first.body.machine.id as string;
    expect((await ep.call('GET', `/machines/${id}`, undefined, first.body.token)).status).toBe(200);

    // The machine now boots as itself, into discovery: its script still carries a credential.
    const again = await ep.call('POST', '/join', { facts: facts() }, await scriptToken(MAC));
    expect(again.status, JSON.stringify(again.body)).toBe(201);
    expect(again.body).toEqual(expect.objectContaining({ rejoined: true, machine: expect.objectContaining({ id }) }));
    expect((await ep.call('GET', `/machines/${id}`, undefined, first.body.token)).status).toBe(401);
    expect((await ep.call('GET', `/machines/${id}`, undefined, again.body.token)).status).toBe(200);
    // Who registered it is in its history.
    const hist = await ep.cli(['history', '-o', 'json']);
    expect(hist.stdout).toContain('discovery:52:54:00:0d:15:c0');
  });

  it('a machine made ahead (an operator\'s --mac, the qemu broker) registers for the first time: not "again"', async () => {
    const mac = '52:54:00:0d:15:d1';
    const c = await ep.cli(['machines', 'create', 'ahead-1', '--environment', 'metal', '--mac', mac, '--bootenv', 'discovery']);
    expect(c.code, c.stderr).toBe(0);
    const token = await scriptToken(mac);
    const first = await ep.call('POST', '/join', { facts: facts({ macs: [mac], productUuid: null }) }, token);
    expect(first.status, JSON.stringify(first.body)).toBe(201);
    expect(first.body).toEqual(expect.objectContaining({ rejoined: false, machine: expect.objectContaining({ name: 'ahead-1' }) }));
    const again = await ep.call('POST', '/join', { facts: facts({ macs: [mac], productUuid: null }) }, await scriptToken(mac));
    expect(again.body).toEqual(expect.objectContaining({ rejoined: true, machine: expect.objectContaining({ name: 'ahead-1' }) }));
  });

  it('is refused for another host, for any other route, for a machine in service, and when forged', async () => {
    const token = await scriptToken(MAC);
    const other = await ep.call('POST', '/join', { facts: facts({ macs: ['52:54:00:0d:15:c9'] }) }, token);
    expect(other.status).toBe(403);
    expect(other.body.error.message).toContain('issued to the machine booting from 52:54:00:0d:15:c0');

    for (const [method, path] of [['GET', '/machines'], ['GET', '/join-tokens'], ['POST', '/join-tokens']] as const) {
      const r = await ep.call(method, path, method === 'POST' ? {} : undefined, token);
      expect(r.status, `${method} ${path}`).toBe(403);
      expect(r.body.error.message).toContain('a discovery credential can only register the machine it was issued to');
    }

    const forged = await ep.call('POST', '/join', { facts: facts() }, token.replace(/.$/, (c) => (c === '0' ? '1' : '0')));
    expect(forged.status).toBe(401);
    expect(forged.body.error.message).toContain('discovery credential not accepted');

    // In service (it boots another bootenv): the script has no credential, and an old one cannot take it over.
    const upd = await ep.cli(['machines', 'update', 'metal-5254000d15c0', '--bootenv', 'installed']);
    expect(upd.code, upd.stderr).toBe(0);
    expect(await scriptToken(MAC)).toBe('');
    const taken = await ep.call('POST', '/join', { facts: facts() }, token);
    expect(taken.status).toBe(409);
    expect(taken.body.error.message).toContain("boots 'installed', not discovery: a discovery credential never takes over a machine in service");
  });
});
