/**
 * Debian's Chromium for the UI tests, driven by playwright-core: where it is, whether it is there, and one
 * way to launch it (headless, no sandbox — the tests run as root — and nothing that reaches the network).
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';

/** The Chromium binary (`CHROMIUM_PATH`, default Debian's `/usr/bin/chromium`). */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** Whether Chromium is installed; a UI test file skips (and says why, once) without it. */
export const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) console.warn(`skipping UI tests: no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);

/** Launches Chromium headless with the flags every UI test uses. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync'],
  });
}
