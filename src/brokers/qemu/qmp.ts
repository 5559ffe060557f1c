/**
 * A client for the QEMU Machine Protocol (QMP) over a unix socket (qemu `-qmp unix:PATH,server=on,wait=off`).
 *
 * The protocol (qemu docs/interop/qmp-spec.rst) is JSON objects, one per line:
 *   server → `{"QMP": {"version": …, "capabilities": […]}}` greeting on connect;
 *   client → `{"execute": "qmp_capabilities"}` to leave negotiation mode;
 *   client → `{"execute": CMD, "arguments": {…}, "id": N}`; server → `{"return": …, "id": N}` or
 *            `{"error": {"class": …, "desc": …}, "id": N}`;
 *   server → `{"event": NAME, "data": {…}, "timestamp": {"seconds", "microseconds"}}` at any time.
 * qemu serves one QMP client per socket at a time: a second connect waits until the first closes, so
 * callers connect, do their work and close (the power driver does exactly that).
 */
import { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import { TaktError } from '../../model/errors.js';

/** An asynchronous event from qemu, e.g. `RESET` (`data.guest`: true when the guest asked), `STOP`, `SHUTDOWN`. */
export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  /** Host time qemu sent it, in seconds and microseconds since the epoch. */
  timestamp?: { seconds: number; microseconds: number };
}

/** The `QMP` object of the greeting. */
export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

/** Options for connecting. */
export interface QmpConnectOptions {
  /** Bound on connecting, reading the greeting and negotiating, in ms (default 10 000). */
  timeoutMs?: number;
}

/** A line longer than this (bytes) means the peer is not qemu: the connection is dropped. */
const MAX_LINE = 8 << 20;

/**
 * One QMP connection. Emits `event` (QmpEvent) for every asynchronous event and `close` when the socket
 * closes; pending commands then fail with TaktError unavailable.
 */
