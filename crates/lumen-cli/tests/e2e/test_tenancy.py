"""Issue 15 end to end: store keys, the admin API, admission limits and the usage ledger,
driven with the official `openai` client against the real server (started by
`e2e_tenancy.rs` with `--api-key`, `--admin-key` and its own database)."""

import asyncio
import concurrent.futures
import os
import time

import httpx
import openai
import pytest

from lumen_e2e import BASE, EMBED_MODEL, KEY, MODEL, metric, metrics, raw

ADMIN = os.environ["LUMEN_TEST_ADMIN_KEY"]
DATABASE = os.environ["LUMEN_TEST_DATABASE"]
SECRETS = []  # every secret handed out; none may be found in the database files
MESSAGES = [{"role": "user", "content": "Say hi"}]
# USD per million (input, output) tokens; e2e_tenancy.rs starts the server with these as
# --price flags.
PRICES = {MODEL: (2.0, 10.0), EMBED_MODEL: (0.5, 0.0)}


def admin(method, path, json=None, key=ADMIN):
    return raw(method, path, json=json, key=key)


def new_key(**limits):
    r = admin("POST", "/admin/keys", json={"name": "e2e", **limits})
    assert r.status_code == 200, r.text
    k = r.json()
    assert k["key"].startswith("sk-lumen-") and len(k["key"]) >= len("sk-lumen-") + 32
    SECRETS.append(k["key"])
    return k


def sdk(secret, retries=0):
    return openai.OpenAI(base_url=BASE + "/v1", api_key=secret, max_retries=retries, timeout=120)


def async_sdk(secret):
    return openai.AsyncOpenAI(base_url=BASE + "/v1", api_key=secret, max_retries=0, timeout=300)


def events(key_id):
    out, after = [], 0
    while True:
        r = admin("GET", f"/admin/usage/events?api_key_id={key_id}&after={after}&limit=1000")
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["last_id"]


def wait_events(key_id, n, timeout=10):
    deadline = time.time() + timeout
    while True:
        ev = events(key_id)
        if len(ev) >= n or time.time() > deadline:
            return ev
        time.sleep(0.05)


def key_state(key_id):
    r = admin("GET", f"/admin/keys/{key_id}")
    assert r.status_code == 200, r.text
    return r.json()


async def gather_chats(secret, n, **kw):
    """`n` concurrent chat calls; each result is the completion or the APIStatusError."""
    c = async_sdk(secret)

    async def one():
        try:
            return await c.chat.completions.create(model=MODEL, messages=MESSAGES, **kw)
        except openai.APIStatusError as e:
            return e

    try:
        return await asyncio.gather(*[one() for _ in range(n)])
    finally:
        await c.close()


