/**
 * Which script a task runs in an environment: the variant for that environment (a script, or a declared
 * no-op) and otherwise the default script. One rule for the engine, `exercise` and lint.
 */
import type { TaskDef } from '../model/content.js';

export type TaskAction =
  | { script: string; variant?: string }
  | { noop: string; variant: string };

/** What `task` does in `env`, or undefined when it has nothing for it (lint reports that for pipelines). */
export function taskActionFor(task: Pick<TaskDef, 'script' | 'variants'>, env: string): TaskAction | undefined {
  // Defensive about shapes: lint calls this on objects that may have failed schema validation.
  const variants = task.variants as Record<string, unknown> | undefined;
  const v = typeof variants === 'object' && variants !== null && Object.prototype.hasOwnProperty.call(variants, env) ? variants[env] : undefined;
  if (typeof v === 'object' && v !== null) {
    const { script, noop } = v as { script?: unknown; noop?: unknown };
    if (typeof script === 'string') return { script, variant: env };
    if (typeof noop === 'string') return { noop, variant: env };
  }
  return typeof task.script === 'string' ? { script: task.script } : undefined;
}
