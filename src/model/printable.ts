/**
 * Text from machines and scripts (job output, reasons, names, values) made safe to show a person: a
 * terminal obeys control characters in what it prints, so a job that writes `ESC ] 0 ; … BEL` would set
 * the operator's window title, `ESC [ 2 J` clear their screen, a bare CR overwrite a line. Pure.
 */

/**
 * C0 and C1 control characters except newline and tab, and the Unicode format characters that reorder
 * or break what a terminal shows (bidi embeddings, overrides and isolates; line and paragraph separators).
 */
// eslint-disable-next-line no-control-regex -- finding control characters is the point
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/** `text` with control characters shown as `\uXXXX` escapes (`\u001b` for ESC); newline and tab kept. */
export function printable(text: string): string {
  return text.replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
