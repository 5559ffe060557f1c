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
 * `takt-get` and the template print it (strings raw, anything else as JSON), each leaf of an object or
 * list, each line of a multi-line value, its JSON-escaped form and bash's `set -x` quoting of it.
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
    if (/[\r\n]/.test(s)) for (const line of s.split(/\r?\n|\r/)) add(line.trim());
  };
  const walk = (v: unknown, depth: number) => {
    if (v === null || v === undefined || typeof v === 'boolean' || depth > 8) return;
    if (typeof v === 'string') return addString(v);
    if (typeof v === 'number' || typeof v === 'bigint') return add(String(v));
    if (Array.isArray(v)) for (const x of v) walk(x, depth + 1);
    else if (typeof v === 'object') for (const x of Object.values(v)) walk(x, depth + 1);
  };
  for (const v of values) {
    if (v !== null && typeof v === 'object') addString(JSON.stringify(v));
    walk(v, 0);
  }
  return [...out];
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Replaces whole secrets in text; knows which text endings could be the start of one. */
export class Masker {
  private readonly re: RegExp | null;
  private readonly byFirst = new Map<number, string[]>();
  /** The longest secret's length: a carry is always shorter. */
  readonly longest: number;

  constructor(readonly secrets: readonly string[]) {
    const list = [...new Set(secrets)].filter((s) => s.length >= MIN_SECRET_LENGTH);
    // Longest first: at one position the alternation takes the first that matches, i.e. the longest.
    list.sort((a, b) => b.length - a.length || (a < b ? -1 : 1));
    this.re = list.length ? new RegExp(list.map(escapeRe).join('|'), 'g') : null;
    this.longest = list[0]?.length ?? 0;
    for (const s of list) {
      const c = s.charCodeAt(0);
      const l = this.byFirst.get(c);
      if (l) l.push(s);
      else this.byFirst.set(c, [s]);
    }
  }

  get empty(): boolean {
    return this.re === null;
  }

  /** The text with every secret replaced by the mask. */
  mask(text: string): string {
    if (!this.re) return text;
    this.re.lastIndex = 0;
    return text.replace(this.re, MASK);
  }

  /**
   * Masks `text` as part of a stream: returns what may be shown now and the carry to prepend to the
   * stream's next text (a proper prefix of some secret that ends the text, else '').
   */
  maskPart(text: string): { out: string; carry: string } {
    if (!this.re) return { out: text, carry: '' };
    let lastEnd = 0;
    this.re.lastIndex = 0;
    const out = text.replace(this.re, (m: string, offset: number) => {
      lastEnd = offset + m.length;
      return MASK;
    });
    const from = Math.max(lastEnd, text.length - this.longest + 1);
    for (let i = from; i < text.length; i++) {
      const candidates = this.byFirst.get(text.charCodeAt(i));
      if (!candidates) continue;
      const tail = text.slice(i);
      if (candidates.some((s) => s.length > tail.length && s.startsWith(tail))) {
        // The tail holds no whole secret (all matches end at or before lastEnd <= i): it is carried as is.
        return { out: out.slice(0, out.length - tail.length), carry: tail };
      }
    }
    return { out, carry: '' };
  }
}

export interface LogPiece {
  seq: number;
  stream: string;
  data: string;
}

interface StreamState {
  /** The last sequence number masked on this stream, and the carry before and after it. */
  seq: number;
  before: string;
  after: string;
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
        st = { seq: 0, before: '', after: '' };
        job.streams.set(c.stream, st);
      }
      if (c.seq > st.seq) {
        st.before = st.after;
        st.seq = c.seq;
      }
      const { out, carry } = job.masker.maskPart(st.before + c.data);
      st.after = carry;
      return { ...c, data: out };
    });
  }

  /** Ends the job's masking: the carries left, to append after the last chunk of each stream. */
  end(jobId: string): LogFlush[] {
    const job = this.jobs.get(jobId);
    this.jobs.delete(jobId);
    if (!job) return [];
    const out: LogFlush[] = [];
    for (const [stream, st] of job.streams) if (st.after) out.push({ seq: st.seq, stream, data: job.masker.mask(st.after) });
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
  let carry = '';
  for (const t of texts) {
    const r = masker.maskPart(carry + t);
    out.push(r.out);
    carry = r.carry;
  }
  if (out.length) out[out.length - 1] += masker.mask(carry);
  return out;
}
