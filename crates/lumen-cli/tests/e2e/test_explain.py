"""`POST /v1/explain` against the served model: exactness (the lens, the attribution and the
occlusion baseline are the numbers the generation endpoints serve), a planted fact,
faithfulness (a deletion curve over 30 prompts), sanity (attention rows, busy server) and
every limit answered 400 before any compute."""

import math
import random
import threading
import time

from lumen_e2e import EMBED_MODEL, MODEL, client, metric, metrics, raw

c = client()
N_LAYERS = 30


def explain(body, status=200):
    r = raw("POST", "/v1/explain", json={"model": MODEL, **body})
    assert r.status_code == status, r.text
    return r.json()


def ids(e, part):
    return [t["id"] for t in e["tokens"][part]]


def echo_logprobs(id_lists):
    """Each list's own token logprobs, as /v1/completions echoes them (first is None)."""
    r = raw("POST", "/v1/completions", json={"model": MODEL, "prompt": id_lists, "max_tokens": 1,
                                              "echo": True, "logprobs": 0, "temperature": 0})
    assert r.status_code == 200, r.text
    out = [None] * len(id_lists)
    for ch in r.json()["choices"]:
        out[ch["index"]] = ch["logprobs"]["token_logprobs"][:len(id_lists[ch["index"]])]
    return out


def test_lens_last_layer_equals_served_logprobs():
    prompt = "The capital of France is"
    served = c.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=5)
    lp = served.choices[0].logprobs
    e = explain({"prompt": prompt, "max_tokens": 6, "logit_lens": {"top_k": 5}})
    assert e["completion"] == served.choices[0].text
    n_prompt, n_completion = len(e["tokens"]["prompt"]), len(e["tokens"]["completion"])
    assert n_completion == len(lp.token_logprobs) == 6
    lens = e["logit_lens"]
    assert [l["position"] for l in lens] == list(range(n_prompt - 1, n_prompt - 1 + n_completion))
    for j, cell in enumerate(lens):
        assert [x["layer"] for x in cell["layers"]] == list(range(N_LAYERS + 1))
        last = cell["layers"][-1]
        assert abs(last["target_logprob"] - lp.token_logprobs[j]) < 1e-4
        top = sorted(lp.top_logprobs[j].values(), reverse=True)
        assert len(last["top"]) == 5
        for mine, theirs in zip(last["top"], top):
            assert abs(mine["logprob"] - theirs) < 1e-4
        assert all(x["entropy"] >= 0 for x in cell["layers"])
    assert e["usage"]["forward_passes"] == 1 and e["usage"]["generated_tokens"] == 6


def test_dla_terms_sum_to_the_final_logit():
    e = explain({"prompt": "The capital of France is", "completion": " Paris", "dla": {}})
    d = e["dla"]
    assert d["target"] == ids(e, "completion")[0] and d["position"] == len(e["tokens"]["prompt"]) - 1
    total = sum(t["value"] for t in d["terms"])
    assert abs(total - d["final_logit"]) < 1e-3, (total, d["final_logit"])
    # The linearised logit differs from the served one only by the head's activation rounding.
    assert abs(d["final_logit"] - d["served_logit"]) < 0.5
    parts = {(t["part"], t["head"] is None) for t in d["terms"]}
    assert parts == {("embed", True), ("attn", False), ("attn", True), ("mlp", True)}
    assert len(d["terms"]) == 1 + N_LAYERS * (9 + 2)
    # SmolLM2's heads are 64 wide, two whole quantization blocks: the per-head split is exact.
    rest = [t["value"] for t in d["terms"] if t["part"] == "attn" and t["head"] is None]
    assert max(abs(v) for v in rest) < 1e-3


