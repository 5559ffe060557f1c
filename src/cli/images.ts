/**
 * `takt images list|get|import|remove`: the image catalog (engine/images.ts). An import checks its
 * arguments, asks whether the version exists, hashes the file here, then streams it to the endpoint with
 * that digest, so the endpoint keeps the bytes only if what arrived is what was read; both passes show
 * their progress on stderr.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import { refuseExistingImage } from '../client/images.js';
import { TaktError } from '../model/errors.js';
import { checkImageSha256, imageRef, parseImageRef, type Image } from '../model/image.js';
import type { GlobalOptions } from './client.js';
import { examples } from './help.js';
import { print, renderTable, shown } from './output.js';
import { usage } from './usage.js';

const enc = encodeURIComponent;

/** Bytes as people read them: 512 B, 3.4 MiB, 1.2 GiB. */
export function humanBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(1)} ${units[u]}`;
}

const columns = [
  { header: 'IMAGE', get: (i: Image) => imageRef(i) },
  { header: 'FORMAT', get: (i: Image) => (i.partitionTable ? `${i.format} (${i.partitionTable})` : i.format) },
  { header: 'SIZE', get: (i: Image) => humanBytes(i.size) },
  { header: 'SHA256', get: (i: Image) => `${i.sha256.slice(0, 12)}…` },
  { header: 'FROM', get: (i: Image) => (i.provenance.kind === 'build' ? `build by ${i.provenance.machine.name}, job ${i.provenance.job} (${i.provenance.pack ?? 'local'} ${i.provenance.task})` : `import by ${i.provenance.by}${i.provenance.file ? ` (${i.provenance.file})` : ''}`), wide: true },
  { header: 'CREATED', get: (i: Image) => i.createdAt, wide: true },
  { header: 'DESCRIPTION', get: (i: Image) => i.description },
];

/** Writes `done of total` to stderr at most every 10 % (scripts read stdout; stderr tells the person waiting). */
function progress(what: string, total: number): (done: number) => void {
  let next = 0;
  return (done) => {
    const pct = total === 0 ? 100 : Math.floor((done / total) * 100);
    if (pct < next && done < total) return;
    next = pct + 10;
    process.stderr.write(`takt: ${what}: ${humanBytes(done)} of ${humanBytes(total)} (${pct}%)\n`);
  };
}

/** The SHA-256 of a file, read once as a stream (hex). */
async function fileSha256(path: string, size: number): Promise<string> {
  const hash = createHash('sha256');
  const tell = progress(`hashing ${basename(path)}`, size);
  let done = 0;
  for await (const chunk of createReadStream(path)) {
    hash.update(chunk as Buffer);
    done += (chunk as Buffer).length;
    tell(done);
  }
  return hash.digest('hex');
}

export function imageCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
  const cmd = program
    .command('images')
    .description('the image catalog: immutable name@version disk images machines are deployed from')
    .addHelpText('after', examples('takt images import debian-min@1.0.0 ./debian.img', 'takt images ls', 'takt images get debian-min@1.0.0 -o json'));
  cmd
    .command('list [name]')
    .description('image versions (of one name when given), newest version first')
    .addHelpText('after', examples('takt images ls', 'takt images ls debian-min -o wide'))
    .action(async (name: string | undefined) => {
      const r = await api().get<{ items: Image[] }>('/images', { name });
      print(g().output, r.items, () => renderTable(r.items, columns));
    });
  cmd
    .command('get <image>')
    .description('one image version: format, size, sha256 and where it came from')
    .addHelpText('after', examples('takt images get debian-min@1.0.0'))
    .action(async (ref: string) => {
      const { name, version } = usage(() => parseImageRef(ref));
      const i = await api().get<Image>(`/images/${enc(name)}/${enc(version)}`);
      print(g().output, i, () => `${renderTable([i], columns)}\nsha256 ${i.sha256}`);
    });
  cmd
    .command('import <image> <file>')
    .description('add a file (raw disk, qcow2 or tar) to the catalog as a new version; the endpoint checks its sha256')
    .addHelpText(
      'after',
      examples(
        'takt images import debian-min@1.0.0 ./debian.img --description "Debian 12, minimal"',
        'takt images import debian-min@1.0.1 ./debian.qcow2 --sha256 $(cut -d" " -f1 debian.qcow2.sha256)   # skip hashing here',
      ),
    )
    .option('--description <text>', 'what the image is, for people')
    .option('--sha256 <hex>', 'the digest you already have (else the file is hashed here first); different bytes are refused')
    .action(async (ref: string, file: string, o: { description?: string; sha256?: string }) => {
      // Every argument before anything is read or sent.
      const { name, version } = usage(() => parseImageRef(ref));
      const given = o.sha256?.toLowerCase();
      if (given !== undefined) usage(() => checkImageSha256(given));
      let size: number;
      try {
        const s = await stat(file);
        if (!s.isFile()) throw new TaktError('bad_request', `${file} is not a regular file`);
        size = s.size;
      } catch (err) {
        if (err instanceof TaktError) throw err;
        throw new TaktError('bad_request', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      // An existing version is refused before the file is hashed (minutes for a large one) or sent.
      const client = api();
      await refuseExistingImage(client, name, version);
      const sha256 = given ?? (await fileSha256(file, size));
      const tell = progress(`sending ${basename(file)}`, size);
      const image = await client.upload<Image>(
        'PUT',
        `/images/${enc(name)}/${enc(version)}`,
        () => {
          let sent = 0;
          const s = createReadStream(file);
          s.on('data', (c) => tell((sent += (c as Buffer).length)));
          return s;
        },
        size,
        // The whole upload is one request: an hour covers a few GB over a slow link.
        { query: { sha256, file: basename(file), ...(o.description !== undefined ? { description: o.description } : {}) }, timeoutMs: 3_600_000 },
      );
      print(g().output, image, () => `${renderTable([image], columns)}\n${shown(`imported ${imageRef(image)}: ${image.format}${image.partitionTable ? ` with a ${image.partitionTable.toUpperCase()} partition table` : ''}, ${humanBytes(image.size)}, sha256 ${image.sha256}`)}`);
    });
  cmd
    .command('remove <image>')
    .description('remove an image version from the catalog (its bytes go when no other version has them)')
    .addHelpText('after', examples('takt images rm debian-min@1.0.0'))
    .action(async (ref: string) => {
      const { name, version } = usage(() => parseImageRef(ref));
      const i = await api().delete<Image>(`/images/${enc(name)}/${enc(version)}`);
      print(g().output, i, () => shown(`removed ${imageRef(i)}`));
    });
}
