import { randomFillSync } from 'node:crypto';

/**
 * Random bytes drawn from the CSPRNG a few kilobytes at a time: one call per id cost more than the rest
 * of making the id (a job makes one per claim).
 */
const pool = Buffer.alloc(4096);
let used = pool.length;

function random4(): string {
  if (used + 4 > pool.length) {
    randomFillSync(pool);
    used = 0;
  }
  used += 4;
  return pool.toString('hex', used - 4, used);
}

/** Time-ordered ids (`j-` + base36 millis + random) so jobs sort by creation even across replicas. */
export function newId(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}${random4()}`;
}
