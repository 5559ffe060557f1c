/**
 * Images: immutable, versioned disk or file-system artifacts (`name@version`) that machines are deployed
 * from (issue #14). A version's bytes never change once it is in the catalog: its sha256 is its identity,
 * and the endpoint keeps the bytes under that digest (engine/images.ts). Pure: parsing and the format of
 * a blob from its first bytes, table-tested without an endpoint.
 */
import semver from 'semver';
import { NAME_PATTERN } from './content-names.js';
import { TaktError } from './errors.js';

/** raw: a whole disk, byte for byte; qcow2: QEMU's copy-on-write disk format; tar: a root file system. */
export const IMAGE_FORMATS = ['raw', 'qcow2', 'tar'] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];

/** The partition table a raw disk image starts with, read from its first sectors; null when none is found. */
export type PartitionTable = 'gpt' | 'mbr' | null;

/** Where an image came from: imported by a person, or built by a pipeline's job (`takt-image publish`). */
export type ImageProvenance = ImportProvenance | BuildProvenance;

export interface ImportProvenance {
  kind: 'import';
  /** Who imported it (the change author: `admin`, `user:alice`). */
  by: string;
  /** The file name the client sent it from, when it said (no directories). */
  file: string | null;
}

/**
 * An image a job built and published: which machine, job, task and pack made it, and the recipe — the
 * task definition's hash and the params it ran with (secure values masked) — whose digest is the same
 * for two builds with the same inputs, even where the bytes differ (file systems record build times).
 */
export interface BuildProvenance {
  kind: 'build';
  /** `machine:<id>`: the machine token that published it. */
  by: string;
  machine: { id: string; name: string };
  job: string;
  pipeline: string | null;
  stage: string | null;
  task: string;
  /** `name@version` of the pack the task came from (`local` for a local task). */
  pack: string | null;
  /** The file name on the builder, when it said (no directories). */
  file: string | null;
  recipe: {
    /** Content hash of the task definition that ran. */
    taskSha256: string | null;
    /** The params the task ran with, by name (secure values masked, as the job shows them). */
    params: Record<string, unknown>;
  };
  /** SHA-256 (hex) of the recipe's canonical JSON: equal for builds from equal inputs. */
  recipeSha256: string;
}

export interface Image {
  name: string;
  /** Semantic version (semver.org 2.0.0), like a pack's. */
  version: string;
  /** Lower-case hex SHA-256 of the bytes: the identity a deploying machine checks. */
  sha256: string;
  /** Bytes. */
  size: number;
  format: ImageFormat;
  /** raw images: the partition table found at the start; null for other formats or a bare file system. */
  partitionTable: PartitionTable;
  description: string | null;
  provenance: ImageProvenance;
  createdAt: string;
}

/** Bytes `detectFormat` needs: the qcow2 header, an MBR's signature, a GPT header and a tar header. */
export const SNIFF_BYTES = 1024;

/**
 * What the first bytes of a blob say it is: `QFI\xfb` is qcow2 (QEMU docs, qcow2.txt "Header"); `ustar` at
 * offset 257 is a POSIX tar (POSIX.1-2001 pax/ustar header, `magic` field); anything else is a raw disk.
 * For raw: `EFI PART` at LBA 1 (offset 512) is a GPT (UEFI 2.10 §5.3.2), else `55 AA` at 510 an MBR.
 * @param head the first `SNIFF_BYTES` bytes (fewer for a smaller blob).
 */
export function detectFormat(head: Uint8Array): { format: ImageFormat; partitionTable: PartitionTable } {
  const b = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
  if (b.length >= 4 && b[0] === 0x51 && b[1] === 0x46 && b[2] === 0x49 && b[3] === 0xfb) return { format: 'qcow2', partitionTable: null };
  if (b.length >= 262 && b.toString('latin1', 257, 262) === 'ustar') return { format: 'tar', partitionTable: null };
  if (b.length >= 520 && b.toString('latin1', 512, 520) === 'EFI PART') return { format: 'raw', partitionTable: 'gpt' };
  if (b.length >= 512 && b[510] === 0x55 && b[511] === 0xaa) return { format: 'raw', partitionTable: 'mbr' };
  return { format: 'raw', partitionTable: null };
}

/**
 * `debian-min@1.2.0` → its name and version.
 * @throws TaktError invalid naming the part that is wrong and the form expected.
 */
export function parseImageRef(ref: string): { name: string; version: string } {
  const at = ref.lastIndexOf('@');
  if (at <= 0) throw new TaktError('invalid', `'${ref}' is not an image reference: give NAME@VERSION, e.g. debian-min@1.0.0`);
  const name = ref.slice(0, at);
  const version = ref.slice(at + 1);
  checkImageName(name);
  checkImageVersion(version);
  return { name, version };
}

/** @throws TaktError invalid when `name` is not a lower-case name (letters, digits, `.`, `_`, `-`; 63 at most). */
export function checkImageName(name: string): void {
  if (!new RegExp(NAME_PATTERN).test(name)) throw new TaktError('invalid', `image name '${name}' is not valid: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, 63 at most`, { path: '/name' });
}

/** @throws TaktError invalid when `version` is not a semantic version such as 1.0.0. */
export function checkImageVersion(version: string): void {
  if (semver.valid(version) !== version) throw new TaktError('invalid', `image version '${version}' is not a semantic version such as 1.0.0`, { path: '/version' });
}

/** An image's digest as the catalog keeps it: 64 lower-case hex digits. */
export const SHA256_HEX = /^[0-9a-f]{64}$/;

/** @throws TaktError invalid (path `/sha256`) when `sha256` is not 64 lower-case hex digits. */
export function checkImageSha256(sha256: string): void {
  if (!SHA256_HEX.test(sha256)) throw new TaktError('invalid', `sha256 must be 64 lower-case hex digits (got '${sha256.length > 80 ? `${sha256.slice(0, 80)}…` : sha256}')`, { path: '/sha256' });
}

/** The refusal of an import of a version the catalog has: the endpoint's 409, and a client's early word on it. */
export function imageExists(ref: string): TaktError {
  return new TaktError('conflict', `image ${ref} exists; versions are immutable: import it as a new version`);
}

/** `name@version`, as people read and type it. */
export function imageRef(i: Pick<Image, 'name' | 'version'>): string {
  return `${i.name}@${i.version}`;
}

/**
 * Where a job that wrote an image keeps what it wrote (protocol.ts ImageWritten): in the job's outputs
 * under this name, which no task output can have (output names are lower-case words without dots). It is
 * the job's own record, never copied into the machine's outputs; build records read it (engine/records.ts).
 */
export const IMAGE_JOB_OUTPUT = 'takt.image';

/** What a job recorded about the image it wrote. */
export interface JobImage {
  name: string;
  version: string;
  sha256: string;
  size: number;
  target: string;
}

/** The image a job wrote, from its outputs; undefined when it wrote none. */
export function jobImage(outputs: Record<string, unknown>): JobImage | undefined {
  const v = outputs[IMAGE_JOB_OUTPUT] as Partial<JobImage> | undefined;
  if (!v || typeof v !== 'object' || typeof v.name !== 'string' || typeof v.version !== 'string' || typeof v.sha256 !== 'string') return undefined;
  return v as JobImage;
}