def test_roles_admin_api_shapes_and_403():
    t = admin("POST", "/admin/tenants", json={"name": "acme"})
    assert t.status_code == 200, t.text
    assert t.json()["name"] == "acme" and t.json()["id"].startswith("tnt_")
    assert admin("POST", "/admin/tenants", json={"name": "acme"}).status_code == 409
    assert any(x["name"] == "acme" for x in admin("GET", "/admin/tenants").json()["data"])

    k = new_key(tenant="acme", rpm=5, models=None, budget_tokens=10_000, budget_period="day")
    for field in ["id", "name", "prefix", "role", "tenant", "models", "rpm", "tpm", "max_parallel",
                  "budget_tokens", "budget_period", "max_priority", "expires_at", "revoked"]:
        assert field in k, field
    assert k["tenant"] == t.json()["id"] and k["role"] == "user" and k["key"].startswith(k["prefix"])
    listed = admin("GET", "/admin/keys").json()["data"]
    assert any(x["id"] == k["id"] for x in listed)
    assert all("key" not in x for x in listed), "secrets are never listed"
    got = admin("GET", f"/admin/keys/{k['id']}").json()
    assert "key" not in got and got["rpm"] == 5
    p = admin("PATCH", f"/admin/keys/{k['id']}", json={"rpm": None, "tpm": 9000})
    assert p.status_code == 200 and p.json()["rpm"] is None and p.json()["tpm"] == 9000
    # Unknown fields and bad values are 400s naming the parameter.
    bad = admin("POST", "/admin/keys", json={"name": "x", "rpn": 5})
    assert bad.status_code == 400, bad.text
    bad = admin("POST", "/admin/keys", json={"name": "x", "rpm": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm", bad.text
    assert admin("GET", "/admin/keys/key_nope").status_code == 404

    # A user key, a static --api-key and no key on /admin/*: 403, 403, 401.
    for key, status in [(k["key"], 403), (KEY, 403), (None, 401)]:
        for path in ["/admin/keys", "/admin/models", "/admin/usage"]:
            r = admin("GET", path, key=key)
            assert r.status_code == status, (path, key, r.text)
    with pytest.raises(openai.PermissionDeniedError):
        sdk(k["key"]).get("/../admin/keys", cast_to=object)

    # An admin store key may administer; rotation changes the secret, not the key.
    a = new_key(role="admin")
    assert admin("GET", "/admin/keys", key=a["key"]).status_code == 200
    r = admin("POST", f"/admin/keys/{k['id']}/rotate")
    assert r.status_code == 200 and r.json()["id"] == k["id"]
    SECRETS.append(r.json()["key"])
    assert raw("GET", "/v1/models", key=k["key"]).status_code == 401, "the old secret is dead"
    assert raw("GET", "/v1/models", key=r.json()["key"]).status_code == 200


def test_model_allow_list_and_v1_models():
    k = new_key(models=[MODEL])
    c = sdk(k["key"])
    assert [m.id for m in c.models.list().data] == [MODEL]
    c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.NotFoundError) as e:
        c.embeddings.create(model=EMBED_MODEL, input="x")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve(EMBED_MODEL)
    r = raw("POST", "/tokenize", json={"model": EMBED_MODEL, "prompt": "x"}, key=k["key"])
    assert r.status_code == 404, r.text
    r = raw("POST", "/tokenize", json={"model": MODEL, "prompt": "x"}, key=k["key"])
    assert r.status_code == 200, r.text
    # An unrestricted key sees both.
    ids = {m.id for m in sdk(new_key()["key"]).models.list().data}
    assert {MODEL, EMBED_MODEL} <= ids


def test_rpm_10_with_100_concurrent_exactly_10_then_sdk_retry():
    k = new_key(rpm=10)
    before = metric(metrics(), "lumen:admission_refused_total", reason="rate_limited")
    results = asyncio.run(gather_chats(k["key"], 100, max_tokens=2))
    after = metric(metrics(), "lumen:admission_refused_total", reason="rate_limited")
    assert after - before == 90
    ok = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(ok) == 10, [getattr(r, "status_code", None) for r in results]
    assert len(refused) == 90
    for e in refused:
        assert isinstance(e, openai.RateLimitError), e
        assert e.body["code"] == "rate_limit_exceeded" and e.body["type"] == "requests", e.body
        h = e.response.headers
        assert int(h["retry-after"]) >= 1 and int(h["retry-after-ms"]) > 0
        assert h["x-ratelimit-limit-requests"] == "10"
        assert h["x-ratelimit-remaining-requests"] == "0"
        assert h["x-ratelimit-reset-requests"].endswith("s")
    # The SDK's own retry honours retry-after-ms and succeeds after the reset (~6 s).
    t0 = time.time()
    raw_resp = sdk(k["key"], retries=3).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=2, stream=True)
    assert raw_resp.headers["x-ratelimit-limit-requests"] == "10", "streams carry the headers"
    for _ in raw_resp.parse():
        pass
    assert 1.0 < time.time() - t0 < 30


def test_tenant_limits_hold_across_its_keys():
    t = admin("POST", "/admin/tenants", json={"name": "shared", "rpm": 3})
    assert t.status_code == 200 and t.json()["rpm"] == 3, t.text
    k1, k2 = new_key(tenant="shared"), new_key(tenant="shared")

    async def burst():
        return await asyncio.gather(gather_chats(k1["key"], 5, max_tokens=2),
                                    gather_chats(k2["key"], 5, max_tokens=2))

    r1, r2 = asyncio.run(burst())
    results = r1 + r2
    ok = [r for r in results if not isinstance(r, Exception)]
    assert len(ok) == 3, results
    for e in results:
        if isinstance(e, Exception):
            assert isinstance(e, openai.RateLimitError) and "tenant" in e.body["message"], e
    p = admin("PATCH", f"/admin/tenants/{t.json()['id']}", json={"rpm": None, "max_parallel": 4})
    assert p.status_code == 200 and p.json()["rpm"] is None and p.json()["max_parallel"] == 4, p.text
    sdk(k2["key"]).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)