def test_occlusion_baseline_equals_echo_logprobs_and_delete_equals_two_requests():
    prompt, completion = "My favourite fruit is the yellow banana, and I eat one", " every day."
    mask = explain({"prompt": prompt, "completion": completion, "occlusion": {"spans": "word"}})
    p, comp = ids(mask, "prompt"), ids(mask, "completion")
    [echo] = echo_logprobs([p + comp])
    base = mask["occlusion"]["baseline_logprob"]
    assert len(base) == len(comp)
    for j, lp in enumerate(base):
        assert abs(lp - echo[len(p) + j]) < 1e-4, (j, lp, echo[len(p) + j])
    spans = mask["occlusion"]["spans"]
    assert len(spans) == len(prompt.split()) and all(s["end"] > s["start"] for s in spans)
    assert "".join(s["text"] for s in spans) == prompt
    # Delete mode: each span's score is the difference of two ordinary requests' echo logprobs.
    ranges = [[s["start"], s["end"]] for s in spans[:6]]
    dele = explain({"prompt": prompt, "completion": completion,
                    "occlusion": {"spans": ranges, "mode": "delete", "contrast": " night"}})
    occ = dele["occlusion"]
    variants = echo_logprobs([p[:a] + p[b:] + comp for a, b in ranges])
    for s, (a, b) in enumerate(ranges):
        n = len(p) - (b - a)
        for j in range(len(comp)):
            want = echo[len(p) + j] - variants[s][n + j]
            assert abs(occ["delta"][j][s] - want) < 1e-4, (s, j, occ["delta"][j][s], want)
    assert len(occ["contrast_delta"]) == len(comp) and len(occ["contrast_delta"][0]) == len(ranges)
    # Masking keeps positions: not the same numbers as deleting.
    assert mask["occlusion"]["delta"][0][:6] != occ["delta"][0]


def test_occlusion_variants_start_from_the_baseline_rows():
    # A prompt of several KV blocks: each variant reuses the baseline's rows before its span
    # (whole blocks), so the explanation runs far fewer tokens than recomputing every
    # variant, and the scores are still those of two independent requests.
    prompt = ("The old lighthouse keeper climbed the spiral stairs every evening at dusk, "
              "lit the great lamp, wrote the weather in his logbook, and watched the ships "
              "pass safely along the rocky northern coast until the sun came up, and then he")
    completion = " slept."
    e = explain({"prompt": prompt, "completion": completion,
                 "occlusion": {"spans": "word", "mode": "delete"}})
    p, comp = ids(e, "prompt"), ids(e, "completion")
    assert len(p) >= 40
    spans = e["occlusion"]["spans"]
    whole = len(p) + len(comp) + sum(len(p) - (s["end"] - s["start"]) + len(comp) - 1 for s in spans)
    used = e["usage"]["forward_tokens"]
    print(f"occlusion over {len(spans)} spans: {used} forward tokens, {whole} without sharing")
    assert used < 0.75 * whole, (used, whole)
    [echo] = echo_logprobs([p + comp])
    late = [i for i, s in enumerate(spans) if s["start"] >= 32][:4]
    assert late
    picked = [(spans[i]["start"], spans[i]["end"]) for i in late]
    variants = echo_logprobs([p[:a] + p[b:] + comp for a, b in picked])
    for k, (a, b) in enumerate(picked):
        n = len(p) - (b - a)
        for j in range(len(comp)):
            want = echo[len(p) + j] - variants[k][n + j]
            got = e["occlusion"]["delta"][j][late[k]]
            assert abs(got - want) < 1e-4, (a, b, j, got, want)


def top_span(e, j):
    d = e["occlusion"]["delta"][j]
    return e["occlusion"]["spans"][max(range(len(d)), key=lambda i: d[i])]["text"]


def test_planted_fact():
    # The "K7=blue. Q2=red. M5=green. Q2=" is not usable with SmolLM2-135M: it answers
    # "blue", and even a teacher-forced "red" does not depend on " Q2=red." (occluding that
    # span raises its logprob by about 0.5: the model does not look the fact up). A planted
    # fact the model does answer, in its own words:
    e = explain({"messages": [{"role": "user", "content": "Anna lives in Oslo. Ben lives in Cairo. Where does Ben live?"}],
                 "max_tokens": 8, "occlusion": {"spans": "sentence"}})
    assert "Cairo" in e["completion"], e["completion"]
    prompt_tokens = e["tokens"]["prompt"]
    assert prompt_tokens[0]["protected"] and prompt_tokens[-1]["protected"]
    texts = [t["text"] for t in e["tokens"]["completion"]]
    j = next(i for i, t in enumerate(texts) if "Cairo" in t)
    assert top_span(e, j) == " Ben lives in Cairo."


