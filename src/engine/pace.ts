/**
 * Pacing for long work on the event loop. The store is synchronous (SQLite) and YAML/JSON work is CPU:
 * a loop that only awaits promises never lets the event loop serve other clients. A Pacer counts the work
 * done (in any unit: bytes, objects) and yields a turn of the event loop each time `budget` is reached.
 */

/** Resolves on the next turn of the event loop, after pending I/O callbacks (setImmediate). */
export const yieldToLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export class Pacer {
  private done = 0;

  /** `budget`: units of work between two yields (e.g. bytes parsed). */
  constructor(private readonly budget: number) {}

  /** Counts `units` of work done; yields to the event loop when the budget is used up. */
  async step(units = 1): Promise<void> {
    this.done += units;
    if (this.done < this.budget) return;
    this.done = 0;
    await yieldToLoop();
  }
}
