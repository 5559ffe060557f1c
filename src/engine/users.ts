/**
 * Users, groups, role bindings and user tokens (issue #16, part 1): the rules, over the store.
 *
 * Passwords are hashed with argon2id (the `argon2` package, its defaults: m=64 MiB, t=3, p=4), never
 * stored or logged in clear. Tokens are `tku.<id>.<secret>` with 256 bits of secret, stored as SHA-256,
 * shown once. A token carries a subset of its owner's roles and an expiry; rotating replaces its secret
 * (the old text is then refused saying it was rotated); revoking ends it. Every write emits an event
 * (`users.*`, `groups.*`, `rolebindings.*`, `tokens.*`, `auth.update.bootstrap`) on which every
 * replica's authenticator drops what it cached (api/auth.ts).
 *
 * Not in the desired-state history (users are not exported or rewound); the audit log is part 2.
 */
import { createHash, randomBytes } from 'node:crypto';
import argon2 from 'argon2';
import { TaktError } from '../model/errors.js';
import { parseLabelSelector } from '../model/labels.js';
import { grantOf, isScoped, rolesWithin, rolePermissions, type Grant, type RoleBinding } from '../model/permissions.js';
import { checkName, DEFAULT_TOKEN_TTL_MS, LOGIN_TOKEN_TTL_MS, MAX_TOKEN_TTL_MS, userTokenState, type Group, type User, type UserToken } from '../model/users.js';
import type { Store } from '../store/store.js';

/** Shortest password accepted. */
export const MIN_PASSWORD = 10;
/** Longest password accepted (argon2 takes any length; this bounds the work a request can ask for). */
export const MAX_PASSWORD = 1024;

/** The setting that says the data dir's admin token is off. */
export const BOOTSTRAP_SETTING = 'auth.bootstrap';

/** A token as shown: never its hash or text; with its state. */
export type UserTokenView = UserToken & { state: ReturnType<typeof userTokenState> };

/** Who asks, as the users service needs to know: the admin token, or a user with their grants. */
export type Actor = { kind: 'admin' } | { kind: 'user'; name: string; grants: readonly Grant[] };

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

export class Users {
  constructor(
    private readonly store: Store,
    private readonly now: () => number = Date.now,
  ) {}

  private iso() {
    return new Date(this.now()).toISOString();
  }

  /** The grants of a user: bindings to them and to every group they are in. */
  async grantsOf(name: string): Promise<Grant[]> {
    const [bindings, groups] = await Promise.all([this.store.listRoleBindings(), this.store.listGroups()]);
    const subjects = new Set([`user:${name}`, ...groups.filter((g) => g.members.includes(name)).map((g) => `group:${g.name}`)]);
    return bindings.filter((b) => subjects.has(b.subject)).map(grantOf);
  }

  /** True when some user holds the admin role on everything (directly or through a group). */
  async adminUserExists(): Promise<boolean> {
    for (const u of await this.store.listUsers()) if ((await this.grantsOf(u.name)).some((g) => g.role === 'admin' && !isScoped(g))) return true;
    return false;
  }

  async listUsers(): Promise<Array<User & { roles: string[]; groups: string[] }>> {
    const [users, bindings, groups] = await Promise.all([this.store.listUsers(), this.store.listRoleBindings(), this.store.listGroups()]);
    return users.map((u) => ({
      ...u,
      roles: bindings.filter((b) => b.subject === `user:${u.name}`).map(bindingText),
      groups: groups.filter((g) => g.members.includes(u.name)).map((g) => g.name),
    }));
  }

