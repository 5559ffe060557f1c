/**
 * What runs on an agentless host: the bash the endpoint sends over SSH, built here as text (pure), and
 * the parsers of what it prints. Every script goes to `bash -s` on the channel's stdin, so nothing in it —
 * a job's script and params hold secrets — ever appears on a remote command line (`ps`), and values are
 * embedded as base64 inside single quotes, so no value can break the quoting.
 *
 * The remote layout, under the base dir (`/var/lib/takt-ssh` for root, `~/.takt` otherwise, or the
 * machine's `ssh.dir`), mirrors the agent's (src/agent/paths.ts):
 *
 *   bin/takt-get, bin/takt-set, bin/takt-power   the agent's helpers, byte for byte
 *   bin/takt-ssh-run                the wrapper that runs one job detached from any SSH session
 *   jobs/<jobId>/                   the work dir: task.sh, .takt/params/, .takt/outputs/, .takt/control/
 *   jobs/<jobId>/.takt/run/         the job's record: env, wrapper (pid), boot (boot id), pgid,
 *                                   stdout, stderr, exit, timedout, cancelled, reported
 *
 * Exactly once: `mkdir jobs/<jobId>` is the claim — a job dir that exists is never set up or started
 * again. The wrapper runs in its own session (setsid), so neither a dropped connection nor an endpoint
 * restart touches the job; it enforces the task's timeout itself (TERM to the script's process group,
 * KILL after the grace), cleans the group up when the script ends, and writes `exit` last. The endpoint
 * reads `exit`, the outputs, takt-power's request and the rest of the log, reports, and only then marks
 * the dir `reported`.
 */
import { TAKT_GET, TAKT_POWER, TAKT_SET } from '../../agent/helpers.js';
import { MAX_CONTROL_BYTES } from '../../agent/power.js';

