/**
 * Issue 12 in the web UI: the operator's verbs on the machine view (Pause, Stop, Resume) and on a running
 * job (Cancel job), in a real Chromium under the page's Content-Security-Policy, against a real endpoint
 * and agent. Each asks for confirmation and an optional reason, calls the route the CLI uses, says what
 * came of it — the API's own message when it refuses — and the view follows the new state live.
 * The long task is a `gate` that runs until the test creates `go` in the machine's root: no timing involved.
 */
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, Machine } from '../src/model/machine.js';
import { Endpoint, until } from './helpers/endpoint.js';
import { haveChromium, launchChromium } from './helpers/browser.js';


const gates = {
  'pack.yaml': 'name: gates\nversion: 1.0.0\n',
  'tasks/gate.yaml': 'name: gate\nscript: |\n  until [ -e "$TAKT_ROOT/go" ]; do sleep 0.05; done\n  echo released\n',
  'tasks/after-gate.yaml': 'name: after-gate\nscript: echo after\n',
  'stages/gated.yaml': 'name: gated\ntasks: [gate, after-gate]\n',
  'pipelines/gated.yaml': 'name: gated\nstages: [gated]\n',
};

let ep: Endpoint;
let browser: Browser;

const machine = () => ep.api.get<Machine>('/machines/ctl');
const jobs = async () => (await ep.api.get<{ items: Job[] }>('/jobs', { machine: 'ctl', limit: 100, order: 'asc' })).items;
const runningGate = () => until(async () => (await jobs()).find((j) => j.task === 'gate' && j.state === 'running'), 60_000, "ctl's gate job to run");
/** The verbs the machine view offers now. */
const verbs = (page: Page) => page.locator('#actions button').allTextContents();

/** Confirms the open dialog, with `reason` typed in when given. */
async function confirm(page: Page, verb: string, reason?: string) {
  const dialog = page.locator('#confirm');
  await dialog.waitFor({ state: 'visible', timeout: 10_000 });
  if (reason !== undefined) await dialog.locator('#reasonInput').fill(reason);
  await dialog.getByRole('button', { name: verb, exact: true }).click();
  await dialog.waitFor({ state: 'hidden', timeout: 10_000 });
}

