/**
 * How the CLI finds its endpoint and token: flags, then TAKT_ENDPOINT/TAKT_TOKEN, then the local data dir
 * (`<TAKT_DATA or ./data>`: the `endpoint` file `takt serve` writes, and `admin.token`), then the default.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { homedir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { ApiClient, NetworkError } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import { inexactMessage, inexactNumbers } from '../model/numbers.js';
import { newChallenge, proofMatches } from '../model/proof.js';
import { UsageError } from './usage.js';

export const DEFAULT_ENDPOINT = 'http://127.0.0.1:8092';

export interface GlobalOptions {
  endpoint?: string;
  token?: string;
  output: 'table' | 'json' | 'yaml';
}

/** How a command reads the global options (parsed once commander has seen the whole line). */
export type Globals = () => GlobalOptions;

/** Where the admin token came from: a data dir's `admin.token` is checked before it is used and sent. */
export interface ResolvedToken {
  token: string;
  /**
   * `data` when read from `<TAKT_DATA or ./data>/admin.token`: then it may only go to that data dir's
   * endpoint. `login`: the token `takt login` kept for this endpoint.
   */
  source: 'flag' | 'env' | 'login' | 'data';
  /** The file it was read from (source `data`). */
  file?: string;
}

/**
 * The token: `--token`, else TAKT_TOKEN, else `<TAKT_DATA or ./data>/admin.token` (checked: see
 * `readTokenFile`), else undefined.
 * @throws TaktError bad_request when the data dir's token file is not safe to use.
 */
export function resolveToken(flag?: string, endpoint?: string): ResolvedToken | undefined {
  if (flag) return { token: flag, source: 'flag' };
  if (process.env.TAKT_TOKEN) return { token: process.env.TAKT_TOKEN, source: 'env' };
  const login = endpoint ? loginTokens()[endpoint] : undefined;
  if (login) return { token: login.token, source: 'login', file: loginFile() };
  const file = join(process.env.TAKT_DATA ?? 'data', 'admin.token');
  const token = readTokenFile(file);
  return token === undefined ? undefined : { token, source: 'data', file };
}

/**
 * Reads an admin token file as ssh reads a private key: refused (TaktError bad_request, saying the exact
 * command that fixes it) when it is not a regular file, is owned by another user, or grants the group or
 * others any access (mode & 077) — a token others could read is no longer the operator's alone, and one
 * others own could be a token they chose. Undefined when there is no such file.
 */
export function readTokenFile(file: string): string | undefined {
  const st = statSync(file, { throwIfNoEntry: false });
  if (!st) return undefined;
  if (!st.isFile()) throw new TaktError('bad_request', `refusing to use the admin token in ${file}: it is not a regular file`);
  const me = process.getuid?.();
  if (me !== undefined && st.uid !== me) {
    throw new TaktError('bad_request', `refusing to use the admin token in ${file}: it is owned by uid ${st.uid}, not by you (uid ${me}), who could have put a token of theirs there; if it is yours, run: sudo chown ${userName()} ${file}`);
  }
  if ((st.mode & 0o077) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    throw new TaktError('bad_request', `refusing to use the admin token in ${file}: it is mode ${mode}, readable or writable by ${(st.mode & 0o007) !== 0 ? 'other users' : 'its group'}, who could use it as you; run: chmod 600 ${file} (and consider it leaked: replace it and restart takt serve)`);
  }
  return readFileSync(file, 'utf8').trim();
}

function userName(): string {
  try {
    return userInfo().username;
  } catch {
    return String(process.getuid?.() ?? '');
  }
}

/**
 * The CA an https endpoint must chain to: TAKT_CA_FILE, else the local endpoint's own CA
 * (`<TAKT_DATA or ./data>/tls/ca.pem`) when it exists, else none (the system's CAs, for an operator
 * certificate from a public CA).
 */
export function resolveCa(): string | undefined {
  const explicit = process.env.TAKT_CA_FILE;
  const file = explicit ?? join(process.env.TAKT_DATA ?? 'data', 'tls', 'ca.pem');
  if (!existsSync(file)) {
    if (explicit) throw new TaktError('bad_request', `TAKT_CA_FILE ${file}: no such file`);
    return undefined;
  }
  // The default is found relative to where the CLI runs: trusted only when it is ours and only we can
  // change it, so a directory someone else controls cannot hand the CLI a CA of theirs.
  if (!explicit) {
    const st = statSync(file);
    if (st.uid !== process.getuid?.() || (st.mode & 0o022) !== 0) return undefined;
  }
  return readFileSync(file, 'utf8');
}

