// The API key a person typed, kept in this tab's session storage only (gone when the tab
// closes, sent nowhere but this server's API).

const SLOT = 'lumen.apiKey';
// Where the key lives when storage is refused (a quota of zero): until the page reloads.
let memory = '';

/** The key to send, or '' for none. */
export function getKey() {
  try {
    return sessionStorage.getItem(SLOT) || memory;
  } catch {
    return memory;
  }
}

/** Remembers `key` for this tab ('' forgets it). */
export function setKey(key) {
  memory = key;
  try {
    if (key) sessionStorage.setItem(SLOT, key);
    else sessionStorage.removeItem(SLOT);
  } catch {
    // Kept in `memory` only.
  }
}