  /**
   * @throws TaktError invalid for a bad name or password, conflict when the name is taken.
   */
  async createUser(name: string, password: string, by: string, roles: string[] = []): Promise<User> {
    checkName(name, 'a user');
    checkPassword(password);
    for (const r of roles) rolePermissions(r);
    const hash = await argon2.hash(password, { type: argon2.argon2id });
    const user: User = { name, createdAt: this.iso(), createdBy: by };
    return this.store.transact(async (tx) => {
      if (await tx.getUser(name)) throw new TaktError('conflict', `user '${name}' already exists (change their password: takt users passwd ${name})`, { path: '/name' });
      await tx.insertUser(user, hash);
      for (const role of roles) await tx.insertRoleBinding({ id: newBindingId(), role, subject: `user:${name}`, createdAt: user.createdAt, createdBy: by });
      tx.emit(`users.create.${name}`, user);
      return user;
    });
  }

  /** Sets a user's password (their tokens stay valid: revoke them with tokens revoke if the old one leaked). */
  async setPassword(name: string, password: string): Promise<void> {
    checkPassword(password);
    if ((await this.store.getUser(name))?.kind === 'oidc') throw new TaktError('conflict', `user '${name}' signs in through single sign-on (takt login --sso); takt keeps no password for them`, { path: '/password' });
    const hash = await argon2.hash(password, { type: argon2.argon2id });
    await this.store.transact(async (tx) => {
      if (!(await tx.getUser(name))) throw notFoundUser(name);
      await tx.setUserPasswordHash(name, hash);
      tx.emit(`users.update.${name}`, { name, password: 'changed' });
    });
  }

  /** Deletes a user, their tokens and role bindings, and takes them out of groups. Refuses the last admin while the bootstrap token is off. */
  async deleteUser(name: string, by: string): Promise<User> {
    const u = await this.store.getUser(name);
    if (!u) throw notFoundUser(name);
    if ((await this.store.getSetting<{ disabled?: boolean }>(BOOTSTRAP_SETTING))?.disabled && (await this.grantsOf(name)).some((g) => g.role === 'admin')) {
      const others = (await this.store.listUsers()).filter((x) => x.name !== name);
      let other = false;
      for (const o of others) if ((await this.grantsOf(o.name)).some((g) => g.role === 'admin' && !isScoped(g))) other = true;
      if (!other) throw new TaktError('conflict', `user '${name}' is the last admin and the bootstrap admin token is off: bind admin to another user first, or turn the bootstrap token on (takt users bootstrap enable)`);
    }
    await this.store.transact(async (tx) => {
      for (const g of await tx.listGroups()) if (g.members.includes(name)) await tx.putGroup({ ...g, members: g.members.filter((m) => m !== name) });
      await tx.deleteUser(name);
      tx.emit(`users.delete.${name}`, { name, by });
    });
    return u;
  }

  /**
   * Checks a user's password; the same refusal for an unknown user and a wrong password (and an argon2
   * verification either way, so timing does not tell them apart).
   * @throws TaktError unauthorized.
   */
  async checkPassword(name: string, password: string): Promise<void> {
    const hash = typeof name === 'string' ? await this.store.getUserPasswordHash(name) : undefined;
    const ok = await argon2.verify(hash || (await dummyHash()), String(password).slice(0, MAX_PASSWORD)).catch(() => false);
    if (!hash || !ok) throw new TaktError('unauthorized', 'login refused: unknown user or wrong password');
  }

