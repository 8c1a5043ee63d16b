// Drive the OHIF Viewer (static build) in Debian's headless Chromium through one study:
// open it, load the SEG, load the SR, open the SC. Prints one JSON object with what the page
// showed at each step (visible text) and writes a screenshot per step; tests/test_viewers.py
// asserts on it. Usage: node ohif.mjs VIEWER_URL STUDY_UID OUT_DIR EXPECTED.json
// EXPECTED.json: {"segments": [labels], "lesions": [labels], "jump": index} (what to wait for, with a
// deadline, and which lesion to jump to from the panels).
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const [viewerUrl, studyUid, outDir, expectedPath] = process.argv.slice(2);
const expected = JSON.parse(fs.readFileSync(expectedPath, 'utf8'));
const STEP_MS = Number(process.env.OHIF_STEP_TIMEOUT_MS || 120000);
fs.mkdirSync(outDir, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ viewport: { width: 1600, height: 1000 } });
context.setDefaultTimeout(STEP_MS);  // a busy machine: every wait has the step's deadline
const report = { errors: [], pageErrors: [], steps: {} };

async function bodyText(page) {
  return page.evaluate(() => document.body.innerText);
}

async function waitForTexts(page, texts, what) {
  // Poll the page's visible text until every expected string is there (or the deadline passes).
  const deadline = Date.now() + STEP_MS;
  let missing = texts;
  while (Date.now() < deadline) {
    const text = await bodyText(page);
    missing = texts.filter(t => !text.includes(t));
    if (missing.length === 0) return [];
    await page.waitForTimeout(250);
  }
  report.errors.push(`${what}: not shown within ${STEP_MS} ms: ${missing.join(' | ')}`);
  return missing;
}

async function openStudy() {
  const page = await context.newPage();
  // OHIF's own uncaught errors are reported, not failed on: the checks are on what the page shows.
  page.on('pageerror', e => report.pageErrors.push(e.message.slice(0, 300)));
  await page.goto(`${viewerUrl}/viewer?StudyInstanceUIDs=${studyUid}`);
  await page.locator('[data-series="9001"]').first().waitFor({ timeout: STEP_MS });
  const tour = page.getByText('Skip all');
  if (await tour.count()) await tour.first().click();
  return page;
}

async function answer(page, question) {
  // OHIF asks before it loads a SEG ("open this Segmentation?") or restores an SR's measurements.
  await page.getByText(question).waitFor({ timeout: STEP_MS });
  await page.getByRole('button', { name: 'Yes' }).click();
}

async function openPanel(page, button, firstText) {
  // The right-hand panel may start collapsed: open it when its content is not on the page yet.
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline && !(await bodyText(page)).includes(firstText)) await page.waitForTimeout(200);
  if (!(await bodyText(page)).includes(firstText)) await page.locator(`[data-cy="${button}"]`).first().click();
}

async function jumpTo(page, label, name) {
  // Click a row of the panel: the viewport goes to that lesion's slice.
  const row = page.getByText(label, { exact: true }).filter({ visible: true }).first();
  try {
    await row.click({ timeout: STEP_MS / 2 });
  } catch (e) {
    // A panel that keeps re-rendering (statistics arriving) never counts as stable for a pointer
    // click on a busy machine: deliver the same click event to the row instead.
    report.pageErrors.push(`${name}: pointer click gave way to a click event: ${e.message.split('\n')[0]}`);
    await row.dispatchEvent('click');
  }
  await page.waitForTimeout(1500);  // let the viewport render the jumped-to slice for the screenshot
  const shot = path.join(outDir, `ohif-${name}.png`);
  await page.screenshot({ path: shot });
  report.steps[name] = { text: await bodyText(page), screenshot: shot };
}

async function step(name, fn) {
  const page = await openStudy();
  try {
    await fn(page);
  } catch (e) {
    report.errors.push(`${name}: ${e.message.split('\n')[0]}`);
  }
  const shot = path.join(outDir, `ohif-${name}.png`);
  await page.screenshot({ path: shot });
  report.steps[name] = { text: await bodyText(page), screenshot: shot };
  await page.close();
}

await step('study', async page => {
  await waitForTexts(page, ['iodine-node lesion SEG', 'iodine-node lesion measurements', 'iodine-node summary'],
    'series list');
});

await step('seg', async page => {
  await page.locator('[data-series="9001"]').first().dblclick();
  await answer(page, 'Do you want to open this Segmentation?');
  await openPanel(page, 'panelSegmentation-btn', expected.segments[0]);
  await waitForTexts(page, expected.segments, 'segment list');
  await jumpTo(page, expected.segments[expected.jump], 'seg-jump');
});

await step('sr', async page => {
  await page.locator('[data-series="9002"]').first().dblclick();
  await answer(page, 'Do you want to continue tracking measurements');
  await openPanel(page, 'trackedMeasurements-btn', expected.lesions[0]);
  await waitForTexts(page, expected.lesions, 'measurement panel');
  const shot = path.join(outDir, 'ohif-sr-panel.png');
  await page.screenshot({ path: shot });
  report.steps['sr-panel'] = { text: await bodyText(page), screenshot: shot };
  await jumpTo(page, expected.lesions[expected.jump], 'sr-jump');
});

await step('sc', async page => {
  await page.locator('[data-series="9003"]').first().dblclick();
  await waitForTexts(page, ['iodine-node summary (MIP and lesion table)'], 'SC in the viewport');
  // The viewport's overlay names the displayed series; wait until it is the SC's.
  await page.waitForFunction(() => [...document.querySelectorAll('[data-cy="viewport-pane"], .viewport-wrapper')]
    .some(el => el.innerText.includes('iodine-node summary')), null, { timeout: STEP_MS });
  await page.waitForTimeout(1500);  // pixel data drawn for the screenshot
});

await browser.close();
process.stdout.write(JSON.stringify(report));
