#!/usr/bin/env python3
"""Reference fixtures from llama.cpp (through llama-cpp-python), run by hand, not in CI.

    make fixtures            # or: target/fixture-venv/bin/python scripts/make_llama_fixtures.py

Writes, under fixtures/llama/:
  smollm2_reference.json   prompt token ids, a 32-token greedy continuation and the top-5
                           logprobs at every step, for chat-templated and raw prompts
  tiny_*.gguf              tiny random-weight models covering other variants and formats
  tiny_*.json              llama.cpp's logits for every position of a fixed input

`python scripts/make_llama_fixtures.py lowbit` writes only the fixtures of the formats added for
issue 23 (Q5_0, Q5_1, Q2_K, Q3_K_M, IQ4_NL, IQ4_XS), leaving the others as they are.

The venv under target/ holds llama-cpp-python (which compiles llama.cpp) and gguf; the
Makefile target `fixtures` creates it.
"""
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import gguf
import jinja2
import llama_cpp
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "llama"
HOME = Path(os.environ.get("LUMEN_HOME", Path.home() / ".lumen"))
SMOLLM = HOME / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

CHATS = [
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "List three prime numbers."}, {"role": "assistant", "content": "2, 3, 5."}, {"role": "user", "content": "Three more, please."}],
    [{"role": "user", "content": "Translate 'good morning' into German and explain the words."}],
]
RAW = [
    "The quick brown fox",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a land far away, there lived a",
    "1, 2, 3, 5, 8, 13,",
]
N_GEN = 32
TOP = 5


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max()
    return x - m - math.log(np.exp(x - m).sum())


def render_chat(template, messages):
    env = jinja2.Environment(loader=jinja2.BaseLoader())
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")


def greedy(llm, prompt_ids):
    llm.reset()
    llm.eval(prompt_ids)
    out, steps = [], []
    for _ in range(N_GEN):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        lp = log_softmax(logits)
        top = np.argsort(-lp, kind="stable")[:TOP]
        tok = int(top[0])
        steps.append([[int(t), float(lp[t])] for t in top])
        out.append(tok)
        if llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), tok):
            break
        llm.eval([tok])
    return out, steps


