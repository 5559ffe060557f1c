/** What of the endpoint's environment its local agents get (brokers/process.ts agentEnv): not the store's credentials. */
import { describe, expect, it } from 'vitest';
import { agentEnv } from '../src/brokers/process.js';

describe('agentEnv', () => {
  it.each<[string, Record<string, string>, Record<string, string>]>([
    ['keeps the ordinary', { PATH: '/usr/bin', HOME: '/root', TAKT_AGENT_CHAOS: 'fail=0.1' }, { PATH: '/usr/bin', HOME: '/root', TAKT_AGENT_CHAOS: 'fail=0.1' }],
    ['drops the store URL (it may carry a password)', { PATH: '/x', TAKT_STORE: 'postgres://takt:s3cret@db/takt' }, { PATH: '/x' }],
    ["drops libpq's variables", { PGPASSWORD: 's3cret', PGHOST: 'db', PGUSER: 'takt', PG_COLOR: 'always', PATH: '/x' }, { PATH: '/x' }],
    ['keeps names that only start alike', { PGX: 'not-libpq-but-dropped', PAGER: 'less', TAKT_STORE_X: 'kept' }, { PAGER: 'less', TAKT_STORE_X: 'kept' }],
  ])('%s', (_what, env, want) => {
    expect(agentEnv(env)).toEqual(want);
  });
});
