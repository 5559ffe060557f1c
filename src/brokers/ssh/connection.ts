/**
 * One SSH connection to one agentless host (ssh2's Client), reused for all of the machine's jobs: each
 * remote step is an exec channel running `bash -s` with its script on stdin. The host key is checked on
 * every connect against the pin (TOFU: the first key seen is reported to be pinned); a host that offers
 * another key is refused before authentication, with the key it offered.
 */
import ssh2, { type Client, type ClientChannel, type ConnectConfig } from 'ssh2';
import type { HostKey, MachineSsh } from '../../model/ssh.js';
import { sshTargetText } from '../../model/ssh.js';
import type { SshKeySecret } from './credentials.js';
import { hostKeyAlgorithms, hostKeyOf } from './keys.js';

/** Why a connect failed: the host key (stop the line), the login (operator must fix), the network (retry). */
export class SshConnectError extends Error {
  constructor(
    readonly kind: 'hostkey' | 'auth' | 'network',
    message: string,
    /** With `hostkey`: what the host offered instead of the pinned key. */
    readonly offered?: HostKey,
  ) {
    super(message);
    this.name = 'SshConnectError';
  }
}

export interface ExecResult {
  /** The remote command's exit status; null when it ended by a signal or the channel closed without one. */
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Bytes of stdout and stderr kept at most, each (default 8 MiB); more is an error. */
  maxBytes?: number;
  /** Streams instead of collecting (for following a job's log). */
  onStdout?: (data: Buffer) => void;
  onStderr?: (data: Buffer) => void;
  /** Closes the channel. */
  signal?: AbortSignal;
  /**
   * Gives up when the command has not ended by then: rejects, and closes the connection (a host that
   * does not answer one command is not trusted with the next; the driver reconnects). Default: the
   * connection's `commandTimeoutMs` for a command whose output is collected, none for a streamed one
   * (following a job's log, bounded by the job's own deadline instead). 0: none.
   */
  timeoutMs?: number;
}

export interface ConnectionOptions {
  /** Handshake (TCP + key exchange + login) time limit. */
  readyTimeoutMs?: number;
  /** SSH keepalive every this often; three unanswered close the connection. */
  keepaliveMs?: number;
  /** The bound of every command whose output is collected (bootstrap, probe, kill, …); default COMMAND_TIMEOUT_MS. */
  commandTimeoutMs?: number;
}

/**
 * How long one remote step (bootstrap, probe, kill, mark reported) may take. Each is a few file reads
 * and writes on the host: one that takes longer means a hung host (a stuck mount, a stopped sshd child),
 * and must not hold the machine's session slot and its job forever.
 */
export const COMMAND_TIMEOUT_MS = 30_000;
/** The reason `close` gives for the driver closing a connection it no longer needs (not a failure). */
export const IDLE_CLOSE = 'closed by takt: idle';

const DEFAULT_MAX_BYTES = 8 * 1024 * 1024;

export class SshConnection {
  private readonly client: Client = new ssh2.Client();
  private ended = false;
  private readonly closeListeners = new Set<(why: string) => void>();
  /** The key the host presented on this connection. */
  hostKey: HostKey | null = null;

  private commandTimeoutMs = COMMAND_TIMEOUT_MS;

  private constructor(readonly target: string) {}

  /**
   * Connects and logs in. `pinned`: the key the host must present (null: accept the first, and report it
   * in `hostKey` so the caller pins it).
   * @throws SshConnectError.
   */
  static async open(ssh: MachineSsh, secret: SshKeySecret, opts: ConnectionOptions = {}): Promise<SshConnection> {
    const conn = new SshConnection(sshTargetText(ssh));
    conn.commandTimeoutMs = opts.commandTimeoutMs ?? COMMAND_TIMEOUT_MS;
    await conn.connect(ssh, secret, opts);
    return conn;
  }

