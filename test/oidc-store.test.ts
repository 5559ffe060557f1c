/**
 * Single sign-on users in the store, on SQLite and PostgreSQL alike (migration 0029_oidc): made on the first
 * sign-in with issuer and subject, found by them afterwards (not by name), group memberships rewritten from
 * the provider's groups, one user per identity (a unique index), no password.
 */
import { describe, expect, it } from 'vitest';
import { Users } from '../src/engine/users.js';
import { storeBackends } from './helpers/postgres.js';

const ISS = 'https://login.example.org/realms/ops';

const backends = await storeBackends('takt-oidc-store-');

for (const b of backends) {
  describe.skipIf(b.skip !== null)(`single sign-on users in the store (${b.name})`, () => {
    it('first sign-in makes the user; later ones find it by issuer and subject and rewrite its groups', async () => {
      const db = await b.make();
      const store = await db.open();
      try {
        const users = new Users(store);
        for (const g of ['ops', 'viewers', 'dev']) await users.putGroup(g, {}, 'admin');
        const first = await users.ssoLogin({ issuer: ISS, subject: 's-1', name: 'erin', groups: ['ops', 'dev', 'nobody-here'] });
        expect(first.user).toMatchObject({ name: 'erin', kind: 'oidc', oidc: { issuer: ISS, subject: 's-1' }, createdBy: `oidc:${ISS}` });
        expect(first.groups).toEqual(['dev', 'ops']);
        expect(first.tokenInfo).toMatchObject({ owner: 'erin', name: 'sso', kind: 'personal' });
        expect(await store.getUserByOidc(ISS, 's-1')).toMatchObject({ name: 'erin', kind: 'oidc' });
        expect(await store.getUserByOidc(ISS, 's-2')).toBeUndefined();
        // The provider renamed her and moved her groups: same takt user (found by subject), groups rewritten.
        const again = await users.ssoLogin({ issuer: ISS, subject: 's-1', name: 'erin-renamed', groups: ['viewers'] });
        expect(again.user.name).toBe('erin');
        expect(again.groups).toEqual(['viewers']);
        expect((await store.listGroups()).map((g) => [g.name, g.members])).toEqual([
          ['dev', []],
          ['ops', []],
          ['viewers', ['erin']],
        ]);
        expect((await store.listUsers()).map((u) => u.name)).toEqual(['erin']);
        // No password: password login refuses her as it refuses anyone unknown, and none can be set.
        await expect(users.checkPassword('erin', '')).rejects.toMatchObject({ code: 'unauthorized' });
        await expect(users.checkPassword('erin', 'any password at all')).rejects.toMatchObject({ code: 'unauthorized' });
        await expect(users.setPassword('erin', 'a-password-now')).rejects.toMatchObject({ code: 'conflict' });
        // Another identity wanting her name, or a password user's name: refused, nothing made.
        await expect(users.ssoLogin({ issuer: ISS, subject: 's-9', name: 'erin', groups: ['ops'] })).rejects.toMatchObject({ code: 'forbidden', message: expect.stringMatching(/belongs to another single sign-on identity; an admin can delete that user/) });
        await users.createUser('frank', 'franks-password', 'admin');
        await expect(users.ssoLogin({ issuer: ISS, subject: 's-3', name: 'frank', groups: [] })).rejects.toMatchObject({ code: 'forbidden', message: expect.stringMatching(/belongs to a password user/) });
        expect((await store.listGroups()).find((g) => g.name === 'ops')!.members).toEqual([]);
        // One user per identity, by the database's own index.
        await expect(store.transact((tx) => tx.insertUser({ name: 'twin', createdAt: new Date().toISOString(), createdBy: 'test', kind: 'oidc', oidc: { issuer: ISS, subject: 's-1' } }, ''))).rejects.toThrow();
        // Two first sign-ins of one person at once: both get a token, for one user.
        const both = await Promise.all([0, 1].map(() => users.ssoLogin({ issuer: ISS, subject: 's-5', name: 'gina', groups: ['ops'] })));
        expect(both.map((x) => x.user.name)).toEqual(['gina', 'gina']);
        expect((await store.listUsers()).filter((u) => u.name === 'gina')).toHaveLength(1);
        // Password users have no identity and are many.
        expect((await store.getUser('frank'))?.kind).toBeUndefined();
      } finally {
        await store.close();
        await db.drop();
      }
    });
  });
}
