"""Load and disconnects: many concurrent streams, metrics that add up, no leaked work."""

import asyncio
import time

from lumen_e2e import MODEL, async_client, metric, metrics

CLIENTS = 64
DROPPED = 16


async def one_stream(c, i):
    stream = await c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Write a short line about the number {i}."}],
        max_tokens=12,
        temperature=0.8,
        seed=i,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    return text, usage, finish


def test_64_concurrent_streams_all_succeed_and_metrics_add_up():
    before = metrics()

    async def run():
        c = async_client()
        try:
            return await asyncio.gather(*[one_stream(c, i) for i in range(CLIENTS)])
        finally:
            await c.close()

    started = time.monotonic()
    results = asyncio.run(run())
    elapsed = time.monotonic() - started
    after = metrics()
    assert len(results) == CLIENTS
    for text, usage, finish in results:
        assert usage is not None and finish in ("stop", "length")
        assert 1 <= usage.completion_tokens <= 12
    prompt = sum(u.prompt_tokens for _, u, _ in results)
    gen = sum(u.completion_tokens for _, u, _ in results)
    d = lambda name, **l: metric(after, name, **l) - metric(before, name, **l)
    assert d("lumen:prompt_tokens_total") == prompt
    assert d("lumen:generation_tokens_total") == gen
    assert d("lumen:request_success_total") == CLIENTS
    assert d("lumen:request_success_total", finished_reason="stop") + d("lumen:request_success_total", finished_reason="length") == CLIENTS
    assert d("lumen:e2e_request_latency_seconds_count") == CLIENTS
    assert d("lumen:time_to_first_token_seconds_count") == CLIENTS
    assert d("lumen:inter_token_latency_seconds_count") > 0
    assert metric(after, "lumen:num_requests_running") == 0
    assert metric(after, "lumen:num_requests_waiting") == 0
    assert metric(after, "lumen:kv_cache_usage_perc") == 0
    print(f"{CLIENTS} streams, {gen} tokens in {elapsed:.1f}s ({gen / elapsed:.0f} tok/s)")


def test_dropped_streams_are_cancelled_and_free_their_blocks():
    before = metrics()

    async def run():
        c = async_client()
        streams = []
        try:
            for i in range(DROPPED):
                s = await c.completions.create(model=MODEL, prompt=f"Story {i}: once upon a time", max_tokens=2000, stream=True, temperature=0.9, seed=i, extra_body={"ignore_eos": True})
                streams.append(s)
            # Read a few chunks from each, so all are running, then hang up on them.
            for s in streams:
                got = 0
                async for _ in s:
                    got += 1
                    if got >= 3:
                        break
            running = metric(metrics(), "lumen:num_requests_running") + metric(metrics(), "lumen:num_requests_waiting")
            assert running > 0, "the streams should be running before they are dropped"
            for s in streams:
                await s.close()
            return time.monotonic()
        finally:
            await c.close()

    dropped_at = asyncio.run(run())
    while True:
        m = metrics()
        if metric(m, "lumen:num_requests_running") == 0 and metric(m, "lumen:num_requests_waiting") == 0:
            break
        assert time.monotonic() - dropped_at < 1.0, "requests still running a second after their clients left"
        time.sleep(0.02)
    settle = time.monotonic() - dropped_at
    m = metrics()
    assert metric(m, "lumen:kv_cache_usage_perc") == 0, "KV blocks leaked"
    cancelled = metric(m, "lumen:request_success_total", finished_reason="cancelled") - metric(before, "lumen:request_success_total", finished_reason="cancelled")
    assert cancelled == DROPPED
    print(f"running fell to zero {settle * 1000:.0f} ms after the clients left")
