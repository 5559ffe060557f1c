/**
 * What a machine may be given, beyond each value's own schema: an environment its pipeline exercises,
 * and params some content declares (a typo such as `fail_verfy` would otherwise be stored silently and
 * change nothing). Pure checks over a ContentSet; the engine calls them on create, update and
 * (re)assignment, a rollout before it starts, and on a work order's params against its blueprint.
 */
import { closest } from '../content/check.js';
import type { ContentSet } from '../model/content.js';
import { TaktError } from '../model/errors.js';

/**
 * @throws TaktError invalid at `/environment` listing the pipeline's environments, when `pipeline`
 * declares `environments` and `environment` is not one of them. A pipeline without the list accepts any.
 */
export function assertEnvironment(content: ContentSet, machine: string, environment: string, pipeline: string | null): void {
  const envs = pipeline ? content.objects.pipelines.get(pipeline)?.def.environments : undefined;
  if (!envs || envs.includes(environment)) return;
  throw new TaktError(
    'invalid',
    `machine '${machine}' is in environment '${environment}', which pipeline '${pipeline}' does not exercise; it runs in: ${envs.join(', ')}. Give the machine one of them (--environment) or choose another pipeline`,
    { path: '/environment', details: { environment, pipeline, environments: envs } },
  );
}

/** Every param name some content declares: param definitions, and tasks' required, optional and outputs. */
export function declaredParams(content: ContentSet): Set<string> {
  const names = new Set(content.objects.params.keys());
  for (const { def } of content.objects.tasks.values()) {
    for (const n of [...(def.params?.required ?? []), ...(def.params?.optional ?? []), ...Object.keys(def.outputs ?? {})]) names.add(n);
  }
  return names;
}

/**
 * @throws TaktError invalid at `/params/<name>` for the first param set (non-null) in `patch` that no
 * content declares, with the closest declared name when one is near.
 */
export function assertDeclared(content: ContentSet, patch: Record<string, unknown> | undefined): void {
  refuseUndeclared(declaredParams(content), patch, 'any param definition or task', '');
}

/**
 * The params a work order of `blueprint` can give its tasks: what the blueprint's tasks declare
 * (required, optional, outputs) and the blueprint's own params. Empty for a blueprint not in `content`.
 */
export function blueprintParams(content: ContentSet, blueprint: string): Set<string> {
  const bp = content.objects.blueprints.get(blueprint)?.def;
  const names = new Set(Object.keys(bp?.params ?? {}));
  for (const t of bp?.tasks ?? []) {
    const def = content.objects.tasks.get(t)?.def;
    for (const n of [...(def?.params?.required ?? []), ...(def?.params?.optional ?? []), ...Object.keys(def?.outputs ?? {})]) names.add(n);
  }
  return names;
}

/**
 * A work order's params, as a machine's are checked: each must be one a task of its blueprint declares
 * (a work-order param no task reads changes nothing, and is most often a typo).
 * @throws TaktError invalid at `<at>/params/<name>` for the first undeclared one, with the closest
 *   declared name when one is near, or saying that the blueprint's tasks declare none.
 */
export function assertWorkOrderDeclared(content: ContentSet, blueprint: string, params: Record<string, unknown> | undefined, at = ''): void {
  const known = blueprintParams(content, blueprint);
  const list = known.size ? `; they declare: ${[...known].sort().join(', ')}` : '; they declare none';
  refuseUndeclared(known, params, `any task of blueprint '${blueprint}'`, at, list);
}

function refuseUndeclared(known: Set<string>, patch: Record<string, unknown> | undefined, by: string, at: string, list = ''): void {
  if (!patch) return;
  const unknown = Object.keys(patch).filter((k) => patch[k] !== null && !known.has(k));
  if (unknown.length === 0) return;
  const name = unknown[0]!;
  const hint = closest(name, [...known]);
  throw new TaktError(
    'invalid',
    `param '${name}' is not declared by ${by}${hint ? ` (did you mean '${hint}'?)` : list}; to store it anyway, pass --allow-undeclared (API: allowUndeclared: true)`,
    { path: `${at}/params/${name}`, details: { undeclared: unknown, ...(hint ? { suggestion: hint } : {}) } },
  );
}
