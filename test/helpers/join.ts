/** Shared by the join tests. */
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** One agent-bundle cache for every test endpoint (TAKT_BUNDLE_CACHE): building the bundle takes seconds. */
export const BUNDLE_CACHE = join(tmpdir(), `takt-test-bundles-${process.getuid?.() ?? 0}`);
