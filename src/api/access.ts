/**
 * Route permissions (issue #16, part 1): every route declares the permission a user needs
 * (`config.permission`, model/permissions.ts) and the server refuses to start if one does not; a user's
 * request is allowed when their token's grants hold that permission — on the route's machine, for a role
 * bound to some machines only — and answers are shaped for them (secure values redacted without
 * `secrets`, lists filtered to the machines a scoped role covers).
 */
import type { FastifyContextConfig, FastifyInstance } from 'fastify';
import { TaktError } from '../model/errors.js';
import { decide, isRouteAccess, machineVisible, patternGrants, unscoped, type MachineScopeView, type Permission, type RouteAccess } from '../model/permissions.js';
import { isSealed, MASK } from '../model/secure.js';
import type { Store } from '../store/store.js';
import type { Principal } from './auth.js';

/** One route as declared: method, URL pattern, what it needs and what its `:id` names. */
export interface DeclaredRoute {
  method: string;
  url: string;
  permission: RouteAccess | undefined;
  scope: FastifyContextConfig['scope'];
  /** Machine tokens may call it (machine routes keep their own checks). */
  machine: boolean;
  /** Hidden from the OpenAPI document (the UI page, health, join scripts). */
  hidden: boolean;
}

/** The routes of an app as they are added, with a check that each declares a permission. */
export interface RouteTable {
  readonly list: DeclaredRoute[];
  /** @throws Error naming every route without a valid permission declaration. */
  assertDeclared(): void;
  /** Adds `x-takt-permission` to each operation of an OpenAPI document (and `security: []` to public ones). */
  annotate<T extends { paths?: Record<string, Record<string, Record<string, unknown>>> }>(doc: T): T;
}

const routeTables = new WeakMap<FastifyInstance, RouteTable>();

/** The declared routes of an app made by buildServer (the permission test walks them). */
export function routeTableOf(app: FastifyInstance): RouteTable {
  const t = routeTables.get(app);
  if (!t) throw new Error('routeTableOf: not an app made by buildServer');
  return t;
}

/** Starts collecting `app`'s routes; call before adding any. */
export function declaredRoutes(app: FastifyInstance): RouteTable {
  const list: DeclaredRoute[] = [];
  app.addHook('onRoute', (r) => {
    const methods = Array.isArray(r.method) ? r.method : [r.method];
    const cfg = (r.config ?? {}) as FastifyContextConfig;
    for (const method of methods) {
      list.push({ method, url: r.url, permission: cfg.permission, scope: cfg.scope, machine: !!cfg.machine, hidden: !!(r.schema as { hide?: boolean } | undefined)?.hide });
    }
  });
  const table: RouteTable = {
    list,
    assertDeclared() {
      const bad = list.filter((r) => !isRouteAccess(r.permission));
      if (bad.length) {
        throw new Error(`every route must declare the permission it needs (config.permission: 'resource:verb' or 'public'); these do not: ${bad.map((r) => `${r.method} ${r.url}${r.permission ? ` (${String(r.permission)})` : ''}`).join(', ')}`);
      }
    },
    annotate(doc) {
      for (const [path, ops] of Object.entries(doc.paths ?? {})) {
        const url = path.replace(/\{([^}]+)\}/g, ':$1');
        for (const [method, op] of Object.entries(ops)) {
          const r = list.find((x) => x.url === url && x.method.toLowerCase() === method);
          if (!r?.permission) continue;
          op['x-takt-permission'] = r.permission;
          if (r.permission === 'public') op.security = [];
        }
      }
      return doc;
    },
  };
  routeTables.set(app, table);
  return table;
}

/** Decides users' requests and shapes their answers; reads machines only for roles limited to some. */
export class AccessControl {
  constructor(private readonly store: Pick<Store, 'getMachine' | 'getMachineByName' | 'getJobState' | 'getWorkOrder'>) {}

