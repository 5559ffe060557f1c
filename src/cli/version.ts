/** takt's version, from its package.json (the endpoint reports it; the agent sends it as its user agent). */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const VERSION = (JSON.parse(readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8')) as { version: string }).version;
