import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    // Longer than the harness's own start deadline, so a slow start fails with the server's output.
    hookTimeout: 120_000,
    // Integration tests start real servers and agent processes; keep the 2-core machine from thrashing.
    maxWorkers: 2,
    pool: 'forks',
  },
});
