/** Pure pieces of the operator fixes (FINDINGS nu12): when a lost job's machine was last heard from. */
import { describe, expect, it } from 'vitest';
import { lastHeard } from '../src/engine/engine.js';

describe('lastHeard: the later of the agent\'s lastSeenAt and the job\'s claim (F28)', () => {
  it.each([
    ['lastSeenAt batched before the claim: the claim', '2026-11-30T17:31:04.707Z', '2026-11-30T17:31:16.000Z', '2026-11-30T17:31:16.000Z'],
    ['heard after the claim (a heartbeat): that', '2026-11-30T17:31:30.000Z', '2026-11-30T17:31:16.000Z', '2026-11-30T17:31:30.000Z'],
    ['never seen: the claim', null, '2026-11-30T17:31:16.000Z', '2026-11-30T17:31:16.000Z'],
    ['no claim time: lastSeenAt', '2026-11-30T17:31:04.707Z', null, '2026-11-30T17:31:04.707Z'],
    ['neither', null, null, null],
  ] as const)('%s', (_n, seen, claimed, want) => {
    expect(lastHeard(seen, claimed)).toBe(want);
  });
});
