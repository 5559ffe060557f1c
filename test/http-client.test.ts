/**
 * The JSON client over node:http against a plain local server: answers, error mapping, network failures,
 * deadlines, the caller's abort, keep-alive reuse and the one retry on a stale keep-alive socket.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ApiClient, NetworkError } from '../src/client/http.js';
import { TaktError } from '../src/model/errors.js';

type Handler = (req: IncomingMessage, res: ServerResponse, body: string) => void;

interface Local {
  server: Server;
  url: string;
  sockets: Set<Socket>;
  requests: Array<{ method: string; url: string; headers: IncomingMessage['headers']; body: string }>;
}

const open: Local[] = [];
const clients: ApiClient[] = [];

async function serve(handler: Handler): Promise<Local> {
  const sockets = new Set<Socket>();
  const requests: Local['requests'] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', () => {
      requests.push({ method: req.method!, url: req.url!, headers: req.headers, body });
      handler(req, res, body);
    });
  });
  server.on('connection', (s: Socket) => sockets.add(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const local = { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, sockets, requests };
  open.push(local);
  return local;
}

function client(url: string, extra: Partial<ConstructorParameters<typeof ApiClient>[0]> = {}): ApiClient {
  const c = new ApiClient({ endpoint: url, token: 't0k', ...extra });
  clients.push(c);
  return c;
}

const json = (res: ServerResponse, status: number, body: unknown) => {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
};

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  for (const l of open.splice(0)) {
    l.server.closeAllConnections();
    await new Promise((r) => l.server.close(r));
  }
});

describe('ApiClient JSON requests over node:http', () => {
  it('round-trips JSON with the token, the query and a content-type only when a body is sent', async () => {
    const l = await serve((req, res, body) => json(res, 200, { method: req.method, got: body ? JSON.parse(body) : null }));
    const c = client(l.url + '/');
    expect(await c.post('/things', { a: 1, s: 'ä' }, { query: { x: 'y z', skip: undefined, n: 2 } })).toEqual({ method: 'POST', got: { a: 1, s: 'ä' } });
    expect(await c.get('/things/1', { q: true })).toEqual({ method: 'GET', got: null });
    expect(await c.delete('/things/1')).toEqual({ method: 'DELETE', got: null });
    const [post, get, del] = l.requests;
    expect(post!.url).toBe('/api/v1/things?x=y+z&n=2');
    expect(post!.headers.authorization).toBe('Bearer t0k');
    expect(post!.headers['content-type']).toBe('application/json');
    expect(post!.headers['content-length']).toBe(String(Buffer.byteLength('{"a":1,"s":"ä"}')));
    expect(get!.url).toBe('/api/v1/things/1?q=true');
    expect(get!.headers['content-type']).toBeUndefined();
    expect(del!.headers['content-type']).toBeUndefined();
    expect(await c.post('/api/other')).toMatchObject({ got: {} });
    expect(l.requests[3]!.url).toBe('/api/other');
  });

  it('answers 204 and empty bodies with undefined; a 2xx body that is not JSON is an internal error', async () => {
    const l = await serve((req, res) => {
      if (req.url!.endsWith('/none')) res.writeHead(204).end();
      else if (req.url!.endsWith('/empty')) res.writeHead(200).end();
      else res.writeHead(200, { 'content-type': 'text/plain' }).end('hello');
    });
    const c = client(l.url);
    expect(await c.post('/none', {})).toBeUndefined();
    expect(await c.get('/empty')).toBeUndefined();
    const err = await c.get('/text').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TaktError);
    expect(err).toMatchObject({ code: 'internal', message: expect.stringContaining('not JSON: hello') });
  });

  it('turns the API error body into that TaktError, and maps plain error answers by status', async () => {
    const l = await serve((req, res) => {
      if (req.url!.endsWith('/api-error')) json(res, 422, { error: { code: 'invalid', message: 'bad name', path: 'name', details: { hint: 1 } } });
      else if (req.url!.endsWith('/plain500')) res.writeHead(500, { 'content-type': 'text/plain' }).end('boom');
      else if (req.url!.endsWith('/401')) res.writeHead(401).end();
      else if (req.url!.endsWith('/404')) res.writeHead(404).end('nope');
      else res.writeHead(418).end();
    });
    const c = client(l.url);
    const e1 = (await c.put('/api-error', { name: '' }).catch((e: unknown) => e)) as TaktError;
    expect(e1).toBeInstanceOf(TaktError);
    expect(e1).toMatchObject({ code: 'invalid', message: 'bad name', path: 'name', details: { hint: 1 } });
    const e2 = (await c.get('/plain500').catch((e: unknown) => e)) as TaktError;
    expect(e2).toMatchObject({ code: 'unavailable', message: 'endpoint answered 500: boom' });
    await expect(c.get('/401')).rejects.toMatchObject({ code: 'unauthorized', message: 'endpoint answered 401' });
    await expect(c.get('/404')).rejects.toMatchObject({ code: 'not_found' });
    await expect(c.patch('/teapot', {})).rejects.toMatchObject({ code: 'bad_request' });
  });

  it('a refused connection is a NetworkError naming the endpoint', async () => {
    const l = await serve(() => {});
    const url = l.url;
    await new Promise((r) => l.server.close(r));
    open.splice(open.indexOf(l), 1);
    const err = await client(url).get('/health').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NetworkError);
    expect((err as Error).message).toMatch(new RegExp(`^cannot reach ${url}: .*ECONNREFUSED`));
  });

  it('a server that never answers is a NetworkError after timeoutMs', async () => {
    const l = await serve(() => {});
    const c = client(l.url, { timeoutMs: 200 });
    const t0 = Date.now();
    const err = await c.post('/claim', {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NetworkError);
    expect((err as Error).message).toMatch(/timeout/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
    expect(Date.now() - t0).toBeLessThan(2000);
    // The per-request timeout wins over the client's.
    const t1 = Date.now();
    await expect(c.post('/claim', {}, { timeoutMs: 50 })).rejects.toBeInstanceOf(NetworkError);
    expect(Date.now() - t1).toBeLessThan(190);
  });

  it("the caller's abort rejects with an AbortError and leaves no listener behind", async () => {
    const l = await serve((req, res) => {
      if (req.url!.endsWith('/fast')) json(res, 200, { ok: true });
    });
    const c = client(l.url);
    const ac = new AbortController();
    let listeners = 0;
    const add = ac.signal.addEventListener.bind(ac.signal);
    const remove = ac.signal.removeEventListener.bind(ac.signal);
    ac.signal.addEventListener = ((...a: Parameters<typeof add>) => (listeners++, add(...a))) as typeof add;
    ac.signal.removeEventListener = ((...a: Parameters<typeof remove>) => (listeners--, remove(...a))) as typeof remove;
    expect(await c.post('/fast', {}, { signal: ac.signal })).toEqual({ ok: true });
    expect(listeners).toBe(0);
    const pending = c.post('/slow', {}, { signal: ac.signal });
    setTimeout(() => ac.abort(), 30);
    const err = await pending.catch((e: unknown) => e);
    expect(ac.signal.aborted).toBe(true);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).name).toBe('AbortError');
    expect(err).not.toBeInstanceOf(NetworkError);
    expect(listeners).toBe(0);
    // Already aborted: no request at all.
    const before = l.requests.length;
    await expect(c.get('/fast', undefined)).resolves.toEqual({ ok: true });
    await expect(c.post('/fast', {}, { signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' });
    expect(l.requests.length).toBe(before + 1);
  });

  it('keeps the connection alive: three sequential requests use one socket', async () => {
    const l = await serve((_req, res) => json(res, 200, {}));
    const c = client(l.url);
    for (let i = 0; i < 3; i++) await c.post('/x', { i });
    expect(l.requests.length).toBe(3);
    expect(l.sockets.size).toBe(1);
  });

  it('a server that closes idle keep-alive sockets: the next request still succeeds', async () => {
    const l = await serve((_req, res) => json(res, 200, { ok: true }));
    l.server.keepAliveTimeout = 1;
    const c = client(l.url);
    expect(await c.post('/x', {})).toEqual({ ok: true });
    await new Promise((r) => setTimeout(r, 50));
    expect(await c.post('/x', {})).toEqual({ ok: true });
  });

  it('retries once on a fresh socket when a reused socket dies before any answer, and only then', async () => {
    // The race a keep-alive client cannot avoid: the server drops the idle socket just as the request goes
    // out on it. Here the server drops every request that arrives second on its connection.
    const perSocket = new WeakMap<Socket, number>();
    const l = await serve((req, res) => {
      const n = (perSocket.get(req.socket) ?? 0) + 1;
      perSocket.set(req.socket, n);
      if (n === 2 || req.url!.endsWith('/always-drop')) req.socket.destroy();
      else json(res, 200, { n });
    });
    const c = client(l.url);
    expect(await c.post('/x', {})).toEqual({ n: 1 });
    expect(await c.post('/x', {})).toEqual({ n: 1 }); // dropped on the reused socket, answered on a fresh one
    expect(l.requests.length).toBe(3);
    expect(l.sockets.size).toBe(2);
    // A fresh socket that dies is a network failure, not retried.
    const fresh = client(l.url);
    const before = l.requests.length;
    await expect(fresh.post('/always-drop', {})).rejects.toBeInstanceOf(NetworkError);
    expect(l.requests.length).toBe(before + 1);
    // A reused socket that dies, and the fresh one too: one retry, then a NetworkError.
    const again = client(l.url);
    expect(await again.post('/x', {})).toEqual({ n: 1 });
    const before2 = l.requests.length;
    await expect(again.post('/always-drop', {})).rejects.toBeInstanceOf(NetworkError);
    expect(l.requests.length).toBe(before2 + 2);
  });

  it('does not retry when the answer had started on the reused socket', async () => {
    const perSocket = new WeakMap<Socket, number>();
    const l = await serve((req, res) => {
      const n = (perSocket.get(req.socket) ?? 0) + 1;
      perSocket.set(req.socket, n);
      if (n === 1) return json(res, 200, { n });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': 100 });
      res.write('{"partial":');
      setTimeout(() => req.socket.destroy(), 10);
    });
    const c = client(l.url);
    await c.post('/x', {});
    await expect(c.post('/x', {})).rejects.toBeInstanceOf(NetworkError);
    expect(l.requests.length).toBe(2);
  });

  it('does not retry when part of the status line had arrived on the reused socket', async () => {
    const perSocket = new WeakMap<Socket, number>();
    const l = await serve((req, res) => {
      const n = (perSocket.get(req.socket) ?? 0) + 1;
      perSocket.set(req.socket, n);
      if (n === 1) return json(res, 200, { n });
      req.socket.write('HTTP/1.1 200 O');
      setTimeout(() => req.socket.destroy(), 10);
    });
    const c = client(l.url);
    await c.post('/x', {});
    await expect(c.post('/x', {})).rejects.toBeInstanceOf(NetworkError);
    expect(l.requests.length).toBe(2);
  });

  it('a beforeRequest hook runs before each request and its NetworkError propagates', async () => {
    const l = await serve((_req, res) => json(res, 200, {}));
    let calls = 0;
    let offline = false;
    const c = client(l.url, {
      beforeRequest: async () => {
        calls++;
        if (offline) throw new NetworkError('chaos: connection dropped');
      },
    });
    await c.get('/x');
    offline = true;
    await expect(c.post('/x', {})).rejects.toThrow(new NetworkError('chaos: connection dropped'));
    expect(calls).toBe(2);
    expect(l.requests.length).toBe(1);
  });

  it('close() drops the keep-alive sockets; the client still works afterwards', async () => {
    const l = await serve((_req, res) => json(res, 200, {}));
    const c = client(l.url);
    await c.get('/x');
    c.close();
    await c.get('/x');
    expect(l.sockets.size).toBe(2);
  });
});
