"""Hostile model files at load time: `lumen serve --model PATH --preload PATH` and `lumen run PATH "hi"`
must exit with status 1 and a clear `error:` line, never a panic, an abort or a signal.

The files are copies of the real default models with one field changed in place (so every
other check passes and the loader reaches the field), plus small handcrafted GGUF headers
and a sentence-transformers folder whose safetensors header is corrupt. `LUMEN_BIN` is the
binary under test."""

import os
import shutil
import struct
import subprocess
import tempfile

import pytest

BIN = os.environ["LUMEN_BIN"]
HOME = os.environ.get("LUMEN_HOME", os.path.expanduser("~/.lumen"))
CHAT_DIR = os.path.join(HOME, "models", "smollm2")
EMBED_DIR = os.path.join(HOME, "models", "all-minilm-l6-v2")

# GGUF value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SIZES = {U8: 1, I8: 1, U16: 2, I16: 2, U32: 4, I32: 4, F32: 4, BOOL: 1, U64: 8, I64: 8, F64: 8}


def chat_gguf():
    names = [n for n in os.listdir(CHAT_DIR) if n.endswith(".gguf")]
    assert names, f"no .gguf in {CHAT_DIR} (run `make models`)"
    return os.path.join(CHAT_DIR, names[0])


class Layout:
    """Where each field of a GGUF header lives: {key: (value type, value offset)} and
    {tensor name: {"n_dims": off, "dims": [off...], "type": off, "offset": off}}."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.buf = f.read(16 << 20)  # the header and tables fit easily
        b = self.buf
        assert b[:4] == b"GGUF"
        self.n_tensors, self.n_kv = struct.unpack_from("<QQ", b, 8)
        self.count_offsets = (8, 16)
        pos = 24
        self.kv = {}
        for _ in range(self.n_kv):
            key, pos = self._str(pos)
            (t,) = struct.unpack_from("<I", b, pos)
            pos += 4
            self.kv[key] = (t, pos)
            pos = self._skip(t, pos)
        self.tensors = {}
        for _ in range(self.n_tensors):
            name, pos = self._str(pos)
            info = {"n_dims": pos}
            (n,) = struct.unpack_from("<I", b, pos)
            pos += 4
            info["dims"] = [pos + 8 * i for i in range(n)]
            pos += 8 * n
            info["type"] = pos
            info["offset"] = pos + 4
            pos += 12
            self.tensors[name] = info

    def _str(self, pos):
        (n,) = struct.unpack_from("<Q", self.buf, pos)
        return self.buf[pos + 8 : pos + 8 + n].decode("utf-8", "replace"), pos + 8 + n

    def _skip(self, t, pos):
        if t == STR:
            (n,) = struct.unpack_from("<Q", self.buf, pos)
            return pos + 8 + n
        if t == ARR:
            et, n = struct.unpack_from("<IQ", self.buf, pos)
            pos += 12
            if et in SIZES:
                return pos + SIZES[et] * n
            for _ in range(n):
                pos = self._skip(et, pos)
            return pos
        return pos + SIZES[t]


@pytest.fixture(scope="module")
def work():
    d = tempfile.mkdtemp(prefix="lumen-hostile-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def layout():
    return Layout(chat_gguf())


def safe(label):
    """A file name from a label (`--model` splits on commas)."""
    return "".join(c if c.isalnum() else "_" for c in label)


def patched_copy(work, name, patches):
    """A copy of the chat model with `patches` [(offset, bytes)] written over it."""
    path = os.path.join(work, name + ".gguf")
    shutil.copyfile(chat_gguf(), path)
    with open(path, "r+b") as f:
        for off, data in patches:
            f.seek(off)
            f.write(data)
    return path


def expect_clean_refusal(args, label):
    """Runs `lumen ARGS`; it must exit 1 with an `error:` line and no panic."""
    env = dict(os.environ, LUMEN_LOG="warn")
    try:
        p = subprocess.run([BIN, *args], capture_output=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{label}: still running after 30s (the file was accepted?)\n{(e.stderr or b'').decode()[-2000:]}")
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 1, f"{label}: `lumen {' '.join(args[:3])}` exited {p.returncode} (negative: signal)\n{err[-3000:]}"
    assert "panicked" not in err and "RUST_BACKTRACE" not in err, f"{label}: panic\n{err[-3000:]}"
    assert "error:" in err, f"{label}: no error line\n{err[-3000:]}"
    line = [l for l in err.splitlines() if l.startswith("error:")][-1]
    assert len(line) < 2000, f"{label}: error line of {len(line)} chars"
    return line


def both_refuse(path, label):
    # Models load on demand; --preload makes serve load it at start, where it must be refused.
    served = expect_clean_refusal(["serve", "--port", "0", "--threads", "2", "--model", path, "--preload", path], label + " (serve)")
    ran = expect_clean_refusal(["run", path, "--threads", "2", "--max-tokens", "4", "hi"], label + " (run)")
    print(f"{label}:\n  serve: {served}\n  run:   {ran}")


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


# Each case: (label, function of the layout giving [(offset, bytes)]).
def _kv(layout, key, data):
    t, off = layout.kv[key]
    assert t == U32, (key, t)
    return [(off, data)]


PATCHED = [
    ("tensor count 2^63", lambda L: [(L.count_offsets[0], u64(1 << 63))]),
    ("metadata count 2^40", lambda L: [(L.count_offsets[1], u64(1 << 40))]),
    ("vocabulary array count 2^61", lambda L: [(L.kv["tokenizer.ggml.tokens"][1] + 4, u64(1 << 61))]),
    ("token_embd dims overflow u64", lambda L: [(o, u64(1 << 62)) for o in L.tensors["token_embd.weight"]["dims"]]),
    ("token_embd rows beyond the file", lambda L: [(L.tensors["token_embd.weight"]["dims"][1], u64(1 << 40))]),
    ("attn_q dims swapped to a wrong shape", lambda L: [(L.tensors["blk.0.attn_q.weight"]["dims"][0], u64(64)), (L.tensors["blk.0.attn_q.weight"]["dims"][1], u64(576 * 576 // 64))]),
    ("tensor offset beyond the file", lambda L: [(L.tensors["blk.3.ffn_down.weight"]["offset"], u64(1 << 50))]),
    ("tensor offset misaligned", lambda L: [(L.tensors["output_norm.weight"]["offset"], u64(struct.unpack_from("<Q", L.buf, L.tensors["output_norm.weight"]["offset"])[0] + 1))]),
    ("unknown tensor type", lambda L: [(L.tensors["blk.0.ffn_up.weight"]["type"], u32(250))]),
    ("n_dims 1000", lambda L: [(L.tensors["blk.0.ffn_up.weight"]["n_dims"], u32(1000))]),
    ("block_count u32::MAX", lambda L: _kv(L, "llama.block_count", u32(0xFFFFFFFF))),
    ("head_count 0", lambda L: _kv(L, "llama.attention.head_count", u32(0))),
    ("head_count_kv 0", lambda L: _kv(L, "llama.attention.head_count_kv", u32(0))),
    ("head_count_kv not dividing head_count", lambda L: _kv(L, "llama.attention.head_count_kv", u32(7))),
    ("embedding_length 577", lambda L: _kv(L, "llama.embedding_length", u32(577))),
    ("context_length 0", lambda L: _kv(L, "llama.context_length", u32(0))),
    ("feed_forward_length u32::MAX", lambda L: _kv(L, "llama.feed_forward_length", u32(0xFFFFFFFF))),
    ("rope dimension 0", lambda L: _kv(L, "llama.rope.dimension_count", u32(0)) if "llama.rope.dimension_count" in L.kv else _kv(L, "llama.attention.head_count", u32(7))),
    ("architecture string length 2^60", lambda L: [(L.kv["general.architecture"][1], u64(1 << 60))]),
]


@pytest.mark.parametrize("label,patch", PATCHED, ids=[c[0] for c in PATCHED])
def test_patched_chat_model_is_refused(work, layout, label, patch):
    path = patched_copy(work, safe(label), patch(layout))
    try:
        both_refuse(path, label)
    finally:
        os.remove(path)


def gguf_header(n_tensors, n_kv, kvs=b"", tensors=b"", version=3):
    return b"GGUF" + u32(version) + u64(n_tensors) + u64(n_kv) + kvs + tensors


def gstr(s):
    b = s.encode()
    return u64(len(b)) + b


SMALL = [
    ("empty file", b""),
    ("magic only", b"GGUF"),
    ("random bytes", bytes((i * 7919) % 251 for i in range(4096))),
    ("header bomb: counts 2^64-1", gguf_header(2**64 - 1, 2**64 - 1)),
    ("nested array bomb", gguf_header(0, 1, gstr("a") + u32(ARR) + (u32(ARR) + u64(2**40)) * 200)),
    ("truncated after one key", gguf_header(1, 1, gstr("general.architecture") + u32(STR) + u64(5) + b"llama")),
    ("a tensor with 2^32 dims", gguf_header(1, 1, gstr("general.architecture") + u32(STR) + gstr("llama"), gstr("t") + u32(0xFFFFFFFF) + u64(1) * 8)),
    ("llama metadata, no tensors", gguf_header(0, 2, gstr("general.architecture") + u32(STR) + gstr("llama") + gstr("llama.block_count") + u32(U32) + u32(1 << 30))),
]


@pytest.mark.parametrize("label,data", SMALL, ids=[c[0] for c in SMALL])
def test_small_hostile_gguf_is_refused(work, label, data):
    path = os.path.join(work, safe(label) + ".gguf")
    with open(path, "wb") as f:
        f.write(data)
    both_refuse(path, label)


def embed_folder(work, name, safetensors):
    """A copy of the embedding model's folder (files linked) with `safetensors` as its weights."""
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    for entry in os.listdir(EMBED_DIR):
        src = os.path.join(EMBED_DIR, entry)
        if entry != "model.safetensors" and not os.path.exists(os.path.join(d, entry)):
            os.symlink(src, os.path.join(d, entry))
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(safetensors)
    return d


