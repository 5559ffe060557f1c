/**
 * The agent's side of joining: register this host with a join token (inventory in, machine token out,
 * written to a 0600 file, never printed), and report the host's facts again each time the agent starts.
 */
import { chmod, open, rename, rm } from 'node:fs/promises';
import { ApiClient, backoffMs, NetworkError, sleep } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import type { Facts } from '../model/facts.js';
import { machineIdFromToken } from '../model/protocol.js';
import { collectFacts } from './inventory.js';

/** How the agent reaches the endpoint: its URL and, over TLS, what it trusts (see ApiClient). */
export interface EndpointAccess {
  endpoint: string;
  /** PEM of the endpoint's CA: the only certificate trusted when given. */
  ca?: string;
}

export interface Registration {
  machine: { id: string; name: string };
  rejoined: boolean;
}

/**
 * Registers this host: collects its facts, sends them with the join token, and writes the machine token
 * it gets to `tokenFile` (mode 0600, written beside it and renamed, so a reader never sees half a token).
 * @throws TaktError as the endpoint answered (an expired, used-up or revoked join token is `unauthorized`
 *   saying which), or NetworkError when it cannot be reached.
 */
export async function registerHost(access: EndpointAccess, joinToken: string, tokenFile: string, agentVersion: string | null = null): Promise<Registration> {
  const facts = await collectFacts(undefined, agentVersion);
  const client = new ApiClient({ ...access, token: joinToken });
  try {
    const r = await client.post<{ machine: { id: string; name: string }; token: string; rejoined: boolean }>('/join', { facts });
    if (!machineIdFromToken(r.token)) throw new TaktError('internal', 'the endpoint answered the registration without a machine token');
    await writeSecretFile(tokenFile, `${r.token}\n`);
    return { machine: { id: r.machine.id, name: r.machine.name }, rejoined: r.rejoined };
  } finally {
    client.close();
  }
}

/**
 * Sends this host's facts for machine `token`'s machine, retrying network failures with backoff until it
 * has been heard, `attempts` run out, or `signal` aborts. Best effort: the agent runs its jobs meanwhile,
 * and an answer other than success is logged, not retried (a token the endpoint refuses stays refused).
 */
export async function reportFacts(access: EndpointAccess, token: string, log: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void, signal?: AbortSignal, attempts = 20, agentVersion: string | null = null): Promise<boolean> {
  const machineId = machineIdFromToken(token);
  if (!machineId) return false;
  let facts: Facts;
  try {
    facts = await collectFacts(undefined, agentVersion);
  } catch (err) {
    log('warn', 'could not collect the host facts', { error: (err as Error).message });
    return false;
  }
  const client = new ApiClient({ ...access, token });
  try {
    for (let attempt = 0; attempt < attempts && !signal?.aborted; attempt++) {
      try {
        await client.put(`/machines/${encodeURIComponent(machineId)}/facts`, facts);
        log('info', 'host facts reported', { hostname: facts.hostname, machineId: facts.machineId });
        return true;
      } catch (err) {
        if (!(err instanceof NetworkError)) {
          log('warn', 'the endpoint refused the host facts', { error: (err as Error).message });
          return false;
        }
        await sleep(backoffMs(attempt, 500, 30_000), signal);
      }
    }
    return false;
  } finally {
    client.close();
  }
}

/** Writes `text` to `path` with mode 0600 through a temporary file in the same directory and a rename. */
export async function writeSecretFile(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await chmod(tmp, 0o600);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
