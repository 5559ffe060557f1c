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

  it('the agent without a token says so', async () => {
    const r = await runCli(['agent', '--endpoint', 'http://127.0.0.1:9'], { TAKT_TOKEN: '' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/machine token/);
  });
});
