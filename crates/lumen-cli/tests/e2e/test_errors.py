"""Every error in OpenAI's shape, with its status and `param`."""

import openai
import pytest

from lumen_e2e import BASE, KEY, MODEL, raw

HELLO = [{"role": "user", "content": "Hi"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def check(r, status, param=None, code=None):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def chat(**kw):
    return raw("POST", CHAT, json={"model": MODEL, "messages": HELLO, "max_tokens": 2, **kw})


def test_invalid_json_is_400():
    err = check(raw("POST", CHAT, content=b'{"model": "x", ', headers={"Content-Type": "application/json"}), 400)
    assert err["type"] == "invalid_request_error"


def test_wrong_content_type_is_400():
    check(raw("POST", CHAT, content=b'{"model":"smollm2","messages":[]}', headers={"Content-Type": "text/plain"}), 400)
    check(raw("POST", CHAT, content=b"model=x", headers={"Content-Type": "application/x-www-form-urlencoded"}), 400)


@pytest.mark.parametrize("value", [-0.1, 2.01, 100])
def test_temperature_out_of_range(value):
    check(chat(temperature=value), 400, "temperature")


@pytest.mark.parametrize("value", [0, -0.5, 1.01])
def test_top_p_out_of_range(value):
    check(chat(top_p=value), 400, "top_p")


@pytest.mark.parametrize("value", [0, 17, -1])
def test_n_out_of_range(value):
    check(chat(n=value), 400, "n")


def test_max_tokens_below_one():
    check(chat(max_tokens=0), 400, "max_tokens")
    check(raw("POST", CHAT, json={"model": MODEL, "messages": HELLO, "max_completion_tokens": 0}), 400, "max_tokens")
    check(raw("POST", COMPLETIONS, json={"model": MODEL, "prompt": "x", "max_tokens": -3}), 400, "max_tokens")


def test_prompt_plus_max_tokens_over_context():
    check(chat(max_tokens=10_000_000), 400, "max_tokens")
    check(raw("POST", COMPLETIONS, json={"model": MODEL, "prompt": "hello", "max_tokens": 1_000_000}), 400, "max_tokens")


def test_prompt_over_context():
    check(raw("POST", COMPLETIONS, json={"model": MODEL, "prompt": "hello " * 20000, "max_tokens": 1}), 400, "prompt")


def test_too_many_top_logprobs():
    check(chat(logprobs=True, top_logprobs=21), 400, "top_logprobs")
    check(raw("POST", COMPLETIONS, json={"model": MODEL, "prompt": "x", "max_tokens": 1, "logprobs": 21}), 400, "logprobs")


def test_too_many_stop_sequences():
    check(chat(stop=[f"s{i}" for i in range(9)]), 400, "stop")
    assert chat(stop=[f"s{i}" for i in range(8)]).status_code == 200


def test_empty_messages():
    check(raw("POST", CHAT, json={"model": MODEL, "messages": []}), 400, "messages")


def test_missing_messages():
    check(raw("POST", CHAT, json={"model": MODEL}), 400, "messages")


def test_unknown_role():
    msgs = [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "abracadabra"}]
    check(raw("POST", CHAT, json={"model": MODEL, "messages": msgs}), 400, "messages[1].role")


def test_wrong_type_names_the_field():
    check(chat(temperature="hot"), 400, "temperature")
    check(raw("POST", CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": 5}]}), 400, "messages[0].content")


def test_other_ranges():
    check(chat(presence_penalty=3), 400, "presence_penalty")
    check(chat(frequency_penalty=-2.5), 400, "frequency_penalty")
    check(chat(logit_bias={"abc": 1}), 400, "logit_bias")
    check(chat(logit_bias={"1": 101}), 400, "logit_bias")
    check(chat(top_k=-2), 400, "top_k")
    check(chat(min_p=1.5), 400, "min_p")
    check(raw("POST", COMPLETIONS, json={"model": MODEL, "prompt": [10_000_000], "max_tokens": 1}), 400, "prompt")
    check(raw("POST", COMPLETIONS, json={"model": MODEL, "prompt": [], "max_tokens": 1}), 400, "prompt")


def test_unknown_model_is_404():
    check(raw("POST", CHAT, json={"model": "no-such-model", "messages": HELLO}), 404, "model", "model_not_found")
    check(raw("POST", COMPLETIONS, json={"model": "no-such-model", "prompt": "x"}), 404, "model", "model_not_found")
    check(raw("GET", "/v1/models/no-such-model"), 404, "model", "model_not_found")


def test_missing_or_wrong_key_is_401():
    check(raw("POST", CHAT, json={"model": MODEL, "messages": HELLO}, key=None), 401, None, "invalid_api_key")
    check(raw("POST", CHAT, json={"model": MODEL, "messages": HELLO}, key=KEY + "x"), 401, None, "invalid_api_key")
    check(raw("GET", "/v1/models", key="wrong"), 401)
    check(raw("POST", "/tokenize", json={"prompt": "x"}, key=None), 401)
    bad = openai.OpenAI(base_url=BASE + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    # Operations endpoints stay open.
    assert raw("GET", "/health", key=None).status_code == 200
    assert raw("GET", "/metrics", key=None).status_code == 200


def test_body_over_limit_is_413():
    big = b'{"model":"smollm2","prompt":"' + b"a" * (5 << 20) + b'"}'
    check(raw("POST", COMPLETIONS, content=big, headers={"Content-Type": "application/json"}), 413, None, "request_too_large")


def test_unknown_fields_are_ignored():
    r = chat(some_future_field={"x": [1, 2]}, metadata={"a": "b"}, store=False, parallel_tool_calls=None)
    assert r.status_code == 200, r.text


def test_unknown_route_is_openai_shaped_404():
    check(raw("GET", "/v1/nothing-here"), 404)


def test_sdk_raises_bad_request_with_param():
    c = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=HELLO, temperature=3)
    assert e.value.status_code == 400 and e.value.param == "temperature"


def test_bearer_scheme_is_case_insensitive():
    for scheme in ["BEARER", "bearer", "BeArEr"]:
        r = raw("POST", CHAT, json={"model": MODEL, "messages": HELLO, "max_tokens": 1}, key=None,
                headers={"Authorization": f"{scheme} {KEY}"})
        assert r.status_code == 200, (scheme, r.text)
    check(raw("GET", "/v1/models", key=None, headers={"Authorization": f"Basic {KEY}"}), 401)


def test_wrong_method_is_openai_shaped_405():
    check(raw("GET", CHAT), 405, None, "method_not_allowed")
    check(raw("DELETE", "/v1/models"), 405, None, "method_not_allowed")


@pytest.mark.parametrize("field,value", [
    ("functions", [{"name": "get_weather", "parameters": {"type": "object"}}]),
    ("function_call", {"name": "get_weather"}),
])
def test_deprecated_function_fields_are_400_not_ignored(field, value):
    check(chat(**{field: value}), 400, field, "unsupported_parameter")


def test_tools_are_for_chat_only():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    check(raw("POST", COMPLETIONS, json={"model": MODEL, "prompt": "x", "max_tokens": 1, "tools": tools}), 400, "tools")


def test_neutral_values_of_constraint_fields_are_accepted():
    r = chat(tools=[], tool_choice="none", response_format={"type": "text"})
    assert r.status_code == 200, r.text
