"""Structured output and tool calls end to end, with the official client.

Every check here would fail if the constraint were not applied: the same prompts without it
give invalid JSON, choices outside the list, calls that do not parse.
"""

import concurrent.futures as cf
import json
import re
import threading
import time

import jsonschema
import pytest

from lumen_e2e import MODEL, client, raw


def s(maxlen=16):
    return {"type": "string", "maxLength": maxlen}


# 50 schemas: nested objects, arrays, enums, bounded numbers, optional fields, $ref. Every
# string and array is bounded so that a sample at temperature 1 ends within max_tokens.
def schemas():
    out = []
    for i in range(10):
        out.append({"type": "object", "properties": {"name": s(), "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]})
    for i in range(5):
        out.append({
            "type": "object",
            "properties": {
                "city": s(),
                "coords": {"type": "object", "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}, "lon": {"type": "number", "minimum": -180, "maximum": 180}}, "required": ["lat", "lon"]},
            },
            "required": ["city", "coords"],
        })
    for i in range(5):
        out.append({"type": "object", "properties": {"tags": {"type": "array", "items": s(10), "minItems": 1, "maxItems": 4}}, "required": ["tags"]})
    for i in range(5):
        out.append({"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"enum": ["S", "M", "L", "XL"]}}, "required": ["color", "size"]})
    for i in range(5):
        out.append({"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}, "passed": {"type": "boolean"}}, "required": ["score", "passed"]})
    for i in range(5):
        out.append({
            "type": "object",
            "properties": {"title": s(), "subtitle": s(), "year": {"type": "integer", "minimum": 1900, "maximum": 2100}},
            "required": ["title"],
        })
    for i in range(5):
        out.append({
            "$defs": {"person": {"type": "object", "properties": {"name": s(12), "email": s(20)}, "required": ["name"]}},
            "type": "object",
            "properties": {"author": {"$ref": "#/$defs/person"}, "reviewer": {"$ref": "#/$defs/person"}},
            "required": ["author", "reviewer"],
        })
    for i in range(5):
        out.append({
            "type": "object",
            "properties": {"items": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {"sku": s(8), "qty": {"type": "integer", "minimum": 1, "maximum": 99}}, "required": ["sku", "qty"]}}},
            "required": ["items"],
        })
    for i in range(5):
        out.append({"type": "array", "items": {"type": "integer", "minimum": -50, "maximum": 50}, "minItems": 2, "maxItems": 5})
    assert len(out) == 50
    return out


PROMPTS = [
    "Describe a person.", "Where is Paris?", "Tag this article about cooking.", "Pick a shirt.",
    "Grade this essay.", "Name a film.", "Who wrote the report?", "List an order.", "Give some numbers.",
]


def ask(schema, i, constrained, seed):
    body = dict(
        model=MODEL,
        messages=[{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} Answer in JSON following this schema: {json.dumps(schema)}"}],
        temperature=1.0,
        seed=seed,
        max_tokens=250 if constrained else 100,
    )
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}}
    r = client().chat.completions.create(**body)
    return r.choices[0]


def valid(schema, text):
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def test_fifty_schemas_always_validate_and_fail_without_the_constraint():
    cases = [(i, sc, seed) for i, sc in enumerate(schemas()) for seed in (1, 2)]
    with cf.ThreadPoolExecutor(8) as pool:
        constrained = list(pool.map(lambda c: ask(c[1], c[0], True, c[2]), cases))
        free = list(pool.map(lambda c: ask(c[1], c[0], False, c[2]), cases))
    bad = [(i, ch.message.content, ch.finish_reason) for (i, sc, _), ch in zip(cases, constrained) if not valid(sc, ch.message.content)]
    assert not bad, bad[:5]
    assert all(ch.finish_reason == "stop" for ch in constrained)
    free_valid = sum(valid(sc, ch.message.content) for (_, sc, _), ch in zip(cases, free))
    # The small model rarely writes schema-valid JSON on its own: the constraint is what works.
    assert free_valid <= len(cases) // 4, free_valid


def test_json_object_and_logprobs_after_masking():
    r = client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a cat."}],
        response_format={"type": "json_object"}, logprobs=True, top_logprobs=5, max_tokens=200, seed=3, temperature=0.8,
    )
    ch = r.choices[0]
    assert isinstance(json.loads(ch.message.content), dict), ch.message.content
    for tok in ch.logprobs.content:
        assert tok.logprob > -1e30 and tok.logprob <= 0
        assert all(t.logprob > -1e30 for t in tok.top_logprobs)


def test_guided_choice_regex_and_grammar():
    choices = ["positive", "negative", "neutral (mixed)"]
    for seed in range(10):
        r = client().completions.create(model=MODEL, prompt="The review was", max_tokens=20, temperature=1.0, seed=seed, extra_body={"guided_choice": choices})
        assert r.choices[0].text in choices, r.choices[0].text
    rx = r"[A-Z][a-z]{2,8} [0-9]{2}-[0-9]{4}"
    for seed in range(5):
        r = client().completions.create(model=MODEL, prompt="Name and code:", max_tokens=30, temperature=1.0, seed=seed, extra_body={"guided_regex": rx})
        assert re.fullmatch(rx, r.choices[0].text), r.choices[0].text
    grammar = 'start: expr\nexpr: term (OP term){0,4}\nterm: NUMBER | "(" NUMBER OP NUMBER ")"\nOP: "+" | "-" | "*"\nNUMBER: /[1-9][0-9]{0,2}/\n'
    for seed in range(5):
        r = client().completions.create(model=MODEL, prompt="Arithmetic: ", max_tokens=40, temperature=1.0, seed=seed, extra_body={"guided_grammar": grammar})
        text = r.choices[0].text
        assert re.fullmatch(r"[0-9+\-*()]+", text), text
        eval(compile(text, "<expr>", "eval"), {"__builtins__": {}})  # parses as an expression
    # The same through vLLM's newer field, and on chat.
    r = client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Yes or no?"}], max_tokens=5, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert r.choices[0].message.content in ("yes", "no")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": s(20), "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "Local time in a timezone", "parameters": {"type": "object", "properties": {"tz": s(20)}, "required": ["tz"]}},
}


def test_required_and_named_tool_calls_validate():
    params = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for choice, reason in (("required", "tool_calls"), ({"type": "function", "function": {"name": "get_time"}}, "stop")):
        for seed in range(4):
            r = client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris and the time in Tokyo?"}],
                tools=[WEATHER, TIME], tool_choice=choice, temperature=1.0, seed=seed, max_tokens=200,
            )
            ch = r.choices[0]
            assert ch.finish_reason == reason, ch
            assert ch.message.content is None
            assert ch.message.tool_calls, ch
            for call in ch.message.tool_calls:
                assert call.type == "function" and call.id.startswith("call_")
                if isinstance(choice, dict):
                    assert call.function.name == "get_time"
                jsonschema.validate(json.loads(call.function.arguments), params[call.function.name])


def test_streamed_tool_calls_equal_the_whole_answer():
    body = dict(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER, TIME],
        tool_choice="required", temperature=0.7, seed=11, max_tokens=200,
    )
    whole = client().chat.completions.create(**body).choices[0]
    calls, content, finish, names_first = {}, "", None, True
    for chunk in client().chat.completions.create(stream=True, **body):
        for c in chunk.choices:
            content += c.delta.content or ""
            for part in c.delta.tool_calls or []:
                entry = calls.setdefault(part.index, {"id": None, "name": None, "args": ""})
                if part.id:
                    entry["id"] = part.id
                if part.function and part.function.name:
                    entry["name"] = part.function.name
                if part.function and part.function.arguments:
                    names_first &= entry["name"] is not None
                    entry["args"] += part.function.arguments
            finish = c.finish_reason or finish
    assert names_first, "arguments arrived before the function's name"
    assert "<tool_call" not in content and content == ""
    assert finish == whole.finish_reason == "tool_calls"
    # Ids differ between the two requests (they are per response); names and arguments match.
    assert all(c["id"] and c["id"].startswith("call_") for c in calls.values())
    assert [(c["name"], c["args"]) for _, c in sorted(calls.items())] == [
        (t.function.name, t.function.arguments) for t in whole.message.tool_calls
    ]


def test_two_turn_tool_loop_through_the_sdk():
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client().chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required", seed=5, max_tokens=200)
    call = first.choices[0].message.tool_calls[0]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "clear"})})
    second = client().chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none", seed=5, max_tokens=60)
    answer = second.choices[0]
    assert answer.message.tool_calls is None
    assert answer.message.content and answer.finish_reason in ("stop", "length")
    # The history reached the model: the tool's result changes the answer.
    messages[-1]["content"] = json.dumps({"temperature": -30, "sky": "blizzard"})
    other = client().chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none", seed=5, max_tokens=60)
    assert other.choices[0].message.content != answer.message.content


