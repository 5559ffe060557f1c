import { randomFillSync } from 'node:crypto';
import { TaktError } from '../model/errors.js';

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

/**
 * The prefixes of takt's ids, one letter and a dash: `m-` machines, `j-` jobs, `w-` work orders, `r-`
 * rollouts. Machines are looked up by id or name (id first), so a name in this shape could shadow, or be
 * shadowed by, an id; names never take it.
 */
export const ID_PREFIXES = { machine: 'm', job: 'j', workOrder: 'w', rollout: 'r' } as const;

const ID_SHAPE = new RegExp(`^[${Object.values(ID_PREFIXES).join('')}]-[a-z0-9]+$`);

/** Whether `name` has the shape of a takt id (`m-1a2b3c`, `j-…`, `w-…`, `r-…`). */
export function looksLikeId(name: string): boolean {
  return ID_SHAPE.test(name);
}

/**
 * Refuses a machine name in the shape of a takt id.
 * @throws TaktError `invalid` (422) at `path`, saying why and what to name it instead.
 */
export function assertMachineName(name: string, path = '/name'): void {
  if (!looksLikeId(name)) return;
  throw new TaktError(
    'invalid',
    `machine name '${name}' looks like a takt id (m-…, j-…, w-…, r-…: one of those letters, a dash, then letters and digits), and lookups by id or name would confuse it with another object; choose a name that does not start with one letter and a dash, e.g. '${name.slice(0, 1)}${name.slice(1).replace(/^-/, 'x-')}' or 'web-1'`,
    { path },
  );
}
