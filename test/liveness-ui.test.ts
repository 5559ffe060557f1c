/**
 * The web UI's liveness, in a real Chromium under the page's Content-Security-Policy: a dot per machine
 * that turns green when its agent connects and red with "last seen … ago" when it is gone, from the event
 * stream (the page is not reloaded), and a machine with work and no agent shown waiting for one.
 */
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, packFiles } from './helpers/endpoint.js';
import { AgentProcess } from './helpers/liveness.js';
import { haveChromium, launchChromium } from './helpers/browser.js';


let ep: Endpoint;
let browser: Browser;
let agent: AgentProcess | null = null;

describe.skipIf(!haveChromium)('web UI: agent liveness', () => {
  beforeAll(async () => {
    ep = await Endpoint.start({ env: { TAKT_AGENT_GONE_AFTER: '2s' } });
    expect((await ep.call('POST', '/packs', { files: await packFiles('liveness') })).status).toBeLessThan(300);
    browser = await launchChromium();
  });
  afterAll(async () => {
    await agent?.dispose();
    await browser?.close();
    await ep?.stop();
  });

  it('shows a dot and "last seen" per machine, live', async () => {
    const m = (await ep.call('POST', '/machines', { name: 'ui-live' })).body.items[0] as { id: string; token: string };
    const page = await browser.newPage();
    const violations: string[] = [];
    page.on('console', (msg) => {
      if (/Content Security Policy|Refused to/i.test(msg.text())) violations.push(msg.text());
    });
    await page.goto(`${ep.url}/#token=${ep.token}`);
    await page.getByText('live', { exact: true }).waitFor({ timeout: 15_000 });
    const row = page.locator('#machines tr', { hasText: 'ui-live' });
    await expect.poll(() => row.locator('.agent.never').textContent(), { timeout: 10_000 }).toBe('never');

    agent = new AgentProcess(ep.url, m.token).start();
    await expect.poll(() => row.locator('.agent.on').textContent(), { timeout: 30_000 }).toBe('connected');
    expect(await row.locator('.agent').getAttribute('title')).toMatch(/connected since .* · from 127\.0\.0\.1 · version \d/);

    await agent.kill();
    await expect.poll(() => row.locator('.agent.off').textContent(), { timeout: 30_000 }).toMatch(/^last seen \d+s ago$/);

    // Work for it, and no agent: the state says it waits for one.
    expect((await ep.call('PATCH', `/machines/${m.id}`, { pipeline: 'hold' })).status).toBe(200);
    await expect.poll(() => row.locator('.state').textContent(), { timeout: 10_000 }).toBe('waiting for an agent');
    expect(violations).toEqual([]);
  }, 120_000);
});
