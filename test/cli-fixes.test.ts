/**
 * CLI findings of the nu12 walkthrough, against a real endpoint: piping into `head` (EPIPE), the
 * `KIND/NAME` form `-o name` prints given back as an argument, job logs on stdout, shell-safe examples.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles, ROOT, runCli, TAKT, until } from './helpers/endpoint.js';

let ep: Endpoint;
beforeAll(async () => {
  ep = await Endpoint.start();
  for (let i = 1; i <= 3; i++) expect((await ep.cli(['machines', 'create', `fx-${i}`])).code).toBe(0);
}, 60_000);
afterAll(async () => ep?.stop());

/**
 * `takt ARGS` whose stdout reader has gone before the CLI writes (as `| head -1` leaves after its line):
 * our end of the pipe is closed at once, so the CLI's first write meets a closed pipe (EPIPE).
 */
function closedReader(args: string[]): Promise<{ stderr: string; code: number | null }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [TAKT, ...args], {
      env: { ...process.env, NO_COLOR: '1', TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    p.stdout.destroy();
    let stderr = '';
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (code) => resolve({ stderr, code }));
  });
}

describe('F11: output piped into head', () => {
  it('exits quietly when the reader leaves (no EPIPE stack trace)', async () => {
    for (const args of [['machines', 'list', '-o', 'name'], ['machines', 'list'], ['machines', 'get', 'fx-1', '-o', 'yaml']]) {
      const r = await closedReader(args);
      expect(r.stderr, args.join(' ')).toBe('');
      expect(r.code, args.join(' ')).toBe(0);
    }
  });
});

describe('F1: KIND/NAME arguments', () => {
  it('every name `-o name` prints is accepted back by get, describe, plan, record', async () => {
    const names = (await ep.cli(['machines', 'list', '-o', 'name'])).stdout.split('\n').filter(Boolean);
    expect(names).toContain('machines/fx-1');
    for (const args of [['machines', 'get'], ['machines', 'describe'], ['machines', 'record'], ['plan']]) {
      const r = await ep.cli([...args, 'machines/fx-1', '-o', 'json']);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).not.toBe(4);
      expect(r.stderr).not.toContain('not found');
    }
    const got = await ep.cli(['machines', 'get', 'machines/fx-1', '-o', 'json']);
    expect(JSON.parse(got.stdout).name).toBe('fx-1');
  });

  it('a variadic machine list and delete take the form too', async () => {
    expect((await ep.cli(['machines', 'create', 'fx-del'])).code).toBe(0);
    const r = await ep.cli(['machines', 'delete', 'machines/fx-del']);
    expect(r.code, r.stderr).toBe(0);
    expect((await ep.cli(['machines', 'get', 'fx-del'])).code).toBe(4);
  });

  it('--machine takes the form too (jobs list, workorders list)', async () => {
    for (const args of [['jobs', 'list'], ['workorders', 'list']]) {
      const r = await ep.cli([...args, '--machine', 'machines/fx-1']);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    }
    expect((await ep.cli(['jobs', 'list', '--machine', 'jobs/fx-1'])).stderr).toContain("--machine 'jobs/fx-1' names one of jobs, not a machine");
  });

  it('another kind is refused, naming both kinds', async () => {
    const r = await ep.cli(['machines', 'get', 'jobs/j-1']);
    expect(r.code).toBe(2); // bad usage
    expect(r.stderr).toContain("'jobs/j-1' names one of jobs, but `takt machines get` takes a machine");
  });
});

/**
 * The part of a shell line outside quotes and before a comment; null when an unquoted `<`/`>` sits inside a
 * word (`demo@<1.2.0`: bash reads a redirect from file `1.2.0`) or an `&` joins words (`a&b` backgrounds).
 * A redirect of its own (`> out.txt`, `2>&1`, `>/dev/null`) is fine.
 */
export function shellUnsafe(line: string): string | null {
  let bare = '';
  let quote: string | null = null;
  for (const ch of line) {
    if (quote) {
      if (ch === quote) quote = null;
      bare += ' ';
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      bare += ' ';
    } else if (ch === '#' && /(^|\s)$/.test(bare)) break;
    else bare += ch;
  }
  const m = /[^\s\d&|<>][<>]|[^\s<>&]&[^\s>&]/.exec(bare);
  return m ? m[0] : null;
}

