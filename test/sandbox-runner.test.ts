/**
 * The runner with scripts run as another user (`takt agent --run-as`), with real bash and real uids but
 * no endpoint: the work dir, params and helpers work across the uid change; outputs are read back
 * without following anything the script planted; timeouts still kill the whole group; work dirs are
 * deleted with the script's user's rights.
 */
import { chmodSync, chownSync, existsSync, linkSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installHelpers } from '../src/agent/helpers.js';
import { pruneJobDirs } from '../src/agent/jobdirs.js';
import { agentPaths, jobPaths } from '../src/agent/paths.js';
import { runScript, type RunResult } from '../src/agent/runner.js';
import { parseRunAs, prepareSandboxDirs, removeTree, snapshotFiles } from '../src/agent/sandbox.js';

const isRoot = process.getuid?.() === 0;
const UID = 1_999_100_000;
const user = { uid: UID, gid: UID };

describe('parseRunAs', () => {
  it.each([
    ['1600000000:1600000000', { uid: 1_600_000_000, gid: 1_600_000_000 }],
    [' 0:0 ', { uid: 0, gid: 0 }],
  ])('%j', (text, want) => expect(parseRunAs(text)).toEqual(want));
  it.each(['', '1', '1:', ':1', 'a:b', '1:2:3', '4294967295:1'])('refuses %j', (text) => expect(() => parseRunAs(text)).toThrow("is not UID:GID"));
});