def healthy():
    r = client().completions.create(model=MODEL, prompt="Hello", max_tokens=3)
    assert r.choices[0].text is not None


def deep_schema(depth):
    text = '{"type":"object","properties":{"a":' * depth + '{"type":"string"}' + "}}" * depth
    return text


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wibble"}}}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "if": {}, "then": {}}}}}, "response_format"),
        ({"guided_regex": "(unclosed"}, "guided_regex"),
        ({"guided_grammar": "start: " + "x" * (64 * 1024)}, "guided_grammar"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_json": deep_schema(10_000)}, "guided_json"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
    ],
)
def test_bad_constraints_are_400_at_once(extra, param):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **extra}
    t = time.time()
    r = raw("POST", "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text
    assert time.time() - t < 5
    healthy()


def test_a_grammar_too_complex_to_go_on_is_a_400_never_a_silent_stop():
    body = {"model": MODEL, "prompt": "x", "max_tokens": 20, "guided_regex": "(x{1000}){1000}"}
    r = raw("POST", "/v1/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "guided_regex", r.text
    r = raw("POST", "/v1/completions", json={**body, "stream": True})
    assert r.status_code == 200
    assert '"error"' in r.text and "guided_regex" in r.text, r.text
    healthy()


def hostile_schema(i):
    # Big alternations of patterned objects near the size limit: real compile work.
    return {"anyOf": [
        {"type": "object", "properties": {f"k{i}_{j}_{k}": {"type": "string", "pattern": f"^[a-z]{{{k % 7 + 1},{k % 13 + 20}}}x{j}(ab|cd){{{k % 5}}}$"} for j in range(3)}, "required": [f"k{i}_0_{k}"]}
        for k in range(140)
    ]}


def test_sixteen_concurrent_hostile_schemas_keep_the_server_responsive():
    latencies = []
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            t = time.time()
            healthy()
            latencies.append(time.time() - t)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        def send(i):
            body = {"model": MODEL, "prompt": "x", "max_tokens": 4, "guided_json": hostile_schema(i)}
            t = time.time()
            r = raw("POST", "/v1/completions", json=body)
            return r.status_code, time.time() - t
        with cf.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(send, range(16)))
    finally:
        stop.set()
        prober.join()
    assert all(code in (200, 400) for code, _ in results), results
    assert max(t for _, t in results) < 60, results
    assert latencies and max(latencies) < 30, latencies


def test_constrained_request_leaves_batchmates_unchanged():
    prompts = [f"Write a sentence about the number {i}." for i in range(6)]

    def free(p):
        return client().completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0.9, seed=7).choices[0].text

    alone = [free(p) for p in prompts]
    with cf.ThreadPoolExecutor(8) as pool:
        constrained = pool.submit(lambda: client().completions.create(
            model=MODEL, prompt="JSON:", max_tokens=60, temperature=1.0, seed=1,
            extra_body={"guided_json": {"type": "object", "properties": {"a": s()}, "required": ["a"]}}))
        together = list(pool.map(free, prompts))
        assert valid({"type": "object", "properties": {"a": s()}, "required": ["a"]}, constrained.result().choices[0].text)
    assert together == alone
    # And the constrained one is reproducible under its seed.
    again = client().completions.create(model=MODEL, prompt="JSON:", max_tokens=60, temperature=1.0, seed=1, extra_body={"guided_json": {"type": "object", "properties": {"a": s()}, "required": ["a"]}})
    assert again.choices[0].text == constrained.result().choices[0].text
