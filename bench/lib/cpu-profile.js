// Preloaded with NODE_OPTIONS=--import when a bench runs with --profile: records a V8 CPU profile of
// this process and writes it on exit to $TAKT_BENCH_PROFILE_DIR/<command>-<pid>.cpuprofile.
// Plain JavaScript and the inspector API because Node 20 refuses --cpu-prof in NODE_OPTIONS, and
// NODE_OPTIONS is the only way into the agents the local broker spawns (they inherit the server's env).
// At most $TAKT_BENCH_PROFILE_AGENTS agents are profiled (first come, first served): fifty profiled
// agents starting at once on two cores slow each other down until their first claims time out.
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';

const dir = process.env.TAKT_BENCH_PROFILE_DIR;
const command = process.argv[2] ?? 'node';

function takeSlot() {
  if (command !== 'agent') return true;
  const max = Number(process.env.TAKT_BENCH_PROFILE_AGENTS ?? 'Infinity');
  for (let k = 0; k < max; k++) {
    try {
      closeSync(openSync(join(dir, `.agent-slot-${k}`), 'wx'));
      return true;
    } catch {
      // taken by another agent
    }
  }
  return false;
}

if (dir && takeSlot()) {
  const session = new Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 1000 });
  session.post('Profiler.start');
  process.on('exit', () => {
    // The in-thread inspector answers synchronously, so this works inside the exit handler.
    session.post('Profiler.stop', (err, res) => {
      if (!err) writeFileSync(join(dir, `${command}-${process.pid}.cpuprofile`), JSON.stringify(res.profile));
    });
  });
}