describe('F25: examples can be pasted into a shell', () => {
  it('the check itself', () => {
    expect(shellUnsafe('takt machines list --built-with demo@<1.2.0')).toBe('@<');
    expect(shellUnsafe("takt machines list --built-with 'demo@<1.2.0'")).toBeNull();
    expect(shellUnsafe('takt jobs log J > out.txt 2>&1   # a <comment>')).toBeNull();
    expect(shellUnsafe('curl x?a=1&b=2')).not.toBeNull();
  });

  it('every --help example and every takt line in README.md and docs/*.md', async () => {
    const { buildProgram } = await import('../src/cli/program.js');
    const { helpAfter, walkCommands } = await import('../src/cli/help.js');
    const program = await buildProgram();
    const lines: string[] = [];
    for (const { cmd } of [{ cmd: program }, ...walkCommands(program)]) {
      for (const l of helpAfter(cmd).split('\n')) if (/^\s*\$ takt /.test(l)) lines.push(l.replace(/^\s*\$ /, ''));
      for (const o of cmd.options) if (/e\.g\. .*takt |e\.g\. --/.test(o.description)) lines.push(o.description.replace(/^.*e\.g\. /, 'takt x '));
      if (/e\.g\. --/.test(cmd.description())) lines.push(cmd.description().replace(/^.*e\.g\. /, 'takt x '));
    }
    const docs = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
    for (const f of docs) {
      for (const l of readFileSync(join(ROOT, f), 'utf8').split('\n')) if (/^\s*(\$ )?(npx )?takt /.test(l)) lines.push(`${f}: ${l}`);
    }
    expect(lines.length).toBeGreaterThan(100);
    expect(lines.filter((l) => shellUnsafe(l) !== null).join("\n")).toBe("");
  });
});

describe('F4: jobs log writes the job output to stdout', () => {
  it("the script's stdout and stderr, in order, on stdout; --follow too; -o json keeps the stream", async () => {
    expect((await ep.cli(['machines', 'create', 'fx-run', '--broker', 'local'])).code).toBe(0);
    const run = await ep.cli(['run', '--machine', 'fx-run', '--', 'echo to-out; echo to-err >&2; exit 3']);
    expect(run.code).toBe(1);
    const jobs = JSON.parse((await ep.cli(['jobs', 'list', '--machine', 'fx-run', '-o', 'json'])).stdout) as Array<{ id: string }>;
    expect(jobs).toHaveLength(1);
    for (const extra of [[], ['--follow']]) {
      const r = await ep.cli(['jobs', 'log', jobs[0]!.id, ...extra]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/to-out\n(.*\n)*to-err\n/);
      expect(r.stderr).not.toContain('to-err');
    }
    const json = (await ep.cli(['jobs', 'log', jobs[0]!.id, '-o', 'json'])).stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { stream: string; data: string });
    expect(json.find((c) => c.data.includes('to-err'))?.stream).toBe('stderr');
  }, 60_000);
});

describe('F31: the STATE column and --state agree', () => {
  it('--state waiting-for-agent lists the machines the column shows so, and only them', async () => {
    await ep.api.post('/packs', { files: await packFiles('basic') }).catch(() => undefined);
    expect((await ep.cli(['machines', 'create', 'fx-wait', '--pipeline', 'basic'])).code).toBe(0);
    const list = await ep.cli(['machines', 'list', '--state', 'waiting-for-agent', '--no-headers']);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout.split('\n').filter(Boolean).map((l) => l.split(/ +/)[0])).toEqual(['fx-wait']);
    expect(list.stdout).toMatch(/fx-wait .* waiting-for-agent /);
    const named = await ep.cli(['machines', 'list', '--state', 'waiting-for-agent', '-l', 'nothing=here', '--no-headers']);
    expect(named.stdout).toBe('');
  });
});

