/**
 * takt's exit codes, one convention for every command (also in `takt --help` and the README):
 *
 *   0  done;  1  failed (the endpoint refused or something went wrong);  2  bad usage: the command line
 *   itself is wrong (an unknown command or option, a missing or extra argument, a value or a combination
 *   of flags takt cannot act on), and nothing was done;  3  the endpoint cannot be reached;  4  not found;
 *   5  unauthorized or forbidden.  Some commands add their own: `machines wait` 124 (timed out), `run` and
 *   `exercise` 130 (interrupted).
 */
import { TaktError } from '../model/errors.js';

export const EXIT = { ok: 0, failed: 1, usage: 2, network: 3, notFound: 4, unauthorized: 5 } as const;

/** What `takt --help` says of them. */
export const EXIT_CODES_HELP = `

Exit codes:
  0  done
  1  failed: the endpoint refused, or something went wrong
  2  bad usage: an unknown command or option, a missing or extra argument, flags that do not go together; nothing was done
  3  the endpoint cannot be reached
  4  not found
  5  unauthorized or forbidden
  (machines wait adds 124, timed out; run and exercise 130, interrupted)`;

/**
 * A command line takt cannot act on, found before anything was asked of the endpoint: exits 2 (report()
 * in program.ts). A TaktError (`bad_request`), so it is said like every other error.
 */
export class UsageError extends TaktError {
  constructor(message: string, opts: { path?: string } = {}) {
    super('bad_request', message, opts);
    this.name = 'UsageError';
  }
}

/** Runs a check of the command line (a parser of a flag's value, a reference…): a TaktError it throws is bad usage. */
export function usage<T>(check: () => T): T {
  try {
    return check();
  } catch (err) {
    if (err instanceof TaktError && !(err instanceof UsageError)) throw new UsageError(err.message, err.path !== undefined ? { path: err.path } : {});
    throw err;
  }
}
