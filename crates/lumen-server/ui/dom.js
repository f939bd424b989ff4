// Tiny DOM helpers. Everything the page shows is built with createElement and textContent,
// never innerHTML: model output and error messages are untrusted text.

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

/** An element: h('li', {class: 'x', dataset: {a: 1}, onclick}, child, 'text', ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** A token's text as a person can read it (newlines and spaces made visible). */
export function visible(text) {
  if (text === '') return '∅';
  return text.replace(/\n/g, '↵').replace(/^ /, '␣').replace(/\t/g, '⇥');
}

/** A probability as a short percentage (two significant digits below 0.1 %). */
export function pct(p) {
  const v = p * 100;
  if (v >= 0.1) return `${v.toFixed(1)}%`;
  return `${Number(v.toPrecision(2))}%`;
}
