"""Shared helpers for the end-to-end tests: clients for the server under test."""

import os
import re

import httpx
import openai

BASE = os.environ["LUMEN_BASE_URL"]
KEY = os.environ["LUMEN_API_KEY"]
MODEL = os.environ.get("LUMEN_MODEL", "smollm2")
EMBED_MODEL = os.environ.get("LUMEN_EMBED_MODEL", "all-minilm-l6-v2")


def client(**kw):
    """The official client, without retries (a 429 must reach the test)."""
    return openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120, **kw)


def async_client(**kw):
    return openai.AsyncOpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=300, **kw)


def raw(method, path, json=None, key=KEY, headers=None, content=None):
    """A plain HTTP call (for shapes the SDK would hide)."""
    h = {} if key is None else {"Authorization": f"Bearer {key}"}
    h.update(headers or {})
    return httpx.request(method, BASE + path, json=json, content=content, headers=h, timeout=120)


def tokenize(text, add_special_tokens=True):
    r = raw("POST", "/tokenize", json={"model": MODEL, "prompt": text, "add_special_tokens": add_special_tokens})
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def metrics():
    """Scrapes /metrics into {name + labels: value} (labels kept verbatim)."""
    r = httpx.get(BASE + "/metrics", timeout=30)
    assert r.status_code == 200, r.text
    out = {}
    for line in r.text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = _LINE.match(line)
        assert m, f"bad exposition line: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def metric(values, name, **labels):
    """Sum of the series of `name` whose labels include `labels`."""
    total = 0.0
    for key, v in values.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{val}"' in rest for k, val in labels.items()):
            total += v
    return total
