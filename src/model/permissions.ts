/**
 * Permissions and roles (issue #16, part 1). Pure: no I/O.
 *
 * A permission is `resource:verb` from a small fixed vocabulary. Every API route declares the one it needs
 * in its route config (`config: { permission: 'machines:read' }`), or `public` for the few routes that need
 * no principal at all; the server refuses to start when a route declares none (deny by default).
 *
 * Verbs:
 * - `read`    — see it (secure values stay redacted: shown as the mask, never as ciphertext)
 * - `write`   — create, change or delete it
 * - `run`     — act on work: resume, restart, cancel, pause, drain, run, andon
 * - `approve` — approve or reject a machine waiting at a gated stage
 * - `secrets` — read what may hold secret text: job logs, exports, secure values (ciphertext)
 * - `admin`   — users, groups, roles, tokens, credentials, bootstrap settings
 *
 * Roles are sets of permission patterns (`*:read`, `content:write`, `*`). A role binding gives a role to a
 * user or a group, optionally limited to machines matching a label selector and to pipelines: such a
 * scoped grant counts on routes about one machine only for machines it selects, and lists of machines,
 * jobs and work orders are filtered to them; on routes about no machine it counts only for its `read`
 * permissions (a scoped operator cannot pull the andon or start a rollout over the whole fleet).
 */
import { TaktError } from './errors.js';
import { matchesLabels, parseLabelSelector, type LabelSelector, type Labels } from './labels.js';

/** Resources a permission names. */
export const RESOURCES = [
  'machines',
  'jobs',
  'workorders',
  'content',
  'rollouts',
  'history',
  'events',
  'reports',
  'join',
  'credentials',
  'dhcp',
  'images',
  'users',
  'tokens',
  'roles',
  'api',
  'audit',
] as const;
export type Resource = (typeof RESOURCES)[number];

export const VERBS = ['read', 'write', 'run', 'approve', 'secrets', 'admin'] as const;
export type Verb = (typeof VERBS)[number];

/**
 * What a route declares: a `resource:verb`; `public` (no principal needed: health, the UI page, login);
 * or `self` (any user, acting on their own account and tokens: the handler limits it, and lets holders of
 * `users:admin`/`tokens:admin` act on others').
 */
export type Permission = `${Resource}:${Verb}`;
export type RouteAccess = Permission | 'public' | 'self';

/** A pattern a role grants: `resource:verb`, `*:verb`, `resource:*` or `*`. */
export type PermissionPattern = string;

/** The built-in roles: names and the permission patterns each grants. */
export const BUILTIN_ROLES: Readonly<Record<string, { description: string; permissions: readonly PermissionPattern[] }>> = {
  viewer: { description: 'reads everything except secret-bearing data (logs, exports, secure values)', permissions: ['*:read'] },
  operator: { description: 'viewer, plus runs work (resume, restart, cancel, pause, drain, run, rollouts) and approves', permissions: ['*:read', '*:run', '*:approve'] },
  author: { description: 'viewer, plus writes content, profiles and params (machines included) and images', permissions: ['*:read', 'content:write', 'machines:write', 'images:write'] },
  admin: { description: 'everything', permissions: ['*'] },
};
export const ROLE_NAMES = Object.keys(BUILTIN_ROLES);

/** True when `p` is a valid `resource:verb` permission. */
export function isPermission(p: string): p is Permission {
  const [r, v, ...rest] = p.split(':');
  return rest.length === 0 && (RESOURCES as readonly string[]).includes(r ?? '') && (VERBS as readonly string[]).includes(v ?? '');
}

/** True when a route declaration is valid. */
export function isRouteAccess(p: unknown): p is RouteAccess {
  return p === 'public' || p === 'self' || (typeof p === 'string' && isPermission(p));
}

/**
 * Resources a `*:verb` pattern does not reach: only `*` (admin) or a pattern naming them grants them. The
 * audit log says what everyone did, so a viewer's `*:read` must not include it (issue #16).
 */
export const NAMED_ONLY_RESOURCES: ReadonlySet<string> = new Set(['audit']);

