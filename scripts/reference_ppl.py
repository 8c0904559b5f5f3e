#!/usr/bin/env python3
"""Reference perplexity of a Llama-architecture GGUF on a text, computed independently of Fado:
the weights are dequantized with the `gguf` package and the forward pass is plain numpy in
float64; the text is tokenized with the `tokenizers` package from the GGUF's own vocabulary and
merges (byte-level BPE with SmolLM2's pre-tokenizer: digits split one by one, then the GPT-2
regex, as llama.cpp does for tokenizer.ggml.pre == "smollm").

The perplexity follows llama.cpp's `llama-perplexity` exactly: the whole text tokenized once
(BOS first when tokenizer.ggml.add_bos_token says so), non-overlapping chunks of `ctx` tokens
(the tail dropped), each from an empty cache at positions 0..ctx-1 with its first token replaced
by BOS when the model adds BOS, the tokens at positions ctx/2+1 .. ctx-1 scored from the logits
one position earlier; ppl = exp(mean NLL), its error ppl * sqrt(var / (n - 1)).

GGUF stores the Q and K projections permuted for llama.cpp's rope ("normal" mode: rotation of
adjacent pairs 2i, 2i+1); this script keeps them as stored and rotates adjacent pairs, as
llama.cpp does, which equals Hugging Face's rotate-half on the unpermuted weights.

Usage (in a venv: pip install numpy==2.4.6 gguf==0.19.0 tokenizers==0.23.3):
    python scripts/reference_ppl.py MODEL.gguf tests/fixtures/eval/ppl.txt --ctx 128 \
        --out tests/fixtures/eval/ppl-reference.json
"""

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def tokenizer_of(reader):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    pre = field(reader, "tokenizer.ggml.pre")
    if field(reader, "tokenizer.ggml.model") != "gpt2" or pre not in ("smollm", "gpt2"):
        sys.exit(f"only byte-level BPE (gpt2/smollm pre-tokenizers) is supported, not {pre}")
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    parts = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre == "smollm":
        parts.insert(0, pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(parts)
    return tok


def load_weights(reader):
    w = {}
    for t in reader.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        w[t.name] = a.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists ne innermost first
    return w


def rmsnorm(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rope_pairs(x, pos, theta):
    """llama.cpp's normal rope: rotate adjacent pairs (2i, 2i+1) by pos * theta^(-2i/d)."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None] * inv[None, :]  # [T, d/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def forward(w, cfg, ids):
    """Logits [T, vocab] of one sequence starting at position 0."""
    T = len(ids)
    nh, nkv, eps, theta = cfg["heads"], cfg["kv_heads"], cfg["eps"], cfg["theta"]
    x = w["token_embd.weight"][ids]
    hd = x.shape[1] // nh
    pos = np.arange(T, dtype=np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["layers"]):
        p = f"blk.{i}."
        h = rmsnorm(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(T, nh, hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(T, nkv, hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, nkv, hd)
        q, k = rope_pairs(q, pos, theta), rope_pairs(k, pos, theta)
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)  # q head j uses kv head j // rep
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", s, v).reshape(T, nh * hd)
        x = x + a @ w[p + "attn_output.weight"].T
        h = rmsnorm(x, w[p + "ffn_norm.weight"], eps)
        g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T
    x = rmsnorm(x, w["output_norm.weight"], eps)
    return x @ w.get("output.weight", w["token_embd.weight"]).T


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def open_model(model, text_path):
    """The GGUF reader, the Llama config the forward pass needs, the text's token ids (BOS
    first where the GGUF says so), as Fado tokenizes it, and the BOS id (None when not added)."""
    reader = GGUFReader(model)
    arch = field(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"only the llama architecture is supported, not {arch}")
    cfg = {
        "layers": int(field(reader, "llama.block_count")),
        "heads": int(field(reader, "llama.attention.head_count")),
        "kv_heads": int(field(reader, "llama.attention.head_count_kv")),
        "eps": float(field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "theta": float(field(reader, "llama.rope.freq_base", 10000.0)),
    }
    add_bos = bool(field(reader, "tokenizer.ggml.add_bos_token", True))
    bos = int(field(reader, "tokenizer.ggml.bos_token_id", 1))
    text = Path(text_path).read_text(encoding="utf-8")
    ids = tokenizer_of(reader).encode(text, add_special_tokens=False).ids
    if add_bos:
        ids = [bos] + ids
    return reader, cfg, ids, (bos if add_bos else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    reader, cfg, ids, bos = open_model(a.model, a.text)
    add_bos = bos is not None
    ctx = a.ctx
    n_max = len(ids) // ctx
    if len(ids) < 2 * ctx:
        sys.exit(f"{len(ids)} tokens: need at least {2 * ctx}")
    n_chunks = n_max if a.chunks is None else min(a.chunks, n_max)
    w = load_weights(reader)
    first = ctx // 2
    nlls = []
    for c in range(n_chunks):
        chunk = list(ids[c * ctx:(c + 1) * ctx])
        if add_bos:
            chunk[0] = bos
        logits = forward(w, cfg, np.array(chunk))
        for p in range(first, ctx - 1):
            row = logits[p]
            m = row.max()
            lse = m + np.log(np.exp(row - m).sum())
            nlls.append(float(lse - row[chunk[p + 1]]))
        print(f"chunk {c + 1}/{n_chunks}: ppl so far {np.exp(np.mean(nlls)):.4f}", file=sys.stderr)
    nll = np.array(nlls)
    mean = float(nll.mean())
    var = float((nll * nll).mean() - mean * mean)
    ppl = float(np.exp(mean))
    out = {
        "what": "perplexity of the text by scripts/reference_ppl.py (numpy float64 forward pass "
        "on the dequantized GGUF weights, llama-perplexity's chunking)",
        "model_file": Path(a.model).name,
        "model_sha256": sha256(a.model),
        "text_file": Path(a.text).name,
        "text_sha256": sha256(a.text),
        "settings": {"ctx": ctx, "chunks": n_chunks, "first": first, "add_bos": add_bos, **cfg},
        "tokens": ids,
        "ppl": ppl,
        "ppl_stderr": ppl * float(np.sqrt(var / (len(nll) - 1))),
        "mean_nll": mean,
        "tokens_scored": len(nlls),
        "nll": [round(x, 6) for x in nlls],
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "gguf": __import__("importlib.metadata").metadata.version("gguf"),
            "tokenizers": __import__("tokenizers").__version__,
        },
    }
    text_out = json.dumps(out, ensure_ascii=False)
    if a.out:
        Path(a.out).write_text(text_out + "\n", encoding="utf-8")
    else:
        print(text_out)
    print(f"ppl = {ppl:.6f} +/- {out['ppl_stderr']:.6f} over {len(nlls)} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
