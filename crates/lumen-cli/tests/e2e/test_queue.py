"""A full queue answers 429 with Retry-After at once, and the server recovers right after.

The server runs with --max-queued-requests 4."""

import concurrent.futures
import time

import httpx

from lumen_e2e import BASE, KEY, MODEL, client, metric, metrics

BURST = 16


def post(i):
    started = time.monotonic()
    r = httpx.post(
        BASE + "/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": MODEL, "prompt": f"Request {i}: count slowly", "max_tokens": 48, "ignore_eos": True, "temperature": 0},
        timeout=300,
    )
    return r, time.monotonic() - started


def test_full_queue_answers_429_then_recovers():
    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        results = list(pool.map(post, range(BURST)))
    ok = [r for r, _ in results if r.status_code == 200]
    full = [(r, t) for r, t in results if r.status_code == 429]
    assert len(ok) + len(full) == BURST, [r.status_code for r, _ in results]
    assert 1 <= len(ok) and len(full) >= BURST - 8, f"{len(ok)} ok, {len(full)} refused"
    for r, t in full:
        assert r.headers.get("retry-after") == "1"
        err = r.json()["error"]
        assert err["code"] == "queue_full" and err["type"] == "rate_limit_error" and err["param"] is None
        assert t < 2.0, f"a 429 must come at once, took {t:.2f}s"
    for r in ok:
        assert r.json()["usage"]["completion_tokens"] == 48
    # The server serves normally right after.
    c = client()
    r = c.completions.create(model=MODEL, prompt="After the storm", max_tokens=4)
    assert r.choices[0].text is not None and r.usage.completion_tokens >= 1
    m = metrics()
    assert metric(m, "lumen:num_requests_running") == 0 and metric(m, "lumen:kv_cache_usage_perc") == 0
