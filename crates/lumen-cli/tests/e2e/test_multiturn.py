"""Multi-turn chat reuses its own answers: each turn's prompt holds the previous turns, whose
tokens (prompts and generated answers) the prefix cache already holds, so a turn computes
only its new message."""

import time

from lumen_e2e import MODEL, client

BLOCK = 16  # the KV block size: reuse is by whole blocks


def test_five_turns_reuse_every_earlier_token():
    msgs = [{"role": "system", "content": "You are a helpful assistant."}]
    questions = ["Tell me about the history of Rome.", "What about its emperors?",
                 "Which one was the most famous?", "Why was he famous?", "Summarise what we discussed."]
    ttfts, previous = [], 0
    for i, q in enumerate(questions):
        msgs.append({"role": "user", "content": q})
        t = time.time()
        stream = client().chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=80, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"cache_salt": "multiturn-test"})
        text, ttft, usage = "", None, None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft or time.time() - t
                text += chunk.choices[0].delta.content
            if chunk.usage:
                usage = chunk.usage
        msgs.append({"role": "assistant", "content": text})
        cached = usage.prompt_tokens_details.cached_tokens
        print(f"turn {i + 1}: prompt {usage.prompt_tokens}, cached {cached} of the previous {previous}, TTFT {ttft * 1000:.0f} ms")
        if i > 0:
            # Every whole block of the earlier turns is reused (>= 90 % once turns are longer
            # than a few blocks; a block's remainder is recomputed).
            assert cached >= min(0.9 * previous, (previous - 1) // BLOCK * BLOCK), (i, cached, previous)
        ttfts.append(ttft)
        previous = usage.prompt_tokens + usage.completion_tokens
    # Turn 5's prompt is 15 times turn 1's, yet it computes about as little.
    assert ttfts[4] <= 1.3 * ttfts[0] + 0.1, ttfts