def test_tpm_reserves_the_worst_case_and_refunds_what_was_not_used():
    k = new_key(tpm=1000)
    long = [{"role": "user", "content": "Tell me a long story about the sea and its ships."}]

    async def burst():
        c = async_sdk(k["key"])
        opened = []

        async def one():
            try:
                s = await c.chat.completions.create(model=MODEL, messages=long, max_tokens=400,
                                                    stream=True, extra_body={"ignore_eos": True})
            except openai.APIStatusError as e:
                return e
            async for chunk in s:  # hold it open until its first token
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            opened.append(s)
            return s

        results = await asyncio.gather(*[one() for _ in range(20)])
        # Every refusal is in; the two admitted streams end short (closed after one token).
        for s in opened:
            await s.close()
        await c.close()
        return results

    results = asyncio.run(burst())
    admitted = [r for r in results if not isinstance(r, Exception)]
    assert len(admitted) == 2, results
    for e in results:
        if isinstance(e, Exception):
            assert isinstance(e, openai.RateLimitError) and e.body["type"] == "tokens", e
    # The refund of ~800 unused tokens admits the next request at once (without it, the
    # bucket would need ~25 s to refill).
    deadline = time.time() + 3
    while key_state(k["id"])["in_flight"] != 0:
        assert time.time() < deadline, "slots not freed"
        time.sleep(0.02)
    r = sdk(k["key"]).chat.completions.create(model=MODEL, messages=long, max_tokens=400, stop=[" "])
    assert r.usage.completion_tokens < 400
    # A request bigger than the whole per-minute capacity is refused at once, never retried.
    t0 = time.time()
    with pytest.raises(openai.RateLimitError) as e:
        sdk(k["key"], retries=3).chat.completions.create(model=MODEL, messages=long, max_tokens=2000)
    assert time.time() - t0 < 2
    assert e.value.body["type"] == "tokens" and "too large" in e.value.body["message"].lower()
    assert "retry-after" not in e.value.response.headers


def test_max_parallel_500_aborted_streams_free_everything_and_are_recorded_cancelled():
    k = new_key(max_parallel=2)
    c = sdk(k["key"])
    aborted = []

    def worker(n):
        for _ in range(n):
            while True:
                try:
                    s = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=200,
                                                  stream=True, extra_body={"ignore_eos": True})
                    break
                except openai.RateLimitError as e:
                    assert e.body["type"] == "requests"
                    time.sleep(0.005)
            for chunk in s:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            s.close()
            aborted.append(1)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, [125] * 4))
    assert len(aborted) == 500
    deadline = time.time() + 5
    while True:
        state = key_state(k["id"])
        models = {m["id"]: m for m in admin("GET", "/admin/models").json()["data"]}
        busy = models[MODEL].get("lumen_requests_in_flight", 0)
        if state["in_flight"] == 0 and busy == 0:
            break
        assert time.time() < deadline, (state, models[MODEL])
        time.sleep(0.05)
    assert models[MODEL]["lumen_kv_usage"] == 0, models[MODEL]
    ev = wait_events(k["id"], 500)
    assert len(ev) == 500
    assert all(e["status"] == "cancelled" for e in ev), {e["status"] for e in ev}
    assert all(e["prompt_tokens"] > 0 and 1 <= e["completion_tokens"] < 200 for e in ev)


def test_budget_never_overshoots_under_a_burst():
    budget = 1500
    k = new_key(budget_tokens=budget, budget_period="day")
    results = asyncio.run(gather_chats(k["key"], 40, max_tokens=100))
    ok = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert ok and refused
    for e in refused:
        assert isinstance(e, openai.RateLimitError) and e.body["code"] == "insufficient_quota", e
        assert e.body["type"] == "insufficient_quota"
        assert "retry-after" not in e.response.headers
    used = sum(r.usage.total_tokens for r in ok)
    assert used <= budget
    ev = wait_events(k["id"], len(ok))
    assert sum(e["prompt_tokens"] + e["completion_tokens"] for e in ev) == used