describe.skipIf(!haveChromium)('web UI: stopping and resuming work', () => {
  beforeAll(async () => {
    ep = await Endpoint.start();
    expect((await ep.call('POST', '/packs', { files: gates })).status).toBeLessThan(300);
    const made = await ep.cli(['machines', 'create', 'ctl', '--broker', 'local', '--pipeline', 'gated']);
    expect(made.code, made.stderr).toBe(0);
    browser = await launchChromium();
  }, 120_000);
  afterAll(async () => {
    await browser?.close();
    await ep?.stop();
  });

  it('Cancel job → cancelled with the reason, machine paused; a refused verb shows the API message; Stop; Resume → done', { timeout: 180_000 }, async () => {
    const page = await browser.newPage();
    const violations: string[] = [];
    page.on('console', (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
    });
    await page.goto(`${ep.url}/#token=${ep.token}`);
    await page.getByText('live', { exact: true }).waitFor({ timeout: 15_000 });
    const gate = await runningGate();
    const row = page.locator('#machines tr', { hasText: 'ctl' });
    await row.click();
    await expect.poll(() => row.locator('.state').textContent(), { timeout: 15_000 }).toBe('running');
    // A running machine can be paused or stopped, not resumed.
    await expect.poll(() => verbs(page), { timeout: 10_000 }).toEqual(['Pause', 'Stop']);

    // Cancel job, backed out first: nothing happens.
    const jobRow = page.locator('#jobs tr', { hasText: 'gate' }).filter({ has: page.locator('.state.running') });
    await jobRow.getByRole('button', { name: 'Cancel job' }).click();
    await page.locator('#confirm').waitFor({ state: 'visible', timeout: 10_000 });
    await page.locator('#confirmBack').click();
    await page.locator('#confirm').waitFor({ state: 'hidden', timeout: 10_000 });
    expect((await jobs()).find((j) => j.id === gate.id)!.state).toBe('running');

    // …then for real, with a reason.
    await jobRow.getByRole('button', { name: 'Cancel job' }).click();
    await page.locator('#reasonInput').fill('wrong image');
    await page.screenshot({ path: join(tmpdir(), 'takt-ui-control.png') });
    await confirm(page, 'Cancel job', 'wrong image');
    await expect.poll(() => page.locator('#actionResult').textContent(), { timeout: 15_000 }).toMatch(/^job gate cancelled: cancelled by \S+: wrong image$/);
    const cancelled = (await jobs()).find((j) => j.id === gate.id)!;
    expect(cancelled.state).toBe('cancelled');
    expect(cancelled.reason).toMatch(/^cancelled by \S+: wrong image$/);
    expect(await machine()).toMatchObject({ state: 'paused', task: 'gate' });
    // The view follows: paused, only Resume applies, the job's button is gone.
    await expect.poll(() => row.locator('.state').textContent(), { timeout: 15_000 }).toBe('paused');
    await expect.poll(() => verbs(page), { timeout: 10_000 }).toEqual(['Resume']);
    await expect.poll(() => page.locator('#jobs button').count(), { timeout: 10_000 }).toBe(0);
    await page.screenshot({ path: join(tmpdir(), 'takt-ui-control-paused.png') });

    // Someone else resumes it while the dialog is open: the UI's resume is refused, and says why.
    await page.locator('#actions').getByRole('button', { name: 'Resume' }).click();
    await page.locator('#confirm').waitFor({ state: 'visible', timeout: 10_000 });
    const elsewhere = await ep.cli(['machines', 'resume', 'ctl']);
    expect(elsewhere.code, elsewhere.stderr).toBe(0);
    await confirm(page, 'Resume');
    await expect.poll(() => page.locator('#actionResult.bad').textContent(), { timeout: 15_000 }).toMatch(/^could not resume ctl: .*machine is running; only a stopped, paused or idle machine can be resumed/);
    const again = await runningGate();
    await expect.poll(() => verbs(page), { timeout: 15_000 }).toEqual(['Pause', 'Stop']);

    // Stop: cancels the current job and holds the machine on its task.
    await page.locator('#actions').getByRole('button', { name: 'Stop' }).click();
    await confirm(page, 'Stop', 'disk swap');
    await expect.poll(() => page.locator('#actionResult.ok').textContent(), { timeout: 15_000 }).toMatch(/^ctl stopped: job gate cancelled \(cancelled by \S+: disk swap\)$/);
    expect((await jobs()).find((j) => j.id === again.id)).toMatchObject({ state: 'cancelled', reason: expect.stringMatching(/: disk swap$/) });
    await expect.poll(() => verbs(page), { timeout: 15_000 }).toEqual(['Resume']);
    expect(await machine()).toMatchObject({ state: 'paused', task: 'gate', reason: expect.stringMatching(/disk swap/) });

    // Resume: the gate can pass now; the machine runs its task again, then the rest, to done.
    writeFileSync(join(ep.data, 'machines', (await machine()).id, 'root', 'go'), '');
    await page.locator('#actions').getByRole('button', { name: 'Resume' }).click();
    await confirm(page, 'Resume');
    await expect.poll(() => page.locator('#actionResult.ok').textContent(), { timeout: 15_000 }).toMatch(/^ctl resumed: running$/);
    await expect.poll(() => row.locator('.state').textContent(), { timeout: 60_000 }).toBe('done');
    await expect.poll(() => page.locator('#actions .label').textContent(), { timeout: 10_000 }).toBe('nothing to control: done');
    expect(await verbs(page)).toEqual([]);
    expect((await jobs()).map((j) => `${j.task} ${j.state}`)).toEqual(['gate cancelled', 'gate cancelled', 'gate succeeded', 'after-gate succeeded']);
    expect(violations).toEqual([]);
  });
});
