#!/usr/bin/env python3
"""Writes one realistic-shape llama GGUF with random weights, in F16, for `make bench-models`.

Speed at 1-8 B parameters is a question of shapes and formats, not of what the weights say,
so the benchmark set is random weights in the shapes people serve, quantized afterwards by
llama.cpp's own `llama-quantize` (scripts/make-bench-models.sh) so the block layouts, the
per-tensor type choices of a preset such as Q4_K_M and the file layout are exactly what a
downloaded model has. Weights are normal with std 0.02 and norms 1.0, the scale of trained
checkpoints, so activations stay finite through every layer in both engines. The tokenizer
(tokens, merges, types, special ids, chat template) is SmolLM2's, copied from the GGUF that
`make models` fetches; a vocabulary larger than SmolLM2's is padded with unused tokens named
like Llama 3's reserved ones, which no text ever produces. (Unused, not control: 79,000
control tokens would be refused by Lumen's tokenizer limit of 65,536 special tokens, a bound
against hostile files; the real Llama 3 has 256.)

The tensors are written one at a time (GGUFWriter's header, then each tensor's data), so an
8B-shaped F16 file (16 GB) is written with about one tensor (1 GB) in memory.

Usage: make-bench-models.py --shape smollm2-1.7b|llama3-8b --tokenizer SMOLLM2.gguf --out F16.gguf
"""

import argparse
import sys
import time

import numpy as np

import gguf

# name: (hidden, layers, heads, kv heads, ffn, vocab, rope base, tied output)
SHAPES = {
    "smollm2-1.7b": (2048, 24, 32, 32, 8192, 49152, 130000.0, True),
    "llama3-8b": (4096, 32, 32, 8, 14336, 128256, 500000.0, False),
}


def tensor_plan(shape):
    """(name, numpy shape) of every tensor of a llama model, in llama.cpp's naming."""
    hidden, layers, heads, kv_heads, ffn, vocab, _, tied = shape
    kv_dim = hidden // heads * kv_heads
    plan = [("token_embd.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (hidden,)),
            (p + "attn_q.weight", (hidden, hidden)),
            (p + "attn_k.weight", (kv_dim, hidden)),
            (p + "attn_v.weight", (kv_dim, hidden)),
            (p + "attn_output.weight", (hidden, hidden)),
            (p + "ffn_norm.weight", (hidden,)),
            (p + "ffn_gate.weight", (ffn, hidden)),
            (p + "ffn_up.weight", (ffn, hidden)),
            (p + "ffn_down.weight", (hidden, ffn)),
        ]
    plan.append(("output_norm.weight", (hidden,)))
    if not tied:
        plan.append(("output.weight", (vocab, hidden)))
    return plan


def copy_tokenizer(writer, path, vocab):
    """SmolLM2's tokenizer fields, the token lists padded to `vocab` with unused tokens."""
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    tokens = [bytes(fields["tokenizer.ggml.tokens"].parts[i]) for i in fields["tokenizer.ggml.tokens"].data]
    types = [int(fields["tokenizer.ggml.token_type"].parts[i][0]) for i in fields["tokenizer.ggml.token_type"].data]
    merges = [bytes(fields["tokenizer.ggml.merges"].parts[i]) for i in fields["tokenizer.ggml.merges"].data]
    if vocab < len(tokens):
        sys.exit(f"vocabulary {vocab} is smaller than the tokenizer's {len(tokens)}")
    for i in range(len(tokens), vocab):
        tokens.append(f"<|reserved_special_token_{i}|>".encode())
        types.append(int(gguf.TokenType.UNUSED))
    writer.add_tokenizer_model(fields["tokenizer.ggml.model"].contents())
    writer.add_tokenizer_pre(fields["tokenizer.ggml.pre"].contents())
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(fields["tokenizer.ggml.bos_token_id"].contents())
    writer.add_eos_token_id(fields["tokenizer.ggml.eos_token_id"].contents())
    writer.add_unk_token_id(fields["tokenizer.ggml.unknown_token_id"].contents())
    writer.add_pad_token_id(fields["tokenizer.ggml.padding_token_id"].contents())
    writer.add_add_bos_token(fields["tokenizer.ggml.add_bos_token"].contents())
    writer.add_add_space_prefix(fields["tokenizer.ggml.add_space_prefix"].contents())
    writer.add_chat_template(fields["tokenizer.chat_template"].contents())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--tokenizer", required=True, help="a GGUF whose tokenizer to copy (SmolLM2's)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    shape = SHAPES[args.shape]
    hidden, layers, heads, kv_heads, ffn, vocab, rope_base, _ = shape
    writer = gguf.GGUFWriter(args.out, "llama")
    writer.add_name(f"bench {args.shape} (random weights)")
    writer.add_block_count(layers)
    writer.add_context_length(8192)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(rope_base)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    copy_tokenizer(writer, args.tokenizer, vocab)

    plan = tensor_plan(shape)
    for name, dims in plan:
        dtype = np.float16 if len(dims) == 2 else np.float32
        writer.add_tensor_info(name, dims, np.dtype(dtype), int(np.prod(dims)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    rng = np.random.default_rng(args.seed)
    chunk = 1 << 24
    start = time.time()
    for name, dims in plan:
        if len(dims) == 1:
            writer.write_tensor_data(np.ones(dims, dtype=np.float32))
            continue
        data = np.empty(int(np.prod(dims)), dtype=np.float16)
        for lo in range(0, data.size, chunk):
            hi = min(lo + chunk, data.size)
            data[lo:hi] = rng.standard_normal(hi - lo, dtype=np.float32) * np.float32(0.02)
        writer.write_tensor_data(data.reshape(dims))
    writer.close()
    print(f"make-bench-models: wrote {args.out} ({len(plan)} tensors) in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
