/**
 * How this process shows things: the output format names, the table view set once from the global options,
 * and the escaping of endpoint text for a terminal. Apart from output.ts (tables, JSON, YAML) so that what
 * every command needs before it runs loads without the YAML library: `takt agent` never prints YAML
 * (program.ts `only`).
 */
import { printable } from '../model/printable.js';

/** The format a command renders in: `wide` and `name` are `table` with a different view (see `setView`). */
export type Format = 'table' | 'json' | 'yaml';
/** What `-o` accepts. */
export const OUTPUT_FORMATS = ['table', 'wide', 'name', 'json', 'yaml'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/**
 * How tables are drawn in this process. The global options (`-o wide|name`, `--no-headers`) and the
 * command being run are known once, before any command's action, so they are set here once (main.ts)
 * instead of being threaded through every command: each command keeps calling `print` and `renderTable`.
 */
export interface View {
  /** `-o wide`: also the columns marked `wide`. */
  wide: boolean;
  /** `-o name`: `print` writes `resource/name` per object instead of the table. */
  name: boolean;
  /** `--no-headers` clears it. */
  headers: boolean;
  /** The resource `-o name` prefixes, e.g. `machines` (the top-level command, set by main.ts). */
  resource: string;
  /** Terminal width tables fit into; undefined: no limit (output to a pipe or file). */
  width: number | undefined;
  /** Standard output is a terminal: a cell with several lines may then take several lines (see `renderTable`). */
  tty: boolean;
}

/** The one view of this process (read by output.ts; changed only through `setView`). */
export const view: View = { wide: false, name: false, headers: true, resource: '', width: terminalWidth(), tty: process.stdout.isTTY === true };

/** Sets how tables are drawn (main.ts, from the global options, before the command's action). */
export function setView(v: Partial<View>): void {
  Object.assign(view, v);
}

/** The width to fit tables into: the terminal's, or `$COLUMNS` when set; none when piped. */
function terminalWidth(): number | undefined {
  if (process.stdout.isTTY && process.stdout.columns) return process.stdout.columns;
  const env = Number(process.env.COLUMNS);
  return Number.isInteger(env) && env > 0 ? env : undefined;
}

/**
 * Text from the endpoint (names, reasons, job output, values) as it goes to `stream`. On a terminal,
 * control characters are shown as `\u001b`-style escapes (newline and tab kept, CRLF shown as a newline)
 * so a machine or a script cannot drive the operator's terminal; piped or redirected, it is byte for byte.
 */
export function forStream(stream: { isTTY?: boolean }, text: string): string {
  return stream.isTTY ? printable(text.replace(/\r\n/g, '\n')) : text;
}

/** `forStream` for standard output: wrap every piece of endpoint text a table or message shows. */
export const shown = (text: string): string => forStream(process.stdout, text);
/** `forStream` for standard error. */
export const shownErr = (text: string): string => forStream(process.stderr, text);