/** Whether `pattern` grants `permission`. */
export function patternGrants(pattern: PermissionPattern, permission: Permission): boolean {
  if (pattern === '*') return true;
  const [pr, pv] = pattern.split(':');
  const [r, v] = permission.split(':');
  return (pr === r || (pr === '*' && !NAMED_ONLY_RESOURCES.has(r ?? ''))) && (pv === '*' || pv === v);
}

/**
 * Permission patterns of a role.
 * @throws TaktError invalid for an unknown role, naming the known ones.
 */
export function rolePermissions(role: string): readonly PermissionPattern[] {
  const r = BUILTIN_ROLES[role];
  if (!r) throw new TaktError('invalid', `unknown role '${role}': the roles are ${ROLE_NAMES.join(', ')}`, { path: '/role' });
  return r.permissions;
}

/** One grant a principal holds: a role's permissions, maybe limited to machines and pipelines. */
export interface Grant {
  role: string;
  permissions: readonly PermissionPattern[];
  /** Only machines matching this label selector (parsed); absent: any machine. */
  machines?: LabelSelector;
  /** Only machines on these pipelines; absent: any pipeline. */
  pipelines?: readonly string[];
}

/** What a role binding stores: who gets which role, and the optional limits. */
export interface RoleBinding {
  id: string;
  role: string;
  /** `user:NAME` or `group:NAME`. */
  subject: string;
  /** A label selector as text (`env=prod,team!=db`); absent: any machine. */
  machines?: string;
  /** Pipeline names; absent: any pipeline. */
  pipelines?: string[];
  createdAt: string;
  createdBy: string;
}

/** The grant a binding gives. @throws TaktError for an unknown role or a bad selector (stored ones are checked on write). */
export function grantOf(b: Pick<RoleBinding, 'role' | 'machines' | 'pipelines'>): Grant {
  const g: Grant = { role: b.role, permissions: rolePermissions(b.role) };
  if (b.machines !== undefined) g.machines = parseLabelSelector(b.machines, '/machines');
  if (b.pipelines !== undefined) g.pipelines = b.pipelines;
  return g;
}

/** True when a grant is limited (to machines or pipelines). */
export const isScoped = (g: Grant) => g.machines !== undefined || g.pipelines !== undefined;

/** The part of a machine a scope looks at. */
export interface MachineScopeView {
  labels: Labels;
  pipeline: string | null;
}

/** Whether a grant's limits admit `m`. */
export function grantCovers(g: Grant, m: MachineScopeView): boolean {
  if (g.machines && !matchesLabels(m.labels ?? {}, g.machines)) return false;
  if (g.pipelines && (m.pipeline === null || !g.pipelines.includes(m.pipeline))) return false;
  return true;
}

/** The result of an access decision: allowed, or why not. */
export type Decision = { allowed: true } | { allowed: false; reason: string };

/**
 * Whether `grants` allow `permission` on a route. `machine`: the one machine the route is about (null for
 * a route about none; a list route passes null and filters with `machineVisible`).
 * A scoped grant counts on a machine's route only for machines it covers, and elsewhere only for `read`.
 */
export function decide(grants: readonly Grant[], permission: Permission, machine: MachineScopeView | null): Decision {
  const holding = grants.filter((g) => g.permissions.some((p) => patternGrants(p, permission)));
  if (holding.length === 0) {
    const roles = [...new Set(grants.map((g) => g.role))];
    return { allowed: false, reason: `needs permission ${permission}, which ${roles.length === 0 ? 'no role is bound to you to grant (ask an admin: takt roles bind ROLE user:NAME)' : `your roles (${roles.join(', ')}) do not grant`}` };
  }
  if (holding.some((g) => !isScoped(g))) return { allowed: true };
  if (machine) {
    if (holding.some((g) => grantCovers(g, machine))) return { allowed: true };
    return { allowed: false, reason: `needs permission ${permission} on this machine, and your roles grant it only on machines ${holding.map(scopeText).join(' or ')}` };
  }
  if (permission.endsWith(':read')) return { allowed: true };
  return { allowed: false, reason: `needs permission ${permission} on every machine, and your roles grant it only on machines ${holding.map(scopeText).join(' or ')}` };
}

