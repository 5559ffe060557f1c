/**
 * The web UI shows what operators and task scripts wrote — a pause reason, a job's log, a cancelled job's
 * reason — as text, never as markup (docs/security.md: escaping plus a strict CSP). Hostile strings go in
 * through the real API and a real agent; a real Chromium must show them literally and create no element
 * from them. Replacing the UI's `esc` with the identity makes this fail (elements appear), whatever the
 * CSP then blocks.
 */
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, until } from './helpers/endpoint.js';
import { haveChromium, launchChromium } from './helpers/browser.js';


const IMG = '<img src=x id=pwn1 onerror="window.pwned=1">';
const SCRIPT = '</td><script>window.pwned=2</script><b id=pwn2>bold</b>';
const QUOTE = '" onmouseover="window.pwned=3" data-x="';
const REASON = `maintenance ${IMG} ${SCRIPT} ${QUOTE} & done`;

describe.skipIf(!haveChromium)('web UI: hostile text stays text', () => {
  let ep: Endpoint;
  let browser: Browser;

  beforeAll(async () => {
    ep = await Endpoint.start();
    browser = await launchChromium();
  }, 120_000);
  afterAll(async () => {
    await browser?.close();
    await ep?.stop();
  });

  it('a pause reason, a log and a job reason full of markup show literally, and nothing runs', async () => {
    const files = {
      'pack.yaml': 'name: hostile\nversion: 1.0.0\n',
      // The script prints markup, then waits to be cancelled (the cancel is what the test waits for).
      'tasks/shout.yaml': `name: shout\ntimeout: 10m\nscript: |\n  printf '%s\\n' ${JSON.stringify(IMG)} ${JSON.stringify(SCRIPT)} ${JSON.stringify(QUOTE)}\n  echo printed\n  exec sleep 600\n`,
      'stages/s.yaml': 'name: s\ntasks: [shout]\n',
      'pipelines/hostile.yaml': 'name: hostile\nstages: [s]\n',
    };
    const inst = await ep.call('POST', '/packs', { files });
    expect(inst.status, JSON.stringify(inst.body)).toBeLessThan(300);
    const made = await ep.call('POST', '/machines', { name: 'web-1', broker: 'local', pipeline: 'hostile' });
    expect(made.status, JSON.stringify(made.body)).toBe(201);
    const id = made.body.items[0].id as string;

    // The script has printed its markup (it is in the stored log) before the operator pauses with a hostile reason.
    const job = await until(async () => {
      const jobs = (await ep.call('GET', `/jobs?machine=${id}`)).body.items as Array<{ id: string; state: string }>;
      const j = jobs.find((x) => x.state === 'running');
      if (!j) return undefined;
      const log = (await ep.call('GET', `/jobs/${j.id}/log`)).body as { chunks: Array<{ data: string }> };
      return log.chunks.map((c) => c.data).join('').includes('printed') ? j : undefined;
    }, 60_000, 'the job to print its markup');
    const paused = await ep.call('POST', `/machines/${id}/pause`, { cancel: true, reason: REASON });
    expect(paused.status, JSON.stringify(paused.body)).toBe(200);
    await until(async () => ((await ep.call('GET', `/machines/${id}`)).body.state === 'paused' ? true : undefined), 60_000, 'web-1 to be paused');

    const page = await browser.newPage();
    const violations: string[] = [];
    page.on('console', (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
    });
    page.on('dialog', (d) => void d.dismiss());
    await page.goto(`${ep.url}/#token=${ep.token}`);
    await expect.poll(() => page.locator('#machines tr').count(), { timeout: 15_000 }).toBe(1);
    // The machine's reason, as text.
    await expect.poll(() => page.locator('#machines .reason').textContent(), { timeout: 15_000 }).toContain(REASON);
    await page.locator('#machines tr', { hasText: 'web-1' }).click();
    await expect.poll(() => page.locator('#jobs tr').count(), { timeout: 15_000 }).toBe(1);
    // The cancelled job's reason carries the operator's words, as text.
    await expect.poll(() => page.locator('#jobs .reason').textContent(), { timeout: 15_000 }).toContain(IMG);
    await page.locator('#jobs tr').first().click();
    await expect.poll(() => page.locator('#log').textContent(), { timeout: 15_000 }).toContain(`${IMG}\n${SCRIPT}\n${QUOTE}\n`);
    // Hover where an injected attribute would be.
    await page.locator('#machines tr').first().hover();

    // A string, not a function: the test's TypeScript has no DOM types (as in ui.test.ts).
    const found = (await page.evaluate(`({
      pwned: window.pwned ?? null,
      injected: document.querySelectorAll('#pwn1, #pwn2, img').length,
      scripts: document.scripts.length,
      attrs: document.querySelectorAll('[onmouseover], [onerror], [data-x]').length,
    })`)) as { pwned: number | null; injected: number; scripts: number; attrs: number };
    expect(found.pwned).toBeNull();
    expect(found.injected).toBe(0);
    // The page's own module script (allowed by the CSP's hash) is the only one.
    expect(found.scripts).toBe(1);
    expect(found.attrs).toBe(0);
    expect(await page.locator('#pwn1, #pwn2, #machines img, #jobs img, #log img, #machines script, #jobs script, #machines b, #jobs b').count()).toBe(0);
    expect(violations).toEqual([]);
    await page.close();
    expect(job.id).toBeTruthy();
  }, 240_000);
});
