// "Why this token": for a clicked output token, two calls to `POST /v1/explain`.
// 1. Attribution (`occlusion`): how much the token's logprob drops when each prompt span is
//    masked out, drawn as a heatmap over the prompt on a diverging scale centred at zero
//    (red: the span made the token likelier; blue: it made it less likely), in nats.
// 2. Logit lens (`logit_lens`): what each layer would predict at the last few positions
//    before the token, top-1 per cell, shaded by its probability.
// Each shows its cost (forward passes and tokens) from the answer's `usage`. The completion
// is sent as text up to and including the clicked token; the explained token is the last
// one of the answer's own tokenization, which the panel names.

import { $, h, visible, pct } from './dom.js';
import { ApiError, json } from './api.js';

/** Lens positions shown (the engine allows 256 cells; 8 × 31 layers fit a 30-block model). */
const LENS_WINDOW = 8;

/** `/v1/explain` explains at most this many completion tokens (its documented limit). */
const MAX_COMPLETION = 32;

let picked = null;
let generation = 0;

/** Called by the chat view when a token is clicked. */
export function pick(ctx, index, span) {
  if (picked) picked.span.classList.remove('picked');
  picked = { ctx, index, span };
  span.classList.add('picked');
  const contrast = $('contrast');
  contrast.replaceChildren(h('option', { value: '' }, '(no contrast)'));
  for (const alt of span.entry.top) {
    if (alt.token !== span.entry.token) contrast.append(h('option', { value: alt.token }, visible(alt.token)));
  }
  $('why-form').hidden = false;
  $('why-hint').hidden = true;
  run();
}

export function setupExplain() {
  $('why-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (picked) run();
  });
}

function base(ctx, index) {
  const completion = ctx.entries
    .slice(0, index + 1)
    .map((e) => e.token)
    .join('');
  const b = { model: ctx.model, completion };
  if (ctx.mode === 'chat') b.messages = ctx.messages;
  else b.prompt = ctx.prompt;
  return b;
}

function costLine(usage) {
  if (!usage) return '';
  return `cost: ${usage.forward_passes} forward passes, ${usage.forward_tokens} tokens`;
}

function fail(into, err) {
  let msg = err instanceof ApiError ? err.describe() : String(err);
  if (err instanceof ApiError && err.status === 404 && /explain/.test(err.message)) {
    msg += ' (the server was started without --enable-explain)';
  }
  into.replaceChildren(h('p', { class: 'notice', role: 'alert' }, msg));
}

async function run() {
  const { ctx, index } = picked;
  const mine = ++generation;
  const granularity = $('granularity').value;
  const contrast = $('contrast').value;
  const attribution = h('section', { class: 'attribution', 'aria-label': 'Attribution' }, h('p', { class: 'busy' }, 'Masking each span…'));
  const lens = h('section', { class: 'lens-section', 'aria-label': 'Logit lens' });
  $('why-body').replaceChildren(attribution, lens);
  if (index >= MAX_COMPLETION) {
    // Asking would only earn a 400: say so at once.
    attribution.replaceChildren(h('p', { class: 'hint' }, `Explanations cover the first ${MAX_COMPLETION} tokens of an answer; this is token ${index + 1}.`));
    return;
  }
  const occlusion = { spans: granularity };
  if (contrast) occlusion.contrast = contrast;
  let answer;
  try {
    answer = await json('/v1/explain', { method: 'POST', body: { ...base(ctx, index), occlusion } });
  } catch (err) {
    if (mine === generation) fail(attribution, err);
    return;
  }
  if (mine !== generation) return;
  renderAttribution(attribution, answer, Boolean(contrast), contrast);
  const n = answer.tokens.prompt.length + answer.tokens.completion.length;
  // The residual at position p predicts token p + 1: the clicked token is the last one.
  const last = n - 2;
  let width = LENS_WINDOW;
  lens.replaceChildren(h('p', { class: 'busy' }, 'Reading every layer…'));
  for (;;) {
    const positions = [];
    for (let p = Math.max(0, last - width + 1); p <= last; p++) positions.push(p);
    try {
      const l = await json('/v1/explain', {
        method: 'POST',
        body: { ...base(ctx, index), logit_lens: { positions, top_k: 1 } },
      });
      if (mine === generation) renderLens(lens, l);
      return;
    } catch (err) {
      // A deeper model than the window allows: fewer positions, same question.
      if (err instanceof ApiError && err.status === 400 && err.param === 'logit_lens.positions' && width > 1) {
        width = Math.floor(width / 2);
        continue;
      }
      if (mine === generation) fail(lens, err);
      return;
    }
  }
}

