/**
 * Decodes a byte stream (a remote job's stdout or stderr) into text whose UTF-8 length equals the bytes
 * consumed: valid UTF-8 passes as it is, each byte that is not part of a valid sequence becomes `?`, and
 * a sequence cut at the end of a read waits for the next one. So the byte offset into the remote log file
 * is the sum of the text's UTF-8 lengths — what the endpoint sends and records to reattach after a restart
 * at exactly the byte where it stopped. (TextDecoder's U+FFFD is three bytes for one.)
 */

/** Length of the valid UTF-8 sequence at `i` (1…4), 0 when the bytes there are not one, -1 when it is cut off by the end. */
function sequenceAt(b: Uint8Array, i: number): number {
  const c = b[i]!;
  if (c < 0x80) return 1;
  let len: number;
  let lo = 0x80;
  let hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) len = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c === 0xe0) lo = 0xa0; // no overlong forms
    if (c === 0xed) hi = 0x9f; // no surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c === 0xf0) lo = 0x90;
    if (c === 0xf4) hi = 0x8f; // nothing past U+10FFFF
  } else return 0;
  for (let k = 1; k < len; k++) {
    if (i + k >= b.length) return -1;
    const x = b[i + k]!;
    if (x < (k === 1 ? lo : 0x80) || x > (k === 1 ? hi : 0xbf)) return 0;
  }
  return len;
}

export class ExactUtf8 {
  private carry: Buffer = Buffer.alloc(0);

  /** Text for `bytes` (plus what the last call held back); holds back an incomplete sequence at the end. */
  push(bytes: Buffer): string {
    const b = this.carry.length ? Buffer.concat([this.carry, bytes]) : bytes;
    const out = Buffer.allocUnsafe(b.length);
    let o = 0;
    let i = 0;
    while (i < b.length) {
      const n = sequenceAt(b, i);
      if (n === -1) break;
      if (n === 0) {
        out[o++] = 0x3f; // '?'
        i++;
        continue;
      }
      b.copy(out, o, i, i + n);
      o += n;
      i += n;
    }
    this.carry = Buffer.from(b.subarray(i));
    return out.subarray(0, o).toString('utf8');
  }

  /** What is held back, as `?` each: the stream has ended. */
  end(): string {
    const rest = '?'.repeat(this.carry.length);
    this.carry = Buffer.alloc(0);
    return rest;
  }

  /** Bytes held back (not yet in any text). */
  get pending(): number {
    return this.carry.length;
  }
}
