// The playground in a real browser (Debian's chromium through playwright-core), against a
// real `lumen serve` with the real models. Started by crates/lumen-cli/tests/e2e_ui.rs,
// which passes the server's address and keys in the environment:
//   LUMEN_BASE (http://127.0.0.1:PORT), LUMEN_API_KEY, LUMEN_ADMIN_KEY, LUMEN_SHOTS (a folder),
//   LUMEN_EXPLAIN=1 when the server serves /v1/explain.
// Every number the page shows is checked against the API's answer to the same request.
// Exits non-zero on the first failed check; prints `N passed, 0 failed` at the end.

import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BASE = process.env.LUMEN_BASE;
const KEY = process.env.LUMEN_API_KEY;
const ADMIN = process.env.LUMEN_ADMIN_KEY;
const SHOTS = process.env.LUMEN_SHOTS || 'target/playground';
const EXPLAIN = process.env.LUMEN_EXPLAIN === '1';
const MODEL = 'smollm2';
assert.ok(BASE && KEY && ADMIN, 'LUMEN_BASE, LUMEN_API_KEY and LUMEN_ADMIN_KEY are required');
mkdirSync(SHOTS, { recursive: true });

let passed = 0;
const step = async (name, fn) => {
  const t0 = Date.now();
  await fn();
  passed++;
  console.log(`ok ${passed} - ${name} (${Date.now() - t0} ms)`);
};

/** The API, called directly (the reference the page is compared with). */
async function api(path, body, key = KEY) {
  const r = await fetch(BASE + path, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  assert.ok(r.ok, `${path}: ${r.status} ${text}`);
  return JSON.parse(text);
}

// A fresh profile for every run (playwright passes it as --user-data-dir).
const userDir = mkdtempSync(join(tmpdir(), 'lumen-chromium-'));
const browser = await chromium.launchPersistentContext(userDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--no-first-run',
  ],
  viewport: { width: 1280, height: 800 },
});

/** Requests that left 127.0.0.1, console errors and page errors, over every tab. */
const offHost = [];
const consoleErrors = [];
// The refusals these tests provoke on purpose: the browser logs each failed fetch.
const EXPECTED = /Failed to load resource: the server responded with a status of (401|429)/;

browser.on('request', (req) => {
  const u = new URL(req.url());
  if (u.hostname !== '127.0.0.1') offHost.push(req.url());
});

/** A new tab (its own session storage, so it asks for the key again) at this size and theme. */
async function newPage({ viewport, colorScheme }) {
  const page = await browser.newPage();
  await page.setViewportSize(viewport);
  await page.emulateMedia({ colorScheme });
  page.on('console', (m) => {
    if (m.type() === 'error' && !EXPECTED.test(m.text())) consoleErrors.push(m.text());
  });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  return page;
}

async function useKey(page, key) {
  await page.getByRole('textbox', { name: 'API key' }).fill(key);
  await page.getByRole('button', { name: 'Use key' }).click();
}

async function noHorizontalScroll(page, what) {
  const { sw, cw } = await page.evaluate(() => ({
    sw: document.documentElement.scrollWidth,
    cw: document.documentElement.clientWidth,
  }));
  assert.ok(sw <= cw, `${what}: page is ${sw}px wide in a ${cw}px viewport`);
}

const last = (page) => page.locator('#transcript li.msg.assistant').last();

/** Sends `text` and waits for the answer; returns the token spans' entries and the text. */
async function sendAndWait(page, text) {
  const before = await page.locator('#transcript li.msg.assistant').count();
  await page.getByRole('textbox', { name: 'Message' }).fill(text);
  await page.getByRole('button', { name: 'Send' }).click();
  await page.locator('#transcript li.msg.assistant').nth(before).and(page.locator('[data-done]')).waitFor({ timeout: 60_000 });
  return last(page).locator('.generated').innerText();
}

let page;

