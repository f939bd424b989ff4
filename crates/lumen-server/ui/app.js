// The playground's entry point: tabs, the model lists, the API key, usage and errors.
// Each view lives in its own module; this one wires them together.

import { $, h } from './dom.js';
import { ApiError, json, onLimits } from './api.js';
import { getKey, setKey } from './key.js';
import { setupChat } from './chat.js';
import { installTooltip } from './tokens.js';
import { pick, setupExplain } from './explain.js';
import { setupEmbed } from './embed.js';

/** Shows a readable error above the views ('' hides it). */
function notice(text) {
  const n = $('notice');
  n.textContent = text;
  n.hidden = !text;
}

/** A request failed: say why, and ask for a key when that is the reason. */
function onError(err) {
  if (!(err instanceof ApiError)) {
    notice(String(err));
    return;
  }
  notice(err.describe());
  if (err.status === 401) askForKey();
}

function askForKey() {
  $('keybox').hidden = false;
  $('api-key').focus();
}

function setupKey() {
  $('keybox').addEventListener('submit', (ev) => {
    ev.preventDefault();
    setKey($('api-key').value.trim());
    notice('');
    start();
  });
}

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute('aria-controls')).hidden = !on;
    }
  };
  tabs.forEach((t, i) => {
    t.addEventListener('click', () => select(t));
    t.addEventListener('keydown', (ev) => {
      const d = ev.key === 'ArrowRight' ? 1 : ev.key === 'ArrowLeft' ? -1 : 0;
      if (!d) return;
      const next = tabs[(i + d + tabs.length) % tabs.length];
      select(next);
      next.focus();
    });
  });
}

function fill(select, ids) {
  const keep = select.value;
  select.replaceChildren(...ids.map((id) => h('option', { value: id }, id)));
  if (ids.includes(keep)) select.value = keep;
}

/** The rate-limit headers of the last answer, for the usage line. */
let limits = '';
let totals = '';

function showUsage() {
  $('usage').textContent = [totals, limits].filter(Boolean).join(' · ');
}

onLimits((hd) => {
  const parts = [];
  if (hd.has('x-ratelimit-remaining-requests')) {
    parts.push(`${hd.get('x-ratelimit-remaining-requests')}/${hd.get('x-ratelimit-limit-requests')} requests left (resets in ${hd.get('x-ratelimit-reset-requests')})`);
  }
  if (hd.has('x-ratelimit-remaining-tokens')) {
    parts.push(`${hd.get('x-ratelimit-remaining-tokens')}/${hd.get('x-ratelimit-limit-tokens')} tokens left`);
  }
  limits = parts.join(', ');
  showUsage();
});

/** This key's usage over the last week, from `/v1/usage` (only when a key is in use). */
async function refreshUsage() {
  if (!getKey()) return;
  try {
    const page = await json('/v1/usage?bucket_width=1d&limit=7');
    let req = 0;
    let inTok = 0;
    let outTok = 0;
    for (const b of page.data || []) {
      for (const r of b.results || []) {
        req += r.num_model_requests || 0;
        inTok += r.input_tokens || 0;
        outTok += r.output_tokens || 0;
      }
    }
    totals = `This key, 7 days: ${req} requests, ${inTok} tokens in, ${outTok} out`;
    showUsage();
  } catch {
    // A static key has no ledger of its own: the rate-limit line is all there is.
  }
}

/** Loads the model lists; a 401 asks for a key. */
async function start() {
  try {
    const list = await json('/v1/models');
    const models = list.data || [];
    const chat = models.filter((m) => (m.lumen_kind || 'chat') === 'chat').map((m) => m.id);
    const embed = models.filter((m) => m.lumen_kind === 'embedding').map((m) => m.id);
    fill($('model'), chat);
    fill($('embed-model'), embed);
    notice(chat.length ? '' : 'No chat model is installed on this server (lumen pull smollm2).');
    if (getKey()) $('keybox').hidden = false;
    refreshUsage();
  } catch (err) {
    onError(err);
  }
}

setupTabs();
setupKey();
installTooltip($('transcript'));
setupExplain();
setupChat({
  onPick: pick,
  onStart: () => notice(''),
  onError,
  onDone: () => {
    refreshUsage();
  },
});
setupEmbed(onError);
$('api-key').value = getKey();
start();
