/**
 * Delivers a job's report until the endpoint has answered it. Network loss and endpoint restarts are
 * waited out with backoff (the report is on disk meanwhile); only an answer ends the attempt.
 */
import { backoffMs, type ApiClient } from '../client/http.js';
import type { AgentAction, ClaimResponse, CompleteResponse } from '../model/protocol.js';
import { errorMessage, type AgentLog } from './log.js';
import { AUTH_RETRY_MS, classify, sleep } from './retry.js';
import type { PendingReport } from './state.js';

export type Delivery =
  | { kind: 'delivered'; action: AgentAction; state: string; next?: ClaimResponse }
  /** The endpoint will never take this report (already settled differently, unknown job, refused). */
  | { kind: 'dropped'; reason: string }
  /** The agent is stopping; the report stays pending for the next start. */
  | { kind: 'aborted' };

const ACTIONS: readonly AgentAction[] = ['continue', 'reboot', 'poweroff'];

export interface DeliverOptions {
  log: AgentLog;
  signal?: AbortSignal;
  backoff?: (attempt: number) => number;
  authRetryMs?: number;
}

export async function deliverReport(client: ApiClient, p: PendingReport, opts: DeliverOptions): Promise<Delivery> {
  const { log, signal } = opts;
  const backoff = opts.backoff ?? ((a: number) => backoffMs(a));
  const path = `/jobs/${encodeURIComponent(p.jobId)}/complete`;
  for (let attempt = 0; ; attempt++) {
    if (signal?.aborted) return { kind: 'aborted' };
    try {
      const res = await client.post<CompleteResponse | undefined>(path, p.report, { signal });
      const action = res && ACTIONS.includes(res.action) ? res.action : 'continue';
      if (!res || res.action !== action) log('warn', 'the endpoint answered the report without a known action; continuing', { jobId: p.jobId });
      return { kind: 'delivered', action, state: res?.job?.state ?? 'unknown', ...(res?.next && typeof res.next === 'object' ? { next: res.next } : {}) };
    } catch (err) {
      if (signal?.aborted) return { kind: 'aborted' };
      const kind = classify(err);
      const error = errorMessage(err);
      if (kind === 'gone' || kind === 'rejected') {
        log(kind === 'gone' ? 'warn' : 'error', 'the endpoint did not take the job report; dropping it', { jobId: p.jobId, error });
        return { kind: 'dropped', reason: error };
      }
      if (kind === 'auth') {
        log('error', `token rejected: ${error}; the report is kept and retried`, { jobId: p.jobId });
        await sleep(opts.authRetryMs ?? AUTH_RETRY_MS, signal);
        continue;
      }
      // Log the first failure and then now and then, not every attempt of a long outage.
      if (attempt === 0 || attempt % 20 === 0) log('warn', 'cannot deliver the job report yet; retrying', { jobId: p.jobId, attempt, error });
      await sleep(backoff(attempt), signal);
    }
  }
}
