// The page's only way to the server: the public API, exactly as any client calls it, with
// the key a person typed. Errors become ApiError with the server's own message, and the
// x-ratelimit-* headers of every answer are handed to whoever listens (the usage line).

import { getKey } from './key.js';

/** A refusal or failure from the API, in the OpenAI error shape. */
export class ApiError extends Error {
  constructor(status, message, { code = null, type = null, param = null, retryAfterMs = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.type = type;
    this.param = param;
    this.retryAfterMs = retryAfterMs;
  }

  /** What to tell a person. */
  describe() {
    if (this.status === 401) return `This server needs an API key (401): ${this.message}`;
    if (this.status === 429) {
      const wait = this.retryAfterMs === null ? '' : ` Retry in ${(this.retryAfterMs / 1000).toFixed(1)} s.`;
      return `Rate limited (429): ${this.message}${wait}`;
    }
    if (this.status === 0) return `Cannot reach the server: ${this.message}`;
    return `Error ${this.status}: ${this.message}`;
  }
}

const limitListeners = [];
/** Calls `fn(headers)` after every API answer that carries rate-limit headers. */
export function onLimits(fn) {
  limitListeners.push(fn);
}

function headers(json) {
  const h = {};
  if (json) h['Content-Type'] = 'application/json';
  const key = getKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function retryAfterMs(resp) {
  const ms = Number(resp.headers.get('retry-after-ms'));
  if (Number.isFinite(ms) && ms > 0) return ms;
  const s = Number(resp.headers.get('retry-after'));
  return Number.isFinite(s) && s >= 0 && resp.headers.has('retry-after') ? s * 1000 : null;
}

async function failure(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  const e = body && body.error ? body.error : {};
  return new ApiError(resp.status, e.message || resp.statusText || 'request failed', {
    code: e.code ?? null,
    type: e.type ?? null,
    param: e.param ?? null,
    retryAfterMs: retryAfterMs(resp),
  });
}

/** Sends one request; resolves to the Response when it is a 2xx, throws ApiError otherwise. */
export async function send(path, { method = 'GET', body, signal } = {}) {
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    throw new ApiError(0, String(err && err.message ? err.message : err));
  }
  if (resp.headers.has('x-ratelimit-limit-requests') || resp.headers.has('x-ratelimit-limit-tokens')) {
    for (const fn of limitListeners) fn(resp.headers);
  }
  if (!resp.ok) throw await failure(resp);
  return resp;
}

/** A JSON request's answer. */
export async function json(path, opts) {
  const resp = await send(path, opts);
  return resp.json();
}

/**
 * A streaming request: yields each server-sent event's parsed JSON until `[DONE]`.
 * An `error` object sent mid-stream is thrown as ApiError.
 */
export async function* stream(path, body, signal) {
  const resp = await send(path, { method: 'POST', body: { ...body, stream: true }, signal });
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const frame = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = frame
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart())
        .join('\n');
      if (!data) continue;
      if (data === '[DONE]') return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message || 'stream error', chunk.error);
      yield chunk;
    }
  }
}