try {
  page = await newPage({ viewport: { width: 1280, height: 800 }, colorScheme: 'light' });

  await step('the page asks for a key; a wrong one shows the 401 message, the right one works', async () => {
    const resp = await page.goto(BASE + '/');
    assert.equal(resp.status(), 200);
    const keyBox = page.getByRole('textbox', { name: 'API key' });
    await keyBox.waitFor();
    await page.locator('#notice', { hasText: '401' }).waitFor();
    await useKey(page, 'not-the-key');
    await page.locator('#notice', { hasText: 'This server needs an API key (401)' }).waitFor();
    assert.equal(await page.getByRole('combobox', { name: 'Model' }).locator('option').count(), 0);
    await page.screenshot({ path: join(SHOTS, 'key-1280-light.png') });
    await useKey(page, KEY);
    await page.locator('#model option', { hasText: MODEL }).waitFor({ state: 'attached' });
    assert.ok(await page.locator('#notice').isHidden());
  });

  let answerText = '';
  const seedBody = { temperature: 0.9, top_p: 0.95, max_tokens: 24, seed: 1234 };
  const question = 'Tell me a short fact about the Moon.';

  await step('a chat turn streams token by token and equals the API answer for the same seeded request', async () => {
    await page.getByRole('combobox', { name: 'Model' }).selectOption(MODEL);
    await page.locator('#temperature').fill(String(seedBody.temperature));
    await page.locator('#top_p').fill(String(seedBody.top_p));
    await page.locator('#max_tokens').fill(String(seedBody.max_tokens));
    await page.locator('#seed').fill(String(seedBody.seed));
    // Record when each token span appears: a page that waited for the whole answer would
    // add them all in one task.
    await page.evaluate(() => {
      window.__arrivals = [];
      new MutationObserver((records) => {
        const n = records.reduce((k, r) => k + [...r.addedNodes].filter((x) => x.classList && x.classList.contains('tok')).length, 0);
        if (n) window.__arrivals.push([performance.now(), n]);
      }).observe(document.getElementById('transcript'), { childList: true, subtree: true });
    });
    const stopButton = page.getByRole('button', { name: 'Stop' });
    assert.ok(await stopButton.isDisabled());
    answerText = await sendAndWait(page, question);
    const arrivals = await page.evaluate(() => window.__arrivals);
    const ref = await api('/v1/chat/completions', {
      model: MODEL,
      messages: [{ role: 'user', content: question }],
      ...seedBody,
      logprobs: true,
      top_logprobs: 5,
      lumen_uncertainty: true,
    });
    const refText = ref.choices[0].message.content;
    assert.equal(answerText, refText);
    const tokens = arrivals.reduce((k, [, n]) => k + n, 0);
    assert.equal(tokens, ref.choices[0].logprobs.content.length, 'one span per generated token');
    assert.ok(arrivals.length >= Math.min(5, tokens), `tokens arrived in ${arrivals.length} updates: ${JSON.stringify(arrivals)}`);
    assert.ok(await stopButton.isDisabled());
    // Hovering: alternatives and their probabilities are the API's top logprobs.
    const spans = last(page).locator('.generated .tok');
    assert.equal(await spans.count(), ref.choices[0].logprobs.content.length);
    for (const k of [0, 1, 2, Math.floor(tokens / 2), tokens - 1]) {
      const want = ref.choices[0].logprobs.content[k];
      await spans.nth(k).hover();
      const tip = page.getByRole('tooltip');
      await tip.waitFor();
      const alts = await tip.locator('li.alt').evaluateAll((els) =>
        els.map((e) => ({ token: e.dataset.token, logprob: Number(e.dataset.logprob), shown: e.querySelector('.prob').textContent })),
      );
      assert.deepEqual(
        alts.map((a) => [a.token, a.logprob]),
        want.top_logprobs.map((t) => [t.token, t.logprob]),
        `token ${k}`,
      );
      for (const a of alts) {
        const p = Math.exp(a.logprob) * 100;
        assert.ok(Math.abs(parseFloat(a.shown) - p) <= Math.max(0.051, p * 0.051), `${a.shown} vs ${p}`);
      }
      // The underline colour follows the API's entropy for that token.
      const entropy = Number(await spans.nth(k).getAttribute('data-entropy'));
      assert.equal(entropy, ref.choices[0].lumen_uncertainty.tokens[k].entropy);
    }
    await spans.nth(1).hover();
    await page.screenshot({ path: join(SHOTS, 'chat-1280-light.png') });
    await page.mouse.move(0, 0);
  });

  await step('keyboard: a token takes focus and shows its alternatives; Stop ends a stream', async () => {
    const span = last(page).locator('.generated .tok').first();
    await span.focus();
    await page.getByRole('tooltip').waitFor();
    await page.keyboard.press('Escape');
    await page.getByRole('tooltip').waitFor({ state: 'hidden' });
    await page.locator('#max_tokens').fill('400');
    await page.locator('#seed').fill('');
    await page.getByRole('textbox', { name: 'Message' }).fill('Write a long story about a lighthouse keeper.');
    await page.getByRole('button', { name: 'Send' }).click();
    const stop = page.getByRole('button', { name: 'Stop' });
    await last(page).locator('.generated .tok').nth(3).waitFor();
    await stop.click();
    await last(page).and(page.locator('[data-done="stopped"]')).waitFor({ timeout: 30_000 });
    const n = await last(page).locator('.generated .tok').count();
    assert.ok(n < 400, `stopped after ${n} tokens`);
    await page.getByRole('button', { name: 'Clear' }).click();
    await page.locator('#max_tokens').fill(String(seedBody.max_tokens));
  });

  await step('completions mode sends a raw prompt and equals the API answer', async () => {
    await page.getByRole('radio', { name: 'Completion' }).check();
    await page.locator('#seed').fill('7');
    const prompt = 'The three primary colours are';
    const text = await sendAndWait(page, prompt);
    const ref = await api('/v1/completions', { model: MODEL, prompt, ...seedBody, seed: 7, logprobs: 5 });
    assert.equal(text, ref.choices[0].text);
    const first = last(page).locator('.generated .tok').first();
    await first.hover();
    const alts = await page.getByRole('tooltip').locator('li.alt').evaluateAll((els) => els.map((e) => Number(e.dataset.logprob)));
    const want = Object.values(ref.choices[0].logprobs.top_logprobs[0]).sort((a, b) => b - a);
    assert.deepEqual(alts, want);
    await page.mouse.move(0, 0);
    await page.getByRole('radio', { name: 'Chat' }).check();
    await page.locator('#seed').fill(String(seedBody.seed));
  });

  if (EXPLAIN) {
    await step('clicking a token renders the attribution heatmap and the lens grid from /v1/explain', async () => {
      await page.getByRole('button', { name: 'Clear' }).click();
      await sendAndWait(page, question);
      const k = 3;
      const span = last(page).locator('.generated .tok').nth(k);
      await span.click();
      const cells = page.locator('#why-body .heatmap .cell');
      await cells.first().waitFor({ timeout: 60_000 });
      const scores = await cells.evaluateAll((els) => els.map((e) => Number(e.dataset.score)));
      const entries = await last(page).locator('.generated .tok').evaluateAll((els) => els.map((e) => e.textContent));
      const completion = entries.slice(0, k + 1).join('');
      const messages = [{ role: 'user', content: question }];
      const ref = await api('/v1/explain', { model: MODEL, messages, completion, occlusion: { spans: 'word' } });
      const row = ref.occlusion.delta[ref.occlusion.delta.length - 1];
      assert.equal(scores.length, ref.occlusion.spans.length, 'one cell per span');
      assert.deepEqual(scores, row);
      await page.locator('#why-body table.lens td').first().waitFor({ timeout: 60_000 });
      const grid = await page.locator('#why-body table.lens td').evaluateAll((els) => els.map((e) => [Number(e.dataset.layer), Number(e.dataset.position), Number(e.dataset.logprob)]));
      const n = ref.tokens.prompt.length + ref.tokens.completion.length;
      const positions = [];
      for (let p = Math.max(0, n - 2 - 7); p <= n - 2; p++) positions.push(p);
      const lens = await api('/v1/explain', { model: MODEL, messages, completion, logit_lens: { positions, top_k: 1 } });
      const layers = lens.logit_lens[0].layers.length;
      assert.equal(grid.length, layers * positions.length, 'layers x positions cells');
      for (const col of lens.logit_lens) {
        for (const cell of col.layers) {
          assert.ok(grid.some(([l, p, lp]) => l === cell.layer && p === col.position && lp === cell.top[0].logprob), `cell ${cell.layer},${col.position}`);
        }
      }
      const cost = await page.locator('#why-body .cost').allInnerTexts();
      assert.ok(cost.length === 2 && cost.every((c) => /forward passes/.test(c)), String(cost));
      await page.mouse.move(0, 0);
      await page.screenshot({ path: join(SHOTS, 'why-1280-light.png'), fullPage: true });
      // A contrast token: the cells become the drop of logprob(token) - logprob(contrast).
      const contrast = page.getByRole('combobox', { name: 'Rather than' });
      const alt = await contrast.locator('option').nth(1).getAttribute('value');
      await contrast.selectOption(alt);
      await page.getByRole('button', { name: 'Explain' }).click();
      await page.locator('#why-body .attribution .hint', { hasText: 'rather than' }).waitFor({ timeout: 60_000 });
      const contrasted = await cells.evaluateAll((els) => els.map((e) => Number(e.dataset.score)));
      const cref = await api('/v1/explain', { model: MODEL, messages, completion, occlusion: { spans: 'word', contrast: alt } });
      assert.deepEqual(contrasted, cref.occlusion.contrast_delta[cref.occlusion.contrast_delta.length - 1]);
      await contrast.selectOption('');
    });
  } else {
    console.log('# skipped: the attribution and lens checks (the server has no /v1/explain)');
  }

  await step('the embeddings view shows the API cosine and scores every word', async () => {
    await page.getByRole('tab', { name: 'Embeddings' }).click();
    await page.getByRole('button', { name: 'Compare' }).click();
    const cos = page.locator('#embed-out .cosine');
    await cos.waitFor({ timeout: 30_000 });
    const shown = Number(await cos.getAttribute('data-cosine'));
    const a = await page.getByRole('textbox', { name: 'First text' }).inputValue();
    const b = await page.getByRole('textbox', { name: 'Second text' }).inputValue();
    const emb = await page.locator('#embed-model').inputValue();
    const r = await api('/v1/embeddings', { model: emb, input: [a, b] });
    const [x, y] = r.data.map((d) => d.embedding);
    let dot = 0;
    let nx = 0;
    let ny = 0;
    for (let i = 0; i < x.length; i++) {
      dot += x[i] * y[i];
      nx += x[i] * x[i];
      ny += y[i] * y[i];
    }
    assert.ok(Math.abs(shown - dot / Math.sqrt(nx * ny)) < 1e-6, `${shown} vs ${dot / Math.sqrt(nx * ny)}`);
    const words = a.trim().split(/\s+/).length + b.trim().split(/\s+/).length;
    assert.equal(await page.locator('#embed-out .heatmap .cell').count(), words);
    await page.screenshot({ path: join(SHOTS, 'embeddings-1280-light.png') });
    await page.getByRole('tab', { name: 'Chat' }).click();
  });

  await step('a rate-limited key shows the retry time; usage and limits are shown', async () => {
    const limited = await api('/admin/keys', { name: 'browser-rpm-1', rpm: 1 }, ADMIN);
    await useKey(page, limited.key);
    await page.locator('#model option', { hasText: MODEL }).waitFor({ state: 'attached' });
    await page.getByRole('button', { name: 'Clear' }).click();
    await sendAndWait(page, 'Hi');
    await page.locator('#usage', { hasText: 'requests left' }).waitFor();
    await page.getByRole('textbox', { name: 'Message' }).fill('Hi again');
    await page.getByRole('button', { name: 'Send' }).click();
    const notice = page.locator('#notice', { hasText: 'Rate limited (429)' });
    await notice.waitFor({ timeout: 30_000 });
    const text = await notice.innerText();
    const m = /Retry in ([0-9.]+) s/.exec(text);
    assert.ok(m && Number(m[1]) > 0 && Number(m[1]) <= 60, text);
    await page.screenshot({ path: join(SHOTS, 'rate-limited-1280-light.png') });
    await useKey(page, KEY);
    await page.getByRole('button', { name: 'Clear' }).click();
  });

  await page.close();

  for (const scheme of ['light', 'dark']) {
    await step(`phone width (390 px, ${scheme}): no horizontal scroll in any view`, async () => {
      page = await newPage({ viewport: { width: 390, height: 844 }, colorScheme: scheme});
      await page.goto(BASE + '/');
      await useKey(page, KEY);
      await page.locator('#model option', { hasText: MODEL }).waitFor({ state: 'attached' });
      await noHorizontalScroll(page, 'empty chat');
      await page.locator('#seed').fill('3');
      await page.locator('#max_tokens').fill('40');
      await sendAndWait(page, 'Describe a forest in two sentences with some long words like incomprehensibilities.');
      await noHorizontalScroll(page, 'chat');
      await page.screenshot({ path: join(SHOTS, `chat-390-${scheme}.png`), fullPage: true });
      if (EXPLAIN) {
        await last(page).locator('.generated .tok').nth(2).click();
        await page.locator('#why-body table.lens td').first().waitFor({ timeout: 60_000 });
        await noHorizontalScroll(page, 'why this token');
        await page.locator('#why').screenshot({ path: join(SHOTS, `why-390-${scheme}.png`) });
      }
      await page.getByRole('tab', { name: 'Embeddings' }).click();
      await page.getByRole('button', { name: 'Compare' }).click();
      await page.locator('#embed-out .cosine').waitFor({ timeout: 30_000 });
      await noHorizontalScroll(page, 'embeddings');
      await page.screenshot({ path: join(SHOTS, `embeddings-390-${scheme}.png`), fullPage: true });
      await page.close();
    });
  }

  await step('dark theme at 1280×800', async () => {
    page = await newPage({ viewport: { width: 1280, height: 800 }, colorScheme: 'dark' });
    await page.goto(BASE + '/');
    await useKey(page, KEY);
    await page.locator('#model option', { hasText: MODEL }).waitFor({ state: 'attached' });
    await page.locator('#seed').fill('5');
    await sendAndWait(page, 'What is a prime number?');
    await last(page).locator('.generated .tok').nth(2).hover();
    await page.screenshot({ path: join(SHOTS, 'chat-1280-dark.png') });
    if (EXPLAIN) {
      await page.mouse.move(0, 0);
      await last(page).locator('.generated .tok').nth(2).click();
      await page.locator('#why-body table.lens td').first().waitFor({ timeout: 60_000 });
      await page.mouse.move(0, 0);
      await page.screenshot({ path: join(SHOTS, 'why-1280-dark.png'), fullPage: true });
      // Past the endpoint's 32 explained tokens the panel says so instead of earning a 400.
      const toks = last(page).locator('.generated .tok');
      if ((await toks.count()) > 40) {
        await toks.nth(40).click();
        await page.locator('#why-body', { hasText: 'first 32 tokens' }).waitFor();
      }
    }
    await page.close();
  });

  await step('no console errors and no request left 127.0.0.1', async () => {
    assert.deepEqual(consoleErrors, []);
    assert.deepEqual(offHost, []);
  });
} catch (err) {
  console.error(err);
  if (page) {
    try {
      await page.screenshot({ path: join(SHOTS, 'failure.png'), fullPage: true });
    } catch {
      // The page is gone: the error above says why.
    }
  }
  console.log(`${passed} passed, 1 failed`);
  await browser.close();
  rmSync(userDir, { recursive: true, force: true });
  process.exit(1);
}
await browser.close();
rmSync(userDir, { recursive: true, force: true });
console.log(`${passed} passed, 0 failed`);
