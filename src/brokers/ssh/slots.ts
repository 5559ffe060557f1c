/**
 * The serve-wide bound on how many SSH machines run jobs at once (`--ssh-max-sessions`). First come,
 * first served; a waiter learns its place in the queue so its machine can say so.
 */
export class Slots {
  private used = 0;
  private readonly queue: Array<{ grant: () => void; onPlace?: (ahead: number) => void }> = [];

  constructor(readonly max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError('Slots: max must be a whole number of at least 1');
  }

  get inUse(): number {
    return this.used;
  }

  get waiting(): number {
    return this.queue.length;
  }

  /**
   * Resolves when a slot is free (at once when one is) with its release function. `onPlace` hears how
   * many waiters are ahead whenever that changes, while waiting. An aborted wait rejects.
   */
  acquire(signal?: AbortSignal, onPlace?: (ahead: number) => void): Promise<() => void> {
    if (this.used < this.max && this.queue.length === 0) return Promise.resolve(this.grant());
    return new Promise((resolve, reject) => {
      const entry = {
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(this.grant());
        },
        onPlace,
      };
      const onAbort = () => {
        const i = this.queue.indexOf(entry);
        if (i >= 0) this.queue.splice(i, 1);
        this.announce();
        reject(signal?.reason ?? new Error('aborted'));
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.queue.push(entry);
      onPlace?.(this.queue.length - 1);
    });
  }

  /** Takes a slot even when none is free: for a job already running on its host (it runs either way). */
  force(): () => void {
    return this.grant();
  }

  private grant(): () => void {
    this.used++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.used--;
      this.next();
    };
  }

  private next(): void {
    if (this.used >= this.max) return;
    const e = this.queue.shift();
    if (!e) return;
    e.grant();
    this.announce();
  }

  private announce(): void {
    this.queue.forEach((e, i) => e.onPlace?.(i));
  }
}
