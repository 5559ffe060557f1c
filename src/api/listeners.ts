/**
 * The endpoint's listening sockets. One API (one Fastify app) can be reached on several addresses: plain
 * HTTP on loopback for the local CLI, HTTPS everywhere else, and an HTTPS listener on the netns bridge for
 * the machines the endpoint starts itself. Every listener applies the same bounds (ServerLimits) and
 * answers parser-level errors in the one error shape.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { ServerLimits } from './server.js';
import type { TlsMaterial } from './tls.js';

export type RequestHandler = (req: IncomingMessage, res: ServerResponse) => void;

/** An address to listen on, and what it serves: plain HTTP (`tls` null) or HTTPS with the material `tls()` returns. */
export interface ListenSpec {
  host: string;
  /** 0 picks a free port. */
  port: number;
  tls: (() => TlsMaterial) | null;
}

export interface Listener {
  readonly spec: ListenSpec;
  readonly server: HttpServer;
  /** `http://127.0.0.1:8092`, `https://[::1]:8443`… with the port actually bound. */
  readonly url: string;
  readonly port: number;
}

/**
 * Creates Node servers for one request handler (the Fastify app's). `clientError` answers what Node's
 * parser rejects before there is a request.
 */
export class Listeners {
  private readonly open: Listener[] = [];

  constructor(
    private readonly handler: RequestHandler,
    private readonly limits: ServerLimits,
    private readonly clientError: (err: Error, socket: Socket) => void,
  ) {}

  get all(): readonly Listener[] {
    return this.open;
  }

  /**
   * Binds `spec` and starts serving. Throws the listen error (EADDRINUSE, EADDRNOTAVAIL…) as Node raises
   * it; the caller says which flag it came from.
   */
  async listen(spec: ListenSpec): Promise<Listener> {
    const server = makeServer(this.handler, this.limits, spec.tls?.() ?? null);
    server.on('clientError', this.clientError);
    // A TLS handshake that fails (a client that does not trust us, a port scan) is the client's problem:
    // it never reaches the request handler, and it must not reach the process as an error either.
    server.on('tlsClientError', () => undefined);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: spec.host, port: spec.port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const addr = server.address();
    const port = typeof addr === 'object' && addr ? addr.port : spec.port;
    const host = spec.host.includes(':') ? `[${spec.host}]` : spec.host;
    const listener: Listener = { spec, server, port, url: `${spec.tls ? 'https' : 'http'}://${host}:${port}` };
    this.open.push(listener);
    return listener;
  }

  /** Serves the current material on every HTTPS listener (after a renewal); open connections keep theirs. */
  refresh(): void {
    for (const l of this.open) {
      const m = l.spec.tls?.();
      if (m) (l.server as unknown as { setSecureContext(o: { key: string; cert: string }): void }).setSecureContext({ key: m.key, cert: m.cert });
    }
  }

  /** Stops one listener: no new connections, open ones closed. */
  async close(listener: Listener): Promise<void> {
    const i = this.open.indexOf(listener);
    if (i >= 0) this.open.splice(i, 1);
    await closeServer(listener.server);
  }

  async closeAll(): Promise<void> {
    const all = this.open.splice(0);
    await Promise.all(all.map((l) => closeServer(l.server)));
  }
}

function makeServer(handler: RequestHandler, limits: ServerLimits, tls: TlsMaterial | null): HttpServer {
  const options = {
    // A slow or stalled sender is cut off once the whole request has not arrived in time (slowloris).
    requestTimeout: limits.requestTimeoutMs,
    headersTimeout: Math.min(60_000, limits.requestTimeoutMs),
    connectionsCheckingInterval: Math.max(100, Math.min(30_000, Math.floor(limits.requestTimeoutMs / 4))),
    // A request without Host reaches the Host check and gets the error shape (Node's own check answers a bare 400).
    requireHostHeader: false,
  };
  const server = tls
    ? (createHttpsServer({ ...options, key: tls.key, cert: tls.cert, minVersion: 'TLSv1.2', handshakeTimeout: Math.min(30_000, limits.requestTimeoutMs) }, handler) as unknown as HttpServer)
    : createHttpServer(options, handler);
  server.maxConnections = limits.maxConnections;
  return server;
}

async function closeServer(server: HttpServer): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  // Long-polls and event streams would hold the close for as long as they last; the endpoint is going.
  server.closeAllConnections();
  await closed;
}
