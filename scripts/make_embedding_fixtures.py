#!/usr/bin/env python3
"""Writes the reference embeddings that Lumen's BERT tests compare against.

Run by hand, not in CI:

    python3 scripts/make_embedding_fixtures.py            # set up the venv, write the fixtures
    python3 scripts/make_embedding_fixtures.py --only all-mpnet-base-v2   # just one of them
    python3 scripts/make_embedding_fixtures.py --bench    # also time sentence-transformers

The first run creates a virtual environment under `target/st-venv` and installs `torch` and
`sentence-transformers` into it with plain pip, then re-runs itself inside that venv. Each model
is read from its local folder `$LUMEN_HOME/models/NAME` (default `~/.lumen`; `lumen pull NAME`
puts it there) with the hub switched off; nothing is downloaded for the models themselves.

Each output, `crates/lumen-models/tests/fixtures/{minilm,mpnet}_reference.json`, holds for each
sentence the token ids the model's own tokenizer produced (after sentence-transformers truncated
them to `max_seq_length`) and the normalized embedding rounded to 7 significant digits.
Committing the ids lets the Rust test feed exactly the same input to `BertModel` without a
tokenizer, and check Lumen's tokenizer against them separately. The MPNet fixture also holds
the relative-position bucket of every distance the model can see, computed by transformers'
own `relative_position_bucket` (float32 logarithms decide the bucket edges, so the Rust side
is checked against them rather than against a formula).
"""

import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "target" / "st-venv"
FIXTURES = ROOT / "crates" / "lumen-models" / "tests" / "fixtures"
# Installed model name -> fixture file.
MODELS = {
    "all-minilm-l6-v2": "minilm_reference.json",
    "all-mpnet-base-v2": "mpnet_reference.json",
}

LONG_PARAGRAPH = (
    "The history of computing is longer than the history of computing hardware and modern "
    "computing technology and includes the history of methods intended for pen and paper or "
    "for chalk and slate, with or without the aid of tables. Digital computing is intimately "
    "tied to the representation of numbers. But long before abstractions like the number arose, "
    "there were mathematical concepts to serve the purposes of civilization."
)

# Over-length inputs: far beyond 256 word pieces, so sentence-transformers truncates them.
OVER_LENGTH_1 = " ".join(
    f"Sentence number {i} talks about rivers, mountains and the weather in spring."
    for i in range(40)
)
OVER_LENGTH_2 = ("Tokenization of unusual words like antidisestablishmentarianism, "
                 "pneumonoultramicroscopicsilicovolcanoconiosis and floccinaucinihilipilification "
                 "produces many word pieces. ") * 20

SENTENCES = [
    "Hello world",
    "embeddings",
    "A",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password if I no longer have access to my email?",
    "Machine learning models turn text into vectors of numbers.",
    "It was the best of times, it was the worst of times.",
    LONG_PARAGRAPH,
    "!!! ??? ... ;;; --- ((( ))) [[[ ]]] {{{ }}} @@@ ### $$$ %%% ^^^ &&& ***",
    "Wait... what?! No way -- really?? (Yes, really.)",
    "Café, naïve, façade, résumé, jalapeño, Müller, Ångström.",
    "Ça va très bien, merci ! ¿Dónde está la biblioteca?",
    "東京は日本の首都です。",
    "我喜欢学习机器学习和自然语言处理。",
    "Привет, как дела? Всё хорошо.",
    "I love pizza 🍕🍕 and tacos 🌮! 😂👍",
    "def add(a, b):\n    return a + b  # sum of two numbers",
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name;",
    "The invoice total was $1,234.56 on 2024-03-15 at 09:41, ref #A-7781.",
    "3.14159265358979 2.71828 1e-12 0xFF 42",
    "   leading and trailing whitespace   ",
    "UPPER CASE SENTENCE SHOULD BE LOWERCASED BY THE TOKENIZER",
    "https://example.com/path?query=1&other=two#fragment",
    "user@example.org wrote: <b>bold</b> &amp; <i>italic</i>",
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    OVER_LENGTH_1,
    OVER_LENGTH_2,
]

# Short sentences for the throughput comparison with `examples/embed_bench.rs`; their ids are
# written to the fixture too, so both sides run the same tokens.
BENCH_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Machine learning models turn text into vectors.",
    "A man is playing a guitar.",
    "The weather is lovely today.",
    "Where is the nearest train station?",
    "Embeddings make semantic search possible.",
    "She sold seashells by the seashore.",
]


