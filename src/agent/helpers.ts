/**
 * The helper commands a script gets on its PATH. They are plain bash so they work in any task, need no
 * connection to the endpoint, and never see the machine token: the agent writes params into files before
 * the script starts and reads outputs (and `takt-power`'s request, power.ts) back after it ends.
 */
import { chmod, mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MAX_OUTPUT_BYTES } from '../model/protocol.js';

// Character classes are spelled out: `[a-z]` in a regex follows the locale's collation and may match
// upper-case letters in some locales.
const LOWER = 'abcdefghijklmnopqrstuvwxyz';

export const TAKT_GET = `#!/usr/bin/env bash
# takt-get KEY: print the value of the job's param KEY (written by the takt agent before the task started).
# String values are printed as they are; other values as JSON.
set -u
if [ $# -ne 1 ]; then echo "usage: takt-get KEY" >&2; exit 1; fi
key=$1
case $key in ''|.*|*/*) echo "takt-get: invalid param name '$key'" >&2; exit 1 ;; esac
dir=\${TAKT_PARAMS_DIR:-}
if [ -z "$dir" ]; then echo "takt-get: TAKT_PARAMS_DIR is not set (takt-get works inside a takt job)" >&2; exit 1; fi
if [ ! -f "$dir/$key" ]; then echo "takt-get: no param '$key' (declare it in the task's params)" >&2; exit 1; fi
exec cat -- "$dir/$key"
`;

export const TAKT_SET = `#!/usr/bin/env bash
# takt-set KEY [VALUE]: record output KEY of this job; reads VALUE from stdin when it is omitted.
# The agent reports outputs when the script ends (one trailing newline is trimmed).
set -u
if [ $# -lt 1 ] || [ $# -gt 2 ]; then echo "usage: takt-set KEY [VALUE]   (VALUE is read from stdin when omitted)" >&2; exit 1; fi
key=$1
if ! [[ $key =~ ^[${LOWER}][${LOWER}0123456789_]*$ ]]; then
  echo "takt-set: invalid output name '$key' (lower-case letters, digits and _, starting with a letter)" >&2
  exit 1
fi
# Only the outputs the task declares are accepted: say so now, at the line that sets another one.
if [ -n "\${TAKT_OUTPUT_NAMES+set}" ]; then
  case " $TAKT_OUTPUT_NAMES " in
    *" $key "*) ;;
    *) echo "takt-set: task does not declare output '$key' (it declares: \${TAKT_OUTPUT_NAMES:-none}); add it under 'outputs:' in the task" >&2; exit 1 ;;
  esac
fi
dir=\${TAKT_OUTPUTS_DIR:-}
if [ -z "$dir" ]; then echo "takt-set: TAKT_OUTPUTS_DIR is not set (takt-set works inside a takt job)" >&2; exit 1; fi
# Write then rename, so the agent never reads half a value.
tmp="$dir/.$key.$$.tmp"
if [ $# -eq 2 ]; then printf '%s' "$2" > "$tmp"; else cat > "$tmp"; fi || { rm -f -- "$tmp"; echo "takt-set: cannot write output '$key'" >&2; exit 1; }
size=$(wc -c < "$tmp")
if [ "$size" -gt ${MAX_OUTPUT_BYTES} ]; then
  rm -f -- "$tmp"
  echo "takt-set: output '$key' is $size bytes, over the limit of ${MAX_OUTPUT_BYTES} (measured as sent in JSON, where a control byte takes 6); not set" >&2
  exit 1
fi
mv -f -- "$tmp" "$dir/$key"
`;

