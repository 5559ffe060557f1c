/**
 * A simulated agent: the real agent protocol over real HTTP (claim, then complete with the log's end
 * asking for the next job, docs/agent.md "Exactly-once results"), with the machine's own token, but no process: each job "runs" instantly and
 * succeeds. Thousands of them share one Node process as async loops.
 */
import { ApiClient } from '../../src/client/http.js';
import type { ClaimedJob, ClaimResponse, CompleteRequest, CompleteResponse } from '../../src/model/protocol.js';
import type { Latencies } from './latency.js';
import type { Semaphore } from './semaphore.js';

export interface SimAgentOptions {
  endpoint: string;
  machineId: string;
  token: string;
  /** Jobs to run before stopping: the pipeline's length (a real agent would go on long-polling). */
  jobs: number;
  latencies: Latencies;
  /** Caps the requests on the wire across all agents; time spent waiting for it is not latency. */
  gate: Semaphore;
  onComplete: () => void;
  /** Called after each completed job, awaited before the next one (the fleet bench's operator reads). */
  afterComplete?: (jobId: string) => Promise<void>;
  /** Stop (between jobs) once this aborts: the bench's time budget is spent. */
  signal?: AbortSignal;
}

export async function runSimAgent(o: SimAgentOptions): Promise<void> {
  const api = new ApiClient({ endpoint: o.endpoint, token: o.token, timeoutMs: 120_000 });
  const call = <T>(kind: string, fn: () => Promise<T>) => o.gate.run(() => o.latencies.time(kind, fn));
  const machine = encodeURIComponent(o.machineId);
  let next: ClaimedJob | null = null;
  for (let done = 0; done < o.jobs && !o.signal?.aborted; ) {
    if (!next) {
      // wait=25 as the real agent asks; a machine with work is answered at once.
      const claim = await call('claim', () => api.post<ClaimResponse>(`/machines/${machine}/claim`, {}, { query: { wait: 25 }, timeoutMs: 120_000 }));
      if (!claim.job) {
        if (claim.machine.state !== 'running') throw new Error(`machine ${o.machineId} is ${claim.machine.state} after ${done} jobs${claim.machine.reason ? `: ${claim.machine.reason}` : ''}`);
        continue;
      }
      next = claim.job;
    }
    const job: ClaimedJob = next;
    // As the real agent does: the log's end rides in the completion, which asks for the next job.
    const report: CompleteRequest = { exitCode: 0, outputs: {}, log: [{ seq: 1, stream: 'stdout', data: `simulated ${job.task}\n` }], claim: true };
    const res: CompleteResponse = await call('complete', () => api.post<CompleteResponse>(`/jobs/${encodeURIComponent(job.id)}/complete`, report));
    if (res.job.state !== 'succeeded') throw new Error(`job ${job.id} ended ${res.job.state}`);
    next = res.next?.job ?? null;
    done++;
    o.onComplete();
    if (o.afterComplete) await o.afterComplete(job.id);
  }
}
