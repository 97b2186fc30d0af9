"""Tiny decoder policies built locally from transformers configs (never downloaded).

Two families -- GPT-2 (learned positions, GELU MLP, LayerNorm) and Qwen2 (rotary positions,
SwiGLU MLP, RMSNorm, grouped-query attention) -- at four sizes each; the largest has over
ten times the parameters of the smallest (``rftfm.engine.model.parameter_count``).
"""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel, PretrainedConfig, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from rftfm.engine.tokenizer import build_tokenizer

MODEL_FAMILIES: tuple[str, ...] = ("gpt2", "qwen2")
DEFAULT_FAMILY = "gpt2"
#: Model sizes: name -> (width, layers, attention heads). GPT-2 ``xs`` and ``s`` are the published
#: benchmark's two sizes; their configs must not change (cached warm starts and old runs use them).
SIZES: dict[str, tuple[int, int, int]] = {
    "xs": (64, 2, 4),
    "s": (96, 3, 4),
    "m": (128, 4, 4),
    "l": (192, 4, 6),
}
#: GPT-2 config overrides per size (the published sizes, as GPT2Config arguments)
MODEL_SIZES: dict[str, dict[str, int]] = {k: {"n_embd": w, "n_layer": n, "n_head": h} for k, (w, n, h) in SIZES.items()}
MAX_POSITIONS = 40


def model_config(size: str, family: str = DEFAULT_FAMILY) -> PretrainedConfig:
    if size not in SIZES:
        raise KeyError(f"unknown model size {size!r}; known: {sorted(SIZES)}")
    tok = build_tokenizer()
    width, layers, heads = SIZES[size]
    common = dict(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    if family == "gpt2":
        return GPT2Config(n_positions=MAX_POSITIONS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          **MODEL_SIZES[size], **common)
    if family == "qwen2":
        return Qwen2Config(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=heads // 2, intermediate_size=2 * width,
                           max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
                           attention_dropout=0.0, use_sliding_window=False, **common)
    raise KeyError(f"unknown model family {family!r}; known: {MODEL_FAMILIES}")


def build_model(size: str, family: str = DEFAULT_FAMILY) -> PreTrainedModel:
    """A freshly initialised policy of ``family`` at ``size``."""
    config = model_config(size, family)
    return GPT2LMHeadModel(config) if family == "gpt2" else Qwen2ForCausalLM(config)


def parameter_count(size: str, family: str = DEFAULT_FAMILY) -> int:
    return sum(p.numel() for p in build_model(size, family).parameters())