export const TAKT_POWER_USAGE = `usage: takt-power next-boot pxe|disk [--persistent]
       takt-power cycle
       takt-power off

Asks the endpoint to switch this machine's power through its power driver (IPMI, Redfish, QMP):
  next-boot pxe|disk   boot from the network (pxe) or the disk next; set before the endpoint answers the
                       job's report, so a reboot by exit code 64 boots from it. --persistent: every boot.
  cycle                power-cycle the machine (hard reset) after the job's report is answered
  off                  power it off (hard) after the job's report is answered
Applied only when the job succeeds; cycle and off replace an exit code's reboot (64) or power off (32).
One next-boot and one of cycle/off per job: a later call replaces an earlier one.
See docs/provisioning.md, "Power control", "From a task".`;

export const TAKT_POWER = `#!/usr/bin/env bash
# takt-power next-boot pxe|disk [--persistent] | cycle | off: ask the endpoint to switch this machine's
# power through its driver when the job has succeeded. Writes a request file the agent reports with the job.
set -u
usage() {
  cat <<'TAKT_USAGE'
${TAKT_POWER_USAGE}
TAKT_USAGE
}
fail() { echo "takt-power: $1" >&2; echo "usage: takt-power next-boot pxe|disk [--persistent] | cycle | off   (takt-power --help)" >&2; exit 1; }
for a in "$@"; do case $a in -h|--help) usage; exit 0 ;; esac; done
[ $# -ge 1 ] || fail 'say what to do'
case $1 in
  next-boot)
    shift
    dev=
    persistent=
    for a in "$@"; do
      case $a in
        pxe|disk) [ -z "$dev" ] || fail "next-boot takes one device, got '$dev' and '$a'"; dev=$a ;;
        --persistent) persistent=' persistent' ;;
        -*) fail "next-boot has no option '$a' (only --persistent)" ;;
        *) fail "next-boot takes pxe or disk, not '$a'" ;;
      esac
    done
    [ -n "$dev" ] || fail 'next-boot needs a device: pxe or disk'
    file=next_boot
    value="$dev$persistent"
    ;;
  cycle|off)
    [ $# -eq 1 ] || fail "$1 takes no arguments (got: \${*:2})"
    file=action
    value=$1
    ;;
  *) fail "unknown request '$1' (next-boot, cycle or off)" ;;
esac
dir=\${TAKT_CONTROL_DIR:-}
if [ -z "$dir" ]; then fail 'TAKT_CONTROL_DIR is not set (takt-power works inside a takt job)'; fi
if [ -f "$dir/$file" ]; then
  old=$(cat -- "$dir/$file" 2>/dev/null) || old=
  [ "$old" = "$value" ] || echo "takt-power: replaces the earlier request '$old' with '$value'" >&2
fi
# Write then rename, so the agent never reads half a request.
tmp="$dir/.$file.$$.tmp"
printf '%s\n' "$value" > "$tmp" || { rm -f -- "$tmp"; echo "takt-power: cannot write the request into $dir" >&2; exit 1; }
mv -f -- "$tmp" "$dir/$file"
echo "takt-power: asked for $(if [ $file = next_boot ]; then echo "next boot from $value"; else echo "power $value"; fi); the endpoint does it when this job has succeeded" >&2
`;

export const TAKT_IMAGE_USAGE = `usage: takt-image write NAME@VERSION DEVICE
       takt-image publish NAME@VERSION FILE

write: asks the takt agent to write image NAME@VERSION from the endpoint's catalog to DEVICE (an absolute
path: a block device such as /dev/vda, or an existing regular file) once this script has exited
successfully. The agent downloads it with the machine's token (resuming a broken download), checks its
sha256 against the catalog's while writing, fsyncs, and fails the job naming why when any of that fails:
image unknown, bad target, disk too small, truncated download, digest mismatch, write failed.
publish: asks the agent to upload FILE (an absolute path to a regular file this job built) into the
catalog as NAME@VERSION once this script has exited successfully, with this job as its provenance
(machine, task, pack, params); an existing version, or any failure, fails the job.
One request per job: a later call replaces an earlier one.
See docs/provisioning.md, "Deploying an image".`;

