/**
 * Users, groups, role bindings and user tokens in the store, on SQLite and PostgreSQL alike (migration
 * 0026_users), and a revocation on one PostgreSQL replica refusing the token on another that had it cached
 * (the cache is dropped on the event the other replica's follower publishes).
 */
import { describe, expect, it } from 'vitest';
import { Authenticator } from '../src/api/auth.js';
import { Users } from '../src/engine/users.js';
import { openPostgresStore } from '../src/store/postgres.js';
import { until } from './helpers/endpoint.js';
import { freshDatabase, pgUnavailable, storeBackends } from './helpers/postgres.js';

const pgWhy = await pgUnavailable();
const PW = 'correct horse battery';

const backends = await storeBackends('takt-users-');

for (const b of backends) {
  describe.skipIf(b.skip !== null)(`users in the store (${b.name})`, () => {
    it('keeps users, groups, bindings and tokens; deleting a user takes their tokens, bindings and memberships', async () => {
      const db = await b.make();
      const store = await db.open();
      try {
        const users = new Users(store);
        await users.createUser('alice', PW, 'admin', ['admin']);
        await users.createUser('bob', PW, 'admin');
        await expect(users.createUser('bob', PW, 'admin')).rejects.toMatchObject({ code: 'conflict' });
        await users.putGroup('ops', { add: ['alice', 'bob'] }, 'admin');
        const bound = await users.bind({ role: 'operator', subject: 'group:ops', machines: 'env=prod', pipelines: ['web'] }, 'admin');
        expect((await users.grantsOf('bob')).map((g) => [g.role, g.pipelines])).toEqual([['operator', ['web']]]);
        const { token, tokenInfo } = await users.issue({ owner: 'bob', name: 'ci', kind: 'service', roles: ['operator'], ttlMs: 3_600_000 }, 'admin');
        expect(token).toMatch(/^tku\.t-[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$/);
        expect(await store.getUserToken(tokenInfo.id)).toMatchObject({ owner: 'bob', roles: ['operator'], kind: 'service', revokedAt: null });
        expect(await store.getUserTokenHash(tokenInfo.id)).toMatch(/^[0-9a-f]{64}$/);
        expect((await users.rotate(tokenInfo.id, 'bob', 'user:bob')).tokenInfo.rotatedAt).not.toBeNull();
        expect((await users.revoke(tokenInfo.id, undefined, 'admin')).state).toBe('revoked');
        await expect(users.checkPassword('bob', 'wrong password')).rejects.toMatchObject({ code: 'unauthorized' });
        await users.checkPassword('bob', PW);
        await users.deleteUser('bob', 'admin');
        expect(await store.listUserTokens('bob')).toEqual([]);
        expect((await store.getGroup('ops'))?.members).toEqual(['alice']);
        expect((await users.listUsers()).map((u) => [u.name, u.roles, u.groups])).toEqual([['alice', ['admin'], ['ops']]]);
        await users.unbind(bound.id, 'admin');
        expect((await store.listRoleBindings()).map((x) => x.subject)).toEqual(['user:alice']);
      } finally {
        await store.close();
        await db.drop();
      }
    });
  });
}

describe.skipIf(pgWhy !== null)('two replicas on one PostgreSQL database', () => {
  it('a token revoked on one replica is refused on the other, which had it cached', async () => {
    const pg = await freshDatabase();
    const a = await openPostgresStore(pg.url);
    const b = await openPostgresStore(pg.url);
    try {
      const users = new Users(a);
      await users.createUser('vera', PW, 'admin', ['viewer']);
      const { token, tokenInfo } = await users.issue({ owner: 'vera', name: 'k', kind: 'personal' }, 'admin');
      const authB = new Authenticator('tka.x', b);
      expect(await authB.authenticate(`Bearer ${token}`)).toMatchObject({ kind: 'user', name: 'vera' });
      await users.revoke(tokenInfo.id, undefined, 'admin');
      // B hears the revocation through its event follower (NOTIFY, or its periodic catch-up), then refuses.
      const refused = await until(
        async () =>
          authB.authenticate(`Bearer ${token}`).then(
            () => null,
            (err: Error) => err.message,
          ),
        20_000,
        'the other replica to refuse the revoked token',
      );
      expect(refused).toMatch(/was revoked at .* by admin/);
    } finally {
      await a.close();
      await b.close();
      await pg.drop();
    }
  });
});
