/**
 * `takt`: builds the command tree (program.ts) and runs it; an error is one line that says what to fix
 * (exit codes, usage.ts: 1 failed, 2 bad usage, 3 network, 4 not found, 5 unauthorized).
 */
import { buildProgram, commandOf, report } from './program.js';

// `takt machines list -o name | head -1`: the reader leaving is the end of the output, not an error.
// Without a listener a write to the closed pipe throws EPIPE as an unhandled 'error' event (a stack
// trace); exit quietly instead, as Unix tools do. Other stream errors still go to report().
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
}

// The agent builds only its own commands: it starts on every boot of a discovered machine (program.ts).
const program = await buildProgram(commandOf(process.argv) === 'agent' ? { only: 'agent' } : {});
try {
  await program.parseAsync(process.argv);
} catch (err) {
  process.exitCode = report(err);
}
