/**
 * The one esbuild call that bundles the compiled CLI (dist/cli/main.js) into an ESM tree: used for the
 * endpoint's own bundle at build time (dist/bundle, what bin/takt.js runs: one file to parse instead of
 * about 700 modules, so `takt serve` starts in less than half the CPU) and for the agent bundle a
 * joining host installs (join/bundle.ts). Options as measured in research/provisioning-facts.md §2:
 * ESM with code splitting (the CLI's lazy imports stay lazy), and a `require` for CommonJS dependencies.
 */
import { join } from 'node:path';

/**
 * Packages the endpoint's bundle leaves out: native addons found relative to their own files
 * (better-sqlite3, argon2, ssh2's cpu-features) and esbuild itself (its API runs a binary found beside its
 * package). Left as imports, they resolve from node_modules as usual. (The agent bundle, for hosts without
 * node_modules, leaves out fewer: join/bundle.ts.)
 */
export const NATIVE_PACKAGES = ['better-sqlite3', 'argon2', 'ssh2', 'cpu-features', 'esbuild'] as const;

/**
 * Bundles `ROOT/dist/cli/main.js` into `outdir` (main.js and its chunks).
 * `outdir` must sit two levels below a directory holding the package.json (and ui/, content/) the code
 * finds with `new URL('../../…', import.meta.url)`, as dist/cli/ does.
 * @throws Error whose message is esbuild's first error with its place (`file:line:col`).
 */
export async function bundleCli(root: string, outdir: string, external: readonly string[] = NATIVE_PACKAGES): Promise<void> {
  const esbuild = await import('esbuild');
  try {
    await esbuild.build({
      entryPoints: [join(root, 'dist', 'cli', 'main.js')],
      bundle: true,
      platform: 'node',
      target: `node${process.versions.node.split('.')[0]}`,
      format: 'esm',
      splitting: true,
      outdir,
      external: [...external],
      banner: { js: "import { createRequire as __takt_cr } from 'node:module'; const require = __takt_cr(import.meta.url);" },
      logLevel: 'silent',
    });
  } catch (err) {
    // esbuild's message is one summary line; the errors themselves say what and where.
    const first = (err as { errors?: Array<{ text: string; location?: { file: string; line: number; column: number } | null }> }).errors?.[0];
    const where = first?.location ? ` (${first.location.file}:${first.location.line}:${first.location.column})` : '';
    throw new Error(first ? `${first.text}${where}` : (err as Error).message.split('\n')[0]);
  }
}