def smollm_fixture():
    llm = Llama(model_path=str(SMOLLM), n_ctx=1024, n_batch=512, n_threads=2, logits_all=True, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    cases = []
    for msgs in CHATS:
        text = render_chat(template, msgs)
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        gen, steps = greedy(llm, ids)
        cases.append({"kind": "chat", "messages": msgs, "text": text, "prompt_ids": ids, "greedy_ids": gen, "top_logprobs": steps})
    for text in RAW:
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        gen, steps = greedy(llm, ids)
        cases.append({"kind": "raw", "text": text, "prompt_ids": ids, "greedy_ids": gen, "top_logprobs": steps})
    (OUT / "smollm2_reference.json").write_text(json.dumps({"model": SMOLLM.name, "llama_cpp_python": llama_cpp.__version__, "cases": cases}, indent=1))
    print(f"smollm2: {len(cases)} cases")


def tiny_model(path, arch, d, n_layers, n_heads, n_kv, d_ff, vocab, biases=False, qk_norm=False, tied=True, wtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    head_dim = d // n_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(512)
    w.add_embedding_length(d)
    w.add_feed_forward_length(d_ff)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    if qk_norm:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(vocab)
    w.add_file_type(1 if wtype == np.float16 else 0)
    w.add_tokenizer_model("no_vocab")

    def mat(rows, cols, scale=None):
        scale = scale or 1.0 / math.sqrt(cols)
        return (rng.standard_normal((rows, cols)) * scale).astype(wtype)

    def vec(n, base=1.0, jitter=0.1):
        return (base + rng.standard_normal(n) * jitter).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(vocab, d, 1.0))
    for i in range(n_layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", vec(d))
        w.add_tensor(p + "attn_q.weight", mat(n_heads * head_dim, d))
        w.add_tensor(p + "attn_k.weight", mat(n_kv * head_dim, d))
        w.add_tensor(p + "attn_v.weight", mat(n_kv * head_dim, d))
        if biases:
            w.add_tensor(p + "attn_q.bias", vec(n_heads * head_dim, 0.0, 0.5))
            w.add_tensor(p + "attn_k.bias", vec(n_kv * head_dim, 0.0, 0.5))
            w.add_tensor(p + "attn_v.bias", vec(n_kv * head_dim, 0.0, 0.5))
        if qk_norm:
            w.add_tensor(p + "attn_q_norm.weight", vec(head_dim))
            w.add_tensor(p + "attn_k_norm.weight", vec(head_dim))
        w.add_tensor(p + "attn_output.weight", mat(d, n_heads * head_dim))
        w.add_tensor(p + "ffn_norm.weight", vec(d))
        w.add_tensor(p + "ffn_gate.weight", mat(d_ff, d))
        w.add_tensor(p + "ffn_up.weight", mat(d_ff, d))
        w.add_tensor(p + "ffn_down.weight", mat(d, d_ff))
    w.add_tensor("output_norm.weight", vec(d))
    if not tied:
        w.add_tensor("output.weight", mat(vocab, d, 2.0 / math.sqrt(d)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src, dst, ftype):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise SystemExit(f"quantize {dst} failed: {rc}")


def tiny_reference(path, vocab):
    rng = np.random.default_rng(1234)
    ids = [int(t) for t in rng.integers(0, vocab, 24)]
    llm = Llama(model_path=str(path), n_ctx=128, n_batch=64, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
    types = {}
    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    ref = {"model": path.name, "tensor_types": types, "input_ids": ids, "logits": [[round(float(v), 6) for v in row] for row in logits]}
    path.with_suffix(".json").write_text(json.dumps(ref))
    print(f"{path.name}: types {types}, logit range {logits.min():.2f}..{logits.max():.2f}")


def tiny_fixtures():
    tmp = ROOT / "target" / "fixture-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    # Qwen2: NeoX RoPE and Q/K/V biases, F16 weights, separate output head.
    qwen2 = OUT / "tiny_qwen2_f16.gguf"
    tiny_model(qwen2, "qwen2", 64, 2, 4, 2, 128, 96, biases=True, tied=False, wtype=np.float16, seed=1)
    # Qwen3: per-head Q/K RMSNorm, F32 weights.
    qwen3 = OUT / "tiny_qwen3_f32.gguf"
    tiny_model(qwen3, "qwen3", 64, 2, 4, 2, 128, 96, qk_norm=True, wtype=np.float32, seed=2)
    # Llama with K-quants (Q4_K_M mixes Q4_K and Q6_K), rows a multiple of 256.
    base = tmp / "tiny_llama_f32.gguf"
    tiny_model(base, "llama", 256, 2, 4, 2, 512, 256, tied=False, seed=3)
    for name, ftype in [("tiny_llama_q4_k_m.gguf", 15), ("tiny_llama_q5_k_m.gguf", 17), ("tiny_llama_q4_0.gguf", 2), ("tiny_llama_q4_1.gguf", 3), ("tiny_llama_q8_0.gguf", 7), ("tiny_llama_bf16.gguf", 32)]:
        quantize(base, OUT / name, ftype)
    for p in [qwen2, qwen3] + [OUT / n for n in ["tiny_llama_q4_k_m.gguf", "tiny_llama_q5_k_m.gguf", "tiny_llama_q4_0.gguf", "tiny_llama_q4_1.gguf", "tiny_llama_q8_0.gguf", "tiny_llama_bf16.gguf"]]:
        vocab = 96 if "qwen" in p.name else 256
        tiny_reference(p, vocab)


# The types llama.cpp's presets fall back to or mix in (issue 23), each from the same f32 base
# as the other tiny llama fixtures: (file, llama_ftype). Q2_K and Q3_K_M also mix in Q4_K/Q5_K/
# Q6_K for some tensors, as llama-quantize does; every file's JSON lists its tensor types.
LOWBIT = [
    ("tiny_llama_q5_0.gguf", 8),     # LLAMA_FTYPE_MOSTLY_Q5_0
    ("tiny_llama_q5_1.gguf", 9),     # LLAMA_FTYPE_MOSTLY_Q5_1
    ("tiny_llama_q2_k.gguf", 10),    # LLAMA_FTYPE_MOSTLY_Q2_K
    ("tiny_llama_q3_k_m.gguf", 12),  # LLAMA_FTYPE_MOSTLY_Q3_K_M
    ("tiny_llama_iq4_nl.gguf", 25),  # LLAMA_FTYPE_MOSTLY_IQ4_NL
    ("tiny_llama_iq4_xs.gguf", 30),  # LLAMA_FTYPE_MOSTLY_IQ4_XS
]


def lowbit_fixtures():
    tmp = ROOT / "target" / "fixture-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    base = tmp / "tiny_llama_f32.gguf"
    tiny_model(base, "llama", 256, 2, 4, 2, 512, 256, tied=False, seed=3)
    for name, ftype in LOWBIT:
        quantize(base, OUT / name, ftype)
        tiny_reference(OUT / name, 256)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    what = sys.argv[1:] or ["smollm", "tiny"]
    if "tiny" in what:
        tiny_fixtures()
    if "tiny" in what or "lowbit" in what:
        lowbit_fixtures()
    if "smollm" in what:
        smollm_fixture()
