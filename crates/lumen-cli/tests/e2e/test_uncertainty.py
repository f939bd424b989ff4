"""`lumen_uncertainty` on chat and text completions, checked against the logprobs the same
request returns (the same distribution: top_logprobs=20 holds the two most likely tokens)."""

import math

from lumen_e2e import MODEL, client

c = client()
MESSAGES = [{"role": "user", "content": "Name three colours."}]
UNC = {"lumen_uncertainty": True, "ignore_eos": True}


def check_against_logprobs(unc, entries):
    """`entries`: per generated token (its logprob, [top logprobs, most likely first])."""
    assert len(unc["tokens"]) == len(entries) > 0
    for tok, (lp, top) in zip(unc["tokens"], entries):
        assert tok["entropy"] >= 0
        p = [math.exp(t) for t in top]
        assert abs(tok["margin"] - (p[0] - p[1])) < 1e-4, (tok, p[:2])
        # The top 20 terms alone are a lower bound of the entropy (every term is >= 0).
        partial = -sum(q * math.log(q) for q in p if q > 0)
        assert tok["entropy"] >= partial - 1e-4, (tok, partial)
        # And at most ln(vocab).
        assert tok["entropy"] <= math.log(49152) + 1e-4
    lps = [lp for lp, _ in entries]
    mean = sum(lps) / len(lps)
    assert abs(unc["mean_logprob"] - mean) < 1e-4
    assert abs(unc["min_prob"] - math.exp(min(lps))) < 1e-4
    assert abs(unc["perplexity"] - math.exp(-unc["mean_logprob"])) < 1e-6 * unc["perplexity"]


def test_chat_uncertainty_matches_logprobs():
    r = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0,
                                  logprobs=True, top_logprobs=20, extra_body=UNC)
    ch = r.choices[0]
    unc = ch.model_extra["lumen_uncertainty"]
    entries = [(e.logprob, [t.logprob for t in e.top_logprobs]) for e in ch.logprobs.content]
    check_against_logprobs(unc, entries)
    # Greedy: the chosen token is the most likely one, so its logprob is the top one.
    for lp, top in entries:
        assert abs(lp - top[0]) < 1e-6


def test_sampled_chat_uncertainty_matches_logprobs():
    r = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=1.3, seed=7,
                                  logprobs=True, top_logprobs=20, extra_body=UNC)
    ch = r.choices[0]
    entries = [(e.logprob, [t.logprob for t in e.top_logprobs]) for e in ch.logprobs.content]
    check_against_logprobs(ch.model_extra["lumen_uncertainty"], entries)


def test_completions_uncertainty_matches_logprobs():
    r = c.completions.create(model=MODEL, prompt="The colour of the sky is", max_tokens=10, temperature=0,
                             logprobs=20, extra_body=UNC)
    ch = r.choices[0]
    lp = ch.logprobs
    entries = [(l, sorted(top.values(), reverse=True)) for l, top in zip(lp.token_logprobs, lp.top_logprobs)]
    check_against_logprobs(ch.model_extra["lumen_uncertainty"], entries)


def test_stream_equals_non_stream():
    args = dict(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0, extra_body=UNC)
    whole = c.chat.completions.create(**args).choices[0].model_extra["lumen_uncertainty"]
    tokens, summary = [], None
    for chunk in c.chat.completions.create(stream=True, **args):
        for ch in chunk.choices:
            u = (ch.model_extra or {}).get("lumen_uncertainty")
            if u is None:
                continue
            tokens += u["tokens"]
            if "mean_logprob" in u:
                assert ch.finish_reason is not None
                summary = u
    assert tokens == whole["tokens"]
    for k in ("mean_logprob", "min_prob", "perplexity"):
        assert summary[k] == whole[k]
    text = dict(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, extra_body=UNC)
    whole = c.completions.create(**text).choices[0].model_extra["lumen_uncertainty"]
    streamed = []
    for chunk in c.completions.create(stream=True, **text):
        for ch in chunk.choices:
            u = (ch.model_extra or {}).get("lumen_uncertainty")
            if u:
                streamed += u["tokens"]
    assert streamed == whole["tokens"] and len(streamed) == 8


def test_absent_unless_asked():
    r = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0)
    assert "lumen_uncertainty" not in (r.choices[0].model_extra or {})
    for chunk in c.completions.create(model=MODEL, prompt="Hi", max_tokens=3, stream=True):
        for ch in chunk.choices:
            assert "lumen_uncertainty" not in (ch.model_extra or {})
