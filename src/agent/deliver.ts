/**
 * Delivers a job's report until the endpoint has answered it. Network loss and endpoint restarts are
 * waited out with backoff (the report is on disk meanwhile); only an answer ends the attempt. A report
 * the endpoint refuses as such (a 4xx other than auth and "job gone": too large, invalid) is not resent
 * as it is, nor dropped: a minimal failure report that carries the refusal goes instead, once, so the
 * job ends failed with that reason rather than lost.
 */
import { backoffMs, type ApiClient } from '../client/http.js';
import type { AgentAction, ClaimResponse, CompleteRequest, CompleteResponse } from '../model/protocol.js';
import { failureReport, fitReport } from './report.js';
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
  // A report saved by an older agent may not fit one request: it is cut down here, never sent to fail.
  const fitted = fitReport(p.report);
  if (fitted.dropped) log('warn', 'the job report did not fit in one request; left out of it', { jobId: p.jobId, dropped: fitted.dropped });
  let report: CompleteRequest = fitted.report;
  let fallback = false;
  for (let attempt = 0; ; attempt++) {
    if (signal?.aborted) return { kind: 'aborted' };
    try {
      const res = await client.post<CompleteResponse | undefined>(path, report, { signal });
      const action = res && ACTIONS.includes(res.action) ? res.action : 'continue';
      if (!res || res.action !== action) log('warn', 'the endpoint answered the report without a known action; continuing', { jobId: p.jobId });
      return { kind: 'delivered', action, state: res?.job?.state ?? 'unknown', ...(res?.next && typeof res.next === 'object' ? { next: res.next } : {}) };
    } catch (err) {
      if (signal?.aborted) return { kind: 'aborted' };
      const kind = classify(err);
      const error = errorMessage(err);
      if (kind === 'rejected' && !fallback) {
        log('error', 'the endpoint refused the job report; reporting the job as failed with the refusal', { jobId: p.jobId, error });
        report = failureReport(p.report, `the endpoint refused this job's report: ${error}`);
        fallback = true;
        attempt = -1;
        continue;
      }
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
