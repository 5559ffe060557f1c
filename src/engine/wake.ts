/**
 * Wake-ups for long-polls: a claim or a jobEnded wait sleeps on its machine until a committed change to
 * the machine (or its work orders) wakes it, or its own bound passes. Each machine has a generation,
 * moved by every wake: a waiter reads it before it looks at the store and sleeps only if it has not moved
 * since, so a change committed between its look and its sleep is never missed. In memory, per endpoint.
 */

/** The long-poll waiters of every machine, by machine id. */
export class Wakeups {
  private readonly waiters = new Map<string, { gen: number; wake: Set<() => void> }>();

  /** The machine's wake count so far (0 before its first wake). */
  generation(machineId: string): number {
    return this.waiters.get(machineId)?.gen ?? 0;
  }

  /** Wakes every waiter of the machine and moves its generation on. */
  wake(machineId: string) {
    const w = this.waiters.get(machineId);
    if (!w) {
      this.waiters.set(machineId, { gen: 1, wake: new Set() });
      return;
    }
    w.gen += 1;
    for (const f of w.wake) f();
    w.wake.clear();
  }

  /** Resolves at the machine's next wake, after `ms` milliseconds, or on abort, whichever comes first. */
  waitForWake(machineId: string, ms: number, signal?: AbortSignal): Promise<void> {
    let w = this.waiters.get(machineId);
    if (!w) {
      w = { gen: 0, wake: new Set() };
      this.waiters.set(machineId, w);
    }
    const entry = w;
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        entry.wake.delete(done);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      entry.wake.add(done);
      signal?.addEventListener('abort', done, { once: true });
    });
  }

  /** Wakes every machine that has waiters or a generation (the content changed: any claim may find work). */
  wakeEvery(): void {
    for (const id of [...this.waiters.keys()]) this.wake(id);
  }

  /** Lets every waiter of every machine go at once (the endpoint stops). */
  wakeAll(): void {
    for (const w of this.waiters.values()) for (const f of w.wake) f();
  }
}