PROMPTS = [
    "The cat sat on the warm mat and soon fell fast asleep in the",
    "Every morning my grandmother drinks a cup of hot green",
    "The children built a huge sandcastle on the sunny",
    "After the long rainy winter the farmers planted wheat in the",
    "She opened the old wooden door and stepped into the dark",
    "The chef chopped fresh onions and garlic for the spicy",
    "Our football team scored three goals and won the final",
    "He paid for the groceries with a crisp twenty dollar",
    "The pilot announced that the plane would land in ten",
    "My brother plays the piano every evening after",
    "The scientist looked through the microscope at the tiny",
    "We watched the bright fireworks light up the night",
    "The librarian asked everyone to be quiet in the",
    "The baby laughed when the puppy licked her little",
    "Tom brushed his teeth and went straight to",
    "The river flows from the snowy mountains down to the",
    "The students opened their books and began to",
    "The old man fed bread crumbs to the hungry",
    "She wore a warm woolen scarf because it was very",
    "The doctor told the patient to drink plenty of",
    "The bakery sells fresh bread and sweet chocolate",
    "The train left the station exactly at seven in the",
    "The astronaut floated slowly inside the space",
    "My sister bought a new red dress for the summer",
    "The farmer milked the cows early in the",
    "The police officer stopped the speeding car on the",
    "The bees collected nectar from the colourful spring",
    "The painter dipped his brush into the bright blue",
    "The waiter brought us two glasses of cold orange",
    "The students listened carefully while the teacher explained the",
]


def test_faithfulness_deletion_curve():
    """ERASER's comprehensiveness: deleting the top 20 % of spans by attribution lowers the
    target's logprob more than the mean of 20 random deletions of as many spans."""
    rng = random.Random(17)
    wins, details = 0, []
    for prompt in PROMPTS:
        e = explain({"prompt": prompt, "max_tokens": 1, "occlusion": {"spans": "word", "mode": "delete"}})
        p, comp = ids(e, "prompt"), ids(e, "completion")
        spans = e["occlusion"]["spans"]
        scores = e["occlusion"]["delta"][0]
        k = max(1, round(0.2 * len(spans)))
        top = sorted(range(len(spans)), key=lambda i: -scores[i])[:k]
        randoms = [rng.sample(range(len(spans)), k) for _ in range(20)]

        def without(chosen):
            drop = set()
            for i in chosen:
                drop.update(range(spans[i]["start"], spans[i]["end"]))
            return [t for i, t in enumerate(p) if i not in drop] + comp

        lists = [p + comp, without(top)] + [without(r) for r in randoms]
        lps = echo_logprobs(lists)
        target = [lp[-1] for lp in lps]
        drop_top = target[0] - target[1]
        drop_random = sum(target[0] - t for t in target[2:]) / 20
        wins += drop_top > drop_random
        details.append((prompt[:30], round(drop_top, 2), round(drop_random, 2)))
    assert wins >= 0.8 * len(PROMPTS), (wins, details)
    print(f"faithfulness: top-20% deletion beat random on {wins}/{len(PROMPTS)} prompts")


def test_attention_rows_sum_to_one_with_no_future():
    e = explain({"prompt": "The quick brown fox jumps over the lazy dog", "completion": ".",
                 "attention": {"targets": [8, 3], "top_k": 20}})
    assert len(e["tokens"]["prompt"]) <= 19
    for a in e["attention"]:
        assert len(a["layers"]) == N_LAYERS
        for layer in a["layers"]:
            keys = layer["keys"]
            assert len(keys) == a["target"] + 1
            assert all(k["pos"] <= a["target"] for k in keys)
            assert abs(sum(k["weight"] for k in keys) - 1) < 1e-4
            ranks = [k["weighted_norm"] for k in keys]
            assert ranks == sorted(ranks, reverse=True)
    e = explain({"prompt": "The quick brown fox", "completion": " jumps",
                 "attention": {"heads": [0, 8], "top_k": 20}})
    [a] = e["attention"]
    assert [(l["layer"], l["head"]) for l in a["layers"][:2]] == [(0, 0), (0, 8)]
    for layer in a["layers"]:
        assert abs(sum(k["weight"] for k in layer["keys"]) - 1) < 1e-4
    assert any("not an attribution" in w for w in e["warnings"])


