/**
 * The boot HTTP service: what firmware and iPXE fetch while a machine boots — its per-machine iPXE
 * script and the bootenv's artifacts (kernel, initrds, images) — served plain, on the provisioning
 * address, apart from the API.
 *
 * Why plain HTTP and a separate listener: Debian's iPXE builds have no HTTPS (provisioning-facts.md,
 * trap 6), and booting firmware has no token to present. So this service serves only what a booting
 * machine may see: scripts that carry no secrets and files named by their sha256. Nothing here
 * reads or changes the endpoint's state beyond the resolver the endpoint gives it.
 *
 * Artifacts: GET and HEAD with Range (RFC 9110 §14), ETag and `Cache-Control: immutable`, through
 * @fastify/send (the library @fastify/static serves files with).
 */
import send from '@fastify/send';
import Fastify, { type FastifyInstance } from 'fastify';
import { requestPath, TaktError } from '../model/errors.js';
import type { ArtifactCache } from './artifacts.js';

/** What iPXE says about itself in the script URL: `?mac=${net0/mac}&uuid=${uuid}&platform=${platform}`. */
export interface BootQuery {
  /** Lower-case `aa:bb:cc:dd:ee:ff`. */
  mac: string;
  /** Lower-case SMBIOS UUID, or undefined when the firmware has none. */
  uuid?: string;
  /** iPXE's `${platform}`: `pcbios` or `efi`. */
  platform: 'pcbios' | 'efi';
  /** The client's address as this listener saw it. */
  remote: string;
}

/** Renders the script a booting machine gets (the engine's part: which machine, which bootenv). */
export type ScriptResolver = (q: BootQuery) => Promise<string>;

export interface BootHttpOptions {
  cache: ArtifactCache;
  script: ScriptResolver;
  /** Called for each request served, for the endpoint's log and the boot timeline. */
  onServe?: (e: { method: string; url: string; status: number; remote: string }) => void;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * Parses the script request's query. iPXE sends `${net0/mac}` as `52:54:00:12:34:56` and `${uuid}` as
 * the SMBIOS UUID (empty when the firmware has none); either may arrive upper-case or with dashes.
 * @throws TaktError('bad_request') naming the bad field.
 */
export function parseBootQuery(q: Record<string, unknown>, remote: string): BootQuery {
  const mac = typeof q.mac === 'string' ? q.mac.toLowerCase().replace(/-/g, ':') : '';
  if (!MAC.test(mac)) throw new TaktError('bad_request', `mac: expected a MAC address like 52:54:00:12:34:56 (got ${JSON.stringify(q.mac ?? null)})`, { path: '/mac' });
  const rawUuid = typeof q.uuid === 'string' ? q.uuid.toLowerCase() : '';
  if (rawUuid !== '' && !UUID.test(rawUuid)) throw new TaktError('bad_request', `uuid: expected an SMBIOS UUID like 8c6f5c56-0f3c-4b8e-9d1a-2f4e6b7a8c9d (got ${JSON.stringify(q.uuid)})`, { path: '/uuid' });
  // iPXE's ${platform} says pcbios or efi; the DHCP server's {firmware} (dhcp/classify.ts) bios, efi-x64, efi-ia32.
  const aliases: Record<string, 'pcbios' | 'efi'> = { pcbios: 'pcbios', bios: 'pcbios', efi: 'efi', 'efi-x64': 'efi', 'efi-ia32': 'efi' };
  const platform = q.platform === undefined ? 'pcbios' : typeof q.platform === 'string' && Object.hasOwn(aliases, q.platform) ? aliases[q.platform]! : q.platform;
  if (platform !== 'pcbios' && platform !== 'efi') throw new TaktError('bad_request', `platform: expected pcbios or efi (got ${JSON.stringify(platform)})`, { path: '/platform' });
  return { mac, ...(rawUuid ? { uuid: rawUuid } : {}), platform, remote };
}

/**
 * Builds the boot service's Fastify app (not listening: the caller listens on the provisioning address).
 * Every error leaves as the one JSON error shape (`path`: the field, else the request's path); an unknown
 * path is 404.
 */
export async function buildBootHttp(opts: BootHttpOptions): Promise<FastifyInstance> {
  const app = Fastify({ logger: false, bodyLimit: 1024, return503OnClosing: true });
  app.addHook('onResponse', async (req, reply) => {
    opts.onServe?.({ method: req.method, url: req.url, status: reply.statusCode, remote: req.ip });
  });
  app.setErrorHandler((err, req, reply) => {
    if (err instanceof TaktError && err.status < 500) return reply.code(err.status).send(err.toBody(requestPath(req.url)));
    return reply.code(500).send(new TaktError('internal', 'internal error; the endpoint log has the details').toBody(requestPath(req.url)));
  });
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send(new TaktError('not_found', `${req.method} ${requestPath(req.url)}: not a boot file or script`).toBody(requestPath(req.url)));
  });

  app.get('/boot/ipxe', async (req, reply) => {
    const q = parseBootQuery(req.query as Record<string, unknown>, req.ip);
    const script = await opts.script(q);
    // A script is per machine and per moment (its bootenv changes): never cached.
    reply.type('text/plain; charset=utf-8').header('cache-control', 'no-store');
    return script;
  });

  // GET also answers HEAD (Fastify's exposeHeadRoutes), which iPXE and curl use to learn a size.
  app.get('/boot/files/:sha256/:name', async (req, reply) => {
    const { sha256 } = req.params as { sha256: string; name: string };
    const kept = await opts.cache.get(sha256);
    if (!kept) throw new TaktError('not_found', `no boot file with sha256 ${sha256} is kept here: is its bootenv installed and fetched?`);
    const r = await send(req.raw, kept.path, {
      acceptRanges: true,
      cacheControl: true,
      immutable: true,
      maxAge: '365d',
      etag: true,
      lastModified: false,
      dotfiles: 'allow',
      index: false,
    });
    if (r.type !== 'file') {
      const status = r.statusCode >= 400 && r.statusCode < 500 ? r.statusCode : 500;
      if (status === 416) {
        // RFC 9110 §15.5.17: say the file's length (Content-Range: bytes */N) with the refusal.
        const e = new TaktError('range_not_satisfiable', `the range asked for is outside the file (${kept.size} bytes)`);
        return reply.code(416).headers({ 'content-range': `bytes */${kept.size}` }).send(e.toBody(requestPath(req.url)));
      }
      throw new TaktError(status === 404 ? 'not_found' : 'bad_request', `cannot serve ${sha256}: ${r.type === 'error' ? r.metadata.error.message : 'not a file'}`);
    }
    reply.code(r.statusCode).headers({ ...r.headers, 'content-type': 'application/octet-stream' });
    return reply.send(r.stream);
  });

  return app;
}
