/**
 * `takt`: builds the command tree (program.ts) and runs it; an error is one line that says what to fix
 * (exit codes: 1 failed, 3 network, 4 not found, 5 unauthorized).
 */
import { buildProgram, report } from './program.js';

const program = await buildProgram();
try {
  await program.parseAsync(process.argv);
} catch (err) {
  process.exitCode = report(err);
}
