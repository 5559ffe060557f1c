/**
 * A deployed OS joins as the machine its disk was deployed to (issue #14: "identity by SMBIOS UUID/MAC,
 * token delivered at deploy, never reused"). The join block's codec as tables and a bounded fuzz; then a
 * real endpoint over TLS, the deploying side (`deliverJoinBlock`, with the machine's token) writing the
 * block into a disk file after an "image", and the real CLI `takt agent deployed` registering from it: the
 * machine gets a new token, the old one stops working, the block is zeroed (the disk beyond the image is
 * zero again), and neither the block nor its token works a second time. The same with a real VM's disk is
 * test/provision-image-deploy.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deliverJoinBlock, readJoinBlock, wholeDisks, writeJoinBlock } from '../src/agent/deployed.js';
import { ApiClient } from '../src/client/http.js';
import { TaktError } from '../src/model/errors.js';
import { decodeJoinBlock, encodeJoinBlock, JOIN_BLOCK_SIZE, joinBlockOffset, type JoinBlock } from '../src/model/joinblock.js';
import { Endpoint, runCli, TAKT } from './helpers/endpoint.js';

const BLOCK: JoinBlock = { api: 'https://10.0.0.1:8443', ca: 'AB:'.repeat(31) + 'AB', token: 'tkj.jt-0123456789.secretsecretsecretsecret', machine: 'm-abc' };

describe('where the deployed OS looks for its join block', () => {
  it('every whole disk, none of the devices whose end is not a deployed disk\'s', async () => {
    const sys = mkdtempSync(join(tmpdir(), 'takt-sysblock-'));
    try {
      const all = ['vda', 'sda', 'nvme0n1', 'mmcblk0', 'xvda', 'loop0', 'ram0', 'zram0', 'sr0', 'fd0', 'dm-0', 'md127'];
      for (const n of all) mkdirSync(join(sys, n));
      expect(await wholeDisks(sys)).toEqual(['/dev/mmcblk0', '/dev/nvme0n1', '/dev/sda', '/dev/vda', '/dev/xvda']);
      expect(await wholeDisks(join(sys, 'absent'))).toEqual([]);
    } finally {
      rmSync(sys, { recursive: true, force: true });
    }
  });
});

describe('join block codec', () => {
  it('round-trips, and a disk without one reads as none', () => {
    const b = encodeJoinBlock(BLOCK);
    expect(b.length).toBe(JOIN_BLOCK_SIZE);
    expect(decodeJoinBlock(b)).toEqual(BLOCK);
    expect(decodeJoinBlock(Buffer.alloc(JOIN_BLOCK_SIZE))).toBeNull();
    expect(decodeJoinBlock(Buffer.alloc(10))).toBeNull();
  });

  const damaged: Array<[string, (b: Buffer) => void, RegExp]> = [
    ['another version', (b) => b.writeUInt8(2, 8), /version 2/],
    ['a zero length', (b) => b.writeUInt32BE(0, 12), /length 0 is out of range/],
    ['a length past the block', (b) => b.writeUInt32BE(JOIN_BLOCK_SIZE, 12), /out of range/],
    ['a flipped payload byte', (b) => b.writeUInt8(b.readUInt8(60) ^ 1, 60), /checksum does not match/],
    ['a flipped checksum byte', (b) => b.writeUInt8(b.readUInt8(20) ^ 1, 20), /checksum does not match/],
  ];
  it.each(damaged)('refuses a block with %s', (_what, damage, message) => {
    const b = encodeJoinBlock(BLOCK);
    damage(b);
    expect(() => decodeJoinBlock(b)).toThrow(message);
  });

  it.each([
    ['a missing field', { ...BLOCK, token: '' }, /token is missing/],
    ['a payload too large', { ...BLOCK, token: 'x'.repeat(JOIN_BLOCK_SIZE) }, /more than 4048/],
  ])('refuses to encode %s', (_what, b, message) => {
    expect(() => encodeJoinBlock(b)).toThrow(message);
  });

  it.each([
    // disk bytes, image bytes → offset or error
    [8192, 0, 4096],
    [1 << 20, (1 << 20) - 4096, (1 << 20) - 4096],
    [1 << 20, (1 << 20) - 4095, null],
    [4095, 0, null],
  ])('a %d-byte disk with a %d-byte image: block at %s', (disk, image, offset) => {
    if (offset === null) expect(() => joinBlockOffset(disk, image)).toThrow(/cannot hold the image/);
    else expect(joinBlockOffset(disk, image)).toBe(offset);
  });

  it('decodes any 4 KiB to a block, to none, or to a clear refusal (fuzz, fixed seed)', () => {
    const valid = encodeJoinBlock(BLOCK);
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: JOIN_BLOCK_SIZE }), fc.array(fc.tuple(fc.nat(JOIN_BLOCK_SIZE - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }), (random, flips) => {
          for (const input of [Buffer.from(random), Buffer.from(valid)]) {
            for (const [i, v] of flips) if (i < input.length) input[i] = v;
            try {
              const r = decodeJoinBlock(input);
              if (r) for (const k of ['api', 'ca', 'token', 'machine'] as const) expect(typeof r[k]).toBe('string');
            } catch (err) {
              expect(err).toBeInstanceOf(TaktError);
              expect((err as TaktError).code).toBe('bad_request');
            }
          }
        }),
      { numRuns: 2000, seed: 20261201 },
    );
  });
});

/** This host's first MAC, as `takt agent facts` reports it (the deployed OS's identity in this test). */
function hostMac(): string | null {
  const facts = JSON.parse(execFileSync(process.execPath, [TAKT, 'agent', 'facts'], { encoding: 'utf8' })) as { macs: string[] };
  return facts.macs[0] ?? null;
}

