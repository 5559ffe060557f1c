/**
 * Issue 10 §2: the log masker. Table-driven cases for the masking rules and a property: however a
 * stream is cut into chunks, and whatever is resent, what comes out never contains a secret.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LogMasks, Masker, maskStream, secretTexts } from '../src/engine/logmask.js';
import { MASK } from '../src/model/secure.js';

describe('secretTexts: what a secure value can look like in a log', () => {
  const cases: Array<[string, unknown[], string[]]> = [
    ['a string as is', ['hunter2'], ['hunter2']],
    ['a 4-digit PIN (numbers print as digits)', [4821], ['4821']],
    ['too short to mask', ['ab', 7], []],
    ['booleans and null are not secrets in text', [true, null], []],
    ['an object: its JSON (also inside JSON, and as printf %q prints it) and each leaf', [{ user: 'admin', pass: 'p4ss' }], ['{"user":"admin","pass":"p4ss"}', '{\\"user\\":\\"admin\\",\\"pass\\":\\"p4ss\\"}', '\\{\\"user\\":\\"admin\\"\\,\\"pass\\":\\"p4ss\\"\\}', 'admin', 'p4ss']],
    ["set -x quoting of a quote (and printf %q's and $'…''s)", ["it's-me"], ["it's-me", "it'\\''s-me", "it\\'s-me"]],
    ["JSON escaping, $'…' quoting and each line of a multi-line value", ['line-one\n"two"'], ['line-one\n"two"', 'line-one\\n\\"two\\"', 'line-one\\n"two"', 'line-one', '"two"']],
  ];
  it.each(cases)('%s', (_what, values, expected) => {
    expect(secretTexts(values).sort()).toEqual(expected.sort());
  });
});

describe('Masker', () => {
  const cases: Array<[string, string[], string, string]> = [
    ['no secrets: unchanged', [], 'hunter2', 'hunter2'],
    ['one secret, twice', ['hunter2'], 'a hunter2 b hunter2', `a ${MASK} b ${MASK}`],
    ['the longer of two overlapping secrets wins', ['pass', 'password'], 'my password', `my ${MASK}`],
    ['regex characters are literal', ['a.b*c(d)'], 'x a.b*c(d) aXbbc(d)', `x ${MASK} aXbbc(d)`],
    ['adjacent secrets', ['abc', 'xyz'], 'abcxyz', `${MASK}${MASK}`],
  ];
  it.each(cases)('%s', (_what, secrets, text, expected) => {
    expect(new Masker(secrets).mask(text)).toBe(expected);
  });

  const parts: Array<[string, string[], string, string, string]> = [
    ['a text ending in the start of a secret carries it', ['hunter2'], 'pw=hun', 'pw=', 'hun'],
    ['a text ending in a whole secret carries nothing', ['hunter2'], 'pw=hunter2', `pw=${MASK}`, ''],
    ['the longest possible start is carried', ['abcab'], 'xxabca', 'xx', 'abca'],
    ['no carry when nothing could start a secret', ['hunter2'], 'pw=xyz', 'pw=xyz', ''],
  ];
  it.each(parts)('maskPart: %s', (_what, secrets, text, out, carry) => {
    expect(new Masker(secrets).maskPart(text)).toEqual({ out, carry });
  });
});

describe('LogMasks: chunks of a job', () => {
  it('masks a secret split across two chunks of a stream, keeping other streams apart', () => {
    const masks = new LogMasks();
    masks.begin('j1', ['hunter2']);
    const out = masks.chunks('j1', [
      { seq: 1, stream: 'stdout', data: 'pw=hun' },
      { seq: 2, stream: 'stderr', data: 'ter2 is not a split' },
      { seq: 3, stream: 'stdout', data: 'ter2 done' },
    ]);
    expect(out.map((c) => c.data)).toEqual(['pw=', 'ter2 is not a split', `${MASK} done`]);
    expect(masks.end('j1')).toEqual([]);
  });

  it('a resend of the last chunk masks the same way; an old chunk is masked on its own', () => {
    const masks = new LogMasks();
    masks.begin('j1', ['hunter2']);
    const [a] = masks.chunks('j1', [{ seq: 1, stream: 'stdout', data: 'x hun' }]);
    const [b] = masks.chunks('j1', [{ seq: 2, stream: 'stdout', data: 'ter2 y hu' }]);
    const [again] = masks.chunks('j1', [{ seq: 2, stream: 'stdout', data: 'ter2 y hu' }]);
    expect(again).toEqual(b);
    const [late] = masks.chunks('j1', [{ seq: 1, stream: 'stdout', data: 'hunter2 late' }]);
    expect([a!.data, b!.data, late!.data]).toEqual(['x ', `${MASK} y `, `${MASK} late`]);
    // at the end, what was held back goes after seq 2
    expect(masks.end('j1')).toEqual([{ seq: 2, stream: 'stdout', data: 'hu' }]);
    expect(masks.size).toBe(0);
  });

  it('widening the secrets keeps the carries', () => {
    const masks = new LogMasks();
    masks.begin('j1', ['hunter2']);
    masks.chunks('j1', [{ seq: 1, stream: 'stdout', data: 'hun' }]);
    masks.begin('j1', ['s3cret-output']);
    const [c] = masks.chunks('j1', [{ seq: 2, stream: 'stdout', data: 'ter2 s3cret-output' }]);
    expect(c!.data).toBe(`${MASK} ${MASK}`);
  });

  it('a job without secrets passes chunks through untouched', () => {
    const masks = new LogMasks();
    masks.begin('j1', []);
    const chunks = [{ seq: 1, stream: 'stdout', data: 'hello' }];
    expect(masks.chunks('j1', chunks)).toEqual(chunks);
  });
});

describe('property: no secret survives, however the stream is cut', () => {
  // Secrets from a small alphabet so they overlap and share prefixes; never the mask character.
  const alphabet = fc.constantFrom('a', 'b', 'c', '1', '\n', ' ');
  const secret = fc.string({ unit: alphabet, minLength: 3, maxLength: 8 });
  const text = fc.string({ unit: alphabet, maxLength: 200 });

  it('LogMasks over random chunkings and resends', () => {
    fc.assert(
      fc.property(fc.uniqueArray(secret, { minLength: 1, maxLength: 5 }), fc.array(text, { minLength: 1, maxLength: 8 }), fc.array(fc.boolean(), { maxLength: 8 }), (secrets, pieces, resend) => {
        const masks = new LogMasks();
        masks.begin('j', secrets);
        const out: string[] = [];
        pieces.forEach((data, i) => {
          const [c] = masks.chunks('j', [{ seq: i + 1, stream: 'stdout', data }]);
          // A resend masks to the same text (the store keeps the first).
          if (resend[i]) expect(masks.chunks('j', [{ seq: i + 1, stream: 'stdout', data }])[0]!.data).toBe(c!.data);
          out.push(c!.data);
        });
        for (const f of masks.end('j')) out[f.seq - 1] += f.data;
        const joined = out.join('');
        for (const s of secrets) expect(joined).not.toContain(s);
        // Nothing but secrets is lost: unmasking is not possible, but with no secret present the text is intact.
        if (!secrets.some((s) => pieces.join('').includes(s))) expect(joined).toBe(pieces.join(''));
      }),
      { numRuns: 500 },
    );
  });

  it('maskStream (rewriting stored chunks) over random chunkings', () => {
    fc.assert(
      fc.property(fc.uniqueArray(secret, { minLength: 1, maxLength: 5 }), fc.array(text, { minLength: 1, maxLength: 8 }), (secrets, pieces) => {
        const joined = maskStream(new Masker(secrets), pieces).join('');
        for (const s of secrets) expect(joined).not.toContain(s);
        expect(joined).toBe(new Masker(secrets).mask(pieces.join('')));
      }),
      { numRuns: 500 },
    );
  });
});

describe('secretTexts: the shell and Liquid forms (red team, second pass)', () => {
  const cases: Array<[string, unknown, string[]]> = [
    ["set -x / printf %q of a control character: $'…' with \\NNN octal", 'CTL\u0001SECRET-cc3', ['CTL\\001SECRET-cc3']],
    ["$'…' escapes: \\t \\E \\\\ \\' and newline", "a\tb\u001bc\\d'e\nf", ["a\\tb\\Ec\\\\d\\'e\\nf"]],
    ["$'…' in the C locale: a non-ASCII character as its UTF-8 bytes in octal", 'caf\u00e9-pass', ['caf\\303\\251-pass']],
    ['printf %q: specials get a backslash, ~ only at the start', "~it's a (x)~", ["\\~it\\'s\\ a\\ \\(x\\)~"]],
    ['a list as the template prints it (joined) and as | join and lists print it', [12, 34, 56], ['123456', '12 34 56', '12,34,56', '12, 34, 56', '[12,34,56]']],
    ['a nested list is flattened the way Liquid prints it', [['ab', 'cd'], 'ef'], ['abcdef']],
  ];
  it.each(cases)('%s', (_what, value, expected) => {
    const texts = secretTexts([value]);
    for (const e of expected) expect(texts).toContain(e);
  });

  it('each form is masked in a log', () => {
    const m = new Masker(secretTexts(['CTL\u0001SECRET-cc3', [12, 34, 56]]));
    expect(m.mask("+ : $'CTL\\001SECRET-cc3'\nlist: 123456\n")).toBe(`+ : $'${MASK}'\nlist: ${MASK}\n`);
  });
});

describe('Masker: every character of every occurrence is masked', () => {
  const cases: Array<[string, string[], string, string]> = [
    ['overlapping occurrences of one secret merge into one mask', ['aXa'], 'aXaXa!', `${MASK}!`],
    ['a secret overlapping another is masked whole', ['abc', 'cde'], 'abcde', MASK],
    ['a secret inside another', ['password', 'sword'], 'swordpassword', `${MASK}${MASK}`],
    ['a long repetitive secret (V8 refused it as a regular expression)', ['xy'.repeat(20_000)], `v=${'xy'.repeat(20_001)}.`, `v=${MASK}.`],
    ['regex syntax and surrogate pairs are plain text', ['(a+)+$', '🔑key'], 'x(a+)+$ 🔑key', `x${MASK} ${MASK}`],
  ];
  it.each(cases)('%s', (_what, secrets, text, expected) => {
    expect(new Masker(secrets).mask(text)).toBe(expected);
  });

  it('a masker for a 256 KiB repetitive secret is built without an error (no error can carry the value)', () => {
    const secret = Buffer.alloc(196_608).toString('base64');
    expect(() => new Masker(secretTexts([secret]))).not.toThrow();
    expect(new Masker([secret]).mask(`k=${secret}`)).toBe(`k=${MASK}`);
  });
});

describe('property: masking is linear (counted in automaton steps, never in time)', () => {
  // Adversarial shapes: secrets that are runs of one letter, near-matches that fail on the last
  // character, many secrets sharing prefixes. Each code unit costs at most 2 steps, amortised.
  const unit = fc.constantFrom('a', 'a', 'a', 'b');
  const secret = fc.string({ unit, minLength: 3, maxLength: 300 });
  const text = fc.string({ unit, maxLength: 2000 });

  it('Masker.mask, LogMasks.chunks and maskStream take at most 2 steps per character of text', () => {
    fc.assert(
      fc.property(fc.uniqueArray(secret, { minLength: 1, maxLength: 20 }), fc.array(text, { minLength: 1, maxLength: 10 }), (secrets, pieces) => {
        const total = pieces.reduce((n, p) => n + p.length, 0);
        const m = new Masker(secrets);
        m.mask(pieces.join(''));
        expect(m.steps).toBeLessThanOrEqual(2 * total);

        const s = new Masker(secrets);
        maskStream(s, pieces);
        expect(s.steps).toBeLessThanOrEqual(2 * total);

        const masks = new LogMasks();
        masks.begin('j', secrets);
        masks.chunks('j', pieces.map((data, i) => ({ seq: i + 1, stream: 'stdout', data })));
        expect(masks.masker('j')!.steps).toBeLessThanOrEqual(2 * total);
      }),
      { numRuns: 100 },
    );
  });

  it('one-character chunks of a near-match of a 20,000-character secret: linear, the held-back text is not scanned again', () => {
    const N = 20_000;
    const masks = new LogMasks();
    masks.begin('j', ['a'.repeat(N)]);
    const data = `${'a'.repeat(N - 1)}b`;
    const out = masks.chunks('j', [...data].map((c, i) => ({ seq: i + 1, stream: 'stdout', data: c })));
    expect(out.map((c) => c.data).join('')).toBe(data);
    expect(masks.masker('j')!.steps).toBeLessThanOrEqual(2 * N);
  });
});
