/**
 * Masking secure values in job logs at the endpoint, before a chunk is stored or served.
 *
 * A job's output arrives as numbered chunks per stream (stdout, stderr, system). A secret may be split
 * across two chunks, so each stream keeps a small carry-over: the end of a chunk that could be the start
 * of a secret is held back and masked together with the next chunk of that stream (or flushed when the
 * job ends). The carry is never longer than the longest secret minus one character.
 *
 * Guarantee (tested as a property): for any split of a stream into chunks, the concatenation of what
 * comes out contains no secret, as long as no secret contains the mask character `*`.
 */
import { MASK } from '../model/secure.js';

/** Shorter values are not masked in logs: masking every "ab" would destroy the log and hide nothing. */
export const MIN_SECRET_LENGTH = 3;

/**
 * The texts a secure value can show up as in a log, each at least MIN_SECRET_LENGTH long: the value as
 * `takt-get` and the template print it (strings raw, a list's items joined as Liquid prints a list,
 * anything else as JSON), each leaf of an object or list, a list's items joined by ' ', ',' or ', ',
 * each line of a multi-line value, its JSON-escaped form, and the shell's quotings of it: `set -x`'s
 * '…'\''…' and $'…' (ANSI-C, for values with control characters), and `printf %q`'s backslashes.
 */
