/**
 * `npm run build`'s last step: bundles the compiled CLI into dist/bundle/ (build/esbuild.ts), which
 * bin/takt.js runs when it is not older than dist/cli/main.js. Run as a script: `node dist/build/endpoint-bundle.js`.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleCli } from './esbuild.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const outdir = join(root, 'dist', 'bundle');
try {
  // A fresh directory: chunks of an earlier build would otherwise pile up beside the new ones.
  await rm(outdir, { recursive: true, force: true });
  await bundleCli(root, outdir);
} catch (err) {
  console.error(`takt build: cannot bundle the CLI: ${(err as Error).message}`);
  process.exitCode = 1;
}