def real_safetensors_header():
    with open(os.path.join(EMBED_DIR, "model.safetensors"), "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return f.read(n)


def st(header, data=b"\0" * 64):
    return u64(len(header)) + header + data


def _bad_offsets():
    import json

    h = json.loads(real_safetensors_header())
    for k, v in h.items():
        if k != "__metadata__":
            v["data_offsets"] = [0, 2**62]
            break
    return json.dumps(h).encode()


def _bad_shape():
    import json

    h = json.loads(real_safetensors_header())
    for k, v in h.items():
        if k != "__metadata__":
            v["shape"] = [2**40, 2**40]
    return json.dumps(h).encode()


SAFETENSORS = [
    ("header length 2^63", lambda: u64(1 << 63) + b"{}"),
    ("header length beyond the file", lambda: u64(1 << 20) + b"{}"),
    ("header not JSON", lambda: st(b"{\"a\": [1, 2,,,}")),
    ("header not UTF-8", lambda: st(b"{\"\xff\xfe\": 1}")),
    ("empty header", lambda: st(b"{}")),
    ("real header, data cut off", lambda: st(real_safetensors_header(), b"")),
    ("offsets beyond the file", lambda: st(_bad_offsets())),
    ("shapes overflowing", lambda: st(_bad_shape())),
    ("deeply nested header", lambda: st(b"[" * 100000 + b"]" * 100000)),
]


@pytest.mark.parametrize("label,make", SAFETENSORS, ids=[c[0] for c in SAFETENSORS])
def test_corrupt_safetensors_embedding_folder_is_refused(work, label, make):
    d = embed_folder(work, "emb_" + safe(label), make())
    line = expect_clean_refusal(["serve", "--port", "0", "--threads", "2", "--model", d, "--preload", d], label + " (serve)")
    print(f"{label}:\n  serve: {line}")
    line = expect_clean_refusal(["embed", d, "hello"], label + " (embed)")
    print(f"  embed: {line}")
