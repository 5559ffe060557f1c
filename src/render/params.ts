/**
 * Parameter resolution with provenance. Precedence, highest first (DESIGN.md): work-order params,
 * the machine's outputs (observed: what its jobs set), machine params, machine profiles in order (a profile above the profiles it includes), stage params
 * (or the blueprint's for a work order), pipeline params, the `global` profile, the param's schema default.
 */
import { GLOBAL_PROFILE, type ContentSet, type ParamDef } from '../model/content.js';
import { isSealed, MASK } from '../model/secure.js';

export interface ParamLayer {
  /** Where the values come from, e.g. `machine`, `profile:web`, `stage:prepare`, `pipeline:demo`. */
  from: string;
  values: Record<string, unknown>;
}

export interface LayerContext {
  /** `outputs`: what the machine's jobs set (observed), seen above its params as `from: 'outputs'`. */
  machine: { params: Record<string, unknown>; profiles: string[]; outputs?: Record<string, unknown> };
  stage?: { name: string; params?: Record<string, unknown> };
  blueprint?: { name: string; params?: Record<string, unknown> };
  pipeline?: { name: string; params?: Record<string, unknown> };
  workOrder?: { id: string; params: Record<string, unknown> };
}

/** The profile and the profiles it includes, highest precedence first; a cycle is cut (lint reports it). */
function profileLayers(content: ContentSet, name: string, seen: Set<string>): ParamLayer[] {
  if (seen.has(name)) return [];
  seen.add(name);
  const p = content.objects.profiles.get(name)?.def;
  if (!p) return [];
  const layers: ParamLayer[] = [{ from: `profile:${name}`, values: p.params ?? {} }];
  for (const inc of p.include ?? []) layers.push(...profileLayers(content, inc, seen));
  return layers;
}

export function paramLayers(content: ContentSet, ctx: LayerContext): ParamLayer[] {
  const layers: ParamLayer[] = [];
  if (ctx.workOrder) layers.push({ from: `workorder:${ctx.workOrder.id}`, values: ctx.workOrder.params });
  // Outputs sit where they sat when jobs wrote them into params: above everything set for the machine.
  if (ctx.machine.outputs && Object.keys(ctx.machine.outputs).length) layers.push({ from: 'outputs', values: ctx.machine.outputs });
  layers.push({ from: 'machine', values: ctx.machine.params });
  const seen = new Set<string>([GLOBAL_PROFILE]);
  for (const p of ctx.machine.profiles) layers.push(...profileLayers(content, p, seen));
  if (ctx.stage) layers.push({ from: `stage:${ctx.stage.name}`, values: ctx.stage.params ?? {} });
  if (ctx.blueprint) layers.push({ from: `blueprint:${ctx.blueprint.name}`, values: ctx.blueprint.params ?? {} });
  if (ctx.pipeline) layers.push({ from: `pipeline:${ctx.pipeline.name}`, values: ctx.pipeline.params ?? {} });
  layers.push(...profileLayers(content, GLOBAL_PROFILE, new Set()));
  return layers;
}

export interface ResolvedParam {
  name: string;
  /** The value as stored: secure values stay sealed here; `open` them only to hand them to an agent. */
  value: unknown;
  from: string;
  secure: boolean;
}

export function resolveParam(content: ContentSet, layers: ParamLayer[], name: string): ResolvedParam | undefined {
  const def: ParamDef | undefined = content.objects.params.get(name)?.def;
  const secure = def?.secure === true;
  for (const layer of layers) {
    if (Object.prototype.hasOwnProperty.call(layer.values, name)) {
      return { name, value: layer.values[name], from: layer.from, secure: secure || isSealed(layer.values[name]) };
    }
  }
  const schema = def?.schema as { default?: unknown } | undefined;
  if (schema && 'default' in schema) return { name, value: schema.default, from: 'default', secure };
  return undefined;
}

/** For display: the value with secure ones masked. */
export function displayValue(p: ResolvedParam): unknown {
  return p.secure ? MASK : p.value;
}
