/**
 * Route permissions (issue #16, part 1): every route declares the permission a user needs
 * (`config.permission`, model/permissions.ts) and the server refuses to start if one does not; a user's
 * request is allowed when their token's grants hold that permission — on the route's machine, for a role
 * bound to some machines only — and answers are shaped for them (secure values redacted without
 * `secrets`, lists filtered to the machines a scoped role covers).
 */
import type { FastifyContextConfig, FastifyInstance } from 'fastify';
import { TaktError } from '../model/errors.js';
import { decide, grantCovers, isRouteAccess, isScoped, machineVisible, patternGrants, type Grant, type MachineScopeView, type Permission, type RouteAccess } from '../model/permissions.js';
import { CONTENT_KINDS } from '../model/content.js';
import type { TaktEvent } from '../model/machine.js';
import { isSealed, MASK } from '../model/secure.js';
import type { Principal } from './auth.js';
import { ScopeIndex, type ScopeIndexStore } from './scope-index.js';

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

/**
 * Decides users' requests and shapes their answers. A role limited to some machines needs the request's
 * machine (its labels and pipeline): that comes from the in-memory ScopeIndex (scope-index.ts), fed by
 * store events from every replica, so a scoped check costs no store read once the machine is known.
 */
export class AccessControl {
  readonly index: ScopeIndex;
  private readonly maskedEvents = new WeakMap<TaktEvent, unknown>();

  /** @param index the index to use (one is made on `store` when absent). */
  constructor(store: ScopeIndexStore, index?: ScopeIndex) {
    this.index = index ?? new ScopeIndex(store);
  }

  /** Stops following the store's events. */
  close(): void {
    this.index.close();
  }

  /**
   * Allows a user's request or throws 403 saying which permission it needs and what their roles grant.
   * The common answers come from `held` (memoised per grants): an unscoped holder passes at once, a scoped
   * one when a holding grant covers the route's machine; everything else is decided by `decide`, which
   * also words the refusal.
   * @throws TaktError forbidden.
   */
  async check(p: Extract<Principal, { kind: 'user' }>, cfg: FastifyContextConfig | undefined, params: Record<string, string> | undefined): Promise<void> {
    const permission = cfg?.permission;
    if (permission === 'public' || permission === 'self') return;
    if (!permission) throw new TaktError('forbidden', 'this route declares no permission, so no user may call it');
    const h = held(p.grants, permission);
    if (h.unscoped) return;
    // From memory without a promise when the index holds the machine (the hot path of a scoped reader).
    const id = cfg?.scope === 'machine' ? params?.id : undefined;
    const target = h.holding.length > 0 && cfg?.scope && cfg.scope !== 'list' && params?.id !== undefined ? ((id !== undefined ? this.index.cached(id) : undefined) ?? (await this.machineOf(cfg.scope, params.id))) : null;
    if (target && h.holding.some((g) => grantCovers(g, target))) return;
    const d = decide(p.grants, permission, target);
    if (!d.allowed) throw new TaktError('forbidden', `user ${p.name}: ${d.reason}`);
  }

  /** The machine a route's `:id` is about (a machine that does not exist matches no selector). */
  private async machineOf(scope: 'machine' | 'job' | 'workorder', id: string): Promise<MachineScopeView> {
    const m = scope === 'machine' ? await this.index.machine(id) : scope === 'job' ? await this.index.machineOfJob(id) : await this.index.machineOfWorkOrder(id);
    return m ?? NO_MACHINE;
  }

