/**
 * The web UI in a real Chromium (Debian's, driven by playwright-core) against a real endpoint with the demo.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint } from './helpers/endpoint.js';
import { haveChromium, launchChromium } from './helpers/browser.js';


let ep: Endpoint;
let browser: Browser;

describe.skipIf(!haveChromium)('web UI', () => {
  beforeAll(async () => {
    ep = await Endpoint.start({ demo: true });
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await ep?.stop();
  });

  it('shows machines live, their jobs, and a job log', async () => {
    const page = await browser.newPage();
    // The page runs under its Content-Security-Policy: anything it needs that the policy blocks shows here.
    const violations: string[] = [];
    page.on('console', (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
    });
    await page.goto(`${ep.url}/#token=${ep.token}`);
    // the token moves from the URL into local storage
    await expect.poll(() => page.evaluate('location.hash')).toBe('');
    await page.getByText('live', { exact: true }).waitFor({ timeout: 15_000 });
    // the three demo machines arrive at done over the event stream
    await expect.poll(async () => page.locator('#machines tr').count(), { timeout: 30_000 }).toBe(3);
    await expect.poll(async () => page.locator('#machines .state.done').count(), { timeout: 60_000 }).toBe(3);
    await expect(page.locator('#summary').textContent()).resolves.toBe('3 done');
    // the line's beat: a bar per task, and the pipeline's walks
    await expect.poll(async () => page.locator('#cycle .track').count(), { timeout: 15_000 }).toBe(8);
    await expect.poll(async () => page.locator('#pipelinesCycle').textContent(), { timeout: 15_000 }).toContain('demo: 3 of 3 walks done');
    await page.screenshot({ path: join(tmpdir(), 'takt-ui.png'), fullPage: true });

    await page.locator('#machines tr', { hasText: 'demo-1' }).click();
    await expect.poll(async () => page.locator('#jobs tr').count(), { timeout: 10_000 }).toBe(8);
    await page.locator('#jobs tr', { hasText: 'write-motd' }).click();
    await expect.poll(async () => page.locator('#log').textContent(), { timeout: 10_000 }).toMatch(/This is demo-1 \(local\)[\s\S]*— succeeded/);
    expect(violations).toEqual([]);
    // …and the policy is in force: a script injected into the page does not run.
    const injected = await page.evaluate(`(() => { const s = document.createElement('script'); s.textContent = 'window.pwned = 1'; document.body.append(s); return window.pwned === 1; })()`);
    expect(injected).toBe(false);
  }, 180_000);

  it('asks for a token when it has none or a wrong one, saying which token was refused and how to get one', async () => {
    const page = await browser.newPage();
    await page.goto(`${ep.url}/#token=wrong`);
    await page.locator('#login').waitFor({ state: 'visible', timeout: 10_000 });
    // Not silently: the link's token, the endpoint's reason, and where a good one comes from.
    await page.locator('#loginError').waitFor({ state: 'visible', timeout: 10_000 });
    const said = await page.locator('#loginError').textContent();
    expect(said).toContain("The token in this page's link (#token=…) was refused: token not accepted");
    expect(said).toMatch(/data\/admin\.token.*takt login or takt tokens create NAME/);
    // A link with an empty #token= says so too, rather than showing the sign-in form without a word.
    const empty = await browser.newPage();
    await empty.goto(`${ep.url}/#token=`);
    await empty.locator('#loginError').waitFor({ state: 'visible', timeout: 10_000 });
    expect(await empty.locator('#loginError').textContent()).toContain("This page's link has #token= with no token after it.");
    await empty.close();
    await page.fill('#tokenInput', ep.token);
    await page.click('#loginForm button');
    await expect.poll(async () => page.locator('#machines tr').count(), { timeout: 10_000 }).toBe(3);
  });
});
