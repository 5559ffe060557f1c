import { randomBytes } from 'node:crypto';

/** Time-ordered ids (`j-` + base36 millis + random) so jobs sort by creation even across replicas. */
export function newId(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
}
