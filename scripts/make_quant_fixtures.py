#!/usr/bin/env python3
"""Build the quantized-GGUF fixtures: files quantized by llama.cpp, files quantized by Fado, and
what the `gguf` package's reference dequantizer and transformers make of them. One-off, not CI:
tests/gguf_quantized.rs only reads what this wrote.

    /tmp/fixenv/bin/pip install gguf llama-cpp-python   # compiles llama.cpp (~40 min on 2 cores)
    cargo build --bin fado                               # `fado quantize` for the Fado-written files
    /tmp/fixenv/bin/python scripts/make_quant_fixtures.py [--fado target/debug/fado]

Writes under tests/fixtures/:

tiny-llama-256-q4_k_m.gguf,         a second tiny random Llama with K-quant-sized rows (vocab 512,
tiny-llama-256-q6_k.gguf            hidden 256, intermediate 512, 2 layers, heads 4/2, head_dim
                                    64, bf16 weights), written as an f16 GGUF the way
                                    make_fixtures.py writes tiny-llama-f16.gguf, then quantized by
                                    llama.cpp's llama_model_quantize (LLAMA_FTYPE_MOSTLY_Q4_K_M and
                                    _Q6_K).
tiny-llama-fado-q8_0.gguf,          `fado quantize` of tests/fixtures/tiny-llama (q8_0, q4_0) and of
tiny-llama-fado-q4_0.gguf,          the hidden-256 model saved as a Hugging Face folder (q4_k),
tiny-llama-256-fado-q4_k.gguf       with transformers' reference on their dequantized weights and
                                    the greedy tokens llama.cpp (llama-cpp-python) generates
                                    from the same files.
quant-gguf-expected.json            per file and tensor: ggml type, ne, and a checksum of the
                                    f32 values gguf.quants.dequantize gives (plus the first 8);
                                    for the llama.cpp files also transformers' float32 last logits
                                    and greedy tokens with the dequantized weights loaded into a
                                    LlamaForCausalLM.

Checksum (bitwise, order-sensitive): the f32 values' u32 bit patterns b[i] in the file's order,
sum over i of b[i] * (2i + 1) modulo 2**64 (an odd multiplier is invertible mod 2**64, so any
single changed value changes the sum).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

REPO = mf.REPO
OUT = mf.DEFAULT_OUT
HIDDEN256 = dict(hidden_size=256, intermediate_size=512, head_dim=64)


def checksum(values: np.ndarray) -> str:
    b = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    w = (2 * np.arange(b.size, dtype=np.uint64) + 1)
    with np.errstate(over="ignore"):
        return f"{int(np.sum(b * w, dtype=np.uint64)):016x}"


def dequantized_tensors(path: Path) -> dict:
    """{gguf name: (type name, ne, f32 values in file order)} via the gguf package."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(path))
    out = {}
    for t in r.tensors:
        vals = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        out[t.name] = (t.tensor_type.name, [int(x) for x in t.shape], vals)
    return out


def tensor_records(deq: dict) -> list[dict]:
    return [
        {
            "name": name,
            "type": ty,
            "ne": ne,
            "checksum": checksum(v),
            "first": [float(x) for x in v[:8]],
        }
        for name, (ty, ne, v) in deq.items()
    ]


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of make_fixtures.llamacpp_permute (GGUF rows → Hugging Face rows)."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def hf_state_dict(deq: dict, cfg) -> dict:
    gguf_to_hf = {v: k for k, v in mf.HF_TO_GGUF.items()}
    sd = {}
    for name, (_, ne, v) in deq.items():
        shape = list(reversed(ne))
        a = v.reshape(shape)
        if name in gguf_to_hf:
            hf = gguf_to_hf[name]
        else:
            _, layer, *rest = name.split(".")
            key = {g: h for h, g in mf.HF_TO_GGUF_LAYER.items()}[".".join(rest)]
            hf = f"model.layers.{layer}.{key}"
            if key == "self_attn.q_proj.weight":
                a = unpermute(a, cfg.num_attention_heads)
            elif key == "self_attn.k_proj.weight":
                a = unpermute(a, cfg.num_key_value_heads)
        sd[hf] = torch.from_numpy(np.ascontiguousarray(a))
    return sd


def transformers_reference(deq: dict, cfg, prompts) -> list[dict]:
    from transformers import GenerationConfig, LlamaForCausalLM

    model = LlamaForCausalLM(cfg).float().eval()
    missing, unexpected = model.load_state_dict(hf_state_dict(deq, cfg), strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=[1, 3], do_sample=False)
    out = []
    for p in prompts:
        logits = mf.forward_logits(model, p["ids"])
        e = {"name": p["name"], "ids": p["ids"], "last_logits": mf.floats(logits[-1])}
        e.update(mf.greedy(model, p["ids"], mf.TINY_NEW_TOKENS))
        mf.log(f"    {p['name']}: greedy {e['greedy_tokens']}")
        out.append(e)
    return out


