// The embeddings view: two texts, their cosine similarity, and which words carry it.
// Everything comes from one `/v1/embeddings` call: the two texts plus each text with one
// word removed; a word's score is how much the similarity drops without it (removal, the
// same idea as occlusion's `delete` mode). The page only does the arithmetic on vectors.

import { $, h } from './dom.js';
import { ApiError, json } from './api.js';

/** Words per text that are scored (each costs one more input in the same request). */
const MAX_WORDS = 32;

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na > 0 && nb > 0 ? dot / Math.sqrt(na * nb) : 0;
}

/** Words with their trailing spaces, so joining them gives the text back. */
function words(text) {
  return text.match(/\s*\S+\s*/g) || [];
}

function without(ws, i) {
  return ws.filter((_, j) => j !== i).join('');
}

function heat(ws, drops) {
  const max = drops.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  return h(
    'p',
    { class: 'heatmap' },
    ws.map((w, i) => {
      if (i >= drops.length) return w;
      const v = drops[i];
      const cell = h('span', { class: 'cell', title: `${w.trim()}: ${v.toFixed(4)}`, dataset: { score: v } }, w);
      const a = max > 0 ? Math.min(1, Math.abs(v) / max) * 0.75 : 0;
      cell.style.backgroundColor = v >= 0 ? `rgba(178, 24, 43, ${a.toFixed(3)})` : `rgba(33, 102, 172, ${a.toFixed(3)})`;
      return cell;
    }),
  );
}

export function setupEmbed(onError) {
  $('embed-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const out = $('embed-out');
    const a = $('text-a').value;
    const b = $('text-b').value;
    const model = $('embed-model').value;
    if (!a.trim() || !b.trim() || !model) return;
    const wa = words(a);
    const wb = words(b);
    const na = Math.min(wa.length > 1 ? wa.length : 0, MAX_WORDS);
    const nb = Math.min(wb.length > 1 ? wb.length : 0, MAX_WORDS);
    const input = [a, b];
    for (let i = 0; i < na; i++) input.push(without(wa, i));
    for (let i = 0; i < nb; i++) input.push(without(wb, i));
    out.replaceChildren(h('p', { class: 'busy' }, `Embedding ${input.length} texts…`));
    $('compare').disabled = true;
    try {
      const r = await json('/v1/embeddings', { method: 'POST', body: { model, input } });
      const v = r.data.sort((x, y) => x.index - y.index).map((d) => d.embedding);
      const sim = cosine(v[0], v[1]);
      const dropsA = [];
      const dropsB = [];
      for (let i = 0; i < na; i++) dropsA.push(sim - cosine(v[2 + i], v[1]));
      for (let i = 0; i < nb; i++) dropsB.push(sim - cosine(v[0], v[2 + na + i]));
      out.replaceChildren(
        h('h3', {}, 'Cosine similarity'),
        h('p', { class: 'cosine', dataset: { cosine: sim } }, sim.toFixed(4)),
        h('h3', {}, 'Which words carry it'),
        h('p', { class: 'hint' }, 'Each word is coloured by how much the similarity drops when it is removed (red: it made the texts closer; blue: further apart).'),
        heat(wa, dropsA),
        heat(wb, dropsB),
        h('p', { class: 'cost' }, `${r.data[0].embedding.length} dimensions · ${input.length} inputs in one request · ${r.usage ? r.usage.prompt_tokens : '?'} tokens`),
      );
    } catch (err) {
      out.replaceChildren(h('p', { class: 'notice', role: 'alert' }, err instanceof ApiError ? err.describe() : String(err)));
      onError(err);
    } finally {
      $('compare').disabled = false;
    }
  });
}