export function secretTexts(values: Iterable<unknown>): string[] {
  const out = new Set<string>();
  const add = (s: string) => {
    if (s.length >= MIN_SECRET_LENGTH) out.add(s);
  };
  const addString = (s: string) => {
    add(s);
    const json = JSON.stringify(s).slice(1, -1);
    if (json !== s) add(json);
    // bash xtrace quotes words with a ' as '…'\''…'.
    if (s.includes("'")) add(s.replace(/'/g, "'\\''"));
    for (const q of shellQuotings(s)) if (q !== s) add(q);
    if (/[\r\n]/.test(s)) for (const line of s.split(/\r?\n|\r/)) add(line.trim());
  };
  const walk = (v: unknown, depth: number) => {
    if (v === null || v === undefined || typeof v === 'boolean' || depth > 8) return;
    if (typeof v === 'string') return addString(v);
    if (typeof v === 'number' || typeof v === 'bigint') return add(String(v));
    if (Array.isArray(v)) {
      // Liquid prints a list as its items joined with nothing between (`{{ list }}`); `| join` uses ' '.
      for (const sep of ['', ' ', ',', ', ']) addString(v.map(liquidText).join(sep));
      for (const x of v) walk(x, depth + 1);
    } else if (typeof v === 'object') for (const x of Object.values(v)) walk(x, depth + 1);
  };
  for (const v of values) {
    if (v !== null && typeof v === 'object') addString(JSON.stringify(v));
    walk(v, 0);
  }
  return [...out];
}

/** A value as Liquid's `{{ }}` prints it (render/template.ts): lists joined, nil as nothing. */
function liquidText(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v === null || v === undefined) return '';
  if (Array.isArray(v)) return v.map(liquidText).join('');
  return String(v);
}

/** bash's C-style escapes in $'…' (lib/sh/strtrans.c, ansic_quote). */
const ANSI_C: Record<string, string> = { '\x1b': '\\E', '\x07': '\\a', '\v': '\\v', '\b': '\\b', '\f': '\\f', '\n': '\\n', '\r': '\\r', '\t': '\\t', '\\': '\\\\', "'": "\\'" };

/** Characters `printf %q` puts a backslash before (lib/sh/shquote.c, sh_backslash_quote). */
const BACKSLASHED = new Set([...' \t\n\'"\\|&;()<>!{}*[?]^$`,']);

/**
 * The inner text of bash's quotings of `s`: $'…' as `set -x` and `printf %q` print a value with a control
 * character (other control characters, and in the C locale each byte of a non-ASCII character, as
 * \NNN octal), and `printf %q`'s backslash form (~ and # escaped only at the start).
 */
function shellQuotings(s: string): string[] {
  const octal = (b: number) => `\\${b.toString(8).padStart(3, '0')}`;
  const ansi = (bytes: boolean) => {
    let r = '';
    for (const ch of s) {
      const c = ch.codePointAt(0)!;
      if (ANSI_C[ch] !== undefined) r += ANSI_C[ch];
      else if (c < 0x20 || c === 0x7f) r += octal(c);
      else if (c > 0x7f && bytes) for (const b of Buffer.from(ch, 'utf8')) r += octal(b);
      else r += ch;
    }
    return r;
  };
  let backslashed = '';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    backslashed += BACKSLASHED.has(ch) || (i === 0 && (ch === '~' || ch === '#')) ? `\\${ch}` : ch;
  }
  // eslint-disable-next-line no-control-regex
  const hasControl = /[\x00-\x1f\x7f]/.test(s);
  // With a control character `printf %q` too switches to $'…'.
  const out = hasControl ? [] : [backslashed];
  if (hasControl || /['\\]/.test(s)) out.push(ansi(false));
  if (/[\u0080-\uffff]/.test(s)) out.push(ansi(true));
  return out;
}

/**
 * An Aho–Corasick automaton over the secrets' UTF-16 code units. Node 0 is the root; a node is the
 * prefix of some secret that leads to it. No regular expression is ever built from secret text: V8
 * refuses a large one and puts its source — the secret — into the error message.
 */
class Automaton {
  /** Length of the node's prefix. */
  readonly depth: Int32Array;
  /** The node of the longest proper suffix of this node's prefix that is a prefix of some secret. */
  readonly fail: Int32Array;
  /** Length of the longest secret that ends this node's prefix (0: none). */
  readonly matchLen: Int32Array;
  /** Length of the longest suffix of this node's prefix that a longer secret could still continue. */
  readonly keep: Int32Array;
  /** The first child (most nodes of a long secret have exactly one): its code unit (-1: none) and node. */
  private readonly oneChar: Int32Array;
  private readonly oneNext: Int32Array;
  /** Further children, keyed node * 65536 + code unit. */
  private readonly more = new Map<number, number>();
  /**
   * The root's children by code unit (0: none, stay at the root). Text that holds no secret keeps the
   * automaton at the root most of the time, and the root has a child per distinct first character: one
   * typed-array read there instead of a Map lookup per code unit.
   */
  readonly rootNext = new Int32Array(65536);
  /** Child lookups done so far (the unit of work; tests bound it by the text's length). */
  steps = 0;

  constructor(secrets: readonly string[]) {
    let total = 1;
    for (const s of secrets) total += s.length;
    this.depth = new Int32Array(total);
    this.fail = new Int32Array(total);
    this.matchLen = new Int32Array(total);
    this.keep = new Int32Array(total);
    this.oneChar = new Int32Array(total).fill(-1);
    this.oneNext = new Int32Array(total);
    const parent = new Int32Array(total);
    const via = new Int32Array(total);
    let n = 1;
    for (const s of secrets) {
      let node = 0;
      for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        let next = this.child(node, c);
        if (next < 0) {
          next = n++;
          this.depth[next] = this.depth[node]! + 1;
          parent[next] = node;
          via[next] = c;
          if (this.oneChar[node] === -1) {
            this.oneChar[node] = c;
            this.oneNext[node] = next;
          } else this.more.set(node * 65536 + c, next);
          if (node === 0) this.rootNext[c] = next;
        }
        node = next;
      }
      this.matchLen[node] = s.length;
    }

    // Failure links need every shallower node's link first: visit nodes by depth (a counting sort).
    const order = byDepth(this.depth, n);
    for (const v of order) {
      if (v === 0) continue;
      const p = parent[v]!;
      const c = via[v]!;
      let f = 0;
      if (p !== 0) {
        for (let g = this.fail[p]!; ; g = this.fail[g]!) {
          const t = this.child(g, c);
          if (t >= 0) {
            f = t;
            break;
          }
          if (g === 0) break;
        }
      }
      this.fail[v] = f;
      if (this.matchLen[v] === 0) this.matchLen[v] = this.matchLen[f]!;
      this.keep[v] = this.oneChar[v] !== -1 ? this.depth[v]! : this.keep[f]!;
    }
    this.steps = 0;
  }

  /** The child of `node` by code unit `c`, or -1. */
  private child(node: number, c: number): number {
    if (this.oneChar[node] === c) return this.oneNext[node]!;
    if (this.oneChar[node] === -1) return -1;
    return this.more.get(node * 65536 + c) ?? -1;
  }

  /** The node after reading `c` in `node` (following failure links: amortised O(1) per code unit). */
  step(node: number, c: number): number {
    for (;;) {
      this.steps++;
      if (node === 0) return this.rootNext[c]!;
      const t = this.child(node, c);
      if (t >= 0) return t;
      node = this.fail[node]!;
    }
  }
}

/** Node ids 0..n-1 ordered by depth, in O(n + max depth). */
function byDepth(depth: Int32Array, n: number): Int32Array {
  let max = 0;
  for (let i = 0; i < n; i++) max = Math.max(max, depth[i]!);
  const start = new Int32Array(max + 2);
  for (let i = 0; i < n; i++) start[depth[i]! + 1]!++;
  for (let d = 1; d <= max + 1; d++) start[d]! += start[d - 1]!;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[start[depth[i]!]!++] = i;
  return out;
}

/**
 * Where a stream's masking stands between two chunks (immutable: a resent chunk is masked again from
 * the same state). `pending` is the raw text held back — it could still be the start of a secret, so
 * it is not final — and `runs` the masked stretches in it as [start, end) offsets; a run that starts
 * at -1 began in text already given out, whose mask is already written. May hold a secret: never show
 * it, only pass it back to the masker (`flush` masks it).
 */
export interface MaskState {
  readonly masker: Masker | null;
  readonly node: number;
  readonly pending: string;
  readonly runs: ReadonlyArray<readonly [number, number]>;
}

/** The state of a stream before its first chunk. */
/**
 * Secrets up to this long are found by native string search first (its worst case grows with the
 * pattern's length); a masker with a longer secret reads every code unit with the automaton.
 */
const SEARCH_MAX_SECRET = 256;

export const START: MaskState = Object.freeze({ masker: null, node: 0, pending: '', runs: Object.freeze([]) });

/**
 * Replaces secrets in text. Every character that is part of an occurrence of a secret is masked; each
 * stretch of such characters (overlapping occurrences merge; adjacent ones do not) becomes one MASK.
 * Linear: each code unit of text costs amortised O(1) automaton steps, whatever the secrets; a chunk of
 * a stream costs in addition a copy of the text held back from the previous chunk (shorter than the
 * longest secret).
 */
export class Masker {
  private readonly ac: Automaton | null;
  /** The secrets masked (distinct, long enough), longest first. */
  private readonly list: readonly string[];
  /** The longest secret's length: what is held back is always shorter. */
  readonly longest: number;

  constructor(readonly secrets: readonly string[]) {
    const list = [...new Set(secrets)].filter((s) => s.length >= MIN_SECRET_LENGTH).sort((a, b) => b.length - a.length);
    this.list = list;
    this.ac = list.length ? new Automaton(list) : null;
    this.longest = list[0]?.length ?? 0;
  }

  get empty(): boolean {
    return this.ac === null;
  }

  /** Automaton steps taken so far by this masker (for tests: work, never time). */
  get steps(): number {
    return this.ac?.steps ?? 0;
  }

  /** The text with every secret replaced by the mask. */
  mask(text: string): string {
    if (!this.ac) return text;
    const { out, state } = this.feed(START, text);
    return out + this.flush(state);
  }

  /**
   * Masks `text` on its own as the start of a stream: what may be shown now, and the raw text held back
   * (the longest end of `text` that a secret could continue; it may hold a masked secret, so pass it to
   * `mask`, never show it). Streams use `feed`, which carries the masking state itself.
   */
  maskPart(text: string): { out: string; carry: string } {
    if (!this.ac) return { out: text, carry: '' };
    const { out, state } = this.feed(START, text);
    return { out, carry: state.pending };
  }

  /**
   * Masks the next `text` of a stream from `state` (of this masker, or of another one for the same
   * stream, e.g. before the secrets were widened: its held-back text is then scanned again). Returns
   * what may be shown now and the state for the stream's next text.
   */
  feed(state: MaskState, text: string): { out: string; state: MaskState } {
    const ac = this.ac;
    if (!ac) return { out: (state.pending ? this.flushForeign(state) : '') + text, state: START };
    if (state.masker !== this && state.masker !== null) state = this.adopt(state);
    const buf = state.pending + text;
    // With nothing masked held back and secrets of ordinary length, native string search finds where
    // secrets occur and the automaton reads only there and over the tail (see `scan`).
    const search = state.runs.length === 0 && this.longest <= SEARCH_MAX_SECRET;
    return this.scan(buf, state.pending.length, state.node, state.runs.map(([s, e]) => [s, e]), search);
  }

  /**
   * Reads `buf` from `from` (the held-back text before it was read already: the automaton stands at
   * `startNode`), adds each occurrence to `runs` and returns what may be shown and the next state.
   * With `search`, text in which no secret starts is skipped at native speed: read from the root at a
   * position j, the automaton finds every occurrence that starts at or after j, and the state at the end
   * depends only on the last `longest - 1` code units. Each secret's next occurrence is searched for
   * forward only (a cached position), so the searches are linear in `buf` per secret.
   */
  private scan(buf: string, from: number, startNode: number, runs: Array<[number, number]>, search: boolean): { out: string; state: MaskState } {
    const ac = this.ac!;
    const list = this.list;
    const n = buf.length;
    const tail = Math.max(from, n - (this.longest - 1));
    // Per secret: the next occurrence found so far (-1: none from here on; -2: not searched yet).
    const next = new Array<number>(list.length).fill(-2);
    const nextOccurrence = (at: number): number => {
      let p = Infinity;
      for (let k = 0; k < list.length; k++) {
        let found = next[k]!;
        if (found !== -1 && found < at) next[k] = found = buf.indexOf(list[k]!, at);
        if (found !== -1 && found < p) p = found;
      }
      return p;
    };
    // The root's transitions inline (most code units of ordinary text are read at the root).
    const root = ac.rootNext;
    const matchLen = ac.matchLen;
    let node = startNode;
    let rootSteps = 0;
    for (let i = from; i < n; i++) {
      if (node === 0 && search) {
        // At the root nothing is in progress: skip to where the next secret occurs, or to the tail.
        const j = Math.min(nextOccurrence(i), tail);
        if (j > i) i = j;
        if (i >= n) break;
      }
      const c = buf.charCodeAt(i);
      if (node === 0) {
        node = root[c]!;
        rootSteps++;
      } else node = ac.step(node, c);
      const len = matchLen[node]!;
      if (len) addRun(runs, i + 1 - len, i + 1);
    }
    ac.steps += rootSteps;
    const final = n - ac.keep[node]!;
    const { out, rest } = emit(buf, runs, final);
    return { out, state: { masker: this, node, pending: buf.slice(final), runs: rest } };
  }

  /** What a stream's state holds back, masked: to write after the stream's last text. */
  flush(state: MaskState): string {
    if (state.masker !== this && state.masker !== null) return this.flushForeign(state);
    return emit(state.pending, state.runs.map(([s, e]) => [s, e]), state.pending.length).out;
  }

  /** Flushes a state of another masker with that masker's runs and this masker's secrets. */
  private flushForeign(state: MaskState): string {
    const own = state.masker!.flush(state);
    return this.ac ? this.mask(own) : own;
  }

  /** A state of another masker, as this masker's: its held-back text scanned again, its runs kept. */
  private adopt(state: MaskState): MaskState {
    const ac = this.ac!;
    const runs: Array<[number, number]> = [];
    let node = 0;
    let r = 0;
    for (let i = 0; i < state.pending.length; i++) {
      node = ac.step(node, state.pending.charCodeAt(i));
      // The old runs, merged in order of their ends with the new ones.
      for (; r < state.runs.length && state.runs[r]![1] <= i + 1; r++) addRun(runs, state.runs[r]![0], state.runs[r]![1]);
      const len = ac.matchLen[node]!;
      if (len) addRun(runs, i + 1 - len, i + 1);
    }
    for (; r < state.runs.length; r++) addRun(runs, state.runs[r]![0], state.runs[r]![1]);
    return { masker: this, node, pending: state.pending, runs };
  }
}

/**
 * Adds the masked stretch [start, end) to `runs` (disjoint, in order; `end` is at least every end in
 * it), merging the stretches it overlaps. Amortised O(1): each stretch is merged away at most once.
 */
function addRun(runs: Array<[number, number]>, start: number, end: number): void {
  for (let last = runs[runs.length - 1]; last && last[1] > start; last = runs[runs.length - 1]) {
    start = Math.min(start, last[0]);
    end = Math.max(end, last[1]);
    runs.pop();
  }
  runs.push([start, end]);
}

/**
 * The text of `buf` before `final`, with each run masked (a run starting at -1 has its mask out
 * already), and the runs left after `final`, as offsets from it.
 */
function emit(buf: string, runs: Array<[number, number]>, final: number): { out: string; rest: Array<[number, number]> } {
  let out = '';
  let at = 0;
  let r = 0;
  for (; r < runs.length && runs[r]![0] < final; r++) {
    const [s, e] = runs[r]!;
    if (s > at) out += buf.slice(at, s);
    if (s >= 0) out += MASK;
    if (e > final) {
      at = final;
      break;
    }
    at = e;
  }
  if (at < final) out += buf.slice(at, final);
  const rest: Array<[number, number]> = [];
  for (; r < runs.length; r++) rest.push([runs[r]![0] < final ? -1 : runs[r]![0] - final, runs[r]![1] - final]);
  return { out, rest };
}

export interface LogPiece {
  seq: number;
  stream: string;
  data: string;
}

interface StreamState {
  /** The last sequence number masked on this stream, and the masking state before and after it. */
  seq: number;
  before: MaskState;
  after: MaskState;
}

interface JobMasking {
  masker: Masker;
  streams: Map<string, StreamState>;
}

/** What is left when a job's log ends: carries to append after the last chunk of their stream. */
export interface LogFlush {
  seq: number;
  stream: string;
  data: string;
}

/**
 * The endpoint's per-job masking state. Chunks of one stream are masked in sequence order with the
 * carry; a chunk sent again with the sequence number last seen is masked again from the same carry, so a
 * resend produces the same text (the store keeps the first); an older chunk arriving late is masked on its
 * own, without carry. State lives in memory: after an endpoint restart a carry (a few characters that
 * could begin a secret) is lost, never shown.
 */
export class LogMasks {
  private readonly jobs = new Map<string, JobMasking>();

  /** Whether the job has masking state (its secrets were given since this endpoint started). */
  has(jobId: string): boolean {
    return this.jobs.has(jobId);
  }

  /** Sets (or widens, keeping carries) the secrets masked in a job's log. */
  begin(jobId: string, secrets: readonly string[]): void {
    const cur = this.jobs.get(jobId);
    if (cur && secrets.every((s) => cur.masker.secrets.includes(s))) return;
    const all = cur ? [...cur.masker.secrets, ...secrets] : [...secrets];
    this.jobs.set(jobId, { masker: new Masker(all), streams: cur?.streams ?? new Map() });
  }

  /** The job's masker (none: nothing to mask). */
  masker(jobId: string): Masker | undefined {
    return this.jobs.get(jobId)?.masker;
  }

  /** Masks chunks of a job's log, in the order given (sequence order from one agent). */
  chunks<C extends LogPiece>(jobId: string, chunks: readonly C[]): C[] {
    const job = this.jobs.get(jobId);
    if (!job || job.masker.empty) return [...chunks];
    return chunks.map((c) => {
      let st = job.streams.get(c.stream);
      if (st && c.seq < st.seq) return { ...c, data: job.masker.mask(c.data) };
      if (!st) {
        st = { seq: 0, before: START, after: START };
        job.streams.set(c.stream, st);
      }
      if (c.seq > st.seq) {
        st.before = st.after;
        st.seq = c.seq;
      }
      const { out, state } = job.masker.feed(st.before, c.data);
      st.after = state;
      return { ...c, data: out };
    });
  }

  /** Ends the job's masking: the carries left, to append after the last chunk of each stream. */
  end(jobId: string): LogFlush[] {
    const job = this.jobs.get(jobId);
    this.jobs.delete(jobId);
    if (!job) return [];
    const out: LogFlush[] = [];
    for (const [stream, st] of job.streams) {
      const data = job.masker.flush(st.after);
      if (data) out.push({ seq: st.seq, stream, data });
    }
    return out;
  }

  /** How many jobs have state (for tests and metrics). */
  get size(): number {
    return this.jobs.size;
  }
}

/** Masks a whole stream at once (for rewriting stored chunks): the chunks' texts masked as one text. */
export function maskStream(masker: Masker, texts: readonly string[]): string[] {
  const out: string[] = [];
  let state = START;
  for (const t of texts) {
    const r = masker.feed(state, t);
    out.push(r.out);
    state = r.state;
  }
  if (out.length) out[out.length - 1] += masker.flush(state);
  return out;
}