/** Whether a list may show machine `m` to a holder of `grants` for `permission` (unscoped, or a covering grant). */
export function machineVisible(grants: readonly Grant[], permission: Permission, m: MachineScopeView): boolean {
  return grants.some((g) => g.permissions.some((p) => patternGrants(p, permission)) && (!isScoped(g) || grantCovers(g, m)));
}

/** True when every grant holding `permission` is unscoped (a list needs no filtering). */
export function unscoped(grants: readonly Grant[], permission: Permission): boolean {
  return grants.some((g) => !isScoped(g) && g.permissions.some((p) => patternGrants(p, permission)));
}

function scopeText(g: Grant): string {
  const parts: string[] = [];
  if (g.machines) parts.push(`matching ${g.machines.map((t) => (t.op === 'eq' ? `${t.key}=${t.value}` : t.op === 'ne' ? `${t.key}!=${t.value}` : t.op === 'exists' ? t.key : `!${t.key}`)).join(',')}`);
  if (g.pipelines) parts.push(`on pipeline ${g.pipelines.join('|')}`);
  return parts.join(' ');
}

/**
 * Whether `wanted` roles are within what `grants` hold: a token may carry only roles its owner holds
 * (and, for a scoped binding, only with that binding's limits: the token's grants are intersected by role).
 */
export function rolesWithin(wanted: readonly string[], held: readonly Grant[]): string | null {
  for (const r of wanted) {
    rolePermissions(r);
    if (!held.some((g) => g.role === r || g.role === 'admin')) return r;
  }
  return null;
}

/** A token's grants: its owner's grants limited to the roles the token names (admin owners can hand out any role, unscoped). */
export function tokenGrants(ownerGrants: readonly Grant[], roles: readonly string[] | undefined): Grant[] {
  if (!roles) return [...ownerGrants];
  const out: Grant[] = [];
  for (const r of roles) {
    const same = ownerGrants.filter((g) => g.role === r);
    if (same.length) out.push(...same);
    else {
      const admin = ownerGrants.filter((g) => g.role === 'admin');
      for (const a of admin) out.push({ ...a, role: r, permissions: rolePermissions(r) });
    }
  }
  return out;
}

/** Every permission in the vocabulary (for the table test and `takt roles list`). */
export const ALL_PERMISSIONS: Permission[] = RESOURCES.flatMap((r) => VERBS.map((v) => `${r}:${v}` as Permission));

/** The permissions a role grants, expanded over the vocabulary. */
export function expandRole(role: string): Permission[] {
  const pats = rolePermissions(role);
  return ALL_PERMISSIONS.filter((p) => pats.some((pat) => patternGrants(pat, p)));
}

/**
 * Who decides an approval (issue #16): the author text recorded for the decision, and what they hold —
 * `all` for the bootstrap admin token and the endpoint's own callers, else the user token's grants.
 */
export interface Approver {
  author: string;
  grants: readonly Grant[] | 'all';
}

/** An approval gate as content or a rollout declares it: who may decide, and whether the starter may. */
export interface ApprovalRule {
  /** The role whose holders (and admins) may decide. */
  role: string;
  /** The principal who started the run or the rollout may not approve it. */
  twoPerson?: boolean;
}

/**
 * Why `a` may not decide a gate that needs `role`, or null when they may: they must hold that role or
 * admin — for a role bound to some machines only, on `machine` (null: a gate over no one machine, such as a
 * rollout's waves, where only unscoped grants count, as for every fleet-wide action).
 */
export function approvalRefusal(a: Approver, role: string, machine: MachineScopeView | null): string | null {
  if (a.grants === 'all') return null;
  const holding = a.grants.filter((g) => g.role === role || g.role === 'admin');
  if (holding.some((g) => !isScoped(g) || (machine !== null && grantCovers(g, machine)))) return null;
  const roles = [...new Set(a.grants.map((g) => g.role))];
  const needs = `this approval needs role ${role}${role === 'admin' ? '' : ' (or admin)'}`;
  if (holding.length > 0) return `${needs}${machine ? ' on this machine' : ' on every machine'}, and ${a.author} holds it only on machines ${holding.map(scopeText).join(' or ')}`;
  return `${needs}, and ${a.author} holds ${roles.length ? roles.join(', ') : 'no role'}`;
}
