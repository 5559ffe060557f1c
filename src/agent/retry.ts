/**
 * How the agent reacts to a failed request. The rule everywhere: an endpoint that cannot be reached or
 * answers 5xx is retried with backoff; an answer about the job itself (404/409) is final.
 */
import { NetworkError } from '../client/http.js';
import { TaktError } from '../model/errors.js';

export type Failure =
  /** Network loss, timeouts, 5xx, a body we could not read: try again later with backoff. */
  | 'retry'
  /** 401/403: the token was rejected. Retry slowly; the operator may fix it without restarting us. */
  | 'auth'
  /** 404/409: the server no longer has this job running (settled, lost, cancelled). Stop trying. */
  | 'gone'
  /** Any other 4xx: the server refuses this request as such; sending it again will not help. */
  | 'rejected';

export function classify(err: unknown): Failure {
  if (err instanceof NetworkError) return 'retry';
  if (err instanceof TaktError) {
    const status = err.status as number | undefined;
    if (status === 401 || status === 403) return 'auth';
    if (status === 404 || status === 409) return 'gone';
    if (status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429) return 'rejected';
    return 'retry';
  }
  return 'retry';
}

/** How long to wait after a rejected token before asking again. */
export const AUTH_RETRY_MS = 10_000;

// The agent's waits are the client's: one abortable sleep for both.
export { sleep } from '../client/http.js';
