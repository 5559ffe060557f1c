#!/usr/bin/env node
// Entry point for `npx takt` and `npm start`: runs the compiled CLI (build with `npm run build`).
// `npm run build` also bundles it into dist/bundle (one file to load instead of ~700 modules: `takt serve`
// starts in less than half the CPU); the bundle is used unless it is older than the compiled CLI (a
// `tsc` run since the last full build), so a stale bundle never runs.
import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));
const bundled = fileURLToPath(new URL('../dist/bundle/main.js', import.meta.url));
if (!existsSync(main)) {
  console.error('takt: not built yet — run `npm run build` (or `npm start`, which builds first)');
  process.exit(1);
}
const fresh = (() => {
  try {
    return statSync(bundled).mtimeMs >= statSync(main).mtimeMs;
  } catch {
    return false;
  }
})();
await import(fresh && process.env.TAKT_NO_BUNDLE !== '1' ? bundled : main);