  /**
   * A user's answer before it is serialised: a list route's items are only the machines (or things on
   * machines) a scoped role covers; others' answers are returned as they are. Sealed values are masked
   * after serialisation (`redactText`), where finding that there are none costs one substring search
   * instead of a walk of the whole answer.
   */
  async shape(p: Principal | null, cfg: FastifyContextConfig | undefined, payload: unknown): Promise<unknown> {
    if (!p || p.kind !== 'user' || !cfg?.permission || cfg.permission === 'public' || cfg.permission === 'self' || typeof payload !== 'object' || payload === null) return payload;
    const permission = cfg.permission;
    if (cfg.scope !== 'list' || held(p.grants, permission).unscoped || !Array.isArray((payload as { items?: unknown }).items)) return payload;
    const items = (payload as { items: Array<Record<string, unknown>> }).items;
    const kept: unknown[] = [];
    // One decision per machine: a job list is usually all on one machine.
    const seen = new Map<string, boolean>();
    for (const item of items) {
      const id = typeof item.machineId === 'string' ? item.machineId : undefined;
      let visible = id !== undefined ? seen.get(id) : undefined;
      if (visible === undefined) {
        // From memory without a promise when the index holds the machine (every item of a job list is on one).
        const view = (id !== undefined ? this.index.cached(id) : undefined) ?? (await this.itemMachine(item));
        visible = !!view && machineVisible(p.grants, permission, view);
        if (id !== undefined) seen.set(id, visible);
      }
      if (visible) kept.push(item);
    }
    // Nothing filtered out (the usual case for a scoped reader of its own machines): the answer as it is.
    if (kept.length === items.length) return payload;
    return { ...(payload as object), items: kept, ...('total' in (payload as object) ? { total: kept.length } : {}) };
  }

  /**
   * A user's serialised JSON answer as they may see it: sealed values become the mask unless they hold
   * `RESOURCE:secrets` for the route's resource. A sealed value serialises as `{"$secure":…}`, so an
   * answer without that key text holds none and is returned as it is (the usual case); one with it is
   * parsed, masked (`redact`) and serialised again. Others' answers are returned as they are.
   */
  redactText(p: Principal | null, cfg: FastifyContextConfig | undefined, text: string): string {
    if (!p || p.kind !== 'user' || !cfg?.permission || cfg.permission === 'public' || cfg.permission === 'self') return text;
    if (!text.includes(SEALED_KEY) || holdsSecrets(p.grants, cfg.permission.split(':')[0]!)) return text;
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      // Not JSON after all: nothing of it is a sealed value to mask as one; withheld rather than risked.
      throw new TaktError('internal', 'an answer could not be checked for secure values; the endpoint log has the details');
    }
    return JSON.stringify(redact(v, 0));
  }

  /**
   * Whether a user may see event `e` on the event stream, and how: `null` when not (outside their scope, or
   * a resource their grants do not reach), else the event's data as they may see it (sealed values masked
   * without `RESOURCE:secrets`, as REST answers are). What an event is about comes from its topic
   * (`eventAccess`); a machine's own events are judged by the labels they carry (the machine as the event
   * describes it), events of jobs and work orders by their machine as the index knows it now.
   */
  async eventFor(p: Extract<Principal, { kind: 'user' }>, e: TaktEvent): Promise<{ data: unknown } | null> {
    const a = eventAccess(e);
    let machine: MachineScopeView | null = null;
    if (a.machine !== undefined && !held(p.grants, a.permission).unscoped) {
      machine = a.machine.kind === 'view' ? a.machine.view : ((await this.index.machine(a.machine.id)) ?? NO_MACHINE);
    }
    if (!decide(p.grants, a.permission, machine).allowed) return null;
    if (holdsSecrets(p.grants, a.permission.split(':')[0]!)) return { data: e.data };
    // Masked once per event, however many subscribers see it (the stream caches the frame by this object).
    let masked = this.maskedEvents.get(e);
    if (masked === undefined) this.maskedEvents.set(e, (masked = hasSealed(e.data, 0) ? redact(e.data, 0) : e.data));
    return { data: masked };
  }

  private async itemMachine(item: Record<string, unknown>): Promise<MachineScopeView | undefined> {
    if (typeof item.machineId !== 'string') return item.labels !== undefined ? { labels: (item.labels ?? {}) as Record<string, string>, pipeline: (item.pipeline ?? null) as string | null } : undefined;
    return (await this.index.machine(item.machineId)) ?? NO_MACHINE;
  }
}

/**
 * `v` as a holder of `grants` may see it on a route (or an event) of `resource`: unchanged when they hold
 * `RESOURCE:secrets`, else with every sealed value replaced by the mask (`redact`). The one rule for REST
 * answers and event payloads.
 */
export function redactFor(grants: readonly Grant[], resource: string, v: unknown): unknown {
  return holdsSecrets(grants, resource) || !hasSealed(v, 0) ? v : redact(v, 0);
}