  /**
   * Single sign-on (api/oidc.ts has verified the provider's ID token): the takt user of this identity —
   * found by (issuer, subject), else made on this first login as kind `oidc` with no password — with
   * their group memberships set from the provider's groups (`groups`: the claim's values), and a personal
   * token named `sso` for them. Group mapping is by name: the user is put in each takt group whose name is
   * one of `groups` and taken out of every other takt group; provider groups with no takt group of that
   * name are ignored (takt makes no groups). Roles come from bindings to those groups (or to the user).
   * @throws TaktError forbidden when the name is taken by a password user or by another provider
   *   identity (never linked silently: that would hand their account to whoever controls the claim).
   */
  async ssoLogin(identity: { issuer: string; subject: string; name: string; groups: readonly string[] }, ttlMs = LOGIN_TOKEN_TTL_MS): Promise<{ token: string; tokenInfo: UserTokenView; user: User; groups: string[] }> {
    checkName(identity.name, 'a user', '/preferred_username');
    const wanted = new Set(identity.groups);
    const once = () => this.store.transact(async (tx) => {
      let user = await tx.getUserByOidc(identity.issuer, identity.subject);
      if (!user) {
        const taken = await tx.getUser(identity.name);
        if (taken) {
          // The other identity is not named: this answer goes to whoever signed in, before they are anyone here.
          const how = taken.kind === 'oidc' ? 'another single sign-on identity' : 'a password user';
          throw new TaktError('forbidden', `single sign-on refused: the takt user name '${identity.name}' belongs to ${how}; an admin can delete that user (takt users delete ${identity.name}), or the provider must give this person another preferred_username`);
        }
        user = { name: identity.name, createdAt: this.iso(), createdBy: `oidc:${identity.issuer}`, kind: 'oidc', oidc: { issuer: identity.issuer, subject: identity.subject } };
        await tx.insertUser(user, '');
        tx.emit(`users.create.${user.name}`, user);
      }
      const member: string[] = [];
      for (const g of await tx.listGroups()) {
        const has = g.members.includes(user.name);
        if (wanted.has(g.name)) member.push(g.name);
        if (wanted.has(g.name) === has) continue;
        const next: Group = { ...g, members: has ? g.members.filter((m) => m !== user!.name) : [...g.members, user.name].sort() };
        await tx.putGroup(next);
        tx.emit(`groups.update.${g.name}`, { ...next, by: `oidc:${identity.issuer}` });
      }
      return { user, groups: member };
    });
    // Two first sign-ins of one person at once (two tabs, two replicas): the loser's insert hits the unique
    // index; tried again, it finds the user the winner made.
    const result = await once().catch((err: unknown) => {
      if (err instanceof TaktError) throw err;
      return once();
    });
    const issued = await this.issue({ owner: result.user.name, name: 'sso', kind: 'personal', ttlMs }, `user:${result.user.name}`);
    return { ...issued, ...result };
  }

  /** Password login: a personal token named `login` with the given lifetime (default 12 h). */
  async login(name: string, password: string, ttlMs = LOGIN_TOKEN_TTL_MS): Promise<{ token: string; tokenInfo: UserTokenView }> {
    await this.checkPassword(name, password);
    return this.issue({ owner: name, name: 'login', kind: 'personal', ttlMs }, `user:${name}`);
  }

  async listGroups(): Promise<Group[]> {
    return this.store.listGroups();
  }

  /** Creates a group or changes its members (`add`, `remove`: user names, each an existing user). */
  async putGroup(name: string, change: { add?: string[]; remove?: string[] }, by: string): Promise<Group> {
    checkName(name, 'a group');
    return this.store.transact(async (tx) => {
      for (const u of change.add ?? []) if (!(await tx.getUser(u))) throw notFoundUser(u);
      const old = await tx.getGroup(name);
      const members = [...new Set([...(old?.members ?? []), ...(change.add ?? [])])].filter((m) => !(change.remove ?? []).includes(m)).sort();
      const g: Group = { name, members, createdAt: old?.createdAt ?? this.iso() };
      await tx.putGroup(g);
      tx.emit(`groups.${old ? 'update' : 'create'}.${name}`, { ...g, by });
      return g;
    });
  }

  async deleteGroup(name: string, by: string): Promise<void> {
    await this.store.transact(async (tx) => {
      if (!(await tx.getGroup(name))) throw new TaktError('not_found', `group '${name}' not found (list them: takt groups list)`);
      await tx.deleteGroup(name);
      tx.emit(`groups.delete.${name}`, { name, by });
    });
  }

  async listBindings(): Promise<RoleBinding[]> {
    return this.store.listRoleBindings();
  }