/** Red for a positive drop, blue for a negative one, alpha by size. */
function shade(el, v, max) {
  const a = max > 0 ? Math.min(1, Math.abs(v) / max) : 0;
  el.style.backgroundColor = v >= 0 ? `rgba(178, 24, 43, ${(a * 0.75).toFixed(3)})` : `rgba(33, 102, 172, ${(a * 0.75).toFixed(3)})`;
}

function renderAttribution(into, answer, withContrast, contrast) {
  const occ = answer.occlusion;
  const target = answer.tokens.completion[answer.tokens.completion.length - 1];
  const row = (withContrast && occ.contrast_delta ? occ.contrast_delta : occ.delta)[occ.delta.length - 1] || [];
  const max = row.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  const spanAt = new Map(occ.spans.map((s, j) => [s.start, j]));
  const prompt = answer.tokens.prompt;
  const map = h('p', { class: 'heatmap', 'aria-label': 'Prompt coloured by attribution' });
  for (let t = 0; t < prompt.length; ) {
    const j = spanAt.get(t);
    if (j === undefined) {
      map.append(h('span', { class: 'fixed' }, prompt[t].text));
      t++;
      continue;
    }
    const s = occ.spans[j];
    const v = row[j];
    const cell = h(
      'span',
      { class: 'cell', tabindex: 0, title: `${s.text.trim() || visible(s.text)}: ${v.toFixed(3)} nats`, dataset: { score: v, span: j } },
      prompt
        .slice(s.start, s.end)
        .map((x) => x.text)
        .join(''),
    );
    shade(cell, v, max);
    map.append(cell);
    t = s.end;
  }
  const what = withContrast
    ? ['Why ', h('code', {}, visible(target.text)), ' rather than ', h('code', {}, visible(contrast)), ': drop in the difference of their logprobs when a span is masked']
    : ['Why ', h('code', {}, visible(target.text)), ` (logprob ${occ.baseline_logprob[occ.baseline_logprob.length - 1].toFixed(3)}): drop in its logprob when a span is masked`];
  into.replaceChildren(
    h('h3', {}, 'Attribution'),
    h('p', { class: 'hint' }, ...what),
    map,
    h('div', { class: 'scale', 'aria-label': 'Colour scale' }, h('span', {}, `−${max.toFixed(2)}`), h('span', { class: 'ramp' }), h('span', {}, `+${max.toFixed(2)} nats`)),
    h('p', { class: 'cost' }, `${occ.spans.length} spans · ${costLine(answer.usage)}`),
    ...answer.warnings.map((w) => h('p', { class: 'hint' }, `⚠ ${w}`)),
  );
}

function renderLens(into, answer) {
  const cols = answer.logit_lens;
  const all = [...answer.tokens.prompt, ...answer.tokens.completion];
  const layers = cols.length ? cols[0].layers.map((l) => l.layer) : [];
  const table = h('table', { class: 'lens' });
  table.append(
    h(
      'thead',
      {},
      h('tr', {}, h('th', { scope: 'col' }, 'layer'), ...cols.map((c) => h('th', { scope: 'col', title: `position ${c.position}` }, visible(all[c.position] ? all[c.position].text : '?')))),
    ),
  );
  const body = h('tbody');
  for (let r = layers.length - 1; r >= 0; r--) {
    const tr = h('tr', {}, h('th', { scope: 'row' }, String(layers[r])));
    for (const c of cols) {
      const cell = c.layers[r];
      const top = cell.top[0];
      const p = top ? Math.exp(top.logprob) : 0;
      const td = h(
        'td',
        {
          title: top ? `layer ${cell.layer}: ${visible(top.text)} ${pct(p)} · entropy ${cell.entropy.toFixed(2)}` : '',
          dataset: { layer: cell.layer, position: c.position, logprob: top ? top.logprob : '' },
        },
        top ? visible(top.text) : '',
      );
      td.style.backgroundColor = `rgba(47, 91, 211, ${(p * 0.8).toFixed(3)})`;
      // Light text where the shade is dark enough to hide dark text.
      if (p > 0.45) td.classList.add('sure');
      tr.append(td);
    }
    body.append(tr);
  }
  table.append(body);
  into.replaceChildren(
    h('h3', {}, 'Logit lens'),
    h('p', { class: 'hint' }, 'Each column is a position, each row a layer (the top row is the output); a cell is the token that layer would predict next, darker when surer. Early layers are unreliable.'),
    h('div', { class: 'lens-wrap' }, table),
    h('p', { class: 'cost' }, `${layers.length} layers × ${cols.length} positions · ${costLine(answer.usage)}`),
  );
}