describe.skipIf(!isRoot)('runScript as another user', () => {
  let base: string;
  let paths: ReturnType<typeof agentPaths>;
  let secret: string;
  beforeAll(async () => {
    base = mkdtempSync(join(tmpdir(), 'takt-sandbox-runner-'));
    chmodSync(base, 0o711);
    mkdirSync(join(base, 'sandbox'), { mode: 0o755 });
    paths = agentPaths(join(base, 'private'), join(base, 'sandbox'));
    mkdirSync(paths.home, { mode: 0o700 });
    prepareSandboxDirs(paths, user);
    await installHelpers(paths.binDir);
    secret = join(paths.home, 'agent.token');
    writeFileSync(secret, 'tkm.m-1.theAgentsOwnSecret', { mode: 0o600 });
  });
  afterAll(() => rmSync(base, { recursive: true, force: true }));

  const run = async (id: string, script: string, params: Record<string, unknown> = {}, timeoutMs = 20_000): Promise<RunResult & { log: string }> => {
    const chunks: string[] = [];
    const r = await runScript(
      { id, script, params, timeoutMs },
      { paths: jobPaths(paths.jobsDir, id), binDir: paths.binDir, machineId: 'm-1', root: paths.scriptHome, killGraceMs: 300, user: { ...user, home: paths.scriptHome, tmp: paths.scriptTmp, scratch: paths.scratchDir } },
      (_s, d) => chunks.push(d),
    );
    return { ...r, log: chunks.join('') };
  };

  it('runs as the user, with params, helpers and outputs working across the uid change', async () => {
    const r = await run('j-ok', 'id -u; id -G; echo "home=$HOME user=$USER tmp=$TMPDIR"; takt-get greeting; takt-set answer 42; echo scratch > scratch.txt; stat -c %u . task.sh .takt/params/greeting', { greeting: 'hello' });
    expect(r.exitCode, r.log).toBe(0);
    expect(r.log).toContain(`${UID}\n${UID}\n`); // no supplementary groups (root's are dropped)
    expect(r.log).toContain(`home=${paths.scriptHome} user=takt-${UID} tmp=${paths.scriptTmp}`);
    expect(r.log).toContain('hello');
    expect(r.outputs).toEqual({ answer: '42' });
    // While it ran, its work dir, script and params were its user's …
    expect(r.log).toContain(`${UID}\n${UID}\n${UID}\n`);
    // … and what it was given in the clear is gone once it has run; what it made stays.
    const work = jobPaths(paths.jobsDir, 'j-ok').workDir;
    expect([existsSync(join(work, 'task.sh')), existsSync(join(work, '.takt')), existsSync(join(work, 'scratch.txt'))]).toEqual([false, false, true]);
  });

  it.each([
    ['a symbolic link to the agent\'s token', (s: string) => `ln -s ${s} "$TAKT_OUTPUTS_DIR/leak"`, 'output leak: a symbolic link, not read'],
    ['the outputs dir swapped for a link', (s: string) => `rm -rf "$TAKT_OUTPUTS_DIR"; ln -s ${join(s, '..')} "$TAKT_OUTPUTS_DIR"`, 'is not a plain directory'],
    ['.takt swapped for a link', (s: string) => `mkdir -p $TMPDIR/fake/outputs; ln -s ${s} $TMPDIR/fake/outputs/leak; mv "$TAKT_WORK_DIR/.takt" "$TAKT_WORK_DIR/old"; ln -s $TMPDIR/fake "$TAKT_WORK_DIR/.takt"`, 'is not a plain directory'],
    ['a FIFO (would block a naive read)', () => 'mkfifo "$TAKT_OUTPUTS_DIR/leak"', 'output leak: not a regular file, not read'],
  ])('does not read %s', async (_what, attack, note) => {
    const r = await run(`j-${Math.random().toString(36).slice(2)}`, attack(secret));
    expect(r.exitCode, r.log).toBe(0);
    expect(r.outputs).toEqual({});
    expect(r.log).toContain(note);
  });

  it("does not read a hard link to someone else's file (hosts without protected_hardlinks)", async () => {
    const r = await run('j-hardlink', 'true');
    expect(r.exitCode).toBe(0);
    // What a script could do where the kernel allows it, done here as root: link the agent's token in.
    const job = jobPaths(paths.jobsDir, 'j-hardlink');
    // (the job's .takt dir went when it ended: put back the user's outputs dir, as a script could)
    mkdirSync(job.outputsDir, { recursive: true });
    for (const d of [join(job.workDir, '.takt'), job.outputsDir]) chownSync(d, UID, UID);
    linkSync(secret, join(job.outputsDir, 'stolen'));
    const notes = snapshotFiles(job.workDir, ['.takt', 'outputs'], paths.scratchDir, UID, { names: /^[a-z]+$/, maxBytes: 1000, maxFiles: 10 });
    expect(notes).toEqual(["stolen: not owned by the script's user, not read"]);
    expect(existsSync(join(paths.scratchDir, 'stolen'))).toBe(false);
  });

  it('an output over the limit is still reported as too large, with its real size', async () => {
    // Written straight into the outputs dir (takt-set itself refuses a value this big at once).
    const r = await run('j-big', 'head -c 300000 /dev/zero | tr "\\0" x > "$TAKT_OUTPUTS_DIR/big"');
    expect(r.outputs).toEqual({});
    expect(r.error).toContain('big (300000 bytes)');
  });

  it('a timeout kills the whole group of the other user', async () => {
    const r = await run('j-timeout', 'sleep 30 & sleep 30 & wait', {}, 500);
    expect(r.timedOut).toBe(true);
  });

  it('old work dirs go, with the user\'s rights, even one it made unwritable inside', async () => {
    const r = await run('j-old', 'mkdir -p deep/er; touch deep/er/f; chmod 500 deep');
    expect(r.exitCode).toBe(0);
    const work = jobPaths(paths.jobsDir, 'j-old').workDir;
    // A dir the user locked itself out of cannot be removed by it: that is reported, nothing else is touched.
    await expect(removeTree(work, user)).rejects.toThrow('cannot remove');
    chmodSync(join(work, 'deep'), 0o700);
    await removeTree(work, user);
    expect(existsSync(work)).toBe(false);
    const removed = await pruneJobDirs(paths.jobsDir, 0, (dir) => removeTree(dir, user));
    expect(removed.length).toBeGreaterThan(0);
    expect(existsSync(paths.jobsDir)).toBe(true);
  });
});