const MAC = hostMac();

describe.skipIf(MAC === null)('a deployed OS joins with its disk\'s join block', () => {
  let ep: Endpoint;
  let dir: string;
  let api: string;
  const IMAGE = Buffer.alloc(64 * 1024, 0x5a);
  const DISK = 256 * 1024;

  /** A machine booting from `mac`, and a token for it (what its deploying agent holds). */
  const machine = async (name: string, mac: string) => {
    await ep.cli(['machines', 'create', name, '--environment', 'metal', '--mac', mac]);
    const r = await ep.api.post<{ machine: { id: string }; token: string }>(`/machines/${name}/token`, {});
    return { id: r.machine.id, token: r.token, client: new ApiClient({ endpoint: ep.url, token: r.token }) };
  };
  /** A disk file holding IMAGE and zeros after it. */
  const disk = (name: string) => {
    const path = join(dir, name);
    writeFileSync(path, Buffer.concat([IMAGE, Buffer.alloc(DISK - IMAGE.length)]));
    return path;
  };
  const deployed = (home: string, device: string) => runCli(['agent', '--dir', home, 'deployed', '--device', device, '--wait', '5', '-o', 'json']);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'takt-deployjoin-'));
    ep = await Endpoint.start({ listen: ['0.0.0.0:0'] });
    api = `https://127.0.0.1:${new URL(ep.httpsUrl).port}`;
  });
  afterAll(async () => {
    await ep?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('registers as the machine, with a new token; the old one stops working; the block is zeroed and never works again', async () => {
    const m = await machine('vm-1', MAC!);
    const device = disk('vm-1.disk');
    const d = await deliverJoinBlock(m.client, m.id, api, device, IMAGE.length);
    expect(d.joinToken).toMatch(/^jt-/);
    const block = await readJoinBlock(device);
    expect(block).toMatchObject({ api, machine: m.id });
    expect(block!.ca).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    const copy = readFileSync(device);

    const home = join(dir, 'home-1');
    const r = await deployed(home, device);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ api, device, machine: { id: m.id, name: 'vm-1' }, rejoined: true });
    expect(r.stderr).toContain('joined as machine vm-1');

    // The new token works; the token the machine was deployed with does not.
    const token = readFileSync(join(home, 'token'), 'utf8').trim();
    expect(token).not.toBe(m.token);
    expect((await new ApiClient({ endpoint: ep.url, token }).get<{ name: string }>(`/machines/${m.id}`)).name).toBe('vm-1');
    await expect(m.client.get(`/machines/${m.id}`)).rejects.toMatchObject({ status: 401 });

    // The disk is the image and zeros again.
    expect(readFileSync(device).equals(Buffer.concat([IMAGE, Buffer.alloc(DISK - IMAGE.length)]))).toBe(true);
    const again = await deployed(join(dir, 'home-1b'), device);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/no join block on .*vm-1\.disk.*has joined already/);

    // The same block copied back (a disk image taken before the first boot): its token was used.
    writeFileSync(device, copy);
    const replay = await deployed(join(dir, 'home-1c'), device);
    expect(replay.code).not.toBe(0);
    expect(replay.stderr).toMatch(/join token jt-\w+ .*used/i);
    const t = await ep.api.get<{ state: string; machine: string; machines: string[] }>(`/join-tokens/${d.joinToken}`);
    expect(t).toMatchObject({ state: 'used', machine: m.id, machines: [m.id] });
  });

  it("refuses a disk moved to another machine, another machine's token, and a disk too small, without making a token", async () => {
    const other = await machine('vm-2', '52:54:00:aa:bb:02');
    const device = disk('vm-2.disk');
    await deliverJoinBlock(other.client, other.id, api, device, IMAGE.length);
    // This host is not vm-2 (its MAC is not vm-2's): the disk was moved.
    const r = await deployed(join(dir, 'home-2'), device);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/made for machine 'vm-2' \(MACs 52:54:00:aa:bb:02\).*was the disk moved to another machine/);
    expect(await readJoinBlock(device)).not.toBeNull(); // kept: nothing joined

    const vm3 = await machine('vm-3', '52:54:00:aa:bb:03');
    await expect(vm3.client.post(`/machines/${other.id}/deploy-token`, { url: api })).rejects.toMatchObject({ status: 403 });

    const before = (await ep.api.get<{ items: unknown[] }>('/join-tokens')).items.length;
    await expect(deliverJoinBlock(vm3.client, vm3.id, api, disk('vm-3.disk'), DISK)).rejects.toThrow(/cannot hold the image \(262144 bytes\) and takt's 4096-byte join block/);
    expect((await ep.api.get<{ items: unknown[] }>('/join-tokens')).items.length).toBe(before);
    await expect(writeJoinBlock(join(dir, 'nonesuch'), BLOCK, 0)).rejects.toThrow(/no such device or file/);
    expect(existsSync(join(dir, 'nonesuch'))).toBe(false);
  });
});