def test_limits_are_400_before_any_compute():
    before = metrics()
    long_prompt = "word " * 600
    cases = [
        ({"prompt": long_prompt}, "prompt"),
        ({"prompt": "Hi", "completion": list(range(100, 133))}, "completion"),
        ({"prompt": "Hi", "max_tokens": 33}, "max_tokens"),
        ({"prompt": "a " * 100, "occlusion": {"spans": "token"}}, "occlusion.spans"),
        ({"prompt": "a b", "occlusion": {"spans": [[0, 1]] * 65}}, "occlusion.spans"),
        ({"prompt": "Hello there", "logit_lens": {"positions": list(range(9))}}, "logit_lens.positions"),
        ({"prompt": "Hello there", "logit_lens": {"top_k": 21}}, "logit_lens.top_k"),
        ({"prompt": "Hello there", "attention": {"top_k": 0}}, "attention.top_k"),
        ({"prompt": "one two three four five six seven eight nine",
          "attention": {"targets": list(range(8)), "heads": list(range(9)), "top_k": 20}}, "response"),
        ({"prompt": "Hi", "occlusion": {"mode": "erase"}}, "occlusion.mode"),
        ({"prompt": "Hi", "dla": {"target": "two tokens here"}}, "dla.target"),
        ({"prompt": "Hi", "dla": {"position": 99}}, "dla.position"),
        ({"prompt": "Hi", "attention": {"heads": [9]}}, "attention.heads"),
        ({"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}, "prompt"),
        ({}, "messages"),
    ]
    for body, param in cases:
        r = explain(body, status=400)
        assert r["error"]["param"] == param, (param, r)
        assert r["error"]["type"] == "invalid_request_error"
    after = metrics()
    # Nothing ran: no generation for the missing completions, no explanation pass.
    for name in ("lumen:prompt_tokens_total", "lumen:explain_forward_passes_total"):
        assert metric(after, name, model_name=MODEL) == metric(before, name, model_name=MODEL), name


def test_explain_alone_equals_explain_beside_16_busy_streams():
    body = {"prompt": "The capital of France is", "completion": " Paris, a city of light.",
            "occlusion": {"spans": "token", "contrast": " London"}, "logit_lens": {"positions": [2, 5]},
            "dla": {"position": 4}, "attention": {"targets": [4], "top_k": 5}}
    alone = explain(body)
    ends = []

    # 256 tokens each, so the streams outlast the explanation timed beside them: at 64 they
    # could all end first once sampling got cheaper.
    def stream(i):
        s = c.chat.completions.create(model=MODEL, max_tokens=256, temperature=0.8, seed=i, stream=True,
                                      messages=[{"role": "user", "content": f"Tell me a story about {i}."}],
                                      extra_body={"ignore_eos": True})
        for _ in s:
            pass
        ends.append(time.monotonic())

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    busy = explain(body)
    done = time.monotonic()
    for t in threads:
        t.join()
    assert len(ends) == 16 and max(ends) > done, "the streams were not running alongside"
    for key in ("occlusion", "logit_lens", "dla", "attention", "tokens", "completion"):
        assert busy[key] == alone[key], key


def embed_ids(lists):
    r = raw("POST", "/v1/embeddings", json={"model": EMBED_MODEL, "input": lists})
    assert r.status_code == 200, r.text
    return [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embedding_explanation_is_two_embedding_requests_apart():
    query, doc = "Where is the Eiffel Tower?", "Bananas are yellow and sweet. The Eiffel Tower stands in Paris. My cat sleeps a lot."
    r = raw("POST", "/v1/explain", json={"model": EMBED_MODEL, "texts": [query, doc],
                                          "occlusion": {"spans": "sentence"}})
    assert r.status_code == 200, r.text
    e = r.json()
    q, d = e["texts"]
    assert [s["text"] for s in d["spans"]] == ["bananas are yellow and sweet.", "the eiffel tower stands in paris.", "my cat sleeps a lot."]
    assert q["tokens"][0]["protected"] and q["tokens"][-1]["protected"]
    # The sentence that answers the query carries the similarity; the others work against it.
    assert max(range(3), key=lambda i: d["delta"][i]) == 1 and d["delta"][1] > 0 > d["delta"][0]
    # Each delta is what two ordinary embedding requests give (the engine is batch invariant).
    qi, di = [t["id"] for t in q["tokens"]], [t["id"] for t in d["tokens"]]
    vq, vd = embed_ids([qi, di])
    assert abs(cosine(vq, vd) - e["similarity"]) < 1e-5
    for s, span in enumerate(d["spans"]):
        [v] = embed_ids([di[:span["start"]] + di[span["end"]:]])
        assert abs((e["similarity"] - cosine(vq, v)) - d["delta"][s]) < 1e-5
    words = raw("POST", "/v1/explain", json={"model": EMBED_MODEL, "texts": [query, doc]}).json()
    assert [s["text"] for s in words["texts"][0]["spans"]] == ["where", "is", "the", "eiffel", "tower", "?"]
    bad = raw("POST", "/v1/explain", json={"model": EMBED_MODEL, "texts": [query]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "texts"
    bad = raw("POST", "/v1/explain", json={"model": EMBED_MODEL, "texts": [query, doc], "occlusion": {"mode": "mask"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "occlusion.mode"
