// The token view: each generated token as its own focusable span, underlined by how unsure
// the model was when it drew it (entropy of the distribution, from `lumen_uncertainty`),
// and a tooltip with the top alternatives and their probabilities (from `logprobs`). Both
// come from the API's answer; the page computes nothing of its own but exp(logprob).

import { $, h, visible, pct } from './dom.js';

/** Entropy buckets (nats) behind the underline colours u0..u4; the legend names them. */
const EDGES = [0.5, 1, 2, 3];

/** The colour class for an entropy. */
export function bucket(entropy) {
  if (!Number.isFinite(entropy)) return 'u2';
  let i = 0;
  while (i < EDGES.length && entropy >= EDGES[i]) i++;
  return `u${i}`;
}

/**
 * A chat chunk's (or answer's) choice as token entries:
 * {token, logprob, top: [{token, logprob}], entropy, margin}.
 */
export function chatEntries(choice) {
  const content = (choice.logprobs && choice.logprobs.content) || [];
  const unc = (choice.lumen_uncertainty && choice.lumen_uncertainty.tokens) || [];
  return content.map((e, i) => ({
    token: e.token,
    logprob: e.logprob,
    top: (e.top_logprobs || []).map((t) => ({ token: t.token, logprob: t.logprob })),
    entropy: unc[i] ? unc[i].entropy : NaN,
    margin: unc[i] ? unc[i].margin : NaN,
  }));
}

/** The same for a text-completion choice (parallel arrays, top logprobs as maps). */
export function completionEntries(choice) {
  const lp = choice.logprobs || {};
  const unc = (choice.lumen_uncertainty && choice.lumen_uncertainty.tokens) || [];
  return (lp.tokens || []).map((token, i) => ({
    token,
    logprob: lp.token_logprobs ? lp.token_logprobs[i] : null,
    top: Object.entries((lp.top_logprobs && lp.top_logprobs[i]) || {})
      .map(([t, l]) => ({ token: t, logprob: l }))
      .sort((a, b) => b.logprob - a.logprob),
    entropy: unc[i] ? unc[i].entropy : NaN,
    margin: unc[i] ? unc[i].margin : NaN,
  }));
}

/**
 * Appends one chunk's tokens to `into`: a span per token when the chunk's text is exactly
 * their concatenation (the usual case), else one span with the text for the chunk's last
 * token (text held back for a stop string or a split UTF-8 character arrives with a later
 * token). Returns the spans; each keeps its entry in `span.entry`.
 */
export function appendTokens(into, entries, text, firstIndex) {
  const spans = [];
  const joined = entries.map((e) => e.token).join('');
  const parts = joined === text ? entries.map((e) => [e, e.token]) : entries.length ? [[entries[entries.length - 1], text]] : [];
  if (!parts.length && text) into.append(text);
  let i = firstIndex + (parts.length === entries.length ? 0 : entries.length - 1);
  for (const [entry, piece] of parts) {
    const span = h(
      'span',
      {
        class: `tok ${bucket(entry.entropy)}`,
        tabindex: 0,
        role: 'button',
        'aria-label': `${visible(entry.token)}: probability ${pct(Math.exp(entry.logprob))}, entropy ${fmt(entry.entropy)} nats`,
        dataset: { index: i, entropy: entry.entropy, logprob: entry.logprob },
      },
      piece,
    );
    span.entry = entry;
    into.append(span);
    spans.push(span);
    i++;
  }
  return spans;
}

function fmt(x, digits = 2) {
  return Number.isFinite(x) ? x.toFixed(digits) : '–';
}

/** The tooltip's contents for one entry. */
function tipContent(entry) {
  const list = h('ol', { 'aria-label': 'Top alternatives' });
  for (const alt of entry.top) {
    const p = Math.exp(alt.logprob);
    const bar = h('span', { class: 'bar' });
    bar.style.width = `${Math.max(2, Math.round(p * 100))}%`;
    list.append(
      h(
        'li',
        {
          class: alt.token === entry.token ? 'alt chosen' : 'alt',
          dataset: { token: alt.token, logprob: alt.logprob },
        },
        h('span', {}, h('code', {}, visible(alt.token)), ' ', h('span', { class: 'prob' }, pct(p))),
        bar,
      ),
    );
  }
  return [
    h('h3', {}, 'Chosen ', h('code', {}, visible(entry.token)), ` · ${pct(Math.exp(entry.logprob))}`),
    entry.top.length ? list : h('p', { class: 'meta' }, 'No alternatives were asked for.'),
    h('p', { class: 'meta' }, `entropy ${fmt(entry.entropy)} nats · margin ${fmt(entry.margin, 3)}`),
  ];
}

/** Shows alternatives when a token under `root` is hovered or focused. */
export function installTooltip(root) {
  const tip = $('tip');
  let current = null;
  const show = (span) => {
    if (!span.entry) return;
    current = span;
    tip.replaceChildren(...tipContent(span.entry));
    tip.hidden = false;
    const r = span.getBoundingClientRect();
    const w = tip.offsetWidth;
    const left = Math.max(4, Math.min(r.left, window.innerWidth - w - 4));
    const below = r.bottom + 6 + tip.offsetHeight < window.innerHeight;
    tip.style.left = `${left}px`;
    tip.style.top = `${below ? r.bottom + 6 : Math.max(4, r.top - tip.offsetHeight - 6)}px`;
    span.setAttribute('aria-describedby', 'tip');
  };
  const hide = (span) => {
    if (current !== span) return;
    tip.hidden = true;
    span.removeAttribute('aria-describedby');
    current = null;
  };
  const tokOf = (ev) => (ev.target instanceof Element ? ev.target.closest('.tok') : null);
  root.addEventListener('mouseover', (ev) => {
    const t = tokOf(ev);
    if (t) show(t);
  });
  root.addEventListener('mouseout', (ev) => {
    const t = tokOf(ev);
    if (t) hide(t);
  });
  root.addEventListener('focusin', (ev) => {
    const t = tokOf(ev);
    if (t) show(t);
  });
  root.addEventListener('focusout', (ev) => {
    const t = tokOf(ev);
    if (t) hide(t);
  });
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && current) hide(current);
  });
}