  /**
   * Binds a role to `user:NAME` or `group:NAME`, optionally limited to machines (label selector) and pipelines.
   * @throws TaktError invalid for an unknown role, subject shape or bad selector; not_found for a missing user or group.
   */
  async bind(input: { role: string; subject: string; machines?: string; pipelines?: string[] }, by: string): Promise<RoleBinding> {
    rolePermissions(input.role);
    const m = /^(user|group):(.+)$/.exec(input.subject);
    if (!m) throw new TaktError('invalid', `subject must be user:NAME or group:NAME, not '${input.subject}'`, { path: '/subject' });
    if (input.machines !== undefined) parseLabelSelector(input.machines, '/machines');
    const b: RoleBinding = { id: newBindingId(), role: input.role, subject: input.subject, createdAt: this.iso(), createdBy: by };
    if (input.machines !== undefined) b.machines = input.machines;
    if (input.pipelines !== undefined) b.pipelines = [...new Set(input.pipelines)];
    return this.store.transact(async (tx) => {
      if (m[1] === 'user' ? !(await tx.getUser(m[2]!)) : !(await tx.getGroup(m[2]!))) throw new TaktError('not_found', `${m[1]} '${m[2]}' not found`, { path: '/subject' });
      await tx.insertRoleBinding(b);
      tx.emit(`rolebindings.create.${b.id}`, b);
      return b;
    });
  }

  async unbind(id: string, by: string): Promise<RoleBinding> {
    return this.store.transact(async (tx) => {
      const b = (await tx.listRoleBindings()).find((x) => x.id === id);
      if (!b) throw new TaktError('not_found', `role binding '${id}' not found (list them: takt roles bindings)`);
      await tx.deleteRoleBinding(id);
      tx.emit(`rolebindings.delete.${id}`, { ...b, by });
      return b;
    });
  }

  /**
   * Makes a token for `owner`. `roles` must each be held by the owner (an admin may hand out any role);
   * the lifetime is at most a year. The actor must be the owner or hold `tokens:admin`.
   * @returns the token text (shown once) and its record.
   */
  async issue(input: { owner: string; name: string; kind: 'personal' | 'service'; roles?: string[]; ttlMs?: number }, by: string): Promise<{ token: string; tokenInfo: UserTokenView }> {
    checkName(input.name, 'a token');
    const ttl = input.ttlMs ?? DEFAULT_TOKEN_TTL_MS;
    if (!Number.isInteger(ttl) || ttl <= 0 || ttl > MAX_TOKEN_TTL_MS) throw new TaktError('invalid', 'a token lives more than 0 and at most 365 days', { path: '/ttl' });
    if (!(await this.store.getUser(input.owner))) throw notFoundUser(input.owner);
    if (input.roles) {
      const missing = rolesWithin(input.roles, await this.grantsOf(input.owner));
      if (missing) throw new TaktError('forbidden', `user '${input.owner}' does not hold role '${missing}', so a token of theirs cannot carry it`, { path: '/roles' });
    }
    const now = this.now();
    const t: UserToken = {
      id: `t-${randomBytes(8).toString('hex')}`,
      name: input.name,
      kind: input.kind,
      owner: input.owner,
      expiresAt: new Date(now + ttl).toISOString(),
      createdAt: new Date(now).toISOString(),
      lastUsedAt: null,
      rotatedAt: null,
      revokedAt: null,
      revokedBy: null,
    };
    if (input.roles) t.roles = [...new Set(input.roles)];
    const token = `tku.${t.id}.${randomBytes(32).toString('base64url')}`;
    await this.store.transact(async (tx) => {
      await tx.insertUserToken(t, sha256(token));
      tx.emit(`tokens.create.${t.id}`, { ...t, by });
    });
    return { token, tokenInfo: view(t, now) };
  }

  async listTokens(owner?: string): Promise<UserTokenView[]> {
    const now = this.now();
    return (await this.store.listUserTokens(owner)).map((t) => view(t, now));
  }

