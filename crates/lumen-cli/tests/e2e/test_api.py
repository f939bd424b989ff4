"""The OpenAI API as the official client sees it."""

import openai
import pytest

from lumen_e2e import MODEL, client, metrics, raw, tokenize

c = client()
HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


def test_chat_completion_shape_and_usage():
    r = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    ch = r.choices[0]
    assert ch.index == 0 and ch.message.role == "assistant"
    assert ch.message.content
    assert ch.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_max_completion_tokens_and_length():
    r = c.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_chat_stream_matches_non_stream_and_reports_usage():
    args = dict(model=MODEL, messages=HELLO, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    full = c.chat.completions.create(**args)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 10
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_stream_without_usage_has_no_usage_chunk():
    chunks = list(c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3, stream=True))
    assert all(ch.choices for ch in chunks)


def test_chat_logprobs():
    r = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for e in content:
        assert e.logprob <= 0 and isinstance(e.token, str) and isinstance(e.bytes, list)
        assert len(e.top_logprobs) == 3
        lps = [t.logprob for t in e.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert e.top_logprobs[0].token == e.token
        assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-3
    joined = b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace")
    assert joined == r.choices[0].message.content


def test_completions_echo_with_logprobs():
    prompt = "The capital of France is"
    n_prompt = len(tokenize(prompt))
    r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=4, echo=True, logprobs=2, temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    ch = r.choices[0]
    assert ch.text.startswith(prompt) and len(ch.text) > len(prompt)
    lp = ch.logprobs
    assert len(lp.tokens) == n_prompt + 4 == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == 4


def test_completions_logprobs_without_echo():
    r = c.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=3, logprobs=1, temperature=0, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 3 and all(len(t) == 1 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == r.choices[0].text


def test_completions_echo_streaming():
    prompt = "Roses are red,"
    chunks = list(c.completions.create(model=MODEL, prompt=prompt, max_tokens=4, echo=True, stream=True, temperature=0))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_prompt_shapes():
    ids = tokenize("Hello world")
    by_ids = c.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    by_text = c.completions.create(model=MODEL, prompt="Hello world", max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    many = c.completions.create(model=MODEL, prompt=["Hello world", "One, two,"], max_tokens=3, temperature=0, n=2)
    assert sorted(ch.index for ch in many.choices) == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text == by_text.choices[0].text[: len(many.choices[0].text)]
    lists = c.completions.create(model=MODEL, prompt=[ids, tokenize("One, two,")], max_tokens=3, temperature=0)
    assert [ch.index for ch in lists.choices] == [0, 1]
    assert lists.usage.prompt_tokens == len(ids) + len(tokenize("One, two,"))


def test_n_three_choices():
    r = c.chat.completions.create(model=MODEL, messages=HELLO, n=3, max_tokens=6, temperature=1.0, seed=11, extra_body={"ignore_eos": True})
    assert sorted(ch.index for ch in r.choices) == [0, 1, 2]
    assert all(ch.finish_reason == "length" for ch in r.choices)
    assert r.usage.completion_tokens == 18
    streamed = list(c.chat.completions.create(model=MODEL, messages=HELLO, n=3, max_tokens=6, temperature=1.0, seed=11, stream=True, extra_body={"ignore_eos": True}))
    texts = ["", "", ""]
    for ch in streamed:
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [ch.message.content for ch in sorted(r.choices, key=lambda x: x.index)]


def test_seeded_sampling_is_reproducible():
    args = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=16, temperature=1.0, top_p=0.95, seed=1234)
    a = c.chat.completions.create(**args)
    b = c.chat.completions.create(**args)
    assert a.choices[0].message.content == b.choices[0].message.content
    s = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **args) if ch.choices)
    assert s == a.choices[0].message.content
    seeds = {c.chat.completions.create(**{**args, "seed": k}).choices[0].message.content for k in range(4)}
    assert len(seeds) > 1, "different seeds should not all give the same text"


