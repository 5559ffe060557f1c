/**
 * Keeps a running job's lease alive: one heartbeat every leaseMs/3, so two can be lost before the
 * endpoint gives up. When the endpoint says the job is no longer running (lost, cancelled, settled),
 * `onGone` is called once and the heartbeat stops: the script must be killed and nothing reported.
 */
import type { ApiClient } from '../client/http.js';
import type { HeartbeatResponse } from '../model/protocol.js';
import { errorMessage, type AgentLog } from './log.js';
import { classify, sleep } from './retry.js';

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
    while (!signal.aborted) {
      await sleep(interval, signal);
      if (signal.aborted) return;
      try {
        // A heartbeat that takes longer than the interval is as good as lost; the next one follows.
        const res = await client.post<HeartbeatResponse>(path, {}, { signal, timeoutMs: Math.max(1000, interval) });
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
      }
    }
  })();
  return { stop: () => stopper.abort() };
}