  /** A token by id, for a caller allowed to see it (`owner`: the caller's own name, or undefined for an admin). */
  async getToken(id: string, owner?: string): Promise<UserToken> {
    const t = await this.store.getUserToken(id);
    if (!t || (owner !== undefined && t.owner !== owner)) throw new TaktError('not_found', `token '${id}' not found (list yours: takt tokens list)`);
    return t;
  }

  /** Replaces a token's secret and restarts its lifetime; the old text is refused from now on. */
  async rotate(id: string, owner: string | undefined, by: string): Promise<{ token: string; tokenInfo: UserTokenView }> {
    const t = await this.getToken(id, owner);
    const now = this.now();
    if (t.revokedAt) throw new TaktError('conflict', `token ${id} is revoked; make a new one (takt tokens create)`);
    const life = Math.min(MAX_TOKEN_TTL_MS, Math.max(60_000, Date.parse(t.expiresAt) - Date.parse(t.createdAt)));
    const next: UserToken = { ...t, rotatedAt: new Date(now).toISOString(), expiresAt: new Date(now + life).toISOString() };
    const token = `tku.${t.id}.${randomBytes(32).toString('base64url')}`;
    await this.store.transact(async (tx) => {
      await tx.updateUserToken(next, sha256(token));
      tx.emit(`tokens.update.${t.id}`, { id: t.id, rotatedAt: next.rotatedAt, by });
    });
    return { token, tokenInfo: view(next, now) };
  }

  async revoke(id: string, owner: string | undefined, by: string): Promise<UserTokenView> {
    const t = await this.getToken(id, owner);
    const now = this.now();
    if (t.revokedAt) return view(t, now);
    const next: UserToken = { ...t, revokedAt: new Date(now).toISOString(), revokedBy: by };
    await this.store.transact(async (tx) => {
      await tx.updateUserToken(next);
      tx.emit(`tokens.update.${t.id}`, { id: t.id, revokedAt: next.revokedAt, by });
    });
    return view(next, now);
  }

  /** Whether the data dir's admin token is accepted. */
  async bootstrap(): Promise<{ enabled: boolean }> {
    return { enabled: !(await this.store.getSetting<{ disabled?: boolean }>(BOOTSTRAP_SETTING))?.disabled };
  }

  /** Turns the bootstrap admin token off (refused unless a user holds admin on everything) or back on. */
  async setBootstrap(enabled: boolean, by: string): Promise<{ enabled: boolean }> {
    if (!enabled && !(await this.adminUserExists())) {
      throw new TaktError('conflict', 'no user holds the admin role: the bootstrap admin token stays on (make one: takt users create alice --role admin)');
    }
    await this.store.transact(async (tx) => {
      await tx.putSetting(BOOTSTRAP_SETTING, enabled ? null : { disabled: true, by, at: this.iso() });
      tx.emit('auth.update.bootstrap', { enabled, by });
    });
    return { enabled };
  }
}

function view(t: UserToken, now: number): UserTokenView {
  return { ...t, state: userTokenState(t, now) };
}

/** A binding in words: `operator on env=prod`. */
export function bindingText(b: RoleBinding): string {
  return `${b.role}${b.machines ? ` on ${b.machines}` : ''}${b.pipelines ? ` pipelines ${b.pipelines.join(',')}` : ''}`;
}

const newBindingId = () => `rb-${randomBytes(5).toString('hex')}`;
const notFoundUser = (name: string) => new TaktError('not_found', `user '${name}' not found (list them: takt users list)`, { path: '/name' });

function checkPassword(p: unknown): void {
  if (typeof p !== 'string' || p.length < MIN_PASSWORD || p.length > MAX_PASSWORD) {
    throw new TaktError('invalid', `a password is ${MIN_PASSWORD} to ${MAX_PASSWORD} characters`, { path: '/password' });
  }
}

/** Verified against when the user does not exist, so an unknown name costs the same as a wrong password. */
let dummy: Promise<string> | undefined;
const dummyHash = () => (dummy ??= argon2.hash(randomBytes(16).toString('hex'), { type: argon2.argon2id }));
