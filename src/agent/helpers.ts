/**
 * The helper commands a script gets on its PATH. They are plain bash so they work in any task, need no
 * connection to the endpoint, and never see the machine token: the agent writes params into files before
 * the script starts and reads outputs back after it ends.
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

/** Writes the helpers into `binDir` (0755), replacing older versions atomically. */
export async function installHelpers(binDir: string): Promise<void> {
  await mkdir(binDir, { recursive: true });
  for (const [name, text] of [['takt-get', TAKT_GET], ['takt-set', TAKT_SET]] as const) {
    const tmp = join(binDir, `.${name}.${process.pid}.tmp`);
    await writeFile(tmp, text, { mode: 0o755 });
    await chmod(tmp, 0o755); // the umask may have narrowed the mode
    await rename(tmp, join(binDir, name));
  }
}