  /**
   * Allows a user's request or throws 403 saying which permission it needs and what their roles grant.
   * @throws TaktError forbidden.
   */
  async check(p: Extract<Principal, { kind: 'user' }>, cfg: FastifyContextConfig | undefined, params: Record<string, string> | undefined): Promise<void> {
    const permission = cfg?.permission;
    if (permission === 'public' || permission === 'self') return;
    if (!permission) throw new TaktError('forbidden', 'this route declares no permission, so no user may call it');
    const scoped = !unscoped(p.grants, permission);
    const target = scoped && cfg?.scope && cfg.scope !== 'list' && params?.id !== undefined ? await this.machineOf(cfg.scope, params.id) : null;
    const d = decide(p.grants, permission, target);
    if (!d.allowed) throw new TaktError('forbidden', `user ${p.name}: ${d.reason}`);
  }

  /** The machine a route's `:id` is about (a machine that does not exist matches no selector). */
  private async machineOf(scope: 'machine' | 'job' | 'workorder', id: string): Promise<MachineScopeView> {
    let machineId: string | undefined;
    if (scope === 'machine') {
      const m = (await this.store.getMachine(id)) ?? (await this.store.getMachineByName(id));
      if (m) return m;
    } else if (scope === 'job') machineId = (await this.store.getJobState(id))?.machineId;
    else machineId = (await this.store.getWorkOrder(id))?.machineId;
    const m = machineId ? await this.store.getMachine(machineId) : undefined;
    return m ?? NO_MACHINE;
  }

  /**
   * A user's answer as they may see it: sealed values become the mask unless they hold `RESOURCE:secrets`
   * for the route's resource, and a list route's items are only the machines (or things on machines) a
   * scoped role covers. Others' answers are returned as they are.
   */
  async shape(p: Principal | null, cfg: FastifyContextConfig | undefined, payload: unknown): Promise<unknown> {
    if (!p || p.kind !== 'user' || !cfg?.permission || cfg.permission === 'public' || cfg.permission === 'self' || typeof payload !== 'object' || payload === null) return payload;
    const permission = cfg.permission;
    let out: unknown = payload;
    if (cfg.scope === 'list' && !unscoped(p.grants, permission) && Array.isArray((payload as { items?: unknown }).items)) {
      const cache = new Map<string, MachineScopeView>();
      const kept: unknown[] = [];
      for (const item of (payload as { items: Array<Record<string, unknown>> }).items) {
        const view = await this.itemMachine(item, cache);
        if (view && machineVisible(p.grants, permission, view)) kept.push(item);
      }
      out = { ...(payload as object), items: kept, ...('total' in (payload as object) ? { total: kept.length } : {}) };
    }
    const secrets = `${permission.split(':')[0]}:secrets` as Permission;
    if (!p.grants.some((g) => g.permissions.some((pat) => patternGrants(pat, secrets)))) out = redact(out, 0);
    return out;
  }

  private async itemMachine(item: Record<string, unknown>, cache: Map<string, MachineScopeView>): Promise<MachineScopeView | undefined> {
    if (typeof item.machineId !== 'string') return item.labels !== undefined ? { labels: (item.labels ?? {}) as Record<string, string>, pipeline: (item.pipeline ?? null) as string | null } : undefined;
    const hit = cache.get(item.machineId);
    if (hit) return hit;
    const m = (await this.store.getMachine(item.machineId)) ?? NO_MACHINE;
    cache.set(item.machineId, m);
    return m;
  }
}

const NO_MACHINE: MachineScopeView = { labels: {}, pipeline: null };

/** A copy of `v` with every sealed value (`{"$secure": …}`) replaced by the mask; bounded depth (answers are ≤ 64 levels). */
export function redact(v: unknown, depth: number): unknown {
  if (isSealed(v)) return MASK;
  if (depth > 100 || typeof v !== 'object' || v === null) return v;
  if (Array.isArray(v)) return v.map((x) => redact(x, depth + 1));
  if (typeof (v as { toJSON?: unknown }).toJSON === 'function') return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v as object)) out[k] = redact(x, depth + 1);
  return out;
}