export const TAKT_IMAGE = `#!/usr/bin/env bash
# takt-image write NAME@VERSION DEVICE: ask the agent to write an image from the catalog to DEVICE when this
# job's script has exited successfully. Writes a request file the agent carries out; no token needed here.
set -u
usage() {
  cat <<'TAKT_USAGE'
${TAKT_IMAGE_USAGE}
TAKT_USAGE
}
fail() { echo "takt-image: $1" >&2; echo "usage: takt-image write NAME@VERSION DEVICE | takt-image publish NAME@VERSION FILE   (takt-image --help)" >&2; exit 1; }
for a in "$@"; do case $a in -h|--help) usage; exit 0 ;; esac; done
[ $# -ge 1 ] || fail 'say what to do (write or publish)'
case $1 in write|publish) ;; *) fail "unknown request '$1' (write or publish)" ;; esac
what=$1
[ $# -eq 3 ] || fail "$what takes NAME@VERSION and $(if [ $what = write ]; then echo DEVICE; else echo FILE; fi) (got $(($# - 1)) arguments)"
ref=$2
dev=$3
if ! [[ $ref =~ ^[${LOWER}0123456789][${LOWER}0123456789._-]*@[0-9A-Za-z.+-]+$ ]]; then
  fail "'$ref' is not NAME@VERSION (e.g. debian-min@1.0.0)"
fi
if [ $what = publish ]; then
  case $dev in /*) ;; *) fail "FILE must be an absolute path (e.g. $PWD/$dev), not '$dev'" ;; esac
  case $dev in *$'\\n'*) fail 'FILE must not contain a newline' ;; esac
  [ -f "$dev" ] || fail "$dev is not a regular file"
  [ -s "$dev" ] || fail "$dev is empty"
else
  case $dev in /*) ;; *) fail "DEVICE must be an absolute path (e.g. /dev/vda), not '$dev'" ;; esac
  case $dev in *$'\\n'*) fail 'DEVICE must not contain a newline' ;; esac
  [ -e "$dev" ] || fail "$dev does not exist (check the device name, e.g. lsblk)"
  [ -b "$dev" ] || [ -f "$dev" ] || fail "$dev is not a block device or a regular file"
fi
dir=\${TAKT_CONTROL_DIR:-}
if [ -z "$dir" ]; then fail 'TAKT_CONTROL_DIR is not set (takt-image works inside a takt job)'; fi
value="$ref"$'\\n'"$dev"
[ $what = publish ] && value="publish"$'\\n'"$value"
if [ -f "$dir/image" ]; then
  old=$(cat -- "$dir/image" 2>/dev/null) || old=
  [ "$old" = "$value" ] || echo "takt-image: replaces the earlier request '\${old//$'\\n'/ }' with '$ref $dev'" >&2
fi
# Write then rename, so the agent never reads half a request.
tmp="$dir/.image.$$.tmp"
printf '%s\\n' "$value" > "$tmp" || { rm -f -- "$tmp"; echo "takt-image: cannot write the request into $dir" >&2; exit 1; }
mv -f -- "$tmp" "$dir/image"
if [ $what = publish ]; then
  echo "takt-image: asked to publish $dev as $ref; the agent does it when this script has exited successfully" >&2
else
  echo "takt-image: asked to write $ref to $dev; the agent does it when this script has exited successfully" >&2
fi
`;

/** The helper commands a script gets, by name. */
export const HELPERS = [['takt-get', TAKT_GET], ['takt-set', TAKT_SET], ['takt-power', TAKT_POWER], ['takt-image', TAKT_IMAGE]] as const;

/** Writes the helpers into `binDir` (0755), replacing older versions atomically. */
export async function installHelpers(binDir: string): Promise<void> {
  await mkdir(binDir, { recursive: true });
  for (const [name, text] of HELPERS) {
    const tmp = join(binDir, `.${name}.${process.pid}.tmp`);
    await writeFile(tmp, text, { mode: 0o755 });
    await chmod(tmp, 0o755); // the umask may have narrowed the mode
    await rename(tmp, join(binDir, name));
  }
}
