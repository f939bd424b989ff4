"""/v1/embeddings through the official client: encodings, input shapes, the reference vectors,
usage, every 400, and the chat and embedding models kept apart."""

import asyncio
import base64
import json
import math
import struct
from pathlib import Path

import pytest

from lumen_e2e import EMBED_MODEL, MODEL, async_client, client, metric, metrics, raw

EMB = "/v1/embeddings"
FIXTURE = Path(__file__).resolve().parents[3] / "lumen-models/tests/fixtures/minilm_reference.json"
REFERENCE = json.loads(FIXTURE.read_text())
HELLO_IDS = [101, 7592, 2088, 102]  # [CLS] hello world [SEP]

c = client()


def f32(values):
    """The f32 bits of each value (JSON floats read back to the server's f32 exactly)."""
    return struct.pack(f"<{len(values)}f", *values)


def from_base64(s):
    data = base64.b64decode(s)
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def embed(**kw):
    return raw("POST", EMB, json={"model": EMBED_MODEL, **kw})


def check(r, status, param, code=None):
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["param"] == param, err
    assert err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def test_models_lists_both_kinds():
    ids = {m.id for m in c.models.list().data}
    assert {MODEL, EMBED_MODEL} <= ids
    kinds = {m["id"]: m["lumen_kind"] for m in raw("GET", "/v1/models").json()["data"]}
    assert (kinds[MODEL], kinds[EMBED_MODEL]) == ("chat", "embedding")


def test_float_and_base64_decode_to_the_same_vector():
    floats = c.embeddings.create(model=EMBED_MODEL, input="Hello world", encoding_format="float")
    vec = floats.data[0].embedding
    assert len(vec) == 384 and all(isinstance(x, float) for x in vec)
    r = embed(input="Hello world", encoding_format="base64")
    assert r.status_code == 200, r.text
    b64 = r.json()["data"][0]["embedding"]
    assert isinstance(b64, str)
    assert f32(from_base64(b64)) == f32(vec)
    # The client asks for base64 by default and decodes it itself.
    default = c.embeddings.create(model=EMBED_MODEL, input="Hello world")
    assert f32(default.data[0].embedding) == f32(vec)
    assert abs(sum(x * x for x in vec) - 1.0) < 1e-5, "all-MiniLM-L6-v2 vectors are normalized"


def test_list_keeps_order_and_matches_single_requests():
    texts = ["A man is playing a guitar.", "Hello world", "embeddings", "Someone is playing an instrument."]
    resp = c.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    assert resp.object == "list" and resp.model == EMBED_MODEL
    assert [d.index for d in resp.data] == list(range(len(texts)))
    assert all(d.object == "embedding" for d in resp.data)
    for text, d in zip(texts, resp.data):
        alone = c.embeddings.create(model=EMBED_MODEL, input=text, encoding_format="float").data[0].embedding
        assert f32(alone) == f32(d.embedding), text
    guitar, _, _, instrument = (d.embedding for d in resp.data)
    assert cosine(guitar, instrument) > cosine(guitar, resp.data[2].embedding)


def test_token_id_inputs():
    text = c.embeddings.create(model=EMBED_MODEL, input="Hello world", encoding_format="float")
    ids = c.embeddings.create(model=EMBED_MODEL, input=HELLO_IDS, encoding_format="float")
    assert f32(ids.data[0].embedding) == f32(text.data[0].embedding)
    both = c.embeddings.create(model=EMBED_MODEL, input=[HELLO_IDS, [101, 102]], encoding_format="float")
    assert len(both.data) == 2 and f32(both.data[0].embedding) == f32(text.data[0].embedding)
    assert both.usage.prompt_tokens == 6


