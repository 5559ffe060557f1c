/**
 * JSON Schema `format`s on RE2. ajv-formats checks most formats with JavaScript regular expressions,
 * and a param schema may name any of them for a value a caller sends, so each must run in linear time:
 * `url`'s regex is quadratic in JavaScript (`http://` + 100,000 ':' took ~5 s of event loop).
 * Every regex format RE2 can express runs on RE2 with the same pattern; `url`'s lookaheads (they refuse
 * private IPv4 hosts) become a check of the captured host; `regex` means an RE2 pattern, the dialect
 * takt runs. The other formats are functions of bounded cost, kept as ajv-formats has them.
 */
import type { Ajv, Format } from 'ajv';
import { fixedRe2, re2Escapes, userRegexProblem } from './regex.js';
import { RE2JS } from 're2js';

/** JavaScript's `\s` as an RE2 class body (RE2's `\s` is ASCII only). */
const JS_SPACE = '\\t\\n\\x{0b}\\f\\r \\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}\\x{feff}';

/** A JavaScript regex source in RE2 syntax: `\u{..}` escapes and JavaScript's (Unicode) `\s`, `\S`. */
function toRe2(source: string): string {
  return re2Escapes(source)
    .replace(/\[\^\\s\]/g, `[^${JS_SPACE}]`)
    .replace(/\\S/g, `[^${JS_SPACE}]`)
    .replace(/\\s/g, `[${JS_SPACE}]`);
}

/** The private-range lookaheads of ajv-formats' `url`, applied to the IPv4 host alone. */
const PRIVATE_IPV4 = /^(?:(?:10|127)(?:\.\d{1,3}){3}|(?:169\.254|192\.168)(?:\.\d{1,3}){2}|172\.(?:1[6-9]|2\d|3[0-1])(?:\.\d{1,3}){2})/;

const URL_LOOKAHEADS = String.raw`(?!(?:10|127)(?:\.\d{1,3}){3})(?!(?:169\.254|192\.168)(?:\.\d{1,3}){2})(?!172\.(?:1[6-9]|2\d|3[0-1])(?:\.\d{1,3}){2})`;

/** ajv-formats' `url` without lookaround: the IPv4 host is captured and checked on its own (at most 15 characters). */
function urlFormat(re: RegExp): (s: string) => boolean {
  const at = re.source.indexOf(URL_LOOKAHEADS);
  const rest = re.source.slice(at + URL_LOOKAHEADS.length);
  // The IPv4 alternative runs from after the lookaheads to the `|` before the host-name alternative.
  const bar = rest.indexOf('|(?:(?:[a-z0-9');
  if (at < 0 || bar < 0) throw new Error('ajv-formats url regex changed: review src/model/formats.ts');
  const source = toRe2(`${re.source.slice(0, at)}(${rest.slice(0, bar)})${rest.slice(bar)}`);
  const compiled = RE2JS.compile(source, RE2JS.CASE_INSENSITIVE);
  return (s) => {
    // The DFA answers most strings; captures (slower, still linear) only for a URL that matched.
    if (!compiled.test(s)) return false;
    const ip = compiled.exec(s)?.[1] as string | undefined;
    return ip === undefined || !PRIVATE_IPV4.test(ip);
  };
}

/** Replaces `ajv`'s regex formats (added by ajv-formats) by RE2 equivalents; see the module comment. */
export function useRe2Formats(ajv: Ajv): void {
  for (const [name, format] of Object.entries(ajv.formats) as Array<[string, Format | undefined]>) {
    if (!(format instanceof RegExp)) continue;
    if (name === 'url') {
      ajv.addFormat(name, urlFormat(format));
      continue;
    }
    try {
      ajv.addFormat(name, fixedRe2(toRe2(format.source), format.flags));
    } catch {
      // Lookaround RE2 cannot express: `duration` and `hostname`, both linear as written (no nested
      // unbounded repetition); they stay native. A new one fails the formats unit test.
      if (name !== 'duration' && name !== 'hostname') throw new Error(`format '${name}' has no RE2 form: review src/model/formats.ts`);
    }
  }
  ajv.addFormat('regex', (s: string) => userRegexProblem(s) === null);
}
