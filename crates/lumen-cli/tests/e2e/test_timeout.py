"""--request-timeout cancels what runs past it, generations and embeddings alike.

The server runs with --request-timeout 1."""

import time

from lumen_e2e import EMBED_MODEL, MODEL, client, metric, metrics, raw

TIMEOUT = 1.0


def wait_idle(name, limit):
    """Seconds until the gauge `name` reads zero; fails after `limit`."""
    started = time.monotonic()
    while metric(metrics(), name) != 0:
        assert time.monotonic() - started < limit, f"{name} still {metric(metrics(), name)}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_long_generation_is_cut_at_the_timeout():
    started = time.monotonic()
    r = client().completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4000, temperature=0, extra_body={"ignore_eos": True}
    )
    took = time.monotonic() - started
    assert r.choices[0].finish_reason == "cancelled", r.choices[0].finish_reason
    assert 0 < r.usage.completion_tokens < 4000
    assert TIMEOUT <= took < TIMEOUT + 2, f"took {took:.2f}s"


def test_a_long_embedding_request_gets_504_and_frees_the_model():
    # 2,048 inputs of ~250 tokens: a minute of work on two cores.
    text = " ".join(f"word{i} and the river ran past the old mill" for i in range(30))
    started = time.monotonic()
    r = raw("POST", "/v1/embeddings", json={"model": EMBED_MODEL, "input": [text] * 2048, "truncate_prompt_tokens": 250})
    took = time.monotonic() - started
    assert r.status_code == 504, r.text
    err = r.json()["error"]
    assert err["code"] == "timeout" and err["type"] == "server_error", err
    assert "--request-timeout" in err["message"]
    assert TIMEOUT <= took < TIMEOUT + 2, f"took {took:.2f}s"
    # The rest of the request is skipped: the model is free again after at most the pass that
    # was running, not after the whole minute.
    freed = wait_idle("lumen:embedding_requests_in_flight", 15)
    assert metric(metrics(), "lumen:embedding_cancelled_total") >= 1
    started = time.monotonic()
    e = client().embeddings.create(model=EMBED_MODEL, input="still here")
    assert len(e.data[0].embedding) == 384
    print(f"504 after {took:.2f}s, model free {freed:.2f}s later, next request {time.monotonic() - started:.2f}s")
