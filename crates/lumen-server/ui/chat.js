// The chat view: settings, a streamed conversation kept in the page, Stop, and completions
// mode (a raw prompt to /v1/completions). Every answer asks for logprobs and
// `lumen_uncertainty`, so each token arrives with what the token view shows.

import { $, h } from './dom.js';
import { ApiError, stream } from './api.js';
import { appendTokens, chatEntries, completionEntries } from './tokens.js';

/** How many alternatives each token shows (the API allows up to 20). */
export const TOP = 5;

/** The conversation so far, as the API's messages (system prompt excluded). */
let history = [];
let running = null;

function mode() {
  const r = document.querySelector('input[name="mode"]:checked');
  return r ? r.value : 'chat';
}

function num(id) {
  const v = $(id).value.trim();
  return v === '' ? undefined : Number(v);
}

/** The sampling settings, as request fields. */
export function sampling() {
  const s = {
    temperature: num('temperature'),
    top_p: num('top_p'),
    max_tokens: num('max_tokens'),
  };
  const seed = num('seed');
  if (seed !== undefined) s.seed = seed;
  return s;
}

function scrollDown() {
  const t = $('transcript');
  const last = t.lastElementChild;
  if (last) last.scrollIntoView({ block: 'end' });
}

/** Appends a message to the transcript and returns its body element. */
function addMessage(role, label, text) {
  const body = h('span', { class: 'body' }, text || '');
  const li = h('li', { class: `msg ${role}`, dataset: { role } }, h('span', { class: 'who' }, label), body);
  $('transcript').append(li);
  scrollDown();
  return { li, body };
}

/**
 * Wires the composer. `onPick(ctx, index, span)` is called when a generated token is
 * clicked; `onError(err)` when a request fails; `onDone()` after every answer.
 */
export function setupChat({ onPick, onStart, onError, onDone }) {
  const form = $('composer');
  const message = $('message');
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (!running) send({ onPick, onStart, onError, onDone });
  });
  message.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
  $('stop').addEventListener('click', () => {
    if (running) running.abort();
  });
  $('clear').addEventListener('click', () => {
    if (running) running.abort();
    history = [];
    $('transcript').replaceChildren();
  });
  for (const r of document.querySelectorAll('input[name="mode"]')) {
    r.addEventListener('change', () => {
      const completion = mode() === 'completion';
      $('system').disabled = completion;
      message.placeholder = completion ? 'A raw prompt to continue…' : 'Ask something… (Enter sends, Shift+Enter for a new line)';
    });
  }
}

async function send({ onPick, onStart, onError, onDone }) {
  const text = $('message').value;
  const model = $('model').value;
  if (!text.trim() || !model) return;
  onStart();
  const m = mode();
  const base = { model, ...sampling(), lumen_uncertainty: true, stream_options: { include_usage: true } };
  let body;
  let path;
  const ctx = { mode: m, model, entries: [], text: '' };
  if (m === 'chat') {
    const system = $('system').value.trim();
    const messages = [...(system ? [{ role: 'system', content: system }] : []), ...history, { role: 'user', content: text }];
    body = { ...base, messages, logprobs: true, top_logprobs: TOP };
    path = '/v1/chat/completions';
    ctx.messages = messages;
    addMessage('user', 'You', text);
  } else {
    body = { ...base, prompt: text, logprobs: TOP };
    path = '/v1/completions';
    ctx.prompt = text;
  }
  $('message').value = '';
  const { li, body: out } = addMessage('assistant', m === 'chat' ? 'Assistant' : 'Completion', '');
  li.setAttribute('aria-busy', 'true');
  if (m === 'completion') out.append(h('span', { class: 'prompt' }, text));
  const gen = h('span', { class: 'generated' });
  out.append(gen);
  gen.addEventListener('click', (ev) => {
    const t = ev.target instanceof Element ? ev.target.closest('.tok') : null;
    if (t) onPick(ctx, Number(t.dataset.index), t);
  });
  gen.addEventListener('keydown', (ev) => {
    const t = ev.target instanceof Element ? ev.target.closest('.tok') : null;
    if (t && (ev.key === 'Enter' || ev.key === ' ')) {
      ev.preventDefault();
      onPick(ctx, Number(t.dataset.index), t);
    }
  });
  running = new AbortController();
  $('send').disabled = true;
  $('stop').disabled = false;
  const started = performance.now();
  let finish = null;
  let usage = null;
  let summary = null;
  try {
    for await (const chunk of stream(path, body, running.signal)) {
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = m === 'chat' ? (choice.delta && choice.delta.content) || '' : choice.text || '';
        const entries = m === 'chat' ? chatEntries(choice) : completionEntries(choice);
        appendTokens(gen, entries, piece, ctx.entries.length);
        ctx.entries.push(...entries);
        ctx.text += piece;
        if (choice.finish_reason) finish = choice.finish_reason;
        const u = choice.lumen_uncertainty;
        if (u && u.perplexity !== undefined) summary = u;
      }
      scrollDown();
    }
    if (finish === null) finish = 'done';
  } catch (err) {
    if (err && err.name === 'AbortError') finish = 'stopped';
    else {
      li.classList.add('error');
      out.append(h('span', { class: 'stats' }, err instanceof ApiError ? err.describe() : String(err)));
      onError(err);
    }
  } finally {
    running = null;
    $('send').disabled = false;
    $('stop').disabled = true;
    li.removeAttribute('aria-busy');
  }
  if (m === 'chat' && finish !== null) history.push({ role: 'user', content: text }, { role: 'assistant', content: ctx.text });
  if (finish !== null) {
    const secs = (performance.now() - started) / 1000;
    const bits = [`${ctx.entries.length} tokens`, `${(ctx.entries.length / Math.max(secs, 1e-3)).toFixed(1)} tok/s`, `finish: ${finish}`];
    if (summary) bits.push(`perplexity ${summary.perplexity.toFixed(2)}`, `least likely token ${(summary.min_prob * 100).toFixed(1)}%`);
    if (usage) bits.push(`usage: ${usage.prompt_tokens} in, ${usage.completion_tokens} out`);
    out.after(h('span', { class: 'stats' }, bits.join(' · ')));
    li.dataset.done = finish;
  }
  onDone();
}
