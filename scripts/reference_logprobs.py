#!/usr/bin/env python3
"""Reference teacher-forced per-token log-probabilities of a Llama-architecture GGUF over a text:
the whole text (or its first --max-tokens tokens) in one sequence from position 0, and for each
token after the first the natural-log probability the model gives it from the logits one
position earlier. The forward pass, weights and tokenizer are reference_ppl.py's (numpy float64
on the dequantized GGUF weights); nothing here is computed by Fado.

Fado's tests compare their own scoring path with these numbers at every position, in one go,
across prefill chunk boundaries and with a reused cached prefix (tests/long_context.rs).

Usage (in the venv of reference_ppl.py):
    python scripts/reference_logprobs.py MODEL.gguf tests/fixtures/eval/long.txt \
        --max-tokens 320 --out tests/fixtures/eval/logprobs-ci.json
    python scripts/reference_logprobs.py MODEL.gguf tests/fixtures/eval/long.txt \
        --out tests/fixtures/eval/logprobs-long.json
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_ppl import forward, load_weights, open_model, sha256  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--max-tokens", type=int, default=None, help="keep the first N tokens")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    reader, cfg, ids, bos = open_model(a.model, a.text)
    add_bos = bos is not None
    all_tokens = len(ids)
    if a.max_tokens is not None:
        ids = ids[: a.max_tokens]
    if len(ids) < 2:
        sys.exit(f"{len(ids)} tokens: need at least 2")
    t0 = time.time()
    w = load_weights(reader)
    logits = forward(w, cfg, np.array(ids))
    lps = []
    for p in range(len(ids) - 1):
        row = logits[p]
        m = row.max()
        lse = m + np.log(np.exp(row - m).sum())
        lps.append(float(row[ids[p + 1]] - lse))
    secs = time.time() - t0
    out = {
        "what": "teacher-forced log-probabilities of the text by scripts/reference_logprobs.py "
        "(numpy float64 forward pass on the dequantized GGUF weights, one sequence from "
        "position 0); logprobs[i] is ln P(tokens[i + 1] | tokens[..= i])",
        "model_file": Path(a.model).name,
        "model_sha256": sha256(a.model),
        "text_file": Path(a.text).name,
        "text_sha256": sha256(a.text),
        "settings": {
            "max_tokens": a.max_tokens,
            "text_tokens": all_tokens,
            "add_bos": add_bos,
            **cfg,
        },
        "tokens": ids,
        "logprobs": [round(x, 7) for x in lps],
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
    print(
        f"{len(ids)} tokens (of {all_tokens}), mean logprob {np.mean(lps):.6f}, {secs:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