describe('F29 and F3: messages that say how to fix it', () => {
  it('a numeric-looking value for a string param: the refusal says how to pass it as a string, and that works', async () => {
    await ep.api.post('/packs', { files: await packFiles('basic') }).catch(() => undefined);
    expect((await ep.cli(['machines', 'create', 'fx-p'])).code).toBe(0);
    const r = await ep.cli(['machines', 'update', 'fx-p', '--param', 'msg=42']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`to pass the string 42, quote it: --param 'msg="42"'`);
    const ok = await ep.cli(['machines', 'update', 'fx-p', '--param', 'msg="42"']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse((await ep.cli(['machines', 'get', 'fx-p', '-o', 'json'])).stdout).params.msg).toBe('42');
    const help = await ep.cli(['machines', 'update', '--help']);
    expect(help.stdout.replace(/\s+/g, ' ')).toContain('the value is read as JSON when it parses as JSON');
  });

  it('no token: the message names TAKT_DATA and the dir it looked in', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'takt-notoken-'));
    try {
      const r = await runCli(['machines', 'list'], { TAKT_DATA: empty, TAKT_TOKEN: '', TAKT_ENDPOINT: ep.url });
      expect(r.code).toBe(5);
      expect(r.stderr).toContain(`no token (${empty}/admin.token does not exist): set TAKT_DATA=DIR to the --data dir of \`takt serve\``);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});

describe('F26: a list cut short says so', () => {
  it('history, jobs, work orders and machines print the note under the table; history pages with --offset', async () => {
    // 4 machines and 2 work orders at least: enough changes and jobs for two pages of every list.
    expect((await ep.cli(['machines', 'create', 'fx-jobs', '--broker', 'local'])).code).toBe(0);
    expect((await ep.cli(['run', '--machine', 'fx-jobs', '--', 'true'])).code).toBe(0);
    expect((await ep.cli(['run', '--machine', 'fx-jobs', '--', 'true'])).code).toBe(0);
    const first = await ep.cli(['history', '--limit', '2', '--no-headers']);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/\n2 shown, more after them; use --offset 2 \(or a bigger --limit\) for more\n$/);
    const seqs = (out: string) => out.split('\n').filter((l) => /^\d+ +\d{4}-/.test(l)).map((l) => Number(l.split(' ')[0]));
    const next = await ep.cli(['history', '--limit', '2', '--offset', '2', '--no-headers']);
    expect(seqs(next.stdout)).toHaveLength(2);
    expect(Math.max(...seqs(next.stdout))).toBeLessThan(Math.min(...seqs(first.stdout)));
    // -o json is the page itself, without the extra row asked for.
    expect(JSON.parse((await ep.cli(['history', '--limit', '2', '-o', 'json'])).stdout)).toHaveLength(2);

    const machines = await ep.cli(['machines', 'list', '--limit', '1']);
    expect(machines.stdout).toMatch(/\n1 of \d+; use --offset 1 \(or a bigger --limit\) for more\n$/);
    const all = await ep.cli(['history', '--limit', '1000']);
    expect(all.stdout).not.toContain('for more');

    expect((await ep.cli(['jobs', 'list', '--machine', 'fx-jobs', '--limit', '1'])).stdout).toMatch(/\n1 shown, more after them; use --offset 1 /);
    expect((await ep.cli(['workorders', 'list', '--machine', 'fx-jobs', '--limit', '1'])).stdout).toMatch(/\n1 shown, more after them; use --offset 1 /);
    expect((await ep.cli(['jobs', 'list', '--machine', 'fx-jobs', '--limit', '1', '--offset', '1'])).stdout).not.toContain('for more');
    // `jobs get` names the machine too (operations.md: lists that carry machine ids show the name).
    const [job] = JSON.parse((await ep.cli(['jobs', 'list', '--machine', 'fx-jobs', '--limit', '1', '-o', 'json'])).stdout) as Array<{ id: string }>;
    expect((await ep.cli(['jobs', 'get', job!.id])).stdout).toMatch(/^machine: fx-jobs\n/);
  }, 60_000);
});