def test_stop_sequences():
    args = dict(model=MODEL, prompt="Here is a list of fruits: apple, banana,", max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    full = c.completions.create(**args).choices[0].text
    assert len(full) >= 8, full
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.find(stop)]
    r = c.completions.create(stop=[stop, "@@never@@"], **args)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == expected
    streamed = list(c.completions.create(stop=stop, stream=True, **args))
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_vllm_extensions_are_accepted():
    r = c.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=6, temperature=0.7, seed=3, presence_penalty=0.5, frequency_penalty=0.5, logit_bias={"0": -100},
        user="e2e", extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2, "priority": 1, "prompt_logprobs": 1},
    )
    assert r.usage.completion_tokens >= 2
    raw_r = raw("POST", "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 2, "prompt_logprobs": 1})
    assert raw_r.status_code == 200, raw_r.text
    pl = raw_r.json()["prompt_logprobs"]
    assert pl[0] is None and len(pl) == raw_r.json()["usage"]["prompt_tokens"]


def test_models_list_and_retrieve():
    ids = [m.id for m in c.models.list().data]
    assert MODEL in ids
    assert c.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("no-such-model")
    assert e.value.status_code == 404 and e.value.code == "model_not_found"


def test_tokenize_detokenize_round_trip():
    text = "Hello, world! Lumen serves models."
    r = raw("POST", "/tokenize", json={"model": MODEL, "prompt": text, "add_special_tokens": False, "return_token_strs": True}).json()
    assert r["count"] == len(r["tokens"]) == len(r["token_strs"]) and r["max_model_len"] > 0
    d = raw("POST", "/detokenize", json={"model": MODEL, "tokens": r["tokens"]})
    assert d.status_code == 200 and d.json()["prompt"] == text
    chat = raw("POST", "/tokenize", json={"model": MODEL, "messages": HELLO}).json()
    full = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    assert chat["count"] == full.usage.prompt_tokens


def test_operations_endpoints():
    assert raw("GET", "/health", key=None).status_code == 200
    assert raw("GET", "/ready", key=None).status_code == 200
    m = metrics()
    for name in ["lumen:num_requests_running", "lumen:num_requests_waiting", "lumen:kv_cache_usage_perc", "lumen:cache_config_info",
                 "lumen:prompt_tokens_total", "lumen:generation_tokens_total", "lumen:prefix_cache_queries_total", "lumen:prefix_cache_hits_total",
                 "lumen:num_preemptions_total", "lumen:request_success_total", "lumen:time_to_first_token_seconds_count",
                 "lumen:inter_token_latency_seconds_count", "lumen:e2e_request_latency_seconds_count"]:
        assert any(k.split("{")[0] == name for k in m), name
    assert 0.0 <= sum(v for k, v in m.items() if k.startswith("lumen:kv_cache_usage_perc")) <= 1.0
    info = [k for k in m if k.startswith("lumen:cache_config_info")][0]
    assert 'block_size="16"' in info and "num_gpu_blocks=" in info


def test_prefix_cache_reports_cached_tokens():
    long_system = "You are a helpful assistant. " * 20
    msgs = [{"role": "system", "content": long_system}, {"role": "user", "content": "Hi"}]
    c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1)
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1)
    assert r.usage.prompt_tokens_details.cached_tokens >= 16


def test_streamed_logprobs_match_non_streamed():
    args = dict(model=MODEL, messages=HELLO, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    full = c.chat.completions.create(**args).choices[0].logprobs.content
    streamed = [e for ch in c.chat.completions.create(stream=True, **args) if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in full]
    assert all(abs(a.logprob - b.logprob) < 1e-4 for a, b in zip(streamed, full))
    cargs = dict(model=MODEL, prompt="The sky is", max_tokens=3, temperature=0, logprobs=2, echo=True, extra_body={"ignore_eos": True})
    whole = c.completions.create(**cargs).choices[0]
    chunks = [ch.choices[0] for ch in c.completions.create(stream=True, **cargs) if ch.choices]
    assert "".join(ch.text for ch in chunks) == whole.text
    tokens = [t for ch in chunks if ch.logprobs for t in ch.logprobs.tokens]
    assert tokens == whole.logprobs.tokens
    offsets = [o for ch in chunks if ch.logprobs for o in ch.logprobs.text_offset]
    assert offsets == whole.logprobs.text_offset
