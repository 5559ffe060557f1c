/** The CLI without an endpoint: lint, help, and the errors a user sees when something is missing. */
import { describe, expect, it } from 'vitest';
import { runCli } from './helpers/endpoint.js';

describe('takt content lint', () => {
  it('reports every problem of a broken pack as file:line:col and exits 1', async () => {
    const r = await runCli(['content', 'lint', 'test/fixtures/broken-pack']);
    expect(r.code).toBe(1);
    const lines = r.stdout.trim().split('\n');
    expect(lines.length).toBeGreaterThanOrEqual(10);
    for (const l of lines) expect(l).toMatch(/^test\/fixtures\/broken-pack\/[\w/.-]+\.yaml:\d+:\d+: \S/);
    expect(r.stdout).toContain('test/fixtures/broken-pack/stages/install.yaml:5:5: task \'restart\' not found');
    expect(r.stderr).toMatch(/\d+ problem\(s\)/);
  });

  it('says a clean pack is clean and exits 0; -o json is machine-readable', async () => {
    const r = await runCli(['content', 'lint', 'content/demo']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/demo@\d+\.\d+\.\d+: \d+ objects, no problems/);
    const j = await runCli(['content', 'lint', 'test/fixtures/broken-pack', '-o', 'json']);
    expect(j.code).toBe(1);
    const body = JSON.parse(j.stdout) as { ok: boolean; diagnostics: Array<{ file: string; line: number; col: number }> };
    expect(body.ok).toBe(false);
    expect(body.diagnostics[0]).toMatchObject({ file: expect.any(String), line: expect.any(Number), col: expect.any(Number) });
  });

  it('a missing directory is a clear error', async () => {
    const r = await runCli(['content', 'lint', '/nonexistent-pack']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/not a directory/);
  });
});

describe('help and setup errors', () => {
  it('--help lists the resources', async () => {
    const r = await runCli(['--help']);
    expect(r.code).toBe(0);
    for (const cmd of ['serve', 'agent', 'machines', 'jobs', 'workorders', 'content', 'plan', 'render', 'events', 'history']) expect(r.stdout).toContain(cmd);
  });

  it('no endpoint running: says how to start one', async () => {
    const r = await runCli(['machines', 'list'], { TAKT_ENDPOINT: 'http://127.0.0.1:9', TAKT_TOKEN: 'x' });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/cannot reach http:\/\/127\.0\.0\.1:9.*\n.*takt serve/);
  });

  it('the agent with a token file that is not there says which', async () => {
    const r = await runCli(['agent', '--endpoint', 'https://127.0.0.1:9', '--token-file', '/nonexistent/token']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--token-file \/nonexistent\/token: no such file/);
  });

  it('the agent without a token says so (bad usage: 2)', async () => {
    const r = await runCli(['agent', '--endpoint', 'http://127.0.0.1:9'], { TAKT_TOKEN: '' });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/machine token/);
  });
});

describe('exit codes: one convention for bad usage (2), whatever the command', () => {
  // No endpoint listens at port 9: a command that sent anything would exit 3 (network), not 2.
  const env = { TAKT_ENDPOINT: 'http://127.0.0.1:9', TAKT_TOKEN: 'x' };
  it.each([
    [['machines'], /Usage: takt machines/], // a resource without a verb
    [['machines', 'lst'], /unknown command 'lst'/],
    [['machines', 'get'], /missing required argument 'machine'/],
    [['machines', 'list', '--frobnicate'], /unknown option '--frobnicate'/],
    [['machines', 'list', '-o', 'xml'], /argument 'xml' is invalid/],
    [['machines', 'get', 'jobs/j-1'], /names one of jobs, but `takt machines get` takes a machine/],
    [['machines', 'wait', 'web-1', '--until', 'bogus'], /--until 'bogus' is not a machine state/],
    [['machines', 'wait', 'web-1', '--timeout', 'soon'], /--timeout/],
    [['machines', 'power', 'web-1'], /give an action \(on, off, cycle, status\) or --next-boot/],
    [['machines', 'drain'], /refusing to drain every machine/],
    [['machines', 'classify'], /name one machine, or give --all/],
    [['run', '--', 'uptime'], /no machines: give -l <selector> or --machine M/],
    [['images', 'import', 'disk', '/nonexistent.img'], /'disk' is not an image reference/],
    [['images', 'import', 'disk@1.0.0', '/nonexistent.img', '--sha256', 'nothex'], /--sha256 must be 64 lower-case hex digits \(got 'nothex'\)/],
    [['serve', '--data', '/nonexistent/takt-usage-test', '--lease', 'soon'], /--lease/],
  ])('takt %j exits 2 and says why', async (args, message) => {
    const r = await runCli(args, env);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('help and version are not usage errors; an unreachable endpoint is still 3', async () => {
    expect((await runCli(['machines', '--help'], env)).code).toBe(0);
    expect((await runCli(['--version'], env)).code).toBe(0);
    expect((await runCli(['machines', 'get', 'web-1'], env)).code).toBe(3);
  });

  it('takt --help lists the exit codes', async () => {
    const r = await runCli(['--help']);
    expect(r.stdout).toMatch(/Exit codes:\n {2}0 {2}done\n {2}1 {2}failed.*\n {2}2 {2}bad usage/);
  });
});
