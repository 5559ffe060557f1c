/**
 * How tests find what an endpoint's netns broker made on the host: its names carry the endpoint's id
 * (src/brokers/netns.ts), and the names it made are kept in `<data>/netns.json`.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

interface NetState {
  prefix?: string;
  port: number;
  bridge?: string;
  namespaces?: Record<string, string>;
}

export function netnsState(data: string): NetState | null {
  const file = join(data, 'netns.json');
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as NetState) : null;
}

/** The namespace the endpoint on `data` made for machine `id` (throws when it made none). */
export function namespaceOf(data: string, id: string): string {
  const ns = netnsState(data)?.namespaces?.[id];
  if (!ns) throw new Error(`the endpoint on ${data} made no namespace for ${id}`);
  return ns;
}

/** The endpoint's bridge: the one it recorded, else the name it would get (endpoint id, else the data dir's hash). */
export function bridgeOf(data: string): string {
  const recorded = netnsState(data)?.bridge;
  if (recorded) return recorded;
  const idFile = join(data, 'endpoint-id');
  if (existsSync(idFile)) return `tkb-${readFileSync(idFile, 'utf8').trim()}`;
  return `tkb-${createHash('sha256').update(data).digest('hex').slice(0, 8)}`;
}
