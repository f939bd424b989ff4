#!/usr/bin/env python3
"""Writes crates/lumen-engine/tests/fixtures/smollm2_tokens.json: llama.cpp's
tokenization of varied strings with the SmolLM2-135M-Instruct GGUF vocabulary.

Lumen's tokenizer test (crates/lumen-engine/tests/tokenizer_fixture.rs) checks that it
produces exactly these ids, the same special-token facts, and the same detokenization.

"pre_variants" holds llama.cpp's ids for the same vocabulary and merges under other
`tokenizer.ggml.pre` values (written to temporary vocab-only GGUF files, without
add_bos_token so each pre-tokenizer's default applies), so each pre-tokenizer's split
expressions are checked too.

Needs llama-cpp-python (it compiles llama.cpp). Usage:
    python scripts/make_tokenizer_fixture.py [MODEL.gguf] [OUT.json]
"""

import json
import os
import sys
import tempfile

import gguf
import llama_cpp

DEFAULT_MODEL = os.path.join(
    os.environ.get("LUMEN_HOME", os.path.expanduser("~/.lumen")),
    "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)
DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "../crates/lumen-engine/tests/fixtures/smollm2_tokens.json",
)

# (text, parse_special)
CASES = [
    ("Hello, world!", True),
    ("The quick brown fox jumps over the lazy dog.", True),
    ("12345", True),
    ("Pi is 3.14159 and e is 2.71828; 1,000,000 people.", True),
    ("def add(a, b):\n    return a + b\n", True),
    ("fn main() {\n\tprintln!(\"{}\", 42);\n}", True),
    ("for (int i = 0; i < n; ++i) { x[i] *= 2; }", True),
    ("   leading and trailing spaces   ", True),
    ("tabs\tand\t\tmore\ttabs", True),
    ("line one\nline two\n\n\nline five\r\nwindows", True),
    ("\n", True),
    (" ", True),
    ("I'm sure you're right, they've said it's what we'd do.", True),
    ("SHOUTING'S FINE, ISN'T IT?", True),
    ("Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧", True),
    ("日本語のテキストです。中文文本。한국어 텍스트.", True),
    ("Café naïve résumé façade Ångström", True),
    ("Привет, мир! Γειά σου Κόσμε! مرحبا بالعالم", True),
    ("math: ∑ x² ≤ ∞ → α·β ≈ 1e-9", True),
    ("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", True),
    ("<|im_start|>user\nWhat is 2+2?<|im_end|>", False),
    ("<|endoftext|>", True),
    ("<|endoftext|>", False),
    ("text<|im_end|>more<reponame>x", True),
    ("<|im_start|><|im_end|><|im_start|>", True),
    ("https://example.com/path?query=1&b=2#frag", True),
    ("{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}", True),
    ("snake_case camelCase PascalCase kebab-case CONSTANT_CASE", True),
    ("a" * 64, True),
    ("!!!??? ... --- ***", True),
    ("x = y ** 2 // 3 % 4 != 5", True),
    ("no\u00a0break and ideographic\u3000space", True),
    ("  \n\n  indented\n\t\ttabs \r\n", True),
    ("1234567890 12 123 1234", True),
    ("", True),
]

PRE_VARIANTS = ["llama-bpe", "qwen2", "gpt-2", "default"]


def pre_variant_ids(model: str, pre: str, tmp: str) -> list:
    """llama.cpp's ids (add_bos=True) for CASES with the model's vocabulary under `pre`."""
    r = gguf.GGUFReader(model)
    field = lambda k: r.fields[k]
    tokens = [field("tokenizer.ggml.tokens").contents(i) for i in range(len(field("tokenizer.ggml.tokens").data))]
    merges = [field("tokenizer.ggml.merges").contents(i) for i in range(len(field("tokenizer.ggml.merges").data))]
    path = os.path.join(tmp, f"{pre}.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    # Minimal hyperparameters so llama.cpp accepts the vocab-only file.
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(field("tokenizer.ggml.token_type").contents())
    w.add_token_merges(merges)
    w.add_bos_token_id(field("tokenizer.ggml.bos_token_id").contents())
    w.add_eos_token_id(field("tokenizer.ggml.eos_token_id").contents())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    return [llm.tokenize(t.encode("utf-8"), add_bos=True, special=sp) for t, sp in CASES]


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL
    out = sys.argv[2] if len(sys.argv) > 2 else DEFAULT_OUT
    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    cases = []
    for text, parse_special in CASES:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=parse_special)
        with_special = llm.tokenize(text.encode("utf-8"), add_bos=True, special=parse_special)
        detok = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
        cases.append(
            {
                "text": text,
                "parse_special": parse_special,
                "ids": ids,
                "ids_add_special": with_special,
                "detokenized": detok,
            }
        )

    def opt(tok: int):
        return None if tok < 0 else tok

    fixture = {
        "source": "llama-cpp-python " + llama_cpp.__version__,
        "model": os.path.basename(model),
        "vocab_size": n_vocab,
        "bos": opt(llama_cpp.llama_vocab_bos(vocab)),
        "eos": opt(llama_cpp.llama_vocab_eos(vocab)),
        "eot": opt(llama_cpp.llama_vocab_eot(vocab)),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "eog": [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)],
        "cases": cases,
    }
    with tempfile.TemporaryDirectory() as tmp:
        variants = {pre: pre_variant_ids(model, pre, tmp) for pre in PRE_VARIANTS}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    # One case per line keeps the file readable and diffs small.
    head = {k: v for k, v in fixture.items() if k != "cases"}
    lines = [json.dumps(c, ensure_ascii=False) for c in cases]
    text = json.dumps(head, ensure_ascii=False, indent=1)[:-2]
    text += ',\n "cases": [\n  ' + ",\n  ".join(lines) + "\n ]"
    text += ',\n "pre_variants": {\n'
    text += ",\n".join(
        f"  {json.dumps(pre)}: [\n   " + ",\n   ".join(json.dumps(ids) for ids in v) + "\n  ]"
        for pre, v in variants.items()
    )
    text += "\n }\n}\n"
    json.loads(text)  # sanity check
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
