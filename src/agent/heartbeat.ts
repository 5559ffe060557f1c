/**
 * Keeps a running job's lease alive: one heartbeat every leaseMs/3, so two can be lost before the
 * endpoint gives up. Each heartbeat long-polls (`?waitMs=`) for that interval: the endpoint answers at
 * once when an operator cancels the job, so the script dies within a round trip, not an interval. An
 * endpoint that answers at once anyway (older ones) is asked again only after the interval. When the
 * endpoint says the job is no longer running (lost, cancelled, settled), `onGone` is called once and the
 * heartbeat stops: the script must be killed and nothing reported.
 */
import type { ApiClient } from '../client/http.js';
import type { HeartbeatResponse } from '../model/protocol.js';
import { errorMessage, type AgentLog } from './log.js';
import { classify, sleep } from './retry.js';

/** The longest a job runs before its first heartbeat (so before a cancel can reach it). */
const FIRST_HEARTBEAT_MS = 1000;

export interface Heartbeat {
  stop(): void;
}

export function startHeartbeat(client: ApiClient, jobId: string, leaseMs: number, onGone: (why: string) => void, log: AgentLog): Heartbeat {
  const stopper = new AbortController();
  const signal = stopper.signal;
  const interval = Math.max(100, Math.floor(leaseMs / 3));
  const path = `/jobs/${encodeURIComponent(jobId)}/heartbeat`;
  void (async () => {
    let failing = false;
    // The first heartbeat goes after a second at most: from then on the endpoint is listening for this
    // job's cancel. (Not at once: most jobs are over within a second, and need no heartbeat at all.)
    let wait = Math.min(interval, FIRST_HEARTBEAT_MS);
    while (!signal.aborted) {
      await sleep(wait, signal);
      if (signal.aborted) return;
      const sent = Date.now();
      try {
        // The answer may be held for the interval; one that takes an interval more is as good as lost.
        const res = await client.post<HeartbeatResponse>(path, {}, { signal, query: { waitMs: interval }, timeoutMs: interval + Math.max(1000, interval) });
        wait = Math.max(0, interval - (Date.now() - sent));
        if (failing) log('info', 'heartbeat delivered again', { jobId });
        failing = false;
        if (res?.running === false) {
          stopper.abort();
          onGone('the endpoint no longer considers this job running');
          return;
        }
      } catch (err) {
        if (signal.aborted) return;
        if (classify(err) === 'gone') {
          stopper.abort();
          onGone(`the endpoint no longer knows this job: ${errorMessage(err)}`);
          return;
        }
        if (!failing) log('warn', 'heartbeat failed; the job keeps running', { jobId, error: errorMessage(err) });
        failing = true;
        wait = Math.max(0, interval - (Date.now() - sent));
      }
    }
  })();
  return { stop: () => stopper.abort() };
}
