import { describe, expect, it } from 'vitest';
import { detectFormat, parseImageRef, SNIFF_BYTES } from '../src/model/image.js';
import { humanBytes } from '../src/cli/images.js';

const bytes = (n: number, set: Array<[number, number[] | string]> = []) => {
  const b = Buffer.alloc(n);
  for (const [at, v] of set) (typeof v === 'string' ? Buffer.from(v, 'latin1') : Buffer.from(v)).copy(b, at);
  return b;
};

describe('detectFormat: what the first bytes say', () => {
  it.each([
    ['qcow2 magic', bytes(SNIFF_BYTES, [[0, [0x51, 0x46, 0x49, 0xfb]]]), { format: 'qcow2', partitionTable: null }],
    ['ustar at 257', bytes(SNIFF_BYTES, [[257, 'ustar']]), { format: 'tar', partitionTable: null }],
    ['GPT: EFI PART at LBA 1 (with its protective MBR)', bytes(SNIFF_BYTES, [[510, [0x55, 0xaa]], [512, 'EFI PART']]), { format: 'raw', partitionTable: 'gpt' }],
    ['MBR: 55 AA at 510', bytes(SNIFF_BYTES, [[510, [0x55, 0xaa]]]), { format: 'raw', partitionTable: 'mbr' }],
    ['zeros: a raw disk without a table', bytes(SNIFF_BYTES), { format: 'raw', partitionTable: null }],
    ['a blob shorter than a sector', bytes(100), { format: 'raw', partitionTable: null }],
    ['55 AA one byte off is no MBR', bytes(SNIFF_BYTES, [[509, [0x55, 0xaa]]]), { format: 'raw', partitionTable: null }],
    ['empty', bytes(0), { format: 'raw', partitionTable: null }],
  ])('%s', (_label, head, expected) => {
    expect(detectFormat(head)).toEqual(expected);
  });
});

describe('parseImageRef', () => {
  it.each([
    ['debian-min@1.0.0', { name: 'debian-min', version: '1.0.0' }],
    ['a.b_c@2.3.4-rc.1', { name: 'a.b_c', version: '2.3.4-rc.1' }],
  ])('%s', (ref, expected) => expect(parseImageRef(ref)).toEqual(expected));

  it.each([
    ['debian-min', /not an image reference: give NAME@VERSION/],
    ['@1.0.0', /not an image reference/],
    ['Debian@1.0.0', /image name 'Debian' is not valid/],
    ['debian@1.0', /image version '1.0' is not a semantic version/],
    ['debian@v1.0.0', /image version 'v1.0.0' is not a semantic version/],
  ])('%s is refused', (ref, message) => expect(() => parseImageRef(ref)).toThrow(message));
});

describe('humanBytes', () => {
  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [1024, '1.0 KiB'],
    [3.5 * 2 ** 20, '3.5 MiB'],
    [2 ** 30, '1.0 GiB'],
  ])('%d → %s', (n, s) => expect(humanBytes(n)).toBe(s));
});