/**
 * The endpoint URL: `--endpoint`, else TAKT_ENDPOINT, else the `endpoint` file of the local data dir (so a
 * `takt serve --listen 127.0.0.1:9000` is found), else http://127.0.0.1:8092.
 */
export function resolveEndpoint(flag?: string): string {
  return flag || process.env.TAKT_ENDPOINT || endpointFromDataDir() || DEFAULT_ENDPOINT;
}

/**
 * The URL in `<TAKT_DATA or ./data>/endpoint`, which `takt serve` writes once it listens. Like the CA file
 * it is found relative to where the CLI runs, so it is trusted only when it is ours and only we can change
 * it: a directory someone else controls must not point the CLI (and its admin token) elsewhere.
 */
export function endpointFromDataDir(): string | undefined {
  const file = join(process.env.TAKT_DATA ?? 'data', 'endpoint');
  const st = statSync(file, { throwIfNoEntry: false });
  if (!st?.isFile() || st.uid !== process.getuid?.() || (st.mode & 0o022) !== 0 || st.size > 4096) return undefined;
  const url = readFileSync(file, 'utf8').trim();
  return /^https?:\/\/\S+$/.test(url) ? url : undefined;
}

export function clientFrom(g: GlobalOptions): ApiClient {
  const endpoint = resolveEndpoint(g.endpoint);
  const resolved = resolveToken(g.token, endpoint);
  if (!resolved) {
    const where = process.env.TAKT_DATA ? `${process.env.TAKT_DATA}/admin.token does not exist` : 'no ./data/admin.token here';
    throw new TaktError(
      'unauthorized',
      `no token (${where}): set TAKT_DATA=DIR to the --data dir of \`takt serve\` (its admin.token and endpoint are read from there), or pass --token / set TAKT_TOKEN`,
    );
  }
  if (resolved.source === 'login') savedLoginInUse = { file: resolved.file!, endpoint };
  const ca = endpoint.startsWith('https:') ? resolveCa() : undefined;
  // A token read from a data dir goes only to the server that proves it holds it (see verifyEndpoint);
  // checked once per process and endpoint, however many clients a command makes.
  const key = `${endpoint}\n${resolved.token}`;
  const beforeRequest = resolved.source === 'data' ? () => getOrSet(verified, key, () => verifyEndpoint(endpoint, resolved.token, resolved.file!, ca)) : undefined;
  return new ApiClient({ endpoint, token: resolved.token, ...(ca ? { ca } : {}), ...(beforeRequest ? { beforeRequest } : {}) });
}

/** Set when a client of this process sends a token `takt login` kept (not --token, TAKT_TOKEN or a data dir's). */
let savedLoginInUse: { file: string; endpoint: string } | undefined;

/**
 * What to add to a refusal (401) when the token refused was a saved login: it goes on being sent, ahead of
 * the data dir's admin token, until `takt logout` removes it (its user deleted, its token revoked). Undefined
 * when the token came from elsewhere.
 */
export function savedLoginHint(): string | undefined {
  if (!savedLoginInUse) return undefined;
  return `the token sent is your saved login for ${savedLoginInUse.endpoint} (in ${savedLoginInUse.file}): \`takt logout\` removes it (the data dir's admin token is used then, if there is one), or \`takt login\` again`;
}

/** Endpoints (with the token) this process has checked, or is checking: the check's promise. */
const verified = new Map<string, Promise<void>>();

function getOrSet(map: Map<string, Promise<void>>, key: string, make: () => Promise<void>): Promise<void> {
  let p = map.get(key);
  if (!p) {
    p = make();
    map.set(key, p);
  }
  return p;
}

/**
 * Before the admin token read from a data dir is sent anywhere: asks `endpoint`, without any token, to
 * prove it holds that token (`GET /api/v1/health?challenge=`, model/proof.ts). A stale `endpoint` file
 * (its serve gone and another program on the port since) or the default port with some other server on
 * it fails the check, and the token is never sent. A NetworkError (nothing listening) passes through as
 * the command's own would.
 * @throws TaktError unauthorized naming the data dir and the server that failed the check.
 */
