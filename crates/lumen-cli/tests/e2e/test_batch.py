"""Issue 16 end to end: the Files and Batches APIs with the official `openai` client against
the real server (started by `e2e_batch.rs` with its own database and files folder).

Every batch answer is checked against what the live endpoint returns for the same body, so a
batch path that drifted from the live handlers would fail here."""

import io
import json
import os
import time

import openai
import pytest

from lumen_e2e import BASE, EMBED_MODEL, KEY, MODEL, client, raw

ADMIN = os.environ["LUMEN_TEST_ADMIN_KEY"]
CHAT = "/v1/chat/completions"


def admin(method, path, json=None):
    return raw(method, path, json=json, key=ADMIN)


def sdk(secret=KEY):
    return openai.OpenAI(base_url=BASE + "/v1", api_key=secret, max_retries=0, timeout=120)


def line(custom_id, body, url=CHAT):
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def chat_body(i, max_tokens=4, **kw):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Name a colour ({i})."}],
        "max_tokens": max_tokens,
    }
    # Half greedy, half seeded sampling: both must match the live endpoint.
    if i % 2:
        body.update(temperature=0.8, seed=i)
    else:
        body.update(temperature=0)
    body.update(kw)
    return body


def upload(c, lines, name="input.jsonl"):
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    f = c.files.create(file=(name, io.BytesIO(data)), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.bytes == len(data)
    assert f.id.startswith("file-") and f.filename == name
    return f


def wait(c, batch_id, until=("completed", "failed", "expired", "cancelled"), timeout=240):
    deadline = time.time() + timeout
    seen = []
    while True:
        b = c.batches.retrieve(batch_id)
        if not seen or seen[-1] != b.status:
            seen.append(b.status)
        if b.status in until:
            return b, seen
        assert time.time() < deadline, f"batch {batch_id} still {b.status} after {timeout}s"
        time.sleep(0.2)


def lines_of(c, file_id):
    if file_id is None:
        return []
    return [json.loads(x) for x in c.files.content(file_id).text.splitlines() if x.strip()]


def comparable(body):
    """A completion without what differs between two calls (id, time, cache hits)."""
    body = dict(body)
    for k in ("id", "created", "system_fingerprint"):
        body.pop(k, None)
    usage = dict(body.get("usage") or {})
    usage.pop("prompt_tokens_details", None)
    body["usage"] = usage
    return body


def live(body, path=CHAT):
    r = raw("POST", path, json=body)
    return r.status_code, r.json()


def events_of(batch_id):
    out, after = [], 0
    while True:
        r = admin("GET", f"/admin/usage/events?after={after}&limit=1000")
        assert r.status_code == 200, r.text
        page = r.json()
        out += [e for e in page["data"] if e.get("batch_id") == batch_id]
        if not page["has_more"]:
            return out
        after = page["last_id"]


def test_upload_create_poll_download():
    c = client()
    f = upload(c, [line(f"q{i}", chat_body(i)) for i in range(8)])
    assert c.files.retrieve(f.id).id == f.id
    assert f.id in [x.id for x in c.files.list().data]
    assert c.files.content(f.id).text.count("\n") == 8
    b = c.batches.create(
        input_file_id=f.id, endpoint=CHAT, completion_window="24h", metadata={"job": "small"}
    )
    assert b.object == "batch" and b.status == "validating" and b.metadata == {"job": "small"}
    assert b.expires_at - b.created_at == 24 * 3600
    b, seen = wait(c, b.id)
    assert b.status == "completed", b
    assert seen[-1] == "completed"
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (8, 8, 0)
    assert b.in_progress_at and b.finalizing_at and b.completed_at and b.error_file_id is None
    out = lines_of(c, b.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"q{i}" for i in range(8))
    for x in out:
        assert x["id"].startswith("batch_req_") and x["error"] is None
        assert x["response"]["status_code"] == 200
        assert x["response"]["request_id"] == x["response"]["body"]["id"]
    assert b.id in [x.id for x in c.batches.list(limit=100).data]
    out_file = c.files.retrieve(b.output_file_id)
    assert out_file.purpose == "batch_output"


def test_a_thousand_mixed_lines_match_the_live_endpoint():
    c = client()
    invalid = {
        # Each invalid kind, refused by the live endpoint with the same error.
        0: {"model": MODEL, "messages": []},
        1: {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
        2: {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 7},
        3: {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
        4: {"model": MODEL},
    }
    lines = []
    bad = set()
    for i in range(1000):
        if i % 20 == 7:
            body = invalid[(i // 20) % len(invalid)]
            bad.add(f"r{i}")
        else:
            body = chat_body(i)
        lines.append(line(f"r{i}", body))
    f = upload(c, lines)
    started = time.time()
    b = c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    b, _ = wait(c, b.id, timeout=400)
    took = time.time() - started
    print(f"1000-line batch: {took:.1f}s")
    assert b.status == "completed", b
    assert b.request_counts.total == 1000
    assert b.request_counts.failed == len(bad) == 50
    assert b.request_counts.completed == 950
    out, err = lines_of(c, b.output_file_id), lines_of(c, b.error_file_id)
    ids = [x["custom_id"] for x in out + err]
    assert len(ids) == len(set(ids)) == 1000, "every custom_id exactly once"
    assert {x["custom_id"] for x in err} == bad
    by_id = {x["custom_id"]: x for x in out + err}
    # Successes equal the live endpoint's answer for the same (seeded or greedy) body.
    for i in [1, 2, 3, 10, 99, 100, 501, 998]:
        status, body = live(chat_body(i))
        got = by_id[f"r{i}"]["response"]
        assert got["status_code"] == status == 200
        assert comparable(got["body"]) == comparable(body), i
    # Refusals carry the live endpoint's status and error, word for word.
    for i in [7, 27, 47, 67, 87]:
        status, body = live(lines[i]["body"])
        got = by_id[f"r{i}"]["response"]
        assert (got["status_code"], got["body"]) == (status, body), i
        assert status in (400, 404)
    # One usage event per line, naming its batch and custom_id.
    ev = events_of(b.id)
    assert sorted(e["custom_id"] for e in ev) == sorted(ids)


def test_validation_refuses_the_batch_with_line_numbers():
    c = client()
    text = "\n".join(
        [
            json.dumps(line("a", chat_body(1))),
            "{not json",
            json.dumps(line("b", chat_body(2))),
            json.dumps(line("a", chat_body(3))),
            json.dumps(line("c", chat_body(4), url="/v1/embeddings")),
        ]
    )
    f = c.files.create(file=("bad.jsonl", io.BytesIO(text.encode())), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    b, _ = wait(c, b.id)
    assert b.status == "failed" and b.failed_at
    got = [(e.code, e.line) for e in b.errors.data]
    assert got == [("invalid_json_line", 2), ("duplicate_custom_id", 4), ("mismatched_url", 5)]
    # Refused up front: bad endpoint, window, unknown file.
    for kw in [
        dict(endpoint="/v1/images", completion_window="24h", input_file_id=f.id),
        dict(endpoint=CHAT, completion_window="1h", input_file_id=f.id),
    ]:
        with pytest.raises(openai.BadRequestError):
            c.batches.create(**kw)
    with pytest.raises(openai.NotFoundError):
        c.batches.create(endpoint=CHAT, completion_window="24h", input_file_id="file-nope")


def test_embeddings_and_completions_batches():
    c = client()
    emb = [
        line(f"e{i}", {"model": EMBED_MODEL, "input": f"sentence {i}"}, url="/v1/embeddings")
        for i in range(6)
    ]
    emb.append(line("e-bad", {"model": EMBED_MODEL, "input": []}, url="/v1/embeddings"))
    f = upload(c, emb)
    b, _ = wait(c, c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h").id)
    assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (6, 1)
    out = {x["custom_id"]: x for x in lines_of(c, b.output_file_id)}
    status, body = live({"model": EMBED_MODEL, "input": "sentence 3"}, "/v1/embeddings")
    assert status == 200 and out["e3"]["response"]["body"]["data"] == body["data"]
    cmp = [
        line(f"p{i}", {"model": MODEL, "prompt": f"Once upon a time {i}", "max_tokens": 5, "temperature": 0},
             url="/v1/completions")
        for i in range(4)
    ]
    f = upload(c, cmp)
    b, _ = wait(c, c.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h").id)
    assert b.status == "completed" and b.request_counts.completed == 4
    out = {x["custom_id"]: x for x in lines_of(c, b.output_file_id)}
    status, body = live(cmp[2]["body"], "/v1/completions")
    assert comparable(out["p2"]["response"]["body"]) == comparable(body)


def test_cancel_mid_run_keeps_the_partial_output():
    c = client()
    f = upload(c, [line(f"k{i}", chat_body(i, max_tokens=48, ignore_eos=True)) for i in range(300)])
    b = c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    deadline = time.time() + 120
    while c.batches.retrieve(b.id).request_counts.completed < 3:
        assert time.time() < deadline
        time.sleep(0.1)
    cancelled = c.batches.cancel(b.id)
    assert cancelled.status in ("cancelling", "cancelled") and cancelled.cancelling_at
    b, _ = wait(c, b.id, timeout=120)
    assert b.status == "cancelled" and b.cancelled_at
    done = b.request_counts.completed + b.request_counts.failed
    assert 3 <= done < 300, b.request_counts
    out = lines_of(c, b.output_file_id)
    assert len(out) == b.request_counts.completed
    assert all(x["response"]["status_code"] == 200 for x in out)
    # Cancelling again changes nothing.
    assert c.batches.cancel(b.id).status == "cancelled"


def test_batches_count_against_the_budget_but_not_rpm_or_tpm():
    t = admin("POST", "/admin/tenants", json={"name": "batch-limits"})
    assert t.status_code == 200, t.text
    k = admin("POST", "/admin/keys", json={"name": "b", "tenant": "batch-limits", "rpm": 1, "tpm": 100})
    assert k.status_code == 200, k.text
    c = sdk(k.json()["key"])
    f = upload(c, [line(f"l{i}", chat_body(i)) for i in range(12)])
    b, _ = wait(c, c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id)
    assert (b.status, b.request_counts.completed) == ("completed", 12), "rpm/tpm do not apply"
    ev = events_of(b.id)
    assert len(ev) == 12 and all(e["key_id"] == k.json()["id"] for e in ev)
    # The budget does: a key with room for a few lines gets insufficient_quota for the rest.
    k2 = admin("POST", "/admin/keys", json={"name": "b2", "tenant": "batch-limits",
                                            "budget_tokens": 200, "budget_period": "day"})
    c2 = sdk(k2.json()["key"])
    f = upload(c2, [line(f"m{i}", chat_body(i)) for i in range(12)])
    b, _ = wait(c2, c2.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id)
    assert b.status == "completed"
    assert 1 <= b.request_counts.completed < 12 and b.request_counts.failed >= 1, b.request_counts
    err = lines_of(c2, b.error_file_id)
    assert all(x["response"]["body"]["error"]["code"] == "insufficient_quota" for x in err)
    used = sum(e["prompt_tokens"] + e["completion_tokens"] for e in events_of(b.id))
    assert used <= 200


def test_tenants_do_not_see_each_others_files_or_batches():
    keys = []
    for name in ("iso-batch-a", "iso-batch-b"):
        assert admin("POST", "/admin/tenants", json={"name": name}).status_code == 200
        r = admin("POST", "/admin/keys", json={"name": name, "tenant": name})
        keys.append(r.json()["key"])
    a, b = sdk(keys[0]), sdk(keys[1])
    f = upload(a, [line("x", chat_body(1))])
    batch = a.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    for call in [
        lambda: b.files.retrieve(f.id),
        lambda: b.files.content(f.id),
        lambda: b.files.delete(f.id),
        lambda: b.batches.retrieve(batch.id),
        lambda: b.batches.cancel(batch.id),
        lambda: b.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h"),
    ]:
        with pytest.raises(openai.NotFoundError):
            call()
    assert f.id not in [x.id for x in b.files.list().data]
    assert batch.id not in [x.id for x in b.batches.list().data]
    done, _ = wait(a, batch.id)
    assert done.status == "completed"
    with pytest.raises(openai.NotFoundError):
        b.files.content(done.output_file_id)
    # The static key (no tenant) sees neither.
    with pytest.raises(openai.NotFoundError):
        client().batches.retrieve(batch.id)


def test_files_api_shapes_and_refusals():
    c = client()
    f = upload(c, [line("d", chat_body(1))], name="delete-me.jsonl")
    d = c.files.delete(f.id)
    assert d.deleted and d.id == f.id
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        c.files.content(f.id)
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    r = raw("POST", "/v1/files", json={"purpose": "batch"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = raw("GET", "/v1/batches?limit=0")
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
