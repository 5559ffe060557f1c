/**
 * The image catalog under /api/v1/images (engine/images.ts): list, get, import (PUT of the raw bytes as
 * `application/octet-stream`, streamed to disk, never held in memory), remove, and the bytes themselves
 * with HTTP Range (RFC 9110 §14) so a deploying machine can resume a broken download. Machine tokens may
 * read the bytes and records (a machine being deployed fetches its image); importing and removing need
 * `images:write` (admin, author).
 */
import send from '@fastify/send';
import type { FastifyInstance } from 'fastify';
import type { Readable } from 'node:stream';
import { buildProvenance } from '../../engine/images.js';
import { requestPath, TaktError } from '../../model/errors.js';
import { author, type ApiContext } from '../context.js';

type Params = { name: string; version: string };

/** Query of an import: what the client knows of the bytes it sends. */
const importQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    sha256: { type: 'string', description: 'the SHA-256 of the bytes (lower-case hex); different bytes are refused and nothing is kept' },
    description: { type: 'string', maxLength: 1024 },
    file: { type: 'string', maxLength: 255, description: 'the file name it came from (provenance)' },
    job: { type: 'string', maxLength: 64, description: "machine tokens only: the running job that built it (its provenance); takt-image publish sends it" },
  },
} as const;

/** A byte ranges-specifier (RFC 9110 §14.1.1, §14.1.2): `bytes=` and int-range or suffix-range items, comma-separated. */
const RANGE_SYNTAX = /^bytes=\s*(\d+-\d*|-\d+)(\s*,\s*(\d+-\d*|-\d+))*\s*$/i;

export async function imageRoutes(app: FastifyInstance, ctx: ApiContext) {
  const images = () => {
    if (!ctx.images) throw new TaktError('not_found', 'this endpoint keeps no images');
    return ctx.images;
  };
  const adminOnly = (req: { principal: { kind: string } }) => {
    if (req.principal.kind === 'machine') throw new TaktError('forbidden', 'a machine token can only read images');
  };

  app.get('/api/v1/images', { config: { machine: true, permission: 'images:read' } }, async (req) => ({ items: await images().list((req.query as { name?: string }).name) }));
  app.get('/api/v1/images/:name/:version', { config: { machine: true, permission: 'images:read' } }, async (req) => {
    const p = req.params as Params;
    return images().get(p.name, p.version);
  });

  // The bytes go as they are: an encapsulated scope whose parser hands the request stream to the route.
  await app.register(async (scope) => {
    scope.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));
    scope.put('/api/v1/images/:name/:version', { config: { permission: 'images:write', machine: true }, schema: { querystring: importQuery } }, async (req, reply) => {
      const p = req.params as Params;
      const q = req.query as { sha256?: string; description?: string; file?: string; job?: string };
      // A machine publishes only what its running job built (takt-image publish), with that job as provenance.
      const principal = req.principal;
      if (principal.kind !== 'machine' && q.job !== undefined) throw new TaktError('bad_request', 'job is for machine tokens publishing what their job built; an import by a person has no job');
      if (principal.kind === 'machine' && q.job === undefined) throw new TaktError('forbidden', 'a machine token publishes images only from a running job (takt-image publish NAME@VERSION FILE in a task)');
      const build = principal.kind === 'machine' ? await buildProvenance(ctx.store, principal.machineId, q.job!) : undefined;
      if (typeof (req.body as Readable | undefined)?.pipe !== 'function') throw new TaktError('bad_request', 'send the image bytes as Content-Type: application/octet-stream (takt images import does)');
      const length = req.headers['content-length'];
      const image = await images().import(
        { name: p.name, version: p.version, ...(build ? { build } : {}), ...(q.sha256 !== undefined ? { sha256: q.sha256 } : {}), ...(q.description !== undefined ? { description: q.description } : {}), ...(q.file !== undefined ? { file: q.file } : {}), ...(length !== undefined ? { size: Number(length) } : {}) },
        req.body as Readable,
        author(req),
      );
      reply.code(201);
      return image;
    });
  });

  app.delete('/api/v1/images/:name/:version', { config: { permission: 'images:write' } }, async (req) => {
    adminOnly(req);
    const p = req.params as Params;
    return images().remove(p.name, p.version, author(req));
  });

  // GET also answers HEAD (a client learns the size first). Ranges, ETag (the digest: the bytes never change).
  app.get('/api/v1/images/:name/:version/blob', { config: { machine: true, permission: 'images:read' } }, async (req, reply) => {
    const p = req.params as Params;
    const image = await images().get(p.name, p.version);
    const blob = images().blobPath(image);
    // 1 MiB reads: an image is read to its end, and per-chunk work (a callback, a socket write) is most of
    // what serving costs the endpoint (bench/images.ts: CPU per GB served).
    // RFC 9110 §14.2: a Range field that is not valid syntax is ignored (the whole image, 200); `send`
    // would answer 416 to `bytes=abc`, as if a valid range had missed the image.
    if (req.raw.headers.range !== undefined && !RANGE_SYNTAX.test(req.raw.headers.range)) delete req.raw.headers.range;
    const r = await send(req.raw, blob.path, { acceptRanges: true, cacheControl: false, etag: false, lastModified: false, dotfiles: 'allow', index: false, highWaterMark: 1 << 20 });
    if (r.type !== 'file') {
      if (r.statusCode === 416) {
        // RFC 9110 §15.5.17: say the length (Content-Range: bytes */N) with the refusal.
        const e = new TaktError('range_not_satisfiable', `the range asked for is outside image ${p.name}@${p.version} (${blob.size} bytes)`);
        return reply.code(416).headers({ 'content-range': `bytes */${blob.size}` }).send(e.toBody(requestPath(req.url)));
      }
      throw new TaktError('unavailable', `cannot serve image ${p.name}@${p.version}: ${r.type === 'error' ? r.metadata.error.message : 'not a file'}`);
    }
    reply.code(r.statusCode).headers({ ...r.headers, 'content-type': 'application/octet-stream', etag: `"sha256:${image.sha256}"`, 'x-image-sha256': image.sha256, 'content-disposition': `attachment; filename="${p.name}-${p.version}.${image.format === 'tar' ? 'tar' : image.format === 'qcow2' ? 'qcow2' : 'img'}"` });
    return reply.send(r.stream);
  });
}