def lumen_home() -> Path:
    return Path(os.environ.get("LUMEN_HOME", Path.home() / ".lumen"))


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def bootstrap() -> None:
    """Creates the venv, installs the packages and re-runs this script inside it."""
    py = VENV / "bin" / "python"
    if not py.exists():
        print(f"creating venv in {VENV}")
        venv.create(VENV, with_pip=True)
    stamp = VENV / ".installed"
    if not stamp.exists():
        subprocess.check_call([str(py), "-m", "pip", "install", "torch", "sentence-transformers"])
        stamp.write_text("ok\n")
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


def sig7(x: float) -> float:
    return float(f"{x:.7g}")


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    if only is not None and only not in MODELS:
        sys.exit(f"--only takes one of {', '.join(MODELS)}")
    model = None
    for name, fixture in MODELS.items():
        if only is None or only == name:
            model = write_fixture(torch, name, FIXTURES / fixture)

    if "--bench" in sys.argv:
        bench(model, torch)


def write_fixture(torch, name: str, out: Path):
    """Writes the reference file `out` for the installed model `name`; returns the model."""
    from sentence_transformers import SentenceTransformer

    model_dir = lumen_home() / "models" / name
    if not (model_dir / "config.json").exists():
        sys.exit(f"model not found in {model_dir}; run `make models` first")
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    max_len = model.max_seq_length

    records = []
    tokenizer = model.tokenizer
    for text in SENTENCES:
        ids = tokenizer(text, truncation=True, max_length=max_len)["input_ids"]
        records.append({"text": text, "ids": ids})
    with torch.no_grad():
        embs = model.encode(SENTENCES, batch_size=8, convert_to_numpy=True)
    for rec, emb in zip(records, embs):
        rec["embedding"] = [sig7(float(v)) for v in emb]

    # The ids fed to the model must be the ones we recorded.
    features = model.tokenize(SENTENCES)
    for i, rec in enumerate(records):
        n = int(features["attention_mask"][i].sum())
        assert features["input_ids"][i][:n].tolist() == rec["ids"], rec["text"][:40]

    doc = {
        "model": name,
        "generator": "scripts/make_embedding_fixtures.py",
        "sentence_transformers": __import__("sentence_transformers").__version__,
        "torch": torch.__version__,
        "max_seq_length": max_len,
        "dims": len(embs[0]),
        "normalized": True,
        "sentences": records,
        # Token ids of the short sentences both benchmarks use (no embeddings needed).
        "bench": [
            {"text": t, "ids": tokenizer(t, truncation=True, max_length=max_len)["input_ids"]}
            for t in BENCH_SENTENCES
        ],
    }
    encoder = model[0].auto_model
    if encoder.config.model_type == "mpnet":
        # Bucket of every relative position (key minus query) the model can meet.
        span = encoder.config.max_position_embeddings - 2
        rel = torch.arange(-(span - 1), span)
        buckets = encoder.encoder.relative_position_bucket(rel, num_buckets=32)
        doc["relative_position_buckets"] = {"from": -(span - 1), "buckets": buckets.tolist()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    lengths = [len(r["ids"]) for r in records]
    print(f"wrote {out}: {len(records)} sentences, token lengths {min(lengths)}..{max(lengths)}")
    return model


def bench(model, torch) -> None:
    """Times sentence-transformers on short sentences, for comparison with embed_bench."""
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    for batch in (1, 32, 256):
        sents = [BENCH_SENTENCES[i % len(BENCH_SENTENCES)] for i in range(batch)]
        with torch.no_grad():
            model.encode(sents, batch_size=batch)  # warm-up
            reps = min(max(1024 // batch, 4), 256)  # as in embed_bench.rs
            t0, cpu0 = time.perf_counter(), time.process_time()
            for _ in range(reps):
                model.encode(sents, batch_size=batch)
            dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        n = batch * reps
        print(f"sentence-transformers, {threads} threads, batch {batch:>3}: "
              f"{n / dt:8.1f} sentences/s ({dt * 1e3 / reps:.2f} ms per call, "
              f"{n / cpu:.1f} per CPU-second)")


if __name__ == "__main__":
    if in_venv():
        main()
    else:
        bootstrap()