export class QmpClient extends EventEmitter {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; command: string; timer: NodeJS.Timeout }>();
  private closed = false;
  private closeReason = '';
  /** Events seen so far, oldest first (bounded), so `waitForEvent` can find one that came before it was called. */
  readonly history: QmpEvent[] = [];

  private constructor(
    private readonly socket: Socket,
    readonly path: string,
    readonly greeting: QmpGreeting,
  ) {
    super();
  }

  /**
   * Connects to the QMP socket at `path`, reads the greeting and negotiates capabilities.
   * @throws TaktError unavailable when the socket is missing, refuses, is busy with another client past
   *   the deadline, or does not speak QMP.
   */
  static connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    return new Promise<QmpClient>((resolve, reject) => {
      const socket = createConnection({ path });
      let buf = '';
      let settled = false;
      const fail = (msg: string) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.destroy();
        reject(new TaktError('unavailable', `QMP ${path}: ${msg}`));
      };
      const timer = setTimeout(
        () => fail(`no greeting within ${timeoutMs} ms (is qemu running, or is another QMP client connected? qemu serves one at a time)`),
        timeoutMs,
      );
      socket.setEncoding('utf8');
      socket.on('error', (err: NodeJS.ErrnoException) =>
        fail(err.code === 'ENOENT' ? 'no such socket (qemu not started, or started without -qmp)' : err.code === 'ECONNREFUSED' ? 'connection refused (qemu has exited)' : err.message),
      );
      socket.on('close', () => fail('closed before the greeting'));
      const onData = (chunk: string) => {
        buf += chunk;
        if (buf.length > MAX_LINE) return fail('greeting too long: not a QMP socket');
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        let greeting: QmpGreeting;
        try {
          const msg = JSON.parse(buf.slice(0, nl)) as { QMP?: QmpGreeting };
          if (!msg.QMP) return fail(`expected the QMP greeting, got ${buf.slice(0, Math.min(nl, 200))}`);
          greeting = msg.QMP;
        } catch {
          return fail(`not JSON where the greeting should be: ${buf.slice(0, Math.min(nl, 200))}`);
        }
        socket.off('data', onData);
        socket.removeAllListeners('close');
        socket.removeAllListeners('error');
        const client = new QmpClient(socket, path, greeting);
        client.attach(buf.slice(nl + 1));
        client
          .execute('qmp_capabilities', undefined, { timeoutMs })
          .then(() => {
            settled = true;
            clearTimeout(timer);
            resolve(client);
          })
          .catch((err: Error) => {
            client.close();
            fail(`capability negotiation failed: ${err.message}`);
          });
      };
      socket.on('data', onData);
    });
  }

  private attach(rest: string): void {
    this.socket.on('data', (chunk: string) => this.feed(chunk));
    this.socket.on('error', (err) => this.shutdown(err.message));
    this.socket.on('close', () => this.shutdown('connection closed'));
    if (rest) this.feed(rest);
  }

  private feed(chunk: string): void {
    this.buf += chunk;
    if (this.buf.length > MAX_LINE && this.buf.indexOf('\n') < 0) {
      this.shutdown(`a line longer than ${MAX_LINE} bytes`);
      this.socket.destroy();
      return;
    }
    for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: { id?: unknown; return?: unknown; error?: { class?: string; desc?: string }; event?: string };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        continue; // qemu never sends this; a stray line must not take the connection down
      }
      if (typeof msg.event === 'string') {
        const ev = msg as QmpEvent;
        this.history.push(ev);
        if (this.history.length > 1000) this.history.shift();
        this.emit('event', ev);
        continue;
      }
      if (typeof msg.id !== 'number') continue;
      const p = this.pending.get(msg.id);
      if (!p) continue;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) {
        p.reject(new TaktError('conflict', `qemu refused ${p.command}: ${msg.error.desc ?? 'no description'} (${msg.error.class ?? 'error'})`, { details: { class: msg.error.class } }));
      } else {
        p.resolve(msg.return);
      }
    }
  }

  private shutdown(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new TaktError('unavailable', `QMP ${this.path}: ${p.command} got no answer: ${reason}`));
      this.pending.delete(id);
    }
    this.emit('close', reason);
  }

  /** True once the connection has closed (qemu exited, `quit`, or `close()`). */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Runs `command` with `args` and resolves with its `return` value.
   * @throws TaktError conflict when qemu answers with an error (message has qemu's class and description);
   *   TaktError unavailable when there is no answer within `timeoutMs` (default 10 000) or the connection closes.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closed) return Promise.reject(new TaktError('unavailable', `QMP ${this.path}: cannot run ${command}: ${this.closeReason}`));
    const id = this.nextId++;
    const timeoutMs = opts.timeoutMs ?? 10_000;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new TaktError('unavailable', `QMP ${this.path}: no answer to ${command} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, command, timer });
      this.socket.write(JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + '\n');
    });
  }

  /**
   * The first event named `name` (matching `match`, if given) after event number `since` of `history`
   * (default: any event from now on).
   * @throws TaktError unavailable when none comes within `timeoutMs` or the connection closes.
   */
  waitForEvent(name: string, opts: { timeoutMs?: number; since?: number; match?: (e: QmpEvent) => boolean } = {}): Promise<QmpEvent> {
    const ok = (e: QmpEvent) => e.event === name && (!opts.match || opts.match(e));
    const old = opts.since === undefined ? undefined : this.history.slice(opts.since).find(ok);
    if (old) return Promise.resolve(old);
    const timeoutMs = opts.timeoutMs ?? 10_000;
    return new Promise<QmpEvent>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      const onEvent = (e: QmpEvent) => {
        if (!ok(e)) return;
        done();
        resolve(e);
      };
      const onClose = (reason: string) => {
        done();
        reject(new TaktError('unavailable', `QMP ${this.path}: closed while waiting for ${name}: ${reason}`));
      };
      const timer = setTimeout(() => {
        done();
        reject(new TaktError('unavailable', `QMP ${this.path}: no ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /** Closes the connection (qemu keeps running); pending commands fail. */
  close(): void {
    this.shutdown('closed by the client');
    this.socket.end();
    this.socket.destroy();
  }
}

/** Connects, runs `fn`, and closes, whatever happens (the one-client-at-a-time rule). */
export async function withQmp<T>(path: string, fn: (q: QmpClient) => Promise<T>, opts: QmpConnectOptions = {}): Promise<T> {
  const q = await QmpClient.connect(path, opts);
  try {
    return await fn(q);
  } finally {
    q.close();
  }
}