def test_revoked_and_expired_keys_are_refused_within_a_second():
    k = new_key()
    c = sdk(k["key"])
    c.models.list()
    assert admin("DELETE", f"/admin/keys/{k['id']}").json()["revoked"] is True
    t0 = time.time()
    while True:
        try:
            c.models.list()
        except openai.AuthenticationError:
            break
        assert time.time() - t0 < 1.0, "revocation took more than a second"
        time.sleep(0.02)
    expires = int(time.time()) + 3
    e = new_key(expires_at=expires)
    sdk(e["key"]).models.list()
    time.sleep(max(0.0, expires - time.time()) + 1.1)
    with pytest.raises(openai.AuthenticationError):
        sdk(e["key"]).models.list()


def test_tenants_do_not_share_the_prefix_cache():
    for name in ["iso-a", "iso-b"]:
        assert admin("POST", "/admin/tenants", json={"name": name}).status_code == 200
    a1, a2, b = new_key(tenant="iso-a"), new_key(tenant="iso-a"), new_key(tenant="iso-b")
    text = f"{time.time()} " + "The lighthouse keeper counted the ships that passed each night. " * 8
    msgs = [{"role": "user", "content": text}]

    def cached(key):
        u = sdk(key["key"]).chat.completions.create(model=MODEL, messages=msgs, max_tokens=1).usage
        return u.prompt_tokens, u.prompt_tokens_details.cached_tokens

    prompt, first = cached(a1)
    assert prompt > 64 and first == 0
    assert cached(a2)[1] >= 32, "keys of one tenant share cached blocks"
    assert cached(b)[1] == 0, "another tenant's cache is invisible"


def test_usage_report_equals_the_usage_the_client_received():
    k = new_key()
    c = sdk(k["key"])
    prompt = completion = 0
    n = 0

    def add(u):
        nonlocal prompt, completion, n
        prompt += u.prompt_tokens
        completion += getattr(u, "completion_tokens", 0) or 0
        n += 1

    add(c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5).usage)
    last = None
    for chunk in c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, stream=True,
                                           stream_options={"include_usage": True}):
        last = chunk
    add(last.usage)
    add(c.completions.create(model=MODEL, prompt="The sea is", max_tokens=4).usage)
    for chunk in c.completions.create(model=MODEL, prompt=["One", "Two"], max_tokens=3, stream=True,
                                      stream_options={"include_usage": True}):
        last = chunk
    add(last.usage)
    add(c.embeddings.create(model=EMBED_MODEL, input=["alpha beta", "gamma"]).usage)

    deadline = time.time() + 10
    while True:
        page = c.get("/usage?bucket_width=1d&limit=1", cast_to=object)
        res = page["data"][-1]["results"]
        if res and res[0]["num_model_requests"] >= n or time.time() > deadline:
            break
        time.sleep(0.05)
    assert page["object"] == "page" and page["data"][-1]["object"] == "bucket"
    r = res[0]
    assert (r["num_model_requests"], r["input_tokens"], r["output_tokens"]) == (n, prompt, completion)
    by_model = admin("GET", f"/admin/usage?bucket_width=1m&limit=5&group_by=api_key_id,model").json()
    mine = [x for b in by_model["data"] for x in b["results"] if x["api_key_id"] == k["id"]]
    assert sum(x["input_tokens"] for x in mine) == prompt
    assert {x["model"] for x in mine} == {MODEL, EMBED_MODEL}
    endpoints = {e["endpoint"] for e in events(k["id"])}
    assert endpoints == {"chat.completions", "completions", "embeddings"}