/** POSIX shell single-quoting: any text as one word. */
export function shq(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

const b64 = (text: string | Buffer) => Buffer.from(text).toString('base64');
/** Seconds for `sleep` from milliseconds (GNU sleep takes fractions). */
export const seconds = (ms: number) => String(Math.max(0, Math.round(ms)) / 1000);

const LOWER = 'abcdefghijklmnopqrstuvwxyz';
/** Job dirs kept (besides running ones and those not yet reported), as the agent keeps 20. */
export const KEEP_JOB_DIRS = 20;

/**
 * The wrapper, installed as bin/takt-ssh-run and started with `setsid -f` (its own session):
 * `takt-ssh-run JOBDIR TIMEOUT_S GRACE_S`. See the top of this file.
 */
export const WRAPPER = `#!/usr/bin/env bash
# takt-ssh-run JOBDIR TIMEOUT GRACE: runs one takt job (JOBDIR/task.sh) for the takt endpoint, detached
# from the SSH session that started it. Records its pid, the script's process group, the output and the
# exit code under JOBDIR/.takt/run; kills the group after TIMEOUT seconds (TERM, then KILL after GRACE).
set -u
J=$1 T=$2 G=$3
R=$J/.takt/run
echo $$ > "$R/wrapper.tmp" && mv -f "$R/wrapper.tmp" "$R/wrapper"
cat /proc/sys/kernel/random/boot_id > "$R/boot" 2>/dev/null || :
cd "$J" || { echo 1 > "$R/exit"; exit 1; }
set -a
. "$R/env"
set +a
# The script gets a session (and process group) of its own: the timeout kills it without killing us.
setsid -w bash -c 'echo $$ > "$1/pgid.tmp" && mv -f "$1/pgid.tmp" "$1/pgid" && exec bash -e task.sh' takt-job "$R" < /dev/null >> "$R/stdout" 2>> "$R/stderr" &
child=$!
(
  trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "$T" & s=$!; wait "$s"
  : > "$R/timedout"
  pg=$(cat "$R/pgid" 2>/dev/null) || pg=
  [ -n "$pg" ] && kill -TERM -- "-$pg" 2>/dev/null
  sleep "$G" & s=$!; wait "$s"
  [ -n "$pg" ] && kill -KILL -- "-$pg" 2>/dev/null
) &
dog=$!
wait "$child"
code=$?
kill "$dog" 2>/dev/null
wait "$dog" 2>/dev/null
# Whatever the script left running in its group goes too, so one job cannot leak into the next (start
# services through systemd or setsid instead), as with the agent.
pg=$(cat "$R/pgid" 2>/dev/null) || pg=
if [ -n "$pg" ] && kill -TERM -- "-$pg" 2>/dev/null; then
  i=0
  while kill -0 -- "-$pg" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
  kill -KILL -- "-$pg" 2>/dev/null
fi
# What the job was given in the clear goes as soon as it has run (the agent scrubs the same).
rm -rf -- "$J/task.sh" "$J/.takt/params"
printf '%s\\n' "$code" > "$R/exit.tmp" && mv -f "$R/exit.tmp" "$R/exit"
# Wake a follower waiting on the FIFO at once (opened read-write, so this never blocks without one).
[ -p "$R/wake" ] && { printf 'x\\n' 1<> "$R/wake"; } 2>/dev/null
exit 0
`;

/**
 * Run once per connection: finds the base dir, checks the commands the wrapper needs, installs the
 * helpers and the wrapper (atomically: a running job keeps the version it started with), and prunes old
 * reported job dirs. Prints `base DIR` and `uid N`, or `missing CMD…`.
 */
export function bootstrapScript(dir: string | undefined): string {
  const put = (name: string, text: string) => `put ${shq(name)} '${b64(text)}'`;
  return `set -eu
umask 077
if [ -n ${shq(dir ?? '')} ]; then B=${shq(dir ?? '')}; elif [ "$(id -u)" = 0 ]; then B=/var/lib/takt-ssh; else B="\${HOME:?}/.takt"; fi
missing=
for c in bash setsid base64 tail stat mkdir mkfifo mv rm cat sleep kill tr grep; do command -v "$c" >/dev/null 2>&1 || missing="$missing $c"; done
tail --version 2>/dev/null | grep -q GNU || missing="$missing GNU-tail(coreutils)"
if [ -n "$missing" ]; then echo "missing$missing"; exit 0; fi
mkdir -p -- "$B/bin" "$B/jobs"
chmod 700 -- "$B"
put() { printf '%s' "$2" | base64 -d > "$B/bin/.$1.tmp" && chmod 755 -- "$B/bin/.$1.tmp" && mv -f -- "$B/bin/.$1.tmp" "$B/bin/$1"; }
${put('takt-get', TAKT_GET)}
${put('takt-set', TAKT_SET)}
${put('takt-power', TAKT_POWER)}
${put('takt-ssh-run', WRAPPER)}
n=0
for d in $(ls -1t -- "$B/jobs"); do
  n=$((n + 1))
  if [ "$n" -gt ${KEEP_JOB_DIRS} ] && [ -e "$B/jobs/$d/.takt/run/reported" ]; then rm -rf -- "$B/jobs/$d"; fi
done
echo "base $B"
echo "uid $(id -u)"
`;
}

export interface StartSpec {
  /** Absolute remote work dir of the job (`BASE/jobs/<jobId>`). */
  jobDir: string;
  binDir: string;
  script: string;
  /** Param files: name → content (names already safe as file names). */
  params: Record<string, string>;
  /** The script's TAKT_* environment and PATH. */
  env: Record<string, string>;
  timeoutMs: number;
  graceMs: number;
  /** Earlier jobs' dirs to mark reported on the way (their results are in the store). */
  reported?: string[];
}

/** The `env` file the wrapper sources: `export K='v'` lines. */
export function envFile(env: Record<string, string>): string {
  return Object.entries(env)
    .filter(([k]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
    .map(([k, v]) => `export ${k}=${shq(v)}\n`)
    .join('');
}

/** The first line a start prints on stdout, before the job's output: how the setup went. */
export type StartHeader = { kind: 'started' } | { kind: 'exists' } | { kind: 'failed'; message: string };

/** Reads the header line (without its newline). Null when it is not one. */
export function parseStartHeader(line: string): StartHeader | null {
  if (line === 'takt-ssh: started') return { kind: 'started' };
  if (line === 'takt-ssh: exists') return { kind: 'exists' };
  const m = /^takt-ssh: failed ([A-Za-z0-9+/=]*)$/.exec(line);
  return m ? { kind: 'failed', message: Buffer.from(m[1]!, 'base64').toString('utf8').trim() } : null;
}

/**
 * Sets a job up, starts its wrapper and follows it, in one command: first one header line on stdout
 * (`takt-ssh: started`, `takt-ssh: exists` — the job dir was there already, so nothing was set up or
 * started: a job is never started twice — or `takt-ssh: failed <base64 message>` and exit 90: nothing ran,
 * the wrapper being the setup's last step), then the job's output as `followScript` streams it.
 */
export function startScript(s: StartSpec, token: string): string {
  const files = Object.entries(s.params).map(([name, text]) => `printf '%s' '${b64(text)}' | base64 -d > "$J/.takt/params/"${shq(name)}`);
  return `J=${shq(s.jobDir)}
R="$J/.takt/run"
${reportedLines(s.reported ?? [])}
err=$( (
set -eu
umask 077
mkdir -- "$J" 2>/dev/null || { [ -e "$J" ] && exit 10; mkdir -- "$J"; }
mkdir -p -- "$J/.takt/params" "$J/.takt/outputs" "$J/.takt/control" "$R"
printf '%s' '${b64(s.script)}' | base64 -d > "$J/task.sh"
${files.join('\n')}
printf '%s' '${b64(envFile(s.env))}' | base64 -d > "$R/env"
: > "$R/stdout"
: > "$R/stderr"
mkfifo -m 600 -- "$R/wake"
setsid -f ${shq(`${s.binDir}/takt-ssh-run`)} "$J" ${seconds(s.timeoutMs)} ${seconds(s.graceMs)} < /dev/null > /dev/null 2>&1
i=0
while [ ! -s "$R/wrapper" ] && [ "$i" -lt 500 ]; do sleep 0.01; i=$((i + 1)); done
) 2>&1 )
case $? in
  0) echo 'takt-ssh: started' ;;
  10) echo 'takt-ssh: exists' ;;
  *) printf 'takt-ssh: failed %s\n' "$(printf '%s' "$err" | base64 -w0)"; exit 90 ;;
esac
${followBody({ stdout: 0, stderr: 0 }, token)}`;
}

/**
 * Streams the job's stdout and stderr from the given byte offsets (on the channel's stdout and stderr)
 * until its `exit` file appears or its wrapper is gone; the probe then sends whatever the followers had
 * not sent yet. (Following ends on the exit file, not on `tail --pid`: a wrapper that has ended may stay
 * a zombie until the host's init reaps it.) It records its process group under `follow.<token>`, so
 * `stopFollowScript` can end it (sshd keeps a command running when its channel closes), and ends by
 * itself when its SSH session is gone (its parent changes). Exit 3: no wrapper recorded (not started, or
 * no job dir).
 */
export function followScript(jobDir: string, from: { stdout: number; stderr: number }, token: string): string {
  return `J=${shq(jobDir)}
R="$J/.takt/run"
${followBody(from, token)}`;
}

/** How often the followers' tails check whether to stop (they read new output as it comes, by inotify). */
const TAIL_CHECK_MS = 50;

/** The follower itself, for a script that has set J and R. */
function followBody(from: { stdout: number; stderr: number }, token: string, pollMs = 100): string {
  return `w=$(cat "$R/wrapper" 2>/dev/null) || w=
[ -n "$w" ] || exit 3
[ -e "$R/exit" ] && exit 0
F="$R/follow.${token.replace(/[^A-Za-z0-9]/g, '')}"
echo $$ > "$F"
pp=$(cut -d' ' -f4 /proc/$$/stat)
# The tails end when $k does, after a last read to the end of their file: killing them instead could lose
# what they had not printed yet. ($k is our own child, so it is reaped at once and never lingers as a zombie.)
sleep 2147483647 & k=$!
tail -c +${from.stdout + 1} -f -s ${seconds(TAIL_CHECK_MS)} --pid="$k" -- "$R/stdout" 2>/dev/null &
a=$!
tail -c +${from.stderr + 1} -f -s ${seconds(TAIL_CHECK_MS)} --pid="$k" -- "$R/stderr" >&2 2>/dev/null &
b=$!
i=0
while [ ! -e "$R/exit" ]; do
  # The wrapper wakes us through the FIFO when it ends; without one (a job started by an older wrapper), poll.
  if [ -p "$R/wake" ]; then read -r -t 1 _ <> "$R/wake" 2>/dev/null || :; i=$((i + 10)); else sleep ${seconds(pollMs)}; i=$((i + 1)); fi
  if [ $((i % 10)) = 0 ]; then
    [ "$(cut -d' ' -f4 /proc/$$/stat)" = "$pp" ] || break
    st=$(cut -d' ' -f3 "/proc/$w/stat" 2>/dev/null) || st=
    { [ -z "$st" ] || [ "$st" = Z ]; } && [ ! -e "$R/exit" ] && break
  fi
done
kill "$k" 2>/dev/null
wait "$k" 2>/dev/null
wait "$a" "$b" 2>/dev/null
rm -f -- "$F"
exit 0
`;
}

/** Ends a follower started with `token` (and its tails): the endpoint stopped following early. */
export function stopFollowScript(jobDir: string, token: string): string {
  return `F=${shq(`${jobDir}/.takt/run/follow.${token.replace(/[^A-Za-z0-9]/g, '')}`)}
p=$(cat "$F" 2>/dev/null) && kill -TERM -- "-$p" 2>/dev/null
rm -f -- "$F"
exit 0
`;
}

/**
 * Where a job stands (one `state` line): `missing` (no job dir: the dir is then made and marked
 * abandoned, so a start still in flight can never run it), `unstarted` (a dir but no wrapper
 * recorded), `running` (its wrapper is alive: same boot, pid with that job dir on its command line),
 * `vanished` (recorded but gone without an exit code: host rebooted, wrapper killed), or `finished`,
 * then `exit N`, `timedout` when the timeout killed it, each log's size and its bytes past `from` (up to
 * `maxRestBytes`, base64: what following had not sent), the outputs:
 * `output NAME SIZE BASE64`, or `-` for content not sent (undeclared, or too large), and what
 * `takt-power` asked: `power next_boot|action BASE64`, or `-` for a file too large to be a request.
 */
export function probeScript(jobDir: string, declared: readonly string[], maxOutputBytes: number, from: { stdout: number; stderr: number }, maxRestBytes = 1024 * 1024, maxListed = 1000): string {
  return `J=${shq(jobDir)}
R="$J/.takt/run"
if [ ! -d "$J" ]; then
  # No trace: claim the dir, so a start still on its way (an endpoint that died mid-start) finds it taken.
  mkdir -p -- "$R" 2>/dev/null && : > "$R/abandoned"
  echo 'state missing'
  exit 0
fi
if [ -e "$R/abandoned" ]; then echo 'state missing'; exit 0; fi
if [ -f "$R/exit" ]; then
  echo 'state finished'
  echo "exit $(cat "$R/exit")"
  [ -e "$R/timedout" ] && echo timedout
  [ -e "$R/cancelled" ] && echo cancelled
  echo "size stdout $(stat -c %s -- "$R/stdout" 2>/dev/null || echo 0)"
  echo "size stderr $(stat -c %s -- "$R/stderr" 2>/dev/null || echo 0)"
  echo "rest stdout $(tail -c +${from.stdout + 1} -- "$R/stdout" 2>/dev/null | head -c ${maxRestBytes} | base64 -w0)"
  echo "rest stderr $(tail -c +${from.stderr + 1} -- "$R/stderr" 2>/dev/null | head -c ${maxRestBytes} | base64 -w0)"
  declared=${shq(` ${declared.join(' ')} `)}
  n=0
  if cd -- "$J/.takt/outputs" 2>/dev/null; then
    for f in *; do
      [ -f "$f" ] && [ ! -L "$f" ] || continue
      case "$f" in [!${LOWER}]*|*[!${LOWER}0123456789_]*) continue ;; esac
      n=$((n + 1))
      [ "$n" -le ${maxListed} ] || break
      s=$(stat -c %s -- "$f")
      case "$declared" in
        *" $f "*) if [ "$s" -le ${maxOutputBytes} ]; then printf 'output %s %s %s\\n' "$f" "$s" "$(base64 -w0 < "$f")"; else printf 'output %s %s -\\n' "$f" "$s"; fi ;;
        *) printf 'output %s %s -\\n' "$f" "$s" ;;
      esac
    done
  fi
  # What takt-power asked: each request file, small and plain, as base64 (parsePowerRequest reads it).
  for f in next_boot action; do
    c="$J/.takt/control/$f"
    [ -f "$c" ] && [ ! -L "$c" ] || continue
    if [ "$(stat -c %s -- "$c")" -le ${MAX_CONTROL_BYTES} ]; then printf 'power %s %s\n' "$f" "$(base64 -w0 < "$c")"; else printf 'power %s -\n' "$f"; fi
  done
  exit 0
fi
w=$(cat "$R/wrapper" 2>/dev/null) || w=
[ -n "$w" ] || { echo 'state unstarted'; exit 0; }
if [ "$(cat "$R/boot" 2>/dev/null)" = "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)" ] && [ -r "/proc/$w/cmdline" ] && tr '\\0' '\\n' < "/proc/$w/cmdline" | grep -qxF -- "$J"; then
  echo 'state running'
else
  echo 'state vanished'
fi
`;
}

/** Kills a running job's process group (TERM now, KILL after the grace, detached) and marks it cancelled. */
export function killScript(jobDir: string, graceMs: number): string {
  return `R=${shq(`${jobDir}/.takt/run`)}
[ -d "$R" ] || exit 0
: > "$R/cancelled"
pg=$(cat "$R/pgid" 2>/dev/null) || exit 0
kill -TERM -- "-$pg" 2>/dev/null || exit 0
setsid -f bash -c 'sleep "$1"; kill -KILL -- "-$2" 2>/dev/null' takt-kill ${seconds(graceMs)} "$pg" < /dev/null > /dev/null 2>&1
exit 0
`;
}

/** After the endpoint has the jobs' results: drops their outputs and logs, and marks their dirs reported. */
export function reportedScript(...jobDirs: string[]): string {
  return `${reportedLines(jobDirs)}
exit 0
`;
}

function reportedLines(jobDirs: string[]): string {
  return jobDirs
    .map(
      (d) => `if [ -d ${shq(`${d}/.takt/run`)} ]; then
  rm -rf -- ${['.takt/outputs', '.takt/control', '.takt/params', 'task.sh', '.takt/run/stdout', '.takt/run/stderr', '.takt/run/env'].map((f) => shq(`${d}/${f}`)).join(' ')}
  : > ${shq(`${d}/.takt/run/reported`)}
fi`,
    )
    .join('\n');
}

/** Reboots or powers off the host (the exit-code contract's 64 and 32), detached so the answer comes first. */
export function powerScript(action: 'reboot' | 'poweroff'): string {
  return `setsid -f bash -c 'sleep 1; systemctl ${action} || ${action}' < /dev/null > /dev/null 2>&1
echo ok
`;
}

export type ProbeState = 'missing' | 'unstarted' | 'running' | 'vanished' | 'finished';

export interface Probe {
  state: ProbeState;
  exitCode: number | null;
  timedOut: boolean;
  cancelled: boolean;
  size: { stdout: number; stderr: number };
  /** Each log's bytes past the offsets the probe was given (at most its bound). */
  rest: { stdout: Buffer; stderr: Buffer };
  /** name → content, or the size when the content was not sent. Only valid output names (OUTPUT_LINE_NAME). */
  outputs: Array<{ name: string; size: number; content: Buffer | null }>;
  /** Output lines refused (a name that is no output name, a size that is no size), JSON-quoted and cut, at most MAX_REFUSED. */
  refused: string[];
  /**
   * What `takt-power` left in the job's control dir, file by file (agent/power.ts parsePowerRequest reads
   * it); `null` content: a file too large to be a request.
   */
  power: { next_boot?: string | null; action?: string | null };
}

/**
 * An output name as the host may send it: takt-set's rule (the agent's OUTPUT_NAME), at most 64 chars.
 * Whatever a host says is data: a name is never a path (`..`, `a/b`), on the host's word alone.
 */
export const OUTPUT_LINE_NAME = /^[a-z][a-z0-9_]{0,63}$/;
/** Output lines kept at most (the probe lists at most 1000). */
const MAX_PROBE_OUTPUTS = 1000;
const MAX_REFUSED = 20;

/**
 * Reads what `probeScript` printed.
 * @throws Error when the text is not a probe's answer (the host's bash did something else).
 */
export function parseProbe(text: string): Probe {
  const p: Probe = { state: 'missing', exitCode: null, timedOut: false, cancelled: false, size: { stdout: 0, stderr: 0 }, rest: { stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) }, outputs: [], refused: [], power: {} };
  let seen = false;
  for (const line of text.split('\n')) {
    const [word, a, b, c] = line.split(' ');
    if (word === 'state' && ['missing', 'unstarted', 'running', 'vanished', 'finished'].includes(a ?? '')) {
      p.state = a as ProbeState;
      seen = true;
    } else if (word === 'exit') p.exitCode = /^\d{1,3}$/.test(a ?? '') ? Number(a) : null;
    else if (word === 'timedout') p.timedOut = true;
    else if (word === 'cancelled') p.cancelled = true;
    else if (word === 'size' && (a === 'stdout' || a === 'stderr')) p.size[a] = Number(b) || 0;
    else if (word === 'rest' && (a === 'stdout' || a === 'stderr')) p.rest[a] = Buffer.from(b ?? '', 'base64');
    else if (word === 'output') {
      if (a !== undefined && OUTPUT_LINE_NAME.test(a) && /^\d{1,15}$/.test(b ?? '') && p.outputs.length < MAX_PROBE_OUTPUTS) {
        p.outputs.push({ name: a, size: Number(b), content: c === '-' ? null : Buffer.from(c ?? '', 'base64') });
      } else if (p.refused.length < MAX_REFUSED) p.refused.push(JSON.stringify(line.slice(7, 71)));
    } else if (word === 'power' && (a === 'next_boot' || a === 'action')) {
      p.power[a] = b === '-' ? null : Buffer.from(b ?? '', 'base64').toString('utf8').slice(0, MAX_CONTROL_BYTES);
    }
  }
  if (!seen) throw new Error(`unexpected answer from the host: ${JSON.stringify(text.slice(0, 200))}`);
  return p;
}

/** Reads what `bootstrapScript` printed. */
export function parseBootstrap(text: string): { base: string; uid: number } | { missing: string[] } {
  const lines = text.split('\n');
  const missing = lines.find((l) => l.startsWith('missing'));
  if (missing) return { missing: missing.split(' ').slice(1).filter(Boolean) };
  const base = lines.find((l) => l.startsWith('base '))?.slice(5);
  const uid = Number(lines.find((l) => l.startsWith('uid '))?.slice(4));
  if (!base || !base.startsWith('/') || !Number.isInteger(uid)) throw new Error(`unexpected answer from the host: ${JSON.stringify(text.slice(0, 200))}`);
  return { base, uid };
}
