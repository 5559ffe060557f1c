import { TaktError } from './errors.js';

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const units: Record<string, number> = { ms: 1, s: SECOND, m: MINUTE, h: HOUR, d: DAY };

/**
 * The longest delay a Node.js timer can hold: setTimeout/setInterval fire at once (after 1 ms) for
 * anything above 2^31-1 ms (~24.8 days), so a duration that drives a timer must stay at or below it.
 */
export const TIMER_MAX_MS = 2 ** 31 - 1;

/** The range a duration may take, in milliseconds (inclusive). */
export interface DurationRange {
  min: number;
  max: number;
}

/**
 * The allowed range of every duration a user can give, named where it is used, so lint, the API and the
 * CLI refuse the same values with the same message. Timer-driven durations stay within TIMER_MAX_MS.
 */
export const DURATION_RANGES = {
  /** A task's `timeout`: the agent's kill timer. `0` would kill every run at once. */
  taskTimeout: { min: SECOND, max: 24 * DAY },
  /** `takt serve --lease`: a running job's silence allowance (the sweeper runs every lease/4). */
  lease: { min: SECOND, max: DAY },
  /** `takt serve --churn-check`: the churn policy's interval timer (tests check every 500ms). */
  churnCheck: { min: 100, max: 24 * DAY },
  /** A churn policy's `maxAge`: compared with machine ages at each check, no timer. */
  maxAge: { min: SECOND, max: 3650 * DAY },
  /** CLI `--timeout` of commands that wait (a deadline, polled). */
  wait: { min: SECOND, max: 24 * DAY },
  /** `--since` windows of reports: a date in the past. */
  window: { min: SECOND, max: 3650 * DAY },
  /** `takt serve --agent-gone-after`: a quiet machine's allowance before it shows disconnected. */
  agentGoneAfter: { min: SECOND, max: DAY },
  /** `takt serve --request-timeout`: the server's per-request receive deadline (slow senders). */
  requestTimeout: { min: SECOND, max: HOUR },
  /** A join token's lifetime (`takt machines join --expires`): short, since it can create a machine. */
  joinExpiry: { min: MINUTE, max: 7 * DAY },
  /** `takt serve --boot-timeout`: how long a powered-on machine may take to show up on the boot services (a timer). */
  bootTimeout: { min: SECOND, max: DAY },
  /** Agent chaos delays (test tool): timers, and 0 means none. */
  chaos: { min: 0, max: TIMER_MAX_MS },
} as const satisfies Record<string, DurationRange>;

/**
 * Parses `500ms`, `30s`, `5m`, `2h`, `1d` or a bare number of seconds into whole milliseconds.
 * With `range`, a value outside it is refused with the allowed range; without, any non-negative value
 * goes. A value that is not a whole number of milliseconds (`0.5ms`) is refused rather than rounded, so
 * every duration accepted works exactly as written.
 * @throws TaktError('bad_request') naming `what`.
 */
export function parseDuration(text: string | number, what = 'duration', range?: DurationRange): number {
  let ms: number;
  if (typeof text === 'number') {
    if (!Number.isFinite(text) || text < 0) throw new TaktError('bad_request', `${what} must be a non-negative number of seconds${rangeHint(range)}`);
    ms = text * SECOND;
  } else {
    const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(text);
    if (!m) throw new TaktError('bad_request', `${what} '${text}' is not a duration; use e.g. 500ms, 30s, 5m, 2h, 1d${rangeHint(range)}`);
    ms = Number(m[1]) * units[m[2] ?? 's']!;
  }
  const whole = Math.round(ms);
  // Decimal fractions are not exact in binary (1.1 * 1000 = 1100.0000000000002): allow that much.
  if (Math.abs(ms - whole) > 1e-6 * Math.max(1, ms)) {
    throw new TaktError('bad_request', `${what} ${JSON.stringify(text)} is not a whole number of milliseconds`);
  }
  if (!Number.isSafeInteger(whole) || (range && (whole < range.min || whole > range.max))) {
    throw new TaktError('bad_request', `${what} ${JSON.stringify(text)} is out of range${rangeHint(range) || ': too long'}`);
  }
  return whole;
}

function rangeHint(range: DurationRange | undefined): string {
  return range ? `: allowed from ${formatExact(range.min)} to ${formatExact(range.max)}` : '';
}

/** The largest unit that states `ms` exactly: 86400000 → `1d`, 2147483647 → `2147483647ms`. */
export function formatExact(ms: number): string {
  if (ms === 0) return '0s';
  for (const [unit, size] of [['d', DAY], ['h', HOUR], ['m', MINUTE], ['s', SECOND]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)}s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)}m${Math.round((ms % 60_000) / 1000)}s`;
  return `${Math.floor(ms / 3_600_000)}h${Math.round((ms % 3_600_000) / 60_000)}m`;
}