/** Whether `v` holds a sealed value anywhere (a walk without copying: most answers hold none). */
function hasSealed(v: unknown, depth: number): boolean {
  if (isSealed(v)) return true;
  if (depth > 100 || typeof v !== 'object' || v === null) return false;
  if (Array.isArray(v)) return v.some((x) => hasSealed(x, depth + 1));
  if (typeof (v as { toJSON?: unknown }).toJSON === 'function') return false;
  for (const k in v) if (Object.hasOwn(v, k) && hasSealed((v as Record<string, unknown>)[k], depth + 1)) return true;
  return false;
}

/** Whether `grants` hold `RESOURCE:secrets` (scoped or not: a list or stream shows only covered machines anyway). */
function holdsSecrets(grants: readonly Grant[], resource: string): boolean {
  return held(grants, `${resource}:secrets` as Permission).holding.length > 0;
}

/** The key text every sealed value serialises with (model/secure.ts: `{"$secure": …}`). */
const SEALED_KEY = '"$secure"';

/** What a principal's grants hold of one permission: the grants that grant it, and whether one of them is unscoped. */
interface Held {
  holding: readonly Grant[];
  unscoped: boolean;
}

/**
 * `held` per grants array and permission. A user's grants array lives as long as their token's cache
 * entry (auth.ts), so every request of a token after the first finds its answers here; a WeakMap, so
 * grants dropped from that cache are forgotten with it. At most one entry per permission of the vocabulary.
 */
const heldMemo = new WeakMap<readonly Grant[], Map<Permission, Held>>();

/** The grants of `grants` that grant `permission`, and whether any of them is unscoped (memoised; see heldMemo). */
function held(grants: readonly Grant[], permission: Permission): Held {
  let byPermission = heldMemo.get(grants);
  if (!byPermission) heldMemo.set(grants, (byPermission = new Map()));
  let h = byPermission.get(permission);
  if (!h) {
    const holding = grants.filter((g) => g.permissions.some((pat) => patternGrants(pat, permission)));
    byPermission.set(permission, (h = { holding, unscoped: holding.some((g) => !isScoped(g)) }));
  }
  return h;
}

/** What an event is about, for the stream's filter: the permission that reads it and, when it is about one machine, which. */
export interface EventAccess {
  permission: Permission;
  /** The machine: as the event carries it (`view`), or by id (looked up); absent for an event about no machine. */
  machine?: { kind: 'view'; view: MachineScopeView } | { kind: 'id'; id: string };
}

/**
 * The resource each event type is read with — the permission of the REST route that reads the same thing
 * (`packs` → `content:read`, `leases` → `dhcp:read`, `tokens` → `tokens:admin`: another user's tokens are a
 * token admin's business). A type not listed needs `events:admin` (only `*` holds it): a new event type is
 * hidden from scoped users until someone decides who may read it.
 */
const EVENT_PERMISSION: Record<string, Permission> = {
  machines: 'machines:read',
  jobs: 'jobs:read',
  workorders: 'workorders:read',
  rollouts: 'rollouts:read',
  policies: 'rollouts:read',
  packs: 'content:read',
  packversions: 'content:read',
  jointokens: 'join:read',
  credentials: 'credentials:read',
  leases: 'dhcp:read',
  images: 'images:read',
  users: 'users:read',
  groups: 'users:read',
  auth: 'users:read',
  rolebindings: 'roles:read',
  tokens: 'tokens:admin',
  ...Object.fromEntries(CONTENT_KINDS.map((k) => [k, 'content:read' as Permission])),
};

/** What event `e` is about (see EventAccess). */
export function eventAccess(e: TaktEvent): EventAccess {
  const type = e.topic.slice(0, e.topic.indexOf('.'));
  const permission = EVENT_PERMISSION[type] ?? 'events:admin';
  const data = (e.data ?? {}) as Record<string, unknown>;
  if (type === 'machines') {
    const id = e.topic.slice(e.topic.indexOf('.', type.length + 1) + 1);
    if (typeof data.labels === 'object' && data.labels !== null) return { permission, machine: { kind: 'view', view: { labels: data.labels as Record<string, string>, pipeline: typeof data.pipeline === 'string' ? data.pipeline : null } } };
    return { permission, machine: { kind: 'id', id } };
  }
  if (typeof data.machineId === 'string' && (type === 'jobs' || type === 'workorders' || type === 'rollouts')) return { permission, machine: { kind: 'id', id: data.machineId } };
  return { permission };
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
