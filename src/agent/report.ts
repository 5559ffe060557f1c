/**
 * A job's report, sized as it is sent. The endpoint takes requests up to MAX_REQUEST_BYTES of JSON; a
 * report must fit whatever its values hold, and a report that does not fit (or that the endpoint refuses
 * as such) is never dropped: it becomes a minimal failure report whose error says what was left out and
 * why, so the job ends failed with that reason instead of being lost. Pure functions.
 */
import { MAX_ERROR_CHARS, MAX_REQUEST_BYTES, encodedBytes, type CompleteRequest } from '../model/protocol.js';

/** Log output a completion may carry (the rest is posted first), as sent. */
export const MAX_LOG_TAIL_BYTES = 64 * 1024;
/** Room kept free in every request for what JSON framing and a proxy's rounding may add. */
const SLACK_BYTES = 4 * 1024;
/** Names listed at most; the rest are counted. */
const LISTED = 5;

/** How many bytes (as sent) of log the completion `report` can still carry. */
export function tailBudget(report: CompleteRequest, limit = MAX_REQUEST_BYTES): number {
  return Math.max(0, Math.min(MAX_LOG_TAIL_BYTES, limit - SLACK_BYTES - encodedBytes(report)));
}

/** The error text cut to what the endpoint accepts. */
export function boundedError(text: string): string {
  return text.length > MAX_ERROR_CHARS ? `${text.slice(0, MAX_ERROR_CHARS - 1)}…` : text;
}

/** `name (N bytes as sent)` for each output, the largest first. */
function outputSizes(outputs: Record<string, string>): string {
  const sized = Object.entries(outputs)
    .map(([name, value]) => ({ name, size: encodedBytes(value) }))
    .sort((a, b) => b.size - a.size);
  const shown = sized.slice(0, LISTED).map((o) => `${o.name} (${o.size} bytes as sent)`).join(', ');
  return sized.length > LISTED ? `${shown} and ${sized.length - LISTED} more` : shown;
}

/**
 * The report that replaces one the endpoint cannot take: the exit status stays, the outputs go, and the
 * error says why and names them. `why`: what was wrong with the report (too large, refused with …).
 */
export function failureReport(report: CompleteRequest, why: string): CompleteRequest {
  const names = Object.keys(report.outputs);
  const lost = names.length ? `; outputs not reported: ${outputSizes(report.outputs)}` : '';
  const earlier = report.error ? `; before that: ${report.error}` : '';
  return {
    exitCode: report.exitCode,
    outputs: {},
    ...(report.timedOut ? { timedOut: true } : {}),
    error: boundedError(`${why}${lost}${earlier}`),
    ...(report.claim !== undefined ? { claim: report.claim } : {}),
  };
}

/**
 * `report` if it fits in `limit` bytes as sent; else without its log tail; else a failure report that
 * names what did not fit. `dropped`: what was left out, for the agent's own log.
 */
export function fitReport(report: CompleteRequest, limit = MAX_REQUEST_BYTES): { report: CompleteRequest; dropped: string | null } {
  const size = encodedBytes(report);
  if (size <= limit - SLACK_BYTES) return { report, dropped: null };
  if (report.log?.length) {
    const { log: _log, ...bare } = report;
    if (encodedBytes(bare) <= limit - SLACK_BYTES) return { report: bare, dropped: `the log tail (${size - encodedBytes(bare)} bytes as sent)` };
  }
  const why = `the job's report was ${size} bytes as sent, over the endpoint's limit of ${limit - SLACK_BYTES}`;
  return { report: failureReport(report, why), dropped: 'the outputs and the log tail' };
}
