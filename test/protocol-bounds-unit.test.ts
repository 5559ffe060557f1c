/**
 * The pure parts of the agent protocol's bounds (issue 10 § 4): the per-job log bound, which outputs a
 * completion may set, byte sizes, fitting a report into one request; and the agent's delivery when the
 * endpoint refuses a report (a failure report goes instead, once: never a loop, never a silent drop).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { deliverReport } from '../src/agent/deliver.js';
import { LogBatcher } from '../src/agent/logs.js';
import { MAX_LOG_TAIL_BYTES, failureReport, fitReport, tailBudget } from '../src/agent/report.js';
import { ApiClient } from '../src/client/http.js';
import { afterChunk, judgeChunk, truncationMarker, type LogLimits, type LogTally } from '../src/engine/logcap.js';
import { printable, refusedOutputs, shownName } from '../src/engine/outputs.js';
import { MAX_REQUEST_BYTES, encodedBytes, type CompleteRequest, type LogRequest } from '../src/model/protocol.js';
import { parseByteSize } from '../src/model/size.js';

const limits: LogLimits = { maxBytes: 100, maxChunks: 5 };
const tally = (bytes: number, chunks: number, truncated = false): LogTally => ({ bytes, chunks, truncated });

describe('log bound: judgeChunk / afterChunk', () => {
  it.each([
    ['fits', tally(0, 0), 100, 'store'],
    ['fits exactly', tally(60, 1), 40, 'store'],
    ['one byte over', tally(60, 1), 41, 'truncate'],
    ['a single chunk over the bound', tally(0, 0), 101, 'truncate'],
    ['the last row the chunk bound allows is the marker', tally(10, 4), 1, 'truncate'],
    ['already cut', tally(100, 3, true), 1, 'drop'],
  ] as const)('%s', (_what, t, bytes, kind) => {
    expect(judgeChunk(t, bytes, limits).kind).toBe(kind);
  });

  it('names the bound it hit', () => {
    expect(judgeChunk(tally(0, 0), 101, limits)).toEqual({ kind: 'truncate', marker: truncationMarker(limits, 'bytes') });
    expect(truncationMarker(limits, 'bytes')).toBe("takt: this job's log reached its limit of 100 bytes (takt serve --max-log-bytes); the rest of its output was not stored\n");
    expect(truncationMarker(limits, 'chunks')).toBe("takt: this job's log reached its limit of 5 chunks; the rest of its output was not stored\n");
  });

  it.each([
    ['a stored chunk counts', tally(10, 1), { kind: 'store' } as const, 5, true, tally(15, 2)],
    ['a resend (not inserted) counts nothing', tally(10, 1), { kind: 'store' } as const, 5, false, tally(10, 1)],
    ['the marker counts and cuts', tally(10, 1), { kind: 'truncate', marker: 'm\n' } as const, 500, true, tally(12, 2, true)],
    ['a marker that hit a stored seq cuts nothing', tally(10, 1), { kind: 'truncate', marker: 'm\n' } as const, 500, false, tally(10, 1)],
    ['a dropped chunk changes nothing', tally(10, 1, true), { kind: 'drop' } as const, 5, false, tally(10, 1, true)],
  ])('%s', (_what, t, verdict, bytes, inserted, after) => {
    expect(afterChunk(t, verdict, bytes, inserted)).toEqual(after);
  });
});

describe('outputs a completion may set: refusedOutputs', () => {
  const declared = { count: { type: 'integer' }, ip: { type: 'string' } };
  it.each([
    ['declared ones', { count: '3', ip: 'x' }, null],
    ['none', {}, null],
    ['an undeclared one', { count: '3', extra: '' }, "it set an output its task does not declare: 'extra' (it declares 'count', 'ip'; declare outputs under 'outputs:' in the task)"],
    ['a reserved one', { machine: '' }, "it set an output its task does not declare: 'machine' (it declares 'count', 'ip'; declare outputs under 'outputs:' in the task)"],
    ['an Object.prototype member', { constructor: '', toString: '' }, `it set 2 outputs its task does not declare: 'constructor', "toString" (it declares 'count', 'ip'; declare outputs under 'outputs:' in the task)`],
    ['an odd name, escaped and cut', { ['\u0007'.repeat(50)]: '' }, `it set an output its task does not declare: "${'\\u0007'.repeat(40)}"… (it declares 'count', 'ip'; declare outputs under 'outputs:' in the task)`],
    ['a value too large as sent', { ip: '\u0001'.repeat(50_000) }, "its output 'ip' is 300002 bytes as sent (JSON), over the limit of 262144 bytes per output"],
  ])('%s', (_what, raw, problem) => {
    expect(refusedOutputs(raw as Record<string, string>, declared)).toBe(problem);
  });

  it('values too large together', () => {
    const four = { a: {}, b: {}, c: {}, d: {} };
    const raw = { a: 'a'.repeat(200_000), b: 'b'.repeat(200_000), c: '\u0001'.repeat(40_000), d: 'd'.repeat(200_000) };
    expect(refusedOutputs(raw, four)).toBe('its outputs are 840008 bytes as sent (JSON), over the limit of 786432 bytes in all');
  });

  it('a task that declares nothing accepts nothing', () => {
    expect(refusedOutputs({ a: '1' }, {})).toMatch(/does not declare: 'a' \(it declares none;/);
  });

  it.each([
    ['plain text', 'plain text'],
    ['lines\n\tand tabs', 'lines\n\tand tabs'],
    ['\u001b[2Jcleared', '\\u001b[2Jcleared'],
    ['bell\u0007 del\u007f c1\u009b', 'bell\\u0007 del\\u007f c1\\u009b'],
  ])('printable(%j) escapes terminal controls', (text, shown) => {
    expect(printable(text)).toBe(shown);
  });

  it('shownName quotes plain names and escapes the rest', () => {
    expect(shownName('count')).toBe("'count'");
    expect(shownName('a\nb')).toBe('"a\\nb"');
  });
});

describe('parseByteSize', () => {
  it.each([
    ['67108864', 67_108_864],
    ['64MiB', 64 * 1024 ** 2],
    ['64M', 64 * 1024 ** 2],
    ['64MB', 64_000_000],
    ['512 KiB', 512 * 1024],
    ['1gib', 1024 ** 3],
    ['1.5KiB', 1536],
  ])('%s = %i', (text, bytes) => {
    expect(parseByteSize(text)).toBe(bytes);
  });
  it.each(['', '0', '-1', 'lots', '64 parsecs', '1e3', '99999999999999999999'])('%j is refused', (text) => {
    expect(() => parseByteSize(text, '--max-log-bytes')).toThrow(/--max-log-bytes '.*' is not a size in bytes/);
  });
});

describe('a report sized as sent', () => {
  const chunk = (seq: number, data: string): LogRequest => ({ seq, stream: 'stdout', data });

  it('the log tail gets only the room the report leaves, as sent', () => {
    expect(tailBudget({ exitCode: 0, outputs: {} })).toBe(MAX_LOG_TAIL_BYTES);
    const big: CompleteRequest = { exitCode: 0, outputs: { a: '\u0001'.repeat(170_000) } };
    expect(tailBudget(big)).toBe(MAX_REQUEST_BYTES - 4096 - encodedBytes(big));
    expect(tailBudget({ exitCode: 0, outputs: { a: '\u0001'.repeat(180_000) } })).toBe(0);
  });

  it('a report that fits is sent as it is', () => {
    const r: CompleteRequest = { exitCode: 0, outputs: { a: 'x' }, log: [chunk(1, 'hi')], claim: true };
    expect(fitReport(r)).toEqual({ report: r, dropped: null });
  });

  it('one that fits only without its tail loses the tail', () => {
    const r: CompleteRequest = { exitCode: 0, outputs: { a: 'x'.repeat(700_000) }, log: [chunk(1, '\u0001'.repeat(60_000))] };
    const { report, dropped } = fitReport(r);
    expect(report).toEqual({ exitCode: 0, outputs: r.outputs });
    expect(dropped).toMatch(/^the log tail \(\d+ bytes as sent\)$/);
  });

  it('one that does not fit at all becomes a failure report naming each output and its size', () => {
    const r: CompleteRequest = { exitCode: 0, outputs: { blob: '\u0001'.repeat(200_000), small: 'ok' }, claim: true };
    const { report } = fitReport(r);
    expect(report).toEqual({
      exitCode: 0,
      outputs: {},
      error: `the job's report was ${encodedBytes(r)} bytes as sent, over the endpoint's limit of ${MAX_REQUEST_BYTES - 4096}; outputs not reported: blob (1200002 bytes as sent), small (4 bytes as sent)`,
      claim: true,
    });
    expect(encodedBytes(report)).toBeLessThan(5000);
  });

  it('a failure report keeps the exit status and any earlier error, within the error bound', () => {
    const r = failureReport({ exitCode: 3, timedOut: true, outputs: {}, error: 'e'.repeat(5000) }, 'refused');
    expect(r).toMatchObject({ exitCode: 3, timedOut: true, outputs: {} });
    expect(r.error!.startsWith('refused; before that: eee')).toBe(true);
    expect(r.error!.length).toBe(4096);
  });

  it('the batcher stops sending once the endpoint says the log is cut', async () => {
    const posted: number[] = [];
    const b = new LogBatcher({ post: async (c) => (posted.push(c.seq), c.seq === 2 ? { logCut: true } : undefined), flushMs: 60_000, maxChunkBytes: 16 });
    b.push('stdout', 'x'.repeat(16 * 5));
    const { stats, tail } = await b.closeWithTail(1000, 0);
    expect(posted).toEqual([1, 2]);
    expect(tail).toEqual([]);
    expect(stats).toMatchObject({ cut: true, chunksSent: 2, bytesDropped: 48 });
  });

  it('the batcher hands back a tail only if it fits as sent', async () => {
    const make = () => new LogBatcher({ post: async () => {}, flushMs: 60_000 });
    const plain = make();
    plain.push('stdout', 'a'.repeat(10_000));
    expect((await plain.closeWithTail(1000, 16 * 1024)).tail).toHaveLength(1);
    // 10,000 control bytes are 60,000 bytes of JSON: over a 16 KiB budget, so they are posted instead
    const posted: LogRequest[] = [];
    const control = new LogBatcher({ post: async (c) => void posted.push(c), flushMs: 60_000 });
    control.push('stdout', '\u0001'.repeat(10_000));
    expect((await control.closeWithTail(1000, 16 * 1024)).tail).toEqual([]);
    expect(posted.map((c) => c.data.length)).toEqual([10_000]);
  });
});

describe('delivering a report the endpoint refuses', () => {
  let server: Server | undefined;
  afterEach(() => new Promise<void>((r) => (server ? server.close(() => r()) : r())));

  /** A stand-in endpoint: `answer` gets each completion's body. */
  async function endpoint(answer: (body: CompleteRequest) => { status: number; body: unknown }) {
    const seen: CompleteRequest[] = [];
    server = createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (d: Buffer) => parts.push(d));
      req.on('end', () => {
        const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as CompleteRequest;
        seen.push(body);
        const a = answer(body);
        res.writeHead(a.status, { 'content-type': 'application/json' }).end(JSON.stringify(a.body));
      });
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const client = new ApiClient({ endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, token: 'tkm.m-1.x' });
    return { client, seen };
  }
  const tooLarge = { status: 413, body: { error: { code: 'too_large', message: 'request body is too large (limit 1048576 bytes)' } } };
  const ok = { status: 200, body: { job: { id: 'j-1', state: 'failed' }, action: 'continue' } };

  it('a 413 is answered with a failure report naming the outputs, which is delivered', async () => {
    const { client, seen } = await endpoint((b) => (Object.keys(b.outputs).length ? tooLarge : ok));
    const logs: string[] = [];
    const report: CompleteRequest = { exitCode: 0, outputs: { blob: 'x'.repeat(1000) }, claim: true };
    const d = await deliverReport(client, { jobId: 'j-1', report, endedAt: 'now' }, { log: (_l, msg) => logs.push(msg), backoff: () => 1 });
    expect(d).toMatchObject({ kind: 'delivered', state: 'failed' });
    expect(seen).toHaveLength(2);
    expect(seen[1]).toEqual({
      exitCode: 0,
      outputs: {},
      error: "the endpoint refused this job's report: request body is too large (limit 1048576 bytes); outputs not reported: blob (1002 bytes as sent)",
      claim: true,
    });
    expect(logs).toContain('the endpoint refused the job report; reporting the job as failed with the refusal');
    client.close();
  });

  it('a failure report that is refused too is dropped with a log line: one fallback, no loop', async () => {
    const { client, seen } = await endpoint(() => ({ status: 422, body: { error: { code: 'invalid', message: '/exitCode must be <= 255' } } }));
    const logs: string[] = [];
    const d = await deliverReport(client, { jobId: 'j-1', report: { exitCode: 300, outputs: {} }, endedAt: 'now' }, { log: (_l, msg) => logs.push(msg), backoff: () => 1 });
    expect(d).toEqual({ kind: 'dropped', reason: '/exitCode must be <= 255' });
    expect(seen).toHaveLength(2);
    expect(logs).toEqual(['the endpoint refused the job report; reporting the job as failed with the refusal', 'the endpoint did not take the job report; dropping it']);
    client.close();
  });

  it('a saved report too large for one request is cut down before it is sent', async () => {
    const { client, seen } = await endpoint(() => ok);
    const report: CompleteRequest = { exitCode: 0, outputs: { blob: '\u0001'.repeat(200_000) } };
    await deliverReport(client, { jobId: 'j-1', report, endedAt: 'now' }, { log: () => {}, backoff: () => 1 });
    expect(seen).toHaveLength(1);
    expect(seen[0]!.outputs).toEqual({});
    expect(seen[0]!.error).toMatch(/outputs not reported: blob \(1200002 bytes as sent\)/);
    client.close();
  });
});