def llama_cpp_quantize(src: Path, dst: Path, ftype_name: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize({ftype_name}) returned {rc}"
    mf.log(f"wrote {dst.name} ({dst.stat().st_size} bytes) with llama.cpp {ftype_name}")


def llama_cpp_greedy(path: Path, prompts) -> list[list[int]]:
    """llama.cpp reads the file: its greedy tokens for each prompt (EOS not special-cased)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False, seed=0)
    out = []
    for p in prompts:
        toks = []
        for t in llm.generate(p["ids"], temp=0.0, top_k=1, reset=True):
            toks.append(int(t))
            if len(toks) == mf.TINY_NEW_TOKENS:
                break
        mf.log(f"    llama.cpp {path.name} {p['name']}: {toks}")
        out.append(toks)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fado", type=Path, default=REPO / "target" / "debug" / "fado")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import llama_cpp

    expected = {
        "generator": "scripts/make_quant_fixtures.py",
        "versions": {**mf.versions(), "llama_cpp_python": llama_cpp.__version__},
        "checksum": "sum over i of u32_bits(value[i]) * (2i+1) mod 2^64, values in file order, hex",
        "files": {},
    }
    tokenizer = mf.build_tiny_tokenizer()
    prompts = mf.tiny_prompts(tokenizer)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # The hidden-256 model: bf16 weights, saved as a Hugging Face folder (for fado quantize)
        # and as an f16 GGUF (for llama.cpp).
        torch.manual_seed(mf.SEED)
        from transformers import LlamaForCausalLM

        cfg = mf.tiny_config(**HIDDEN256)
        model = LlamaForCausalLM(cfg)
        mf.init_tiny_weights(model)
        model = model.to(torch.bfloat16)
        hf_dir = tmp / "tiny-llama-256"
        model.save_pretrained(hf_dir, safe_serialization=True)
        tokenizer.save_pretrained(hf_dir)
        (hf_dir / "chat_template.jinja").write_text(mf.CHAT_TEMPLATE)
        f16 = tmp / "tiny-llama-256-f16.gguf"
        mf.write_tiny_gguf(f16, hf_dir, model.float().eval(), tokenizer)

        for ftype, fname in [
            ("LLAMA_FTYPE_MOSTLY_Q4_K_M", "tiny-llama-256-q4_k_m.gguf"),
            ("LLAMA_FTYPE_MOSTLY_Q6_K", "tiny-llama-256-q6_k.gguf"),
        ]:
            dst = OUT / fname
            llama_cpp_quantize(f16, dst, ftype)
            assert dst.stat().st_size < 2_000_000, dst.stat().st_size
            deq = dequantized_tensors(dst)
            types = sorted({ty for ty, _, _ in deq.values()})
            mf.log(f"  {fname}: types {types}")
            expected["files"][fname] = {
                "how": f"llama.cpp llama_model_quantize {ftype} of the f16 GGUF of the hidden-256 tiny model",
                "config": mf.config_summary(cfg),
                "tensors": tensor_records(deq),
                "prompts": transformers_reference(deq, cfg, prompts),
            }

        # Fado's own quantizer, read back by the gguf package.
        for src, dtype, fname in [
            (OUT / "tiny-llama", "q8_0", "tiny-llama-fado-q8_0.gguf"),
            (OUT / "tiny-llama", "q4_0", "tiny-llama-fado-q4_0.gguf"),
            (hf_dir, "q4_k", "tiny-llama-256-fado-q4_k.gguf"),
        ]:
            dst = OUT / fname
            subprocess.run([str(args.fado), "quantize", str(src), str(dst), "--type", dtype], check=True)
            deq = dequantized_tensors(dst)
            c = cfg if src == hf_dir else mf.tiny_config()
            expected["files"][fname] = {
                "how": f"fado quantize {src.name} --type {dtype}, dequantized by gguf.quants.dequantize",
                "config": mf.config_summary(c),
                "tensors": tensor_records(deq),
                "prompts": transformers_reference(deq, c, prompts),
                "llama_cpp_greedy": llama_cpp_greedy(dst, prompts),
            }
            mf.log(f"wrote {fname} ({dst.stat().st_size} bytes)")

    mf.write_json(OUT / "quant-gguf-expected.json", expected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
