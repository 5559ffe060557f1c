/**
 * The machine-token cache (api/auth.ts) follows deletions and re-issued tokens from any replica: their
 * events drop the entry, and a digest read from the store while such an event arrived is not cached (it
 * may be the one the event invalidates). A fake store: its read is held until the test lets it answer.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Authenticator } from '../src/api/auth.js';
import type { TaktEvent } from '../src/model/machine.js';
import type { EventListener, Store } from '../src/store/store.js';

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const TOKEN = 'tkm.m-1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';

function fakeStore() {
  const listeners: EventListener[] = [];
  let hash: string | undefined = sha(TOKEN);
  let reads = 0;
  let hold: Promise<void> | null = null;
  const store = {
    onEvents: (l: EventListener) => {
      listeners.push(l);
      return () => undefined;
    },
    getMachineTokenHash: async () => {
      reads += 1;
      const answer = hash;
      if (hold) await hold;
      return answer;
    },
  } as unknown as Store;
  const emit = (topic: string) => listeners.forEach((l) => l([{ id: 1, topic, at: '', data: null } satisfies TaktEvent]));
  return {
    store,
    emit,
    reads: () => reads,
    remove: () => (hash = undefined),
    holdReads: () => {
      let release!: () => void;
      hold = new Promise((r) => (release = r));
      return () => {
        hold = null;
        release();
      };
    },
  };
}

describe('machine token cache across replicas', () => {
  it('caches a verified token, and drops it on a delete event (from any replica)', async () => {
    const f = fakeStore();
    const auth = new Authenticator('admin-token', f.store);
    await expect(auth.authenticate(`Bearer ${TOKEN}`)).resolves.toEqual({ kind: 'machine', machineId: 'm-1' });
    await auth.authenticate(`Bearer ${TOKEN}`);
    expect(f.reads()).toBe(1);
    f.remove();
    f.emit('machines.delete.m-1');
    await expect(auth.authenticate(`Bearer ${TOKEN}`)).rejects.toThrow(/token not accepted/);
  });

  it('a digest read while a delete event arrived is not cached', async () => {
    const f = fakeStore();
    const auth = new Authenticator('admin-token', f.store);
    const release = f.holdReads();
    // The read has the old digest; the machine is deleted (on another replica) before it answers.
    const first = auth.authenticate(`Bearer ${TOKEN}`);
    f.remove();
    f.emit('machines.delete.m-1');
    release();
    await first;
    await expect(auth.authenticate(`Bearer ${TOKEN}`)).rejects.toThrow(/token not accepted/);
    expect(f.reads()).toBe(2);
  });
});
