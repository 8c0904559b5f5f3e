#!/usr/bin/env python3
"""Write a Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json) built from a
GGUF's own vocabulary and merges, with reference_ppl.py's tokenizer (byte-level BPE, SmolLM2's
pre-tokenizer) plus a byte-level decoder. `transformers.AutoTokenizer.from_pretrained(DIR)`
loads it without torch; lm-evaluation-harness's `local-completions` uses it to split a context
from its continuation (scripts/lm_eval_check.sh).

Usage (numpy, gguf, tokenizers): python scripts/export_tokenizer.py MODEL.gguf OUT_DIR
"""

import json
import sys
from pathlib import Path

from gguf import GGUFReader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_ppl import field, tokenizer_of  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    reader = GGUFReader(sys.argv[1])
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    from tokenizers import decoders

    tok = tokenizer_of(reader)
    tok.decoder = decoders.ByteLevel()
    tokens = field(reader, "tokenizer.ggml.tokens")
    special = {}
    for name in ("bos", "eos", "unknown", "padding"):
        i = field(reader, f"tokenizer.ggml.{name}_token_id")
        if i is not None:
            special[{"unknown": "unk", "padding": "pad"}.get(name, name) + "_token"] = tokens[int(i)]
    tok.add_special_tokens(list(dict.fromkeys(special.values())))
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "model_max_length": int(field(reader, "llama.context_length", 2048)),
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    print(f"{out}: {len(tokens)} tokens, special {special}", file=sys.stderr)


if __name__ == "__main__":
    main()
