import type { FastifyInstance } from 'fastify';
import { CONTENT_KINDS, type ContentKind } from '../../model/content.js';
import { TaktError } from '../../model/errors.js';
import { author, intQuery, type ApiContext } from '../context.js';

export const PACK_BODY_LIMIT = 8 * 1024 * 1024;

export function contentRoutes(app: FastifyInstance, ctx: ApiContext) {
  const { content, store } = ctx;

  app.get('/api/v1/packs', { config: { permission: 'content:read' } }, async () => ({
    items: (await store.listPacks()).map(({ files, ...p }) => ({ ...p, files: Object.keys(files).length })),
  }));

  app.get('/api/v1/packs/versions', { config: { permission: 'content:read' } }, async (req) => ({ items: await store.listPackVersions((req.query as { name?: string }).name) }));

  app.get('/api/v1/packs/:name', { config: { permission: 'content:read' } }, async (req) => {
    const p = await store.getPack((req.params as { name: string }).name);
    if (!p) throw new TaktError('not_found', `pack '${(req.params as { name: string }).name}' is not in use`);
    return p;
  });

  app.get('/api/v1/packs/:name/versions/:version', { config: { permission: 'content:read' } }, async (req) => {
    const { name, version } = req.params as { name: string; version: string };
    const p = await store.getPackVersion(name, version);
    if (!p) throw new TaktError('not_found', `${name}@${version} is not installed`);
    return p;
  });

  // One installed version, removed (refused while in use or running); `?dryRun=true` only checks.
  app.delete(
    '/api/v1/packs/:name/versions/:version',
    { config: { permission: 'content:write' }, schema: { querystring: { type: 'object', additionalProperties: false, properties: { dryRun: { enum: ['true', 'false'] } } } } },
    async (req) => {
      const { name, version } = req.params as { name: string; version: string };
      return content.removeVersion(name, version, author(req), { dryRun: (req.query as { dryRun?: string }).dryRun === 'true' });
    },
  );

  app.get('/api/v1/packs/:name/diff', { config: { permission: 'content:read' } }, async (req) => {
    const q = req.query as { from?: string; to?: string };
    if (!q.from || !q.to) throw new TaktError('bad_request', "query parameters 'from' and 'to' (versions) are required", { path: q.from ? 'to' : 'from' });
    return content.diffPack((req.params as { name: string }).name, q.from, q.to);
  });

  app.post(
    '/api/v1/packs',
    {
      config: { permission: 'content:write' },
      bodyLimit: PACK_BODY_LIMIT,
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['files'],
          properties: {
            files: { type: 'object', additionalProperties: { type: 'string' }, description: 'relative path -> file text' },
            use: { type: 'boolean', description: 'run this version now (the first version of a pack always runs)' },
          },
        },
      },
    },
    async (req, reply) => {
      const body = req.body as { files: Record<string, string>; use?: boolean };
      const r = await content.installPack(body.files, author(req), { use: body.use });
      reply.code(r.installed ? 201 : 200);
      return r.active ? { ...r, unresumable: await ctx.engine.unresumable() } : r;
    },
  );

  app.post(
    '/api/v1/packs/:name/use',
    { config: { permission: 'content:write' }, schema: { body: { type: 'object', additionalProperties: false, required: ['version'], properties: { version: { type: 'string', minLength: 1 } } } } },
    // `unresumable`: stopped or paused machines a resume is refused for under the content now in use.
    async (req) => ({ ...(await content.usePack((req.params as { name: string }).name, (req.body as { version: string }).version, author(req))), unresumable: await ctx.engine.unresumable() }),
  );

  app.delete('/api/v1/packs/:name', { config: { permission: 'content:write' } }, async (req) => {
    await content.removePack((req.params as { name: string }).name, author(req));
    return { deleted: (req.params as { name: string }).name };
  });

  for (const kind of CONTENT_KINDS) contentKindRoutes(app, ctx, kind);
}

function contentKindRoutes(app: FastifyInstance, { content }: ApiContext, kind: ContentKind) {
  const base = `/api/v1/${kind}`;
  app.get(base, { config: { permission: 'content:read' } }, async (req) => {
    const q = req.query as Record<string, string | undefined>;
    let items = content.list(kind);
    if (q.layer) items = items.filter((i) => i.layer === q.layer);
    if (q.name) items = items.filter((i) => i.name.includes(q.name!));
    const offset = intQuery(q.offset, 'offset', 0)!;
    const limit = intQuery(q.limit, 'limit', 100, 1000)!;
    return { items: items.slice(offset, offset + limit).map((i) => ({ ...i.def, layer: i.layer })), total: items.length };
  });
  app.get(`${base}/:name`, { config: { permission: 'content:read' } }, async (req) => {
    const e = content.get(kind, (req.params as { name: string }).name);
    return { ...e.def, layer: e.layer };
  });
  // Bodies are validated by the content service against the same schema the linter uses, so a REST
  // write and a pack file get the same messages.
  app.post(base, { config: { permission: 'content:write' }, schema: { body: { type: 'object' } } }, async (req, reply) => {
    const e = await content.putLocal(kind, req.body, author(req), 'create');
    reply.code(201);
    return { ...e.def, layer: e.layer };
  });
  app.put(`${base}/:name`, { config: { permission: 'content:write' }, schema: { body: { type: 'object' } } }, async (req) => {
    const e = await content.putLocal(kind, req.body, author(req), 'update', (req.params as { name: string }).name);
    return { ...e.def, layer: e.layer };
  });
  app.delete(`${base}/:name`, { config: { permission: 'content:write' } }, async (req) => {
    await content.deleteLocal(kind, (req.params as { name: string }).name, author(req));
    return { deleted: (req.params as { name: string }).name };
  });
}