def test_matches_the_sentence_transformers_reference():
    sentences = REFERENCE["sentences"]
    resp = embed(input=[s["text"] for s in sentences], truncate_prompt_tokens=REFERENCE["max_seq_length"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    for s, d in zip(sentences, body["data"]):
        assert cosine(d["embedding"], s["embedding"]) >= 0.9999, s["text"][:40]
    assert body["usage"]["prompt_tokens"] == sum(len(s["ids"]) for s in sentences)


def test_usage_counts_special_tokens():
    u = c.embeddings.create(model=EMBED_MODEL, input="Hello world", encoding_format="float").usage
    assert (u.prompt_tokens, u.total_tokens) == (4, 4)
    u = c.embeddings.create(model=EMBED_MODEL, input=["Hello world", "A"], encoding_format="float").usage
    assert (u.prompt_tokens, u.total_tokens) == (7, 7)


def test_truncation_only_when_asked():
    long = REFERENCE["sentences"][-1]["text"]
    err = check(embed(input=long), 400, "input")
    assert "256" in err["message"] and "truncate_prompt_tokens" in err["message"]
    r = embed(input=["Hello world", long], truncate_prompt_tokens=8)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 4 + 8
    # Token ids keep their first k.
    r = embed(input=HELLO_IDS, truncate_prompt_tokens=2)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 2
    # dimensions equal to the model's own size is a no-op.
    assert embed(input="a", dimensions=384).status_code == 200


@pytest.mark.parametrize("value", [
    "", [], [""], ["a", ""], ["a", 1], [1, "a"], ["a", None], [None], {"text": "a"}, 3, True, None,
    [[101, 102], "a"], [[101, "x"]], [-1], [1.5], [[]], [101, 30522, 102], ["a"] * 2049,
])
def test_bad_input_is_400_naming_input(value):
    check(embed(input=value), 400, "input", "invalid_value")


def test_missing_input_and_bad_options_are_400():
    check(raw("POST", EMB, json={"model": EMBED_MODEL}), 400, "input")
    check(embed(input="a", encoding_format="hex"), 400, "encoding_format")
    check(embed(input="a", encoding_format=3), 400, "encoding_format")
    check(embed(input="a", dimensions=128), 400, "dimensions")
    for k in [0, -1, 257, 10**6]:
        check(embed(input="a", truncate_prompt_tokens=k), 400, "truncate_prompt_tokens")
    check(raw("POST", EMB, json={"input": "a"}), 400, "model")
    check(raw("POST", EMB, json={"model": "no-such-model", "input": "a"}), 404, "model", "model_not_found")


def test_models_of_the_other_kind_are_refused():
    err = check(raw("POST", "/v1/chat/completions", json={"model": EMBED_MODEL, "messages": [{"role": "user", "content": "Hi"}]}), 400, "model", "model_not_supported")
    assert EMBED_MODEL in err["message"]
    check(raw("POST", "/v1/completions", json={"model": EMBED_MODEL, "prompt": "Hi"}), 400, "model", "model_not_supported")
    err = check(embed(model=MODEL, input="Hi"), 400, "model", "model_not_supported")
    assert MODEL in err["message"]


def test_concurrent_requests_are_batched_and_metered():
    texts = [s["text"] for s in REFERENCE["bench"]]
    alone = {t: f32(c.embeddings.create(model=EMBED_MODEL, input=t, encoding_format="float").data[0].embedding) for t in texts}
    before = metrics()

    async def run():
        ac = async_client()
        jobs = [ac.embeddings.create(model=EMBED_MODEL, input=texts[i % len(texts)], encoding_format="float") for i in range(100)]
        return await asyncio.gather(*jobs)

    results = asyncio.run(run())
    for i, r in enumerate(results):
        assert f32(r.data[0].embedding) == alone[texts[i % len(texts)]], i
    after = metrics()
    d = lambda name: metric(after, name, model_name=EMBED_MODEL) - metric(before, name, model_name=EMBED_MODEL)
    assert d("lumen:embedding_requests_total") == 100
    assert d("lumen:embedding_inputs_total") == 100
    passes = d("lumen:embedding_batches_total")
    print(f"100 concurrent HTTP requests ran in {passes:.0f} forward passes")
    assert 1 <= passes <= 50, passes
    assert metric(after, "lumen:embedding_requests_in_flight", model_name=EMBED_MODEL) == 0