export async function verifyEndpoint(endpoint: string, token: string, file: string, ca?: string): Promise<void> {
  const challenge = newChallenge();
  const anon = new ApiClient({ endpoint, timeoutMs: 10_000, ...(ca ? { ca } : {}) });
  let answer: { proof?: unknown } | undefined;
  try {
    answer = await anon.get<{ proof?: unknown }>('/api/v1/health', { challenge });
  } catch (err) {
    if (err instanceof NetworkError) throw err;
    answer = undefined;
  } finally {
    anon.close();
  }
  if (answer && proofMatches(token, challenge, answer.proof)) return;
  const dir = dirname(file);
  throw new TaktError(
    'unauthorized',
    `refusing to send the admin token in ${file} to ${endpoint}: the server there did not prove it is the takt serve of ${dir} (is \`takt serve --data ${dir}\` running? ${dir}/endpoint may be stale, with another program on that port now); start it, or pass --endpoint and --token (or TAKT_ENDPOINT and TAKT_TOKEN) explicitly`,
  );
}

/** Where `takt login` keeps its tokens: `$TAKT_CONFIG_DIR`, else `$XDG_CONFIG_HOME/takt`, else `~/.config/takt`. */
export function loginFile(): string {
  const dir = process.env.TAKT_CONFIG_DIR ?? join(process.env.XDG_CONFIG_HOME ?? join(homedir(), '.config'), 'takt');
  return join(dir, 'tokens.json');
}

/** A token `takt login` kept: for which user, until when. */
export interface LoginToken {
  token: string;
  user: string;
  expiresAt: string;
}

/**
 * The tokens `takt login` kept, by endpoint URL. A file others can read or that is not ours is refused,
 * as the admin token file is (readTokenFile's rules).
 * @throws TaktError bad_request for such a file.
 */
export function loginTokens(): Record<string, LoginToken> {
  const file = loginFile();
  const text = readTokenFile(file);
  if (text === undefined) return {};
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, LoginToken>) : {};
  } catch {
    throw new TaktError('bad_request', `${file} is not valid JSON: remove it and log in again (takt login)`);
  }
}

/** Keeps (or with null, forgets) the login token for `endpoint`, in a 0600 file in a 0700 dir, written whole. */
export function saveLoginToken(endpoint: string, t: LoginToken | null): void {
  const file = loginFile();
  const all = loginTokens();
  if (t) all[endpoint] = t;
  else delete all[endpoint];
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(all, null, 2)}\n`, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}

/** `--param key=value`: the value is JSON when it parses as JSON (numbers, booleans, objects), else a string. */
export function parseParamPairs(pairs: string[] = []): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const p of pairs) {
    const i = p.indexOf('=');
    if (i <= 0) throw new UsageError(`--param '${p}' is not KEY=VALUE`);
    const raw = p.slice(i + 1);
    let value: unknown = raw;
    try {
      value = JSON.parse(raw);
    } catch {
      /* a plain string */
    }
    // JSON.parse rounds 12345678901234567891 silently; the raw text is still here to say what was meant.
    if (inexactNumbers(value).length > 0) {
      throw new UsageError(`--param '${p}': ${inexactMessage(raw)}: --param '${p.slice(0, i)}="${raw}"'`);
    }
    out[p.slice(0, i)] = value;
  }
  return out;
}

/** The `--param` option's help: how a value is typed, said once for every command that takes one. */
export const PARAM_TYPING =
  'the value is read as JSON when it parses as JSON (42, true, null, ["a"], {"k":1}), else it is a string: quote a string that looks like JSON, e.g. --param \'version="42"\'';

/**
 * Awaits `call` (a request that sent `--param` values) and, when the endpoint refuses a param for not
 * being a string although the operator typed it as text that JSON read as a number/boolean/null (42,
 * true), says how to pass it as a string. Other errors pass through unchanged.
 */
export async function withParamHint<T>(pairs: string[] | undefined, call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (err) {
    if (!(err instanceof TaktError) || !err.path?.startsWith('/params/') || !/must be (a )?string/.test(err.message)) throw err;
    const name = err.path.slice('/params/'.length);
    const pair = (pairs ?? []).find((p) => p.slice(0, p.indexOf('=')) === name);
    if (!pair) throw err;
    const raw = pair.slice(pair.indexOf('=') + 1);
    throw new TaktError(err.code, `${err.message}; --param values are read as JSON, so ${raw} is not a string: to pass the string ${raw}, quote it: --param '${name}="${raw}"'`, {
      path: err.path,
      ...(err.details !== undefined ? { details: err.details } : {}),
    });
  }
}

export const collect = (v: string, prev: string[] = []) => [...prev, v];