def test_cost_is_tokens_times_price_and_compute_time_adds_up_to_engine_time():
    k = new_key()
    before = metric(metrics(), "lumen:engine_busy_seconds_total", model_name=MODEL)
    results = asyncio.run(gather_chats(k["key"], 8, max_tokens=24))
    assert not [r for r in results if isinstance(r, Exception)], results
    after = metric(metrics(), "lumen:engine_busy_seconds_total", model_name=MODEL)
    sdk(k["key"]).embeddings.create(model=EMBED_MODEL, input=["alpha beta gamma", "delta"])
    ev = wait_events(k["id"], 9)
    assert len(ev) == 9, ev
    assert all(e["compute_ms"] > 0 for e in ev), ev
    chat = [e for e in ev if e["endpoint"] == "chat.completions"]
    assert len(chat) == 8
    for e in chat:
        assert e["compute_ms"] <= e["latency_ms"] + 1, e
    # Each forward pass is split among the requests in it, so the eight requests' times add
    # up to the engine's busy time over the burst (each event rounds down to whole µs); had
    # every request been charged whole steps, the sum would be several times larger.
    total = sum(e["compute_ms"] for e in chat)
    busy_ms = (after - before) * 1000
    assert busy_ms > 0
    assert abs(total - busy_ms) <= 0.01 * busy_ms + 0.01 * len(chat), (total, busy_ms)
    # They shared steps: the busy time is well below the sum of their latencies.
    assert busy_ms < sum(e["latency_ms"] for e in chat)

    # Costs: each model's tokens times its price, in both reports; compute time summed.
    page = admin("GET", "/admin/usage?bucket_width=1d&limit=1&group_by=api_key_id,model").json()
    rows = {r["model"]: r for b in page["data"] for r in b["results"] if r["api_key_id"] == k["id"]}
    assert set(rows) == {MODEL, EMBED_MODEL}
    want_total = 0.0
    for model, r in rows.items():
        p_in, p_out = PRICES[model]
        want = (r["input_tokens"] * p_in + r["output_tokens"] * p_out) / 1e6
        assert r["cost"] == pytest.approx(want, rel=1e-12, abs=1e-15), (model, r)
        mine = [e for e in ev if e["model"] == model]
        assert r["compute_ms"] == pytest.approx(sum(e["compute_ms"] for e in mine), abs=1e-6)
        assert r["input_tokens"] == sum(e["prompt_tokens"] for e in mine)
        want_total += want
    assert rows[MODEL]["output_tokens"] == sum(r.usage.completion_tokens for r in results)
    own = sdk(k["key"]).get("/usage?bucket_width=1d&limit=1", cast_to=object)
    mine = own["data"][-1]["results"][0]
    assert mine["cost"] == pytest.approx(want_total, rel=1e-12)
    assert mine["compute_ms"] == pytest.approx(total + rows[EMBED_MODEL]["compute_ms"], abs=1e-6)


def test_usage_events_page_with_a_cursor():
    k = new_key()
    c = sdk(k["key"])
    ids = {c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1).id for _ in range(5)}
    assert len(wait_events(k["id"], 5)) == 5
    seen, after, pages = [], 0, 0
    while True:
        r = admin("GET", f"/admin/usage/events?api_key_id={k['id']}&after={after}&limit=2")
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        assert len(page["data"]) <= 2
        seen += page["data"]
        if not page["has_more"]:
            break
        assert page["last_id"] == page["data"][-1]["id"]
        after = page["last_id"]
    # Pages 2, 2, 1: every event exactly once, oldest first, each the response's own id.
    assert pages == 3
    assert [e["id"] for e in seen] == sorted({e["id"] for e in seen}) and len(seen) == 5
    assert {e["request_id"] for e in seen} == ids
    assert all(e["status"] == "ok" and e["key_id"] == k["id"] for e in seen)
    for bad in ["limit=0", "limit=1001", "after=-1", "after=x"]:
        r = admin("GET", f"/admin/usage/events?{bad}")
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["param"] in ("limit", "after"), r.text


def test_zz_database_holds_no_plaintext_secret():
    assert SECRETS
    for suffix in ["", "-wal", "-shm"]:
        path = DATABASE + suffix
        if not os.path.exists(path):
            continue
        data = open(path, "rb").read()
        for s in SECRETS:
            assert s.encode() not in data, f"{path} holds a secret"
            assert s[len("sk-lumen-"):].encode() not in data