describe('F23: events watch takes a machine name in a topic', () => {
  it('machines.update.NAME sees that machine\'s updates; an unknown name is refused', async () => {
    const id = JSON.parse((await ep.cli(['machines', 'get', 'fx-1', '-o', 'json'])).stdout).id as string;
    const p = spawn(process.execPath, [TAKT, 'events', 'watch', '--topics', 'machines.update.fx-1', '-o', 'json'], {
      env: { ...process.env, NO_COLOR: '1', TAKT_ENDPOINT: ep.url, TAKT_TOKEN: ep.token },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    try {
      await until(async () => err.includes(`watching machines.update.${id}`), 20_000, 'the watch to resolve fx-1');
      // Keep changing fx-1 until an event shows up: the watch may connect just after a change.
      await until(async () => {
        await ep.cli(['machines', 'update', 'fx-1', '--label', `n=${Date.now()}`]);
        return out.includes(`"topic":"machines.update.${id}"`);
      }, 20_000, 'an event for fx-1');
    } finally {
      p.kill();
    }
    const bad = await ep.cli(['events', 'watch', '--topics', 'machines.update.no-such-machine']);
    expect(bad.code).toBe(4);
    expect(bad.stderr).toContain("no machine 'no-such-machine'");
  }, 60_000);
});

describe('F2: labels in lists', () => {
  it('--show-labels and -o wide add a LABELS column', async () => {
    expect((await ep.cli(['machines', 'create', 'fx-lab', '--label', 'role=web', '--label', 'tier=a'])).code).toBe(0);
    const r = await ep.cli(['machines', 'list', '--show-labels', '--name', 'fx-lab']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^NAME .* LABELS +REASON\n/);
    expect(r.stdout).toMatch(/\nfx-lab .* role=web,tier=a +-\n/);
    expect((await ep.cli(['machines', 'list', '-o', 'wide', '--name', 'fx-lab'])).stdout).toContain('role=web,tier=a');
    expect((await ep.cli(['machines', 'list', '--name', 'fx-lab'])).stdout).not.toContain('LABELS');
  });
});

describe('F20: CLI messages name the flag, not the API path', () => {
  it('--count and <seq> instead of /count and query parameter seq', async () => {
    const count = await ep.cli(['machines', 'create', 'fx-q', '--count', '0']);
    expect(count.code).toBe(1);
    expect(count.stderr).toMatch(/^takt: --count /);
    expect(count.stderr).not.toContain('/count');
    const seq = await ep.cli(['history', 'show', 'abc']);
    expect(seq.code).toBe(1);
    expect(seq.stderr).toContain('<seq> must be a whole number');
    expect(seq.stderr).not.toContain('query parameter');
  });
});

describe('machines delete takes several machines', () => {
  it('deletes each one it can; a missing one is said on stderr and stops none of the others', async () => {
    for (const n of ['del-a', 'del-b', 'del-c']) expect((await ep.cli(['machines', 'create', n])).code).toBe(0);
    const r = await ep.cli(['machines', 'delete', 'del-a', 'del-nope', 'machines/del-b']);
    expect(r.code, r.stderr).toBe(4); // the one failure was "not found"
    expect(r.stdout).toBe('deleted del-a\ndeleted del-b\n');
    expect(r.stderr).toContain("machine 'del-nope' not found");
    for (const n of ['del-a', 'del-b']) expect((await ep.cli(['machines', 'get', n])).code).toBe(4);
    // -o json lists every outcome, in the order given; -o name the deleted ones.
    const j = await ep.cli(['machines', 'rm', 'del-nope', 'del-c', '-o', 'json']);
    expect(j.code).toBe(4);
    const out = JSON.parse(j.stdout) as Array<{ machine: string; deleted: boolean; id?: string; error?: { code: string; message: string } }>;
    expect(out).toEqual([
      { machine: 'del-nope', deleted: false, error: { code: 'not_found', message: "machine 'del-nope' not found" } },
      { machine: 'del-c', deleted: true, id: expect.stringMatching(/^m-/) },
    ]);
    expect((await ep.cli(['machines', 'create', 'del-d'])).code).toBe(0);
    const name = await ep.cli(['machines', 'delete', 'del-d', '-o', 'name']);
    expect(name.code).toBe(0);
    expect(name.stdout).toBe('machines/del-d\n');
  });
});
