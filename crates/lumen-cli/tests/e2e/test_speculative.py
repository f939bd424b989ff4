"""Prompt-lookup speculation changes when tokens arrive, never which.

LUMEN_BASE_URL speculates (the default); LUMEN_OFF_URL runs with --num-speculative-tokens 0."""

import json
import os

import httpx

from lumen_e2e import BASE, KEY, MODEL

OFF = os.environ["LUMEN_OFF_URL"]
TEXT = (
    "The lighthouse at Port Ellen was built in 1832 to guide ships through the narrow channel "
    "between the islands. For more than a century it was kept by the same family, who lived in "
    "the small stone cottage at its foot and climbed the spiral stairs every evening to light the lamp."
)
CODE = "\n".join(f"def step_{i}(x):\n    return x * {i} + {i * i}\n" for i in range(8))

REQUESTS = [
    ("completions", {"prompt": f"Article:\n{TEXT}\n\nThe article quoted word for word:\n", "max_tokens": 96,
                     "temperature": 0, "logprobs": 3}),
    ("chat/completions", {"messages": [{"role": "user", "content": f"{CODE}\nCopy the code above exactly, renaming step_3 to stage_3."}],
                          "max_tokens": 96, "temperature": 0, "logprobs": True, "top_logprobs": 2}),
    ("chat/completions", {"messages": [{"role": "user", "content": f"{TEXT}\nRepeat the text above."}],
                          "max_tokens": 64, "temperature": 0.8, "seed": 5, "frequency_penalty": 0.2}),
    ("completions", {"prompt": f"{TEXT}\n{TEXT}\n", "max_tokens": 48, "temperature": 0, "stop": ["Ellen"]}),
]


def post(base, endpoint, body):
    r = httpx.post(f"{base}/v1/{endpoint}", json={"model": MODEL, **body},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert r.status_code == 200, r.text
    j = r.json()
    for volatile in ("id", "created", "system_fingerprint"):
        j.pop(volatile, None)
    j["usage"].pop("prompt_tokens_details", None)  # cache hits differ between the servers' histories
    return j


def counters(base):
    text = httpx.get(f"{base}/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        if line.startswith("lumen:spec_decode_"):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = values.get(name.split("{")[0], 0.0) + float(value)
    return values


def stream_text(base, endpoint, body):
    out = []
    with httpx.stream("POST", f"{base}/v1/{endpoint}", json={"model": MODEL, "stream": True, **body},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for c in json.loads(line[6:])["choices"]:
                    out.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
    return "".join(out)


def test_same_answers_with_and_without_speculation():
    before = counters(BASE)
    for endpoint, body in REQUESTS:
        on, off = post(BASE, endpoint, body), post(OFF, endpoint, body)
        assert on == off, f"{endpoint} {body}"
    after = counters(BASE)
    accepted = after["lumen:spec_decode_accepted_tokens_total"] - before["lumen:spec_decode_accepted_tokens_total"]
    drafted = after["lumen:spec_decode_draft_tokens_total"] - before["lumen:spec_decode_draft_tokens_total"]
    print(f"{accepted:.0f} of {drafted:.0f} draft tokens accepted")
    assert accepted >= 40, (accepted, drafted)
    assert counters(OFF)["lumen:spec_decode_draft_tokens_total"] == 0


def test_streamed_answers_match_too():
    for endpoint, body in REQUESTS[:2]:
        body = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}
        whole = post(OFF, endpoint, body)["choices"][0]
        text = whole.get("text") or whole["message"]["content"]
        assert stream_text(BASE, endpoint, body) == text
