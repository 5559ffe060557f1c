#!/usr/bin/env node
// Entry point for `npx takt` and `npm start`: runs the compiled CLI (build with `npm run build`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));
if (!existsSync(main)) {
  console.error('takt: not built yet — run `npm run build` (or `npm start`, which builds first)');
  process.exit(1);
}
await import(main);
