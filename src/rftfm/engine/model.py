"""Tiny GPT-2-style policies built locally from a config (never downloaded)."""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel

from rftfm.engine.tokenizer import build_tokenizer

#: Model sizes of the embedded engine: name -> GPT-2 config overrides.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "xs": {"n_embd": 64, "n_layer": 2, "n_head": 4},
    "s": {"n_embd": 96, "n_layer": 3, "n_head": 4},
}
MAX_POSITIONS = 40


def build_model(size: str) -> GPT2LMHeadModel:
    if size not in MODEL_SIZES:
        raise KeyError(f"unknown model size {size!r}; known: {sorted(MODEL_SIZES)}")
    tok = build_tokenizer()
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=MAX_POSITIONS,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **MODEL_SIZES[size],
    )
    return GPT2LMHeadModel(config)