  private connect(ssh: MachineSsh, secret: SshKeySecret, opts: ConnectionOptions): Promise<void> {
    const pinned = ssh.hostKey;
    let offered: HostKey | null = null;
    const config: ConnectConfig = {
      host: ssh.host,
      port: ssh.port,
      username: ssh.user,
      privateKey: secret.privateKey,
      ...(secret.passphrase !== undefined ? { passphrase: secret.passphrase } : {}),
      readyTimeout: opts.readyTimeoutMs ?? 20_000,
      keepaliveInterval: opts.keepaliveMs ?? 10_000,
      keepaliveCountMax: 3,
      // Only the key: no agent, no password, no keyboard prompts.
      authHandler: ['publickey'],
      ...(pinned ? { algorithms: { serverHostKey: hostKeyAlgorithms(pinned.type) as never } } : {}),
      hostVerifier: (blob: Buffer) => {
        let key: HostKey;
        try {
          key = hostKeyOf(blob);
        } catch {
          return false;
        }
        this.hostKey = key;
        if (pinned && key.fingerprint !== pinned.fingerprint) {
          offered = key;
          return false;
        }
        return true;
      },
    };
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        this.ended = true;
        this.client.end();
        reject(this.classify(err, pinned, offered));
      };
      this.client.once('ready', () => {
        // Many small request/answer exchanges: Nagle's algorithm against delayed ACKs would add ~40 ms to each.
        this.client.setNoDelay(true);
        settled = true;
        resolve();
      });
      this.client.on('error', (err) => {
        if (!settled) fail(err);
        else this.finish(`connection error: ${err.message}`);
      });
      this.client.on('close', () => {
        if (!settled) fail(new Error('the connection closed during the handshake'));
        else this.finish('the connection closed');
      });
      try {
        this.client.connect(config);
      } catch (err) {
        fail(err as Error);
      }
    });
  }

  private classify(err: Error, pinned: HostKey | null, offered: HostKey | null): SshConnectError {
    const at = this.target;
    if (offered) {
      return new SshConnectError('hostkey', `the host key of ${at} has changed: takt pinned ${pinned!.fingerprint} (${pinned!.type}), the host now offers ${(offered as HostKey).fingerprint} (${(offered as HostKey).type})`, offered);
    }
    if (pinned && /host key|no matching/i.test(err.message) && this.hostKey === null) {
      return new SshConnectError('hostkey', `the host key of ${at} has changed: takt pinned ${pinned.fingerprint} (${pinned.type}) and the host offers no ${pinned.type} key any more (${err.message})`);
    }
    const level = (err as { level?: string }).level;
    if (level === 'client-authentication' || /authentication methods failed/i.test(err.message)) {
      return new SshConnectError('auth', `cannot log in to ${at}: the host refused the key (is its public key in ~/.ssh/authorized_keys of that user? \`takt credentials get NAME\` prints it)`);
    }
    return new SshConnectError('network', `cannot reach ${at}: ${err.message}`);
  }

  private finish(why: string): void {
    if (this.ended) return;
    this.ended = true;
    for (const f of this.closeListeners) f(why);
    this.closeListeners.clear();
  }

  get closed(): boolean {
    return this.ended;
  }

  /** Called once when the connection goes (closed by either side, or dead keepalives). */
  onClose(f: (why: string) => void): () => void {
    if (this.ended) {
      f('the connection closed');
      return () => {};
    }
    this.closeListeners.add(f);
    return () => this.closeListeners.delete(f);
  }

  /** Closes the connection; `why` goes to the close listeners (IDLE_CLOSE: not needed any more). */
  close(why = 'closed by takt'): void {
    this.finish(why);
    this.client.end();
  }

  /**
   * Runs `script` with `bash -s` (the script on stdin, never on a command line).
   * @throws Error when the channel cannot be opened, the connection goes first, or the output is over the bound.
   */
  run(script: string, opts: ExecOptions = {}): Promise<ExecResult> {
    const max = opts.maxBytes ?? DEFAULT_MAX_BYTES;
    const timeoutMs = opts.timeoutMs ?? (opts.onStdout ? 0 : this.commandTimeoutMs);
    return new Promise<ExecResult>((resolve, reject) => {
      if (this.ended) return reject(new Error(`not connected to ${this.target}`));
      let stopClose = () => {};
      // A host may not even open the channel: that counts against the bound too.
      let opened = false;
      const openTimer = timeoutMs
        ? setTimeout(() => {
            if (opened) return;
            opened = true;
            reject(new Error(`${this.target} did not open a channel within ${timeoutMs} ms`));
            this.close(`${this.target} did not open a channel within ${timeoutMs} ms`);
          }, timeoutMs)
        : undefined;
      this.client.exec('bash -s', (err, ch: ClientChannel) => {
        if (opened) return ch?.close();
        opened = true;
        clearTimeout(openTimer);
        if (err) return reject(new Error(`cannot open a channel on ${this.target}: ${err.message}`));
        const out: Buffer[] = [];
        const errs: Buffer[] = [];
        let outBytes = 0;
        let errBytes = 0;
        let code: number | null = null;
        let failure: Error | null = null;
        let settled = false;
        const settle = () => {
          if (settled) return false;
          settled = true;
          clearTimeout(timer);
          opts.signal?.removeEventListener('abort', onAbort);
          stopClose();
          return true;
        };
        const timer = timeoutMs
          ? setTimeout(() => {
              ch.close();
              if (settle()) reject(new Error(`${this.target} did not answer within ${timeoutMs} ms`));
              this.close(`${this.target} did not answer a command within ${timeoutMs} ms`);
            }, timeoutMs)
          : undefined;
        // An abort answers at once: sshd keeps a command running after its channel closes, and the
        // caller stops it another way (see stopFollowScript).
        const onAbort = () => {
          ch.close();
          if (settle()) resolve({ code: null, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(errs).toString('utf8') });
        };
        if (opts.signal?.aborted) return onAbort();
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        stopClose = this.onClose((why) => {
          failure ??= new Error(`lost the connection to ${this.target}: ${why}`);
          // A connection that goes ends its channels: answer now rather than wait for a close that may not come.
          if (settle()) reject(failure);
        });
        ch.on('exit', (c: number | null) => (code = typeof c === 'number' ? c : null));
        ch.on('data', (d: Buffer) => {
          if (opts.onStdout) return opts.onStdout(d);
          outBytes += d.length;
          if (outBytes > max) {
            failure ??= new Error(`the host's answer was over ${max} bytes`);
            ch.close();
          } else out.push(d);
        });
        ch.stderr.on('data', (d: Buffer) => {
          if (opts.onStderr) return opts.onStderr(d);
          errBytes += d.length;
          if (errBytes <= max) errs.push(d);
        });
        ch.on('error', (e: Error) => (failure ??= e));
        ch.on('close', () => {
          if (!settle()) return;
          if (failure) return reject(failure);
          resolve({ code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(errs).toString('utf8') });
        });
        ch.end(script);
      });
    });
  }
}
